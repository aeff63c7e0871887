"""The block plan and one block of a prediction (see :mod:`ase_mlrho.inference` for the whole path).

The grid is cut into rectangular blocks (:class:`ChunkPlan`); a :class:`Job` holds what a worker needs
(model, structure, plan, seed); :func:`predict_block` turns one block's points into descriptors and
the model's raw mean and sigmas, with the sums the driver needs to renormalise the whole field.
Units: Bohr, electrons/Bohr^3.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import descriptor_kernel
from .descriptors import Descriptors
from .domain import nearest_atom_columns
from .grid import Grid
from .local_descriptors import LOCAL_MIN_ATOMS, LocalDescriptors
from .surface import SurfaceDepth, inflate_aleatoric

if TYPE_CHECKING:  # torch-backed modules, imported where they are used (build_context)
    from .dense_descriptors import DenseDescriptors
    from .predictor import Predictor

__all__ = ["InferenceSettings", "Structure", "ChunkPlan", "Job", "Block", "make_job", "predict_block",
           "build_context", "cached_context", "context_for_token", "DEFAULT_CHUNK_POINTS", "DEFAULT_BATCH_POINTS",
           "DEFAULT_DEVICE_BATCH_POINTS", "STAT_COLUMNS", "RENORMALISATIONS", "box_flat_indices"]

#: default points per block (task and zarr chunk): 2^18 points = 1 MiB of float32 per array
DEFAULT_CHUNK_POINTS = 2 ** 18
#: default points per model call inside a block: small enough for the caches (measured on 2 cores,
#: 3x64 network, 8 samples: 53 k points/s per core at 4096, 38 k at 16384, 25 k at 65536)
DEFAULT_BATCH_POINTS = 2 ** 12
#: default points per model call on an accelerator (dense tables of 2^16 points: ~1 GB of work arrays)
DEFAULT_DEVICE_BATCH_POINTS = 2 ** 16
#: grid nodes per compact sub-block of the device path (8^3: each sees ~80 atoms of a metal at 0.25 Bohr);
#: ``batch_points`` of them go through the descriptors and the network together
DENSE_SUB_BLOCK_POINTS = 512
#: ways to bring a predicted field to the exact electron count (see :class:`InferenceSettings`)
RENORMALISATIONS = ("scale", "posterior")
#: columns of the per-block statistics (extensive sums, except the maxima and the flat grid index of the node
#: farthest from every atom); "n_beyond_hole": nodes farther from every atom than any training node
STAT_COLUMNS = ("points", "sum_raw", "sum_clipped", "sum_sigma_total", "max_sigma_total", "n_ood",
                "n_beyond_hole", "max_nearest_atom_bohr", "argmax_nearest_atom")


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
        those only (:mod:`ase_mlrho.local_descriptors`: worker memory and set-up independent of the cell size);
        ``"auto"`` -- ``"block"`` for periodic cells of at least ``LOCAL_MIN_ATOMS`` atoms.
        Both give the same descriptors (to rounding, 1e-13 Bohr).
    device : None (default) -- on this machine's CPUs: descriptors of compact sub-blocks from the
        compiled kernel of :mod:`ase_mlrho.descriptor_kernel` (numba; k-d tree queries in numpy where
        numba is missing) and the network member by member: the fastest path there
        (``benchmarks/profile_stages.py``). A torch
        device ("cuda", "cuda:1", "cpu", ...) -- descriptors as dense tensors of compact sub-blocks
        (:mod:`ase_mlrho.dense_descriptors`) and every weight set in one stack
        (:mod:`ase_mlrho.predictor`), all on that device; the same field to float32 rounding.
        Batches are then ``DEFAULT_DEVICE_BATCH_POINTS`` unless ``batch_points`` says otherwise.
    renormalisation : how the field is brought to the exact electron count. ``"scale"`` (default, the
        paper's) -- clip at zero and multiply everything, sigmas included, by one factor. ``"posterior"``
        -- the most probable field under the model's own Gaussian (mean, sigma per point) that has the
        exact count and is nowhere negative: ``max(0, mean + lambda * sigma^2)``, one ``lambda`` for the
        cell (:func:`ase_mlrho.inference.renormalise_posterior`); the missing or excess charge goes where
        the model is least sure, not everywhere in proportion. In memory and file outputs only (not zarr).
    surface_term : apply the model's surface term (:mod:`ase_mlrho.surface`: a larger aleatoric sigma below a
        free surface, where the neighbourhood looks like bulk but the density is not) when the model file
        has one and the structure has vacuum. False gives the network's own sigmas (what the term is fitted to).
    """

    n_samples: int | None = None
    seed: int = 0
    chunk_points: int = DEFAULT_CHUNK_POINTS
    batch_points: int | None = None
    mesh_spacing_bohr: float | None = None
    neighbour_tables: str = "auto"
    device: str | None = None
    renormalisation: str = "scale"
    surface_term: bool = True

    def __post_init__(self):
        if self.renormalisation not in RENORMALISATIONS:
            raise ValueError(f"renormalisation must be one of {', '.join(RENORMALISATIONS)}, "
                             f"got {self.renormalisation!r}")
        if self.neighbour_tables not in ("auto", "structure", "block"):
            raise ValueError(f"neighbour_tables must be auto, structure or block, got {self.neighbour_tables!r}")
        if self.n_samples is not None and int(self.n_samples) < 0:
            raise ValueError(f"n_samples must be >= 0, got {self.n_samples}")
        if int(self.chunk_points) < 1 or (self.batch_points is not None and int(self.batch_points) < 1):
            raise ValueError("chunk_points and batch_points must be >= 1")
        if self.device is not None:
            import torch

            try:
                dev = torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(f"unknown torch device {self.device!r}: {exc}") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device {self.device!r}: this torch ({torch.__version__}) sees no CUDA device")
            if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ValueError(f"device {self.device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
            if dev.type == "mps" and not torch.backends.mps.is_available():
                raise ValueError(f"device {self.device!r}: this torch sees no Apple GPU")
        if self.mesh_spacing_bohr is not None and not self.mesh_spacing_bohr > 0:
            raise ValueError(f"mesh_spacing_bohr must be positive, got {self.mesh_spacing_bohr}")

    @property
    def resolved_batch_points(self) -> int:
        """``batch_points``, or its default for the path: cache-sized on CPUs, large on an accelerator."""
        if self.batch_points is not None:
            return int(self.batch_points)
        on_accelerator = self.device is not None and not str(self.device).startswith("cpu")
        return DEFAULT_DEVICE_BATCH_POINTS if on_accelerator else DEFAULT_BATCH_POINTS


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
        return box_flat_indices(self.shape, self.slices(index))


def box_flat_indices(shape, slices) -> np.ndarray:
    """Flat (file-order) indices of the grid nodes of a box of ``slices``, in C order of the box."""
    sx, sy, sz = slices
    _, ny, nz = shape
    i = np.arange(sx.start, sx.stop, dtype=np.int64)[:, None, None]
    j = np.arange(sy.start, sy.stop, dtype=np.int64)[None, :, None]
    k = np.arange(sz.start, sz.stop, dtype=np.int64)[None, None, :]
    return ((i * ny + j) * nz + k).reshape(-1)


# ====================================================================== the job and one block
@dataclass(frozen=True, eq=False)
class Job:
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
    device: str | None = None
    training_hole_bohr: float | None = None
    surface: SurfaceDepth | None = None  # the model's surface term for this structure (None: none, or no vacuum)

    @property
    def grid(self) -> Grid:
        return Grid(self.cell_bohr, self.grid_shape, self.pbc)


def model_digest(model) -> str:
    sha = model.metadata.get("weights_sha256")
    if sha:
        return sha
    from .model_files import network_sha256

    return network_sha256(model.network)


def make_job(model, structure: Structure, grid: Grid, settings: InferenceSettings) -> Job:
    n_samples = model.n_samples if settings.n_samples is None else int(settings.n_samples)
    plan = ChunkPlan.for_grid(grid.shape, settings.chunk_points)
    local = settings.neighbour_tables == "block" or (
        settings.neighbour_tables == "auto" and structure.natoms >= LOCAL_MIN_ATOMS)
    local = local and all(structure.pbc) and all(grid.pbc)
    h = hashlib.sha256()
    batch = settings.resolved_batch_points
    parts = [model_digest(model), structure.digest(), grid.cell_bohr.tobytes(), repr(grid.shape),
             repr(grid.pbc), repr(plan.block), n_samples, settings.seed, batch, local, STAT_COLUMNS]
    if settings.device is not None:  # another path: float32 rounding differs, so another job
        parts.append(f"device={settings.device}")
    cal = model.surface_calibration if settings.surface_term else None
    surface = None if cal is None else SurfaceDepth.for_structure(cal, structure.positions_bohr, grid.cell_bohr,
                                                                   grid.pbc)
    if surface is not None:  # the sigmas change with the calibration, which is metadata, not weights
        parts.append(json.dumps(cal.to_metadata(), sort_keys=True))
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return Job(model, structure, grid.cell_bohr, grid.shape, grid.pbc, plan, n_samples, int(settings.seed),
               batch, model.epistemic_sigma_validation_max, h.hexdigest(), local, settings.device,
               model.training_hole_bohr, surface)


@dataclass(eq=False)
class Context:
    """A worker's read-only state for one job: the model, the descriptor tables, the weight sets."""

    job: Job
    grid: Grid
    descriptors: Descriptors | LocalDescriptors
    weight_sets: list
    dense: DenseDescriptors | None = None  # dense descriptors over structure-wide tables (device or kernel path)
    predictor: Predictor | MemberByMember | None = None  # the network of those paths (None: the k-d tree route)
    sub_block_orders: dict = field(default_factory=dict)  # block shape -> node order by sub-block (device path)

    @property
    def engine(self) -> str:
        """The dense descriptors' engine: the compiled kernel on the default CPU path, torch on a device."""
        return "numba" if self.job.device is None else "torch"

    def block_source(self, index: int):
        """What computes the descriptors of block ``index``: the structure-wide tables, or the
        tables of the atoms around the block."""
        if isinstance(self.descriptors, LocalDescriptors):
            return self.descriptors.grid_block(self.grid, self.job.plan.slices(index))
        return self.descriptors


class MemberByMember:
    """The CPU network of the default path: the model's own ``predict`` (member by member, the
    reference, and on a CPU a little faster than the stacked :class:`Predictor`), as torch tensors."""

    def __init__(self, model, weight_sets):
        self.model, self.weight_sets = model, weight_sets

    def predict(self, desc):
        import torch

        p = self.model.predict(desc.numpy(), weight_sets=self.weight_sets)
        return torch.from_numpy(p.mean), torch.from_numpy(p.sigma_aleatoric), torch.from_numpy(p.sigma_epistemic)


def build_context(job: Job) -> Context:
    # torch-backed modules load here, in the worker, not when this module is imported (mlrho --help, the cheap
    # checks of mlrho predict and the .dens reader stay free of torch's import time)
    from .dense_descriptors import DenseDescriptors
    from .predictor import Predictor

    s = job.structure
    kind = LocalDescriptors if job.local_tables else Descriptors
    desc = kind(job.model.spec, s.positions_bohr, s.numbers, s.cell_bohr, s.pbc)
    weights = job.model.network.sample_weight_sets(job.n_samples, job.seed)
    if job.device is None:
        if not descriptor_kernel.AVAILABLE:  # the k-d tree route (numpy) of predict_block
            return Context(job, job.grid, desc, weights)
        # the compiled descriptor kernel over compact sub-blocks, and the reference network
        dense = None if job.local_tables else DenseDescriptors(desc, "cpu", engine="numba")
        return Context(job, job.grid, desc, weights, dense, MemberByMember(job.model, weights))
    dense = None if job.local_tables else DenseDescriptors(desc, job.device)
    return Context(job, job.grid, desc, weights, dense, Predictor(job.model.network, weights, job.device))


#: per-process memo of worker contexts, keyed by job token (read-only data; at most two jobs kept)
_CONTEXTS: dict[str, Context] = {}


def context_for_token(token: str) -> Context:
    """The context a worker already built for the job with this token (Dask sends the job once, then tokens)."""
    return _CONTEXTS[token]


def cached_context(job: Job) -> Context:
    ctx = _CONTEXTS.get(job.token)
    if ctx is None:
        import torch

        torch.set_num_threads(1)  # worker processes: one thread each, the same numerics as serial
        while len(_CONTEXTS) >= 2:
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        ctx = _CONTEXTS[job.token] = build_context(job)
    return ctx


@dataclass(frozen=True, eq=False)
class Block:
    """One predicted block: raw (unclipped, un-renormalised) mean and sigmas, e/Bohr^3, float64,
    and its statistics (:data:`STAT_COLUMNS`, with the grid's dV not yet applied)."""

    index: int
    mean_raw: np.ndarray | None
    sigma_aleatoric: np.ndarray | None
    sigma_epistemic: np.ndarray | None
    stats: np.ndarray


def _hole_stats(near_bohr: np.ndarray, flat: np.ndarray, job: Job) -> tuple[int, float, int]:
    """(nodes beyond the training cells' largest hole, the largest nearest-atom distance, its flat grid
    index) of one block, from each node's distance to its nearest atom (:mod:`ase_mlrho.domain`)."""
    i = int(np.argmax(near_bohr))
    r = job.training_hole_bohr
    return (0 if r is None else int(np.count_nonzero(near_bohr > r))), float(near_bohr[i]), int(flat[i])


def predict_block(ctx: Context, index: int) -> Block:
    """The raw prediction and statistics of block ``index``."""
    if ctx.predictor is not None:  # the device path, or the compiled kernel on this CPU
        return _predict_block_dense(ctx, index)
    job = ctx.job
    flat = job.plan.flat_indices(index)
    n = flat.size
    mean, ale, epi, near, factor = np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.ones(n)
    source = ctx.block_source(index)
    cols = nearest_atom_columns(job.model.spec)
    for b0 in range(0, n, job.batch_points):
        b1 = min(b0 + job.batch_points, n)
        points = ctx.grid.points_bohr_at(flat[b0:b1])
        d = source.compute(points)
        p = job.model.predict(d, weight_sets=ctx.weight_sets)
        mean[b0:b1], ale[b0:b1], epi[b0:b1] = p.mean, p.sigma_aleatoric, p.sigma_epistemic
        near[b0:b1] = d[:, cols].min(axis=1)
        if job.surface is not None:
            factor[b0:b1] = job.surface.factor(points, near[b0:b1])
    if job.surface is not None:
        ale = inflate_aleatoric(ale, epi, factor)
    sig_total = np.sqrt(ale * ale + epi * epi)
    thr = job.ood_threshold_e_per_bohr3
    stats = np.array([n, mean.sum(), np.clip(mean, 0.0, None).sum(), sig_total.sum(), sig_total.max(),
                      0 if thr is None else np.count_nonzero(epi > thr), *_hole_stats(near, flat, job)],
                     dtype=np.float64)
    shape = job.plan.block_shape(index)
    return Block(index, mean.reshape(shape), ale.reshape(shape), epi.reshape(shape), stats)


def _sub_block_order(shape, sub_points: int) -> tuple[np.ndarray, np.ndarray]:
    """The nodes of a block of ``shape`` grouped by compact sub-block: (local C-order indices, sub-block sizes)."""
    from .dense_descriptors import compact_sub_blocks

    local = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    parts = [local[sub].reshape(-1) for sub in compact_sub_blocks(shape, sub_points)]
    return np.concatenate(parts), np.array([len(x) for x in parts], dtype=np.int64)


def _predict_block_dense(ctx: Context, index: int) -> Block:
    """:func:`predict_block` on the device path: compact sub-blocks of ``DENSE_SUB_BLOCK_POINTS`` nodes, about
    ``batch_points`` nodes per call, dense descriptors and the stacked network on ``job.device``; the block's
    points are made once and the results scattered back in one indexed write per call."""
    import torch

    job = ctx.job
    shape = job.plan.block_shape(index)
    dev = torch.device(job.device or "cpu")
    order, sizes = ctx.sub_block_orders.setdefault(shape, _sub_block_order(shape, DENSE_SUB_BLOCK_POINTS))
    flat = job.plan.flat_indices(index)
    points = ctx.grid.points_bohr_at(flat[order])
    n = int(order.size)
    mean, ale, epi = (torch.empty(n, dtype=torch.float64, device=dev) for _ in range(3))
    near = torch.empty(n, dtype=torch.float32, device=dev)
    cols = nearest_atom_columns(job.model.spec)
    source = ctx.block_source(index)
    per_call = max(1, job.batch_points // DENSE_SUB_BLOCK_POINTS)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    for g in range(0, len(sizes), per_call):
        lo, hi = int(starts[g]), int(ends[min(g + per_call, len(sizes)) - 1])
        groups = np.split(points[lo:hi], ends[g:g + per_call][:-1] - lo)
        d = ctx.dense.compute_blocks(groups) if ctx.dense is not None else source.compute_dense(groups, dev, ctx.engine)
        mean[lo:hi], ale[lo:hi], epi[lo:hi] = ctx.predictor.predict(d)
        near[lo:hi] = d[:, cols].amin(dim=1)
    back_order = np.argsort(order)  # sub-block order -> the block's C order
    back = torch.as_tensor(back_order, device=dev)
    mean, ale, epi = mean[back], ale[back], epi[back]
    near = near[back].double().cpu().numpy()
    if job.surface is not None:
        g = job.surface.factor(points[back_order], near)
        ale = inflate_aleatoric(ale, epi, torch.as_tensor(g, dtype=ale.dtype, device=dev))
    sig_total = torch.sqrt(ale * ale + epi * epi)
    thr = job.ood_threshold_e_per_bohr3
    n_ood = 0 if thr is None else int(torch.count_nonzero(epi > thr))
    stats = np.array([n, float(mean.sum()), float(torch.clamp(mean, min=0.0).sum()),
                      float(sig_total.sum()), float(sig_total.max()), n_ood,
                      *_hole_stats(near, flat, job)], dtype=np.float64)
    return Block(index, *(x.cpu().numpy().reshape(shape) for x in (mean, ale, epi)), stats)
