"""What a model's examples are, given a store: the array it reads, clips, sub-clips or crops, and where
crops start.

A *clip* is a row of the store; an *example* is what the model sees: the whole clip, one
stored sub-clip, or a crop of ``n`` frames/samples. Training draws one random crop per clip
(or every sub-clip) per epoch; evaluation takes ``eval_crops`` evenly spaced crops per clip and
the loop averages their predictions per clip, as the seed reports and Won et al. do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from pipeline import MuzarrError, Store
from pipeline.audio import ClipPolicy
from pipeline.commands import build_command
from pipeline.config import make_feature
from pipeline.features.base import n_frames
from training.data.spec import InputSpec
from training.data.vectors import VectorLayout, to_vectors, vector_layout

LOGMEL_MATCH = ("sample_rate", "n_mels", "n_fft", "hop_length", "pad_frames")


def resolve_array(store: Store, spec: InputSpec) -> str:
    """The store array that serves ``spec``; a missing one names the ``pipe build`` option that adds it."""
    arrays = store.arrays
    if spec.is_vector:
        name = spec.array_name
        if name not in arrays and not _buildable(spec):
            vector_layout(store, name)  # one line: did you mean, and the vector arrays it has
        candidates = [name] if name in arrays else []
    else:
        candidates = []
        for name, info in arrays.items():
            feature = info.feature
            if feature["kind"] != spec.kind or feature["sample_rate"] != spec.sample_rate:
                continue
            if spec.kind == "logmel" and any(feature[k] != getattr(spec, k) for k in LOGMEL_MATCH):
                continue
            candidates.append(name)
        # Prefer the plain recipe (dB, top_db 80, full band) when several variants match.
        candidates.sort(key=lambda n: (arrays[n].feature.get("f_max") is not None, arrays[n].feature.get("log") != "db"))
    if not candidates:
        raise MuzarrError(
            f"store {store.url} has no {spec.kind} input for this model (arrays: {', '.join(arrays)}); "
            + _add_hint(store, spec)
        )
    return candidates[0]


def _buildable(spec: InputSpec) -> bool:
    """A tabular set ``pipe build`` knows (its hint adds it to the store); an embedding needs a model named."""
    if spec.kind != "tabular":
        return False
    try:
        make_feature(spec.feature_spec(), where="model input")
    except MuzarrError:
        return False
    return True


def _add_hint(store: Store, spec: InputSpec) -> str:
    """The ``pipe build`` that adds ``spec``'s feature to the store as it is built (every override kept)."""
    feature = make_feature(spec.feature_spec(), where="model input")
    config = store.config()
    if feature.name not in store.arrays:
        return f"add it with: {build_command(config, out=store.url, source=store.source, add=[spec.feature_spec()])}"
    # A store has one array per name (one waveform): another variant of it goes into a second store.
    out = f"{store.url.rstrip('/').removesuffix('.zarr')}-{feature.kind}{feature.sample_rate}.zarr"
    command = build_command(replace(config, features=(feature,)), out=out, source=store.source)
    return f"its {feature.name} is another variant; build a store of this one: {command}"


@dataclass(frozen=True)
class ExamplePlan:
    """How clips of one array become examples.

    Attributes
    ----------
    array : str
        Store array name.
    clip_shape : tuple
        Stored per-clip shape (with the sub-clip axis when the store has one).
    length : int or None
        Crop length along the last axis (frames or samples); ``None`` = whole (sub-)clip.
    eval_crops : int
        Crops per (sub-)clip at evaluation.
    placement : {"spread", "won"}
        Where the evaluation crops start (:func:`eval_offsets`).
    group_subclips : bool
        Training batches hold whole clips (every sub-clip of each), not shuffled sub-clips.
    crop_span : int or None
        Training crops start so that they end within the first ``crop_span`` frames/samples
        (Won et al.'s loader: the first 29 s); ``None`` = anywhere in the (sub-)clip.
    tracks : bool
        The array holds whole tracks of any length (a track store): ``clip_shape`` ends in ``-1``,
        each clip's length is its extent, training crops fall anywhere within it and evaluation
        takes ``eval_crops`` crops spread over each whole track.
    vector : VectorLayout or None
        An embedding array: how its stored rows become vectors (:meth:`vectors_of`);
        ``clip_shape`` is then the vectors' shape, ``((subclip,) dim)``.
    layer_position : int or None
        The position on the embedding's layer axis that is read; ``None`` = every layer averaged.
    """

    array: str
    clip_shape: tuple[int, ...]
    length: int | None
    eval_crops: int
    placement: str = "spread"
    group_subclips: bool = False
    crop_span: int | None = None
    tracks: bool = False
    vector: VectorLayout | None = None
    layer_position: int | None = None

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """Stored rows ``[n, *stored clip shape]`` as the examples' values (an embedding's layer, or the mean
        of its layers, and of its frames); the rows themselves for every other array."""
        if self.vector is None:
            return rows
        return to_vectors(rows, self.vector, positions=self.layer_position)

    @property
    def n_subclips(self) -> int:
        return self.clip_shape[0] if self._has_subclips else 1

    @property
    def _has_subclips(self) -> bool:
        return len(self.clip_shape) == (3 if self.is_2d else 2)

    @property
    def is_2d(self) -> bool:
        return self.array.startswith("logmel/")

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one stored (sub-)clip."""
        return self.clip_shape[1:] if self._has_subclips else self.clip_shape

    @property
    def example_shape(self) -> tuple[int, ...]:
        if self.length is None:
            return self.item_shape
        return (*self.item_shape[:-1], self.length)

    @property
    def examples_per_clip_eval(self) -> int:
        return self.n_subclips * self.eval_crops


def plan_examples(
    store: Store,
    spec: InputSpec,
    *,
    eval_crops: int | None = None,
    placement: str = "spread",
    sub_clips: int | None = None,
    group_subclips: bool = False,
) -> ExamplePlan:
    """Work out the example length and the evaluation crops of ``spec`` on ``store``.

    ``sub_clips`` (a protocol's): examples are the store's whole sub-clips, and the store must
    hold exactly that many per clip; a store of whole clips is refused with the build that
    makes the sub-clips.
    """
    array = resolve_array(store, spec)
    if spec.kind == "embedding":
        return _embedding_plan(store, spec, array, placement=placement, sub_clips=sub_clips, group_subclips=group_subclips)
    if store.arrays[array].extents is not None:
        return _track_plan(store, spec, array, eval_crops=eval_crops, placement=placement, sub_clips=sub_clips)
    clip_shape = store.arrays[array].shape[1:]
    plan = ExamplePlan(array, clip_shape, None, 1, placement)
    if sub_clips is not None:
        if plan.n_subclips != sub_clips:
            raise MuzarrError(_subclip_hint(store, spec, array, plan, sub_clips))
        return ExamplePlan(array, clip_shape, None, 1, placement, group_subclips)
    if spec.is_vector or spec.seconds is None:
        return plan
    length = spec.example_shape()[-1]
    stored = plan.item_shape[-1]
    if length >= stored:
        # The store's clips are no longer than one example: use them whole (zero-padded if short).
        return ExamplePlan(array, clip_shape, length if length > stored else None, 1, placement)
    crops = eval_crops or max(1, math.ceil(stored / length))
    return ExamplePlan(array, clip_shape, length, crops, placement)


def _embedding_plan(store: Store, spec: InputSpec, array: str, *, placement: str, sub_clips, group_subclips: bool) -> ExamplePlan:
    """One vector per (sub-)clip of an embedding: the layer asked for (or the mean of all), frames averaged."""
    layout = vector_layout(store, array)
    position = None if spec.layer is None else layout.position(spec.layer, what=f"--input {spec.describe()}")
    plan = ExamplePlan(array, layout.vector_shape(), None, 1, placement, vector=layout, layer_position=position)
    if sub_clips is not None:
        if plan.n_subclips != sub_clips:
            raise MuzarrError(f"this protocol trains on {sub_clips} sub-clips per clip, but {array} of {store.url} holds "
                              f"{plan.n_subclips if layout.subclips else 'no'} sub-clips per clip (--sub-clips 0 trains on whole clips)")  # fmt: skip
        return replace(plan, group_subclips=group_subclips)
    return plan


#: evaluation crops per track of a track store (Won et al.'s MTG-Jamendo ``eval.py``: 16 per track)
TRACK_EVAL_CROPS = 16
#: the crop of a whole-clip model (crnn, cnn5, ...) on a track store: the 29.12 s of the MTAT clips it was made for
TRACK_WHOLE_CLIP_SECONDS = 29.12


def _track_plan(store: Store, spec: InputSpec, array: str, *, eval_crops, placement: str, sub_clips) -> ExamplePlan:
    """Examples of a track store's time array: crops of the model's input length within each track."""
    if sub_clips is not None:
        raise MuzarrError(
            f"this protocol trains on {sub_clips} stored sub-clips per clip, but {store.url} holds whole tracks "
            "(clip mode track): train on random crops with --sub-clips 0, or build a store of sub-clips"
        )
    inner = store.arrays[array].shape[:-1]
    length = spec.example_shape(spec.seconds or TRACK_WHOLE_CLIP_SECONDS)[-1]
    return ExamplePlan(array, (*inner, -1), length, eval_crops or TRACK_EVAL_CROPS, placement, tracks=True)


def plan_for(store: Store, spec: InputSpec, protocol) -> ExamplePlan:
    """:func:`plan_examples` with a :class:`~training.protocol.Protocol`'s evaluation, sub-clip
    and training-crop settings."""
    plan = plan_examples(
        store, spec, eval_crops=protocol.eval_crops, placement=protocol.eval_placement,
        sub_clips=protocol.sub_clips, group_subclips=protocol.group_subclips,
    )  # fmt: skip
    seconds = protocol.train_crop_seconds
    if seconds is None or plan.length is None or spec.is_vector:
        return plan
    samples = round(seconds * spec.sample_rate)
    span = samples if spec.kind == "waveform" else n_frames(samples, hop_length=spec.hop_length, pad_frames=spec.pad_frames)
    return replace(plan, crop_span=span)


def crop_offsets(rng: np.random.Generator, n: int, *, total, length: int, span: int | None = None) -> np.ndarray:
    """``n`` random training-crop starts in ``[0, total - length]``; with ``span``, Won et al.'s
    ``floor(U * (span - length))`` (``mtat_loader.py``: the crop ends within the first
    ``span``), capped by the clip's own length. ``total`` may be one length per crop (tracks)."""
    if not np.isscalar(total):  # a length per crop
        high = np.asarray(total, dtype=np.int64) if span is None else np.minimum(span, total)
        return rng.integers(0, np.maximum(1, high - length + (span is None)), size=n)
    if span is None:
        return rng.integers(0, max(1, total - length + 1), size=n)
    return rng.integers(0, max(1, min(span, total) - length), size=n)


def _subclip_hint(store: Store, spec: InputSpec, array: str, plan: ExamplePlan, sub_clips: int) -> str:
    config = store.config()
    has = f"{plan.n_subclips} sub-clips per clip" if plan.n_subclips > 1 else "whole clips"
    total = config.clip.total_seconds or config.clip.seconds
    seconds = float(f"{min(spec.seconds or total, total / sub_clips):g}")  # sub-clips that fit in the clip
    clip = ClipPolicy(**{**config.clip.to_dict(), "mode": "split", "seconds": seconds, "total_seconds": total, "hop_seconds": None})
    split = replace(config, clip=clip, features=(make_feature(spec.feature_spec(), where="model input"),))
    base = store.url.rstrip("/").removesuffix(".zarr")
    return (
        f"this protocol trains on {sub_clips} sub-clips per clip, but {array} of {store.url} holds {has}; "
        f"build a store of sub-clips: {build_command(split, out=f'{base}-split.zarr', source=store.source)} "
        "(or train on random crops with --sub-clips 0)"
    )
