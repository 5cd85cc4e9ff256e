"""Pretrained-model embeddings as a stored feature: every hidden layer of an audio encoder, per clip.

``pipe build mtat --embedding m-a-p/MERT-v1-95M`` stores ``embedding/MERT-v1-95M``: for each clip
(and sub-clip) the mean over time of each hidden layer, ``[layer, dim]``; ``pool=none`` keeps the
model's frames, ``[layer, dim, frame]`` (time last, as log-mels: a track store concatenates tracks
along it, with ``extents/*``). Every layer is its own chunk, so a probe of one layer reads only
that layer's bytes.

The clip is cut as MARBLE's extraction cuts it (``benchmark/models/*/extract_*_features.py`` of
a43992899/MARBLE-Benchmark): windows of ``window_seconds`` every ``window_seconds - overlap``
(``hop_seconds``) from the start, the last one as long as what is left, dropped when shorter than
one second (unless it is the only one); each window goes through the model alone (windows of one
length are batched: no padding, no attention mask), ``pool=mean`` averages each window's frames
and then the windows. Audio is normalised to zero mean and unit variance per clip first when the
model's feature extractor does so (``do_normalize``: MERT's does).

Which model, and exactly which weights and libraries, is part of the feature: the weights' digest,
the versions of torch and transformers, the device and the forward pass's dtype are fields the
command line fills in from the model's folder, so the manifest and the array's attributes say
which embeddings a store holds, and a worker whose folder holds other weights refuses to compute.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Literal

import numpy as np

from pipeline.errors import MuzarrError
from pipeline.features.base import Feature, register

#: windows shorter than this (seconds) at the end of a clip are dropped, as MARBLE does
MIN_LAST_WINDOW_SECONDS = 1.0
POOLS = ("mean", "max", "none")
DEVICES = ("cpu", "cuda", "mps")


@register
@dataclasses.dataclass(frozen=True)
class Embedding(Feature):
    """Hidden states of a pretrained encoder (see the module's docstring).

    Given: ``model`` (a folder or a hub name), ``layers`` (``all``, ``7``, ``0-6`` or ``1;5;9``:
    hidden-state indices, 0 being the input of the first transformer layer), ``pool`` (``mean``,
    ``max`` or ``none``), ``window_seconds`` and ``hop_seconds`` (None: the model's window, no
    overlap), ``precision`` (the forward pass's dtype), ``device``, ``storage``, ``batch_size``
    (windows per forward pass), ``trust_remote_code`` (run the folder's own modelling code).

    Filled in from the model's folder (:data:`derived`; a store's manifest holds them): ``family``,
    ``sample_rate``, ``hidden_layers``, ``dim``, ``frames`` (the frame rule), ``normalize``,
    ``default_window``, ``weights`` (digest) and ``versions``.
    """

    kind: ClassVar[str] = "embedding"
    group: ClassVar[str] = "embedding"
    #: fields read from the model's folder, not given: a command that rebuilds a store leaves them out
    derived: ClassVar[tuple[str, ...]] = (
        "family", "sample_rate", "hidden_layers", "dim", "frames", "normalize", "default_window", "weights", "versions",
    )

    model: str = ""
    layers: str = "all"
    pool: Literal["mean", "max", "none"] = "mean"
    window_seconds: float | None = None
    hop_seconds: float | None = None
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["cpu", "cuda", "mps"] = "cpu"
    storage: Literal["float32", "float16"] = "float32"
    batch_size: int = 16
    trust_remote_code: bool = False
    family: str = ""
    sample_rate: int = 0
    hidden_layers: int = 0
    dim: int = 0
    frames: str = ""
    normalize: bool = False
    default_window: float | None = None
    weights: str = ""
    versions: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise MuzarrError("embedding: give the model, e.g. --embedding m-a-p/MERT-v1-95M or --embedding ./my-hubert")
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            object.__setattr__(self, "layers", str(self.layers))
        for name, choices in (("pool", POOLS), ("device", DEVICES), ("storage", ("float32", "float16"))):
            if getattr(self, name) not in choices:
                raise MuzarrError(f"embedding {name}={getattr(self, name)!r} must be one of {', '.join(choices)}")
        from pipeline.embed.models import PRECISIONS

        if self.precision not in PRECISIONS:
            raise MuzarrError(f"embedding precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        for name in ("window_seconds", "hop_seconds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise MuzarrError(f"embedding {name}={value!r} must be a positive number of seconds")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise MuzarrError(f"embedding batch_size={self.batch_size!r} must be a positive integer")
        if not self.family:
            self._resolve()
        window, hop = self.window, self.hop
        if window is not None and hop is not None and hop > window:
            raise MuzarrError(f"embedding hop_seconds={hop} is longer than the window ({window} s): audio between windows would be skipped")
        if self.pool == "none" and window is not None and hop is not None and hop != window:
            raise MuzarrError(
                f"embedding pool=none with hop_seconds={hop} and a {window} s window: overlapping windows would repeat "
                "frames along time; drop hop_seconds (or pool over time)"
            )
        self.layer_indices()  # an index out of range is refused here, before anything is written

    def _resolve(self) -> None:
        """Fill the derived fields from the model's folder (its configuration; its weights' digest)."""
        from pipeline.embed.models import describe, require_torch, versions, weights_digest

        # the folder first: it needs no torch, and a model that is not one (or not there) is said without waiting for it
        folder, info = describe(self.model, trust_remote_code=self.trust_remote_code)
        require_torch(f"--embedding {self.model}")
        values = {
            "family": info.family, "sample_rate": info.sample_rate, "hidden_layers": info.hidden_layers,
            "dim": info.dim, "frames": info.frames, "normalize": info.normalize,
            "default_window": info.window_seconds, "weights": weights_digest(folder), "versions": versions(),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # -- what the parameters mean ---------------------------------------------------------------

    @property
    def window(self) -> float | None:
        """Seconds per window (None: the whole clip in one forward pass)."""
        return self.window_seconds if self.window_seconds is not None else self.default_window

    @property
    def hop(self) -> float | None:
        return self.hop_seconds if self.hop_seconds is not None else self.window

    def layer_indices(self) -> tuple[int, ...]:
        """The hidden-state indices ``layers`` names, checked against the model's."""
        n = self.hidden_layers
        text = str(self.layers).strip()
        try:
            if text == "all":
                indices = tuple(range(n))
            elif re.fullmatch(r"\d+-\d+", text):
                a, b = (int(x) for x in text.split("-"))
                indices = tuple(range(a, b + 1))
            else:
                indices = tuple(int(x) for x in re.split(r"[;+ ]", text) if x)
        except ValueError:
            indices = ()
        if not indices:
            raise MuzarrError(f"embedding layers={self.layers!r}: give all, one index (7), a range (0-6) or a list (1;5;9)")
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise MuzarrError(
                f"embedding layers={self.layers!r}: layer {bad[0]} is out of range: {self.model} has hidden states 0 to {n - 1}"
            )
        if len(set(indices)) != len(indices):
            raise MuzarrError(f"embedding layers={self.layers!r} names a layer twice")
        return indices

    @property
    def variant(self) -> str:
        """``<model>`` plus what differs from the defaults: ``MERT-v1-95M``, ``MERT-v1-95M_L7_none_w10``."""
        short = re.sub(r"[^A-Za-z0-9._-]+", "-", self.model.rstrip("/").split("/")[-1]).strip("-.") or "model"
        parts = [short]
        if self.layers != "all":
            parts.append("L" + re.sub(r"[;+ ]", ".", str(self.layers)))
        if self.pool != "mean":
            parts.append(self.pool)
        if self.window_seconds is not None:
            parts.append(f"w{self.window_seconds:g}")
        if self.hop_seconds is not None:
            parts.append(f"h{self.hop_seconds:g}")
        if self.precision != "float32":
            parts.append(self.precision)
        return "_".join(parts)

    @property
    def axes(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("layer", "dim", "frame") if self.pool == "none" else ("layer", "dim")

    #: axes stored one index per chunk: reading one layer of every clip reads that layer's bytes only
    split_axes: ClassVar[tuple[str, ...]] = ("layer",)

    @property
    def dtype(self) -> str:
        return self.storage

    def frame_rate(self) -> float | None:
        from pipeline.embed.models import frames_per_second

        if self.pool != "none":
            return None
        return frames_per_second(self.frames, sample_rate=self.sample_rate, window_seconds=self.window)

    def windows(self, n_samples: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of each window of a clip of ``n_samples`` samples, as MARBLE cuts it."""
        if self.window is None or n_samples <= round(self.window * self.sample_rate):
            return [(0, n_samples)]
        size, step = round(self.window * self.sample_rate), round(self.hop * self.sample_rate)
        out = [(start, min(start + size, n_samples)) for start in range(0, n_samples, step)]
        if len(out) > 1 and out[-1][1] - out[-1][0] < MIN_LAST_WINDOW_SECONDS * self.sample_rate:
            out.pop()
        return out

    def output_shape(self, n_samples: int) -> tuple[int, ...]:
        shape = (len(self.layer_indices()), self.dim)
        if self.pool != "none":
            return shape
        from pipeline.embed.models import frame_count

        return (*shape, sum(frame_count(self.frames, stop - start) for start, stop in self.windows(n_samples)))

    # -- computing it -----------------------------------------------------------------------------

    def backbone(self):
        from pipeline.embed.models import loaded

        return loaded(self.model, weights=self.weights, trust_remote_code=self.trust_remote_code,
                      device=self.device, precision=self.precision)  # fmt: skip

    #: the clips of a build's batch share forward passes (:meth:`extract_many`)
    batched: ClassVar[bool] = True

    def extract(self, samples: np.ndarray, *, sampling_rate: int) -> np.ndarray:
        self.check_rate(sampling_rate)
        return self.extract_many([samples])[0]

    def extract_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Each clip's embedding (``[..., n]`` at :attr:`sample_rate`: a clip, or its sub-clips): the windows of
        every clip and sub-clip go through the model together, those of one length ``batch_size`` at a time."""
        clips = [np.asarray(c, dtype=np.float32) for c in clips]
        rows = [row for c in clips for row in c.reshape(-1, c.shape[-1])]
        pooled = self._pooled(rows)
        out, k = [], 0
        for c in clips:
            n = int(np.prod(c.shape[:-1], dtype=np.int64))
            values = np.stack(pooled[k : k + n])
            out.append(values.reshape(*c.shape[:-1], *values.shape[1:]).astype(self.storage, copy=False))
            k += n
        return out

    def _pooled(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        """Each row's (a clip's or sub-clip's) ``[layer, dim]`` (or ``[layer, dim, frame]``)."""
        if self.normalize:  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm, over each whole clip
            rows = [(r - r.mean()) / np.sqrt(r.var() + 1e-7) for r in rows]
        spans = [(r, start, stop) for r, row in enumerate(rows) for start, stop in self.windows(row.shape[-1])]
        from pipeline.embed.models import frame_count

        for _, start, stop in spans:
            if frame_count(self.frames, stop - start) < 1:
                raise MuzarrError(
                    f"{(stop - start) / self.sample_rate * 1000:.0f} ms of audio is shorter than one frame of "
                    f"{self.variant} (its frames: {self.frames})"
                )
        layers = list(self.layer_indices())
        backbone = self.backbone()
        states: list[np.ndarray] = [np.empty(0)] * len(spans)  # each window's [layer, dim] ([layer, frame, dim]: pool=none)
        by_length: dict[int, list[int]] = {}
        for i, (_, start, stop) in enumerate(spans):
            by_length.setdefault(stop - start, []).append(i)
        for members in by_length.values():
            for k in range(0, len(members), self.batch_size):
                chunk = members[k : k + self.batch_size]
                batch = np.stack([rows[spans[i][0]][spans[i][1] : spans[i][2]] for i in chunk])
                pooled = self._pool_windows(backbone.hidden_states(batch), layers)
                for j, i in enumerate(chunk):
                    states[i] = pooled[j]
        out = []
        by_row: dict[int, list[np.ndarray]] = {}
        for i, span in enumerate(spans):
            by_row.setdefault(span[0], []).append(states[i])
        for r in range(len(rows)):
            mine = by_row[r]
            if self.pool == "mean":  # each window's mean over its frames, then the mean of the windows (MARBLE's)
                out.append(np.mean(mine, axis=0, dtype=np.float64).astype(np.float32))
            elif self.pool == "max":
                out.append(np.max(mine, axis=0))
            else:
                out.append(np.concatenate(mine, axis=1).transpose(0, 2, 1))  # [layer, dim, frame]: time last
        return out

    def _pool_windows(self, hidden, layers: list[int]) -> np.ndarray:
        """Windows' hidden states ``[batch, hidden layers, frame, dim]`` (a tensor on the model's device) -> the
        chosen layers, pooled over frames there (``[batch, layer, dim]``; ``[batch, layer, frame, dim]`` for
        ``pool=none``), float32 on the host: only what is stored crosses to it, and a batch's windows are pooled
        as they come, so a batch of clips never holds every frame at once."""
        import torch

        if hidden.shape[1] != self.hidden_layers or hidden.shape[3] != self.dim:
            raise MuzarrError(
                f"{self.model} returned hidden states of shape {tuple(hidden.shape[1:])}, its configuration says "
                f"{self.hidden_layers} layers of {self.dim}"
            )
        with torch.inference_mode():
            chosen = hidden[:, layers].float()
            if self.pool == "mean":
                chosen = chosen.mean(dim=2)
            elif self.pool == "max":
                chosen = chosen.amax(dim=2)
            return chosen.cpu().numpy()

    def check_computable(self) -> None:
        from pipeline.embed.models import check_device

        check_device(self.device, where=f"--embedding {self.model}")

    def attrs(self) -> dict[str, Any]:
        rate = self.frame_rate()
        return {
            "sample_rate": self.sample_rate, "layers": list(self.layer_indices()), "model": self.model,
            "weights": self.weights, **({"frame_rate": rate} if rate else {}),
        }
