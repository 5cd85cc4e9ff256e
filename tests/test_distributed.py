"""Data-parallel training on CPU (gloo): torchrun, train's own launcher, two machines on 127.0.0.1.

The ranks are real processes started by torch's elastic agent; the checks read what they
wrote (the run folder, and the clip ids each rank trained on, logged under
``MUZARR_EXAMPLE_LOG``), and score the saved checkpoint again in this one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from pipeline import open_store
from training.run.loop import Run
from training.run.metrics import SCALARS

pytestmark = pytest.mark.slow
TRAIN = [sys.executable, "-m", "training.cli"]
MEASURED = ["--model", "cnn", "--device", "cpu", "--quiet", "--batch-size", "8"]
RUN = [*MEASURED, "--no-emissions"]


@pytest.fixture(scope="module")
def store(small_store) -> str:
    """The session's 40-clip demo store of 2 s clips (conftest's ``small_store``): the ranks only read it."""
    return small_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **extra}


def _train_ids(store: str) -> set[str]:
    s = open_store(store)
    return set(s.clips["clip_id"].to_numpy()[s.split("random", "train")].tolist())


def _logged(folder: Path, epoch: int, world: int) -> list[list[str]]:
    return [(folder / f"epoch-{epoch}-rank-{r}.txt").read_text().split() for r in range(world)]


def test_torchrun_two_ranks_deal_the_split_and_evaluate_as_one_process(store, tmp_path):
    out, log = tmp_path / "run", tmp_path / "examples"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port()),
           "-m", "training.cli", "--store", store, *MEASURED, "--epochs", "2", "--out", str(out)]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(MUZARR_EXAMPLE_LOG=str(log)), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("cnn on demo: best epoch") == 1  # rank 0 alone speaks
    expected = _train_ids(store)
    history = pd.read_csv(out / "history.csv")
    for epoch in (1, 2):
        ranks = _logged(log, epoch, 2)
        assert ranks[0] and ranks[1]
        assert not set(ranks[0]) & set(ranks[1])  # disjoint
        assert sorted(ranks[0] + ranks[1]) == sorted(expected)  # together: every training clip, once
        assert history.loc[epoch - 1, "train_examples"] == len(expected)
    config = json.loads((out / "config.json").read_text())
    assert config["ranks"] == {"world": 2, "batch_per_rank": 4, "backend": "gloo"}
    assert config["torch_threads"] == 1  # torchrun's one thread per rank (OMP_NUM_THREADS)
    files = sorted(p.name for p in out.iterdir())
    events = [name for name in files if name.startswith("events.out.tfevents.")]
    assert len(events) == 1  # TensorBoard's, by rank 0 alone
    assert sorted(set(files) - set(events)) == sorted(
        ["best.pt", "config.json", "curves.png", "history.csv", "last.pt", "metrics.json", "normalization.json", "per_tag_auc.png"]
    )  # written once, by rank 0: no second copy, no temporary left
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ranks"] == 2
    assert metrics["energy_kwh"] > 0 and metrics["co2_country"] == "ESP"  # both ranks' trackers, added up
    # the checkpoint scored again by one process: the gathered evaluation is the same
    run = Run.resume(out, progress=False)
    run._load_best()
    alone = run.evaluate("valid")
    for name in ("loss", *SCALARS["multilabel"]):
        assert alone[name] == pytest.approx(metrics["valid"][name], abs=1e-6), name
    best = history.loc[metrics["best_epoch"] - 1]
    assert best["valid_roc_auc"] == pytest.approx(alone["roc_auc"], abs=1e-6)


def test_two_machines_a_killed_rank_is_one_line_and_the_run_resumes(store, tmp_path):
    """Two launches with --nnodes 2 on 127.0.0.1 (one rank each); rank 1 is killed after epoch 1;
    the same command on one machine with two ranks continues the run."""
    out = tmp_path / "run"
    endpoint = f"127.0.0.1:{_free_port()}"
    args = ["--store", store, *RUN, "--epochs", "3", "--out", str(out), "--nproc-per-node", "1", "--nnodes", "2",
            "--rdzv-endpoint", endpoint]  # fmt: skip
    nodes = [subprocess.Popen([*TRAIN, *args, "--node-rank", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env()) for i in (0, 1)]  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while not (out / "history.csv").exists() or len(pd.read_csv(out / "history.csv")) < 1:
            assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), "epoch 1 never finished"
            time.sleep(0.2)
        rank1 = [c for c in psutil.Process(nodes[1].pid).children(recursive=True) if c.environ().get("RANK") == "1"]
        assert len(rank1) == 1
        rank1[0].kill()
        results = [n.communicate(timeout=300) for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    assert [n.returncode for n in nodes] == [1, 1]
    errors = [err.strip().splitlines() for _, err in results]
    assert errors[1] == [
        (f"error: rank 1 (pid {rank1[0].pid}) was killed by SIGKILL; the run is saved after its last finished epoch: "
         f"continue it with: train --nproc-per-node 1 --out {out} (the same command)")
    ]
    assert len(errors[0]) == 1 and errors[0][0].startswith("error: the ranks of this machine lost a rank of another machine")
    saved = pd.read_csv(out / "history.csv")
    assert 1 <= len(saved) < 3
    # --resume: the same run, now two ranks on one machine
    again = subprocess.run([*TRAIN, "--resume", str(out), "--quiet", "--nproc-per-node", "2"],
                           check=False, capture_output=True, text=True, env=_env(), timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("cnn on demo: best epoch") == 1
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(history.iloc[: len(saved)], saved)  # the finished epochs are kept as they were


def test_bad_launches_are_one_line(store, tmp_path):
    uneven = subprocess.run([*TRAIN, "--store", store, *RUN, "--batch-size", "7", "--out", str(tmp_path / "r"),
                             "--nproc-per-node", "2"], check=False, capture_output=True, text=True, env=_env(), timeout=600)  # fmt: skip
    assert uneven.returncode == 2
    assert uneven.stderr.strip().splitlines() == [
        ("error: batch size 7 does not split evenly over 2 ranks: give --batch-size a multiple of 2 "
         "(it is the global batch; each rank takes batch/2)")
    ]
    port = _free_port()
    lonely = subprocess.run([*TRAIN, "--store", store, *RUN, "--out", str(tmp_path / "r"), "--nproc-per-node", "1",
                             "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", f"127.0.0.1:{port}"],
                            check=False, capture_output=True, text=True, env=_env(MUZARR_DIST_TIMEOUT="2"), timeout=600)  # fmt: skip
    assert lonely.returncode == 2
    assert lonely.stderr.strip().splitlines() == [
        (f"error: machine 1: nothing answers at 127.0.0.1:{port} after 2 s (Connection refused): start the same command "
         "with --node-rank 0 on 127.0.0.1 first, and check that this machine reaches it (address, port, firewall)")
    ]
    assert not (tmp_path / "r").exists()  # nothing was started


def test_a_plain_train_is_one_process_as_before(store, tmp_path):
    """No torchrun: WORLD_SIZE unset, the run is the single process it always was."""
    from training.run.config import TrainConfig
    from training.run.distributed import context

    assert not context().active
    run = Run(TrainConfig(store=store, model="cnn", device="cpu", epochs=1, batch_size=8, emissions=False), tmp_path / "r",
              progress=False)  # fmt: skip
    assert run.trainer is run.model and run.rank_batch == 8
    np.testing.assert_array_equal(np.sort(run.readers["train"].clip_ids), np.sort(list(_train_ids(store))))
