"""The Dask client a build runs on: an embedded ``LocalCluster`` or an existing scheduler."""

from __future__ import annotations

import logging
import os
import sys

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

        folder = os.path.join(tempfile.gettempdir(), f"muzarr-numba-{os.getpid()}")
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


def make_client(*, workers: int | None = None, scheduler: str | None = None):
    """A Dask client: attached to ``scheduler`` if given, else an embedded ``LocalCluster``."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise MuzarrError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
    else:
        import dask

        # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also turns off
        # glibc's adaptive mmap threshold: every large numpy temporary is then mmapped,
        # page-faulted and unmapped again, and a batch runs 1.75x slower (docs/benchmarks.md).
        # A batch allocates and frees the same sizes over and over: glibc's defaults reuse them.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
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
    return client
