"""The real-space grid of a cell, by SPARC's own rule.

This module is the single source of truth for the shape and the ordering of every density
field in the project (predictions, training targets, SPARC ``.dens`` files, zarr stores).

SPARC's rule (``initialization.c``; see ``shared/SPARC_NOTES.md`` Q2)::

    intervals_d = max(ceil(L_d / h), FD_ORDER / 2)
    N_d         = intervals_d          (periodic direction)
    N_d         = intervals_d + 1      (Dirichlet / non-periodic direction)
    delta_d     = L_d / intervals_d
    node i_d    at  i_d / intervals_d  in fractional coordinates (node 0 at the cell origin)

The grid runs along the lattice vectors, so triclinic cells are handled naturally. Flat
point indices follow SPARC's ``.dens`` files: C order of an ``(Nx, Ny, Nz)`` array, the z index
fastest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from ase.units import Bohr

__all__ = ["Grid", "grid_intervals", "validate_cell", "InvalidStructureError"]

DEFAULT_FD_ORDER = 12


class InvalidStructureError(ValueError):
    """A structure or cell that the project cannot work with (empty, singular, NaN, ...)."""


def validate_cell(cell_bohr: np.ndarray, what: str = "cell") -> np.ndarray:
    """Return ``cell_bohr`` as a float64 (3, 3) array, or raise a clear error.

    Rows are lattice vectors. A cell with NaN/inf entries or a volume below 1e-8 Bohr^3
    (zero or linearly dependent vectors) is refused.
    """
    cell = np.asarray(cell_bohr, dtype=np.float64)
    if cell.shape != (3, 3):
        raise InvalidStructureError(f"{what} must be a 3x3 matrix of lattice vectors, got shape {cell.shape}")
    if not np.all(np.isfinite(cell)):
        raise InvalidStructureError(f"{what} contains NaN or infinite entries: {cell.tolist()}")
    volume = abs(np.linalg.det(cell))
    if volume < 1e-8:
        raise InvalidStructureError(
            f"{what} is singular (volume {volume:.3g} Bohr^3): every lattice vector must be non-zero "
            "and the three must be linearly independent; give non-periodic directions a finite box length"
        )
    return cell


def grid_intervals(
    lengths_bohr, mesh_spacing_bohr: float, fd_order: int = DEFAULT_FD_ORDER
) -> tuple[int, int, int]:
    """Number of grid intervals per lattice vector, exactly as SPARC computes them.

    ``max(ceil(L / h), fd_order // 2)`` with the same double-precision quotient as SPARC's C code.
    """
    if not (mesh_spacing_bohr > 0 and math.isfinite(mesh_spacing_bohr)):
        raise ValueError(f"mesh spacing must be a positive number of Bohr, got {mesh_spacing_bohr!r}")
    return tuple(max(math.ceil(float(L) / float(mesh_spacing_bohr)), fd_order // 2) for L in lengths_bohr)


@dataclass(frozen=True, eq=False)
class Grid:
    """A real-space grid on a cell.

    Attributes
    ----------
    cell_bohr : (3, 3) float64 array, rows are lattice vectors in Bohr.
    shape : (Nx, Ny, Nz) number of nodes along each lattice vector.
    pbc : periodicity of each direction (non-periodic = SPARC's Dirichlet ``D``).
    """

    cell_bohr: np.ndarray
    shape: tuple[int, int, int]
    pbc: tuple[bool, bool, bool] = (True, True, True)

    def __post_init__(self):
        cell = validate_cell(self.cell_bohr)
        cell.setflags(write=False)
        object.__setattr__(self, "cell_bohr", cell)
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"grid shape must be three positive integers, got {self.shape!r}")
        pbc = tuple(bool(p) for p in np.broadcast_to(self.pbc, 3))
        if any((not p) and n < 2 for p, n in zip(pbc, shape)):
            raise ValueError("a non-periodic direction needs at least 2 grid nodes")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "pbc", pbc)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_cell(
        cls, cell_bohr, mesh_spacing_bohr: float, pbc=(True, True, True), fd_order: int = DEFAULT_FD_ORDER
    ) -> "Grid":
        """The grid SPARC builds for ``MESH_SPACING: mesh_spacing_bohr`` on this cell."""
        cell = validate_cell(cell_bohr)
        pbc = tuple(bool(p) for p in np.broadcast_to(pbc, 3))
        intervals = grid_intervals(np.linalg.norm(cell, axis=1), mesh_spacing_bohr, fd_order)
        shape = tuple(n + (0 if p else 1) for n, p in zip(intervals, pbc))
        return cls(cell, shape, pbc)

    @classmethod
    def from_atoms(cls, atoms, mesh_spacing_bohr: float, fd_order: int = DEFAULT_FD_ORDER) -> "Grid":
        """The grid for an ``ase.Atoms`` (cell in Angstrom) at a mesh spacing in Bohr."""
        return cls.from_cell(np.asarray(atoms.cell) / Bohr, mesh_spacing_bohr, atoms.pbc, fd_order)

    @classmethod
    def from_intervals(cls, cell_bohr, intervals, pbc=(True, True, True)) -> "Grid":
        """The grid for SPARC's ``FD_GRID: intervals`` (intervals, not nodes)."""
        pbc = tuple(bool(p) for p in np.broadcast_to(pbc, 3))
        return cls(cell_bohr, tuple(int(n) + (0 if p else 1) for n, p in zip(intervals, pbc)), pbc)

    # ----------------------------------------------------------------- properties
    @property
    def intervals(self) -> tuple[int, int, int]:
        """SPARC's ``FD_GRID`` (number of intervals per lattice vector)."""
        return tuple(n - (0 if p else 1) for n, p in zip(self.shape, self.pbc))

    @property
    def n_points(self) -> int:
        return int(np.prod(self.shape))

    @property
    def volume_bohr3(self) -> float:
        return float(abs(np.linalg.det(self.cell_bohr)))

    @property
    def dv_bohr3(self) -> float:
        """Volume element of one node: cell volume / number of intervals (SPARC's dV x Jacobian)."""
        return self.volume_bohr3 / float(np.prod(self.intervals))

    @property
    def spacing_bohr(self) -> np.ndarray:
        """Node spacing along each lattice vector, L_d / intervals_d."""
        return np.linalg.norm(self.cell_bohr, axis=1) / np.asarray(self.intervals, dtype=np.float64)

    @property
    def step_vectors_bohr(self) -> np.ndarray:
        """(3, 3) array: row d is the Cartesian vector between neighbouring nodes along lattice vector d."""
        return self.cell_bohr / np.asarray(self.intervals, dtype=np.float64)[:, None]

    def integrate(self, field: np.ndarray) -> float:
        """Integral of a field on this grid (sum x dV), in the field's units x Bohr^3."""
        field = np.asarray(field)
        if field.shape != self.shape:
            raise ValueError(f"field shape {field.shape} does not match grid shape {self.shape}")
        return float(np.sum(field, dtype=np.float64) * self.dv_bohr3)

    # ----------------------------------------------------------------- points
    def indices(self, start: int, stop: int) -> np.ndarray:
        """(n, 3) integer node indices (i, j, k) of flat points ``start:stop`` in file order (k fastest)."""
        if not (0 <= start <= stop <= self.n_points):
            raise IndexError(f"point range {start}:{stop} outside 0:{self.n_points}")
        flat = np.arange(start, stop, dtype=np.int64)
        return np.stack(np.unravel_index(flat, self.shape), axis=1)

    def fractional(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(n, 3) fractional coordinates of flat points ``start:stop``."""
        stop = self.n_points if stop is None else stop
        return self.indices(start, stop) / np.asarray(self.intervals, dtype=np.float64)

    def points_bohr(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(n, 3) Cartesian coordinates in Bohr of flat points ``start:stop`` (file order)."""
        return self.fractional(start, stop) @ self.cell_bohr

    def points_bohr_at(self, flat_indices) -> np.ndarray:
        """(n, 3) Cartesian coordinates in Bohr of the given flat point indices."""
        flat = np.asarray(flat_indices, dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.n_points):
            raise IndexError(f"point index outside 0:{self.n_points}")
        ijk = np.stack(np.unravel_index(flat, self.shape), axis=1)
        return (ijk / np.asarray(self.intervals, dtype=np.float64)) @ self.cell_bohr

    def chunks(self, chunk_points: int) -> Iterator[tuple[int, int]]:
        """Yield ``(start, stop)`` flat ranges of at most ``chunk_points`` points, in file order."""
        if chunk_points < 1:
            raise ValueError(f"chunk_points must be >= 1, got {chunk_points}")
        for start in range(0, self.n_points, chunk_points):
            yield start, min(start + chunk_points, self.n_points)

    def __repr__(self) -> str:
        return f"Grid(shape={self.shape}, pbc={self.pbc}, spacing_bohr={np.round(self.spacing_bohr, 6).tolist()})"
