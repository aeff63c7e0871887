"""Streaming prediction of whole density fields: grid chunks -> descriptors -> model -> sink.

The parts, one module each: the block plan and one block (:mod:`ase_mlrho.blocks`), the executors
(:mod:`ase_mlrho.executors`), the outputs (:mod:`ase_mlrho.sinks`: zarr store, cube, npz; SPARC's ``.dens``
from :mod:`sparc_bridge.density_file`); this module drives them (:func:`run_prediction`) and checks the
structure first (:func:`validate_structure`).

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

import shutil
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .blocks import (DEFAULT_BATCH_POINTS, DEFAULT_CHUNK_POINTS, STAT_COLUMNS, ChunkPlan, InferenceSettings,
                     Structure, make_job)
from .domain import hole_warning
from .executors import Executor, ExecutorSettings
from .grid import Grid, InvalidStructureError
from .sinks import (ARRAY_NAMES, CORE_SINKS, CUBE_SINK, NPZ_SINK, SIGMA_FIELDS, ZARR_FORMAT, ZARR_FORMAT_VERSION,
                    Accumulator, FileSink, OutputError, SinkInput, check_output, model_info, open_prediction,
                    open_zarr_store, output_sink, partial_path, verify_prediction)

__all__ = [
    "FieldPrediction", "predict_field", "renormalise", "InferenceSettings", "ExecutorSettings", "ChunkPlan",
    "Structure", "PredictionSummary", "PredictionRun", "run_prediction", "open_prediction", "verify_prediction",
    "OutputError", "ZARR_FORMAT", "DEFAULT_CHUNK_POINTS", "DEFAULT_BATCH_POINTS", "OOD_WARNING_FRACTION",
    "RAW_ELECTRONS_WARNING_FRACTION",
    "output_sink", "check_output", "FileSink", "SinkInput", "CORE_SINKS", "CUBE_SINK", "NPZ_SINK", "ARRAY_NAMES",
    "validate_structure",
]

#: a structure is flagged out of distribution when more than this fraction of its points has an
#: epistemic sigma above the model's validation p99.9 (10x the rate seen on validation data)
OOD_WARNING_FRACTION = 0.01
#: a prediction is flagged when its raw integral misses the electron count by more than this fraction.
#: On 148 SPARC cells (al-pbe and sige-pbe, training and held out, 4 to 128 atoms, slabs, voids,
#: strained and hot cells; benchmarks/raw_electrons.py) the largest miss is 0.45 %; a box too small along a
#: non-periodic direction misses by -15 %, Al in Bohr read as Angstrom by +7 % (the reverse mix-up: +27 %).
RAW_ELECTRONS_WARNING_FRACTION = 0.02


def expected_eps_percent(sigma_sum_e_per_bohr3: float, dv_bohr3: float, n_electrons: float) -> float:
    """The error per electron the model's own sigma predicts, in % (the same normalisation as eps).

    A Gaussian error of standard deviation sigma has mean absolute value sqrt(2 / pi) * sigma, so
    eps = (1/N_e) * integral |error| dV is expected to be sqrt(2 / pi) * (sum of sigma) * dV / N_e.
    Pass the sum of sigma over the grid points (the total sigma for the expected eps, the epistemic
    one for its model-ignorance part). Unlike a mean sigma in e/Bohr^3, it compares across materials
    and compositions with different electron densities: on sige-pbe's held-out cells it follows the
    measured eps (benchmarks/README.md).
    """
    return float(100.0 * np.sqrt(2.0 / np.pi) * sigma_sum_e_per_bohr3 * dv_bohr3 / n_electrons)


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
    expected_eps_percent: float
    ood_fraction: float | None
    ood_threshold_e_per_bohr3: float | None
    output: str | None
    chunks: int
    chunks_resumed: int
    executor: str
    workers: int
    largest_hole_bohr: float | None = None
    largest_hole_position_ang: tuple[float, float, float] | None = None
    training_hole_bohr: float | None = None
    beyond_training_fraction: float | None = None
    hole_margin_bohr: float | None = None
    surface_term: bool | None = None  # the model's surface term (ase_mlrho.surface): applied, not needed (no vacuum), None: none

    @property
    def looks_out_of_distribution(self) -> bool:
        return self.ood_fraction is not None and self.ood_fraction > OOD_WARNING_FRACTION

    @property
    def ood_warning(self) -> str | None:
        """The one-line warning of a structure that looks out of distribution (None when it does not), as
        ``mlrho predict`` prints it and the calculator warns it."""
        if not self.looks_out_of_distribution:
            return None
        return (f"{100 * self.ood_fraction:.1f} % of the grid points have an epistemic sigma above the model's "
                f"validation range (p99.9 = {self.ood_threshold_e_per_bohr3:.3g} e/Bohr^3; more than "
                f"{100 * OOD_WARNING_FRACTION:g} % means the structure looks out of distribution): treat the density "
                "with care")

    @property
    def hole_warning(self) -> str | None:
        """The one-line warning of a structure with a larger hole than any training cell, by more than the
        model's mesh spacing (None when it has none or the model records no training domain;
        :mod:`ase_mlrho.domain`)."""
        return hole_warning(self.largest_hole_bohr, self.largest_hole_position_ang, self.training_hole_bohr,
                            self.hole_margin_bohr or 0.0, self.beyond_training_fraction)

    @property
    def electrons_warning(self) -> str | None:
        """The one-line warning of a raw prediction whose integral misses the electron count by more than
        :data:`RAW_ELECTRONS_WARNING_FRACTION` (None otherwise): the renormalisation would hide it."""
        miss = self.electrons_raw / self.n_electrons - 1.0
        if not abs(miss) > RAW_ELECTRONS_WARNING_FRACTION:
            return None
        return (f"the raw prediction integrates to {self.electrons_raw:.6g} electrons, {100 * miss:+.1f} % from the "
                f"structure's {self.n_electrons:g} (more than {100 * RAW_ELECTRONS_WARNING_FRACTION:g} %; held-out "
                "cells stay within 0.5 %), which the renormalisation to the exact count hides: check the "
                "structure (positions in Angstrom, vacuum along non-periodic directions)")

    @property
    def warnings(self) -> list[str]:
        """Every warning of this prediction (out-of-distribution sigma, a hole beyond the training domain, a raw
        electron count far from the exact one)."""
        return [w for w in (self.ood_warning, self.hole_warning, self.electrons_warning) if w]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid_shape"] = list(self.grid_shape)
        if self.largest_hole_position_ang is not None:
            d["largest_hole_position_ang"] = list(self.largest_hole_position_ang)
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


def renormalise_posterior(density: np.ndarray, variance: np.ndarray, dv_bohr3: float,
                          n_electrons: float) -> tuple[np.ndarray, float]:
    """The most probable non-negative field with the exact electron count under independent Gaussians
    N(density, variance) per point: minimise sum (rho - density)^2 / variance subject to
    sum rho * dV = n_electrons and rho >= 0. The optimality conditions give
    rho = max(0, density + lambda * variance) with one multiplier ``lambda`` (Bohr^3 / e, as the
    variance is in (e/Bohr^3)^2). Found exactly by an active set (Michelot's algorithm for projections
    onto a simplex): solve for ``lambda`` with the count alone, fix the points it takes below zero at
    zero, repeat; a point once fixed stays fixed, as ``lambda`` only falls. Points of zero variance keep
    max(0, density). Returns (field, lambda).

    Why: with uniform scaling (:func:`renormalise`) a model that puts charge where there is none (the
    vacuum of a surface it never saw) takes the excess from every atom in proportion; here it goes from
    where the model says it is unsure. With all variances equal this is a uniform shift, not a scaling."""
    mu = np.clip(np.asarray(density, dtype=np.float64), 0.0, None)
    var = np.asarray(variance, dtype=np.float64)
    if mu.shape != var.shape:
        raise ValueError(f"density {mu.shape} and variance {var.shape} differ in shape")
    if np.any(var < 0) or not np.all(np.isfinite(var)):
        raise ValueError("the variance must be finite and non-negative")
    free = var > 0
    if not free.any():
        raise ValueError("every sigma is zero: nothing tells where to add or remove charge; use renormalisation 'scale'")
    target = float(n_electrons) / dv_bohr3 - float(mu[~free].sum())  # what the points with a sigma must hold
    if target < 0:
        raise ValueError("the points without a sigma alone hold more than the electron count")
    active = free.copy()
    while True:
        lam = (target - float(mu[active].sum())) / float(var[active].sum())
        below = active & (mu + lam * var < 0)
        if not below.any():
            break
        active &= ~below
    return np.where(active, mu + lam * var, np.where(free, 0.0, mu)), float(lam)


def _factor(electrons_clipped: float, n_electrons: float) -> float:
    if not electrons_clipped > 0:
        raise ValueError("the predicted density is zero or negative everywhere, so it cannot be renormalised: "
                         "the structure is far outside the model's training data")
    return float(n_electrons) / electrons_clipped


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
    posterior = settings.renormalisation == "posterior"
    if posterior and sink == "zarr":
        raise ValueError("renormalisation 'posterior' needs the whole field at once: write .cube, .dens or .npz "
                         "(or keep it in memory), or use the default 'scale' for a zarr store")
    job = make_job(model, structure, grid, settings)
    plan = job.plan
    attrs = {
        "format": ZARR_FORMAT, "format_version": ZARR_FORMAT_VERSION, "units": "electrons/Bohr^3",
        "grid": {"shape": list(grid.shape), "cell_bohr": grid.cell_bohr.tolist(), "pbc": list(grid.pbc),
                 "intervals": list(grid.intervals), "dv_bohr3": grid.dv_bohr3,
                 "order": "array[i, j, k] is the node at fractional (i, j, k) / intervals; node 0 at the cell origin "
                          "(SPARC .dens order, z fastest)"},
        "model": model_info(model), "n_samples": job.n_samples, "seed": job.seed, "chunk_points":
            int(settings.chunk_points), "batch_points": job.batch_points, "block_shape": list(plan.block),
        "n_electrons": n_electrons, "natoms": structure.natoms,
        "renormalisation": ("density = max(0, max(raw, 0) + lambda * sigma_total^2), the most probable field with "
                            "the exact count; the sigmas as predicted" if posterior else
                            "density = max(raw, 0) * factor; the sigmas are multiplied by the same factor"),
    }

    stats = np.zeros((plan.n_chunks, len(STAT_COLUMNS)))
    acc = group = state = None
    todo = list(range(plan.n_chunks))
    resumed = 0
    if sink == "zarr":
        group, state = open_zarr_store(path, job, attrs)
        done_state = state[:]
        stats[:] = group["chunk_stats"][:]
        todo = [int(i) for i in np.flatnonzero(done_state == 0)]
        resumed = plan.n_chunks - len(todo)
        store = str(partial_path(path))
    else:
        names = SIGMA_FIELDS if sink is None or posterior else sink.fields
        acc = Accumulator(grid.shape, names, None if path is None else (path.parent if str(path.parent) else Path(".")))
        store = None

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=grid.n_points, initial=int(stats[:, 0].sum()), unit="pt", unit_scale=True,
                   desc="predicting", file=sys.stderr, smoothing=0.05)
    computed_points = 0
    try:
        with Executor(executor, job) as ex:
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
            elif posterior:
                a = acc.arrays
                a["density"][...], lam = renormalise_posterior(
                    a["density"], a["sigma_aleatoric"] ** 2 + a["sigma_epistemic"] ** 2, dv, n_electrons)
                attrs["posterior_lambda_bohr3_per_e"] = lam
                factor = 1.0  # nothing is scaled: the sigmas stay as predicted
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
    hole = _largest_hole(stats, grid, job.training_hole_bohr)
    pred = None
    if acc is not None:
        a = acc.arrays
        if "sigma_aleatoric" in a:
            pred = FieldPrediction(grid, a["density"], a["sigma_aleatoric"], a["sigma_epistemic"], n_electrons,
                                   electrons_raw, factor)
    try:
        if sink == "zarr":
            group.attrs.update({"complete": True, "ood_fraction": ood, **hole})
            if path.exists():  # --overwrite: the old store goes only now that the new one is complete
                shutil.rmtree(path)
            os.replace(partial_path(path), path)
        elif sink is not None:
            sink.write(path, SinkInput(model, atoms, structure, grid, acc.arrays, factor, electrons_raw, attrs))
    finally:
        if isinstance(sink, FileSink) and acc.on_disk:  # memmap-backed: the arrays go with it
            pred = None
            acc.close()

    seconds = time.perf_counter() - t0
    summary = PredictionSummary(
        natoms=structure.natoms, grid_shape=tuple(grid.shape), n_points=grid.n_points, n_electrons=n_electrons,
        electrons_raw=electrons_raw, renormalisation_factor=factor, seconds=seconds,
        points_per_second=computed_points / seconds if seconds > 0 else float("nan"),
        sigma_total_max_e_per_bohr3=float(stats[:, 4].max() * factor),
        sigma_total_mean_e_per_bohr3=float(totals[3] / grid.n_points * factor),
        expected_eps_percent=expected_eps_percent(float(totals[3] * factor), grid.dv_bohr3, n_electrons),
        ood_fraction=ood, ood_threshold_e_per_bohr3=job.ood_threshold_e_per_bohr3,
        output=None if path is None else str(path), chunks=plan.n_chunks, chunks_resumed=resumed,
        executor=executor.kind, workers=1 if executor.kind == "serial" else executor.workers,
        **hole, hole_margin_bohr=model.mesh_spacing_bohr,
        surface_term=(job.surface is not None) if settings.surface_term and model.surface_calibration is not None
        else None)
    return PredictionRun(summary, pred)


def _largest_hole(stats: np.ndarray, grid: Grid, training_hole_bohr: float | None) -> dict:
    """The largest hole of the structure (the node farthest from every atom: its distance and Cartesian
    position in Angstrom) and the fraction of nodes beyond the training cells' largest hole, from the
    per-block statistics."""
    from ase.units import Bohr

    cols = {c: i for i, c in enumerate(STAT_COLUMNS)}
    b = int(np.argmax(stats[:, cols["max_nearest_atom_bohr"]]))
    flat = int(stats[b, cols["argmax_nearest_atom"]])
    position = tuple(float(x) * Bohr for x in grid.points_bohr_at(np.array([flat]))[0])
    beyond = None if training_hole_bohr is None else float(stats[:, cols["n_beyond_hole"]].sum() / grid.n_points)
    return {"largest_hole_bohr": float(stats[b, cols["max_nearest_atom_bohr"]]), "largest_hole_position_ang": position,
            "training_hole_bohr": training_hole_bohr, "beyond_training_fraction": beyond}


def validate_structure(model, atoms) -> Structure:
    """Check a structure against the model before any work; return it as :class:`Structure`.

    Refused, with a message that says what to do: no atoms, a singular or non-finite cell, NaN
    positions, elements the model does not know (:class:`UnknownSpeciesError`), atoms outside the
    box along a non-periodic direction, two nuclei closer than 0.5 Angstrom (a duplicated atom), and a fully non-periodic structure with fewer atoms than
    the descriptor's M. Atoms outside the cell along periodic directions are fine: the field is
    periodic, only wrapped positions matter (the neighbour search wraps them). Small periodic
    cells are fine too: the descriptors see every periodic image, so a 1-atom primitive cell gives
    the field of the infinite crystal.
    """
    from ase.units import Bohr

    from .descriptors import check_closest_pair
    from .grid import validate_cell
    from .neighbors import PeriodicNeighbors

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
    check_closest_pair(PeriodicNeighbors(s.positions_bohr, cell_bohr, s.pbc))
    if not any(s.pbc):
        counts = {z: int(np.sum(s.numbers == z)) for z in set(s.numbers.tolist())}
        if min(counts.values()) < model.spec.m:
            raise InvalidStructureError(
                f"the model's descriptors need the M = {model.spec.m} nearest atoms of each species, but this "
                f"non-periodic structure has only {min(counts.values())} of one species; make it periodic "
                "(a box with vacuum and pbc=True)")
    return s


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
