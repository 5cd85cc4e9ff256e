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

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "catalog.yaml"
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
        if self.task not in TASKS:
            raise MuzarrError(f"task={self.task!r} must be one of {TASKS}")
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
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> "BuildConfig":
        _load_features()
        try:
            clip = ClipPolicy(**data["clip"])
        except TypeError as err:
            raise MuzarrError(f"{where}: clip: {err}") from None
        features = tuple(
            feature_from_dict(spec, where=f"{where}: features[{i}]") for i, spec in enumerate(data["features"])
        )
        return cls(
            dataset=data["dataset"],
            recipe=data["recipe"],
            task=data["task"],
            splits=tuple(data["splits"]),
            clip=clip,
            features=features,
            options=dict(data.get("options") or {}),
            batch_clips=int(data.get("batch_clips", 32)),
        )


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Read and validate ``catalog.yaml``: every error names the file, the entry and the field."""
    path = Path(path or os.environ.get("MUZARR_CATALOG") or DEFAULT_CATALOG)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MuzarrError(f"catalog not found: {path}") from None
    except yaml.YAMLError as err:
        raise MuzarrError(f"{path}: not valid YAML: {_one_line(err)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise MuzarrError(f"{path}: expected a top-level 'datasets:' mapping of entries")
    catalog = {}
    for name, entry in data["datasets"].items():
        where = f"{path}: dataset {name!r}"
        if not isinstance(entry, dict):
            raise MuzarrError(f"{where}: expected a mapping, got {type(entry).__name__}")
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
        config_for(name, entry, where=where)
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

    ``settings`` keys are dotted paths: ``clip.seconds``, ``options.tags``, ``batch_clips``,
    ``<kind>.<param>`` (every feature of that kind, e.g. ``logmel.top_db``) or
    ``<array name>.<param>`` (one feature, e.g. ``logmel/mel96_sr12000_fft512_hop256.n_fft``).
    """
    _load_features()
    data = config.to_dict()
    added = [dict(spec) for spec in add_features]
    data["features"] = added if only else data["features"] + added
    names = [feature_from_dict(f, where="--feature").name for f in data["features"]]
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
    deduplicated, seen = [], set()
    for spec in data["features"]:
        name = feature_from_dict(spec, where="--feature").name
        if name not in seen:
            seen.add(name)
            deduplicated.append(spec)
    data["features"] = deduplicated
    return BuildConfig.from_dict(data, where="command line")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
