"""Run muzarr commands in one process under guard: bounded memory, and every file opened watched.

Usage: python tests/_guarded.py REPORT.json OUTSIDE LIMIT_BYTES -- pipe ARGS... ;; train ARGS... ;; ...

Each command runs as its console script would (click, standalone), one after another; for each,
the report records its exit status, stdout and stderr. An audit hook records every file the
process opens whose real path lies under OUTSIDE (a folder the store must never reach), and
``RLIMIT_AS`` caps the address space, so an allocation sized from a hostile store fails here
instead of swapping the machine. Used by ``tests/test_adversarial.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys


def main() -> None:
    report_path, outside, limit = sys.argv[1], os.path.realpath(sys.argv[2]), int(sys.argv[3])
    words = sys.argv[sys.argv.index("--") + 1 :]
    commands, current = [], []
    for word in [*words, ";;"]:
        if word == ";;":
            commands.append(current)
            current = []
        else:
            current.append(word)
    opened_outside: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            real = os.path.realpath(path)
            if real == outside or real.startswith(outside + os.sep):
                opened_outside.append(path)

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.addaudithook(audit)
    results = []
    for tool, *args in commands:
        # imported only when used: torch alone reserves ~1 GiB of the address space
        if tool == "pipe":
            from pipeline.cli import main as command
        else:
            from training.cli import main as command
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                command(args, prog_name=tool, standalone_mode=True)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException as error:  # noqa: BLE001 - what escaped the command is the finding
                import traceback

                err.write("Traceback (escaped the command)\n" + "".join(traceback.format_exception(error)))
                code = -1
        results.append({"command": [tool, *args], "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    with open(report_path, "w") as handle:
        json.dump({"results": results, "opened_outside": opened_outside, "peak_rss": _peak_rss()}, handle)


def _peak_rss() -> int:
    """Bytes this process's memory held at its peak since it started (``VmHWM``: a fork's ``ru_maxrss`` would count
    the parent's memory too, a pytest worker's gigabytes)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
