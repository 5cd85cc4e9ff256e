"""The writer's lock of a store: one build at a time changes a store.

``_muzarr/lock.json`` names its owner: pid, host, start time, the command and a random token.

* On a local disk it is made by ``os.link`` of a complete temporary file: the link fails if a
  lock is there (atomic, on NFS too), and a kill never leaves half a lock.
* On an object store it is one PUT with ``If-None-Match: *`` (s3fs ``mode="create"``, which
  AWS S3 and moto honour), read back to check the token. A store that ignores the condition
  leaves a race: two writers whose PUTs land between the other's existence check and PUT may
  both go on (the read-back only catches a PUT that came first).

A lock whose owner ran on this host and is gone (no such pid, or the pid now belongs to a
younger process) is taken over with a note; any other lock refuses the build in one line.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import MuzarrError
from pipeline.store.io import LOCK
from pipeline.store.location import Location, is_local


@contextmanager
def writer_lock(loc: Location, *, command: str | None = None) -> Iterator[None]:
    """Hold the store's lock for the ``with`` block; released (deleted) at its end, also on an error or Ctrl-C.

    ``command`` is what a second writer is told the owner runs (default: this process's command line).
    """
    fs, root, url = loc.fs, loc.root, loc.url
    path = f"{root}/{LOCK}"
    now = time.time()
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="seconds"),
        "started_unix": now,
        "token": uuid.uuid4().hex,
        "command": (command or shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]))[:300],
    }
    made = _missing_folders(fs, root) if is_local(fs) else []
    try:
        for _ in range(3):  # a stale lock taken over can be lost to a third writer: then it is named
            if _create(fs, path, json.dumps(owner, sort_keys=True).encode()):
                held = _read(fs, path)
                if held == owner:  # read back: an object store may have ignored the condition
                    break
                raise MuzarrError(_busy(url, held))
            held = _read(fs, path)
            if held is not None and not _is_stale(held):
                raise MuzarrError(_busy(url, held))
            if held is not None:
                _take_over(fs, path, held, url)
        else:
            raise MuzarrError(_busy(url, _read(fs, path)))
    except BaseException:
        _remove_folders(made)
        raise
    try:
        yield
    finally:
        if _read(fs, path) == owner:
            fs.rm_file(path)
        _remove_folders(made)


def _missing_folders(fs, root: str) -> list[str]:
    """Create the store's folder and ``_muzarr/`` for the lock; returns those made, deepest first."""
    made = []
    for folder in (root, f"{root}/_muzarr"):
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            made.append(folder)
    return made[::-1]


def _remove_folders(folders: list[str]) -> None:
    """Remove the folders the lock made if nothing else was written there (a refused or failed build)."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty: the build wrote into it


def _create(fs, path: str, data: bytes) -> bool:
    """Write the lock unless one exists; False if one does."""
    if is_local(fs):
        temporary = f"{path}.{uuid.uuid4().hex}.partial"
        with open(temporary, "wb") as handle:
            handle.write(data)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)
        return True
    if fs.exists(path):  # a store that ignores If-None-Match would overwrite the owner's lock
        return False
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def _read(fs, path: str) -> dict | str | None:
    """The lock's owner, None if there is no lock, or the raw text of a lock muzarr did not write."""
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    except OSError as error:  # raised here, not in the build's write_errors: this is a read
        reason = os.strerror(error.errno) if error.errno else f"{type(error).__name__}: {error}"
        raise MuzarrError(
            f"cannot read the lock {path}: {reason}: make it readable by this user, "
            "or if no build is writing the store, remove it"
        ) from None
    try:
        held = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        held = None
    return held if isinstance(held, dict) else data.decode(errors="replace")[:100]


def _is_stale(held: dict | str) -> bool:
    """True if the owner ran on this host and is gone."""
    import psutil

    if not isinstance(held, dict) or held.get("host") != socket.gethostname():
        return False
    pid, started = held.get("pid"), held.get("started_unix")
    if not isinstance(pid, int) or not isinstance(started, (int, float)):
        return False
    try:
        process = psutil.Process(pid)
        # a pid is reused: a process younger than the lock is not its owner
        return process.status() == psutil.STATUS_ZOMBIE or process.create_time() > started + 1
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _take_over(fs, path: str, held: dict, url: str) -> None:
    """Remove the stale lock ``held``, unless another writer replaced it meanwhile (then it is named)."""
    if is_local(fs):
        aside = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            os.rename(path, aside)  # atomic: of two writers taking over, one moves the stale lock
        except FileNotFoundError:
            return
        moved = _read(fs, aside)
        if moved != held:  # the lock of a writer that took over first: give it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            os.unlink(aside)
            raise MuzarrError(_busy(url, moved))
        os.unlink(aside)
    else:
        fs.rm_file(path)
    sys.stderr.write(
        f"note: {url}: taking over the lock of pid {held['pid']} on host {held['host']} "
        f"(since {held.get('started')}): that process is gone\n"
    )


def _busy(url: str, held: dict | str | None) -> str:
    where = f"{url.rstrip('/')}/{LOCK}"
    if not isinstance(held, dict):
        return f"{where} is not a lock muzarr wrote ({held!r}): if no build is writing {url}, remove it"
    return (
        f"{url} is being built by pid {held.get('pid')} on host {held.get('host')} since {held.get('started')} "
        f"({held.get('command')}): wait for it to finish, or if that process is gone, remove {where}"
    )
