"""Run files are written atomically and damage is named in one line, never a traceback."""

from __future__ import annotations

import pytest
import torch

from pipeline import MuzarrError
from training.run.checkpoint import load_checkpoint, read_json, save_checkpoint, write_text_atomic


def test_a_checkpoint_round_trips_and_leaves_no_temporary(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    save_checkpoint(state, tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], state["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_truncated_checkpoint_is_named_as_damaged(tmp_path):
    save_checkpoint({"w": torch.zeros(1000)}, tmp_path / "best.pt")
    data = (tmp_path / "best.pt").read_bytes()
    (tmp_path / "best.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(MuzarrError, match=r"best.pt is damaged or not a muzarr checkpoint"):
        load_checkpoint(tmp_path / "best.pt")
    with pytest.raises(MuzarrError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_garbage_json_is_named_as_damaged(tmp_path):
    write_text_atomic(tmp_path / "config.json", '{"train": ')
    with pytest.raises(MuzarrError, match=r"config.json is damaged \(not JSON"):
        read_json(tmp_path / "config.json")
