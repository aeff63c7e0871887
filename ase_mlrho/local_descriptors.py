"""Descriptors of a block of grid points from the atoms near that block only.

:class:`~ase_mlrho.descriptors.Descriptors` keeps neighbour tables of *every* atom of the
structure (a k-d tree on the periodic halo and the Set II candidate arrays). That is the fast
choice for cells of up to some thousands of atoms, but a worker's memory and set-up time then grow
with the cell: about 1.5 GB and minutes at 10^6 atoms. :class:`LocalDescriptors` instead keeps
only the structure and a cell list (a few tens of bytes per atom) and, for each block, cuts out the
*cluster* of atom images within a radius R of the block, builds the tables of that cluster alone
(treated as non-periodic) and computes the block's descriptors from it. Memory and time per block
are then independent of the cell size: inference is O(N) in time and O(1) in memory per worker.

Exactness: the cluster holds every image within R of every point of the block, so the result equals
the whole-structure descriptor as long as everything a point's descriptor looks at lies within R:
its M nearest atoms of each species (Set I), the k nearest neighbours (plus distance ties) of its
M_s nearest atoms (Set II: distance to atom i plus i's k-th neighbour distance), and the Set III
cut-off. This is checked for every block after the fact, with each atom's k-th neighbour distance
taken from the cluster itself (a cluster can only overestimate it, so the check is conservative);
R grows and the block is redone when it fails. The test suite compares both routes to 1e-10.

Units: Bohr. Fully periodic cells only (the whole-structure route handles open directions).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from ase.data import atomic_numbers

from .descriptors import TIE_TOLERANCE_BOHR, Descriptors, DescriptorSpec, check_numbers
from .grid import Grid
from .neighbors import plane_spacings, sphere_radius_for_atoms, validate_positions, wrapped_fractional

__all__ = ["LocalDescriptors", "LOCAL_MIN_ATOMS"]

#: cells with at least this many atoms use per-block tables in inference by default. Below it the
#: structure-wide tables are cheap (20,000 atoms: 0.55 s to build, ~50 MB) and 5-10 % faster per point
#: than rebuilding a cluster's tables for every block (measured in session 7, benchmarks/README.md)
LOCAL_MIN_ATOMS = 20_000

#: edge of the cell-list bins (Bohr); a block's cluster is gathered bin by bin
_BIN_BOHR = 6.0


class LocalDescriptors:
    """Per-block descriptors of a periodic structure, from the atoms near each block.

    Parameters as for :class:`~ase_mlrho.descriptors.Descriptors` (Bohr); ``pbc`` must be all True.
    """

    def __init__(self, spec: DescriptorSpec, positions_bohr, numbers, cell_bohr, pbc=(True, True, True)):
        pos, cell, pbc = validate_positions(positions_bohr, cell_bohr, pbc)
        if not all(pbc):
            raise ValueError("LocalDescriptors needs a fully periodic cell; use Descriptors for open directions")
        self.spec, self.cell_bohr = spec, cell
        self.numbers = check_numbers(spec, numbers, len(pos))
        self._inv_cell = np.linalg.inv(cell)
        self.frac = wrapped_fractional(pos, self._inv_cell, pbc)  # as PeriodicNeighbors wraps them
        self.spacings_bohr = plane_spacings(cell)
        self.n_bins = np.maximum(1, np.floor(self.spacings_bohr / _BIN_BOHR).astype(int))
        b = np.minimum((self.frac * self.n_bins).astype(int), self.n_bins - 1)
        flat = np.ravel_multi_index(b.T, self.n_bins)
        self._order = np.argsort(flat, kind="stable")
        self._starts = np.searchsorted(flat[self._order], np.arange(int(np.prod(self.n_bins)) + 1))
        self.species_counts = {s: int(np.count_nonzero(self.numbers == atomic_numbers[s])) for s in spec.species}
        volume = abs(np.linalg.det(cell))
        # first guess of R: a little more than the sphere holding M atoms of the rarest present
        # species (Set II reaches d(M_s) + d_k, usually less); grown per block when too small
        rarest = min((c for c in self.species_counts.values() if c), default=1)
        r_m = sphere_radius_for_atoms(spec.m, volume, rarest)
        radius = 1.2 * r_m + 1.0
        self.r_m_bohr = r_m  # for DenseDescriptors of a block's cluster
        if spec.has_angular:
            radius = max(radius, spec.angular_cutoff_bohr + 1.0)
        self.radius_bohr = radius

    # ------------------------------------------------------------------ the cluster of a block
    def cluster(self, lo_frac, hi_frac, radius_bohr: float) -> tuple[np.ndarray, np.ndarray]:
        """Positions (Bohr) and atomic numbers of every atom image whose fractional coordinates lie
        within ``radius_bohr`` / plane spacing of the box [lo_frac, hi_frac]: a superset of the
        images within ``radius_bohr`` of any point of the box."""
        margin = radius_bohr / self.spacings_bohr
        lo, hi = np.asarray(lo_frac) - margin, np.asarray(hi_frac) + margin
        ranges = [range(math.floor(l * n), math.floor(h * n) + 1) for l, h, n in zip(lo, hi, self.n_bins)]
        frac_parts, num_parts = [], []
        for bx, by, bz in itertools.product(*ranges):
            shift = np.array([bx // self.n_bins[0], by // self.n_bins[1], bz // self.n_bins[2]], dtype=np.float64)
            flat = np.ravel_multi_index((bx % self.n_bins[0], by % self.n_bins[1], bz % self.n_bins[2]), self.n_bins)
            idx = self._order[self._starts[flat]:self._starts[flat + 1]]
            if idx.size:
                f = self.frac[idx] + shift
                keep = np.all((f >= lo) & (f <= hi), axis=1)
                frac_parts.append(f[keep])
                num_parts.append(self.numbers[idx[keep]])
        if not frac_parts:
            return np.zeros((0, 3)), np.zeros(0, dtype=int)
        frac = np.concatenate(frac_parts)
        return frac @ self.cell_bohr, np.concatenate(num_parts)

    # ------------------------------------------------------------------ descriptors of a block
    def block(self, lo_frac, hi_frac) -> "BlockDescriptors":
        """The descriptor source of the points inside the fractional box [lo_frac, hi_frac]."""
        return BlockDescriptors(self, np.asarray(lo_frac, dtype=np.float64), np.asarray(hi_frac, dtype=np.float64))

    def _cluster_descriptors(self, lo_frac, hi_frac, radius) -> Descriptors | None:
        pos, num = self.cluster(lo_frac, hi_frac, radius)
        spec = self.spec
        for s, total in self.species_counts.items():
            if total and np.count_nonzero(num == atomic_numbers[s]) < spec.m:
                return None  # too few atoms of a present species: grow R
        if len(num) < spec.k + 1:
            return None
        return Descriptors(spec, pos, num, self.cell_bohr, pbc=(False, False, False))

    def _reach(self, desc: Descriptors) -> tuple[np.ndarray, np.ndarray]:
        """Fractional coordinates of a cluster's atoms and, for Set II, each atom's k-th neighbour
        distance within the cluster (NaN-padded tie candidates ignored)."""
        frac = desc._all.positions_bohr @ self._inv_cell
        if not self.spec.m_s:
            return frac, np.zeros(len(frac))
        with np.errstate(invalid="ignore"):
            r_k = np.nanmax(np.linalg.norm(desc._candidates, axis=-1), axis=1)
        return frac, r_k

    def _needed_radius(self, out: np.ndarray, atoms_frac: np.ndarray, r_k: np.ndarray, lo_frac, hi_frac) -> float:
        """The radius that every point's descriptor needed (see the module docstring)."""
        spec = self.spec
        need = spec.angular_cutoff_bohr if spec.has_angular else 0.0
        d_ms = 0.0
        for b, s in enumerate(spec.species):
            if not self.species_counts[s]:
                continue
            o = b * spec.n_per_species
            need = max(need, float(np.max(out[:, o + spec.m - 1])) + TIE_TOLERANCE_BOHR)
            if spec.m_s:
                d_ms = max(d_ms, float(np.max(out[:, o + spec.m_s - 1])) + TIE_TOLERANCE_BOHR)
        if spec.m_s:
            # atoms that can be among the M_s nearest of some point: within d_ms of the box
            margin = d_ms / self.spacings_bohr
            near = np.all((atoms_frac >= lo_frac - margin) & (atoms_frac <= hi_frac + margin), axis=1)
            need = max(need, d_ms + float(np.max(r_k[near], initial=0.0)) + TIE_TOLERANCE_BOHR)
        # float32 outputs round the distances: a little slack keeps the check conservative
        return need * (1.0 + 1e-6)

    def grid_block(self, grid: Grid, slices) -> "BlockDescriptors":
        """The descriptor source of the grid nodes of ``slices`` (a rectangular block of ``grid``)."""
        n = np.asarray(grid.shape, dtype=np.float64)
        lo = np.array([sl.start for sl in slices]) / n
        hi = np.array([sl.stop - 1 for sl in slices]) / n
        return self.block(lo, hi)


class BlockDescriptors:
    """Descriptors of points inside one box, from the cluster of atoms around it (built on first
    use, rebuilt larger whenever a batch of points shows that it was too small)."""

    def __init__(self, owner: LocalDescriptors, lo_frac: np.ndarray, hi_frac: np.ndarray):
        self.owner, self.lo_frac, self.hi_frac = owner, lo_frac, hi_frac
        self.radius_bohr = owner.radius_bohr
        self._desc = self._reach = self._dense = None

    def compute(self, points_bohr, float64: bool = False) -> np.ndarray:
        """(P, n_features) descriptors (float32, or float64) of points inside the box."""
        def run(desc, pts):
            out = desc.compute_float64(pts) if float64 else desc.compute(pts)
            return out, out
        return self._checked(points_bohr, run)

    def compute_dense(self, blocks, device="cpu", engine="torch"):
        """The same for a list of compact groups of points, as one float32 torch tensor on ``device``
        (rows in order), from dense tables of the cluster (:class:`~ase_mlrho.dense_descriptors.DenseDescriptors`
        with ``engine``)."""
        from .dense_descriptors import DenseDescriptors

        def run(desc, pts):
            if self._dense is None or self._dense.ref is not desc:
                self._dense = DenseDescriptors(desc, device, r_m_bohr=self.owner.r_m_bohr, engine=engine)
            out = self._dense.compute_blocks(pts)
            return out, out.max(dim=0).values.double().cpu().numpy()[None, :]  # the check needs column maxima only
        return self._checked(blocks, run)

    def _checked(self, points_bohr, run):
        """``run(cluster_descriptors, points)`` -> (result, descriptor rows for the radius check),
        repeated with a larger cluster until the check passes."""
        pts = points_bohr if isinstance(points_bohr, list) else np.asarray(points_bohr, dtype=np.float64)
        while True:
            if self._desc is None:
                self._desc = self.owner._cluster_descriptors(self.lo_frac, self.hi_frac, self.radius_bohr)
                if self._desc is None:
                    self.radius_bohr *= 1.5
                    continue
                self._reach = self.owner._reach(self._desc)
            result, rows = run(self._desc, pts)
            need = self.owner._needed_radius(rows, *self._reach, self.lo_frac, self.hi_frac)
            if need <= self.radius_bohr:
                return result
            self.radius_bohr = max(need * 1.05, self.radius_bohr * 1.25)
            self._desc = None
