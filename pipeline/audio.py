"""Decoding, mono mix, resampling and clip policies: a file path to fixed-shape float32 audio."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import soundfile
import soxr

from pipeline.errors import MuzarrError
from pipeline.mpeg import looks_like_mpeg, mpeg_length

ClipMode = Literal["pad_crop", "split", "full", "track"]


class DecodeError(Exception):
    """A file that could not be decoded by any backend; the message names both attempts."""


class ClipError(MuzarrError):
    """A file that decoded but cannot be stored under the clip policy (a track longer than ``max_seconds``)."""


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A decoded file: float32 ``samples [shape=(channels, n)]``, its sample rate, and what a person should
    know about how it decoded (a file that ends before its header says, the decoder's own warnings)."""

    samples: np.ndarray
    rate: int
    notes: tuple[str, ...] = ()


def decode(path: str) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 ``[shape=(channels, n)]`` and its sample rate (:func:`read_audio`)."""
    audio = read_audio(path)
    return audio.samples, audio.rate


def read_audio(path: str) -> Decoded:
    """Read an audio file, every sample it holds, with notes on how it decoded.

    soundfile (libsndfile) first; PyAV (FFmpeg) for what libsndfile cannot open, such as
    M4A/AAC or Ogg-FLAC, and for an MP3 whose frames hold more than libsndfile would return
    (:mod:`pipeline.mpeg`: libsndfile stops at a length it estimated). Integer PCM is scaled
    exactly: ``int16 / 32768``.

    A file with no samples is an error: a clip of silence would be indistinguishable
    from a real one downstream. So is a file libsndfile would only read as header-less
    raw audio guessed from its extension (random bytes named ``.au`` read as 8 kHz
    mu-law): such a file goes to PyAV, which refuses data it cannot identify.

    Raises
    ------
    DecodeError
        The message is one line a person can act on: ``file not found``, ``empty file
        (0 bytes): ...``, or both backends' reasons, ``soundfile: ...; PyAV: ...``.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except OSError as error:
        raise DecodeError(f"cannot read the file: {error.strerror or type(error).__name__}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DecodeError("not a regular file (a folder, device or pipe)")
    size = info.st_size
    notes: tuple[str, ...] = ()
    try:
        samples, rate, notes = _decode_soundfile(path)
    except Exception as sf_error:  # noqa: BLE001 - any libsndfile failure means "try FFmpeg"
        try:
            samples, rate = _decode_pyav(path)
        except Exception as av_error:  # noqa: BLE001
            reasons = f"soundfile: {_reason(sf_error, path)}; PyAV: {_reason(av_error, path)}"
            raise DecodeError(f"empty file (0 bytes): {reasons}" if size == 0 else reasons) from None
        if isinstance(sf_error, _ShortLength):
            notes = (str(sf_error),)
    if samples.shape[-1] == 0:
        raise DecodeError("file holds no audio samples (0 frames)")
    if not np.isfinite(samples).all():
        raise DecodeError("decoded audio contains NaN or infinite samples")
    return Decoded(np.ascontiguousarray(samples), int(rate), notes)


class _ShortLength(Exception):
    """libsndfile would stop short of the audio an MP3 holds: decode it with FFmpeg instead (the message is the note)."""


def _decode_soundfile(path: str) -> tuple[np.ndarray, int, tuple[str, ...]]:
    # libsndfile keeps a global error state: one handle per call, never shared.
    with _decoder_messages(path) as said, soundfile.SoundFile(path) as handle:
        if handle.format == "RAW":
            # No header was found; libsndfile guessed the encoding from the extension
            # (.au/.snd -> mu-law, .vox -> ADPCM, .gsm -> GSM 6.10): any bytes "decode".
            raise DecodeError(
                f"no audio header (libsndfile would guess header-less {handle.subtype} at "
                f"{handle.samplerate} Hz from the file name)"
            )
        reported = handle.frames
        length = mpeg_length(path, reported=reported) if handle.subtype.startswith("MPEG_LAYER") else None
        if length is not None and length.beyond_reported:
            raise _ShortLength(
                f"libsndfile reads {reported} samples of this MP3 ({length.reason}), its frames hold up to "
                f"{length.samples}: decoded with FFmpeg (PyAV)"
            )
        samples = handle.read(dtype="float32", always_2d=True).T
    notes = [f"libmpg123: {line}" for line in said]
    if length is not None and length.header and samples.shape[-1] < reported:
        notes.insert(0, (
            f"decoded {samples.shape[-1]} of the {reported} samples its header announces "
            f"({samples.shape[-1] / reported:.0%}): the file ends early (a stopped download?)"
        ))
    return samples, handle.samplerate, tuple(notes)


# libmpg123 (inside libsndfile) prints its warnings straight to the process's stderr
_DECODER_PREFIXES = ("Warning:", "Note:", "Error:", "[src/libmpg123", "[libmpg123")
_STDERR = threading.Lock()


@contextlib.contextmanager
def _decoder_messages(path: str) -> Iterator[list[str]]:
    """What libmpg123 prints while an MPEG file is opened and read, taken off the terminal (file
    descriptor 2, where C code writes) into the list yielded; other files are not watched."""
    said: list[str] = []
    if not looks_like_mpeg(path):
        yield said
        return
    with _STDERR, tempfile.TemporaryFile() as sink:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            others = []
            for line in sink.read().decode(errors="replace").splitlines():
                line = line.strip()
                if line:
                    (said if line.startswith(_DECODER_PREFIXES) else others).append(line)
            if others:  # another thread's output in that moment belongs on the terminal
                print("\n".join(others), file=sys.stderr)


_PCM_SCALE = {"s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def _decode_pyav(path: str) -> tuple[np.ndarray, int]:
    import av  # imported lazily: only files libsndfile refuses need it

    with av.open(path) as container:
        if not container.streams.audio:
            raise DecodeError("no audio stream")
        stream = container.streams.audio[0]
        blocks = []
        shape = None
        for frame in container.decode(stream):
            block = _frame_to_float(frame)
            if shape is None:
                shape = (block.shape[0], frame.sample_rate)
            elif (block.shape[0], frame.sample_rate) != shape:
                raise DecodeError(
                    f"the audio stream changes from {shape[0]} channels at {shape[1]} Hz to "
                    f"{block.shape[0]} channels at {frame.sample_rate} Hz"
                )
            blocks.append(block)
        if not blocks:
            raise DecodeError("no audio frames decoded")
        return np.concatenate(blocks, axis=1), int(shape[1])


def _frame_to_float(frame: Any) -> np.ndarray:
    data = frame.to_ndarray()
    name = frame.format.name
    planar = frame.format.is_planar
    channels = len(frame.layout.channels)
    data = data if planar else data.reshape(-1, channels).T
    base = name.rstrip("p")
    if base in ("flt", "dbl"):
        return data.astype(np.float32)
    if base == "u8":
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if base in _PCM_SCALE:
        return (data.astype(np.float64) / _PCM_SCALE[base]).astype(np.float32)
    raise DecodeError(f"unsupported PyAV sample format {name!r}")


def _reason(error: BaseException, path: str) -> str:
    """One backend's failure in a few words, without the path the caller already reports."""
    if isinstance(error, soundfile.LibsndfileError):
        text = error.error_string.strip().rstrip(".")
        # libsndfile 1.2 says this of existing files it cannot identify (e.g. a broken .mp3)
        if "does not exist" in text and os.path.isfile(path):
            text = "Format not recognised"
        return text
    strerror = getattr(error, "strerror", None)  # FFmpeg and OS errors: the text without errno/path
    if isinstance(strerror, str) and strerror:
        return strerror
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of ``[shape=(channels, n)]`` audio (librosa's ``to_mono``)."""
    return samples[0] if samples.shape[0] == 1 else samples.mean(axis=0, dtype=np.float32)


def resample(y: np.ndarray, *, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float32 audio with soxr's HQ filter (librosa's default ``soxr_hq``)."""
    if orig_sr == target_sr:
        return y
    out = soxr.resample(y, orig_sr, target_sr, quality="HQ")
    return fix_length(np.asarray(out, dtype=np.float32), size=resampled_length(len(y), orig_sr=orig_sr, target_sr=target_sr))


def resampled_length(n: int, *, orig_sr: int, target_sr: int) -> int:
    """Samples :func:`resample` returns for ``n`` samples: the one formula a track store plans with."""
    if orig_sr == target_sr:
        return int(n)
    # librosa.resample fixes the length with this exact float arithmetic (it can round up
    # 6000.000000000001 to 6001); doing the same keeps lengths equal to librosa.load's.
    return int(np.ceil(n * (float(target_sr) / orig_sr)))


def probe(path: str) -> tuple[int, int]:
    """``(frames, sample_rate)`` of a file, where ``frames`` is the most :func:`read_audio` can return,
    read from its header where it can be (nothing is decoded).

    libsndfile's header count is exact for WAV, FLAC and MP3s with a length header covering the file
    (a file cut short decodes to less); an MP3 without one is counted frame by frame (:mod:`pipeline.mpeg`);
    a file libsndfile cannot open is decoded whole with PyAV, as :func:`read_audio` does. A track store plans
    with this bound and places every track at the length it decodes to.
    """
    try:
        with _decoder_messages(path), soundfile.SoundFile(path) as handle:  # messages: the build notes them
            if handle.format != "RAW" and handle.frames > 0:
                frames = int(handle.frames)
                if handle.subtype.startswith("MPEG_LAYER"):
                    frames = mpeg_length(path, reported=frames).most
                return frames, int(handle.samplerate)
    except Exception:  # noqa: BLE001, S110 - read_audio() gives both backends' reasons for the record
        pass
    samples, rate = decode(path)
    return int(samples.shape[-1]), int(rate)


def fix_length(y: np.ndarray, *, size: int) -> np.ndarray:
    """Crop or zero-pad the last axis to ``size`` samples."""
    n = y.shape[-1]
    if n >= size:
        return y[..., :size]
    pad = [(0, 0)] * (y.ndim - 1) + [(0, size - n)]
    return np.pad(y, pad)


def float_to_int16(y: np.ndarray) -> np.ndarray:
    """Quantise [-1, 1] float audio to int16 the way PCM is read back (``x / 32768``)."""
    scaled = y * 32768.0
    np.rint(scaled, out=scaled)
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16)


# x · 32768 rounds (half to even) into int16 for -32768.5 <= x · 32768 < 32767.5; both bounds are
# exact float32 values, so the test on x needs no scaled copy.
_INT16_HIGH = np.float32(32767.5 / 32768)
_INT16_LOW = np.float32(-32768.5 / 32768)


def int16_overflow(y: np.ndarray) -> int:
    """How many samples :func:`float_to_int16` clips (those beyond ±1 by more than half a step)."""
    if y.size == 0 or (y.max() < _INT16_HIGH and y.min() >= _INT16_LOW):  # the common case: two reductions
        return 0
    return int(np.count_nonzero(y >= _INT16_HIGH) + np.count_nonzero(y < _INT16_LOW))


def int16_to_float(y: np.ndarray) -> np.ndarray:
    """Exact inverse scaling of PCM16: ``int16 / 32768`` in float32."""
    return y.astype(np.float32) / np.float32(32768.0)


@dataclasses.dataclass(frozen=True)
class ClipPolicy:
    """How a decoded clip becomes a fixed-length example (or K of them).

    Parameters
    ----------
    mode : {"pad_crop", "full", "split", "track"}
        ``pad_crop``: keep ``seconds`` from the start or centre, zero-padded.
        ``full``: the dataset's whole clip, padded/cropped to ``seconds`` (e.g. 29.1).
        ``split``: cut the first ``total_seconds`` into sub-clips of ``seconds`` every
        ``hop_seconds``; a partial last sub-clip is zero-padded (``partial="pad"``) or
        dropped (``partial="drop"``).
        ``track``: the whole file, its own length (no padding, no cropping); a track longer than
        ``max_seconds`` fails with the reason, never cut.
    seconds : float
        Length of the clip, or of one sub-clip when splitting.
    anchor : {"start", "centre"}
        Where ``pad_crop`` takes its window.
    hop_seconds : float, optional
        Sub-clip hop; defaults to ``seconds`` (no overlap).
    total_seconds : float, optional
        ``split`` only: length the clip is padded/cropped to before cutting.
    partial : {"pad", "drop"}
    max_seconds : float
        ``track`` only: the longest track kept (default 30 min).
    """

    mode: ClipMode = "pad_crop"
    seconds: float = 3.0
    anchor: Literal["start", "centre"] = "start"
    hop_seconds: float | None = None
    total_seconds: float | None = None
    partial: Literal["pad", "drop"] = "drop"
    max_seconds: float = 1800.0

    def __post_init__(self) -> None:
        if self.mode not in ("pad_crop", "split", "full", "track"):
            raise MuzarrError(f"clip mode={self.mode!r} must be one of pad_crop, split, full, track")
        if isinstance(self.max_seconds, bool) or not isinstance(self.max_seconds, (int, float)) or not self.max_seconds > 0:
            raise MuzarrError(f"clip max_seconds={self.max_seconds!r} must be a positive number")
        if not (isinstance(self.seconds, (int, float)) and self.seconds > 0):
            raise MuzarrError(f"clip seconds={self.seconds!r} must be a positive number")
        if self.anchor not in ("start", "centre"):
            raise MuzarrError(f"clip anchor={self.anchor!r} must be 'start' or 'centre'")
        if self.partial not in ("pad", "drop"):
            raise MuzarrError(f"clip partial={self.partial!r} must be 'pad' or 'drop'")
        if self.mode == "split":
            if self.total_seconds is None or self.total_seconds < self.seconds:
                raise MuzarrError(
                    f"split clips need total_seconds >= seconds (got total_seconds={self.total_seconds}, "
                    f"seconds={self.seconds}): set clip.total_seconds to the dataset's clip length"
                )
            if self.hop_seconds is not None and self.hop_seconds <= 0:
                raise MuzarrError(f"clip hop_seconds={self.hop_seconds!r} must be positive")

    @property
    def n_subclips(self) -> int | None:
        """Sub-clips per clip when splitting, else None (no sub-clip axis in the store)."""
        if self.mode != "split":
            return None
        hop = self.hop_seconds or self.seconds
        span = self.total_seconds - self.seconds
        steps = span / hop
        # A tolerance keeps 29.1 / 2.91 from becoming 9.999999 sub-clips.
        whole = math.floor(steps + 1e-9)
        return whole + 1 + (1 if self.partial == "pad" and steps - whole > 1e-9 else 0)

    def n_samples(self, sample_rate: int) -> int:
        """Samples in one (sub-)clip at ``sample_rate``."""
        return int(round(self.seconds * sample_rate))

    def track_problem(self, frames: int, sample_rate: int) -> str | None:
        """Why a track of ``frames`` samples at ``sample_rate`` cannot be stored whole (None if it can)."""
        seconds = frames / sample_rate
        if seconds <= self.max_seconds:
            return None
        # every digit the length needs: 80001 samples at 16000 Hz are 5.0000625 s, over a maximum of 5
        return (
            f"track is {frames} samples at {sample_rate} Hz = {seconds:.10g} s long, over clip.max_seconds="
            f"{self.max_seconds:g}: raise it with --set clip.max_seconds={math.ceil(seconds / 600) * 600}"
        )

    def apply(self, y: np.ndarray, *, sample_rate: int) -> np.ndarray:
        """Mono ``[shape=(n,)]`` → ``[shape=(n_samples,)]`` or ``[shape=(K, n_samples)]`` when splitting
        (``track``: ``y`` itself)."""
        if self.mode == "track":
            return y
        length = self.n_samples(sample_rate)
        if self.mode == "split":
            total = fix_length(y, size=int(round(self.total_seconds * sample_rate)))
            hop = int(round((self.hop_seconds or self.seconds) * sample_rate))
            starts = [k * hop for k in range(self.n_subclips)]
            return np.stack([fix_length(total[s : s + length], size=length) for s in starts])
        if self.mode == "pad_crop" and self.anchor == "centre" and len(y) > length:
            start = (len(y) - length) // 2
            return y[start : start + length]
        return fix_length(y, size=length)

    def to_dict(self) -> dict[str, Any]:
        spec = dataclasses.asdict(self)
        if self.mode != "track":
            del spec["max_seconds"]  # only tracks have a maximum: other policies' configurations stay as they were
        return spec


@dataclasses.dataclass(frozen=True)
class Clip:
    """A file ready for the features: mono float32 audio at every rate asked for (the clip policy applied),
    what the file decoded to (``frames`` at ``rate``) and the notes on how it decoded."""

    audio: dict[int, np.ndarray]
    frames: int
    rate: int
    notes: tuple[str, ...] = ()


def load_clip(path: str, *, rates: tuple[int, ...], policy: ClipPolicy) -> Clip:
    """Decode once, mix to mono, resample to every rate in ``rates`` and apply the clip policy."""
    decoded = read_audio(path)
    frames, rate = decoded.samples.shape[-1], decoded.rate
    problem = policy.track_problem(frames, rate) if policy.mode == "track" else None
    if problem:
        raise ClipError(problem)
    mono = to_mono(decoded.samples)
    audio = {sr: policy.apply(resample(mono, orig_sr=rate, target_sr=sr), sample_rate=sr) for sr in rates}
    return Clip(audio, frames, rate, decoded.notes)
