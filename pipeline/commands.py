"""The ``pipe build`` command that makes a given configuration (:func:`build_command`): what the commands
that print a store's rebuild, repair or grow write (:func:`explain`, :func:`repair_command`). The store
layer only says what is wrong; this module writes the command that fixes it.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Iterable
from typing import Any

from pipeline.config import BuildConfig, apply_overrides, clip_settings, config_for, load_catalog, parse_scalar
from pipeline.errors import MuzarrError
from pipeline.features.base import Feature
from pipeline.store.manifest import RebuildNeeded

# The order `pipe build` adds its feature options in: every --waveform, then --logmel, --tabular, --embedding.
_FLAG_ORDER = {"waveform": 0, "logmel": 1, "embedding": 3}
UNKNOWN_CATALOG = "<your catalog>"


def build_command(
    config: BuildConfig,
    *,
    out: str,
    source: str | None = None,
    add: Iterable[dict[str, Any]] = (),
    extra: tuple[str, ...] = (),
) -> str:
    """The ``pipe build`` command line whose configuration is ``config`` plus the features ``add``.

    Every field that differs from the catalog's entry is given with ``--set`` and every feature
    that differs with ``--waveform``/``--logmel``/``--tabular`` (``--only`` when the catalog's
    features are not kept as they are), so the command rebuilds, repairs or grows that very
    store. ``add`` is added as ``pipe build`` adds it: a feature with the name of one in
    ``config`` replaces it. A dataset the packaged catalog does not hold as ``config`` has it was
    built with ``--catalog``: the command says ``--catalog '<your catalog>'`` and spells out
    every field the command line can give. ``source`` is where the store's audio came from (a
    store's :attr:`~pipeline.store.Store.source`, see :func:`pipeline.config.recorded_source`): without it the
    command would index the catalog's default folder, or the folder it is run from.
    """
    target = apply_overrides(config, add_features=list(add)) if add else config
    args = _args_from_catalog(target)
    if args is None:
        args = ["--catalog", UNKNOWN_CATALOG, *_explicit_args(target)]
    where = ["--source", source] if source else []
    return shlex.join(["pipe", "build", target.dataset, *where, "--out", str(out), *args, *extra])


def _args_from_catalog(target: BuildConfig) -> list[str] | None:
    """The options that turn the packaged catalog's entry into ``target``; None if none can."""
    try:
        entry = load_catalog().get(target.dataset)
    except MuzarrError:
        return None
    if entry is None:
        return None
    base = config_for(target.dataset, entry)
    if (base.recipe, base.task, base.splits) != (target.recipe, target.task, target.splits):
        return None
    if set(base.options) - set(target.options):
        return None  # no option of the command line removes a catalog option
    old_clip, new_clip = base.clip.to_dict(), clip_settings(target.clip.to_dict())
    changes = [(f"clip.{k}", v) for k, v in new_clip.items() if not _same(v, old_clip.get(k))]
    if target.batch_clips != base.batch_clips:
        changes.append(("batch_clips", target.batch_clips))
    changes += [(f"options.{k}", v) for k, v in target.options.items() if k not in base.options or not _same(v, base.options[k])]
    settings = _set_args(changes)
    if settings is None:
        return None
    kept = [f.name for f in base.features]
    extras = target.features[len(kept) :]
    if [f.name for f in target.features[: len(kept)]] == kept and list(extras) == _flag_sorted(extras):
        # The catalog's features stay in place (a same-named option replaces one there), new ones follow.
        changed = [t for b, t in zip(base.features, target.features) if t != b]
        return settings + _feature_args([*changed, *extras])
    return settings + ["--only", *_feature_args(target.features)]


def _explicit_args(target: BuildConfig) -> list[str]:
    """Every field and feature of ``target`` the command line can give (the rest is the catalog's)."""
    changes = [(f"clip.{k}", v) for k, v in clip_settings(target.clip.to_dict()).items()]
    changes += [("batch_clips", target.batch_clips), *((f"options.{k}", v) for k, v in target.options.items())]
    settings = [arg for change in changes for arg in (_set_args([change]) or [])]
    return [*settings, "--only", *_feature_args(target.features)]


def _set_args(changes: list[tuple[str, Any]]) -> list[str] | None:
    """``--set KEY=VALUE`` for each change; None if a value cannot be written on the command line."""
    args = []
    for key, value in changes:
        text = _cli_value(value)
        if text is None:
            return None
        args += ["--set", f"{key}={text}"]
    return args


def _feature_args(features: Iterable[Feature]) -> list[str]:
    """The feature options that give ``features``, in the order ``pipe build`` adds them."""
    args = []
    for feature in _flag_sorted(features):
        params = {
            f.name: getattr(feature, f.name)
            for f in dataclasses.fields(feature)
            if not _same(getattr(feature, f.name), f.default) and f.name not in feature.derived
        }
        if feature.kind == "embedding":  # the model first; what its folder says is read from it again
            model = params.pop("model")
            args += ["--embedding", ",".join([model, *(f"{k}={_cli_value(v)}" for k, v in params.items())])]
        elif feature.kind in _FLAG_ORDER:
            params = {"sample_rate": feature.sample_rate, **params}  # always: it says which audio
            args += [f"--{feature.kind}", ",".join(f"{k}={_cli_value(v)}" for k, v in params.items())]
        else:
            # --tabular takes the set's name only: its other parameters are set on its array by name
            args += ["--tabular", feature.kind, *(_set_args([(f"{feature.name}.{k}", v) for k, v in params.items()]) or [])]
    return args


def _flag_sorted(features: Iterable[Feature]) -> list[Feature]:
    return sorted(features, key=lambda f: _FLAG_ORDER.get(f.kind, 2))


def _cli_value(value: Any) -> str | None:
    """``value`` as ``parse_spec`` reads it back exactly, or None (a list, a text with a comma)."""
    if isinstance(value, bool):
        candidates = ["true" if value else "false"]
    elif isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text:
            text = text.replace("e", ".0e")  # YAML reads 1e-05 as text, 1.0e-05 as a number
        candidates = [text]
    elif isinstance(value, int):
        candidates = [str(value)]
    elif value is None:
        candidates = ["null"]
    elif isinstance(value, str):
        candidates = [value, "'" + value.replace("'", "''") + "'"]
    else:
        return None
    for text in candidates:
        if "," not in text and _same(parse_scalar(text.strip()), value):
            return text
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (``3`` is not ``3.0`` on the command line)."""
    return type(a) is type(b) and a == b


def repair_command(store, *, out: str | None = None) -> str | None:
    """``pipe build ... --repair`` for ``store`` (a :class:`~pipeline.store.Store`), at its own place or at
    ``out``; None when its configuration does not validate (nothing to rebuild from). Make it before
    verifying the store: it loads every feature module (scipy), and a verify under an address-space cap
    has none left for that afterwards."""
    out = out or store.url
    try:
        # a folder made absolute, as the source is: the command works from any folder
        out = out if "://" in out else os.path.abspath(out)
        return build_command(store.config(), out=out, source=store.source, extra=("--repair",))
    except MuzarrError:
        return None


def explain(error: MuzarrError) -> str:
    """The line that says ``error``: a store that must be rebuilt (:class:`~pipeline.store.manifest.RebuildNeeded`)
    gets the ``pipe build`` that rebuilds it, from the configuration it was built with where that is known."""
    if not isinstance(error, RebuildNeeded):
        return str(error)
    command = f"pipe build <dataset> --out {shlex.quote(error.url)} --overwrite"
    if error.config is not None:
        try:
            config = BuildConfig.from_dict(dict(error.config), where=f"{error.url} manifest")
            command = build_command(config, out=error.url, source=error.source, extra=("--overwrite",))
        except MuzarrError:
            pass
    return error.with_command(command)
