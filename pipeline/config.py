"""Build configuration: ``catalog.yaml`` entries, validated once, plus command-line overrides."""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pipeline.audio import ClipPolicy
from pipeline.errors import MuzarrError
from pipeline.features import load_all as _load_features
from pipeline.features.base import Feature, feature_from_dict
from pipeline.index import TASKS
from pipeline.typed import expected_type

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "catalog.yaml"
# A catalog task of "auto" takes the recipe's: the csv recipe is multilabel with a 'tags'
# column and multiclass with a 'label' column.
TASK_AUTO = "auto"
ENTRY_FIELDS = {
    "recipe": (str, True),
    "description": (str, False),
    "source": (str, False),
    "task": (str, True),
    "splits": (list, True),
    "options": (dict, False),
    "clip": (dict, True),
    "features": (list, True),
    "batch_clips": (int, False),
    "download": (list, False),
    "train": (dict, False),
}


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the bytes of a store (and nothing that does not, like worker counts)."""

    dataset: str
    recipe: str
    task: str
    splits: tuple[str, ...]
    clip: ClipPolicy
    features: tuple[Feature, ...]
    options: dict = dataclasses.field(default_factory=dict)
    batch_clips: int = 32

    def __post_init__(self) -> None:
        if self.task not in (*TASKS, TASK_AUTO):
            raise MuzarrError(
                f"task={self.task!r} must be one of {', '.join(TASKS)} or {TASK_AUTO} (the recipe decides)"
            )
        if isinstance(self.batch_clips, bool) or not isinstance(self.batch_clips, int) or self.batch_clips < 1:
            raise MuzarrError(f"batch_clips={self.batch_clips!r} must be a positive integer")
        if not self.features:
            raise MuzarrError(f"dataset {self.dataset!r} has no features to compute: add one with --logmel/--waveform")
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise MuzarrError(f"feature(s) {duplicates} listed twice: each variant must be distinct")

    @property
    def rates(self) -> tuple[int, ...]:
        """Sample rates the audio must be resampled to, in a fixed order."""
        return tuple(sorted({f.sample_rate for f in self.features}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "recipe": self.recipe,
            "task": self.task,
            "splits": list(self.splits),
            "clip": self.clip.to_dict(),
            "features": [f.to_dict() for f in self.features],
            "options": dict(self.options),
            "batch_clips": self.batch_clips,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> BuildConfig:
        """Validate and build; ``data`` may come from a catalog, the command line or a store's manifest."""
        _load_features()
        _check_mapping(data, where)
        for key in ("dataset", "recipe", "task", "splits", "clip", "features"):
            if key not in data:
                raise MuzarrError(f"{where}: missing required field {key!r}")
        for key in ("dataset", "recipe", "task"):
            if not isinstance(data[key], str):
                raise MuzarrError(f"{where}: {key} must be a string, got {data[key]!r}")
        splits = data["splits"]
        if not isinstance(splits, (list, tuple)) or not all(isinstance(s, str) and s for s in splits):
            raise MuzarrError(f"{where}: splits must be a list of split scheme names, got {splits!r}")
        _check_mapping(data["clip"], f"{where}: clip")
        try:
            clip = ClipPolicy(**data["clip"])
        except (TypeError, ValueError, ArithmeticError) as err:
            raise MuzarrError(f"{where}: clip: {err}") from None
        _check_clip_numbers(clip, f"{where}: clip")
        specs = data["features"]
        if not isinstance(specs, (list, tuple)):
            raise MuzarrError(f"{where}: features must be a list of mappings, got {type(specs).__name__}")
        features = []
        for i, spec in enumerate(specs):
            features.append(make_feature(spec, where=f"{where}: features[{i}]"))
        options = data.get("options") or {}
        _check_mapping(options, f"{where}: options")
        batch_clips = data.get("batch_clips", 32)
        if isinstance(batch_clips, bool) or not isinstance(batch_clips, int):
            raise MuzarrError(f"{where}: batch_clips={batch_clips!r} must be a positive integer")
        config = cls(
            dataset=data["dataset"],
            recipe=data["recipe"],
            task=data["task"],
            splits=tuple(splits),
            clip=clip,
            features=tuple(features),
            options=dict(options),
            batch_clips=batch_clips,
        )
        _check_sizes(config, where)
        return config


#: clip settings a store of whole tracks (clip.mode=track) does not use: each file is stored at its own length
TRACK_UNUSED = ("seconds", "anchor", "hop_seconds", "total_seconds", "partial")


def clip_settings(clip: dict[str, Any]) -> dict[str, Any]:
    """The clip policy's settings that decide a store's bytes (a track store's without :data:`TRACK_UNUSED`)."""
    return {k: v for k, v in clip.items() if not (clip.get("mode") == "track" and k in TRACK_UNUSED)}


# Bounds that keep a typo from asking for absurd arrays (a day-long clip, a million sub-clips).
MAX_CLIP_SECONDS = 24 * 3600
MAX_SUBCLIPS = 100_000
MAX_CLIP_BYTES = 1 << 31


def _check_mapping(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise MuzarrError(f"{where}: expected a mapping, got {type(value).__name__} {value!r:.60}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise MuzarrError(f"{where}: keys must be names (strings), got {bad[0]!r}")


def make_feature(spec: Any, *, where: str) -> Feature:
    """A validated feature from ``{"kind": ..., <parameters>}``: any bad value is a MuzarrError."""
    _load_features()  # the registry is filled by importing the feature modules: a caller may not have yet
    _check_mapping(spec, where)
    if not isinstance(spec.get("kind"), str):
        raise MuzarrError(f"{where}: 'kind' must be a feature name, got {spec.get('kind')!r}")
    try:
        feature = feature_from_dict(spec, where=where)
        _check_feature_params(feature, where)
        feature.name  # noqa: B018 - the name is made from the parameters: it must be computable
    except (TypeError, ValueError, ArithmeticError) as err:
        raise MuzarrError(f"{where}: {err}") from None
    return feature


def _check_feature_params(feature: Feature, where: str) -> None:
    """Each parameter has the type of its default (an int where an int is expected, ...)."""
    for field in dataclasses.fields(feature):
        value, default = getattr(feature, field.name), field.default
        if default is dataclasses.MISSING:
            continue
        expected = expected_type(value, default)
        if expected:
            raise MuzarrError(f"{where}: {feature.kind} {field.name}={value!r} must be {expected}")


def _check_clip_numbers(clip: ClipPolicy, where: str) -> None:
    import math

    for name in ("seconds", "hop_seconds", "total_seconds", "max_seconds"):
        value = getattr(clip, name)
        if value is None and name != "seconds":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise MuzarrError(f"{where}: {name}={value!r} must be a positive number")
        if value > MAX_CLIP_SECONDS:
            raise MuzarrError(f"{where}: {name}={value!r} is more than a day of audio")
    try:
        n_subclips = clip.n_subclips
    except (TypeError, ValueError, ArithmeticError) as err:
        raise MuzarrError(f"{where}: {err}") from None
    if n_subclips is not None and not 1 <= n_subclips <= MAX_SUBCLIPS:
        raise MuzarrError(f"{where}: the policy gives {n_subclips} sub-clips per clip (at most {MAX_SUBCLIPS})")


def _check_sizes(config: BuildConfig, where: str) -> None:
    """Every feature's per-clip output must be computable and of a sane size."""
    import math

    import numpy as np

    sub = config.clip.n_subclips or 1
    for feature in config.features:
        try:
            shape = feature.output_shape(config.clip.n_samples(feature.sample_rate))
            size = sub * math.prod(shape) * np.dtype(feature.dtype).itemsize
        except (TypeError, ValueError, ArithmeticError, OverflowError) as err:
            raise MuzarrError(f"{where}: feature {feature.name}: {type(err).__name__}: {err}") from None
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise MuzarrError(f"{where}: feature {feature.name} gives an empty output {shape} for one clip")
        if size > MAX_CLIP_BYTES:
            raise MuzarrError(f"{where}: feature {feature.name} would take {size / 2**30:.1f} GiB per clip")


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Read and validate ``catalog.yaml``: every error names the file, the entry and the field."""
    path = Path(path or os.environ.get("MUZARR_CATALOG") or DEFAULT_CATALOG)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MuzarrError(f"catalog not found: {path}") from None
    except OSError as err:
        raise MuzarrError(f"cannot read catalog {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MuzarrError(f"{path}: not UTF-8 text (bad byte at offset {err.start}): save the catalog as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MuzarrError(f"{path}: not valid YAML: {_one_line(err)}") from None
    except RecursionError:
        raise MuzarrError(f"{path}: YAML nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise MuzarrError(f"{path}: expected a top-level 'datasets:' mapping of entries")
    catalog = {}
    for name, entry in data["datasets"].items():
        where = f"{path}: dataset {name!r}"
        if not isinstance(entry, dict):
            raise MuzarrError(f"{where}: expected a mapping, got {type(entry).__name__}")
        _check_mapping(entry, where)
        unknown = sorted(set(entry) - set(ENTRY_FIELDS))
        if unknown:
            raise MuzarrError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(ENTRY_FIELDS)}")
        for field, (kind, required) in ENTRY_FIELDS.items():
            if field not in entry:
                if required:
                    raise MuzarrError(f"{where}: missing required field {field!r}")
                continue
            if not isinstance(entry[field], kind):
                raise MuzarrError(
                    f"{where}: field {field!r} must be a {kind.__name__}, got {type(entry[field]).__name__}"
                )
        # Build once so that a bad feature or clip is reported at load time, with its place.
        config_for(str(name), entry, where=where)
        catalog[str(name)] = entry
    return catalog


def config_for(name: str, entry: dict[str, Any], *, where: str | None = None) -> BuildConfig:
    """The :class:`BuildConfig` of catalog entry ``name``."""
    return BuildConfig.from_dict(
        {
            "dataset": name,
            "recipe": entry["recipe"],
            "task": entry["task"],
            "splits": entry["splits"],
            "clip": entry["clip"],
            "features": entry["features"],
            "options": entry.get("options") or {},
            "batch_clips": entry.get("batch_clips", 32),
        },
        where=where or f"dataset {name!r}",
    )


def parse_spec(text: str, *, what: str) -> dict[str, Any]:
    """``"n_mels=96,sample_rate=12000"`` → ``{"n_mels": 96, "sample_rate": 12000}`` (YAML scalars)."""
    spec: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise MuzarrError(f"{what}: {part!r} is not KEY=VALUE (example: n_mels=96,sample_rate=12000)")
        spec[key.strip()] = _scalar(value.strip())
    return spec


def _scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, str, bool, type(None))) else text


def apply_overrides(
    config: BuildConfig,
    *,
    add_features: list[dict[str, Any]] = (),
    only: bool = False,
    settings: dict[str, Any] | None = None,
) -> BuildConfig:
    """A new config with features added (or replacing the list, ``only=True``) and fields set.

    An added feature with the name of one already there replaces it, in its place: the
    store has one ``waveform``, so ``--waveform sample_rate=22050`` or ``storage=float32``
    changes the catalog's, and a log-mel differing only in ``storage`` replaces its twin.

    ``settings`` keys are dotted paths: ``clip.seconds``, ``options.tags``, ``batch_clips``,
    ``<kind>.<param>`` (every feature of that kind, e.g. ``logmel.top_db``) or
    ``<array name>.<param>`` (one feature, e.g. ``logmel/mel96_sr12000_fft512_hop256.n_fft``).
    """
    _load_features()
    data = config.to_dict()
    added = [dict(spec) for spec in add_features]
    data["features"] = added if only else data["features"] + added
    names = [make_feature(f, where="--feature").name for f in data["features"]]
    for key, value in (settings or {}).items():
        head, _, param = key.rpartition(".")
        if key == "batch_clips":
            data["batch_clips"] = value
        elif head in ("clip", "options"):
            if head == "clip" and param not in {f.name for f in dataclasses.fields(ClipPolicy)}:
                raise MuzarrError(f"--set {key}: clip has no parameter {param!r}")
            data[head] = {**data[head], param: value}
        else:
            targets = [i for i, f in enumerate(data["features"]) if head in (f["kind"], names[i])]
            if not targets:
                known = sorted({f["kind"] for f in data["features"]} | set(names))
                raise MuzarrError(f"--set {key}: no feature named {head!r}; features here: {known}")
            for i in targets:
                data["features"][i] = {**data["features"][i], param: value}
    if data["clip"].get("mode") == "track":
        unused = [key for key in settings or {} if key.startswith("clip.") and key[5:] in TRACK_UNUSED]
        if unused:
            raise MuzarrError(
                f"--set {unused[0]}={settings[unused[0]]}: clip.mode=track stores every file whole, at its own length, "
                f"so {unused[0]} does nothing there: drop it (clip.max_seconds is the longest track kept)"
            )
    by_name: dict[str, dict] = {}  # keeps the first position, takes the last spec
    for spec in data["features"]:
        by_name[make_feature(spec, where="--feature").name] = spec
    data["features"] = list(by_name.values())
    return BuildConfig.from_dict(data, where="command line")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def config_from_command(
    name: str,
    *,
    catalog: str | os.PathLike | None = None,
    waveforms: tuple[str, ...] = (),
    logmels: tuple[str, ...] = (),
    tabulars: tuple[str, ...] = (),
    only: bool = False,
    settings: tuple[str, ...] = (),
) -> tuple[BuildConfig, dict[str, Any]]:
    """The configuration ``pipe build NAME`` asks for with these options, and the catalog entry."""
    entries = load_catalog(catalog)
    if name not in entries:
        raise MuzarrError(f"unknown dataset {name!r}; the catalog has: {', '.join(entries)} (see `pipe ls`)")
    overrides: dict[str, Any] = {}
    for setting in settings:
        overrides.update(parse_spec(setting, what="--set"))
    added = [
        *({"kind": "waveform", **parse_spec(v, what="--waveform")} for v in waveforms),
        *({"kind": "logmel", **parse_spec(v, what="--logmel")} for v in logmels),
        *({"kind": t} for t in tabulars),
    ]
    if only and not added:
        raise MuzarrError("--only needs at least one --waveform, --logmel or --tabular")
    config = apply_overrides(config_for(name, entries[name]), add_features=added, only=only, settings=overrides)
    return config, entries[name]


# The order `pipe build` adds its feature options in: every --waveform, then --logmel, then --tabular.
_FLAG_ORDER = {"waveform": 0, "logmel": 1}
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
    store's :attr:`~pipeline.store.Store.source`, see :func:`recorded_source`): without it the
    command would index the catalog's default folder, or the folder it is run from.
    """
    target = apply_overrides(config, add_features=list(add)) if add else config
    args = _args_from_catalog(target)
    if args is None:
        args = ["--catalog", UNKNOWN_CATALOG, *_explicit_args(target)]
    where = ["--source", source] if source else []
    return shlex.join(["pipe", "build", target.dataset, *where, "--out", str(out), *args, *extra])


def recorded_source(source: str) -> str:
    """``--source`` as a store's manifest records it: a folder made absolute (as it is when the
    build runs, so a command printed later works from any folder), a URL as given but without
    user, password, query or fragment (nothing that may hold a credential is written)."""
    if "://" not in source:
        return str(Path(source).expanduser().resolve())
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(source)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    try:
        port = parts.port
    except ValueError:  # not a number: not part of a place to record
        port = None
    return urlunsplit((parts.scheme, host + (f":{port}" if port else ""), parts.path, "", ""))


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
            if not _same(getattr(feature, f.name), f.default)
        }
        if feature.kind in _FLAG_ORDER:
            params = {"sample_rate": feature.sample_rate, **params}  # always: it says which audio
            args += [f"--{feature.kind}", ",".join(f"{k}={_cli_value(v)}" for k, v in params.items())]
        else:
            # --tabular takes the set's name only: its other parameters are set on its array by name
            args += ["--tabular", feature.kind, *(_set_args([(f"{feature.name}.{k}", v) for k, v in params.items()]) or [])]
    return args


def _flag_sorted(features: Iterable[Feature]) -> list[Feature]:
    return sorted(features, key=lambda f: _FLAG_ORDER.get(f.kind, len(_FLAG_ORDER)))


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
        if "," not in text and _same(_scalar(text.strip()), value):
            return text
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (``3`` is not ``3.0`` on the command line)."""
    return type(a) is type(b) and a == b
