"""Human-readable descriptions of a store (``pipe info``)."""

from __future__ import annotations

import fsspec

from pipeline.store import Store, open_store


def _size_on_disk(store: Store, name: str) -> int:
    fs, root = fsspec.core.url_to_fs(store.url, **store.storage_options)
    try:
        return int(fs.du(f"{root.rstrip('/')}/{name}"))
    except (FileNotFoundError, NotImplementedError, OSError):
        return -1


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
    store = open_store(url)
    m = store.manifest
    config = m["config"]
    counts = m.get("counts", {})
    lines = [
        f"store     {store.url}",
        f"dataset   {config['dataset']} (recipe {config['recipe']}, {store.task}, {len(store.classes)} classes)",
        f"state     {m.get('state')}" + (f", finished {m['finished']}" if m.get("finished") else ""),
        f"clips     {store.n_clips} total, {counts.get('ok', '?')} ok, {counts.get('failed', '?')} failed",
        f"clip      {config['clip']['mode']} {config['clip']['seconds']} s"
        + (f", {store.n_subclips} sub-clips" if store.n_subclips else ""),
        "arrays",
    ]
    width = max(len(name) for name in store.arrays)
    for name, info in store.arrays.items():
        lines.append(
            f"  {name:<{width}}  shape {tuple(info['shape'])} {info['dtype']}  chunks {tuple(info['chunks'])}"
            f"  shards {tuple(info['shards'])}  {_human(_size_on_disk(store, name))} on disk"
        )
    lines.append("splits")
    for scheme, parts in m.get("split_counts", {}).items():
        lines.append(f"  {scheme:<10} " + "  ".join(f"{part} {n}" for part, n in parts.items()))
    lines.append("labels (ok clips)")
    ok = store.ok
    matrix = store.label_matrix
    if store.task == "multilabel":
        counts_per = matrix[ok].sum(axis=0).astype(int)
        order = counts_per.argsort()[::-1]
        shown = [f"{store.classes[i]} {counts_per[i]}" for i in order[:50]]
    else:
        values = matrix[ok]
        shown = [f"{c} {(values == i).sum()}" for i, c in enumerate(store.classes)]
        if (values < 0).any():
            shown.append(f"(unlabelled) {(values < 0).sum()}")
    for start in range(0, len(shown), 6):
        lines.append("  " + ", ".join(shown[start : start + 6]))
    failures = m.get("failures", [])
    if failures:
        lines.append(f"failed clips ({len(failures)})")
        for failure in failures[:max_failures]:
            lines.append(f"  {failure['clip_id']}  {failure['path']}  [{failure['stage']}] {failure['message']}")
        if len(failures) > max_failures:
            lines.append(f"  ... {len(failures) - max_failures} more (pipe info --failures N)")
    return "\n".join(lines)
