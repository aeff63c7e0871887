"""Streaming prediction of whole density fields: grid chunks -> descriptors -> model -> sink.

How a prediction runs
---------------------
1. The grid (SPARC's rule, :mod:`ase_mlrho.grid`) is cut into rectangular blocks of about
   ``chunk_points`` nodes (:class:`ChunkPlan`): whole z columns, then whole y-z planes where the
   chunk is large enough. A block is the unit of work *and* the chunk of the zarr arrays.
2. Each block is an independent task: its points go through the descriptors and the model in
   batches of ``batch_points`` (cache-sized: the network runs twice as fast on 4 k points as on
   256 k), giving the raw mean density and the aleatoric and epistemic sigmas. The weight
   sets are drawn once from the seed, so every block sees the same network. Peak memory is set by
   the block and the batch, never by the cell.
3. Each task also returns a few sums (raw integral, clipped integral, sigma sums and maxima, the
   number of out-of-distribution points). Summed in block order -- a fixed order, whatever the
   executor -- they give the renormalisation factor ``N_e / integral(max(rho, 0))``.
4. The sink receives the blocks: an in-memory array (small cells; also the source of ``.cube``,
   ``.dens`` and ``.npz`` files) or a zarr store written block by block by the workers. Because the
   factor is known only when every block is done, the zarr store first holds the clipped raw
   prediction, and a cheap second pass (again one task per block) multiplies it by the factor;
   a per-block state array (0 pending, 1 raw, 2 renormalised) makes both passes resumable.

Executors: ``serial`` (in this process), ``processes`` (a local process pool, spawn start) and
``dask`` (Dask distributed: a running scheduler at ``dask_address``, else a LocalCluster). Every
executor runs the same block function with one torch thread per worker, so with a fixed seed the
results are bit-for-bit identical for the same chunk size whatever the executor, and equal to
float32 round-off (<= 1e-6 relative) for any chunk size.

Units: everything here is Bohr and electrons/Bohr^3 (SPARC's units). Zarr stores hold float32
(the network computes in float32); in-memory fields are float64.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .descriptors import Descriptors
from .local import LOCAL_MIN_ATOMS, LocalDescriptors
from .grid import Grid, InvalidStructureError
from .threads import torch_threads

__all__ = [
    "FieldPrediction", "predict_field", "renormalise", "InferenceSettings", "ExecutorSettings", "ChunkPlan",
    "Structure", "PredictionSummary", "PredictionRun", "run_prediction", "open_prediction", "verify_prediction",
    "OutputError", "ZARR_FORMAT", "DEFAULT_CHUNK_POINTS", "OOD_WARNING_FRACTION", "output_sink", "FileSink",
    "SinkInput", "CORE_SINKS", "CUBE_SINK", "NPZ_SINK",
]

#: default points per block (task and zarr chunk): 2^18 points = 1 MiB of float32 per array
DEFAULT_CHUNK_POINTS = 2 ** 18
#: default points per model call inside a block: small enough for the caches (measured on 2 cores,
#: 3x64 network, 8 samples: 53 k points/s per core at 4096, 38 k at 16384, 25 k at 65536)
DEFAULT_BATCH_POINTS = 2 ** 12
#: a structure is flagged out of distribution when more than this fraction of its points has an
#: epistemic sigma above the model's validation p99.9 (10x the rate seen on validation data)
OOD_WARNING_FRACTION = 0.01
#: in-memory fields larger than this many bytes are backed by temporary files (np.memmap)
MEMMAP_THRESHOLD_BYTES = 1 << 30
ZARR_FORMAT = "ase-mlrho-density"
ZARR_FORMAT_VERSION = 1
ARRAY_NAMES = ("density", "sigma_total", "sigma_aleatoric", "sigma_epistemic")
#: columns of the per-block statistics (all extensive sums except the max)
STAT_COLUMNS = ("points", "sum_raw", "sum_clipped", "sum_sigma_total", "max_sigma_total", "n_ood")


class OutputError(ValueError):
    """An output path that cannot be written (unknown format, missing directory, not writable, ...)."""


# ====================================================================== settings and inputs
@dataclass(frozen=True)
class InferenceSettings:
    """What to predict and how to cut it up.

    n_samples : posterior weight samples (None: the model's default; 0: posterior mean, no epistemic sigma).
    seed : seed of the weight samples; same seed -> bit-identical field.
    chunk_points : points per block (task, zarr chunk); sets peak memory together with batch_points.
    batch_points : points per model call inside a block.
    mesh_spacing_bohr : grid spacing (None: the model's, i.e. the spacing of its training data).
    neighbour_tables : ``"structure"`` -- every worker keeps neighbour tables of all atoms (fastest
        for small cells); ``"block"`` -- each block cuts out the atoms near it and builds tables of
        those only (:mod:`ase_mlrho.local`: worker memory and set-up independent of the cell size);
        ``"auto"`` -- ``"block"`` for periodic cells of at least ``LOCAL_MIN_ATOMS`` atoms.
        Both give the same descriptors (to rounding, 1e-13 Bohr).
    """

    n_samples: int | None = None
    seed: int = 0
    chunk_points: int = DEFAULT_CHUNK_POINTS
    batch_points: int = DEFAULT_BATCH_POINTS
    mesh_spacing_bohr: float | None = None
    neighbour_tables: str = "auto"

    def __post_init__(self):
        if self.neighbour_tables not in ("auto", "structure", "block"):
            raise ValueError(f"neighbour_tables must be auto, structure or block, got {self.neighbour_tables!r}")
        if self.n_samples is not None and int(self.n_samples) < 0:
            raise ValueError(f"n_samples must be >= 0, got {self.n_samples}")
        if int(self.chunk_points) < 1 or int(self.batch_points) < 1:
            raise ValueError("chunk_points and batch_points must be >= 1")
        if self.mesh_spacing_bohr is not None and not self.mesh_spacing_bohr > 0:
            raise ValueError(f"mesh_spacing_bohr must be positive, got {self.mesh_spacing_bohr}")


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


@dataclass(frozen=True, eq=False)
class Structure:
    """The atoms as plain arrays (Bohr), small and picklable: what a worker needs besides the model."""

    positions_bohr: np.ndarray
    numbers: np.ndarray
    cell_bohr: np.ndarray
    pbc: tuple[bool, bool, bool]

    @classmethod
    def from_atoms(cls, atoms) -> "Structure":
        from ase.units import Bohr

        return cls(np.array(atoms.get_positions() / Bohr, dtype=np.float64), np.array(atoms.numbers, dtype=np.int64),
                   np.array(atoms.cell, dtype=np.float64) / Bohr, tuple(bool(p) for p in atoms.pbc))

    @property
    def natoms(self) -> int:
        return int(len(self.numbers))

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.positions_bohr, self.numbers, self.cell_bohr, np.array(self.pbc)):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class ChunkPlan:
    """Rectangular blocks of a grid of ``shape``, each ``block`` nodes (the last ones clipped).

    Blocks are numbered in C order of the block grid, so block order follows the file order of the
    grid (x slowest). Points inside a block are in C order too (z fastest).
    """

    shape: tuple[int, int, int]
    block: tuple[int, int, int]

    @classmethod
    def for_grid(cls, shape, chunk_points: int) -> "ChunkPlan":
        """Blocks of at most ``chunk_points`` nodes: whole z columns, then whole planes, if they fit."""
        nx, ny, nz = (int(n) for n in shape)
        chunk_points = int(chunk_points)
        if chunk_points < 1:
            raise ValueError(f"chunk_points must be >= 1, got {chunk_points}")
        def balanced(n, b):  # the same number of pieces, but as equal as possible (no thin last block)
            return math.ceil(n / math.ceil(n / b))

        bz = balanced(nz, min(nz, chunk_points))
        by = balanced(ny, min(ny, max(1, chunk_points // bz)))
        bx = balanced(nx, min(nx, max(1, chunk_points // (by * bz))))
        return cls((nx, ny, nz), (bx, by, bz))

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block))

    @property
    def n_chunks(self) -> int:
        return int(np.prod(self.counts))

    def slices(self, index: int) -> tuple[slice, slice, slice]:
        c = np.unravel_index(int(index), self.counts)
        return tuple(slice(int(ci) * b, min((int(ci) + 1) * b, n)) for ci, b, n in zip(c, self.block, self.shape))

    def block_shape(self, index: int) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.slices(index))

    def flat_indices(self, index: int) -> np.ndarray:
        """Flat (file-order) indices of the block's nodes, in C order of the block."""
        sx, sy, sz = self.slices(index)
        _, ny, nz = self.shape
        i = np.arange(sx.start, sx.stop, dtype=np.int64)[:, None, None]
        j = np.arange(sy.start, sy.stop, dtype=np.int64)[None, :, None]
        k = np.arange(sz.start, sz.stop, dtype=np.int64)[None, None, :]
        return ((i * ny + j) * nz + k).reshape(-1)


# ====================================================================== the job and one block
@dataclass(frozen=True, eq=False)
class _Job:
    """Everything a worker needs, sent once per worker (a few hundred kB plus 32 bytes per atom)."""

    model: object  # MLRhoModel; pickled with its network
    structure: Structure
    cell_bohr: np.ndarray
    grid_shape: tuple[int, int, int]
    pbc: tuple[bool, bool, bool]
    plan: ChunkPlan
    n_samples: int
    seed: int
    batch_points: int
    ood_threshold_e_per_bohr3: float | None
    token: str
    local_tables: bool = False

    @property
    def grid(self) -> Grid:
        return Grid(self.cell_bohr, self.grid_shape, self.pbc)


def _model_digest(model) -> str:
    sha = model.metadata.get("weights_sha256")
    if sha:
        return sha
    from .models import _tensors, weights_sha256

    return weights_sha256(_tensors(model.network))


def _make_job(model, structure: Structure, grid: Grid, settings: InferenceSettings) -> _Job:
    n_samples = model.n_samples if settings.n_samples is None else int(settings.n_samples)
    plan = ChunkPlan.for_grid(grid.shape, settings.chunk_points)
    local = settings.neighbour_tables == "block" or (
        settings.neighbour_tables == "auto" and structure.natoms >= LOCAL_MIN_ATOMS)
    local = local and all(structure.pbc) and all(grid.pbc)
    h = hashlib.sha256()
    for part in (_model_digest(model), structure.digest(), grid.cell_bohr.tobytes(), repr(grid.shape),
                 repr(grid.pbc), repr(plan.block), n_samples, settings.seed, settings.batch_points, local):
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return _Job(model, structure, grid.cell_bohr, grid.shape, grid.pbc, plan, n_samples, int(settings.seed),
                int(settings.batch_points), model.epistemic_sigma_validation_max, h.hexdigest(), local)


@dataclass(eq=False)
class _Context:
    """A worker's read-only state for one job: the model, the descriptor tables, the weight sets."""

    job: _Job
    grid: Grid
    descriptors: Descriptors | LocalDescriptors
    weight_sets: list

    def block_source(self, index: int):
        """What computes the descriptors of block ``index``: the structure-wide tables, or the
        tables of the atoms around the block."""
        if isinstance(self.descriptors, LocalDescriptors):
            return self.descriptors.grid_block(self.grid, self.job.plan.slices(index))
        return self.descriptors


def _build_context(job: _Job) -> _Context:
    s = job.structure
    kind = LocalDescriptors if job.local_tables else Descriptors
    desc = kind(job.model.spec, s.positions_bohr, s.numbers, s.cell_bohr, s.pbc)
    weights = job.model.network.sample_weight_sets(job.n_samples, job.seed)
    return _Context(job, job.grid, desc, weights)


#: per-process memo of worker contexts, keyed by job token (read-only data; at most two jobs kept)
_CONTEXTS: dict[str, _Context] = {}


def _cached_context(job: _Job) -> _Context:
    ctx = _CONTEXTS.get(job.token)
    if ctx is None:
        import torch

        torch.set_num_threads(1)  # worker processes: one thread each, the same numerics as serial
        while len(_CONTEXTS) >= 2:
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        ctx = _CONTEXTS[job.token] = _build_context(job)
    return ctx


@dataclass(frozen=True, eq=False)
class _Block:
    """One predicted block: raw (unclipped, un-renormalised) mean and sigmas, e/Bohr^3, float64,
    and its statistics (:data:`STAT_COLUMNS`, with the grid's dV not yet applied)."""

    index: int
    mean_raw: np.ndarray | None
    sigma_aleatoric: np.ndarray | None
    sigma_epistemic: np.ndarray | None
    stats: np.ndarray


def _predict_block(ctx: _Context, index: int) -> _Block:
    job = ctx.job
    flat = job.plan.flat_indices(index)
    n = flat.size
    mean, ale, epi = np.empty(n), np.empty(n), np.empty(n)
    source = ctx.block_source(index)
    for b0 in range(0, n, job.batch_points):
        b1 = min(b0 + job.batch_points, n)
        d = source.compute(ctx.grid.points_bohr_at(flat[b0:b1]))
        p = job.model.predict(d, weight_sets=ctx.weight_sets)
        mean[b0:b1], ale[b0:b1], epi[b0:b1] = p.mean, p.sigma_aleatoric, p.sigma_epistemic
    sig_total = np.sqrt(ale * ale + epi * epi)
    thr = job.ood_threshold_e_per_bohr3
    stats = np.array([n, mean.sum(), np.clip(mean, 0.0, None).sum(), sig_total.sum(), sig_total.max(),
                      0 if thr is None else np.count_nonzero(epi > thr)], dtype=np.float64)
    shape = job.plan.block_shape(index)
    return _Block(index, mean.reshape(shape), ale.reshape(shape), epi.reshape(shape), stats)


# ====================================================================== zarr store
def _zarr_arrays(path: str) -> dict:
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    return {name: group[name] for name in ARRAY_NAMES}


_ZARR_HANDLES: dict[str, dict] = {}  # per-process memo of opened arrays (metadata reads are not free)


def _zarr_handles(path: str) -> dict:
    if path not in _ZARR_HANDLES:
        if len(_ZARR_HANDLES) > 4:
            _ZARR_HANDLES.clear()
        _ZARR_HANDLES[path] = _zarr_arrays(path)
    return _ZARR_HANDLES[path]


def _write_block_zarr(path: str, plan: ChunkPlan, block: _Block) -> None:
    """Write a block's clipped raw prediction into the store (float32)."""
    arrays = _zarr_handles(path)
    sl = plan.slices(block.index)
    arrays["sigma_aleatoric"][sl] = block.sigma_aleatoric.astype(np.float32)
    arrays["sigma_epistemic"][sl] = block.sigma_epistemic.astype(np.float32)
    total = np.sqrt(block.sigma_aleatoric ** 2 + block.sigma_epistemic ** 2)
    arrays["sigma_total"][sl] = total.astype(np.float32)
    arrays["density"][sl] = np.clip(block.mean_raw, 0.0, None).astype(np.float32)


def _rescale_block_zarr(path: str, plan: ChunkPlan, index: int, factor: float) -> tuple[int, bytes]:
    """Second pass: multiply the block of every array by the renormalisation factor, in place.
    Returns the block index and the sha256 of its final bytes (for :func:`verify_prediction`)."""
    arrays = _zarr_handles(path)
    sl = plan.slices(index)
    blocks = {}
    for name in ARRAY_NAMES:
        a = arrays[name]
        blocks[name] = (a[sl].astype(np.float64) * factor).astype(np.float32)
        a[sl] = blocks[name]
    return index, _block_digest(blocks)


def _block_digest(blocks: dict) -> bytes:
    h = hashlib.sha256()
    for name in ARRAY_NAMES:
        h.update(np.ascontiguousarray(blocks[name], dtype="<f4").tobytes())
    return h.digest()


# ---------------------------------------------------------------- task functions (module level: picklable)
def _task_predict(job_or_token, index: int, zarr_path: str | None):
    """A worker task: predict block ``index``; write it to the store if there is one (then only
    the statistics travel back), else return the arrays."""
    ctx = _cached_context(job_or_token) if isinstance(job_or_token, _Job) else _CONTEXTS[job_or_token]
    block = _predict_block(ctx, index)
    if zarr_path is not None:
        _write_block_zarr(zarr_path, ctx.job.plan, block)
        return _Block(index, None, None, None, block.stats)
    return block


def _task_rescale(plan: ChunkPlan, index: int, zarr_path: str, factor: float) -> tuple[int, bytes]:
    return _rescale_block_zarr(zarr_path, plan, index, factor)


def _process_init(job: _Job) -> None:
    """Process-pool initializer: build the worker's context once (the job travels once per worker)."""
    _cached_context(job)


# ====================================================================== executors
class _Executor:
    """Runs block tasks and yields their results as they complete (serial: in order). At most
    ``2 x workers`` tasks are in flight, so the driver's memory stays bounded too."""

    def __init__(self, settings: ExecutorSettings, job: _Job):
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

    def predict(self, indices, zarr_path: str | None) -> Iterator[_Block]:
        if self.settings.kind == "serial":
            if self._ctx is None:
                self._ctx = _build_context(self.job)
            for i in indices:
                with torch_threads(1):
                    block = _predict_block(self._ctx, i)
                if zarr_path is not None:
                    _write_block_zarr(zarr_path, self.job.plan, block)
                    block = _Block(i, None, None, None, block.stats)
                yield block
            return
        head = self._job_future if self.settings.kind == "dask" else self.job.token
        yield from self._map(_task_predict, [(head, int(i), zarr_path) for i in indices])

    def rescale(self, indices, zarr_path: str, factor: float) -> Iterator[tuple[int, bytes]]:
        if self.settings.kind == "serial":
            for i in indices:
                yield _rescale_block_zarr(zarr_path, self.job.plan, int(i), factor)
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


# ====================================================================== results
@dataclass(frozen=True, eq=False)
class FieldPrediction:
    """A predicted density field on a grid, electrons/Bohr^3, float64 arrays of ``grid.shape``.

    ``density`` is clipped at zero and renormalised to ``n_electrons``; the sigmas are scaled by
    the same factor. ``electrons_raw`` is the integral of the raw prediction (a diagnostic).
    """

    grid: Grid
    density: np.ndarray
    sigma_aleatoric: np.ndarray
    sigma_epistemic: np.ndarray
    n_electrons: float
    electrons_raw: float
    renormalisation_factor: float = 1.0

    @property
    def sigma_total(self) -> np.ndarray:
        return np.sqrt(self.sigma_aleatoric ** 2 + self.sigma_epistemic ** 2)


@dataclass(frozen=True)
class PredictionSummary:
    """The figures of one prediction run (what ``mlrho predict --json`` prints)."""

    natoms: int
    grid_shape: tuple[int, int, int]
    n_points: int
    n_electrons: float
    electrons_raw: float
    renormalisation_factor: float
    seconds: float
    points_per_second: float
    sigma_total_max_e_per_bohr3: float
    sigma_total_mean_e_per_bohr3: float
    ood_fraction: float | None
    ood_threshold_e_per_bohr3: float | None
    output: str | None
    chunks: int
    chunks_resumed: int
    executor: str
    workers: int

    @property
    def looks_out_of_distribution(self) -> bool:
        return self.ood_fraction is not None and self.ood_fraction > OOD_WARNING_FRACTION

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid_shape"] = list(self.grid_shape)
        return d


@dataclass(frozen=True, eq=False)
class PredictionRun:
    """A summary, and the field when it was assembled in memory (memory, .cube, .dens, .npz)."""

    summary: PredictionSummary
    field: FieldPrediction | None = None


def renormalise(density: np.ndarray, dv_bohr3: float, n_electrons: float) -> tuple[np.ndarray, float]:
    """Clip at zero and scale so that sum * dV = n_electrons. Returns (density, factor)."""
    clipped = np.clip(density, 0.0, None)
    total = float(clipped.sum(dtype=np.float64) * dv_bohr3)
    factor = _factor(total, n_electrons)
    return clipped * factor, factor


def _factor(electrons_clipped: float, n_electrons: float) -> float:
    if not electrons_clipped > 0:
        raise ValueError("the predicted density is zero or negative everywhere, so it cannot be renormalised: "
                         "the structure is far outside the model's training data")
    return float(n_electrons) / electrons_clipped


# ====================================================================== outputs
@dataclass(frozen=True)
class FileSink:
    """An output format written in one piece once the whole field is known (the zarr store, written block by
    block while the prediction runs, is the other kind of output).

    ``suffixes``: file names it takes; ``fields``: the arrays it needs (``density`` alone, or with the two
    sigmas); ``write(path, output)``: writes the file atomically from a :class:`SinkInput`.
    The core provides cube and npz (:data:`CORE_SINKS`); a DFT code's own format comes from its bridge
    (SPARC's ``.dens``: :data:`sparc_bridge.density_file.DENS_SINK`) and is passed to :func:`run_prediction`.
    """

    name: str
    suffixes: tuple[str, ...]
    fields: tuple[str, ...]
    write: Callable[[Path, "SinkInput"], Path]


@dataclass(frozen=True, eq=False)
class SinkInput:
    """What a :class:`FileSink` writes from: the model, the structure (ase.Atoms and its :class:`Structure`),
    the grid, the renormalised arrays it asked for (e/Bohr^3) and the run's attributes."""

    model: object
    atoms: object
    structure: "Structure"
    grid: Grid
    arrays: dict
    renormalisation_factor: float
    electrons_raw: float
    attrs: dict


ZARR_SUFFIX = ".zarr"
SIGMA_FIELDS = ("density", "sigma_aleatoric", "sigma_epistemic")


def output_sink(path, sinks: tuple[FileSink, ...] | None = None) -> FileSink | str:
    """The output for a path, from its suffix: ``"zarr"`` (the chunked store) or one of ``sinks``
    (default :data:`CORE_SINKS`); :class:`OutputError` naming the formats there are."""
    sinks = CORE_SINKS if sinks is None else sinks
    name = str(path).rstrip("/")
    if name.endswith(ZARR_SUFFIX):
        return "zarr"
    for sink in sinks:
        if name.endswith(sink.suffixes):
            return sink
    known = ", ".join([ZARR_SUFFIX] + [x for sink in sinks for x in sink.suffixes])
    raise OutputError(f"output {path}: unknown format; use a name ending in {known}")


def check_output(path, overwrite: bool = False, sinks: tuple[FileSink, ...] | None = None) -> tuple[FileSink | str, Path]:
    """Refuse an output early (before any work): unknown format, missing or read-only directory,
    or an existing output of any format (unless ``overwrite``). Returns (sink, path), the sink as in
    :func:`output_sink`."""
    kind = output_sink(path, sinks)
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"cannot write {path}: directory {parent} {why}")
    try:  # probe by writing: os.access says yes to root even on read-only mounts
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: directory {parent} is not writable ({exc.strerror})") from None
    if path.is_dir() and kind != "zarr":
        raise OutputError(f"cannot write {path}: it is a directory")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; remove it, choose another name, or pass --overwrite")
    if path.exists() and kind != "zarr" and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {path}: the file is not writable")
    return kind, path


def _partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _model_info(model) -> dict:
    meta = model.metadata
    return {"name": model.name, "weights_sha256": meta.get("weights_sha256"),
            "package_version": meta.get("package_version"), "descriptor_spec": model.spec.to_dict(),
            "species": list(model.species), "valence_electrons": model.valence_electrons,
            "mesh_spacing_bohr": model.mesh_spacing_bohr,
            "epistemic_sigma_validation_p999_e_per_bohr3": model.epistemic_sigma_validation_max}


def _open_zarr_store(path: Path, job: _Job, attrs: dict):
    """Create ``path.partial`` or reopen it to resume the same job. Returns (group, state array)."""
    import zarr

    partial = _partial_path(path)
    if partial.exists():
        try:
            group = zarr.open_group(str(partial), mode="r+")
            token = group.attrs.get("job_token")
        except Exception:  # noqa: BLE001 - an unreadable leftover is reported below
            token = None
        if token != job.token:
            raise OutputError(
                f"{partial} holds an interrupted run of a different prediction (other structure, model, seed, "
                "samples or chunking); remove it to start afresh, or rerun the same command to resume it")
        return group, group["chunk_state"]
    plan = job.plan
    group = zarr.open_group(str(partial), mode="w")
    for name in ARRAY_NAMES:
        a = group.create_array(name, shape=plan.shape, chunks=plan.block, dtype="float32", fill_value=0.0)
        a.attrs.update({"units": "electrons/Bohr^3", "long_name": name.replace("_", " ")})
    n = plan.n_chunks
    state = group.create_array("chunk_state", shape=(n,), chunks=(min(n, 65536),), dtype="uint8", fill_value=0)
    state.attrs["meaning"] = "per block: 0 pending, 1 raw prediction written, 2 renormalised"
    stats = group.create_array("chunk_stats", shape=(n, len(STAT_COLUMNS)), chunks=(min(n, 16384), len(STAT_COLUMNS)),
                               dtype="float64", fill_value=0.0)
    stats.attrs["columns"] = list(STAT_COLUMNS)
    sha = group.create_array("chunk_sha256", shape=(n, 32), chunks=(min(n, 16384), 32), dtype="uint8", fill_value=0)
    sha.attrs["meaning"] = ("per block: sha256 of the final float32 little-endian bytes of density, sigma_total, "
                            "sigma_aleatoric, sigma_epistemic (C order), concatenated")
    pos = group.create_array("positions_bohr", shape=(job.structure.natoms, 3), dtype="float64")
    pos[:] = job.structure.positions_bohr
    num = group.create_array("numbers", shape=(job.structure.natoms,), dtype="int64")
    num[:] = job.structure.numbers
    group.attrs.update({**attrs, "job_token": job.token, "complete": False})
    return group, state


def open_prediction(path) -> dict:
    """Read a zarr prediction store into memory (small stores; big ones: open with ``zarr`` and
    slice). Returns a dict of float32 arrays (e/Bohr^3) and ``attrs``. Refuses incomplete stores."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if attrs.get("format") != ZARR_FORMAT or not attrs.get("complete"):
        raise OutputError(f"{path} is not a complete {ZARR_FORMAT} store")
    out = {name: group[name][...] for name in ARRAY_NAMES}
    out["attrs"] = attrs
    return out


def verify_prediction(path) -> int:
    """Recompute every block's sha256 of a complete zarr store and compare it with the one recorded
    when the block was written. Returns the number of blocks checked; raises :class:`OutputError`
    naming the first corrupt block."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if attrs.get("format") != ZARR_FORMAT or not attrs.get("complete"):
        raise OutputError(f"{path} is not a complete {ZARR_FORMAT} store")
    plan = ChunkPlan(tuple(attrs["grid"]["shape"]), tuple(attrs["block_shape"]))
    recorded = group["chunk_sha256"][...]
    arrays = {name: group[name] for name in ARRAY_NAMES}
    for i in range(plan.n_chunks):
        sl = plan.slices(i)
        if _block_digest({n: a[sl] for n, a in arrays.items()}) != recorded[i].tobytes():
            raise OutputError(f"{path}: block {i} ({sl}) does not match its recorded sha256: the store is corrupt")
    return plan.n_chunks


class _Accumulator:
    """In-memory field being assembled block by block (float64; memmap-backed when large)."""

    def __init__(self, shape, names, scratch_dir: Path | None):
        self.shape = shape
        n_bytes = 8 * int(np.prod(shape)) * len(names)
        self._tmp = None
        if n_bytes > MEMMAP_THRESHOLD_BYTES and scratch_dir is not None:
            self._tmp = tempfile.mkdtemp(prefix=".mlrho-", dir=scratch_dir)
            self.arrays = {n: np.lib.format.open_memmap(os.path.join(self._tmp, n + ".npy"), "w+", np.float64, shape)
                           for n in names}
        else:
            self.arrays = {n: np.empty(shape) for n in names}

    def add(self, plan: ChunkPlan, block: _Block) -> None:
        sl = plan.slices(block.index)
        a = self.arrays
        if "density" in a:
            a["density"][sl] = np.clip(block.mean_raw, 0.0, None)
        if "sigma_aleatoric" in a:
            a["sigma_aleatoric"][sl] = block.sigma_aleatoric
        if "sigma_epistemic" in a:
            a["sigma_epistemic"][sl] = block.sigma_epistemic

    def scale(self, factor: float) -> None:
        for a in self.arrays.values():
            for i in range(a.shape[0]):  # plane by plane: no temporary of the whole field
                a[i] *= factor

    def close(self) -> None:
        if self._tmp is not None:
            self.arrays = {}
            shutil.rmtree(self._tmp, ignore_errors=True)


# ====================================================================== the driver
def run_prediction(model, atoms, output=None, settings: InferenceSettings = InferenceSettings(),
                   executor: ExecutorSettings = ExecutorSettings(), grid: Grid | None = None,
                   progress: bool = False, overwrite: bool = False,
                   on_block: Callable[[int], None] | None = None,
                   sinks: tuple[FileSink, ...] | None = None) -> PredictionRun:
    """Predict the density of ``atoms`` (ase.Atoms, Angstrom) with uncertainty, block by block.

    output : None (in memory), or a path ending in ``.zarr`` (chunked store, resumable) or in a suffix of
        one of ``sinks`` (default :data:`CORE_SINKS`: ``.cube``, ``.npz``; add
        :data:`sparc_bridge.density_file.DENS_SINK` for SPARC's ``.dens``). Files are written atomically;
        a zarr store is built as ``NAME.zarr.partial`` and renamed when complete. Rerunning the same
        prediction with the same output resumes an interrupted ``.partial`` store.
    grid : the grid (default: the model's mesh spacing, or ``settings.mesh_spacing_bohr``, on the cell).
    on_block : called with each finished block index (progress hooks; tests use it to interrupt a run).
    """
    t0 = time.perf_counter()
    structure = validate_structure(model, atoms)
    spacing = settings.mesh_spacing_bohr or model.mesh_spacing_bohr
    grid = grid or Grid.from_cell(structure.cell_bohr, spacing, structure.pbc)
    n_electrons = model.n_electrons(structure.numbers)
    sink, path = (None, None) if output is None else check_output(output, overwrite, sinks)
    job = _make_job(model, structure, grid, settings)
    plan = job.plan
    attrs = {
        "format": ZARR_FORMAT, "format_version": ZARR_FORMAT_VERSION, "units": "electrons/Bohr^3",
        "grid": {"shape": list(grid.shape), "cell_bohr": grid.cell_bohr.tolist(), "pbc": list(grid.pbc),
                 "intervals": list(grid.intervals), "dv_bohr3": grid.dv_bohr3,
                 "order": "array[i, j, k] is the node at fractional (i, j, k) / intervals; node 0 at the cell origin "
                          "(SPARC .dens order, z fastest)"},
        "model": _model_info(model), "n_samples": job.n_samples, "seed": job.seed, "chunk_points":
            int(settings.chunk_points), "batch_points": job.batch_points, "block_shape": list(plan.block),
        "n_electrons": n_electrons, "natoms": structure.natoms,
        "renormalisation": "density = max(raw, 0) * factor; the sigmas are multiplied by the same factor",
    }

    stats = np.zeros((plan.n_chunks, len(STAT_COLUMNS)))
    acc = group = state = None
    todo = list(range(plan.n_chunks))
    resumed = 0
    if sink == "zarr":
        group, state = _open_zarr_store(path, job, attrs)
        done_state = state[:]
        stats[:] = group["chunk_stats"][:]
        todo = [int(i) for i in np.flatnonzero(done_state == 0)]
        resumed = plan.n_chunks - len(todo)
        store = str(_partial_path(path))
    else:
        names = SIGMA_FIELDS if sink is None else sink.fields
        acc = _Accumulator(grid.shape, names, None if path is None else (path.parent if str(path.parent) else Path(".")))
        store = None

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=grid.n_points, initial=int(stats[:, 0].sum()), unit="pt", unit_scale=True,
                   desc="predicting", file=sys.stderr, smoothing=0.05)
    computed_points = 0
    try:
        with _Executor(executor, job) as ex:
            for block in ex.predict(todo, store):
                stats[block.index] = block.stats
                if acc is not None:
                    acc.add(plan, block)
                else:
                    group["chunk_stats"][block.index] = block.stats
                    state[block.index] = 1
                computed_points += int(block.stats[0])
                if bar is not None:
                    bar.update(int(block.stats[0]))
                if on_block is not None:
                    on_block(block.index)
            dv = grid.dv_bohr3
            totals = stats.sum(axis=0)  # in block order: the same sum whatever the executor
            electrons_raw = float(totals[1] * dv)
            try:
                factor = _factor(float(totals[2] * dv), n_electrons)
            except ValueError:
                if group is not None:  # deterministic: resuming could not help, so leave nothing behind
                    shutil.rmtree(store, ignore_errors=True)
                raise
            if group is not None:
                group.attrs.update({"renormalisation_factor": factor, "electrons_raw": electrons_raw})
                pending = [int(i) for i in np.flatnonzero(state[:] == 1)]
                for i, digest in ex.rescale(pending, store, factor):
                    group["chunk_sha256"][i] = np.frombuffer(digest, dtype=np.uint8)
                    state[i] = 2
            else:
                acc.scale(factor)
    except BaseException:
        if acc is not None:
            acc.close()
        raise
    finally:
        if bar is not None:
            bar.close()

    ood = None if job.ood_threshold_e_per_bohr3 is None else float(totals[5] / grid.n_points)
    pred = None
    if acc is not None:
        a = acc.arrays
        if "sigma_aleatoric" in a:
            pred = FieldPrediction(grid, a["density"], a["sigma_aleatoric"], a["sigma_epistemic"], n_electrons,
                                   electrons_raw, factor)
    try:
        if sink == "zarr":
            group.attrs.update({"complete": True, "ood_fraction": ood})
            if path.exists():  # --overwrite: the old store goes only now that the new one is complete
                shutil.rmtree(path)
            os.replace(_partial_path(path), path)
        elif sink is not None:
            sink.write(path, SinkInput(model, atoms, structure, grid, acc.arrays, factor, electrons_raw, attrs))
    finally:
        if isinstance(sink, FileSink) and acc._tmp is not None:  # memmap-backed: the arrays go with it
            pred = None
            acc.close()

    seconds = time.perf_counter() - t0
    summary = PredictionSummary(
        natoms=structure.natoms, grid_shape=tuple(grid.shape), n_points=grid.n_points, n_electrons=n_electrons,
        electrons_raw=electrons_raw, renormalisation_factor=factor, seconds=seconds,
        points_per_second=computed_points / seconds if seconds > 0 else float("nan"),
        sigma_total_max_e_per_bohr3=float(stats[:, 4].max() * factor),
        sigma_total_mean_e_per_bohr3=float(totals[3] / grid.n_points * factor),
        ood_fraction=ood, ood_threshold_e_per_bohr3=job.ood_threshold_e_per_bohr3,
        output=None if path is None else str(path), chunks=plan.n_chunks, chunks_resumed=resumed,
        executor=executor.kind, workers=1 if executor.kind == "serial" else executor.workers)
    return PredictionRun(summary, pred)


def validate_structure(model, atoms) -> Structure:
    """Check a structure against the model before any work; return it as :class:`Structure`.

    Refused, with a message that says what to do: no atoms, a singular or non-finite cell, NaN
    positions, elements the model does not know (:class:`UnknownSpeciesError`), atoms outside the
    box along a non-periodic direction, and a fully non-periodic structure with fewer atoms than
    the descriptor's M. Atoms outside the cell along periodic directions are fine: the field is
    periodic, only wrapped positions matter (the neighbour search wraps them). Small periodic
    cells are fine too: the descriptors see every periodic image, so a 1-atom primitive cell gives
    the field of the infinite crystal.
    """
    from ase.units import Bohr

    from .grid import validate_cell

    if len(atoms) == 0:
        raise InvalidStructureError("the structure has no atoms")
    cell_bohr = validate_cell(np.asarray(atoms.cell) / Bohr, "the structure's cell")
    model.check_species(atoms.numbers)
    s = Structure.from_atoms(atoms)
    if not np.all(np.isfinite(s.positions_bohr)):
        raise InvalidStructureError("the structure has NaN or infinite atomic positions")
    frac = s.positions_bohr @ np.linalg.inv(cell_bohr)
    for d in range(3):
        if not s.pbc[d] and (frac[:, d].min() < -1e-9 or frac[:, d].max() > 1 + 1e-9):
            raise InvalidStructureError(
                f"atoms lie outside the box along the non-periodic direction {d} (fractional coordinates "
                f"{frac[:, d].min():.3f} .. {frac[:, d].max():.3f}); the grid covers only the box: centre the atoms "
                "(atoms.center(vacuum=...)) or make that direction periodic")
    if not any(s.pbc):
        counts = {z: int(np.sum(s.numbers == z)) for z in set(s.numbers.tolist())}
        if min(counts.values()) < model.spec.m:
            raise InvalidStructureError(
                f"the model's descriptors need the M = {model.spec.m} nearest atoms of each species, but this "
                f"non-periodic structure has only {min(counts.values())} of one species; make it periodic "
                "(a box with vacuum and pbc=True)")
    return s


# ---------------------------------------------------------------- file writers (atomic)
def _write_cube(path: Path, out: SinkInput) -> Path:
    """Gaussian cube, ``ase.io.cube`` layout; values in electrons/Bohr^3 (the cube format's atomic
    units -- ``ase.io.cube`` writes and reads the numbers unconverted). Along a non-periodic
    direction the last node sits on the box face, so the voxel there is L / (N - 1)."""
    from ase.io.cube import write_cube
    from ase.units import Bohr

    from .files import atomic_write

    grid = out.grid
    cube_atoms = out.atoms.copy()
    if any(grid.pbc):
        cube_atoms.wrap(pbc=grid.pbc)
    cell = grid.cell_bohr * Bohr
    for d, (p, n) in enumerate(zip(grid.pbc, grid.shape)):
        if not p:
            cell[d] *= n / (n - 1)
    cube_atoms.set_cell(cell, scale_atoms=False)
    return atomic_write(path, lambda f: write_cube(f, cube_atoms, data=out.arrays["density"],
                                                   comment="ase-mlrho density, electrons/Bohr^3"))


def _write_npz(path: Path, out: SinkInput) -> Path:
    from .files import atomic_write

    a = out.arrays
    meta = {**out.attrs, "renormalisation_factor": out.renormalisation_factor, "electrons_raw": out.electrons_raw}
    arrays = {
        "density_e_per_bohr3": a["density"],
        "sigma_total_e_per_bohr3": np.sqrt(a["sigma_aleatoric"] ** 2 + a["sigma_epistemic"] ** 2),
        "sigma_aleatoric_e_per_bohr3": a["sigma_aleatoric"], "sigma_epistemic_e_per_bohr3": a["sigma_epistemic"],
        "cell_bohr": out.grid.cell_bohr, "pbc": np.array(out.grid.pbc), "numbers": out.structure.numbers,
        "positions_bohr": out.structure.positions_bohr, "metadata_json": np.array(json.dumps(meta)),
    }
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays), binary=True)


CUBE_SINK = FileSink("cube", (".cube",), ("density",), _write_cube)
NPZ_SINK = FileSink("npz", (".npz",), SIGMA_FIELDS, _write_npz)
#: the outputs the core writes itself (besides the zarr store)
CORE_SINKS = (CUBE_SINK, NPZ_SINK)


# ====================================================================== the classic entry point
def predict_field(model, atoms, grid: Grid | None = None, n_samples: int | None = None, seed: int = 0,
                  chunk_points: int = DEFAULT_CHUNK_POINTS, progress: bool = False, workers: int = 1) -> FieldPrediction:
    """Predict the density of ``atoms`` (ase.Atoms, Angstrom) on ``grid`` (default: the model's
    mesh spacing on the cell), with aleatoric and epistemic sigmas, in memory.
    ``workers > 1`` runs the blocks in that many local processes (same numbers as serial)."""
    executor = ExecutorSettings("processes", workers) if workers > 1 else ExecutorSettings()
    run = run_prediction(model, atoms, None, InferenceSettings(n_samples=n_samples, seed=seed,
                                                               chunk_points=chunk_points),
                         executor, grid=grid, progress=progress)
    return run.field
