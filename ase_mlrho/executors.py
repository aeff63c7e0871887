"""Executors of block tasks: serial (in this process), a local process pool, or Dask distributed.

Every executor runs the same block function (:func:`ase_mlrho.blocks.predict_block`) with one torch
thread per worker, so with a fixed seed the results are bit-for-bit identical whatever the executor.
Task functions live at module level so that they pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .blocks import Block, ChunkPlan, Job, build_context, cached_context, context_for_token, predict_block
from .sinks import rescale_block_zarr, write_block_zarr
from .threads import torch_threads

__all__ = ["ExecutorSettings", "Executor"]


@dataclass(frozen=True)
class ExecutorSettings:
    """Where the blocks run: ``serial``, ``processes`` (``workers`` local processes) or ``dask``
    (``dask_address`` of a running scheduler, e.g. ``tcp://host:8786``; None starts a LocalCluster
    with ``workers`` single-threaded worker processes)."""

    kind: str = "serial"
    workers: int = 1
    dask_address: str | None = None

    def __post_init__(self):
        if self.kind not in ("serial", "processes", "dask"):
            raise ValueError(f"executor must be serial, processes or dask, got {self.kind!r}")
        if int(self.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


# ---------------------------------------------------------------- task functions (module level: picklable)
def _task_predict(job_or_token, index: int, zarr_path: str | None):
    """A worker task: predict block ``index``; write it to the store if there is one (then only
    the statistics travel back), else return the arrays."""
    ctx = cached_context(job_or_token) if isinstance(job_or_token, Job) else context_for_token(job_or_token)
    block = predict_block(ctx, index)
    if zarr_path is not None:
        write_block_zarr(zarr_path, ctx.job.plan, block)
        return Block(index, None, None, None, block.stats)
    return block


def _task_rescale(plan: ChunkPlan, index: int, zarr_path: str, factor: float) -> tuple[int, bytes]:
    return rescale_block_zarr(zarr_path, plan, index, factor)


def _process_init(job: Job) -> None:
    """Process-pool initializer: build the worker's context once (the job travels once per worker)."""
    cached_context(job)


# ====================================================================== executors
class Executor:
    """Runs block tasks and yields their results as they complete (serial: in order). At most
    ``2 x workers`` tasks are in flight, so the driver's memory stays bounded too."""

    def __init__(self, settings: ExecutorSettings, job: Job):
        self.settings, self.job = settings, job
        self._pool = self._client = self._cluster = self._job_future = None
        self._ctx = None

    def __enter__(self):
        kind = self.settings.kind
        if kind == "processes":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.settings.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_process_init, initargs=(self.job,))
        elif kind == "dask":
            from distributed import Client, LocalCluster

            if self.settings.dask_address:
                self._client = Client(self.settings.dask_address)
            else:
                import dask

                # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which fixes glibc's mmap
                # threshold at 128 kB: every block temporary is then a fresh mmap, and the page faults
                # doubled the CPU time of a prediction (measured: 4.4 M vs 0.4 M faults, 82 s vs 42 s).
                # Unset it for the workers of this LocalCluster (a remote cluster: set it to null in the
                # workers' dask config, distributed.nanny.pre-spawn-environ).
                with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                    self._cluster = LocalCluster(n_workers=self.settings.workers, threads_per_worker=1,
                                                 processes=True, dashboard_address=None, silence_logs=40)
                self._client = Client(self._cluster)
            self._job_future = self._client.scatter(self.job, broadcast=True, hash=False)
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(wait=exc[0] is None, cancel_futures=True)
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        return False

    @property
    def parallelism(self) -> int:
        if self.settings.kind == "serial":
            return 1
        if self._client is not None and self.settings.dask_address:
            return max(1, sum(self._client.nthreads().values()))
        return self.settings.workers

    def predict(self, indices, zarr_path: str | None) -> Iterator[Block]:
        if self.settings.kind == "serial":
            if self._ctx is None:
                self._ctx = build_context(self.job)
            for i in indices:
                with torch_threads(1):
                    block = predict_block(self._ctx, i)
                if zarr_path is not None:
                    write_block_zarr(zarr_path, self.job.plan, block)
                    block = Block(i, None, None, None, block.stats)
                yield block
            return
        head = self._job_future if self.settings.kind == "dask" else self.job.token
        yield from self._map(_task_predict, [(head, int(i), zarr_path) for i in indices])

    def rescale(self, indices, zarr_path: str, factor: float) -> Iterator[tuple[int, bytes]]:
        if self.settings.kind == "serial":
            for i in indices:
                yield rescale_block_zarr(zarr_path, self.job.plan, int(i), factor)
            return
        yield from self._map(_task_rescale, [(self.job.plan, int(i), zarr_path, factor) for i in indices])

    def _map(self, fn, arg_list) -> Iterator:
        window = 2 * self.parallelism
        pending = list(reversed(arg_list))
        if self._pool is not None:
            from concurrent.futures import FIRST_COMPLETED, wait

            running = set()
            while pending or running:
                while pending and len(running) < window:
                    running.add(self._pool.submit(fn, *pending.pop()))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        else:
            from distributed import as_completed

            first = [self._client.submit(fn, *pending.pop(), pure=False) for _ in range(min(window, len(pending)))]
            ac = as_completed(first)
            for f in ac:
                result = f.result()
                f.release()
                if pending:
                    ac.add(self._client.submit(fn, *pending.pop(), pure=False))
                yield result
