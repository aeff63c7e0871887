"""Prediction of whole density fields, chunk by chunk.

Grid chunks (in SPARC file order) flow through the descriptors and the model; peak memory is set
by the chunk size, not by the cell. The weight sets are drawn once from the seed and shared by all
chunks, so the result does not depend on how the grid is chunked (beyond float32 round-off).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .descriptors import Descriptors
from .grid import Grid

__all__ = ["FieldPrediction", "predict_field", "renormalise"]


@dataclass(frozen=True, eq=False)
class FieldPrediction:
    """A predicted density field on a grid, electrons/Bohr^3, arrays of ``grid.shape``.

    ``density`` is clipped at zero and renormalised to ``n_electrons``; the sigmas are scaled by
    the same factor. ``electrons_raw`` is the integral of the raw prediction (a diagnostic).
    """

    grid: Grid
    density: np.ndarray
    sigma_aleatoric: np.ndarray
    sigma_epistemic: np.ndarray
    n_electrons: float
    electrons_raw: float

    @property
    def sigma_total(self) -> np.ndarray:
        return np.sqrt(self.sigma_aleatoric ** 2 + self.sigma_epistemic ** 2)


def renormalise(density: np.ndarray, dv_bohr3: float, n_electrons: float) -> tuple[np.ndarray, float]:
    """Clip at zero and scale so that sum * dV = n_electrons. Returns (density, factor)."""
    clipped = np.clip(density, 0.0, None)
    total = float(clipped.sum(dtype=np.float64) * dv_bohr3)
    if total <= 0:
        raise ValueError("the predicted density is zero everywhere; cannot renormalise it")
    factor = n_electrons / total
    return clipped * factor, factor


def predict_field(model, atoms, grid: Grid | None = None, n_samples: int | None = None, seed: int = 0,
                  chunk_points: int = 65536, progress: bool = False, workers: int = 1) -> FieldPrediction:
    """Predict the density of ``atoms`` (ase.Atoms, Angstrom) on ``grid`` (default: the model's
    mesh spacing on the cell), with aleatoric and epistemic sigmas."""
    model.check_species(atoms.numbers)
    grid = grid or Grid.from_atoms(atoms, model.mesh_spacing_bohr)
    desc = Descriptors.from_atoms(model.spec, atoms)
    n = model.n_samples if n_samples is None else int(n_samples)
    weights = model.network.sample_weight_sets(n, seed)
    mean = np.empty(grid.n_points)
    ale = np.empty(grid.n_points)
    epi = np.empty(grid.n_points)
    chunks = list(grid.chunks(chunk_points))
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="predicting", unit="chunk", file=__import__("sys").stderr)
    for start, stop in chunks:
        pred = model.predict(desc.compute_grid(grid, start, stop, workers=workers), weight_sets=weights)
        mean[start:stop], ale[start:stop], epi[start:stop] = pred.mean, pred.sigma_aleatoric, pred.sigma_epistemic
    n_electrons = model.n_electrons(atoms.numbers)
    electrons_raw = float(mean.sum() * grid.dv_bohr3)
    rho, factor = renormalise(mean, grid.dv_bohr3, n_electrons)
    shape = grid.shape
    return FieldPrediction(grid, rho.reshape(shape), (ale * factor).reshape(shape), (epi * factor).reshape(shape),
                           n_electrons, electrons_raw)

