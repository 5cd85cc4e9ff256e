"""Clip-level predictions and metrics of a model on one split.

Every crop of every sub-clip of a clip goes through the model; the sigmoid (multilabel) or
softmax (multiclass) outputs are averaged per clip, as the seed reports and Won et al.'s
``eval.py`` do, and the loss is the mean over all crops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import MuzarrError
from training.data import SplitReader, eval_batches
from training.run.device import autocast
from training.run.distributed import Context
from training.run.metrics import compute_metrics

__all__ = ["checked_batch", "evaluate", "predict_scores"]


def checked_batch(
    x: torch.Tensor, positions, reader: SplitReader, device: torch.device, *, refusing: str = "refusing to train on it"
) -> torch.Tensor:
    """``x`` on ``device``; a non-finite value is an error naming its clip (never trained on or scored)."""
    if not torch.isfinite(x).all():
        bad = torch.nonzero(~torch.isfinite(x.reshape(len(x), -1)).all(dim=1))[0].item()
        clip = reader.clip_ids[int(positions[bad // (len(x) // len(positions))])]
        raise MuzarrError(f"clip {clip!r} of {reader.url} has non-finite values in {reader.plan.array}: {refusing}")
    return x.to(device, non_blocking=True)


@torch.no_grad()
def predict_scores(
    model: nn.Module, reader: SplitReader, *, task: str, n_classes: int, loss_fn: nn.Module, device: torch.device,
    batch_size: int, amp: bool = False, dist: Context | None = None,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """Clip-level scores ``[n_clips, n_classes]`` and the mean loss over every evaluated crop.

    Under ``dist`` (several ranks), each rank scores its share of the shards and the scores
    are gathered: every rank returns the scores of every clip, as one process would.
    """
    dist = dist or Context()
    model.eval()
    per_clip = reader.plan.examples_per_clip_eval
    shards = np.arange(reader.n_blocks())[dist.rank :: dist.world] if dist.active else None
    scores, kept, losses, count = [], [], 0.0, 0
    for x, positions in eval_batches(reader, batch_clips=max(1, batch_size // per_clip), shards=shards):
        x = checked_batch(x, positions, reader, device, refusing="cannot score it")
        with autocast(device, amp=amp):
            logits = model(x).float()
        y = torch.from_numpy(reader.targets[np.repeat(positions, per_clip)]).to(device)
        losses += loss_fn(logits, y).item() * len(x)
        count += len(x)
        probs = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)
        scores.append(probs.view(len(positions), per_clip, -1).mean(dim=1).cpu().numpy())
        kept.append(positions)
    if dist.active:
        parts = dist.gather((kept, scores, losses, count))
        kept = [p for part in parts for p in part[0]]
        scores = [s for part in parts for s in part[1]]
        losses, count = sum(part[2] for part in parts), sum(part[3] for part in parts)
    if not scores:
        return np.zeros((0, n_classes), np.float32), float("nan")
    order = np.argsort(np.concatenate(kept), kind="stable")  # split order, whichever rank scored a clip
    return np.concatenate(scores)[order], losses / count


def evaluate(model: nn.Module, reader: SplitReader, *, task: str, classes: list[str], **options: Any) -> dict[str, Any]:
    """``loss``, ``n_clips`` and the task's metrics of ``model`` on ``reader``'s clips."""
    if len(reader) == 0:
        return {"loss": float("nan"), "n_clips": 0}
    scores, loss = predict_scores(model, reader, task=task, n_classes=len(classes), **options)
    return {"loss": loss, "n_clips": len(reader), **compute_metrics(task, reader.targets, scores, classes)}
