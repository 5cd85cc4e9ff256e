"""A Bayesian (Optuna TPE) hyper-parameter sweep of seed 000's MLP on the demo store, as seed 002 ran its own.

Builds a small demo store once (160 clips of 4 s, the 64-band log-mel only; reused on later
runs), then sweeps learning rate, hidden width, weight decay and batch size over ``--trials``
trials and prints the leaderboard. Rerunning with the same ``--out`` resumes the sweep.

Usage: python benchmarks/sweep_bayes.py [--trials 6] [--epochs 5] [--store URL] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SWEEP = {
    "method": "bayes",
    "metric": {"name": "valid_roc_auc", "goal": "maximize"},
    "parameters": {
        "learning_rate": {"min": 1e-4, "max": 3e-2, "distribution": "log_uniform_values"},
        "hidden_dim": {"values": [32, 64, 128, 256]},
        "weight_decay": {"min": 1e-6, "max": 1e-3, "distribution": "log_uniform_values"},
        "batch_size": {"values": [16, 32]},
    },
}


def demo_store(folder: Path, n_clips: int) -> str:
    """The demo dataset built (or finished) into ``folder``: log-mel 64 @ 16 kHz only."""
    from pipeline.build import build
    from pipeline.config import apply_overrides, config_for, load_catalog

    config = apply_overrides(
        config_for("demo", load_catalog()["demo"]),
        add_features=[{"kind": "logmel", "sample_rate": 16000, "n_mels": 64, "n_fft": 1024, "hop_length": 512}],
        only=True,
        settings={"options.n_clips": n_clips},
    )
    out = folder / f"demo-{n_clips}.zarr"
    report = build(config, source=str(folder / "audio"), out=str(out), workers=2, progress=False)
    print(f"store {out}: {report.n_ok} clips ({report.batches_reused} batches reused, {report.seconds:.1f} s)")
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--clips", type=int, default=160)
    parser.add_argument("--store", help="an existing store with the 64-band log-mel (default: build the demo)")
    parser.add_argument("--out", type=Path, help="sweep folder (default: a fresh temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from training.experiments.sweep import parse_sweep, run_sweep
    from training.run.config import TrainConfig

    cache = Path.home() / ".cache" / "muzarr" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    store = args.store or demo_store(cache, args.clips)
    out = args.out or Path(tempfile.mkdtemp(prefix="sweep-bayes-"))
    spec = parse_sweep(SWEEP, model="mlp", where="benchmarks/sweep_bayes.py")
    base = TrainConfig(store=store, model="mlp", epochs=args.epochs, seed=args.seed, device="cpu", emissions=False)
    started = time.perf_counter()
    board = run_sweep(spec, base, out, trials=args.trials)
    print()
    print((out / "leaderboard.md").read_text().rstrip())
    best = board.iloc[0]
    print(f"\n{len(board)} trials in {time.perf_counter() - started:.0f} s; best: trial {best['trial']} "
          f"(valid roc_auc {best['valid_roc_auc']:.4f}, test roc_auc {best['test_roc_auc']:.4f}); folder {out}")  # fmt: skip


if __name__ == "__main__":  # Dask's worker processes re-import this module
    main()
