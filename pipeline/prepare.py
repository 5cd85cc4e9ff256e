"""The folder at a store's place made ready for a build: created, cleared (``--overwrite``), or brought to the
target's arrays (a resume or a grow); and the batch markers in it that still count."""

from __future__ import annotations

import os
from collections.abc import Callable

from pipeline.errors import MuzarrError
from pipeline.grow import check_growable, check_schema
from pipeline.repair import undo_damage
from pipeline.store.io import LOCK, TARGET, folder_listing, read_json, read_manifest, read_markers, write_json
from pipeline.store.layout import ensure_arrays
from pipeline.store.location import Location, is_local
from pipeline.store.manifest import STATE_BUILDING, damaged_manifest
from pipeline.store.marker import Marker
from pipeline.store.reader import manifest_damage, open_store
from pipeline.target import BuildTarget


def prepare_store(
    loc: Location, target: BuildTarget, *, overwrite: bool, repair: bool = False, echo: Callable[[str], None] | None = None
) -> dict[int, Marker]:
    """Create the store, or bring an existing one to ``target``; returns the valid markers.

    Order matters for a kill at any point: ``_muzarr/target.json`` first (it marks the
    folder as ours), then the arrays, then (new stores only) the manifest in state
    ``building``. A folder with the first but no manifest is a creation that was killed:
    no batch ran in it, so it is simply made again. Clearing a folder keeps that file to
    the last, so a kill while clearing leaves a folder still known to be ours.
    """
    config = target.config
    mark = {"config": config.to_dict(), "n_clips": target.n}
    manifest = read_manifest(loc)
    if manifest is not None and not overwrite:
        check_schema(loc, manifest)
        check_growable(open_store(loc), target)  # the store opens: its sizes agree with each other and its files
        if repair:
            undo_damage(loc, batch_clips=config.batch_clips, n_batches=target.n_batches, echo=echo)
    elif _exists_nonempty(loc):
        if manifest is None and not is_ours(loc):
            damage = manifest_damage(loc)
            if damage is None:
                # --overwrite replaces a store, never a folder of someone's files
                raise MuzarrError(
                    f"{loc} exists and is not a muzarr store (it holds {folder_listing(loc.fs, loc.root)}): "
                    "choose another --out, or a new folder"
                )
            if not overwrite:
                raise damaged_manifest(loc.url, damage, config=config.to_dict(), source=target.source)
        write_json(loc, TARGET, mark)
        clear_store(loc, keep=TARGET)
        manifest = None
    write_json(loc, TARGET, mark)
    created = ensure_arrays(loc, list(target.layouts), target.n, config.batch_clips)
    if manifest is None:
        target.manifest(state=STATE_BUILDING).write(loc)
    if "status" in created:
        return {}  # no status to stand on: every batch runs again
    markers = {}
    for batch, data in read_markers(loc, range(target.n_batches)).items():
        marker = target.marker(batch, data)
        if marker is not None:
            marker = marker.without(created)
            if marker.digests:
                markers[batch] = marker
    return markers


def _exists_nonempty(loc: Location) -> bool:
    fs, path = loc.fs, loc.root
    if not fs.exists(path):
        return False
    return not fs.isdir(path) or any(p != f"{path}/{LOCK}" for p in fs.find(path))  # our own lock is not content


def is_ours(loc: Location) -> bool:
    """A folder muzarr started and did not finish making: it has our mark, or nothing but ``_muzarr/``."""
    if read_json(loc, TARGET) is not None:
        return True
    fs, path = loc.fs, loc.root
    if not fs.isdir(path):
        return False
    return all(p[len(path) + 1 :].startswith("_muzarr/") for p in fs.find(path))


def _store_entries(files: list[str], path: str) -> set[str]:
    """Top-level names of the folder that muzarr writes: ``zarr.json``, ``_muzarr/``, ``tables/``,
    ``status`` and every feature's array or group (``waveform``, ``logmel/``, ``tabular/``: by
    name, since a clearing cut short leaves chunks without their ``zarr.json``), plus any other
    Zarr node. Anything else is someone else's. ``files`` are the folder's, as ``fs.find`` lists them."""
    from pipeline.features import load_all

    entries = {"zarr.json", "_muzarr", "tables", "status"} | {cls.group or cls.kind for cls in load_all().values()}
    for p in files:
        relative = p[len(path) + 1 :]
        if relative.endswith("/zarr.json"):
            entries.add(relative.split("/", 1)[0])
    return entries


def clear_store(loc: Location, *, keep: str | None = None) -> None:
    """Delete what muzarr wrote at the store (other files stay); ``keep`` (a key) goes last, so a
    kill here leaves it behind."""
    fs, path = loc.fs, loc.root
    if not fs.exists(path):
        return
    if not fs.isdir(path):
        fs.rm_file(path)
        return
    kept = f"{path}/{keep}" if keep else None
    files = fs.find(path)
    ours = _store_entries(files, path)
    others = [p for p in files if p not in (kept, f"{path}/{LOCK}") and p[len(path) + 1 :].split("/", 1)[0] in ours]
    if others:
        fs.rm(others)
    if kept is None and not fs.find(path):
        fs.rm(path, recursive=True)
    elif is_local(fs):
        for folder, _, _ in sorted(os.walk(path), reverse=True):  # deepest first: empty folders left behind
            top = os.path.relpath(folder, path).split(os.sep, 1)[0]
            if folder != path and top in ours and not os.listdir(folder):
                os.rmdir(folder)
