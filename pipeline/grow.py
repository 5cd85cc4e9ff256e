"""Whether a build may write into an existing store: the store's layout is this muzarr's, and the build
asks for the store's configuration, or adds features or clips to it (a grow). Anything else is refused
with the difference, line by line."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import clip_settings
from pipeline.errors import MuzarrError
from pipeline.store.io import read_table
from pipeline.store.layout import SCHEMA_VERSION
from pipeline.store.location import Location
from pipeline.store.manifest import old_layout
from pipeline.store.reader import Store
from pipeline.target import BuildTarget

# Recipe options that only choose how many clips the index holds: changing one grows the
# store (when the new index starts with the store's clips) instead of being refused.
GROWABLE_OPTIONS = frozenset({"n_clips"})


def check_schema(loc: Location | str, manifest: dict) -> None:
    """Refuse to write a store (``manifest``: its manifest as read) of another layout than this muzarr writes."""
    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > SCHEMA_VERSION:
        raise MuzarrError(
            f"{loc} was written with store schema version {version!r}; this muzarr writes {SCHEMA_VERSION}: "
            "upgrade muzarr, or pass --overwrite to rebuild it"
        )
    if version < SCHEMA_VERSION:
        raise old_layout(str(loc), manifest)


def check_growable(store: Store, target: BuildTarget) -> None:
    """Refuse (with the difference) unless ``target`` equals ``store`` or only adds features or clips."""
    loc, manifest = store.location, store.manifest
    old = dict(manifest.config)
    new = target.config.to_dict()
    lines = []
    for key in sorted((set(old) | set(new)) - {"features", "options"}):
        a, b = old.get(key), new.get(key)
        if key == "clip" and isinstance(a, dict):  # what a track store does not use cannot differ
            a, b = clip_settings(a), clip_settings(b)
        if a != b:
            lines.append(_config_diff({key: a}, {key: b}))
    lines.extend(_feature_diff(old.get("features"), new["features"]))
    old_options, new_options = old.get("options") or {}, new["options"]
    changed = {k for k in set(old_options) | set(new_options) if old_options.get(k) != new_options.get(k)}
    if changed - GROWABLE_OPTIONS:
        lines.append(
            _config_diff({"options": {k: old_options.get(k) for k in changed}}, {"options": {k: new_options.get(k) for k in changed}})
        )
    if lines:
        raise MuzarrError(
            f"{loc} already holds a store built with a different configuration:\n" + "\n".join(lines) + "\n"
            "choose another --out, or pass --overwrite to rebuild it (only added features and added clips "
            "are built into an existing store)"
        )
    n_old = manifest.n_clips
    if target.n < n_old:
        raise MuzarrError(
            f"{loc} holds {n_old} clips but the source now gives {target.n}: a store only grows; "
            "pass --overwrite to rebuild it"
        )
    if manifest.complete and (target.n > n_old or changed):
        _check_clips_kept(loc, target, n_old)


def _check_clips_kept(loc: Location, target: BuildTarget, n_old: int) -> None:
    """Refuse a grow whose index does not start with the store's ``n_old`` clips, the same files."""
    try:
        stored = read_table(loc, "clips", rows=n_old)[["clip_id", "path"]]
    except (FileNotFoundError, KeyError, OSError, ValueError):
        raise MuzarrError(f"{loc}: tables/clips.parquet is missing or unreadable: run `pipe verify`") from None
    fresh = target.index.clips[["clip_id", "path"]].head(len(stored)).astype(str).reset_index(drop=True)
    stored = stored.astype(str).reset_index(drop=True)
    differ = np.flatnonzero((stored.to_numpy() != fresh.to_numpy()).any(axis=1)) if len(stored) == len(fresh) else [0]
    if len(stored) != n_old or len(differ):
        row = int(differ[0]) if len(differ) else 0
        raise MuzarrError(
            f"{loc}: the source's clips do not start with the store's (row {row}: store has "
            f"{tuple(stored.iloc[row]) if row < len(stored) else None}, source has "
            f"{tuple(fresh.iloc[row]) if row < len(fresh) else None}): new clips can only be added after the "
            "existing ones; pass --overwrite to rebuild"
        )


def _feature_diff(old: Any, new: list[dict]) -> list[str]:
    """Lines for every stored feature this build would drop or change (added ones are fine)."""
    from pipeline.features.base import feature_from_dict

    lines = []
    old = old if isinstance(old, list) else []
    for spec in old:
        if spec in new:
            continue
        try:
            name = feature_from_dict(spec).name
        except MuzarrError:
            name = repr(spec)
        # The closest feature of the same kind this build asks for shows what was changed.
        candidates = [s for s in new if s not in old and isinstance(spec, dict) and s.get("kind") == spec.get("kind")]
        closest = min(candidates, key=lambda s: sum(s.get(k) != spec.get(k) for k in set(s) | set(spec)), default=None)
        if closest is None:
            lines.append(f"  feature {name}: in the store, not asked for by this build")
        else:
            changed = feature_from_dict(closest).name
            lines.append(f"  feature {name}: changed by this build" + ("" if changed == name else f" to {changed}") + ":")
            lines.append(_config_diff(spec, closest, prefix="    "))
    return lines


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
