"""Time ``train probe``'s batched pass on MTAT-sized embeddings, beside probing one layer at a time.

Usage::

    .venv/bin/python benchmarks/probe_time.py [--clips 25000] [--layers 13] [--dim 768] [--epochs 2]
                                              [--threads 2] [--full] [--device cpu]

Synthetic vectors of MERT-v1-95M's shape on MTAT (25,000 clips x 13 hidden states x 768, 50 tags,
MARBLE's split: 12/16 train, 1/16 valid, 3/16 test), with a planted signal (tags from a latent
vector each layer holds a noisy projection of, strongest in the middle layers) so that early
stopping behaves as on real data. It times, per epoch of all 14 inputs (13 layers and their mean):

- the batched pass of ``train probe`` (:func:`training.experiments.probe_engine.fit_probes`), MLP
  (512 hidden) and linear, MARBLE's settings (Adam 5e-3, batch 64), validation every epoch;
- a textbook loop over the 14 inputs: ``nn.Sequential`` + ``torch.optim.Adam`` + sklearn's
  ROC-AUC per epoch, one probe after another (one epoch of one input, times 14);
- scikit-learn's ``MLPClassifier`` (512 hidden, Adam 5e-3, batch 64): one epoch (``max_iter=1``) of
  one input, times 14 (no validation counted).

``--full`` then runs the whole batched probe (100 epochs at most, early stopping, both kinds) and
reports its wall time and the epochs each probe ran. Prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic(n_clips: int, n_layers: int, dim: int, n_tags: int, *, seed: int = 0):
    """``x [layers + 1, clips, dim]`` (the last: the mean of the layers, standardised as ``train probe`` does),
    multi-hot ``y [clips, tags]`` (about 8 % positive, as MTAT's top 50), and the train/valid/test slices."""
    import numpy as np

    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_clips, 64)).astype(np.float32)
    logits = latent @ rng.standard_normal((64, n_tags)).astype(np.float32) / 4 - 2.6
    y = (rng.random((n_clips, n_tags)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    x = np.empty((n_layers + 1, n_clips, dim), dtype=np.float32)
    for layer in range(n_layers):
        strength = 0.2 + 0.8 * np.exp(-(((layer - n_layers * 0.6) / (n_layers / 3)) ** 2))  # peaks in the middle
        x[layer] = strength * (latent @ rng.standard_normal((64, dim)).astype(np.float32)) / 8
        x[layer] += rng.standard_normal((n_clips, dim)).astype(np.float32)
    x[n_layers] = x[:n_layers].mean(axis=0)
    n_train, n_valid = n_clips * 12 // 16, n_clips // 16
    train, valid = slice(0, n_train), slice(n_train, n_train + n_valid)
    test = slice(n_train + n_valid, n_clips)
    x -= x[:, train].mean(axis=1, keepdims=True)
    x /= x[:, train].std(axis=1, keepdims=True)
    return x, y, train, valid, test


def time_batched(x, y, train, valid, *, kind: str, epochs: int, device: str) -> float:
    """Seconds per epoch of the batched pass (all inputs, validation included), after a warm-up epoch."""
    import numpy as np
    import torch

    from training.experiments.probe_engine import ProbeSettings, fit_probes

    stamps: list[float] = []
    settings = ProbeSettings(kind=kind, max_epochs=epochs + 1, patience=10_000)
    fit_probes(torch.from_numpy(x[:, train]).to(device), torch.from_numpy(y[train]).to(device), torch.from_numpy(x[:, valid]).to(device),
               y[valid], settings=settings, task="multilabel", n_classes=y.shape[1], seeds=list(range(len(x))), order_seed=0,
               on_epoch=lambda *_: stamps.append(time.perf_counter()))  # fmt: skip
    return float(np.diff(stamps).mean())


def time_loop(x, y, train, valid, *, kind: str) -> float:
    """Seconds of one epoch of one input with torch's modules and Adam, then sklearn's validation ROC-AUC."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score
    from torch import nn

    dim, n_tags = x.shape[2], y.shape[1]
    model = nn.Sequential(nn.Linear(dim, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, n_tags)) if kind == "mlp" \
        else nn.Linear(dim, n_tags)  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    xt, yt, xv = torch.from_numpy(x[0, train]), torch.from_numpy(y[train]), torch.from_numpy(x[0, valid])
    started = time.perf_counter()
    order = torch.randperm(len(xt))
    model.train()
    for i in range(0, len(xt), 64):
        batch = order[i : i + 64]
        loss = nn.functional.binary_cross_entropy_with_logits(model(xt[batch]), yt[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(model(xv)).numpy()
    usable = [j for j in range(n_tags) if 0 < y[valid][:, j].sum() < len(scores)]
    np.mean([roc_auc_score(y[valid][:, j], scores[:, j]) for j in usable])
    return time.perf_counter() - started


def time_sklearn(x, y, train) -> float:
    """Seconds of one epoch (``max_iter=1``) of one input with scikit-learn's MLPClassifier."""
    import warnings

    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=(512,), batch_size=64, learning_rate_init=5e-3, alpha=0.0, max_iter=1,
                          random_state=0)  # fmt: skip
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch does not converge: that is the point
        model.fit(x[0, train], y[train].astype(int))
    return time.perf_counter() - started


def full_run(x, y, train, valid, test, *, device: str) -> list[str]:
    """The whole batched probe, both kinds, MARBLE's settings: wall time, epochs, best layer's test ROC-AUC."""
    import numpy as np
    import torch

    from training.experiments.probe_engine import ProbeSettings, fit_probes, predict, scores_of, stack
    from training.run.metrics import multilabel_metrics

    lines = []
    for kind in ("mlp", "linear"):
        started = time.perf_counter()
        fits = fit_probes(torch.from_numpy(x[:, train]).to(device), torch.from_numpy(y[train]).to(device),
                          torch.from_numpy(x[:, valid]).to(device), y[valid], settings=ProbeSettings(kind=kind),
                          task="multilabel", n_classes=y.shape[1], seeds=list(range(len(x))), order_seed=0)  # fmt: skip
        seconds = time.perf_counter() - started
        best = int(np.argmax([f.best_value for f in fits]))
        scores = scores_of(predict(kind, stack(fits), torch.from_numpy(x[:, test]).to(device)), task="multilabel")
        auc = multilabel_metrics(y[test], scores[best], [str(i) for i in range(y.shape[1])])["roc_auc"]
        epochs = [f.epochs for f in fits]
        lines.append(f"| {kind} | {seconds / 60:.1f} min | {min(epochs)}-{max(epochs)} (mean {np.mean(epochs):.0f}) | "
                     f"{best if best < len(x) - 1 else 'all'} | {auc:.4f} |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=25000)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs of each batched pass (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="also run the whole probe (early stopping, both kinds)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    x, y, train, valid, test = synthetic(args.clips, args.layers, args.dim, args.tags)
    n_inputs = len(x)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.clips} clips ({train.stop} train, {valid.stop - valid.start} valid), {args.layers} layers + their mean x "
          f"{args.dim}, {args.tags} tags; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, load average {load:.1f}\n")  # fmt: skip
    print(f"| probe | batched pass ({n_inputs} inputs) | torch loop, one input at a time | scikit-learn MLPClassifier | batched vs loop |")
    print("|---|---:|---:|---:|---:|")
    for kind in ("mlp", "linear"):
        batched = time_batched(x, y, train, valid, kind=kind, epochs=args.epochs, device=args.device)
        loop = time_loop(x, y, train, valid, kind=kind) * n_inputs
        sklearn = f"{time_sklearn(x, y, train) * n_inputs:.0f} s/epoch" if kind == "mlp" else "-"
        print(f"| {kind} | {batched:.1f} s/epoch | {loop:.1f} s/epoch | {sklearn} | {loop / batched:.1f}x |", flush=True)
    if args.full:
        print("\n| probe | whole run (100 epochs at most, early stopping) | epochs run | best layer (valid) | its test ROC-AUC |")
        print("|---|---:|---:|---:|---:|")
        for line in full_run(x, y, train, valid, test, device=args.device):
            print(line, flush=True)


if __name__ == "__main__":
    main()
