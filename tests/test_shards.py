"""pipeline.shards writes exactly the bytes zarr-python writes and reads what zarr-python wrote."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline.errors import MuzarrError
from pipeline.shards import ShardFormat, map_local, shard_path
from pipeline.store import compressor


def _array(tmp_path, *, dtype, clip_shape, n_clips=21, shard=8, chunk=2, compressors="muzarr"):
    compressors = compressor() if compressors == "muzarr" else compressors
    return zarr.create_array(
        str(tmp_path / "a.zarr"), shape=(n_clips, *clip_shape), chunks=(chunk, *clip_shape), shards=(shard, *clip_shape),
        dtype=dtype, fill_value=0, compressors=compressors, config={"write_empty_chunks": True},
    )


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-3000, 3000, size=shape).astype(dtype)
    return (rng.standard_normal(shape) * 20 - 40).astype(dtype)


@pytest.mark.parametrize(
    ("dtype", "clip_shape", "compressors"),
    [
        ("int16", (1000,), "muzarr"),
        ("float16", (6, 50), "muzarr"),
        ("float32", (3, 4, 10), "muzarr"),
        ("float32", (40,), None),
        # other blosc settings a store may carry
        ("int16", (1000,), BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")),
    ],
)
def test_encode_is_byte_identical_to_zarr_and_decode_inverts_it(tmp_path, dtype, clip_shape, compressors):
    array = _array(tmp_path, dtype=dtype, clip_shape=clip_shape, compressors=compressors)
    data = _data(array.shape, dtype)
    array[:] = data  # shards 0 and 1 whole, shard 2 the partial edge (rows 16..20)
    fmt = ShardFormat.of(array)
    assert fmt is not None and fmt.n_chunks == 4
    for shard, (start, stop) in enumerate([(0, 8), (8, 16), (16, 21)]):
        on_disk = bytes(map_local(str(tmp_path / "a.zarr" / shard_path(array, shard))))
        assert fmt.encode(data[start:stop]) == on_disk
        decoded = fmt.decode(on_disk)
        np.testing.assert_array_equal(decoded[: stop - start], data[start:stop])
        assert not decoded[stop - start :].any()  # the edge shard's rows past the array are fill


def test_zarr_reads_what_encode_wrote(tmp_path):
    array = _array(tmp_path, dtype="float16", clip_shape=(6, 50))
    data = _data(array.shape, "float16", seed=1)
    fmt = ShardFormat.of(array)
    for shard, (start, stop) in enumerate([(0, 8), (8, 16), (16, 21)]):
        (tmp_path / "a.zarr" / shard_path(array, shard)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "a.zarr" / shard_path(array, shard)).write_bytes(fmt.encode(data[start:stop]))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:], data)


def test_damaged_shards_are_errors_that_say_why(tmp_path):
    array = _array(tmp_path, dtype="int16", clip_shape=(1000,))
    array[:] = _data(array.shape, "int16")
    fmt = ShardFormat.of(array)
    blob = bytearray(map_local(str(tmp_path / "a.zarr" / shard_path(array, 0))))
    with pytest.raises(MuzarrError, match="shorter than its own index"):
        fmt.decode(blob[:10], where="a/c/0/0")
    flipped = bytearray(blob)
    flipped[-10] ^= 0xFF  # inside the index
    with pytest.raises(MuzarrError, match="crc32c"):
        fmt.decode(flipped)
    garbled = bytearray(blob)
    garbled[4:8] = (10**6).to_bytes(4, "little")  # the first chunk's blosc header claims 1 MB
    with pytest.raises(MuzarrError, match="chunk 0"):
        fmt.decode(garbled)


def test_layouts_it_does_not_handle_go_to_zarr(tmp_path):
    # Chunks split along a second axis, an unsharded array, another compressor: not ours.
    split_2d = zarr.create_array(str(tmp_path / "b.zarr"), shape=(8, 10), chunks=(2, 5), shards=(4, 10), dtype="f4")
    plain = zarr.create_array(str(tmp_path / "c.zarr"), shape=(8, 10), chunks=(2, 10), dtype="f4")
    zstd = _array(tmp_path / "d", dtype="float32", clip_shape=(10,), compressors=ZstdCodec())
    assert ShardFormat.of(split_2d) is None
    assert ShardFormat.of(plain) is None
    assert ShardFormat.of(zstd) is None
    assert ShardFormat.of(_array(tmp_path / "e", dtype="float32", clip_shape=(10,), compressors=BloscCodec(cname="zstd"))) is not None


def test_map_local_maps_the_file_and_says_none_when_it_is_missing(tmp_path):
    (tmp_path / "shard").write_bytes(b"abc")
    assert bytes(map_local(str(tmp_path / "shard"))) == b"abc"
    (tmp_path / "empty").write_bytes(b"")
    assert bytes(map_local(str(tmp_path / "empty"))) == b""
    assert map_local(str(tmp_path / "missing")) is None
