"""Which torch device a run uses, and its mixed-precision context."""

from __future__ import annotations

import torch

from pipeline.errors import MuzarrError

__all__ = ["DEVICES", "autocast", "pick_device"]

#: what ``--device`` may name
DEVICES = ("auto", "cuda", "mps", "cpu")


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MuzarrError("--device cuda: no CUDA device is available here (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MuzarrError("--device mps: no Apple MPS device is available here (try --device auto)")
    if name not in ("cuda", "mps", "cpu"):
        raise MuzarrError(f"--device {name!r} must be auto, cuda, mps or cpu")
    return torch.device(name)


def autocast(device: torch.device, *, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
