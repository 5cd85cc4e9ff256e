"""The build: a dataset index and a configuration in, a complete store out, on Dask.

The index is cut into batches of ``batch_clips`` clips; batch ``b`` owns shard ``b`` of
every array, so tasks never write the same shard. A task decodes, resamples and computes
every feature of its clips, writes its shards and the status of its clips, and then
writes a completion marker. The driver only collects markers and writes the tables and
the manifest, so a killed build restarts where it stopped and ends with the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import zarr

from pipeline.audio import DecodeError, load_clip
from pipeline.config import BuildConfig
from pipeline.datasets import get_recipe
from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex
from pipeline.store import (
    SCHEMA_VERSION,
    STATUS_FAILED,
    STATUS_NAMES,
    STATUS_OK,
    clip_digests,
    combine_digests,
    create_arrays,
    plan_layout,
    read_batch_markers,
    write_json,
    write_table,
)

VERSIONED = ("muzarr", "numpy", "scipy", "soundfile", "soxr", "librosa", "zarr", "numcodecs", "av", "dask")


@dataclass
class BuildReport:
    """What a build did: counts, failures and timing."""

    url: str
    n_clips: int
    n_ok: int
    n_failed: int
    failures: list[dict[str, Any]]
    batches_run: int
    batches_reused: int
    seconds: float
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0: every clip stored; 1: the store is complete but some clips failed."""
        return 0 if self.n_failed == 0 else 1


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


def run_batch(
    url: str,
    batch: int,
    config_dict: dict[str, Any],
    rows: list[int],
    clip_ids: list[str],
    paths: list[str],
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Process one batch (a Dask task): compute, write its shards, status and marker.

    Returns the marker: batch number, per-clip status, failures and per-array clip digests.
    """
    config = BuildConfig.from_dict(config_dict)
    group = zarr.open_group(store=url, mode="r+", storage_options=storage_options or None)
    layouts = {layout.name: layout for layout in plan_layout(config, n_clips=group["status"].shape[0])}
    n = len(rows)
    buffers = {name: np.zeros((n, *layout.shape[1:]), dtype=layout.dtype) for name, layout in layouts.items()}
    status = np.full(n, STATUS_OK, dtype=np.int8)
    failures = []
    for i, path in enumerate(paths):
        stage = "decode"
        try:
            audio = load_clip(path, rates=config.rates, policy=config.clip)
            for feature in config.features:
                stage = feature.name
                values = feature.extract(audio[feature.sample_rate], sampling_rate=feature.sample_rate)
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    raise ValueError("computed values are not finite (NaN or infinity)")
                buffers[feature.name][i] = values
        except Exception as error:  # noqa: BLE001 - one bad clip must not stop the build
            status[i] = STATUS_FAILED
            for buffer in buffers.values():
                buffer[i] = 0
            message = str(error).strip() or type(error).__name__
            if not isinstance(error, (DecodeError, MuzarrError)):
                message = f"{type(error).__name__}: {message}"
            failures.append({"clip_id": clip_ids[i], "path": path, "stage": stage, "message": message.splitlines()[0]})
    start, stop = rows[0], rows[-1] + 1
    for name, buffer in buffers.items():
        group[name][start:stop] = buffer
    group["status"][start:stop] = status
    marker = {
        "batch": batch,
        "start": start,
        "stop": stop,
        "status": status.tolist(),
        "failures": failures,
        "digests": {name: clip_digests(buffer) for name, buffer in buffers.items()},
    }
    # The marker is written last: its presence means every shard of the batch is on disk.
    write_json(url, f"_muzarr/batches/{batch:06d}.json", marker, storage_options=storage_options)
    return marker


def _manifest(config: BuildConfig, index: DatasetIndex, layouts, *, state: str, extra: dict | None = None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "state": state,
        "config": config.to_dict(),
        "task": index.task,
        "classes": list(index.classes),
        "n_clips": len(index),
        "n_subclips": config.clip.n_subclips,
        "versions": library_versions(),
        "index_info": index.info,
        "arrays": {layout.name: layout.to_dict() for layout in layouts},
        **(extra or {}),
    }


def _prepare_store(url, config, index, layouts, *, overwrite: bool, storage_options) -> set[int]:
    """Create the store, or reopen a matching unfinished one; returns the batches already done."""
    try:
        existing = zarr.open_group(store=url, mode="r", storage_options=storage_options or None)
        manifest = existing.attrs.get("muzarr")
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, ValueError):
        manifest = None
    if manifest is not None and not overwrite:
        if manifest.get("config") != config.to_dict() or manifest.get("n_clips") != len(index):
            raise MuzarrError(
                f"{url} already holds a store built with a different configuration:\n"
                f"{_config_diff(manifest.get('config', {}), config.to_dict())}\n"
                "choose another --out, or pass --overwrite to rebuild it"
            )
        done = read_batch_markers(url, storage_options=storage_options)
        return set(done)
    if manifest is not None or _exists_nonempty(url, storage_options):
        if not overwrite and manifest is None:
            raise MuzarrError(f"{url} exists and is not a muzarr store: choose another --out or pass --overwrite")
        _remove(url, storage_options)
    group = create_arrays(url, layouts, len(index), config.batch_clips, storage_options=storage_options)
    write_table(url, "labels", index.labels_table(), storage_options=storage_options)
    write_table(url, "splits", index.splits_table(), storage_options=storage_options)
    group.attrs["muzarr"] = _manifest(config, index, layouts, state="building")
    return set()


def _config_diff(old: dict, new: dict, prefix: str = "") -> str:
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _config_diff(a, b, f"{prefix}{key}.")
            lines.extend([inner] if inner else [])
        elif a != b:
            lines.append(f"  {prefix}{key}: store has {a!r}, this build asks for {b!r}")
    return "\n".join(lines)


def _exists_nonempty(url: str, storage_options) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs.exists(path) and bool(fs.ls(path))


def _remove(url: str, storage_options) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _finalize(url, config, index, layouts, markers: dict[int, dict], *, storage_options) -> dict[str, Any]:
    """Write the clips and checksums tables and the final manifest from every batch marker."""
    ordered = [markers[b] for b in sorted(markers)]
    status = np.concatenate([np.asarray(m["status"], dtype=np.int8) for m in ordered])
    failures = [f for m in ordered for f in m["failures"]]
    by_id = {f["clip_id"]: f for f in failures}
    clips = index.clips.copy()
    clips["clip_id"] = clips["clip_id"].astype(str)
    clips.insert(2, "status", [STATUS_NAMES[int(s)] for s in status])
    clips.insert(3, "stage", [by_id.get(c, {}).get("stage") for c in clips["clip_id"]])
    clips.insert(4, "error", [by_id.get(c, {}).get("message") for c in clips["clip_id"]])
    write_table(url, "clips", clips, storage_options=storage_options)

    checksum_rows = []
    arrays = {}
    for layout in layouts:
        digests = [d for m in ordered for d in m["digests"][layout.name]]
        arrays[layout.name] = {**layout.to_dict(), "checksum": combine_digests(digests), "feature": layout.attrs["feature"]}
        checksum_rows.append(pd.DataFrame({"array": layout.name, "row": np.arange(len(digests)), "digest": digests}))
    write_table(url, "checksums", pd.concat(checksum_rows, ignore_index=True), storage_options=storage_options)

    splits = index.splits_table()
    ok = status == STATUS_OK
    split_counts = {
        scheme: {part: int(((splits[scheme] == part).to_numpy() & ok).sum()) for part in ("train", "valid", "test")}
        for scheme in index.splits.columns
    }
    manifest = _manifest(
        config, index, layouts, state="complete",
        extra={
            "arrays": arrays,
            "counts": {"ok": int(ok.sum()), "failed": int((status == STATUS_FAILED).sum())},
            "failures": failures,
            "split_counts": split_counts,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    group = zarr.open_group(store=url, mode="r+", storage_options=storage_options or None)
    group.attrs["muzarr"] = manifest
    return manifest


def make_client(*, workers: int | None = None, scheduler: str | None = None):
    """A Dask client: attached to ``scheduler`` if given, else an embedded ``LocalCluster``."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise MuzarrError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
    n_workers = workers or os.cpu_count() or 1
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
        # Single-threaded numerics per worker process: the workers are the parallelism.
        env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
    )
    return Client(cluster)


def build_index(config: BuildConfig, source: str) -> DatasetIndex:
    """Run the dataset's recipe and check the configured split schemes are there."""
    index = get_recipe(config.recipe)(source, **config.options)
    if index.task != config.task:
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
    on_batch: Callable[[dict], None] | None = None,
) -> BuildReport:
    """Build (or finish building) the store at ``out`` from the clips of ``source``.

    ``client`` is a caller-owned Dask client; otherwise one is made from ``workers`` /
    ``scheduler`` and closed at the end. ``strict`` stops at the first failed clip.
    """
    import time

    started = time.perf_counter()
    index = index if index is not None else build_index(config, source)
    layouts = plan_layout(config, len(index))
    done = _prepare_store(out, config, index, layouts, overwrite=overwrite, storage_options=storage_options)
    root = Path(index.root)
    abs_paths = [str(root / p) for p in index.clips["path"]]
    ids = index.clips["clip_id"].astype(str).tolist()
    n, size = len(index), config.batch_clips
    batches = [b for b in range((n + size - 1) // size) if b not in done]
    config_dict = config.to_dict()

    own_client = client is None and batches
    client = make_client(workers=workers, scheduler=scheduler) if own_client else client
    bar = _progress_bar(total=n, initial=min(n, len(done) * size), enabled=progress, label=config.dataset)
    try:
        futures = []
        for b in batches:
            rows = list(range(b * size, min(n, (b + 1) * size)))
            futures.append(
                client.submit(
                    run_batch, out, b, config_dict, rows, [ids[r] for r in rows], [abs_paths[r] for r in rows],
                    storage_options, key=f"muzarr-batch-{b}-{os.getpid()}", pure=False,
                )
            )
        if futures:
            from dask.distributed import as_completed

            for future in as_completed(futures):
                marker = future.result()
                bar.update(len(marker["status"]))
                if on_batch:
                    on_batch(marker)
                if strict and marker["failures"]:
                    for other in futures:
                        other.cancel()
                    first = marker["failures"][0]
                    raise MuzarrError(
                        f"--strict: clip {first['clip_id']} ({first['path']}) failed at {first['stage']}: "
                        f"{first['message']}"
                    )
    finally:
        bar.close()
        if own_client:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
    markers = read_batch_markers(out, storage_options=storage_options)
    manifest = _finalize(out, config, index, layouts, markers, storage_options=storage_options)
    return BuildReport(
        url=out,
        n_clips=n,
        n_ok=manifest["counts"]["ok"],
        n_failed=manifest["counts"]["failed"],
        failures=manifest["failures"],
        batches_run=len(batches),
        batches_reused=len(done),
        seconds=time.perf_counter() - started,
        arrays=manifest["arrays"],
    )


def _progress_bar(*, total: int, initial: int, enabled: bool, label: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="clip", desc=f"building {label}", disable=not enabled,
        dynamic_ncols=True, smoothing=0.1,
    )
