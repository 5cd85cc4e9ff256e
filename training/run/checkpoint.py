"""Checkpoints and run files written atomically, and read back with damage named in one line.

Checkpoints hold tensors and plain values only and are loaded with
``torch.load(weights_only=True)``: opening one runs no code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import MuzarrError, write_failure

__all__ = ["load_checkpoint", "read_json", "save_checkpoint", "write_atomic", "write_text_atomic"]


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``: a kill leaves the old
    file or the new one, never half of one. A full, read-only or forbidden disk is one
    :class:`MuzarrError` naming ``path`` (see :func:`pipeline.errors.write_failure`), and the temporary
    file is removed, so the same command works again once there is room."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        failure = write_failure(err, str(path))
        if failure is not None:
            raise failure from None
        raise


def save_checkpoint(state: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename (:func:`write_atomic`)."""
    write_atomic(path, lambda tmp: _torch_save(state, tmp))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


class _Recorded(io.RawIOBase):
    """A file that remembers the OSError a write raised: torch's zip writer turns it into a
    RuntimeError ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, handle) -> None:
        super().__init__()
        self.handle = handle
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(state: Any, path: Path) -> None:
    with open(path, "wb") as handle:
        recorded = _Recorded(handle)
        try:
            torch.save(state, recorded)
        except RuntimeError:
            if recorded.error is not None:
                raise recorded.error from None
            raise


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
