"""The store → batches layer: input resolution, crops, chunk-aware shuffling, evaluation crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import MuzarrError, open_store
from training.data import (
    InputSpec,
    SplitReader,
    TrainStream,
    crop,
    eval_batches,
    eval_offsets,
    plan_examples,
    resolve_array,
)
from training.models import get_model


@pytest.fixture(scope="module")
def store(small_store):
    return open_store(small_store)


def test_models_resolve_to_the_arrays_they_need(store):
    assert resolve_array(store, get_model("crnn").input) == "logmel/mel96_sr12000_fft512_hop256_pad37"
    assert resolve_array(store, get_model("cnn").input) == "logmel/mel64_sr16000_fft1024_hop512"
    assert resolve_array(store, get_model("short_res").input) == "waveform"
    assert resolve_array(store, get_model("cnn5").input) == "logmel/mel128_sr22050_fft2048_hop512"
    assert resolve_array(store, get_model("mlp_tabular").input) == "tabular/gtzan57"


def test_a_missing_input_names_the_build_option(store):
    spec = InputSpec("logmel", sample_rate=16000, n_mels=128, n_fft=512, hop_length=256)
    # the store's own overrides kept (issue: hostile and careless input, item 14)
    kept = r"--set clip.seconds=2.0 --set batch_clips=8 --set options.n_clips=40 --set options.seconds=2.0 --only"
    with pytest.raises(MuzarrError, match=rf"add it with: pipe build demo --source \S+ --out \S+ {kept} .*--logmel sample_rate=16000,n_mels=128 "):
        resolve_array(store, spec)


def test_example_plans(store):
    cnn = plan_examples(store, get_model("cnn").input)  # 3 s crops of 2 s clips: whole clip, zero-padded
    assert cnn.example_shape == (64, 94) and cnn.eval_crops == 1
    dieleman = plan_examples(store, InputSpec("waveform", sample_rate=16000, seconds=0.5))
    assert dieleman.example_shape == (8000,) and dieleman.eval_crops == 4
    assert plan_examples(store, InputSpec("waveform", sample_rate=16000, seconds=0.5), eval_crops=10).eval_crops == 10
    crnn = plan_examples(store, get_model("crnn").input)
    assert crnn.length is None and crnn.example_shape == (96, 1 + 24000 // 256 + 74)


def test_crop_and_eval_offsets():
    items = np.arange(2 * 3 * 10).reshape(2, 3, 10)
    out = crop(items, np.array([0, 4]), 5)
    np.testing.assert_array_equal(out[0], items[0, :, 0:5])
    np.testing.assert_array_equal(out[1], items[1, :, 4:9])
    padded = crop(items, np.array([0, 0]), 12)
    assert padded.shape == (2, 3, 12) and not padded[..., 10:].any()
    np.testing.assert_array_equal(eval_offsets(100, 10, 4), [0, 30, 60, 90])
    np.testing.assert_array_equal(eval_offsets(8, 10, 3), [0, 0, 0])


def _reader(store, spec, *, cache, part="train"):
    rows = store.split("random", part)
    return SplitReader(store, plan_examples(store, spec), rows, store.label_matrix[rows], cache=cache)


@pytest.mark.parametrize("cache", [True, False])
def test_a_shuffled_epoch_sees_every_clip_once(store, cache):
    spec = InputSpec("waveform", sample_rate=16000, seconds=0.25)
    reader = _reader(store, spec, cache=cache)
    stream = TrainStream(reader, batch_size=5, seed=3, buffer_clips=8)
    seen = [p for _, _, positions in stream for p in positions.tolist()]
    assert sorted(seen) == list(range(len(reader)))
    assert seen != sorted(seen)  # shuffled
    wave = store.read("waveform", reader.rows) / 32768
    for x, y, positions in stream:
        assert x.shape[1:] == (4000,) and x.dtype == torch.float32
        np.testing.assert_array_equal(y.numpy(), reader.targets[positions.numpy()])
        # each example is a crop of its own clip
        for example, position in zip(x.numpy(), positions.numpy()):
            clip = wave[position]
            starts = [s for s in range(len(clip) - 4000 + 1) if np.array_equal(clip[s : s + 4000], example)]
            assert starts, "example is not a crop of its clip"


def test_epochs_are_reproducible_and_differ(store):
    reader = _reader(store, InputSpec("waveform", sample_rate=16000, seconds=0.25), cache=False)
    stream = TrainStream(reader, batch_size=4, seed=1, buffer_clips=8)

    def epoch(e):
        stream.set_epoch(e)
        return [(x.numpy().copy(), p.numpy().copy()) for x, _, p in stream]

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, second))


def test_streaming_reads_chunks_in_shuffled_order(store):
    """Chunk-aware shuffling: consecutive examples come from a buffer of whole chunks, not all over the store."""
    reader = _reader(store, InputSpec("waveform", sample_rate=16000, seconds=0.25), cache=False, part="all")
    assert reader.memory is None and reader.chunk_clips == 8
    stream = TrainStream(reader, batch_size=8, seed=0, buffer_clips=8)
    first_batch = next(iter(stream))[2].numpy()
    chunks = set((reader.rows[first_batch] // reader.chunk_clips).tolist())
    assert len(chunks) <= 2  # one buffer = about one chunk


@pytest.mark.parametrize("cache", [True, False])
def test_loader_workers_give_the_same_batches_as_none(store, cache):
    """--workers N: shards decoded in N processes, batches identical to decoding in-process."""
    reader = _reader(store, InputSpec("waveform", sample_rate=16000, seconds=0.25), cache=cache, part="all")

    def epoch(workers):
        stream = TrainStream(reader, batch_size=4, seed=5, buffer_clips=8, workers=workers)
        stream.set_epoch(2)
        return [(x.numpy().copy(), y.numpy().copy(), p.numpy().copy()) for x, y, p in stream]

    alone = epoch(0)
    assert sorted(np.concatenate([p for _, _, p in alone]).tolist()) == list(range(len(reader)))
    for workers in (1, 2):
        batches = epoch(workers)
        assert len(batches) == len(alone)
        for a, b in zip(alone, batches):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_shards_that_make_up_the_split(store, world):
    """Under DDP every rank deals itself shards of one shared permutation: every clip once per epoch."""
    reader = _reader(store, InputSpec("waveform", sample_rate=16000, seconds=0.25), cache=False, part="all")
    for epoch in (0, 1):
        per_rank = []
        for rank in range(world):
            stream = TrainStream(reader, batch_size=2, seed=7, buffer_clips=8, rank=rank, world=world)
            stream.set_epoch(epoch)
            per_rank.append(np.concatenate([p.numpy() for _, _, p in stream]))
            shards = set((reader.rows[per_rank[-1]] // reader.chunk_clips).tolist())
            assert shards == set(stream.shards().tolist())  # whole shards, this rank's alone
        together = np.concatenate(per_rank)
        assert sorted(together.tolist()) == list(range(len(reader)))  # disjoint, and the whole split
    # one rank of one is the plain stream
    plain = TrainStream(reader, batch_size=2, seed=7, buffer_clips=8)
    single = TrainStream(reader, batch_size=2, seed=7, buffer_clips=8, rank=0, world=1)
    assert [p.tolist() for _, _, p in plain] == [p.tolist() for _, _, p in single]


def test_eval_batches_hold_every_crop_of_every_clip(store):
    spec = InputSpec("waveform", sample_rate=16000, seconds=0.5)
    reader = _reader(store, spec, cache=True, part="valid")
    batches = list(eval_batches(reader, batch_clips=3))
    positions = np.concatenate([p for _, p in batches])
    assert positions.tolist() == list(range(len(reader)))
    x, first = batches[0]
    assert x.shape == (len(first) * 4, 8000)
    clip = store.read("waveform", reader.rows[first[0]]) / 32768
    for k, start in enumerate(eval_offsets(32000, 8000, 4)):
        np.testing.assert_allclose(x[k].numpy(), clip[start : start + 8000])


def test_a_missing_or_damaged_shard_is_an_error_naming_it(small_store, tmp_path):
    import shutil
    from pathlib import Path

    copy = tmp_path / "copy.zarr"
    shutil.copytree(small_store, copy)
    shards = sorted(p for p in (Path(copy) / "waveform" / "c").rglob("*") if p.is_file())
    shards[0].unlink()
    shards[1].write_bytes(shards[1].read_bytes()[:-7])  # truncated: its index no longer checks out
    store = open_store(str(copy))
    spec = InputSpec("waveform", sample_rate=16000, seconds=0.25)
    for shuffle in (False, True):
        stream = TrainStream(_reader(store, spec, cache=False, part="all"), batch_size=4, seed=0, shuffle=shuffle)
        with pytest.raises(MuzarrError, match=r"waveform/c/[01]/0|pipe verify"):
            list(stream)
