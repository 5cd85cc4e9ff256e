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

__all__ = ["load_checkpoint", "read_json", "save_checkpoint", "write_text_atomic"]


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
