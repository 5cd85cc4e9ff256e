"""Build configuration: ``catalog.yaml`` entries, validated once, plus command-line overrides."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from pipeline.audio import ClipPolicy
from pipeline.errors import MuzarrError
from pipeline.features import load_all as _load_features
from pipeline.features.base import Feature, feature_from_dict
from pipeline.index import TASKS
from pipeline.suggest import did_you_mean
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
        spec[key.strip()] = parse_scalar(value.strip())
    return spec


def parse_scalar(text: str) -> Any:
    """One value as the command line gives it (a YAML scalar), or the text itself."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, str, bool, type(None))) else text


#: what ``--set`` takes, for the line that refuses a key it does not
SET_KEYS = "--set takes clip.<parameter>, options.<recipe option>, batch_clips or <feature>.<parameter>"


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
    features = _load_features()
    data = config.to_dict()
    added = [dict(spec) for spec in add_features]
    data["features"] = added if only else data["features"] + added
    names = [make_feature(f, where="feature").name for f in data["features"]]
    given: dict[int, list[str]] = {}  # feature position -> the settings that changed it
    for key, value in (settings or {}).items():
        head, _, param = key.rpartition(".")
        if key == "batch_clips":
            data["batch_clips"] = value
        elif not head:
            raise MuzarrError(f"--set {key}: no setting named {key!r}{did_you_mean(key, ['batch_clips'])}; {SET_KEYS}")
        elif head in ("clip", "options"):
            valid = [f"clip.{f.name}" for f in dataclasses.fields(ClipPolicy)]
            if head == "clip" and key not in valid:
                raise MuzarrError(
                    f"--set {key}: clip has no parameter {param!r}{did_you_mean(key, valid)}; its keys: {', '.join(sorted(valid))}"
                )
            data[head] = {**data[head], param: value}
        else:
            targets = [i for i, f in enumerate(data["features"]) if head in (f["kind"], names[i])]
            if not targets:
                heads = sorted({f["kind"] for f in data["features"]} | set(names))
                raise MuzarrError(
                    f"--set {key}: no setting or feature named {head!r}{did_you_mean(head, ['clip', 'options', *heads])}; "
                    f"{SET_KEYS}, for a feature here: {', '.join(heads)}"
                )
            for i in targets:
                kind = data["features"][i]["kind"]
                valid = [f"{head}.{f.name}" for f in dataclasses.fields(features[kind])]
                if key not in valid:
                    raise MuzarrError(
                        f"--set {key}: {kind} has no parameter {param!r}{did_you_mean(key, valid)}; "
                        f"its keys: {', '.join(sorted(valid))}"
                    )
                derived = features[kind].derived  # read again from what the new parameters name
                data["features"][i] = {k: v for k, v in {**data["features"][i], param: value}.items() if k not in derived}
                given.setdefault(i, []).append(f"{key}={value}")
    if data["clip"].get("mode") == "track":
        unused = [key for key in settings or {} if key.startswith("clip.") and key[5:] in TRACK_UNUSED]
        if unused:
            raise MuzarrError(
                f"--set {unused[0]}={settings[unused[0]]}: clip.mode=track stores every file whole, at its own length, "
                f"so {unused[0]} does nothing there: drop it (clip.max_seconds is the longest track kept)"
            )
    by_name: dict[str, dict] = {}  # keeps the first position, takes the last spec
    for i, spec in enumerate(data["features"]):
        by_name[make_feature(spec, where=f"--set {' '.join(given[i])}" if i in given else "feature").name] = spec
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
    embeddings: tuple[str, ...] = (),
    only: bool = False,
    settings: tuple[str, ...] = (),
    device: str | None = None,
) -> tuple[BuildConfig, dict[str, Any]]:
    """The configuration ``pipe build NAME`` asks for with these options, and the catalog entry."""
    entries = load_catalog(catalog)
    if name not in entries:
        raise MuzarrError(
            f"unknown dataset {name!r}{did_you_mean(name, entries)}; the catalog has: {', '.join(entries)} (see `pipe ls`)"
        )
    overrides: dict[str, Any] = {}
    for setting in settings:
        overrides.update(parse_spec(setting, what="--set"))
    added = []
    for option, kind, values in (("--waveform", "waveform", waveforms), ("--logmel", "logmel", logmels)):
        for text in values:
            spec = {"kind": kind, **parse_spec(text, what=option)}
            make_feature(spec, where=f"{option} {text}")  # a wrong parameter is blamed on the option that gave it
            added.append(spec)
    for text in tabulars:
        make_feature({"kind": text}, where=f"--tabular {text}")
        added.append({"kind": text})
    for text in embeddings:
        spec = {"kind": "embedding", **parse_embedding(text)}
        if device is not None:
            spec["device"] = device
        make_feature(spec, where=f"--embedding {text}")
        added.append(spec)
    if only and not added:
        raise MuzarrError("--only needs at least one --waveform, --logmel, --tabular or --embedding")
    base = config_for(name, entries[name])
    if device is not None:  # every embedding of the store, the catalog's too, runs there
        if not any(f.kind == "embedding" for f in base.features) and not embeddings:
            raise MuzarrError(f"--device {device}: this build stores no embedding (add one with --embedding MODEL)")
        if any(f.kind == "embedding" for f in base.features):
            overrides.setdefault("embedding.device", device)
    config = apply_overrides(base, add_features=added, only=only, settings=overrides)
    return config, entries[name]


def parse_embedding(text: str) -> dict[str, Any]:
    """``"m-a-p/MERT-v1-95M,layers=0-6,pool=none"`` → ``{"model": "m-a-p/MERT-v1-95M", "layers": "0-6", "pool": "none"}``:
    the model first (or as ``model=``), then the embedding's parameters."""
    first, _, rest = text.partition(",")
    if "=" in first:
        return parse_spec(text, what="--embedding")
    if not first.strip():
        raise MuzarrError("--embedding: give the model first, e.g. --embedding m-a-p/MERT-v1-95M,layers=all")
    return {"model": first.strip(), **parse_spec(rest, what="--embedding")}


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


