"""What a build checks before it writes anything: that the features it adds can be computed, on
their parameters and on the first clip of the source, and that its layout fits the readers and
the workers.

A build that fails one of these checks would write a store (or grow one) whose new arrays fail
on every clip, or whose shards no reader or worker can hold; refused here, nothing is written,
not even the store's folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack

import numpy as np

from pipeline.audio import load_clip
from pipeline.cluster import close_client, make_client
from pipeline.config import BuildConfig
from pipeline.errors import MuzarrError
from pipeline.features.base import Feature
from pipeline.index import DatasetIndex
from pipeline.store.io import MAX_BLOCK_BYTES
from pipeline.store.layout import ArrayLayout
from pipeline.store.manifest import Manifest

#: clips the first-clip check tries before it gives up looking for one that decodes (their
#: failures are then the build's to record, clip by clip)
PROBE_TRIES = 16
#: the share of a worker's memory one batch's arrays may take: the rest decodes, resamples and
#: encodes (each shard is encoded once more before it is written) and runs the worker itself
BATCH_MEMORY_SHARE = 0.5


def added_features(config: BuildConfig, manifest: Manifest | None) -> list[Feature]:
    """The features whose arrays this build adds: every one for a new store (``manifest`` None),
    the ones the store's manifest does not list for a grow."""
    held = set(manifest.arrays) if manifest is not None else set()
    return [f for f in config.features if f.name not in held]


def check_before_writing(
    config: BuildConfig, index: DatasetIndex, layouts: Sequence[ArrayLayout] | None, existing: Manifest | None, *,
    client, workers: int | None, scheduler: str | None,
) -> tuple[object, ExitStack, tuple[int | None, str]]:
    """Every check a build makes before it writes: the parameters of the features it adds, the sizes of
    ``layouts`` (None: a track store's, known only once its files are probed), and the added features
    on the first clip that decodes.

    Returns the Dask client to build with (``client``, or one started here for the first-clip check:
    it runs the batches too, and the exit stack closes it), that stack, and a worker's memory.
    """
    added = added_features(config, existing)
    check_parameters(added)
    memory = worker_memory(client=client, workers=workers, scheduler=scheduler)
    if layouts is not None:
        check_sizes(config, layouts, n_clips=len(index), memory=memory)
    owned = ExitStack()
    if added and client is None:
        client = make_client(workers=workers, scheduler=scheduler)
        owned.callback(close_client, client)
    try:
        if memory[0] is None and client is not None and layouts is not None:  # another scheduler's workers, now known
            memory = worker_memory(client=client)
            check_sizes(config, layouts, n_clips=len(index), memory=memory)
        ids = index.clips["clip_id"].astype(str).tolist()
        first_clip_on(client, config, added, clip_ids=ids, paths=index.audio_paths())
    except BaseException:
        owned.close()
        raise
    return client, owned, memory


def check_parameters(features: Sequence[Feature]) -> None:
    """Each feature's :meth:`~pipeline.features.base.Feature.check_computable`: parameters that cannot work."""
    for feature in features:
        feature.check_computable()


def check_first_clip(
    config: BuildConfig, features: Sequence[Feature], *, clip_ids: Sequence[str], paths: Sequence[str]
) -> None:
    """Refuse ``features`` if one of them fails on the first clip of ``paths`` that decodes.

    That clip (a clip that does not decode is skipped, as the build would record it) goes through
    every feature as a batch computes it: a feature that raises, gives another shape than the store
    plans, or values that are not finite is refused in one line, naming it and its options.
    """
    if not features:
        return
    rates = tuple(sorted({f.sample_rate for f in features}))
    for clip_id, path in list(zip(clip_ids, paths))[:PROBE_TRIES]:
        try:
            audio = load_clip(path, rates=rates, policy=config.clip).audio
        except Exception:  # noqa: BLE001, S112 - a clip that does not decode is the build's to record
            continue
        for feature in features:
            samples = audio[feature.sample_rate]
            try:
                problem = _problem(config, feature, samples)
            except Exception as error:  # noqa: BLE001 - whatever the computation raised is the reason
                text = str(error).strip().splitlines()
                problem = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
            if problem:
                raise MuzarrError(
                    f"feature {feature.name} fails on the first clip, {clip_id} ({path}): {problem}; "
                    f"nothing was written: change its options ({_options(feature)})"
                )
        return


def first_clip_on(client, config: BuildConfig, features: Sequence[Feature], *, clip_ids, paths) -> None:
    """:func:`check_first_clip` as a task of ``client``: a worker of the build's own cluster computes it, so
    what the features compile or load on the way (numba kernels, filter banks) serves its batches too."""
    if not features:
        return
    future = client.submit(
        check_first_clip, config, list(features), clip_ids=list(clip_ids[:PROBE_TRIES]), paths=list(paths[:PROBE_TRIES]),
        key=f"muzarr-preflight-{os.getpid()}", pure=False,
    )  # fmt: skip
    try:
        future.result()
    finally:
        future.release()


def _problem(config: BuildConfig, feature: Feature, samples: np.ndarray) -> str | None:
    """Why ``feature`` of ``samples`` (a clip as :func:`load_clip` gives it) could not be stored, or None."""
    values = np.asarray(feature.extract(samples, sampling_rate=feature.sample_rate))
    if config.clip.mode == "track":
        wanted = tuple(feature.output_shape(samples.shape[-1]))
    else:
        sub = (config.clip.n_subclips,) if config.clip.n_subclips else ()
        wanted = (*sub, *feature.output_shape(config.clip.n_samples(feature.sample_rate)))
    if values.shape != wanted:
        return f"it gives values of shape {values.shape}, the store plans {wanted}"
    if values.dtype.kind == "f" and not np.isfinite(values.astype(np.float32, copy=False)).all():
        return "its values are not finite (NaN or infinity)"
    return None


def _options(feature: Feature) -> str:
    changed = [
        f"{field.name}={getattr(feature, field.name)}"
        for field in dataclasses.fields(feature)
        if getattr(feature, field.name) != field.default
    ]
    return ", ".join(changed) or "its defaults"


def worker_memory(*, client=None, workers: int | None = None, scheduler: str | None = None) -> tuple[int | None, str]:
    """The memory one Dask worker may use, and where that figure comes from (None: not known).

    A caller's client tells its workers' limits; an embedded cluster gives each of its workers
    an even share of this machine's memory (Dask's ``memory_limit="auto"``); the workers of
    another scheduler are not known before the build connects to it.
    """
    if client is not None:
        limits = [w.get("memory_limit") or 0 for w in client.scheduler_info().get("workers", {}).values()]
        limits = [int(limit) for limit in limits if limit]
        if limits:
            return min(limits), "the smallest Dask worker's memory limit"
        return None, ""
    if scheduler:
        return None, ""
    from distributed.system import MEMORY_LIMIT

    n = workers or os.cpu_count() or 1
    return MEMORY_LIMIT // n, f"this machine's memory shared by {n} worker(s)"


def check_sizes(config: BuildConfig, layouts: Sequence[ArrayLayout], *, n_clips: int, memory: tuple[int | None, str]) -> None:
    """Refuse a layout whose shard exceeds what a reader holds (:data:`MAX_BLOCK_BYTES`) or whose batch
    cannot fit in a worker's memory, naming the ``batch_clips`` that would fit."""
    per_clip = {}  # array -> bytes of one clip's rows in a shard (clip-axis arrays)
    for layout in layouts:
        itemsize = np.dtype(layout.dtype).itemsize
        shard = math.prod(layout.shards or layout.chunks) * itemsize
        if layout.extents:  # a track store's time array: its shards are sized by the plan, not by batch_clips
            if shard > MAX_BLOCK_BYTES:
                raise MuzarrError(
                    f"{layout.name} would have shards of {_size(shard)}, more than the {_size(MAX_BLOCK_BYTES)} a reader "
                    "holds: lower --set batch_clips"
                )
            continue
        per_clip[layout.name] = shard // (layout.shards or layout.chunks)[0]
    if not per_clip:
        return
    batch = config.batch_clips
    limit, source = memory
    budget = int(limit * BATCH_MEMORY_SHARE) if limit else None

    def fits(b: int) -> str | None:
        name = max(per_clip, key=per_clip.get)
        if b * per_clip[name] > MAX_BLOCK_BYTES:
            return (
                f"batch_clips={b} makes every shard of {name} {_size(b * per_clip[name])} ({b} clips of "
                f"{_size(per_clip[name])}), more than the {_size(MAX_BLOCK_BYTES)} a reader holds in memory"
            )
        held = min(b, n_clips) * (sum(per_clip.values()) + per_clip[name])
        if budget is not None and held > budget:
            return (
                f"batch_clips={b} makes a batch hold {_size(held)} ({min(b, n_clips)} clips of every array, and its "
                f"largest shard once more as it is encoded), more than half of a worker's {_size(limit)} ({source})"
            )
        return None

    problem = fits(batch)
    if problem is None:
        return
    largest = max(per_clip.values())
    most = max(1, MAX_BLOCK_BYTES // largest)
    if budget is not None:
        most = min(most, max(1, budget // (sum(per_clip.values()) + largest)))
    if fits(most) is not None:
        raise MuzarrError(
            f"{problem}; not even one clip per batch fits: shorten the clips (--set clip.seconds) or store less per "
            "clip (a lower sample_rate, int16 or float16 storage)"
        )
    raise MuzarrError(f"{problem}: use --set batch_clips={most} or fewer")


def _size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"
