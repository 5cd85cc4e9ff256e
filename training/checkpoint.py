"""Checkpoints and run files written atomically, and read back with damage named in one line.

Checkpoints hold tensors and plain values only and are loaded with
``torch.load(weights_only=True)``: opening one runs no code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import MuzarrError

#: what a run writes into its directory (``--overwrite`` removes these, and nothing else)
RUN_FILES = (
    "config.json", "history.csv", "metrics.json", "normalization.json", "best.pt", "last.pt",
    "curves.png", "per_tag_auc.png", "confusion.png",
)  # fmt: skip
#: TensorBoard's event files in a run directory: one per process that trained it (``--overwrite`` removes them too)
EVENT_FILES = "events.out.tfevents.*"
#: request fields that do not change what a run learns: a rerun may differ in these
RUNTIME_FIELDS = ("device", "cache", "workers", "verify_reads", "emissions", "country", "tensorboard", "tb_every")

__all__ = ["EVENT_FILES", "RUN_FILES", "differing_settings", "existing_run", "load_checkpoint", "read_json", "save_checkpoint", "write_text_atomic"]


def save_checkpoint(state: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, map_location: Any = "cpu") -> Any:
    """A checkpoint written by :func:`save_checkpoint`; a damaged one is one :class:`MuzarrError`."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise MuzarrError(f"{path}: no such checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise MuzarrError(
            f"{path} is damaged or not a muzarr checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from None


def read_json(path: Path) -> Any:
    """A JSON file of a run directory; garbage is one :class:`MuzarrError` naming the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MuzarrError(f"{path} is damaged (not JSON: {err})") from None


def differing_settings(saved: dict[str, Any], request: dict[str, Any]) -> list[str]:
    """The request fields (``TrainConfig.to_dict()``) in which a recorded run differs from
    ``request``, as JSON holds them (tuples are lists there); runtime fields do not count."""
    request = json.loads(json.dumps(request))
    return sorted(k for k in set(saved) | set(request) if k not in RUNTIME_FIELDS and saved.get(k) != request.get(k))


def existing_run(out: Path, request: dict[str, Any], *, overwrite: bool) -> str:
    """What ``out`` holds for a run asked with ``request`` (a ``TrainConfig.to_dict()``):
    ``"new"`` (nothing: train), ``"resume"`` (this run, unfinished) or ``"finished"`` (this run,
    done). Another run there, or a folder of other files, is refused with what to do; with
    ``overwrite`` the run files of another run are removed (and only those) and it is ``"new"``.
    """
    out = Path(out)
    if not out.exists() or not any(out.iterdir()):
        return "new"
    if not (out / "config.json").exists():
        names = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise MuzarrError(f"--out {out} is not a run directory (it holds {names}): pick a new or empty folder")
    saved = read_json(out / "config.json").get("train")
    if not isinstance(saved, dict):
        raise MuzarrError(f"{out}/config.json is damaged (no 'train' settings): pick another --out, or --overwrite")
    if overwrite:
        for name in RUN_FILES:
            for path in (out / name, out / f"{name}.tmp"):
                path.unlink(missing_ok=True)
        for path in out.glob(EVENT_FILES):  # else TensorBoard would show the old run's curves under the new one's
            path.unlink()
        return "new"
    differing = differing_settings(saved, request)
    if differing:
        raise MuzarrError(
            f"{out} holds another run (its {', '.join(differing)} differ): continue it with `train --resume {out}`, "
            "pick another --out, or add --overwrite to replace it"
        )
    return "finished" if (out / "metrics.json").exists() else "resume"
