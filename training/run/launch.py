"""``train --nproc-per-node N ...``: torchrun's launcher, run by ``train`` itself.

The same elastic agent ``torchrun`` is (``torch.distributed.launcher.api.elastic_launch``),
started with the command line the user gave minus the launch options, so that a failed rank
ends the run with one line (which rank, how, and the command that resumes) instead of the
agent's report. ``torchrun ... $(which train) ...`` works as well; this is only the shorter,
quieter way in.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import uuid

from pipeline.errors import MuzarrError
from training.run.distributed import LAUNCHED_BY_TRAIN, LOST, TIMEOUT

__all__ = ["LAUNCH_OPTIONS", "launch", "without_launch_options"]

#: ``train run`` options that describe the launch, not the run (each takes one value)
LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint")


def without_launch_options(argv: list[str]) -> list[str]:
    """``argv`` with every launch option and its value removed (``--opt V`` and ``--opt=V``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in LAUNCH_OPTIONS)):
            kept.append(arg)
    return kept


def launch(argv: list[str], *, nproc_per_node: int, nnodes: int, node_rank: int, rdzv_endpoint: str | None,
           resume_hint: str) -> int:  # fmt: skip
    """Run ``train argv`` as ``nproc_per_node`` ranks on each of ``nnodes`` machines; the exit status.

    One machine: a rendezvous on a free local port. Several: every machine runs the same
    command with its ``--node-rank`` and the ``--rdzv-endpoint`` HOST:PORT of machine 0
    (a static rendezvous, as ``torchrun --node-rank`` does).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nnodes > 1 and not rdzv_endpoint:
        raise MuzarrError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (machine 0's address, the same on every machine)")
    if not 0 <= node_rank < nnodes:
        raise MuzarrError(f"--node-rank {node_rank} must be in 0..{nnodes - 1} (one per machine, 0 on the --rdzv-endpoint machine)")
    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # this function reports a failure itself
    os.environ[LAUNCHED_BY_TRAIN] = "1"
    # torchrun's default: one thread per rank unless the user chose (the ranks share the cores)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    if nnodes == 1:
        rdzv = {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0", "run_id": str(uuid.uuid4())}
    else:
        host, _, port = rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise MuzarrError(f"--rdzv-endpoint {rdzv_endpoint!r} must be HOST:PORT (machine 0's address and a free port)")
        if node_rank > 0:
            _wait_for(host, int(port), node_rank)
        os.environ.update(MASTER_ADDR=host, MASTER_PORT=port)
        rdzv = {"rdzv_backend": "static", "rdzv_endpoint": rdzv_endpoint, "run_id": "muzarr",
                "rdzv_configs": {"rank": node_rank, "timeout": int(TIMEOUT.total_seconds())}}  # fmt: skip
    config = LaunchConfig(min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc_per_node, max_restarts=0,
                          monitor_interval=0.5, start_method="spawn", **rdzv)  # fmt: skip
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "training.cli", *argv)
    except ChildFailedError as err:
        # the cause, not the ranks that only lost it (status LOST) or were stopped after it (SIGTERM)
        causes = {r: f for r, f in err.failures.items() if f.exitcode not in (LOST, 143, -signal.SIGTERM)}
        saved = f"the run is saved after its last finished epoch: continue it with: {resume_hint}"
        if not causes:
            print(f"error: the ranks of this machine lost a rank of another machine (its output says which); {saved}",
                  file=sys.stderr, flush=True)  # fmt: skip
            return 1
        rank, failure = min(causes.items(), key=lambda item: item[1].timestamp)
        if failure.exitcode in (2, 130):  # the rank said what (a MuzarrError, or Ctrl-C)
            return failure.exitcode
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with status {failure.exitcode}"
        print(f"error: rank {rank} (pid {failure.pid}) {how}; {saved}", file=sys.stderr, flush=True)
        return 1
    except (RendezvousError, RuntimeError, TimeoutError, OSError) as err:  # the rendezvous: a machine that never came, a port in use
        text = str(err).strip().splitlines()
        raise MuzarrError(
            f"the ranks could not meet at {rdzv_endpoint or 'localhost'} ({type(err).__name__}: "
            f"{(text[0] if text else '')[:160]}): check that every machine reaches it and was given the same --nnodes"
        ) from None
    return 0


def _wait_for(host: str, port: int, node_rank: int) -> None:
    """Wait until machine 0's rendezvous answers (it may start later), at most the timeout."""
    deadline = time.monotonic() + TIMEOUT.total_seconds()
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise MuzarrError(
                    f"machine {node_rank}: nothing answers at {host}:{port} after {TIMEOUT.total_seconds():g} s "
                    f"({err.strerror or err}): start the same command with --node-rank 0 on {host} first, and check that "
                    "this machine reaches it (address, port, firewall)"
                ) from None
            time.sleep(1)
