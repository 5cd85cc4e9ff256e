"""Zarr clients that are not muzarr read a store right: xarray, zarr-python, tensorstore, pyarrow.

Two real stores: the demo (two log-mel variants of different sizes in one group, a tabular
set, no failures) and the GTZAN fixture, whose ``jazz.00054`` is not a WAV file and fails. The
``test_readme_*`` tests run the code blocks of the README's "Read a store without muzarr" section
as they are written there, with warnings as errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
ts = pytest.importorskip("tensorstore")
pds = pytest.importorskip("pyarrow.dataset")

import zarr

from pipeline import open_store
from pipeline.store.layout import clip_digests, dimension_names, fill_value

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory) -> str:
    """12 demo clips: waveform, log-mels of 64 and 96 bands (group ``logmel``), gtzan57 (group ``tabular``)."""
    root = tmp_path_factory.mktemp("clients_demo")
    out = root / "demo.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "build", "demo", "--source", str(root / "audio"), "--out", str(out),
         "--set", "options.n_clips=12", "--set", "batch_clips=4", "--tabular", "gtzan57", "--workers", "1"],
        check=False, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return str(out)


@pytest.fixture(scope="module")
def gtzan_url(gtzan_cli_build) -> str:
    result, out = gtzan_cli_build
    assert result.returncode == 1, result.stderr[-2000:]  # complete, one clip failed
    return str(out)


@pytest.fixture(params=["demo", "gtzan"])
def url(request) -> str:
    return request.getfixturevalue(f"{request.param}_url")


def groups(url: str) -> dict[str | None, list[str]]:
    """Group (None: the root) → names of its arrays in the store, as muzarr names them."""
    found: dict[str | None, list[str]] = {None: ["status"]}
    for name in open_store(url).arrays:
        group, _, _ = name.rpartition("/")
        found.setdefault(group or None, []).append(name)
    return found


def test_xarray_opens_every_group_with_no_options_and_no_warning(url):
    found = groups(url)
    assert set(found) == {None, "logmel", "tabular"}
    for group, names in found.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback from consolidated metadata, no listing of tables/ or _muzarr/
            ds = xr.open_zarr(url, group=group)
        # the consolidated metadata of the root's zarr.json says what each array's own zarr.json says
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # listing the store warns about tables/ and _muzarr/
            xr.testing.assert_identical(ds, xr.open_zarr(url, group=group, consolidated=False))
        assert sorted(ds.data_vars) == sorted(name.rpartition("/")[2] for name in names)
        for name in names:
            array = zarr.open_array(f"{url}/{name}", mode="r")
            variable = ds[name.rpartition("/")[2]]
            assert variable.dims == tuple(array.metadata.dimension_names)
            assert variable.dims[0] == "clip" and variable.shape == array.shape


def test_two_logmel_variants_of_different_sizes_share_only_the_clip_dimension(demo_url):
    ds = xr.open_zarr(demo_url, group="logmel")
    assert dict(ds.sizes) == {
        "clip": 12,
        "mel_mel64_sr16000_fft1024_hop512": 64, "frame_mel64_sr16000_fft1024_hop512": 126,
        "mel_mel96_sr12000_fft512_hop256_pad37": 96, "frame_mel96_sr12000_fft512_hop256_pad37": 262,
    }  # fmt: skip


def test_every_variable_equals_muzarrs_reader_on_ok_rows(url):
    store = open_store(url)
    ok = np.flatnonzero(store.ok)
    for group, names in groups(url).items():
        ds = xr.open_zarr(url, group=group)
        for name in names:
            values = ds[name.rpartition("/")[2]].values
            stored = store.status if name == "status" else store.read(name, ok)
            if name == "waveform":  # int16 decoded by its CF scale_factor
                assert values.dtype == np.float64 and np.abs(values).max() <= 1.0
                np.testing.assert_array_equal(values[ok], stored / 32768)
            elif name == "status":
                np.testing.assert_array_equal(values, stored)
            else:
                assert values.dtype == stored.dtype
                np.testing.assert_array_equal(values[ok], stored)


def test_array_attributes_say_what_each_axis_is_and_where_status_is(url):
    store = open_store(url)
    sub_clips = store.n_subclips
    for name in store.arrays:
        array = zarr.open_array(f"{url}/{name}", mode="r")
        attrs = array.attrs.asdict()
        axes = {"waveform": ["time"], "logmel": ["mel", "frame"], "tabular": ["column"]}[name.partition("/")[0]]
        assert attrs["axes"] == ["clip", *(["subclip"] if sub_clips else []), *axes]
        assert len(attrs["axes"]) == array.ndim
        assert tuple(array.metadata.dimension_names) == dimension_names(name.rpartition("/")[2], attrs["axes"])
        assert (attrs["status"], attrs["ancillary_variables"]) == ("status", "status")
        if array.dtype.kind == "f":
            assert np.isnan(array.metadata.fill_value)
        if array.dtype == np.int16:
            assert attrs["scale_factor"] == attrs["scale"] == 1 / 32768
    status = zarr.open_array(f"{url}/status", mode="r").attrs.asdict()
    assert (status["flag_values"], status["flag_meanings"]) == ([0, 1, 2], "pending ok failed")


def test_failed_clip_is_nan_in_float_arrays_and_zero_in_int16(gtzan_url):
    store = open_store(gtzan_url)
    failed = int(np.flatnonzero(store.clips["clip_id"] == "jazz.00054")[0])
    assert store.status[failed] == 2 and store.status.tolist().count(1) == 5
    for group, names in groups(gtzan_url).items():
        ds = xr.open_zarr(gtzan_url, group=group)
        for name in names:
            if name == "status":
                continue
            raw = zarr.open_array(f"{gtzan_url}/{name}", mode="r")[failed]
            shown = ds[name.rpartition("/")[2]].values[failed]
            if raw.dtype == np.int16:  # no spare value: a failed row holds 0, xarray shows 0.0
                assert not raw.any() and not shown.any()
            else:
                assert np.isnan(raw).all() and np.isnan(shown).all()
            # the per-clip digest in tables/checksums.parquet is over those stored bytes
            assert store.stored_digests(name)[failed] == clip_digests(raw[None])[0]
    verify = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "verify", gtzan_url], check=False, capture_output=True, text=True
    )
    assert verify.returncode == 0 and verify.stdout.startswith(f"{gtzan_url}: clean: 3 arrays x 6 clips"), verify.stdout


def test_rows_no_build_wrote_read_as_nan(tmp_path):
    from pipeline.config import config_for, load_catalog
    from pipeline.store.layout import create_arrays, plan_layout
    from pipeline.store.location import location

    config = config_for("demo", load_catalog()["demo"])
    layouts = plan_layout(config, 8)
    create_arrays(location(tmp_path / "s.zarr"), layouts, 8, 4)
    for layout in layouts:
        values = zarr.open_array(str(tmp_path / "s.zarr" / layout.name), mode="r")[:]
        assert (np.isnan(values).all() if values.dtype.kind == "f" else not values.any()), layout.name
        assert layout.dimension_names[0] == "clip"
    assert np.isnan(fill_value("float16")) and fill_value("int16") == 0


def test_axes_have_a_subclip_axis_only_when_the_clip_policy_splits():
    from pipeline.config import apply_overrides, config_for, load_catalog
    from pipeline.store.layout import plan_layout

    config = config_for("gtzan", load_catalog()["gtzan"])
    split = apply_overrides(config, settings={"clip.mode": "split", "clip.seconds": 3.0, "clip.total_seconds": 30.0})
    for chosen, sub in ((config, []), (split, ["subclip"])):
        axes = {layout.name: layout.attrs["axes"] for layout in plan_layout(chosen, 4)}
        assert axes == {
            "waveform": ["clip", *sub, "time"],
            "logmel/mel128_sr22050_fft2048_hop512": ["clip", *sub, "mel", "frame"],
            "tabular/gtzan57": ["clip", *sub, "column"],
        }
    dims = {layout.name: layout.dimension_names for layout in plan_layout(split, 4)}
    assert dims["tabular/gtzan57"] == ("clip", "subclip", "column_gtzan57")
    assert dims["waveform"] == ("clip", "subclip", "time_waveform")


def test_tensorstore_and_zarr_python_read_what_xarray_and_muzarr_read(url):
    store = open_store(url)
    ok = np.flatnonzero(store.ok)
    for name in ["status", *store.arrays]:
        opened = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{url}/{name}"}}).result()
        by_tensorstore = opened.read().result()
        by_zarr = zarr.open_array(f"{url}/{name}", mode="r")[:]
        np.testing.assert_array_equal(by_tensorstore, by_zarr)  # NaN rows equal NaN rows
        assert tuple(opened.domain.labels) == tuple(zarr.open_array(f"{url}/{name}", mode="r").metadata.dimension_names)
        np.testing.assert_array_equal(by_zarr[ok], store.status[ok] if name == "status" else store.read(name, ok))


README = ROOT / "README.md"
#: the log-mel the README's snippets read in each store (the demo's is set in the README itself)
VARIANTS = {"demo": "mel96_sr12000_fft512_hop256_pad37", "gtzan": "mel128_sr22050_fft2048_hop512"}


def readme_snippets() -> dict[str, str]:
    """The code blocks of the README's "Read a store without muzarr" section: reader → code, ``setup`` first."""
    text = README.read_text()
    section = text[text.index("### Read a store without muzarr"):]
    section = section[: section.index("\n### ")]
    blocks = re.findall(r"(?:\*\*([\w-]+)\*\*:\n\n)?```python\n(.*?)```", section, flags=re.DOTALL)
    return {name or "setup": code for name, code in blocks}


@pytest.fixture(params=["demo", "gtzan"])
def readme_store(request) -> tuple[str, str]:
    """``(kind, url)``: the demo store (named ``demo.zarr``, as ``pipe build demo`` names it) and GTZAN's."""
    return request.param, request.getfixturevalue(f"{request.param}_url")


def run_readme(kind: str, url: str, names: list[str]) -> dict:
    """Run the README's blocks ``names`` as they are written, warnings as errors; returns their variables.

    On the demo store they run from its folder after the README's own ``setup`` block; on another
    store ``url`` and ``variant`` are set as the README says to.
    """
    snippets = readme_snippets()
    namespace: dict = {} if kind == "demo" else {"url": url, "variant": VARIANTS[kind]}
    here = os.getcwd()
    os.chdir(Path(url).parent)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for name in (["setup"] if kind == "demo" else []) + names:
                exec(compile(snippets[name], f"README.md ({name})", "exec"), namespace)  # noqa: S102 - the README's code, run as it is written
    finally:
        os.chdir(here)
    assert namespace["variant"] == VARIANTS[kind]
    return namespace


def test_the_readme_section_has_a_setup_and_four_readers():
    assert list(readme_snippets()) == ["setup", "xarray", "zarr-python", "tensorstore", "pandas"]
    assert 'url = "demo.zarr"' in readme_snippets()["setup"]


def test_readme_xarray(readme_store):
    kind, url = readme_store
    found = run_readme(kind, url, ["xarray"])
    store, variant = open_store(url), found["variant"]
    ok = np.flatnonzero(store.ok)
    expected = store.read(f"logmel/{variant}", ok).astype(np.float64).mean()
    assert found["mean"] == pytest.approx(expected, rel=1e-12)
    audio = found["audio"].values
    assert audio.dtype == np.float32
    assert np.isnan(np.delete(audio, ok, axis=0)).all() and not np.isnan(audio[ok]).any()
    np.testing.assert_array_equal(audio[ok], store.read("waveform", ok) / np.float32(32768))
    failed = np.flatnonzero(store.status == 2).tolist()
    assert failed == {"demo": [], "gtzan": [4]}[kind]


def test_readme_zarr_python(readme_store):
    kind, url = readme_store
    found = run_readme(kind, url, ["zarr-python"])
    store = open_store(url)
    np.testing.assert_array_equal(found["audio"], store.read("waveform", np.flatnonzero(store.ok)) / 32768)


def test_readme_tensorstore(readme_store):
    kind, url = readme_store
    found = run_readme(kind, url, ["tensorstore"])
    variant = found["variant"]
    assert found["mel"].domain.labels == ("clip", f"mel_{variant}", f"frame_{variant}")
    np.testing.assert_array_equal(found["first"], open_store(url).read(f"logmel/{variant}", 0))


def test_readme_pandas(readme_store):
    kind, url = readme_store
    found = run_readme(kind, url, ["pandas"])
    expected = {"demo": [], "gtzan": [{
        "clip_id": "jazz.00054", "stage": "decode",
        "error": "soundfile: Format not recognised; PyAV: Invalid data found when processing input",
    }]}[kind]  # fmt: skip
    assert found["failed"].to_dict("records") == expected
    assert found["labels"]["clip_id"].tolist() == found["clips"]["clip_id"].tolist() == open_store(url).clips["clip_id"].tolist()


def test_pyarrow_dataset_over_two_stores_clips_tables(demo_url, gtzan_url):
    # The demo has no failure (its stage, error and note columns hold no value), GTZAN has one.
    for first, second in ((demo_url, gtzan_url), (gtzan_url, demo_url)):
        table = pds.dataset([f"{first}/tables/clips.parquet", f"{second}/tables/clips.parquet"]).to_table()
        assert table.num_rows == 18
        errors = [e for e in table.column("error").to_pylist() if e is not None]
        assert errors == ["soundfile: Format not recognised; PyAV: Invalid data found when processing input"]
    for url in (demo_url, gtzan_url):
        for name in ("clips", "labels", "splits", "checksums"):
            schema = pds.dataset(f"{url}/tables/{name}.parquet").schema
            assert not [field.name for field in schema if str(field.type) == "null"], (url, name)
