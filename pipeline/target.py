"""What a build must end with (:class:`BuildTarget`): a configuration, an index and the arrays they imply,
cut into batches; a track store's plan of where each batch's tracks go; the manifest that describes it; and
the job each batch's task is given (:class:`~pipeline.batch.BatchJob`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from typing import Any

from pipeline.batch import BatchJob
from pipeline.config import BuildConfig
from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex
from pipeline.store.io import check_metadata_size
from pipeline.store.layout import DIGEST, SCHEMA_VERSION, ArrayLayout, plan_layout
from pipeline.store.location import Location
from pipeline.store.manifest import ArrayInfo, Manifest
from pipeline.store.marker import Marker
from pipeline.tracks import TrackPlan, plan_tracks

VERSIONED = ("muzarr", "numpy", "scipy", "soundfile", "soxr", "librosa", "zarr", "numcodecs", "av", "dask")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    import soundfile

    versions["libsndfile"] = soundfile.__libsndfile_version__
    return versions


@dataclass(frozen=True)
class BuildTarget:
    """What the build must end with: a configuration, an index and the arrays they imply.

    Batch ``b`` holds rows ``rows(b)`` and owns shard ``b`` of every array (a track store: the regions
    ``plan`` gives it in each time array). ``source`` is where the audio came from, as the manifest records
    it (:func:`pipeline.config.recorded_source`).
    """

    config: BuildConfig
    index: DatasetIndex
    layouts: tuple[ArrayLayout, ...]
    plan: TrackPlan | None = None
    source: str | None = None

    @classmethod
    def planned(cls, config: BuildConfig, index: DatasetIndex, *, plan: TrackPlan | None = None, source: str | None = None):
        """The target of ``config`` for ``index`` (a track store's arrays sized by ``plan``)."""
        return cls(config, index, tuple(plan_layout(config, len(index), tracks=plan)), plan, source)

    @property
    def n(self) -> int:
        return len(self.index)

    @property
    def names(self) -> list[str]:
        return [layout.name for layout in self.layouts]

    @property
    def n_batches(self) -> int:
        return -(-self.n // self.config.batch_clips)

    def rows(self, batch: int) -> range:
        size = self.config.batch_clips
        return range(batch * size, min(self.n, (batch + 1) * size))

    @cached_property
    def clip_ids(self) -> list[str]:
        return self.index.clips["clip_id"].astype(str).tolist()

    @cached_property
    def paths(self) -> list[str]:
        return self.index.audio_paths()

    def marker(self, batch: int, data: Any) -> Marker | None:
        """The marker ``data`` (as read from the store) of ``batch`` if it can be trusted for this target."""
        rows = self.rows(batch)
        regions = self.plan.batch_regions(batch) if self.plan is not None else None
        return Marker.from_dict(
            data, batch=batch, start=rows.start, clip_ids=self.clip_ids[rows.start : rows.stop], names=self.names,
            regions=regions,
        )

    def job(self, loc: Location, batch: int, *, arrays: list[str] | None, base: Marker | None) -> BatchJob:
        """What the task of ``batch`` is given: everything planned here, nothing for it to plan again."""
        rows = self.rows(batch)
        return BatchJob(
            loc=loc, batch=batch, config=self.config, layouts=self.layouts, start=rows.start,
            clip_ids=tuple(self.clip_ids[rows.start : rows.stop]), paths=tuple(self.paths[rows.start : rows.stop]),
            arrays=None if arrays is None else tuple(arrays), base=base,
            regions=self.plan.batch_regions(batch) if self.plan is not None else None,
        )

    def replanned(self, decoded: dict[int, list]) -> BuildTarget:
        """This target after the batches of ``decoded`` overflowed their regions (see :meth:`TrackPlan.replanned`)."""
        return BuildTarget.planned(self.config, self.index, plan=self.plan.replanned(decoded), source=self.source)

    def manifest(self, *, state: str, arrays: dict[str, ArrayInfo] | None = None, **finished) -> Manifest:
        """The manifest of this target in ``state``: its arrays as planned unless ``arrays`` is given; a finished
        store's counts, failures, notes, split counts and time as ``finished``."""
        config, index = self.config, self.index
        planned = {layout.name: ArrayInfo.of(layout) for layout in self.layouts}
        return Manifest(
            schema_version=SCHEMA_VERSION, state=state, digest=DIGEST, config=config.to_dict(), source=self.source or None,
            task=index.task, classes=tuple(index.classes), n_clips=len(index), n_subclips=config.clip.n_subclips,
            versions=library_versions(), index_info=index.info, arrays=planned if arrays is None else arrays, **finished,
        )


def plan_track_target(
    loc: Location, config: BuildConfig, index: DatasetIndex, client, *, overwrite: bool, repair: bool, source: str | None
) -> BuildTarget:
    """A track store's target: every file probed (or its earlier probe reused; all probed again for a repair),
    and the regions that plan gives each batch."""
    ids = index.clips["clip_id"].astype(str).tolist()
    relative = index.clips["path"].astype(str).tolist()
    lengths = {}
    if not overwrite:
        for layout in plan_layout(config, len(index), tracks=None):
            if layout.extents:
                lengths[layout.name] = _stored_length(loc, layout.name)
    # probed by path: a probe kept in the store names the files relative to the source
    plan = plan_tracks(
        loc, config, ids, relative, client, reuse=not overwrite, open_path=dict(zip(relative, index.audio_paths())),
        lengths=lengths, reprobe=repair,
    )
    return BuildTarget.planned(config, index, plan=plan, source=source)


def _stored_length(loc: Location, name: str) -> int:
    """The time length of track array ``name`` in the store now (0 when it cannot be opened)."""
    import zarr

    try:
        check_metadata_size(loc, f"{name}/zarr.json")
        array = loc.open_group(mode="r")[name]
    except (KeyError, ValueError, TypeError, OSError, MuzarrError, zarr.errors.BaseZarrError):
        return 0
    return int(array.shape[-1]) if isinstance(array, zarr.Array) and array.ndim else 0


def pending(target: BuildTarget, markers: dict[int, Marker]) -> dict[int, tuple[list[str] | None, Marker | None]]:
    """The batches that still have work: batch -> (the arrays to compute, or None for all; the marker to build on)."""
    work = {}
    for b in range(target.n_batches):
        marker = markers.get(b)
        todo = [name for name in target.names if marker is None or name not in marker.digests]
        if todo:
            work[b] = (None if marker is None else todo, marker)
    return work
