"""Stored features. ``load_all()`` imports every feature module so the registry is complete."""

from __future__ import annotations

import importlib

from pipeline.features.base import FEATURES, Feature, feature_from_dict, register

_MODULES = ("pipeline.features.spectral", "pipeline.features.tabular", "pipeline.features.embedding")


def load_all() -> dict[str, type[Feature]]:
    """Import the feature modules (registration is explicit, not a star-import side effect)."""
    for module in _MODULES:
        importlib.import_module(module)
    return FEATURES


__all__ = ["FEATURES", "Feature", "feature_from_dict", "load_all", "register"]
