"""Consolidated metadata: every array's and group's ``zarr.json`` inlined in the store's own, as zarr-python
writes it (``consolidated_metadata``, kind ``inline``).

Other Zarr readers (xarray first) open a group through it: without it xarray warns that it falls back,
and listing the group finds ``tables`` and ``_muzarr``, which are not Zarr nodes, and warns about each.
It is written with the manifest (:func:`pipeline.store.io.write_manifest`), so it shows the arrays as
they were at that moment: a reader of a store being grown keeps seeing the arrays the manifest
describes until the grown manifest replaces both. muzarr itself never reads it
(:meth:`~pipeline.store.location.Location.open_group` opens every node's own ``zarr.json``).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.store.location import Location

#: how zarr-python marks metadata held in the group's document (zarr.core.group.ConsolidatedMetadata)
INLINE = {"kind": "inline", "must_understand": False}


def nodes(manifest: dict) -> list[str]:
    """Every node below the root the manifest implies: ``status``, each array, each group above one."""
    arrays = manifest.get("arrays") if isinstance(manifest.get("arrays"), dict) else {}
    names = {"status", *(name for name in arrays if isinstance(name, str))}
    groups = {name.rsplit("/", i)[0] for name in names for i in range(1, name.count("/") + 1)}
    # zarr-python lists parents before their children
    return sorted(names | groups, key=lambda name: (name.count("/"), name))


def consolidated_metadata(loc: Location, manifest: dict) -> dict[str, Any]:
    """The group's ``consolidated_metadata`` for the nodes of ``manifest``, read from their ``zarr.json``.

    A node whose ``zarr.json`` is missing or unreadable is left out: readers that use this see what
    they would see by listing the store (and ``pipe verify`` names the damage).
    """
    fs, root = loc.fs, loc.root
    metadata = {}
    for name in nodes(manifest):
        try:
            node = json.loads(fs.cat_file(f"{root}/{name}/zarr.json"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            continue
        if not isinstance(node, dict):
            continue
        if node.get("node_type") == "group":  # its children are listed flat, at the root, as zarr-python does
            node = {**node, "consolidated_metadata": {**INLINE, "metadata": {}}}
        metadata[name] = node
    return {**INLINE, "metadata": metadata}
