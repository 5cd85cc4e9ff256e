"""Dataset recipes: each turns a source folder into a :class:`~pipeline.index.DatasetIndex`.

A recipe is a plain function ``index_<name>(root, **options) -> DatasetIndex`` in its own
module; it reads metadata only, never audio. ``DATASETS`` maps the recipe name used in
``catalog.yaml`` to ``"module:function"`` so that importing the registry imports no recipe.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pipeline.errors import MuzarrError
from pipeline.index import DatasetIndex

DATASETS: dict[str, str] = {
    "demo": "pipeline.datasets.demo:index_demo",
    "mtat": "pipeline.datasets.mtat:index_mtat",
    "gtzan": "pipeline.datasets.gtzan:index_gtzan",
    "fma": "pipeline.datasets.fma:index_fma",
    "jamendo": "pipeline.datasets.jamendo:index_jamendo",
    "folder": "pipeline.datasets.folder:index_folder",
    "csv": "pipeline.datasets.csvlist:index_csv",
    "hf": "pipeline.datasets.hf:index_hf",
}


def get_recipe(name: str) -> Callable[..., DatasetIndex]:
    """The index function of recipe ``name``; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise MuzarrError(f"unknown dataset recipe {name!r}; known recipes: {', '.join(sorted(DATASETS))}")
    module, function = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), function)
