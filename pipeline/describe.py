"""Human-readable descriptions of a store (``pipe info``)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.errors import MuzarrError, printable
from pipeline.store.manifest import NoteSummary
from pipeline.store.reader import Store, open_store


def _size_on_disk(store: Store, name: str) -> int:
    fs, root = store.location.fs, store.location.root
    try:
        return int(fs.du(f"{root}/{name}"))
    except (FileNotFoundError, NotImplementedError, OSError):
        return -1


def _embedding_line(feature) -> str:
    """Which model, weights and libraries an embedding array holds the hidden layers of."""
    pool = "time-resolved" if feature.get("pool") == "none" else f"{feature.get('pool')} over time"
    window = feature.get("window_seconds") or feature.get("default_window")
    return (
        f"model {feature.get('model')} ({feature.get('family')}, layers {feature.get('layers')} of "
        f"{feature.get('hidden_layers')}, {pool}, windows {f'{window:g} s' if window else 'whole clip'}), "
        f"weights {str(feature.get('weights'))[:19]}..., {feature.get('versions')}, "
        f"{feature.get('device')} {feature.get('precision')}"
    )


def _human(n: int) -> str:
    if n < 0:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def describe(url: str, *, max_failures: int = 20) -> str:
    """A multi-line summary: what a person wants to know before training on a store."""
    return describe_store(url, max_failures=max_failures)[0]


def describe_store(url: str, *, max_failures: int = 20) -> tuple[str, bool]:
    """:func:`describe`'s text, and whether the store is finished and shows no damage.

    An unfinished build or a damaged part is said in its place (what can be shown still is),
    never raised.
    """
    from pipeline.commands import build_command
    from pipeline.store.verify import array_damage

    store = open_store(url)
    store.check_tables()
    m = store.manifest
    try:
        config = store.config()
    except MuzarrError:
        config = None  # a configuration this muzarr does not validate: what it holds can still be shown
    counts = m.counts.to_dict() if m.counts is not None else {}
    healthy = store.complete
    state = f"state     {m.state}" + (f", finished {m.finished}" if m.finished else "")
    if not store.complete:
        again = f": {build_command(config, out=store.url, source=store.source)}" if config is not None else ""
        state += f": the build has not finished; run the same pipe build command again{again}"
    tracks = track_lines(store)
    healthy = healthy and not any("cannot be shown" in line for line in tracks)
    lines = [
        f"store     {store.url}",
        f"dataset   {store.dataset} (recipe {config.recipe if config else '?'}, {store.task}, {len(store.classes)} classes)",
        state,
        f"clips     {store.n_clips} total, {counts.get('ok', '?')} ok, {counts.get('failed', '?')} failed",
        _clip_line(config.clip, store) if config is not None else "clip      ?",
        *tracks,
        "arrays",
    ]
    width = max((len(name) for name in store.arrays), default=0)
    for name, info in store.arrays.items():
        _, problems = array_damage(store, name)
        if problems:
            healthy = False
            lines.append(f"  {name:<{width}}  damaged: {'; '.join(problems)}: run pipe verify")
            continue
        lines.append(
            f"  {name:<{width}}  shape {info.shape} {info.dtype}  chunks {info.chunks}"
            f"  shards {info.shards}  {_human(_size_on_disk(store, name))} on disk"
        )
        if info.kind == "embedding":
            lines.append(f"  {'':<{width}}  {_embedding_line(info.feature)}")
    lines.append("splits")
    for scheme, parts in (m.split_counts or {}).items():
        lines.append(f"  {scheme:<10} " + "  ".join(f"{part} {n}" for part, n in parts.items()))
    notes = source_notes(m.index_info or {}) + storage_notes(m.notes or {})
    if notes:
        lines.append("notes")
        lines.extend(f"  {note}" for note in notes)
    lines.append("labels (ok clips)")
    fs, root = store.location.fs, store.location.root
    if not store.complete:
        lines.append("  (written when the build finishes)")
    elif not fs.exists(f"{root}/tables/labels.parquet"):
        # a table that is there but refused (malformed) still ends the command: it is untrusted input
        healthy = False
        lines.append("  cannot be shown: tables/labels.parquet is missing: run pipe verify")
    else:
        lines.extend(f"  {line}" for line in _label_lines(store))
    failures = m.failures or ()
    if failures:
        stages = Counter(f.stage for f in failures)
        by_stage = ", ".join(f"{n} at {stage}" for stage, n in stages.items())
        lines.append(f"failed clips ({by_stage if len(stages) == 1 else f'{len(failures)}: {by_stage}'})")
        for failure in failures[:max_failures]:
            lines.append(f"  {printable(failure.clip_id)}  {printable(failure.path)}")
            lines.append(f"      [{failure.stage}] {printable(failure.message)}")
        if len(failures) > max_failures:
            lines.append(f"  ... {len(failures) - max_failures} more (pipe info --failures N)")
    for name in store.arrays:
        lost = list(store.array_failures(name).items())
        if lost:
            lines.append(f"failed in {name} only ({len(lost)} stored clip(s): no data in this array, the others hold them)")
            for row, x in lost[:max_failures]:
                lines.append(f"  {x.clip_id} (row {row})  " + ("" if x.stage == name else f"[{x.stage}] ") + x.message)
            if len(lost) > max_failures:
                lines.append(f"  ... {len(lost) - max_failures} more (pipe info --failures N)")
    return "\n".join(lines), healthy


def _clip_line(clip, store: Store) -> str:
    if clip.mode == "track":
        return f"clip      track: whole files, at most {clip.max_seconds} s each"
    return f"clip      {clip.mode} {clip.seconds} s" + (f", {store.n_subclips} sub-clips" if store.n_subclips else "")


def track_seconds(store: Store) -> np.ndarray:
    """The length in seconds of every stored (``ok``) track of a track store, as it decoded (the clips table)."""
    clips = store.clips
    if "seconds" not in clips.columns:
        raise MuzarrError("tables/clips.parquet has no seconds column")
    seconds = clips["seconds"].to_numpy(dtype=np.float64)[store.ok]
    if not np.isfinite(seconds).all() or (seconds <= 0).any():
        raise MuzarrError("tables/clips.parquet holds a stored track without a positive length")
    return seconds


def track_lines(store: Store) -> list[str]:
    """A track store's length distribution and the share of each time array that is padding."""
    if not store.is_tracks:
        return []
    from pipeline.tracks import length_summary, stored_regions

    try:
        s = length_summary(track_seconds(store))
        padding, left = {}, {}
        batches = -(-store.n_clips // store.manifest.batch_clips)
        for name, info in store.arrays.items():
            if info.extents is None:
                continue
            total = info.shape[-1]
            regions = stored_regions(store.location, name, shard=info.shards[-1], length=total, n_batches=batches)
            held = sum(z for _, z in regions) if regions is not None else total
            padding[name] = 1 - int(store.extents(name)[:, 1].sum()) / max(1, held)
            left[name] = 1 - held / max(1, total)
    except (MuzarrError, KeyError, TypeError, ValueError) as err:
        return [f"tracks    cannot be shown ({err}): run pipe verify"]
    if not s["count"]:
        return ["tracks    none stored"]
    shares = ", ".join(f"{share:.2%} of {name}" for name, share in padding.items())
    lines = [
        f"tracks    {s['count']} stored: {s['min']:.1f} s min, {s['median']:.1f} s median, {s['max']:.1f} s max, {s['hours']:.2f} h",
        f"padding   {shares} (shard rounding at the end of each batch, and tracks shorter than their headers said)",
    ]
    if any(share > 0 for share in left.values()):
        gaps = ", ".join(f"{share:.2%} of {name}" for name, share in left.items())
        lines.append(f"moved     {gaps}: regions batches left when their tracks outgrew them (no files)")
    return lines


def _label_lines(store: Store, *, per_line: int = 6, shown: int = 50) -> list[str]:
    """Clips per class (multiclass) or per tag (multilabel, most frequent first) among ok clips."""
    ok = store.ok
    matrix = store.label_matrix
    if store.task == "multilabel":
        counts = matrix[ok].sum(axis=0).astype(int)
        order = np.argsort(-counts, kind="stable")  # ties keep the store's class order
        used = [i for i in order if counts[i] > 0]
        items = [f"{printable(store.classes[i])} {counts[i]}" for i in used[:shown]]
        if len(used) > shown:
            items.append(f"... {len(used) - shown} more tags")
        untagged = int((matrix[ok].sum(axis=1) == 0).sum())
        if untagged:
            items.append(f"(no tag) {untagged}")
    else:
        values = matrix[ok]
        counts = np.array([(values == i).sum() for i in range(len(store.classes))], dtype=int)
        items = [f"{printable(c)} {n}" for c, n in zip(store.classes, counts)]
        if (values < 0).any():
            items.append(f"(unlabelled) {(values < 0).sum()}")
    lines = [", ".join(items[start : start + per_line]) for start in range(0, len(items), per_line)]
    unused = [printable(store.classes[i]) for i in np.flatnonzero(counts == 0)]
    if unused:
        # macro metrics average over the classes present: say which ones are not
        listed = ", ".join(unused[:8]) + (f", ... ({len(unused)} in all)" if len(unused) > 8 else "")
        lines.append(f"no ok clip has: {listed} (left out of macro metrics)")
    return lines


def storage_notes(summary: dict[str, NoteSummary]) -> list[str]:
    """What storing lost of stored clips (the manifest's ``notes``), one line per array."""
    lines = []
    for array, entry in summary.items():
        first = entry.examples[0] if entry.examples else None
        example = f", e.g. {printable(first.clip_id)}: {printable(first.message)}" if first else ""
        lines.append(f"{array}: {entry.clips} clip(s) noted (the clips table's 'note' column){example}")
    return lines


def source_notes(info: dict) -> list[str]:
    """What the recipe noticed about the source folder (the manifest's ``index_info``) that a person should know."""
    notes = []
    missing = info.get("missing_audio") or 0
    if missing:
        examples = ", ".join(printable(e) for e in info.get("missing_audio_examples", [])[:5])
        example = f" (e.g. {examples})" if examples else ""
        notes.append(f"{missing} clip(s) listed in the metadata have no audio file{example}")
    unreadable = info.get("unreadable_folders") or []
    if unreadable:
        listed = ", ".join(f"{printable(u['path'])}/ ({printable(u['message'])})" for u in unreadable[:5])
        more = f", ... ({len(unreadable)} in all)" if len(unreadable) > 5 else ""
        notes.append(f"{len(unreadable)} source folder(s) could not be read, their clips are not in the store: {listed}{more}")
    if info.get("missing_splits"):
        notes.append(f"split scheme(s) {', '.join(info['missing_splits'])} not stored: their split files are not in the metadata")
    if info.get("missing_split_files"):
        notes.append(f"split file(s) not found, those parts are empty: {', '.join(info['missing_split_files'])}")
    if info.get("skipped_hidden"):
        notes.append(f"{info['skipped_hidden']} hidden file(s) skipped (names starting with '.')")
    if info.get("unlabelled"):
        notes.append(f"{info['unlabelled']} file(s) directly in the root folder are unlabelled")
    if info.get("ignored_folders"):
        notes.append(f"folders ignored (not GTZAN genres): {', '.join(info['ignored_folders'])}")
    if info.get("filtered_listed_not_found"):
        notes.append(f"{info['filtered_listed_not_found']} clip(s) of the filtered split lists are not in the source")
    if info.get("random_split_scaled"):
        notes.append(str(info["random_split_scaled"]))
    return notes
