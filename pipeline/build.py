"""The build: a dataset index and a configuration in, a complete store out, on Dask.

The index is cut into batches of ``batch_clips`` clips; batch ``b`` owns shard ``b`` of
every array, so tasks never write the same shard. A task (:func:`pipeline.batch.run_batch`)
decodes, resamples and computes every feature of its clips, writes its shards and the status
of its clips, and then writes a completion marker. The driver only collects markers and writes the tables and
the manifest, so a killed build restarts where it stopped and ends with the same bytes.

Resuming and growing are the same thing: the driver brings the store's arrays to the
requested layout (:func:`pipeline.store.ensure_arrays`) and asks each batch's marker what
is already done. A marker counts only for its own rows and clips (a digest of the clip
ids) and only for the arrays it lists, so

* a killed build reruns exactly the batches without a valid marker;
* added feature variants are computed for every batch, and only those arrays are written;
* added clips (a larger index whose first rows are the store's clips) run the new batches
  and the one batch whose shard was partial (its rows changed, so its marker no longer
  counts), nothing else.

Until the last step the manifest is left as it was: readers of a complete store keep
seeing its old arrays and clip count while it grows. Any other change of configuration is
refused unless ``overwrite``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from pipeline import preflight
from pipeline.batch import Overflow, run_batch
from pipeline.cluster import as_they_finish, check_scheduler_address, close_client, deferred_interrupt, make_client
from pipeline.config import TASK_AUTO, BuildConfig, expected_type, recorded_source
from pipeline.datasets import get_recipe
from pipeline.errors import MuzarrError, printable, write_errors, write_failure
from pipeline.finalize import finalize
from pipeline.grow import check_schema
from pipeline.index import DatasetIndex
from pipeline.prepare import prepare_store
from pipeline.store.io import check_contained, read_manifest
from pipeline.store.layout import ensure_arrays
from pipeline.store.location import Location, location
from pipeline.store.lock import writer_lock
from pipeline.store.manifest import ArrayInfo, Manifest, NoteSummary, RowFailure, damaged_manifest
from pipeline.store.marker import ClipFailure, Marker
from pipeline.store.reader import manifest_damage
from pipeline.suggest import did_you_mean
from pipeline.target import BuildTarget, pending, plan_track_target
from pipeline.tracks import MAX_REPLANS, save_plan

__all__ = ["BuildReport", "build", "build_index", "make_client"]


@dataclass
class BuildReport:
    """What a build did: counts, failures and timing."""

    url: str
    n_clips: int
    n_ok: int
    n_failed: int
    failures: tuple[ClipFailure, ...]
    batches_run: int
    batches_reused: int
    seconds: float
    arrays: dict[str, ArrayInfo] = field(default_factory=dict)
    notes: dict[str, NoteSummary] = field(default_factory=dict)  # per array: clips whose storage lost something
    unreadable_folders: list[dict] = field(default_factory=list)  # source folders the index could not list

    @property
    def array_failures(self) -> list[tuple[str, RowFailure]]:
        """Stored clips that failed one array: ``(array, failure)``."""
        return [(name, x) for name, info in self.arrays.items() for x in info.failures]

    @property
    def exit_code(self) -> int:
        """0: every clip stored in every array; 1: the store is complete but some clips (or source folders,
        or a clip in one array) failed."""
        return 0 if self.n_failed == 0 and not self.unreadable_folders and not self.array_failures else 1

    @classmethod
    def of(cls, manifest: Manifest, *, url: str, work: dict, n_batches: int, started: float, unreadable: list[dict]):
        """The report of a build that ran the batches of ``work`` and ended with ``manifest``."""
        return cls(
            url=url, n_clips=manifest.n_clips, n_ok=manifest.counts.ok, n_failed=manifest.counts.failed,
            failures=manifest.failures, batches_run=len(work), batches_reused=n_batches - len(work),
            seconds=time.perf_counter() - started, arrays=dict(manifest.arrays), notes=dict(manifest.notes),
            unreadable_folders=unreadable,
        )


def build_index(config: BuildConfig, source: str) -> DatasetIndex:
    """Run the dataset's recipe and check the configured split schemes are there."""
    import inspect

    recipe = get_recipe(config.recipe)
    accepted = inspect.signature(recipe).parameters
    unknown = sorted(str(k) for k in config.options if k not in accepted or accepted[k].kind != inspect.Parameter.KEYWORD_ONLY)
    if unknown:
        known = sorted(k for k, p in accepted.items() if p.kind == inspect.Parameter.KEYWORD_ONLY)
        raise MuzarrError(
            f"recipe {config.recipe!r} has no option(s) {unknown}{did_you_mean(unknown[0], known)}; its options: {known}"
        )
    for name, value in config.options.items():
        default = accepted[name].default
        # a None default (an optional path) says nothing of the type: the recipe checks those itself
        expected = None if default in (None, inspect.Parameter.empty) else expected_type(value, default)
        if expected:
            raise MuzarrError(f"recipe {config.recipe!r}: option {name}={value!r} must be {expected}")
    try:
        index = recipe(source, **config.options)
    except (TypeError, ValueError) as error:
        raise MuzarrError(f"recipe {config.recipe!r} with options {config.options}: {type(error).__name__}: {error}") from None
    if config.task != TASK_AUTO and index.task != config.task:
        raise MuzarrError(f"recipe {config.recipe!r} gives a {index.task} index but the catalog says {config.task}")
    missing = [s for s in config.splits if s not in index.splits.columns]
    if missing:
        raise MuzarrError(
            f"split scheme(s) {missing} are not produced by recipe {config.recipe!r} with these options; "
            f"it produces: {list(index.splits.columns)}"
        )
    if len(index) == 0:
        raise MuzarrError(f"no clips found in {source} for dataset {config.dataset!r}")
    return index


def build(
    config: BuildConfig,
    *,
    source: str,
    out: str,
    index: DatasetIndex | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: dict | None = None,
    on_batch: Callable[[Marker], None] | None = None,
    repair: bool = False,
    echo: Callable[[str], None] | None = None,
) -> BuildReport:
    """Build (or finish building) the store at ``out`` from the clips of ``source``.

    ``client`` is a caller-owned Dask client; otherwise one is made from ``workers`` /
    ``scheduler`` and closed at the end. ``strict`` stops at the first failed clip.
    ``repair`` first verifies the store and reruns exactly what is damaged (saying what
    through ``echo``). ``on_batch`` is told each batch's :class:`~pipeline.store.marker.Marker`.
    """
    started = time.perf_counter()
    loc = location(out, storage_options)
    out = loc.url
    recorded = recorded_source(source)
    existing = _existing_store(loc, config, overwrite=overwrite, repair=repair, scheduler=scheduler, source=recorded)
    index = index if index is not None else build_index(config, source)
    unreadable = index.info.get("unreadable_folders") or []
    if strict and unreadable:
        raise MuzarrError(f"--strict: folder {printable(unreadable[0]['path'])}/ of {source} failed at index: "
                          f"{printable(unreadable[0]['message'])}")  # fmt: skip
    # plan: a track store's layout needs every file's length, probed under the lock below
    tracked = config.clip.mode == "track"
    target = None if tracked else BuildTarget.planned(config, index, source=recorded)
    client, owned, memory = preflight.check_before_writing(
        config, index, None if target is None else target.layouts, existing, client=client, workers=workers,
        scheduler=scheduler,
    )
    # Everything that writes holds the store's lock; a full or read-only destination is one line.
    # Ctrl-C is raised between batch results (see pipeline.cluster.as_they_finish), not inside a Dask call.
    with owned, write_errors(out), writer_lock(loc), deferred_interrupt() as interrupted, ExitStack() as cleanup:
        if tracked:
            if client is None:
                client = make_client(workers=workers, scheduler=scheduler)
                cleanup.callback(close_client, client)
            target = plan_track_target(loc, config, index, client, overwrite=overwrite, repair=repair, source=recorded)
            preflight.check_sizes(config, target.layouts, n_clips=target.n, memory=memory)
        # prepare the store
        markers = prepare_store(loc, target, overwrite=overwrite, repair=repair, echo=echo)
        if target.plan is not None:
            save_plan(loc, target.plan, target.clip_ids, index.clips["path"].astype(str).tolist())
        # run the batches
        work = pending(target, markers)
        target = _run_batches(
            loc, target, work, markers, interrupted, client=client, workers=workers, scheduler=scheduler,
            progress=progress, on_batch=on_batch, strict=strict, echo=echo,
        )
        # finalize
        manifest = finalize(loc, target, markers)
    return BuildReport.of(manifest, url=out, work=work, n_batches=target.n_batches, started=started, unreadable=unreadable)


def _existing_store(
    loc: Location, config: BuildConfig, *, overwrite: bool, repair: bool, scheduler: str | None, source: str
) -> Manifest | None:
    """The manifest of the store a build writes into (None: a new store, or ``overwrite``), once the request is
    one this muzarr can do: refused before the (possibly long) indexing, and before the store is touched."""
    loc.check_writable(verb="build")  # an http(s) URL, a path under a file
    if repair and overwrite:
        raise MuzarrError("--repair keeps the store's good batches, --overwrite rebuilds them all: choose one")
    if scheduler:
        check_scheduler_address(scheduler)
    # A link planted in the store would take reads, the lock and every write elsewhere: refused before any.
    check_contained(loc)
    if overwrite:
        return None
    try:
        existing = read_manifest(loc)
    except OSError as err:
        raise MuzarrError(f"cannot read {loc.url}: {type(err).__name__}: {err}") from None
    if existing is not None:
        check_schema(loc.url, existing)
        return Manifest.from_dict(existing, url=loc.url)
    if repair:
        damage = manifest_damage(loc)
        if damage is not None:
            raise damaged_manifest(loc.url, damage, config=config.to_dict(), source=source)
        raise MuzarrError(f"--repair: there is no store at {loc.url} to repair: build it without --repair")
    return None


def _run_batches(
    loc: Location, target: BuildTarget, work: dict, markers: dict[int, Marker], interrupted, *, client, workers, scheduler,
    progress: bool, on_batch, strict: bool, echo,
) -> BuildTarget:
    """Run the batches of ``work`` (batch -> arrays to compute, marker to build on) on Dask, adding the markers
    they write to ``markers``; a track store's batches whose tracks outgrew their regions run again in new
    ones. Returns the target as finally planned."""
    own_client = client is None and bool(work)
    done_clips = target.n - sum(len(target.rows(b)) for b in work)
    bar = _progress_bar(total=target.n, initial=done_clips, enabled=progress, label=target.config.dataset)
    try:
        client = make_client(workers=workers, scheduler=scheduler) if own_client else client
        batches, rounds = list(work), 0
        while batches:
            jobs = {
                b: client.submit(
                    run_batch, target.job(loc, b, arrays=work[b][0], base=work[b][1]),
                    key=f"muzarr-batch-{b}-{rounds}-{os.getpid()}", pure=False,
                )
                for b in batches
            }
            done, overflowing = _collect(jobs, interrupted, out=loc.url, bar=bar, on_batch=on_batch, strict=strict)
            markers.update(done)
            batches = sorted(overflowing)
            if batches:
                rounds += 1
                if rounds > MAX_REPLANS:
                    raise MuzarrError(
                        f"batch(es) {batches} of {loc.url}: their files decode to other lengths every time they are read "
                        f"({MAX_REPLANS} tries): are they being written while the build runs? Run the same command "
                        "again when they are complete"
                    )
                target = target.replanned(overflowing)
                ensure_arrays(loc, list(target.layouts), target.n, target.config.batch_clips)  # grown before the plan says so
                save_plan(loc, target.plan, target.clip_ids, target.index.clips["path"].astype(str).tolist())
                if echo:
                    echo(
                        f"{len(batches)} batch(es) decoded longer than their files' headers said: placed again, "
                        "at the end of the time arrays"
                    )
    finally:
        bar.close()
        if own_client and client is not None:
            close_client(client)
    return target


def _collect(jobs: dict, interrupted, *, out: str, bar, on_batch, strict: bool) -> tuple[dict[int, Marker], dict[int, list]]:
    """The markers of the batch tasks ``jobs`` (batch -> future) as they finish, and what each batch whose
    tracks did not fit its regions decoded (batch -> per clip ``[frames, rate]`` or the error)."""
    from dask.distributed import as_completed

    batch_of = {future: b for b, future in jobs.items()}
    markers, overflowing = {}, {}
    if not jobs:
        return markers, overflowing
    for future in as_they_finish(as_completed(list(batch_of)), interrupted):
        try:
            result = future.result()
        except MuzarrError:
            raise
        except Exception as error:  # noqa: BLE001 - a task that died (worker lost, disk full)
            raise write_failure(error, out) or MuzarrError(
                f"batch {batch_of[future]} of {out} failed: {type(error).__name__}: {error}; "
                "run the same command again to resume"
            ) from None
        if isinstance(result, Overflow):
            overflowing[batch_of[future]] = list(result.decoded)
            continue
        # What the task returned is what it wrote: trust it over a re-read of the marker.
        markers[batch_of[future]] = result
        bar.update(len(result.status))
        if on_batch:
            on_batch(result)
        if strict and (result.failures or result.array_failures):
            for other in batch_of:
                other.cancel()
            first = (result.failures or result.array_failures)[0]
            raise MuzarrError(
                f"--strict: clip {printable(first.clip_id)} ({printable(first.path)}) failed at "
                f"{first.stage}: {printable(first.message)}"
            )
    return markers, overflowing


def _progress_bar(*, total: int, initial: int, enabled: bool, label: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="clip", desc=f"building {label}", disable=not enabled,
        dynamic_ncols=True, smoothing=0.1,
    )
