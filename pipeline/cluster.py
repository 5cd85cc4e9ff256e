"""The Dask client a build runs on: an embedded ``LocalCluster`` or an existing scheduler."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.errors import MuzarrError


class PrivateNumbaCache(WorkerPlugin):
    """Worker plugin: each worker process caches numba code in a folder of its own, and runs
    its codecs on one thread.

    librosa compiles with ``cache=True``; worker processes that compile the same function at
    once corrupt a shared cache and later processes crash on it (librosa #1998, numba #10128).
    """

    name = "muzarr-private-numba-cache"

    def setup(self, worker) -> None:
        import tempfile

        logging.getLogger("distributed.worker").addFilter(ReportedByTheDriver())

        # A fresh folder, never a reused one: a worker killed while writing its cache (a build
        # stopped with SIGKILL) would leave a torn entry to the next process given the same name.
        folder = self._folder = tempfile.mkdtemp(prefix="muzarr-numba-")
        os.environ["NUMBA_CACHE_DIR"] = folder
        numba = sys.modules.get("numba")
        if numba is not None:  # already imported: its config was read, so set it there too
            numba.config.CACHE_DIR = folder
        # One core per worker process: codec threads inside a worker would only fight the
        # other workers for the same cores.
        import numcodecs.blosc
        import zarr

        numcodecs.blosc.set_nthreads(1)
        zarr.config.set({"threading.max_workers": 1})
        # Import the feature code now, while the cluster starts, not inside the first batch.
        import librosa.filters  # noqa: F401 - the mel filter banks (librosa imports lazily)
        import scipy.fft  # noqa: F401

        import pipeline.batch  # noqa: F401 - run_batch and everything it imports
        from pipeline.features import load_all

        load_all()

    def teardown(self, worker) -> None:
        import shutil

        shutil.rmtree(getattr(self, "_folder", ""), ignore_errors=True)


class ReportedByTheDriver(logging.Filter):
    """Drops the worker log records of failures the build's driver reports itself, in one line:
    a batch, first-clip check or sweep-trial task that raised ("Compute Failed", with the task's traceback,
    e.g. a full disk) and
    a heartbeat cut off because the scheduler closed first (the embedded cluster shutting down;
    a scheduler lost mid-build fails the driver's own connection too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from distributed.comm import CommClosedError

        if str(record.msg).startswith("Compute Failed"):
            return not (record.args and str(record.args[0]).startswith(("muzarr-batch-", "muzarr-trial-", "muzarr-preflight-")))
        if str(record.msg).startswith("Failed to communicate with scheduler during heartbeat"):
            return not (record.exc_info and isinstance(record.exc_info[1], CommClosedError))
        return True


@contextmanager
def deferred_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C while a build drives its cluster is noted (the event is set), not raised wherever the
    main thread is: a KeyboardInterrupt inside one of distributed's blocking calls makes it log
    tracebacks of its own (a cancel callback that fails, keys it cannot gather). The caller raises
    KeyboardInterrupt itself at a point of its choosing, then closes the cluster."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit
        return
    previous = signal.signal(signal.SIGINT, lambda *_: hit.set())
    try:
        yield hit
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread: threads started meanwhile inherit the mask, and so do the
    processes they start (the mask survives fork and exec). A terminal's Ctrl-C goes to the
    whole process group; this way it interrupts the driver only, which closes the cluster,
    instead of every worker printing its own KeyboardInterrupt traceback."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    from multiprocessing import resource_tracker

    # Started from inside the block, multiprocessing's resource tracker would unblock SIGINT
    # in the thread that starts it (the cluster's event loop): start it first. A worker killed
    # in the middle of a task (a sweep trial has no other way to stop) leaves its codec locks to
    # the tracker, which removes them and warns at exit: two lines of noise after a Ctrl-C.
    warnings = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (warnings, "ignore:resource_tracker:UserWarning")))
    try:
        resource_tracker.ensure_running()
    finally:
        if warnings is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = warnings
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a Ctrl-C held back meanwhile is raised here


def as_they_finish(finished, interrupted: threading.Event) -> Iterator:
    """The futures of ``finished`` (an ``as_completed``) as they finish; KeyboardInterrupt once
    ``interrupted`` is set (Ctrl-C, noted by :func:`deferred_interrupt`)."""
    while not finished.is_empty():
        if interrupted.is_set():
            raise KeyboardInterrupt
        ready = finished.next_batch(block=False)
        if not ready:
            time.sleep(0.05)
        yield from ready
    if interrupted.is_set():
        raise KeyboardInterrupt


def check_scheduler_address(address: str) -> str:
    """``address`` if it is a Dask scheduler address (``tcp://host:8786``, ``host:8786``, ``tls://...``), else one
    MuzarrError: checked before a build or sweep starts anything (Dask's own parse fails in a traceback)."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, place = parse_address(address, strict=False)
        if scheme not in backends:
            raise ValueError(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):
            host, port = parse_host_port(place)
            if not host or not 0 < port < 65536:
                raise ValueError(place)
    except (ValueError, TypeError):
        raise MuzarrError(f"--scheduler {address!r} is not a Dask scheduler address like tcp://host:8786") from None
    return address


def make_client(*, workers: int | None = None, scheduler: str | None = None):
    """A Dask client: attached to ``scheduler`` if given (one line if it does not answer within 20 s), else an
    embedded ``LocalCluster``."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        check_scheduler_address(scheduler)
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise MuzarrError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
        client.register_plugin(PrivateNumbaCache())
        return client
    import dask

    cluster = None
    try:
        # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also turns off
        # glibc's adaptive mmap threshold: every large numpy temporary is then mmapped,
        # page-faulted and unmapped again, and a batch runs 1.75x slower (docs/benchmarks.md).
        # A batch allocates and frees the same sizes over and over: glibc's defaults reuse them.
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
            _sigint_blocked(),  # the cluster's event loop thread, and so every worker process
        ):
            cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # a free port: builds side by side must not fight over 8787
                silence_logs=logging.ERROR,
                # Single-threaded numerics per worker process: the workers are the parallelism.
                env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
            )
        client = Client(cluster)
        client.register_plugin(PrivateNumbaCache())
    except BaseException:  # a Ctrl-C while starting: no cluster left behind
        if cluster is not None:
            cluster.close()
        raise
    return client


def close_client(client) -> None:
    """Close ``client`` and the cluster it started (an embedded one)."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()
