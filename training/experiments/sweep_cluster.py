"""Where a sweep's trials train: in this process, or K at once on the workers of a Dask cluster.

The driver (the ``train sweep`` process) owns the Optuna study: it asks for a trial, hands it to
a worker as a :class:`TrialJob` and tells the study the :class:`TrialResult` that comes back. A
worker only trains the trial's run directory, exactly as a sequential sweep does, so trial
numbers and sampler seeds are fixed at ask time whatever K is.

Workers write the run directories into the sweep folder, so every worker must see that folder
at the same path: the driver writes a token file there and a trial whose worker cannot read it
is not run (:class:`NotShared`).

On a cluster of your own, one trial per worker::

    dask scheduler --port 8786
    CUDA_VISIBLE_DEVICES=0 dask worker tcp://host:8786 --nthreads 1 --resources GPU=1   # once per GPU
    train sweep ... --scheduler tcp://host:8786 --device cuda --out /shared/sweep
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.cluster import as_they_finish, check_scheduler_address, close_client, deferred_interrupt, make_client
from pipeline.errors import MuzarrError
from training.run.checkpoint import write_text_atomic
from training.run.rundir import RunDir

#: the file in the sweep folder that proves a worker sees that folder
TOKEN_FILE = ".sweep-token"


@dataclasses.dataclass(frozen=True)
class TrialJob:
    """One trial as a worker gets it: ``config`` is its ``TrainConfig.to_dict()``."""

    number: int
    config: dict
    run_dir: str
    token: str | None = None  # what the sweep folder's token file holds; None: no check (in this process)
    threads: int | None = None  # torch threads; None: the cores of the worker's host // its workers there
    host_workers: dict | None = None  # host -> workers of the cluster on it
    pin_gpu: bool = False  # an embedded cluster: worker i trains on cuda:i


@dataclasses.dataclass(frozen=True)
class TrialResult:
    number: int
    metrics: dict | None = None  # what Run.fit returned; None when the trial failed
    error: str | None = None  # "Type: message" of a failed trial
    worker: str | None = None  # the worker's name (its address unless named); None in this process
    seconds: float = 0.0
    visible: bool = True  # False: the worker does not see the sweep folder, the trial was not run


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where trials run: ``parallel`` at once; no cluster when 1 and no ``scheduler``."""

    parallel: int | None = None  # None: 1 here, or every worker of ``scheduler``
    scheduler: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.scheduler is not None:
            check_scheduler_address(self.scheduler)  # before the sweep asks for a trial

    @property
    def in_process(self) -> bool:
        return self.scheduler is None and (self.parallel or 1) == 1


def train_trial(job: TrialJob) -> TrialResult:
    """Train (or continue) the trial's run directory; a bad combination fails the trial only.

    Runs on a Dask worker, or in the driver's process for a sweep without a cluster.
    """
    import torch

    from training.run.config import TrainConfig
    from training.run.loop import Run

    started = time.perf_counter()
    worker = _this_worker()
    run_dir = Path(job.run_dir)
    if job.token is not None and _read(run_dir.parent / TOKEN_FILE) != job.token:
        return TrialResult(job.number, worker=worker.address if worker else None, visible=False)
    threads = job.threads
    if threads is None and worker is not None:
        threads = max(1, len(os.sched_getaffinity(0)) // (job.host_workers or {}).get(worker.ip, 1))
    if threads is not None:
        torch.set_num_threads(threads)
    if job.pin_gpu and worker is not None:
        torch.cuda.set_device(int(worker.name))  # "cuda" is then this worker's GPU
    name = str(worker.name) if worker else None
    try:
        if RunDir(run_dir).started:  # interrupted earlier, or a retry after a worker died
            metrics = Run.resume(run_dir, progress=False).fit()
        else:
            metrics = Run(TrainConfig.from_dict(job.config), run_dir, progress=False).fit()
    except (MuzarrError, RuntimeError, ValueError) as err:
        # a bad combination (too small for the model, diverged...) fails its trial, not the sweep
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n")
        return TrialResult(job.number, error=f"{type(err).__name__}: {err}", worker=name,
                           seconds=time.perf_counter() - started)  # fmt: skip
    return TrialResult(job.number, metrics=metrics, worker=name, seconds=time.perf_counter() - started)


def _this_worker():
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:  # not inside a Dask task
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def run_trials(
    next_trial: Callable[[int], tuple[int, Any] | None],
    on_result: Callable[[TrialResult], None],
    *,
    out: Path,
    cluster: Cluster,
    device: str,
    echo: Callable[[str], None],
) -> None:
    """Train trials until ``next_trial(running)`` (running: trials in flight) returns None.

    ``next_trial`` gives ``(number, TrainConfig)``; ``on_result`` gets every result, as trials
    finish. A trial that is in flight when the sweep stops (Ctrl-C, an error) stays RUNNING in
    the study, and the next ``train sweep`` continues it.
    """
    out = out.resolve()  # workers may have other working directories

    def job(trial, **where) -> TrialJob:
        number, config = trial
        return TrialJob(number, config.to_dict(), str(out / f"trial-{number:03d}"), **where)

    # before a trial is asked: a mistake must not leave one RUNNING
    pin_gpu = not cluster.in_process and cluster.scheduler is None and _check_gpus(cluster.parallel, device)
    trial = next_trial(0)
    if cluster.in_process:
        while trial is not None:
            on_result(train_trial(job(trial, threads=cluster.threads)))
            trial = next_trial(0)
        return
    if trial is None:  # nothing left to train: no cluster to start
        return
    from dask.distributed import as_completed

    token = uuid.uuid4().hex
    write_text_atomic(out / TOKEN_FILE, token)
    with deferred_interrupt() as interrupted:
        client = make_client(workers=cluster.parallel, scheduler=cluster.scheduler)
        running: dict[Any, int] = {}
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            if not workers:
                raise MuzarrError(f"the Dask scheduler at {cluster.scheduler} has no workers: start some with "
                                  f"`dask worker {cluster.scheduler} --nthreads 1`")  # fmt: skip
            parallel = cluster.parallel or len(workers)
            hosts = [w["host"] for w in workers.values()]
            host_workers = {h: hosts.count(h) for h in hosts}
            gpus = any("GPU" in w.get("resources", {}) for w in workers.values())
            resources = {"GPU": 1} if gpus else None  # workers that declare GPUs get one trial per GPU
            where = f"the Dask scheduler {cluster.scheduler}" if cluster.scheduler else "an embedded Dask cluster"
            echo(f"trials run on {where}, {parallel} at a time ({len(workers)} worker{'s' * (len(workers) != 1)}"
                 f"{', one GPU each' if gpus or pin_gpu else ''})")  # fmt: skip
            finished = as_completed()

            def submit(trial) -> None:
                while trial is not None:
                    future = client.submit(
                        train_trial, job(trial, token=token, threads=cluster.threads, host_workers=host_workers,
                                         pin_gpu=pin_gpu),
                        key=f"muzarr-trial-{trial[0]}-{os.getpid()}", pure=False, resources=resources,
                    )  # fmt: skip
                    running[future] = trial[0]
                    finished.add(future)
                    trial = next_trial(len(running)) if len(running) < parallel else None

            submit(trial)
            for future in as_they_finish(finished, interrupted):
                number = running.pop(future)
                try:
                    result = future.result()
                except Exception as error:  # noqa: BLE001 - a task that died with its worker, a full disk...
                    raise MuzarrError(f"trial {number} stopped: {type(error).__name__}: {str(error).splitlines()[0]}; "
                                      "run the same command again to continue it") from None  # fmt: skip
                if not result.visible:
                    raise MuzarrError(
                        f"{out} is not visible from worker {result.worker}: --out must be a folder every worker of "
                        "the cluster sees at the same path (a shared filesystem)"
                    )
                on_result(result)
                submit(next_trial(len(running)))
        finally:
            _stop(client, running, embedded=cluster.scheduler is None)


def _check_gpus(parallel: int | None, device: str) -> bool:
    """Whether trials on an embedded cluster train on CUDA: then each needs a GPU of its own."""
    import torch

    from training.run.device import pick_device

    if pick_device(device).type != "cuda":
        return False
    count = torch.cuda.device_count()
    if (parallel or 1) > count:
        raise MuzarrError(f"--parallel {parallel} with --device {device} needs {parallel} GPUs, one per trial; this "
                          f"machine has {count}: use --parallel {count}, or --scheduler with workers on other machines")  # fmt: skip
    return True


def _stop(client, running: dict, *, embedded: bool) -> None:
    """Close the client; trials still training stop with their workers (a Dask task cannot be
    cancelled once it runs, and a trial left training would meet its own continuation)."""
    if running and not embedded:
        keys = {future.key for future in running}
        busy = [w for w, tasks in client.processing().items() if keys & set(tasks)]
        if busy:
            try:
                client.restart_workers(busy, timeout=30)
            except Exception:  # noqa: BLE001, S110 - a worker without a nanny is shut down: nothing to wait for
                pass
    close_client(client)

