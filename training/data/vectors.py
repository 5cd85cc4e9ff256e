"""Per-clip vector arrays (``tabular/<set>``, ``embedding/<variant>``): their axes, and one vector per clip from them.

A tabular set is ``[clip, (subclip,) feature]``. An embedding is ``[clip, (subclip,) layer, dim]``
pooled over time, or ``[clip, (subclip,) layer, dim, frame]`` time-resolved; its ``layers`` attribute
names the hidden-state index each position of the layer axis holds (0 = the input of the first
transformer layer). :class:`VectorLayout` says which axis is which; :func:`to_vectors` turns stored
rows into the vectors a model or a probe reads (frames averaged, one layer or every layer averaged).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import MuzarrError, Store
from pipeline.suggest import did_you_mean

__all__ = ["VECTOR_PREFIXES", "VectorLayout", "to_vectors", "vector_arrays", "vector_layout"]

#: the store arrays that hold one vector per (sub-)clip
VECTOR_PREFIXES = ("tabular/", "embedding/")


def vector_arrays(store: Store) -> list[str]:
    """The store's per-clip vector arrays, in store order."""
    return [name for name in store.arrays if name.startswith(VECTOR_PREFIXES)]


@dataclass(frozen=True)
class VectorLayout:
    """The axes of a per-clip vector array.

    Attributes
    ----------
    name : str
        Store array (``embedding/MERT-v1-95M``).
    clip_shape : tuple of int
        Stored shape of one clip (no clip axis).
    subclips : bool
        The first axis of ``clip_shape`` is the store's sub-clips.
    layers : tuple of int or None
        Hidden-state index of each position of the layer axis; ``None``: no layer axis (tabular).
    frames : bool
        The last axis is time (a time-resolved embedding): it is averaged.
    """

    name: str
    clip_shape: tuple[int, ...]
    subclips: bool
    layers: tuple[int, ...] | None
    frames: bool

    @property
    def layer_axis(self) -> int | None:
        """The layer axis in the stored rows ``[n, *clip_shape]``."""
        return None if self.layers is None else 1 + self.subclips

    @property
    def dim(self) -> int:
        return self.clip_shape[-2 if self.frames else -1]

    def vector_shape(self) -> tuple[int, ...]:
        """Shape of one clip's vectors once read: ``((subclip,) dim)``."""
        return (*self.clip_shape[:1], self.dim) if self.subclips else (self.dim,)

    def position(self, layer: int, *, what: str) -> int:
        """The position of hidden state ``layer`` on the layer axis; one not stored is one line naming those that are."""
        if self.layers is None:
            raise MuzarrError(f"{what}: {self.name} has no layers (layer={layer!r}); drop the layer option")
        if layer not in self.layers:
            raise MuzarrError(
                f"{what}: layer {layer} is not in {self.name}{did_you_mean(str(layer), map(str, self.layers))}; "
                f"it holds layers {_ranges(self.layers)} (or give layer=all)"
            )
        return self.layers.index(layer)


def vector_layout(store: Store, name: str) -> VectorLayout:
    """The layout of vector array ``name`` of ``store``, from its shape and, for an embedding, its
    ``axes`` and ``layers`` attributes; a name the store lacks is one line listing its vector arrays."""
    if name not in store.arrays:
        have = vector_arrays(store)
        raise MuzarrError(
            f"store {store.url} has no array {name!r}{did_you_mean(name, have, quote=True)}; "
            + (f"its per-clip vector arrays: {', '.join(have)}" if have else
               "it has no per-clip vector array: add one with `pipe build ... --tabular summary` or `--embedding MODEL`")
        )  # fmt: skip
    info = store.arrays[name]
    if info.extents is not None:
        raise MuzarrError(
            f"{name} of {store.url} is time-resolved over whole tracks: a per-clip vector needs the pooled array "
            "(build the embedding with pool=mean)"
        )
    clip_shape = tuple(int(n) for n in info.shape[1:])
    subclips = store.n_subclips is not None
    if not name.startswith("embedding/"):
        if len(clip_shape) != 1 + subclips:
            raise MuzarrError(f"{name} of {store.url} has shape {list(info.shape)}: not one vector per (sub-)clip")
        return VectorLayout(name, clip_shape, subclips, None, False)
    attrs = dict(store.array(name).attrs)
    axes = attrs.get("axes")
    if isinstance(axes, list) and axes and axes[0] == "clip":
        subclips = "subclip" in axes
        frames = axes[-1] == "frame"
    else:  # no axes attribute: layer and dim, then time when there is one more axis
        frames = len(clip_shape) == 3 + subclips
    if len(clip_shape) != 2 + subclips + frames:
        raise MuzarrError(f"{name} of {store.url} has shape {list(info.shape)} (axes {axes}): not [clip, (subclip,) layer, dim(, frame)]")
    n_layers = clip_shape[subclips]
    layers = attrs.get("layers", (info.feature or {}).get("layers"))
    if not (isinstance(layers, list) and len(layers) == n_layers and all(isinstance(x, int) for x in layers)):
        layers = list(range(n_layers))  # a store that does not name them: positions are the indices
    return VectorLayout(name, clip_shape, subclips, tuple(layers), frames)


def to_vectors(rows: np.ndarray, layout: VectorLayout, *, positions: int | list[int] | None = None) -> np.ndarray:
    """Stored rows ``[n, *clip_shape]`` as float32 vectors.

    Frames are averaged first. Then, with a layer axis: ``positions`` an int keeps that layer
    alone (``[n, (subclip,) dim]``), a list keeps those layers (``[n, (subclip,) layer, dim]``),
    ``None`` averages every layer (``[n, (subclip,) dim]``). Without one (tabular): the rows as float32.
    """
    values = rows.astype(np.float32, copy=False)
    if layout.frames:
        values = values.mean(axis=-1, dtype=np.float32)
    axis = layout.layer_axis
    if axis is None:
        return np.ascontiguousarray(values)
    if positions is None:
        return values.mean(axis=axis, dtype=np.float32)
    return np.ascontiguousarray(np.take(values, positions, axis=axis))


def _ranges(values: tuple[int, ...]) -> str:
    """``0-12`` for consecutive indices, else the list."""
    if len(values) > 2 and list(values) == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))
