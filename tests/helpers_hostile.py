"""Running muzarr commands on hostile stores: each in a process capped in memory that records every file it
opens outside the store (``tests/_guarded.py``), and the checks every result must pass. Used by
``tests/test_adversarial.py`` and ``tests/test_adversarial_tracks.py``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

GUARD = Path(__file__).with_name("_guarded.py")
LIMIT = 2 << 30  # address space of each command
# glibc reserves 64 MiB of address space per thread's malloc arena: with one arena the cap bounds what is
# allocated, not how many threads torch, Dask and zarr start
ARENAS = {"MALLOC_ARENA_MAX": "1"}


@dataclass(frozen=True)
class Change:
    """One hostile change: ``kind`` says what, ``detail`` the drawn parameters (shown on failure)."""

    kind: str
    detail: tuple

    def __str__(self) -> str:
        return f"{self.kind}{self.detail}"


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def fingerprint(folder: Path) -> dict[str, tuple]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(folder))] = (path.stat().st_size, hashlib.blake2b(path.read_bytes()).hexdigest())
    return found


def outside_folder(root: Path, base: Path) -> Path:
    outside = root / "outside"
    (outside / "copies" / "tables").mkdir(parents=True)
    (outside / "secret").write_bytes(f"SECRET-{uuid.uuid4().hex}".encode())
    for key in ("tables/labels.parquet",):
        shutil.copyfile(base / key, outside / "copies" / key)
    return outside


def guarded(commands: list[list[str]], outside: Path, work: Path, *, limit: int = LIMIT) -> dict:
    report = work / "report.json"
    words = [w for command in commands for w in (*command, ";;")][:-1]
    process = subprocess.run(
        [sys.executable, str(GUARD), str(report), str(outside), str(limit), "--", *words],
        capture_output=True, text=True, check=False, timeout=600, cwd=work, env={**os.environ, **ARENAS},
    )  # fmt: skip
    assert process.returncode == 0 and report.exists(), f"the guard itself died ({process.returncode}): {process.stderr[-2000:]}"
    return _read(report)


def check(result: dict, *, must_fail: bool, tamper, secret: bytes) -> None:
    command, code, out, err = result["command"], result["code"], result["stdout"], result["stderr"]
    shown = f"{tamper} -> {' '.join(command[:2])}: exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-3000:]}"
    assert "Traceback" not in out + err, shown
    assert secret.decode() not in out + err, shown
    errors = [line for line in err.splitlines() if line.strip()]
    if code == 2:
        assert len(errors) == 1 and errors[0].startswith("error: "), shown
    elif code == 1:
        tool = command[1] if command[0] == "pipe" else command[0]
        assert tool in ("verify", "copy", "info", "build"), shown  # damage reports (and a build's failed clips)
        assert not errors or (len(errors) == 1 and errors[0].startswith("error: ")), shown
    else:
        assert code == 0 and not must_fail, shown


