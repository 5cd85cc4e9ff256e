"""Fetch dataset archives: resumable HTTP downloads, checksums, safe extraction.

``download`` writes to ``<dest>.part`` and renames it only once the checksum matches, so an
interrupted run resumes where it stopped (HTTP ``Range``) and a file named ``dest`` is always
complete. ``extract`` refuses archives with members that would land outside the target
folder. ``download_dataset`` runs a catalog's ``download:`` list, concatenating split
archives (MTAT's ``mp3.zip.001..003``) before extracting them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import requests
from tqdm import tqdm

from pipeline.errors import MuzarrError

TIMEOUT = (15, 60)  # seconds to connect, seconds between two received bytes
HASHES = ("sha256", "sha1", "md5")
SOURCE_KEYS = {"url", "filename", "extract", "concat", "remove", *HASHES}


def file_digest(path: str | os.PathLike, algorithm: str, *, chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file's bytes."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _expected(sha256: str | None, sha1: str | None, md5: str | None) -> dict[str, str]:
    given = (("sha256", sha256), ("sha1", sha1), ("md5", md5))
    expected = {name: value.strip().lower() for name, value in given if value}
    for name, value in expected.items():
        size = hashlib.new(name).digest_size * 2
        if len(value) != size or any(c not in "0123456789abcdef" for c in value):
            raise MuzarrError(f"{name}={value!r} is not a {name} hex digest ({size} hex digits)")
    return expected


def _mismatch(path: Path, expected: dict[str, str]) -> tuple[str, str, str] | None:
    """(algorithm, expected, got) of the first checksum that does not match, or None."""
    for name, value in expected.items():
        got = file_digest(path, name)
        if got != value:
            return name, value, got
    return None


def _fetch(url: str, part: Path, *, chunk_size: int, progress: bool, timeout: tuple[float, float]) -> None:
    """One HTTP request appending to ``part`` (Range when it exists); raises on a short body."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: Content-Length must count the bytes written, not gzip-decoded ones
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    with requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True) as response:
        if response.status_code == 416 and offset:
            # Range past the end: the .part already holds the whole file (checked by checksum).
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return
            part.unlink()
            raise requests.ConnectionError(f"server refused a resume at byte {offset}; restarting from 0")
        if response.status_code >= 400:
            raise MuzarrError(f"download of {url} failed: HTTP {response.status_code} {response.reason}; "
                              "check the URL in the catalog or try again later")
        if response.status_code == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
            if start != str(offset):
                part.unlink()
                raise requests.ConnectionError(f"server resumed at {start!r} instead of byte {offset}; restarting")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # the server ignored Range (200): start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removesuffix(".part"), disable=not progress)
        written = offset
        with bar, open(part, mode) as handle:
            for chunk in response.iter_content(chunk_size=chunk_size):
                handle.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        if total is not None and written < total:
            raise requests.ConnectionError(f"connection closed after {written} of {total} bytes")


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    sha1: str | None = None,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    retries: int = 3,
    timeout: tuple[float, float] = TIMEOUT,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download, and verify it.

    Parameters
    ----------
    url : str
    dest : path-like
        Final file. Bytes go to ``<dest>.part`` first; ``dest`` appears only when complete
        and verified. An existing ``dest`` is verified and kept (nothing is downloaded).
    sha256, md5, sha1 : str, optional
        Expected hex digests; every one given must match.
    chunk_size : int
        Bytes per read and write.
    progress : bool
        Show a tqdm bar (bytes, bytes/s) on stderr.
    retries : int
        Extra attempts after a dropped connection within this call, each resuming with
        ``Range: bytes=<size of .part>-``. Whatever the count, a later call resumes too.
    timeout : (float, float)
        ``requests`` connect and read timeouts in seconds.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    MuzarrError
        HTTP error, connection lost after all retries (the ``.part`` is kept for the next
        run), or checksum mismatch (the ``.part`` is removed; an existing ``dest`` that does
        not match is left untouched and reported).
    """
    dest = Path(dest)
    expected = _expected(sha256, sha1, md5)
    if dest.exists():
        bad = _mismatch(dest, expected)
        if bad:
            raise MuzarrError(f"{dest} exists but its {bad[0]} is {bad[2]}, expected {bad[1]}: it was left untouched; "
                              "move or delete it to download it again")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, chunk_size=chunk_size, progress=progress, timeout=timeout)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
            if attempt == retries:
                held = part.stat().st_size if part.exists() else 0
                if not held:
                    raise MuzarrError(f"download of {url} failed ({error}): check the network and the URL, "
                                      "then run again") from None
                raise MuzarrError(f"download of {url} interrupted ({error}); {held} bytes kept in {part}: "
                                  "run the same command again to resume") from None
            time.sleep(min(attempt, 5))  # first retry at once: the link dropped, the server is up
        except requests.RequestException as error:
            raise MuzarrError(f"cannot download {url!r}: {error}") from None
    bad = _mismatch(part, expected)
    if bad:
        part.unlink()
        raise MuzarrError(f"checksum mismatch for {url}: expected {bad[0]} {bad[1]}, got {bad[2]}; the bad download "
                          f"was removed: run again, and if it fails again the file on the server changed")
    os.replace(part, dest)
    return dest


def _check_member(to: Path, name: str, archive: Path) -> None:
    target = os.path.normpath(os.path.join(to, name))
    if PurePosixPath(name).is_absolute() or os.path.isabs(name) or os.path.commonpath([to, target]) != str(to):
        raise MuzarrError(f"{archive} holds member {name!r} that would be written outside {to}: "
                          "refusing to extract an unsafe archive (nothing was extracted)")


def extract(archive: str | os.PathLike, to: str | os.PathLike) -> Path:
    """Extract a .zip or .tar(.gz/.bz2/.xz) archive into ``to``.

    Every member name is checked before anything is written: an absolute name, a ``..``
    that climbs out of ``to``, or (tar) a link pointing outside refuses the whole archive.
    A marker ``to/.<archive name>.extracted`` makes a second call a no-op.

    Returns
    -------
    pathlib.Path
        ``to``.
    """
    archive = Path(archive)
    to = Path(to).resolve()
    if not archive.is_file():
        raise MuzarrError(f"archive {archive} does not exist")
    marker = to / f".{archive.name}.extracted"
    if marker.exists():
        return to
    to.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                _check_member(to, info.filename, archive)
            bundle.extractall(to)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as bundle:
            members = bundle.getmembers()
            for member in members:
                _check_member(to, member.name, archive)
                if member.issym() or member.islnk():
                    base = to / PurePosixPath(member.name).parent if member.issym() else to
                    _check_member(to, os.path.relpath(os.path.join(base, member.linkname), to), archive)
            # Python >= 3.10.12 / 3.11.4 also vet members with the "data" filter (PEP 706).
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            try:
                bundle.extractall(to, members=members, **safe)
            except tarfile.TarError as error:
                raise MuzarrError(f"{archive}: refusing unsafe member ({error})") from None
    else:
        raise MuzarrError(f"{archive} is neither a zip nor a tar archive; download it again or extract it by hand")
    marker.touch()
    return to


def _filename(source: Mapping) -> str:
    name = source.get("filename") or unquote(PurePosixPath(urlparse(source["url"]).path).name)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise MuzarrError(f"cannot name the file of {source['url']!r}: add filename: <name> to the source")
    return name


def _concatenate(parts: Sequence[Path], dest: Path) -> Path:
    """Join ``parts`` in order into ``dest`` (via ``dest.part``; kept if already complete)."""
    size = sum(p.stat().st_size for p in parts)
    if dest.exists() and dest.stat().st_size == size:
        return dest
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, length=1 << 20)
    os.replace(tmp, dest)
    return dest


def download_dataset(name: str, to: str | os.PathLike, *, sources: Sequence[Mapping], progress: bool = True) -> Path:
    """Download (and verify, concatenate, extract) every source of a dataset into ``to``.

    Parameters
    ----------
    name : str
        Dataset name, used in messages.
    to : path-like
        Folder that receives the files (and the extracted archives).
    sources : list of dict
        Each ``{url, sha256 | sha1 | md5, extract: bool, concat: str, filename: str, remove: bool}``;
        only ``url`` is required. ``remove: true`` deletes an archive once extracted (MTG-Jamendo's
        100 tar files would double its 508 GB otherwise). Sources sharing ``concat: "mp3.zip"`` are the parts of one
        archive: downloaded in order, joined into ``to/mp3.zip`` and, if any part says
        ``extract: true``, extracted (the joined file is then removed). A rerun downloads
        nothing already there, and nothing whose archive was extracted before (a marker
        ``to/.<archive>.extracted`` says so), even if the archive was deleted since.
    progress : bool

    Returns
    -------
    pathlib.Path
        ``to``.
    """
    if not sources:
        raise MuzarrError(f"dataset {name!r} has no download sources in the catalog")
    for number, source in enumerate(sources, start=1):
        if not isinstance(source, Mapping) or "url" not in source:
            raise MuzarrError(f"download source {number} of {name!r} is {source!r}: expected a mapping with a url")
        unknown = sorted(set(source) - SOURCE_KEYS)
        if unknown:
            raise MuzarrError(f"download source {number} of {name!r} has unknown key(s) {unknown}; "
                              f"allowed: {', '.join(sorted(SOURCE_KEYS))}")
        joined = source.get("concat")
        if joined is not None and (not isinstance(joined, str) or "/" in joined or "\\" in joined
                                   or joined in ("", ".", "..")):
            raise MuzarrError(f"download source {number} of {name!r}: concat={joined!r} must be a plain file name")
        _filename(source)
        _expected(*(source.get(h) for h in HASHES))
        if source.get("remove") and (not source.get("extract") or joined is not None):
            raise MuzarrError(f"download source {number} of {name!r}: remove: true needs extract: true on a single "
                              "archive (it deletes the archive once extracted)")
    to = Path(to).expanduser()
    to.mkdir(parents=True, exist_ok=True)
    group_extract: dict[str, bool] = {}
    for source in sources:
        if source.get("concat"):
            group_extract[source["concat"]] = group_extract.get(source["concat"], False) or bool(source.get("extract"))
    groups: dict[str, list[Path]] = {}
    for source in sources:
        archive = source.get("concat") or _filename(source)
        extracted = bool(group_extract.get(archive) if source.get("concat") else source.get("extract"))
        if extracted and (to / f".{archive}.extracted").exists():
            continue  # extracted by an earlier run: the archive itself may have been deleted since
        dest = download(source["url"], to / _filename(source), progress=progress,
                        **{h: source[h] for h in HASHES if source.get(h)})
        if source.get("concat"):
            groups.setdefault(source["concat"], []).append(dest)
        elif source.get("extract"):
            extract(dest, to)
            if source.get("remove"):
                dest.unlink()
    for joined, parts in groups.items():
        if not group_extract[joined]:
            _concatenate(parts, to / joined)
            continue
        archive = _concatenate(parts, to / joined)
        extract(archive, to)
        archive.unlink()
    return to
