"""pipeline.store.shards writes exactly the bytes zarr-python writes and reads what zarr-python wrote."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from pipeline.errors import MuzarrError
from pipeline.store.layout import compressor, time_chunk
from pipeline.store.shards import ShardFormat, map_local, morton_order, shard_path


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
    # An unsharded array, another compressor, an index at the start: not ours.
    plain = zarr.create_array(str(tmp_path / "c.zarr"), shape=(8, 10), chunks=(2, 10), dtype="f4")
    zstd = _array(tmp_path / "d", dtype="float32", clip_shape=(10,), compressors=ZstdCodec())
    assert ShardFormat.of(plain) is None
    assert ShardFormat.of(zstd) is None
    assert ShardFormat.of(_array(tmp_path / "e", dtype="float32", clip_shape=(10,), compressors=BloscCodec(cname="zstd"))) is not None
    split_2d = zarr.create_array(str(tmp_path / "b.zarr"), shape=(8, 10), chunks=(2, 5), shards=(4, 10), dtype="f4", compressors=None)
    assert ShardFormat.of(split_2d).grid == (2, 2)


# (array shape, chunks, shards): time-chunked waveforms and log-mels (store layout 2) with partial edge
# shards along the clip axis, shard grids padded past the array's time extent, and 3-d chunk grids.
GRIDS = [
    ((21, 1000), (1, 250), (8, 1000)),
    ((21, 1000), (1, 300), (8, 1200)),  # the shard grid reaches past the clips' 1000 samples
    ((5, 6, 50), (1, 6, 10), (4, 6, 50)),
    ((5, 6, 50), (1, 3, 16), (2, 6, 64)),
    ((7, 3, 4, 10), (1, 1, 4, 5), (4, 3, 4, 10)),  # sub-clips
    ((3, 17), (1, 17), (2, 17)),  # clip-chunks, as tabular arrays keep
]


@pytest.mark.parametrize(("shape", "chunks", "shards"), GRIDS)
@pytest.mark.parametrize(
    ("dtype", "compressors"),
    [("int16", [Crc32cCodec()]), ("float16", [compressor(), Crc32cCodec()]), ("float32", None), ("int16", [compressor()])],
)
def test_nd_chunk_grids_are_byte_identical_to_zarr(tmp_path, shape, chunks, shards, dtype, compressors):
    array = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=shape, chunks=chunks, shards=shards, dtype=dtype, fill_value=0,
        compressors=compressors, config={"write_empty_chunks": True},
    )
    data = _data(shape, dtype, seed=3)
    array[:] = data
    fmt = ShardFormat.of(array)
    assert fmt is not None and fmt.checksum == (compressors is not None and isinstance(compressors[-1], Crc32cCodec))
    grid = [-(-n // s) for n, s in zip(shape, shards)]
    for coords in np.ndindex(*grid):
        region = tuple(slice(i * s, min(n, (i + 1) * s)) for i, s, n in zip(coords, shards, shape))
        on_disk = bytes(map_local(str(tmp_path / "a.zarr" / shard_path(array, coords))))
        assert fmt.encode(data[region]) == on_disk, coords
        decoded = fmt.decode(on_disk)
        inside = tuple(slice(0, r.stop - r.start) for r in region)
        np.testing.assert_array_equal(decoded[inside], data[region])
    # and zarr reads what encode wrote
    other = zarr.create_array(
        str(tmp_path / "b.zarr"), shape=shape, chunks=chunks, shards=shards, dtype=dtype, fill_value=0,
        compressors=compressors, config={"write_empty_chunks": True},
    )
    for coords in np.ndindex(*grid):
        region = tuple(slice(i * s, min(n, (i + 1) * s)) for i, s, n in zip(coords, shards, shape))
        path = tmp_path / "b.zarr" / shard_path(other, coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fmt.encode(data[region]))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "b.zarr"), mode="r")[:], data)


def test_morton_order_is_zarrs():
    from zarr.core.indexing import morton_order_iter

    for grid in [(16, 16), (8, 7), (1, 16), (4, 1, 3), (3, 5, 6), (2,)]:
        assert list(morton_order(grid)) == [tuple(int(i) for i in c) for c in morton_order_iter(grid)]


def test_a_chunk_with_damaged_bytes_fails_its_crc32c(tmp_path):
    array = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=(2, 100), chunks=(1, 25), shards=(2, 100), dtype="int16", fill_value=0,
        compressors=[Crc32cCodec()], config={"write_empty_chunks": True},
    )
    array[:] = _data((2, 100), "int16")
    fmt = ShardFormat.of(array)
    blob = bytearray(map_local(str(tmp_path / "a.zarr" / shard_path(array, 0))))
    offset = int(fmt.index_of(bytes(blob))[1, 2, 0])
    blob[offset + 3] ^= 0x01
    with pytest.raises(MuzarrError, match=r"^waveform/c/0/0: chunk 1,2 fails its crc32c check \(damaged bytes\)$"):
        fmt.decode(bytes(blob), where="waveform/c/0/0")


@pytest.mark.parametrize(
    ("length", "rate", "expected"),
    [
        (465920, 16000, 33280),  # MTAT at 16 kHz: 14 chunks of 2.08 s
        (1440, 12000 / 256, 96),  # MTAT log-mels (hop 256 at 12 kHz): 15 chunks of 2.05 s
        (32000, 16000, 32000),  # a 2 s clip is one chunk
        (None, 16000, 32768),  # tracks of any length: a power of two near the target
        (1000003, 16000, 32768),  # a prime length: no divisor near the target, the shard grid is padded
    ],
)
def test_time_chunk(length, rate, expected):
    assert time_chunk(length, rate=rate) == expected

def test_map_local_maps_the_file_and_says_none_when_it_is_missing(tmp_path):
    (tmp_path / "shard").write_bytes(b"abc")
    assert bytes(map_local(str(tmp_path / "shard"))) == b"abc"
    (tmp_path / "empty").write_bytes(b"")
    assert bytes(map_local(str(tmp_path / "empty"))) == b""
    assert map_local(str(tmp_path / "missing")) is None
