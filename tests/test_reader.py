"""pipeline.store.arrays: crops and whole rows of time-chunked arrays (store layout 2, issue #13 items 1-2),
equal to what zarr-python reads, locally and from S3 by byte ranges; damage is one line naming the shard."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import zarr

from pipeline import MuzarrError, open_store
from pipeline.store.arrays import ArrayReader

TIMED = ("waveform", "logmel/mel96_sr12000_fft512_hop256_pad37")


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    """A 12-clip demo store of 6 s clips: waveforms of 3 time chunks, log-mels of several."""
    from pipeline.build import build
    from pipeline.config import apply_overrides, config_for, load_catalog

    config = apply_overrides(
        config_for("demo", load_catalog()["demo"]),
        settings={"options.n_clips": 12, "options.seconds": 6.0, "clip.seconds": 6.0, "batch_clips": 4},
    )
    root = tmp_path_factory.mktemp("reader")
    out = root / "demo.zarr"
    assert build(config, source=str(root / "audio"), out=str(out), workers=1, progress=False).n_failed == 0
    return str(out)


def test_waveforms_and_logmels_are_time_chunked_with_a_crc32c_per_chunk(store_url):
    store = open_store(store_url)
    assert store.arrays["waveform"].chunks == (1, 32000) and store.arrays["waveform"].shards == (4, 96000)
    for name in TIMED:
        array = store.array(name)
        inner = [codec["name"] for codec in array.metadata.to_dict()["codecs"][0]["configuration"]["codecs"]]
        assert inner == ["bytes", "crc32c"]  # stored raw: a crop is a copy, nothing to decode
        assert array.chunks[-1] < array.shape[-1]


@pytest.mark.parametrize("name", TIMED)
def test_crops_and_rows_equal_zarr_python(store_url, name):
    store = open_store(store_url)
    reference = zarr.open_array(f"{store_url}/{name}", mode="r")[:]
    reader = ArrayReader(store, name)
    total = reference.shape[-1]
    length = total // 3 + 7  # crosses chunk boundaries
    rng = np.random.default_rng(0)
    rows = rng.integers(0, store.n_clips, size=20)
    starts = rng.integers(0, total - length + 1, size=20)
    starts[:2] = 0, total - length  # the first and the last sample of a clip
    crops = reader.crops(rows, starts, length)
    assert crops.shape == (20, *reference.shape[1:-1], length)
    for crop, row, start in zip(crops, rows, starts):
        np.testing.assert_array_equal(crop, reference[row, ..., start : start + length])
    np.testing.assert_array_equal(reader.rows([0, 5, 11]), reference[[0, 5, 11]])
    # an array without a clip axis (whole tracks) takes absolute windows along its last axis
    flat = ArrayReader(store, name, clip_axis=False)
    np.testing.assert_array_equal(flat.crops(None, [3, total - 9], 9)[1], reference[..., total - 9 :])


def test_bad_windows_and_rows_are_one_line(store_url):
    reader = ArrayReader(open_store(store_url), "waveform")
    with pytest.raises(MuzarrError) as caught:
        reader.crops([0], [95000], 2000)
    assert str(caught.value) == f"store {store_url}: waveform: a crop of 2000 from 95000 reaches past its 96000 along time"
    with pytest.raises(MuzarrError, match=r"^store .*: waveform has rows 0\.\.11; asked for row 12$"):
        reader.rows([12])


def test_a_truncated_shard_is_one_line_naming_it(store_url, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store_url, copy)
    path = copy / "waveform" / "c" / "1" / "0"
    path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(MuzarrError) as caught:
        ArrayReader(open_store(str(copy)), "waveform").crops([5], [0], 100)
    assert str(caught.value) == (
        f"store {copy}: waveform/c/1/0: the shard index fails its crc32c check (a damaged or truncated file): "
        f"run `pipe verify {copy}`"
    )


def test_a_reader_keeps_its_last_shards_mapped_until_closed(store_url, tmp_path, monkeypatch):
    """Kept mappings (no page faults on later reads) read the file they mapped; close() forgets them."""
    from pipeline.store import arrays

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store_url, copy)
    reference = zarr.open_array(f"{copy}/waveform", mode="r")[:]
    monkeypatch.setattr(arrays, "MAPPED_SHARDS", 2)
    reader = ArrayReader(open_store(str(copy)), "waveform")

    def replace_shard_0_with_a_damaged_copy():  # as muzarr rewrites a shard: a new file renamed over it
        path = copy / "waveform" / "c" / "0" / "0"
        data = bytearray(path.read_bytes())
        data[1000] ^= 0xFF
        (path.parent / "new").write_bytes(data)
        os.replace(path.parent / "new", path)

    np.testing.assert_array_equal(reader.crops([1], [100], 50000)[0], reference[1, 100:50100])
    replace_shard_0_with_a_damaged_copy()
    np.testing.assert_array_equal(reader.crops([2], [0], 40000)[0], reference[2, :40000])  # still mapped
    reader.close()
    with pytest.raises(MuzarrError, match=r"waveform/c/0/0: chunk 0,0 fails its crc32c check"):
        reader.crops([0], [0], 100)
    # only the last MAPPED_SHARDS shards stay mapped: shard 0, read before shards 1 and 2, is mapped anew
    shutil.rmtree(copy)
    shutil.copytree(store_url, copy)
    reader = ArrayReader(open_store(str(copy)), "waveform")
    reader.crops([0], [0], 10)
    reader.crops([4, 8], [0, 0], 10)  # shards 1 and 2 push shard 0 out
    replace_shard_0_with_a_damaged_copy()
    with pytest.raises(MuzarrError, match=r"waveform/c/0/0: chunk 0,0 fails its crc32c check"):
        reader.crops([0], [0], 100)


def test_crops_from_s3_read_byte_ranges_and_equal_local_ones(store_url):
    """A moto S3 server: the index and only the chunks a crop needs are fetched."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir("reader")
        fs.put(store_url, "reader/demo.zarr", recursive=True)
        remote, local = open_store("s3://reader/demo.zarr"), open_store(store_url)
        for name in TIMED:
            total = local.arrays[name].shape[-1]
            rows, starts = [1, 6, 6, 11], [0, 3, total // 2, total - 40]
            np.testing.assert_array_equal(
                ArrayReader(remote, name).crops(rows, starts, 40), ArrayReader(local, name).crops(rows, starts, 40)
            )
            np.testing.assert_array_equal(ArrayReader(remote, name).rows([2, 9]), ArrayReader(local, name).rows([2, 9]))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
