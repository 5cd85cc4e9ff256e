"""Downloads against a real HTTP server on 127.0.0.1 (Range support, dropped connections); archives."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers_servers import Server

from pipeline.download import download, download_dataset, extract
from pipeline.errors import MuzarrError

CHUNK = 4096


@pytest.fixture()
def server():
    running = Server()
    yield running
    running.close()


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- download


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_full_download_with_checksum(server, tmp_path, algorithm):
    data = payload(300_000)
    url = server.add("data.bin", data)
    digest = hashlib.new(algorithm, data).hexdigest()
    dest = download(url, tmp_path / "sub" / "data.bin", chunk_size=CHUNK, progress=False, **{algorithm: digest})
    assert dest == tmp_path / "sub" / "data.bin"
    assert dest.read_bytes() == data
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    assert server.log == [("/data.bin", None)]


def test_interrupted_download_resumes_on_the_next_call(server, tmp_path):
    data = payload(300_000, seed=1)
    url = server.add("big.bin", data)
    server.drop_after["/big.bin"] = 24 * CHUNK
    dest = tmp_path / "big.bin"
    with pytest.raises(MuzarrError, match=r"download of .*/big.bin interrupted .*; 98304 bytes kept in .*big.bin.part: "
                                          r"run the same command again to resume"):
        download(url, dest, sha256=sha256(data), chunk_size=CHUNK, progress=False, retries=0)
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").read_bytes() == data[:98_304]
    download(url, dest, sha256=sha256(data), chunk_size=CHUNK, progress=False, retries=0)
    assert dest.read_bytes() == data
    assert server.log == [("/big.bin", None), ("/big.bin", "bytes=98304-")]


def test_interrupted_download_resumes_within_one_call(server, tmp_path):
    data = payload(200_000, seed=2)
    url = server.add("big.bin", data)
    server.drop_after["/big.bin"] = 10 * CHUNK
    download(url, tmp_path / "big.bin", md5=hashlib.md5(data).hexdigest(), chunk_size=CHUNK, progress=False)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert server.log == [("/big.bin", None), ("/big.bin", "bytes=40960-")]


def test_server_ignoring_range_starts_over(server, tmp_path):
    data = payload(50_000, seed=3)
    url = server.add("x.bin", data)
    server.ignore_range.add("/x.bin")
    (tmp_path / "x.bin.part").write_bytes(b"stale bytes from another file")
    download(url, tmp_path / "x.bin", sha256=sha256(data), chunk_size=CHUNK, progress=False)
    assert (tmp_path / "x.bin").read_bytes() == data
    assert server.log == [("/x.bin", "bytes=29-")]


def test_complete_part_is_finished_without_a_body(server, tmp_path):
    data = payload(10_000, seed=4)
    url = server.add("x.bin", data)
    (tmp_path / "x.bin.part").write_bytes(data)
    download(url, tmp_path / "x.bin", sha256=sha256(data), progress=False)
    assert (tmp_path / "x.bin").read_bytes() == data
    assert server.log == [("/x.bin", "bytes=10000-")]


def test_checksum_mismatch_removes_the_bad_part(server, tmp_path):
    data = payload(20_000, seed=5)
    url = server.add("x.bin", data)
    wrong = "0" * 64
    with pytest.raises(MuzarrError, match=rf"checksum mismatch for {url}: expected sha256 {wrong}, got {sha256(data)}; "
                                          r"the bad download was removed"):
        download(url, tmp_path / "x.bin", sha256=wrong, progress=False)
    assert sorted(os.listdir(tmp_path)) == []


def test_existing_file_is_verified_and_never_deleted(server, tmp_path):
    data = payload(1_000, seed=6)
    url = server.add("x.bin", data)
    mine = tmp_path / "x.bin"
    mine.write_bytes(b"the user's own file")
    theirs = sha256(b"the user's own file")
    with pytest.raises(MuzarrError, match=rf"x.bin exists but its sha256 is {theirs}, "
                                          rf"expected {sha256(data)}: it was left untouched"):
        download(url, mine, sha256=sha256(data), progress=False)
    assert mine.read_bytes() == b"the user's own file"
    mine.write_bytes(data)
    assert download(url, mine, sha256=sha256(data), progress=False) == mine
    assert server.log == []


def test_http_error(server, tmp_path):
    with pytest.raises(MuzarrError, match=r"download of .*/missing.zip failed: HTTP 404"):
        download(f"{server.url}/missing.zip", tmp_path / "missing.zip", progress=False)
    assert not (tmp_path / "missing.zip").exists()


def test_bad_checksum_argument(tmp_path):
    with pytest.raises(MuzarrError, match=r"md5='abc' is not a md5 hex digest \(32 hex digits\)"):
        download("http://127.0.0.1:9/x", tmp_path / "x", md5="abc", progress=False)


def test_progress_bar_reports_bytes(server, tmp_path, capsys):
    url = server.add("x.bin", payload(5_000))
    download(url, tmp_path / "x.bin", progress=True)
    assert "x.bin" in capsys.readouterr().err


# ----------------------------------------------------------------------------- extract


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def make_tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            bundle.addfile(info)
    return buffer.getvalue()


def test_extract_zip_once(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"0/a.mp3": b"aa", "f/b.mp3": b"bbb"}))
    out = extract(archive, tmp_path / "out")
    assert (out / "0" / "a.mp3").read_bytes() == b"aa"
    assert (out / "f" / "b.mp3").read_bytes() == b"bbb"
    assert (out / ".a.zip.extracted").exists()
    (out / "0" / "a.mp3").unlink()
    extract(archive, tmp_path / "out")  # marker: nothing extracted again
    assert not (out / "0" / "a.mp3").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil-absolute.txt"])
def test_extract_zip_refuses_traversal(tmp_path, name):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(make_zip({"fine.txt": b"x", name: b"evil"}))
    with pytest.raises(MuzarrError, match=rf"holds member '{name}' that would be written outside .*out: "
                                          r"refusing to extract an unsafe archive \(nothing was extracted\)"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert os.listdir(tmp_path / "out") == []


def test_extract_tar_gz(tmp_path):
    archive = tmp_path / "genres.tar.gz"
    members, links = {"genres/rock/rock.00000.au": b"au"}, {"genres/latest.au": "rock/rock.00000.au"}
    archive.write_bytes(make_tar(members, links))
    out = extract(archive, tmp_path / "out")
    assert (out / "genres" / "rock" / "rock.00000.au").read_bytes() == b"au"
    assert (out / "genres" / "latest.au").read_bytes() == b"au"


@pytest.mark.parametrize("members, links", [
    ({"../evil.txt": b"x"}, {}),
    ({"a.txt": b"x"}, {"link": "../../etc/passwd"}),
    ({"a.txt": b"x"}, {"link": "/etc/passwd"}),
])
def test_extract_tar_refuses_traversal(tmp_path, members, links):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(make_tar(members, links))
    with pytest.raises(MuzarrError, match=r"would be written outside .*out: refusing to extract an unsafe archive"):
        extract(archive, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


def test_extract_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"<html>not found</html>")
    with pytest.raises(MuzarrError, match=r"x.zip is neither a zip nor a tar archive"):
        extract(tmp_path / "x.zip", tmp_path / "out")


# ----------------------------------------------------------------------------- download_dataset


def test_download_dataset_concatenates_split_zip(server, tmp_path):
    archive = make_zip({f"{folder}/clip-{i}.mp3": payload(2_000, seed=i) for i, folder in enumerate("0c")} |
                       {"f/x.mp3": b""})
    thirds = [archive[: len(archive) // 3], archive[len(archive) // 3 : 2 * len(archive) // 3],
              archive[2 * len(archive) // 3 :]]
    sources = [{"url": server.add(f"mp3.zip.00{i + 1}", part), "md5": hashlib.md5(part).hexdigest(),
                "extract": True, "concat": "mp3.zip"} for i, part in enumerate(thirds)]
    notes = b'"clip_id"\t"guitar"\t"mp3_path"\n'
    sources.append({"url": server.add("annotations_final.csv", notes), "sha256": sha256(notes)})
    to = download_dataset("mtat", tmp_path / "mtat", sources=sources, progress=False)
    assert to == tmp_path / "mtat"
    assert (to / "0" / "clip-0.mp3").read_bytes() == payload(2_000, seed=0)
    assert (to / "c" / "clip-1.mp3").read_bytes() == payload(2_000, seed=1)
    assert (to / "f" / "x.mp3").read_bytes() == b""
    assert (to / "annotations_final.csv").read_bytes() == notes
    assert not (to / "mp3.zip").exists()
    assert sorted(p.name for p in to.glob("mp3.zip.*")) == ["mp3.zip.001", "mp3.zip.002", "mp3.zip.003"]
    assert len(server.log) == 4
    download_dataset("mtat", to, sources=sources, progress=False)  # all there: nothing fetched again
    assert len(server.log) == 4
    for part in to.glob("mp3.zip.*"):
        part.unlink()  # the user frees the space: already extracted, so still nothing to fetch
    download_dataset("mtat", to, sources=sources, progress=False)
    assert len(server.log) == 4
    assert (to / "0" / "clip-0.mp3").exists()


def test_download_dataset_extracts_a_plain_archive(server, tmp_path):
    data = make_zip({"fma_small/000/000010.mp3": b"mp3"})
    sources = [{"url": server.add("fma_small.zip", data), "sha1": hashlib.sha1(data).hexdigest(), "extract": True}]
    to = download_dataset("fma_small", tmp_path, sources=sources, progress=False)
    assert (to / "fma_small" / "000" / "000010.mp3").read_bytes() == b"mp3"
    assert (to / "fma_small.zip").exists()


def test_download_dataset_concat_without_extract(server, tmp_path):
    sources = [{"url": server.add(f"p{i}", part), "concat": "joined.bin"} for i, part in enumerate([b"ab", b"cd"])]
    download_dataset("x", tmp_path, sources=sources, progress=False)
    assert (tmp_path / "joined.bin").read_bytes() == b"abcd"


@pytest.mark.parametrize("sources, message", [
    ([], r"dataset 'x' has no download sources in the catalog"),
    ([{"href": "http://a/b"}], r"download source 1 of 'x' is .*: expected a mapping with a url"),
    ([{"url": "http://a/b", "sha512": "0"}], r"download source 1 of 'x' has unknown key\(s\) \['sha512'\]"),
    ([{"url": "http://a/"}], r"cannot name the file of 'http://a/': add filename: <name> to the source"),
    ([{"url": "http://a/b", "sha1": "xyz"}], r"sha1='xyz' is not a sha1 hex digest \(40 hex digits\)"),
])
def test_download_dataset_bad_sources(tmp_path, sources, message):
    with pytest.raises(MuzarrError, match=message):
        download_dataset("x", tmp_path, sources=sources, progress=False)


def test_download_dataset_bad_concat_name(server, tmp_path):
    sources = [{"url": server.add("p", b"x"), "concat": "../escape.zip", "extract": True}]
    with pytest.raises(MuzarrError, match=r"source 1 of 'x': concat='../escape.zip' must be a plain file name"):
        download_dataset("x", tmp_path / "d", sources=sources, progress=False)
    assert not (tmp_path / "d").exists()
    assert server.log == []


def test_unreachable_server_and_bad_url(tmp_path):
    with pytest.raises(MuzarrError, match=r"download of http://127.0.0.1:9/x failed \(.*\): check the network"):
        download("http://127.0.0.1:9/x", tmp_path / "x", progress=False, retries=0)
    with pytest.raises(MuzarrError, match=r"cannot download 'mirg.city.ac.uk/x.zip': "):
        download("mirg.city.ac.uk/x.zip", tmp_path / "x", progress=False)


# ----------------------------------------------------------------------------- pipe download
def test_pipe_download_command_end_to_end(server, tmp_path):
    """`pipe download NAME --to DIR` reads the sources from the catalog, verifies and extracts."""
    import subprocess
    import sys
    import zipfile

    import yaml

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("genres/blues/blues.00000.wav", b"RIFF fake")
    data = archive.getvalue()
    url = server.add("set.zip", data)
    catalog = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "catalog.yaml"))
    catalog["datasets"]["gtzan"]["download"] = [{"url": url, "sha256": sha256(data), "extract": True}]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))

    def pipe(*args):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True)

    done = pipe("download", "gtzan", "--to", str(tmp_path / "gtzan"), "--catalog", str(path), "--quiet")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "gtzan" / "genres" / "blues" / "blues.00000.wav").read_bytes() == b"RIFF fake"
    assert "pipe build gtzan --source" in done.stdout

    catalog["datasets"]["gtzan"]["download"][0]["sha256"] = "0" * 64
    path.write_text(yaml.safe_dump(catalog))
    refused = pipe("download", "gtzan", "--to", str(tmp_path / "other"), "--catalog", str(path), "--quiet")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "sha256" in refused.stderr.lower() or "checksum" in refused.stderr.lower()

    nothing = pipe("download", "demo", "--to", str(tmp_path / "d"), "--catalog", str(path))
    assert nothing.returncode == 2 and "no public archive" in nothing.stderr
