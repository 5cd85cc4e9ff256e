"""lhotse as ``benchmarks/peers.py`` runs it: manifests, a custom feature extractor, lilcom-chunky partial
reads, Shar.

Followed: https://lhotse.readthedocs.io/en/latest/features.html ("Creating custom feature extractor",
"Storage backend": ``LilcomChunkyWriter``), /cuts.html (``truncate``, ``load_audio``, ``load_features``),
/datasets.html (a sampler yields ``CutSet`` mini-batches, a ``Dataset`` turns them into tensors;
``sampler.state_dict()`` to resume) and /shar.html (``to_shar``, ``CutSet.from_shar`` with
``shuffle_shards``, ``DynamicCutSampler``).

Two things of lhotse's design shape this peer (docs/benchmarks.md, "Peers"):

- its features live on the recording's time grid: a ``Features`` manifest's frame shift must be a whole
  number of the recording's samples (``validate_features``), so a hop of 256 samples at 12 kHz cannot be
  declared on a 16 kHz recording; the cuts are resampled to 12 kHz by lhotse (``CutSet.resample``: its own
  windowed-sinc resampler, not soxr), and the extractor keeps lhotse's frame count
  (``compute_num_frames``: librosa's centred STFT has one frame more) without muzarr's zero frames;
- waveforms are read from the source files each time (``Recording`` points at the MP3); Shar holds a
  decoded copy (FLAC).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _peers import BATCH, HOP, MEL_RATE, N_MELS, RATE, Reader, SetSpec, label_of, random_crop, to_batch
from lhotse.features.base import FeatureExtractor, register_extractor
from lhotse.utils import compute_num_frames


@dataclass
class MuzarrLogMelConfig:
    n_fft: int = 512
    hop_length: int = HOP
    n_mels: int = N_MELS


@register_extractor
class MuzarrLogMel(FeatureExtractor):
    """librosa's ``power_to_db(melspectrogram(...), ref=1.0)``, time-major as lhotse stores features."""

    name = "muzarr-logmel"
    config_type = MuzarrLogMelConfig

    @property
    def frame_shift(self) -> float:
        return self.config.hop_length / MEL_RATE

    def feature_dim(self, sampling_rate: int) -> int:
        return self.config.n_mels

    def extract(self, samples, sampling_rate: int) -> np.ndarray:
        import librosa

        y = np.asarray(samples, dtype=np.float32).reshape(-1)
        mel = librosa.feature.melspectrogram(y=y, sr=sampling_rate, n_fft=self.config.n_fft,
                                             hop_length=self.config.hop_length, n_mels=self.config.n_mels)  # fmt: skip
        frames = compute_num_frames(len(y) / sampling_rate, self.frame_shift, sampling_rate)
        return np.ascontiguousarray(librosa.power_to_db(mel, ref=1.0)[:, :frames].T)


def build(paths: list[str], out: Path, spec: SetSpec, workers: int) -> None:
    import torch
    from lhotse import CutSet, LilcomChunkyWriter, RecordingSet

    torch.set_num_threads(1)  # lhotse warns that num_jobs > 1 with torch's threads can hang
    root = Path(paths[0]).parents[0 if spec.seconds is None else 1]
    recordings = RecordingSet.from_dir(root, "*.mp3" if spec.seconds else "*.wav", num_jobs=workers,
                                      recording_id=_stem)
    cuts = CutSet.from_manifests(recordings=recordings)
    out.mkdir(parents=True)
    cuts.to_file(out / "cuts16.jsonl.gz")
    (out / "shar16").mkdir()  # to_shar makes its folder only with num_jobs > 1
    cuts.to_shar(out / "shar16", fields={"recording": "flac"}, shard_size=100, num_jobs=workers)
    if spec.seconds is None:
        return
    mels = cuts.resample(MEL_RATE).compute_and_store_features(
        extractor=MuzarrLogMel(), storage_path=out / "feats", num_jobs=workers, storage_type=LilcomChunkyWriter
    )
    mels.to_file(out / "cuts12.jsonl.gz")
    (out / "shar12").mkdir()
    mels.to_shar(out / "shar12", fields={"features": "lilcom"}, shard_size=100, num_jobs=workers)


def _stem(path: Path) -> str:
    return path.stem


class _Crops(torch.utils.data.Dataset):
    """A ``CutSet`` mini-batch → a batch of crops: each cut truncated at a random offset, then only that
    part read (``load_audio`` seeks in the source file; ``load_features`` reads the lilcom chunks it needs)."""

    def __init__(self, column: str, length: int, seed: int) -> None:
        self.column, self.length = column, length
        self.rng = np.random.default_rng(seed)

    def __getitem__(self, cuts):
        crops, labels = [], []
        for cut in cuts:
            if self.column == "wave":
                span = self.length / RATE
                offset = float(self.rng.integers(0, max(1, round((cut.duration - span) * RATE)))) / RATE
                part = cut.truncate(offset=offset, duration=min(span, cut.duration - offset)).load_audio()[0]
            else:
                shift = cut.frame_shift
                frames = round(cut.duration / shift)
                start = int(self.rng.integers(0, max(1, frames - self.length)))
                part = cut.truncate(offset=start * shift, duration=min(self.length, frames - start) * shift)
                part = part.load_features().T
            crops.append(random_crop(part, self.length, self.rng))  # exact length (zero-padded if short)
            source = cut.recording.sources[0] if cut.has_recording else None
            labels.append(label_of(source.source) if source is not None and source.type == "file" else 0)
        return to_batch(crops, labels)


class LhotseReader(Reader):
    """Eager manifests, ``SimpleCutSampler(max_cuts=32, shuffle=True)`` (a true shuffle), truncated cuts."""

    resumable = True

    def __init__(self, folder: Path, column: str, length: int) -> None:
        from lhotse import CutSet

        self.cuts = CutSet.from_file(folder / ("cuts16.jsonl.gz" if column == "wave" else "cuts12.jsonl.gz")).to_eager()
        self.column, self.length = column, length

    def _sampler(self, e: int):
        from lhotse.dataset import SimpleCutSampler

        sampler = SimpleCutSampler(self.cuts, max_cuts=BATCH, shuffle=True, seed=0)
        sampler.set_epoch(e)
        return sampler

    def _loader(self, sampler, e: int):
        return torch.utils.data.DataLoader(_Crops(self.column, self.length, e), sampler=sampler, batch_size=None)

    def epoch(self, e):
        return iter(self._loader(self._sampler(e), e))

    def state(self, e, batches):
        sampler = self._sampler(e)
        it = iter(self._loader(sampler, e))
        for _ in range(batches):
            next(it)
        return e, sampler.state_dict()

    def resume(self, state):
        e, saved = state
        sampler = self._sampler(e)
        sampler.load_state_dict(saved)
        return iter(self._loader(sampler, e))


class SharReader(Reader):
    """``CutSet.from_shar(in_dir, shuffle_shards=True)`` + ``DynamicCutSampler(max_cuts=32, shuffle=True)``:
    shards permuted, cuts shuffled in the sampler's buffer (approximate; its default buffer of 20,000 cuts
    holds a whole set this small, in memory)."""

    def __init__(self, folder: Path, column: str, length: int) -> None:
        self.folder = folder / ("shar16" if column == "wave" else "shar12")
        self.column, self.length = column, length

    def epoch(self, e):
        from lhotse import CutSet
        from lhotse.dataset import DynamicCutSampler, IterableDatasetWrapper

        cuts = CutSet.from_shar(in_dir=self.folder, shuffle_shards=True, seed=e)
        sampler = DynamicCutSampler(cuts, max_cuts=BATCH, shuffle=True, seed=e)
        dataset = IterableDatasetWrapper(_Crops(self.column, self.length, e), sampler)
        return iter(torch.utils.data.DataLoader(dataset, batch_size=None))


def stored(peer: str, folder: Path, column: str) -> dict[str, np.ndarray]:
    """Clip id → the whole stored waveform (float32 [n]) or log-mel ([n_mels, frames]), read through lhotse."""
    from lhotse import CutSet

    if peer.endswith("Shar"):
        cuts = CutSet.from_shar(in_dir=folder / ("shar16" if column == "wave" else "shar12"))
    else:
        cuts = CutSet.from_file(folder / ("cuts16.jsonl.gz" if column == "wave" else "cuts12.jsonl.gz"))
    if column == "wave":
        return {cut.recording_id: cut.load_audio()[0] for cut in cuts}
    return {cut.recording_id: cut.load_features().T for cut in cuts}
