"""Nearest atoms of arbitrary points, over all periodic images, in any cell.

A k-d tree (scipy's ``cKDTree``) is built on a *halo*: every periodic image of every atom that
lies within a radius R of the cell. A query for the M nearest atoms of a point inside the cell is
exact as long as the M-th distance is <= R; points whose M-th distance exceeds R are re-queried
after the halo has grown, so the answer is exact for any M, even when M exceeds the number of
atoms in the cell by many image shells. Cost: linear in the number of points; memory: set by the
chunk of points and the halo (a few times the number of atoms), not by the grid.

Units: Bohr throughout. Cells are (3, 3) arrays whose rows are lattice vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .grid import InvalidStructureError, validate_cell

__all__ = ["PeriodicNeighbors", "NeighborResult", "validate_positions", "plane_spacings", "sphere_radius_for_atoms"]


@dataclass(frozen=True)
class NeighborResult:
    """M nearest atoms of P points, sorted by distance.

    distances_bohr : (P, M) float64
    atom_index : (P, M) int64, index of the atom (in the cell) of which the neighbour is an image
    displacements_bohr : (P, n, 3) float64, vector from the point to the n nearest neighbouring images
    """

    distances_bohr: np.ndarray
    atom_index: np.ndarray
    displacements_bohr: np.ndarray


def validate_positions(positions_bohr, cell_bohr, pbc, what: str = "structure") -> tuple[np.ndarray, np.ndarray, tuple]:
    """Check positions, cell and pbc; return (positions, cell, pbc) as float64 arrays and a bool tuple."""
    cell = validate_cell(cell_bohr, f"{what}'s cell")
    pos = np.asarray(positions_bohr, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise InvalidStructureError(f"{what}: positions must be an (N, 3) array, got shape {pos.shape}")
    if pos.shape[0] == 0:
        raise InvalidStructureError(f"{what} has no atoms")
    if not np.all(np.isfinite(pos)):
        raise InvalidStructureError(f"{what} has NaN or infinite atomic positions")
    pbc = tuple(bool(p) for p in np.broadcast_to(pbc, 3))
    return pos, cell, pbc


def wrapped_fractional(positions_bohr: np.ndarray, inv_cell: np.ndarray, periodic) -> np.ndarray:
    """Fractional coordinates, in [0, 1) along the periodic directions."""
    periodic = np.asarray(periodic, dtype=bool)
    frac = positions_bohr @ inv_cell
    frac[:, periodic] -= np.floor(frac[:, periodic])
    # floor() can give exactly 1.0 for tiny negative numbers; fold those back to 0
    frac[:, periodic] = np.where(frac[:, periodic] >= 1.0, 0.0, frac[:, periodic])
    return frac


def sphere_radius_for_atoms(m: int, volume_bohr3: float, n_atoms: int) -> float:
    """Radius (Bohr) of the sphere that holds ``m`` atoms at the mean density of ``n_atoms`` in ``volume_bohr3``."""
    return (3.0 * m * volume_bohr3 / (4.0 * math.pi * n_atoms)) ** (1.0 / 3.0)


def plane_spacings(cell: np.ndarray) -> np.ndarray:
    """Distance between neighbouring lattice planes for each lattice direction: V / |a_j x a_k|."""
    volume = abs(np.linalg.det(cell))
    cross = np.array([np.cross(cell[1], cell[2]), np.cross(cell[2], cell[0]), np.cross(cell[0], cell[1])])
    return volume / np.linalg.norm(cross, axis=1)


class PeriodicNeighbors:
    """Nearest-atom queries for one structure (a set of atoms in a cell with periodicity ``pbc``).

    Parameters
    ----------
    positions_bohr : (N, 3) Cartesian positions, Bohr.
    cell_bohr : (3, 3) lattice vectors (rows), Bohr.
    pbc : three booleans; images are generated along periodic directions only.
    """

    def __init__(self, positions_bohr, cell_bohr, pbc=(True, True, True)):
        pos, cell, pbc = validate_positions(positions_bohr, cell_bohr, pbc)
        self.cell_bohr = cell
        self.pbc = pbc
        self._inv_cell = np.linalg.inv(cell)
        self._periodic = np.array(pbc)
        frac = wrapped_fractional(pos, self._inv_cell, self._periodic)
        self.frac_positions = frac
        self.positions_bohr = frac @ cell  # wrapped into the cell along periodic directions
        self.n_atoms = pos.shape[0]
        self._spacings = plane_spacings(cell)
        self._radius = 0.0
        self._tree = None
        self._halo_atom = None
        self._halo_pos = None

    # ------------------------------------------------------------------ halo
    @property
    def halo_radius_bohr(self) -> float:
        return self._radius

    def _build_halo(self, radius: float) -> None:
        """All images of all atoms whose fractional coordinates are within radius/plane-spacing of
        the unit cube: a superset of the images within ``radius`` of any point of the cell."""
        margin = np.where(self._periodic, radius / self._spacings, 0.0)
        ranges = [
            np.arange(-math.ceil(m) - 1, math.ceil(m) + 2) if p else np.zeros(1, dtype=int)
            for m, p in zip(margin, self._periodic)
        ]
        shifts = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float64)
        atoms, fracs = [], []
        for shift in shifts:  # one image of the cell at a time: memory O(N), not O(N x shifts)
            # wrapped coordinates lie in [0, 1): an image shifted by s lies in [s, s + 1)
            if np.any(self._periodic & ((shift > 1.0 + margin + 1e-12) | (shift + 1.0 < -margin - 1e-12))):
                continue
            frac = self.frac_positions + shift
            inside = (frac >= -margin - 1e-12) & (frac <= 1.0 + margin + 1e-12)
            keep = np.flatnonzero(np.all(inside | ~self._periodic, axis=1))  # no filter along open directions
            atoms.append(keep)
            fracs.append(frac[keep])
        self._halo_atom = np.concatenate(atoms)
        self._halo_pos = np.concatenate(fracs) @ self.cell_bohr
        self._tree = cKDTree(self._halo_pos)
        self._radius = radius

    def _initial_radius(self, m: int) -> float:
        """A radius that usually holds m neighbours: the sphere holding m atoms at the mean density,
        plus the largest plane spacing over the atoms per direction (room for inhomogeneity)."""
        volume = abs(np.linalg.det(self.cell_bohr))
        if all(self.pbc):
            r_m = sphere_radius_for_atoms(m, volume, self.n_atoms)
        else:
            r_m = float(np.max(self._spacings))
        return 1.3 * r_m + 0.5 * float(np.max(self._spacings / max(1, self.n_atoms) ** (1 / 3)))

    # ------------------------------------------------------------------ queries
    def wrap(self, points_bohr: np.ndarray) -> np.ndarray:
        """Points translated into the cell along periodic directions (distances are unchanged)."""
        frac = np.asarray(points_bohr, dtype=np.float64) @ self._inv_cell
        frac[:, self._periodic] -= np.floor(frac[:, self._periodic])
        return frac @ self.cell_bohr

    def query(self, points_bohr, m: int, workers: int = 1, n_displacements: int | None = None) -> NeighborResult:
        """The ``m`` nearest atoms (over all periodic images) of each point, sorted by distance.

        Displacement vectors are returned for the nearest ``n_displacements`` (default: all m) only,
        which saves memory traffic when just the first few are needed."""
        m = int(m)
        if m < 1:
            raise ValueError(f"the number of neighbours must be >= 1, got {m}")
        if not any(self.pbc) and m > self.n_atoms:
            raise InvalidStructureError(
                f"asked for {m} nearest atoms but the non-periodic structure has only {self.n_atoms}"
            )
        pts = np.asarray(points_bohr, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must be an (P, 3) array, got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("points contain NaN or infinite coordinates")
        n_disp = m if n_displacements is None else min(int(n_displacements), m)
        wrapped = self.wrap(pts)
        if self._tree is None:
            self._build_halo(self._initial_radius(m))
        dist, atom, disp = self._query_tree(wrapped, m, workers, n_disp)
        bad = np.flatnonzero(dist[:, -1] > self._radius)
        while bad.size and any(self.pbc):  # (without periodicity every atom is in the halo: exact)
            self._build_halo(max(1.5 * self._radius, float(dist[bad, -1].max()) * 1.05))
            dist[bad], atom[bad], disp[bad] = self._query_tree(wrapped[bad], m, workers, n_disp)
            bad = bad[dist[bad, -1] > self._radius]
        return NeighborResult(dist, atom, disp)

    def nearest_distance_within(self, points_bohr, radius_bohr: float, workers: int = 1) -> np.ndarray:
        """Distance (Bohr) from each point to its nearest atom over all periodic images where that is below
        ``radius_bohr`` (strictly, as scipy's ``distance_upper_bound``), ``inf`` where no atom is that close: a
        bounded search, cheaper than :meth:`query` when only near atoms matter."""
        pts = np.asarray(points_bohr, dtype=np.float64)
        if self._tree is None or self._radius < radius_bohr:
            self._build_halo(float(radius_bohr))
        dist, _ = self._tree.query(self.wrap(pts), k=1, distance_upper_bound=float(radius_bohr), workers=workers)
        return dist

    def _query_tree(self, pts, m, workers, n_disp):
        """Query the current halo: distances, atom indices and displacements (pts -> image)."""
        if m > len(self._halo_pos):
            # the halo is too small to hold m images: grow it before asking the tree
            self._build_halo(max(2.0 * self._radius, 1.0))
            return self._query_tree(pts, m, workers, n_disp)
        dist, idx = self._tree.query(pts, k=m, workers=workers)
        dist, idx = dist.reshape(len(pts), m), idx.reshape(len(pts), m)
        return dist, self._halo_atom[idx], self._halo_pos[idx[:, :n_disp]] - pts[:, None, :]
