"""``pipe build --repair``: what ``pipe verify`` finds damaged, undone so that the build redoes it.

A build trusts a batch for an array only through the batch's marker and the array's metadata
(``pipeline.build``). Removing the marker of every batch that holds a damaged row, and the
metadata of every array damaged as a whole, makes the next build rerun exactly those: each
rerun batch writes its shards whole (a shard that no longer decodes is replaced, not read),
and a recreated array is computed for every batch. Damaged tables and manifest fields need
nothing: every build rewrites them from the markers when it finishes.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.store.io import marker_key, remove_key
from pipeline.store.location import Location
from pipeline.store.reader import open_store


def undo_damage(
    loc: Location, *, batch_clips: int, n_batches: int, echo: Callable[[str], None] | None = None
) -> None:
    """Verify the store at ``loc`` and remove the claims of what is damaged; ``echo`` is told what."""
    from pipeline.store.verify import verify_store

    echo = echo or (lambda line: None)
    store = open_store(loc)
    if not store.complete:
        echo("repair: the store's build has not finished: finishing it")
        return
    batches: set[int] = set()
    arrays: set[str] = set()
    rest: list[str] = []
    for damage in verify_store(store).damage:
        if damage.rows is not None:
            batches.update(range(damage.rows[0] // batch_clips, (damage.rows[1] - 1) // batch_clips + 1))
        elif damage.array is not None:
            arrays.add(damage.array)
        else:
            rest.append(f"tables/{damage.where}.parquet" if damage.kind == "table" else f"the {damage.where}")
    for name in sorted(arrays):
        remove_key(loc, f"{name}/zarr.json")
        echo(f"repair: array {name} is damaged: recreating it, all {n_batches} batches of it rerun")
    for batch in sorted(batches):
        remove_key(loc, marker_key(batch))
    if batches:
        listed = ", ".join(map(str, sorted(batches)))
        echo(f"repair: {len(batches)} damaged batch{'es' if len(batches) > 1 else ''} ({listed}) of {n_batches}: rerunning them")
    if rest:
        echo(f"repair: {', '.join(dict.fromkeys(rest))} damaged: rewritten when the build finishes")
    if not (batches or arrays or rest):
        echo("repair: nothing damaged")
