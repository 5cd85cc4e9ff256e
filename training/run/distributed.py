"""Data-parallel training across processes: torch.distributed as ``torchrun`` launches it.

``torchrun --nproc_per_node N $(which train) --store ... --model ...`` starts N copies of
``train``, each with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous in its
environment. :func:`context` reads them once and joins the process group (NCCL for CUDA tensors,
gloo for CPU ones); without them it is the single process of a plain ``train`` and every collective
below is the identity, so a ``train`` started without ``torchrun`` does exactly what it always
did.

What each rank does (``training.loop.Run`` uses these): the epoch's shard permutation is the
same on every rank and dealt out by rank (:class:`training.data.TrainStream`), so the ranks
see disjoint examples whose union is the split; the global batch is split evenly between
ranks; DistributedDataParallel averages the gradients, and ``Join`` lets a rank that ran out
of shards first shadow the others' last steps. Evaluation is dealt out the same way and the
per-clip scores are gathered, so every rank computes the same metrics from the same
predictions a single process would make. Rank 0 alone writes the run directory and reads it
back for ``--resume`` (it broadcasts what it read), so the run folder need only be visible
from rank 0's machine.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.errors import MuzarrError

__all__ = ["LOST", "Context", "LostRank", "RankError", "context", "launched", "lost_rank_message", "stop_on_sigterm"]

#: how long joining the others, and any collective, may wait for a peer before the run gives up
TIMEOUT = _dt.timedelta(seconds=float(os.environ.get("MUZARR_DIST_TIMEOUT", "600")))


@dataclass(frozen=True)
class Context:
    """This process's place in the run: ``rank`` of ``world`` (``local_rank`` on its machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: its own GPU (``cuda:LOCAL_RANK``) on CUDA, one GPU per process."""
        if not self.active or device.type == "cpu":
            return device
        if device.type != "cuda":
            raise MuzarrError(f"--device {device.type}: torch.distributed runs on CUDA or CPU; use --device cpu, or one process")
        gpus = torch.cuda.device_count()
        if self.local_world > gpus:
            raise MuzarrError(
                f"torchrun started {self.local_world} processes on this machine but it has {gpus} CUDA GPU(s): "
                f"use --nproc_per_node {gpus} (one process per GPU), or --device cpu"
            )
        return torch.device("cuda", self.local_rank)

    # -- collectives (the identity in a single process) ------------------------------------
    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object: tensors go by value)."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, function, *args, **kwargs) -> Any:
        """``function(...)`` computed by rank 0 and handed to every rank; the MuzarrError it
        raises is raised on every rank (no rank is left waiting for an answer)."""
        if not self.active:
            return function(*args, **kwargs)
        value = None
        if self.is_main:
            try:
                value = function(*args, **kwargs)
            except MuzarrError as err:
                value = _Failed(str(err))
        value = self.broadcast(value)
        if isinstance(value, _Failed):
            raise MuzarrError(value.message)
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def sum(self, *values: float) -> list[float]:
        """Element-wise sums of ``values`` over the ranks."""
        if not self.active:
            return list(values)
        return [sum(parts) for parts in zip(*self.gather(values))]

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, so that every rank
        evaluates and saves the same model."""
        if self.active:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@dataclass(frozen=True)
class _Failed:
    message: str


_CONTEXT: Context | None = None


class RankError(MuzarrError):
    """An error of one rank's own (its shards, a lost peer): that rank reports it, whichever it is."""


class LostRank(RankError):
    """Another rank went away; under ``train --nproc-per-node`` the launcher names it instead."""


#: the exit status of a rank that lost another (train's launcher looks past it for the cause)
LOST = 3
#: set in the ranks ``train --nproc-per-node`` starts: it reports a failure, so they stay quiet about it
LAUNCHED_BY_TRAIN = "MUZARR_LAUNCHER"


def launched() -> bool:
    """Whether this process is one rank of several (``torchrun`` set ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (torchrun ending the other ranks after one failed) as one line and exit 143."""
    def stop(signum, frame):
        if not os.environ.get(LAUNCHED_BY_TRAIN):  # train's own launcher reports the failure itself
            rank = os.environ.get("RANK", "?")
            print(f"rank {rank}: stopped by the launcher (another rank ended first)", file=sys.stderr, flush=True)
        os._exit(143)  # at once: a collective in flight would only wait for the lost rank

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def context() -> Context:
    """This process's :class:`Context`, joining the process group on first use under ``torchrun``.

    On a machine with CUDA the group runs NCCL for GPU tensors and gloo for CPU ones (one
    group: a run on ``--device cpu`` works there too); elsewhere gloo.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CONTEXT = Context()
        return _CONTEXT
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = torch.cuda.is_available()
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        torch.distributed.init_process_group(backend, timeout=TIMEOUT)
    except (RuntimeError, ValueError, TimeoutError) as err:
        raise RankError(
            f"rank {rank} of {world} could not join the others at {where} ({_first_line(err)}): check that every "
            "machine reaches --rdzv-endpoint / MASTER_ADDR and that all were started with the same --nnodes"
        ) from None
    _CONTEXT = Context(rank=rank, world=world, local_rank=local_rank, local_world=local_world, backend=backend)
    return _CONTEXT


def lost_rank_message(ctx: Context, err: BaseException, *, resume: str) -> str:
    """One line for a collective that failed because another rank went away."""
    return (
        f"rank {ctx.rank} of {ctx.world}: lost contact with another rank ({_first_line(err)}); the run is saved after "
        f"its last finished epoch: continue it with the same torchrun line and `train --resume {resume}`"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text[0]) if text else type(err).__name__  # gloo's source location
    return line.split(". ")[0][:160]
