"""Where a store is: :class:`Location` (a URL and its fsspec options, the filesystem resolved once),
which every reader and writer of a store takes, and the one atomic write (:func:`put_bytes`)."""

from __future__ import annotations

import os
import posixpath
import uuid

import fsspec
import zarr

from pipeline.errors import MuzarrError
from pipeline.store.http import http_filesystem


def is_http(url: str) -> bool:
    return str(url).split("://", 1)[0].lower() in ("http", "https") if "://" in str(url) else False


class Location:
    """Where a store is: its URL and fsspec options, with the filesystem resolved once.

    Every reader and writer of a store takes one (make it with :func:`location`). It pickles
    as its URL and options: a Dask worker resolves the filesystem anew.
    """

    def __init__(self, url: str, options: dict | None = None) -> None:
        self.url = str(url)
        self.options = dict(options or {})
        self._resolved = None

    def __reduce__(self):
        return (Location, (self.url, self.options))

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __str__(self) -> str:
        return self.url

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and (self.url, self.options) == (other.url, other.options)

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def is_http(self) -> bool:
        return is_http(self.url)

    def fresh(self) -> Location:
        """The same place, its filesystem resolved anew (a forked process must not share a connection pool)."""
        return Location(self.url, self.options)

    def _resolve(self):
        if self._resolved is None:
            if self.is_http:  # a range-checking filesystem (pipeline/http.py)
                self._resolved = http_filesystem(self.options), self.url.rstrip("/")
            else:
                try:
                    fs, path = fsspec.core.url_to_fs(self.url, **self.options)
                except (ValueError, ImportError) as error:  # fsspec: "Protocol not known", "Please install gcsfs"
                    raise MuzarrError(
                        f"{self.url}: unsupported URL ({_first_line(error)}): use a local path, s3:// or http(s)://"
                    ) from None
                except OSError as error:  # a filesystem that connects when made (ftp://, sftp://)
                    raise MuzarrError(
                        f"cannot reach {self.url}: {type(error).__name__}: {_first_line(error)}: "
                        "check the address and that its server is running"
                    ) from None
                self._resolved = fs, path.rstrip("/")
        return self._resolved

    @property
    def fs(self):
        """The fsspec filesystem of the store."""
        return self._resolve()[0]

    @property
    def root(self) -> str:
        """The store's path on :attr:`fs` (no trailing slash)."""
        return self._resolve()[1]

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    @property
    def place(self) -> str:
        """The store's place in one comparable form: a local path with ``..``, symbolic links, trailing
        slashes and ``file:`` forms resolved (as far as it exists: a destination may not yet), or
        ``protocol://path`` normalised for any other filesystem."""
        fs, root = self._resolve()
        if is_local(fs):
            return os.path.realpath(root)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return f"{protocol}://{posixpath.normpath(root.split('://', 1)[-1])}"

    def contains(self, other: Location) -> bool:
        """Whether ``other`` is this place or inside it (see :attr:`place`)."""
        mine, theirs = self.place, other.place
        return theirs == mine or theirs.startswith(mine.rstrip("/") + "/")

    def check_writable(self, *, verb: str) -> None:
        """Refuse a place no store can be written to, before anything is read or written: an http(s) URL
        (muzarr reads HTTP only), or a local path whose deepest existing part is not a folder.

        ``verb`` names the command in the message (``copy``, ``build``).
        """
        if self.is_http:
            raise MuzarrError(f"cannot write to http(s) URLs ({self.url}): {verb} to a local path or s3:// instead")
        if not self.is_local:
            return
        existing = self.root
        while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            what = "it" if existing == self.root else existing
            raise MuzarrError(f"cannot write {self.url}: {what} exists and is not a folder: choose another destination")

    def path(self, key: str) -> str:
        """The filesystem path of store-relative ``key``."""
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` whole or not at all (:func:`put_bytes`)."""
        put_bytes(self.fs, self.path(key), data)

    def zarr_store(self, *, read_only: bool = True):
        """What ``zarr.open_group(store=...)`` needs: the URL itself, or a store object for HTTP."""
        if self.is_http:
            from zarr.storage import FsspecStore

            return FsspecStore(http_filesystem(self.options, asynchronous=True), path=self.url.rstrip("/"), read_only=True)
        return self.url

    def open_group(self, *, mode: str = "r") -> zarr.Group:
        store = self.zarr_store(read_only=mode == "r")
        options = None if not isinstance(store, str) else (self.options or None)
        # Zarr v3 only: a v2 group could hold arrays with a pickle filter, whose decoding runs code. Each node's
        # own zarr.json, never the consolidated copy (pipeline/store/consolidated.py): during a grow that copy
        # still shows the arrays as the last manifest left them.
        return zarr.open_group(store=store, mode=mode, storage_options=options, zarr_format=3, use_consolidated=False)


def location(url: str | Location, storage_options: dict | None = None) -> Location:
    """``url`` (a path or any fsspec URL) with its options as a :class:`Location`; a Location as it is."""
    if isinstance(url, Location):
        if storage_options and storage_options != url.options:
            raise MuzarrError(f"{url.url}: storage options given twice (with the location and apart)")
        return url
    return Location(os.fspath(url) if hasattr(url, "__fspath__") else str(url), storage_options)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]


def is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def put_bytes(fs, path: str, data: bytes) -> None:
    """Write one file so that a reader (or a killed writer) never leaves half of it.

    Local disk: a temporary name in the same folder, then ``os.replace`` (atomic on POSIX).
    Object stores: a single PUT, which is atomic by itself.
    """
    if is_local(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temporary = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except OSError as error:
            if error.errno is None:
                raise
            # name the file being written (a full disk's write error names none, or the temporary)
            raise OSError(error.errno, error.strerror, path) from None
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    else:
        fs.pipe_file(path, data)
