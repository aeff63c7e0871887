"""A surface term in the sigma: how far below a free surface a grid point lies, and how much the model's
sigma must grow there.

Why. A density model sees a grid point through its neighbourhood (Set I and Set II reach some 8-9 Bohr).
Inside a slab, a few Bohr below the surface, that neighbourhood looks like bulk, but the density is not
bulk's: the surface changes it well inside (in SiGe slabs, most of all below (111) and (110) surfaces).
Neither the learned sigma nor the ensemble spread can see this, since the inputs are bulk-like; measured
with session 17's sige-pbe (``benchmarks/slab_depth.py``), 3-sigma coverage falls to 0.83-0.90 between 6
Bohr below the outermost atoms and the slab's centre, on the held-out (111) slab as on the training
ones, while bulk cells cover 0.995-0.9999. From the network's view this part of the error is noise it
cannot resolve, so it enters the **aleatoric** sigma; the epistemic sigma (and with it the out-of-
distribution flag and ``mlrho select``) is left as it is.

How.
* **Vacuum**: the nodes of a coarse grid (``coarse_spacing_bohr``) farther than ``vacuum_radius_bohr``
  from every atom (periodic images counted). The radius is chosen above the largest hole of any bulk or
  defect cell (SiGe: 5.47 Bohr at a di-vacancy's centre), so that vacancies, di-vacancies and hot crystals
  have no vacuum and their sigma is untouched, bit for bit; slabs and voids have (a held-out SiGe void of five
  missing atoms, a 7.2-Bohr hole, is covered 0.997 with the term, 0.993 without; see "Resolution").
* **Depth** of a grid point: its distance to the nearest vacuum node (0 for a point that is itself farther
  than the radius from every atom). Only the vacuum's boundary nodes are kept (those with a non-vacuum node
  among their 26 index neighbours): a surface's worth of points, not a volume's, and the nearest vacuum node
  of a point outside the vacuum is one of them (tested against all vacuum nodes, sheared cells included).
* **Resolution**: the vacuum and the depth are resolved to about the coarse spacing, and the factor is a step
  function of the depth, so a structure translated by a fraction of a Bohr gets slightly other factors near
  the bin edges (on the held-out (111) slab, 8 % of the points change bin for a 0.25-Bohr shift). A hole only
  a little larger than the radius counts as vacuum only where a coarse node falls inside it (the held-out SiGe
  void, a 7.21-Bohr hole, has one such node as given, none when shifted by 0.25 Bohr).
* **Factor** per depth bin, fitted on training slabs (:func:`fit_factors`): the factor on the total sigma
  that makes the bin's +/- 3 sigma interval cover as a Gaussian's would (``uncertainty.calibrated_scale``),
  never below 1. Points deeper than the last edge take the last bin's factor: nothing in the training
  data says how fast the surface's influence dies away, so the deepest measured factor is kept.
* The total sigma of a point becomes ``factor * sigma``; the aleatoric part takes the increase:
  ``sigma_ale' = sqrt(factor^2 (sigma_ale^2 + sigma_epi^2) - sigma_epi^2)``.

Cost (``benchmarks/surface_term.py``): finding the vacuum about 0.1 ms per atom, once per prediction; in a
slab, one bounded nearest-neighbour query per grid point outside the vacuum (+7 % on a 64-atom slab).

A model file holds the term under ``calibration.surface`` (:meth:`SurfaceCalibration.to_metadata`); a
model without it predicts as before. ``mlrho calibrate-surface`` fits it. Units: Bohr, e/Bohr^3.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from ase.units import Bohr as _BOHR_ANG

from .grid import Grid
from .neighbors import PeriodicNeighbors
from .uncertainty import calibrated_scale

__all__ = ["SurfaceCalibration", "SurfaceDepth", "vacuum_boundary_nodes_bohr", "inflate_aleatoric", "fit_factors",
           "fit_on_snapshots",
           "METADATA_KEY", "DEFAULT_VACUUM_RADIUS_BOHR", "DEFAULT_DEPTH_EDGES_BOHR"]

#: where the term sits in a model file's ``calibration`` entry
METADATA_KEY = "surface"
#: above the largest hole of the bulk and defect cells of both shipped materials (SiGe di-vacancy 5.47 Bohr, Al
#: vacancy about 5.4 Bohr, an Al tetra-vacancy 6.25 Bohr), below the half-width of the vacuum of the slabs in
#: data/sparc (about 10.5 Bohr)
DEFAULT_VACUUM_RADIUS_BOHR = 7.0
#: bin edges of the depth below the vacuum; the vacuum boundary lies about ``vacuum_radius_bohr`` above the
#: outermost atoms of a flat surface, so a 64-atom slab's centre is some 17 Bohr deep
DEFAULT_DEPTH_EDGES_BOHR = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0)
METHOD = ("total sigma times a factor per depth below the vacuum (distance to the nearest node of a coarse grid "
          "farther than vacuum_radius_bohr from every atom), the factor fitted on training slabs so that the "
          "bin's +/- 3 sigma interval covers 99.73 % (uncertainty.calibrated_scale, at least 1); the increase "
          "goes to the aleatoric sigma")


@dataclass(frozen=True)
class SurfaceCalibration:
    """The surface term of a model: vacuum radius, coarse grid spacing, depth bins and their factors.

    depth_edges_bohr : increasing, starting at 0; bin i is [edge_i, edge_{i+1}), the last bin is open.
    factors : one per bin, each >= 1 (a factor on the total sigma).
    """

    vacuum_radius_bohr: float = DEFAULT_VACUUM_RADIUS_BOHR
    coarse_spacing_bohr: float = 1.0
    depth_edges_bohr: tuple[float, ...] = DEFAULT_DEPTH_EDGES_BOHR
    factors: tuple[float, ...] = ()
    fitted_on: tuple[str, ...] = ()

    def __post_init__(self):
        edges = np.asarray(self.depth_edges_bohr, dtype=np.float64)
        if not self.vacuum_radius_bohr > 0 or not self.coarse_spacing_bohr > 0:
            raise ValueError("vacuum_radius_bohr and coarse_spacing_bohr must be positive, got "
                             f"{self.vacuum_radius_bohr} and {self.coarse_spacing_bohr}")
        if edges.ndim != 1 or edges.size == 0 or edges[0] != 0.0 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"depth_edges_bohr must increase from 0, got {self.depth_edges_bohr}")
        if self.factors and (len(self.factors) != edges.size or not all(np.isfinite(f) and f >= 1.0
                                                                        for f in self.factors)):
            raise ValueError(f"factors must be {edges.size} finite numbers >= 1 (one per depth bin), "
                             f"got {self.factors}")

    def factor_at(self, depth_bohr: np.ndarray) -> np.ndarray:
        """The factor on the total sigma at each depth (1 at infinite depth: no vacuum in the cell)."""
        if not self.factors:
            raise ValueError("this surface calibration has no factors yet (fit them with fit_factors)")
        depth = np.asarray(depth_bohr, dtype=np.float64)
        f = np.asarray(self.factors, dtype=np.float64)
        i = np.searchsorted(np.asarray(self.depth_edges_bohr), depth, side="right") - 1
        return np.where(np.isfinite(depth), f[np.clip(i, 0, f.size - 1)], 1.0)

    def to_metadata(self) -> dict:
        return {"vacuum_radius_bohr": float(self.vacuum_radius_bohr),
                "coarse_spacing_bohr": float(self.coarse_spacing_bohr),
                "depth_edges_bohr": [float(e) for e in self.depth_edges_bohr],
                "factors": [float(f) for f in self.factors], "fitted_on": list(self.fitted_on), "method": METHOD}

    @classmethod
    def from_metadata(cls, d: dict) -> "SurfaceCalibration":
        cal = cls(float(d["vacuum_radius_bohr"]), float(d["coarse_spacing_bohr"]),
                  tuple(float(e) for e in d["depth_edges_bohr"]), tuple(float(f) for f in d["factors"]),
                  tuple(str(n) for n in d.get("fitted_on", ())))
        if not cal.factors:
            raise ValueError("a surface calibration without factors")
        return cal


def vacuum_boundary_nodes_bohr(positions_bohr, cell_bohr, pbc, vacuum_radius_bohr: float,
                               coarse_spacing_bohr: float, chunk_points: int = 262_144) -> np.ndarray:
    """(K, 3) Cartesian positions (Bohr) of the vacuum's boundary nodes: nodes of a coarse grid on the cell
    farther than ``vacuum_radius_bohr`` from every atom with at least one of its 26 index neighbours (periodic
    along periodic directions) that is not. Empty for a cell without vacuum."""
    grid = Grid.from_cell(np.asarray(cell_bohr, dtype=np.float64), coarse_spacing_bohr, pbc)
    nb = PeriodicNeighbors(positions_bohr, grid.cell_bohr, grid.pbc)
    vac = np.empty(grid.n_points, dtype=bool)
    for start, stop in grid.chunks(chunk_points):
        vac[start:stop] = nb.query(grid.points_bohr(start, stop), 1).distances_bohr[:, 0] > vacuum_radius_bohr
    if not vac.any():
        return np.empty((0, 3))
    vac = vac.reshape(grid.shape)
    boundary = np.zeros_like(vac)
    for shift in itertools.product((-1, 0, 1), repeat=3):  # the 26 index neighbours (faces, edges, corners)
        if shift == (0, 0, 0):
            continue
        other = np.roll(vac, shift, axis=(0, 1, 2))
        for axis, step in enumerate(shift):
            if step and not grid.pbc[axis]:  # no wrap-around: a node at the box's edge has no neighbour beyond it
                edge = [slice(None)] * 3
                edge[axis] = 0 if step == 1 else -1
                other[tuple(edge)] = True
        boundary |= vac & ~other
    flat = np.flatnonzero(boundary.ravel())
    return grid.points_bohr_at(flat)


@dataclass(frozen=True, eq=False)
class SurfaceDepth:
    """The surface term of one structure: its vacuum boundary nodes (a neighbour search over them) and the
    model's calibration. Picklable and small (a surface's worth of nodes): a worker gets it with the job."""

    calibration: SurfaceCalibration
    boundary_bohr: np.ndarray
    cell_bohr: np.ndarray
    pbc: tuple[bool, bool, bool]

    @classmethod
    def for_structure(cls, calibration: SurfaceCalibration, positions_bohr, cell_bohr, pbc) -> "SurfaceDepth | None":
        """The term of a structure, or None when it has no vacuum (then the sigma is untouched)."""
        nodes = vacuum_boundary_nodes_bohr(positions_bohr, cell_bohr, pbc, calibration.vacuum_radius_bohr,
                                           calibration.coarse_spacing_bohr)
        if nodes.shape[0] == 0:
            return None
        return cls(calibration, nodes, np.asarray(cell_bohr, dtype=np.float64), tuple(bool(p) for p in pbc))

    @cached_property
    def _search(self) -> PeriodicNeighbors:
        """The neighbour search over the vacuum nodes, built where it is first used (in a worker)."""
        return PeriodicNeighbors(self.boundary_bohr, self.cell_bohr, self.pbc)

    def depth_bohr(self, points_bohr: np.ndarray, nearest_atom_bohr: np.ndarray,
                   max_bohr: float = np.inf) -> np.ndarray:
        """Distance from each point to the nearest vacuum node; 0 where the point is in the vacuum itself;
        ``inf`` where it exceeds ``max_bohr`` (a bounded search: the depths that set a factor only)."""
        points = np.asarray(points_bohr, dtype=np.float64)
        depth = np.zeros(len(points))
        solid = np.asarray(nearest_atom_bohr) <= self.calibration.vacuum_radius_bohr
        if np.isfinite(max_bohr):
            depth[solid] = self._search.nearest_distance_within(points[solid], max_bohr)
        else:
            depth[solid] = self._search.query(points[solid], 1).distances_bohr[:, 0]
        return depth

    def factor(self, points_bohr: np.ndarray, nearest_atom_bohr: np.ndarray) -> np.ndarray:
        """The factor on the total sigma at each point (the deepest bin's beyond its edge)."""
        deepest = self.calibration.depth_edges_bohr[-1]
        depth = self.depth_bohr(points_bohr, nearest_atom_bohr, deepest + 1.0)
        return self.calibration.factor_at(np.minimum(depth, deepest))


def inflate_aleatoric(sigma_aleatoric, sigma_epistemic, factor):
    """The aleatoric sigma that makes the total ``factor`` times larger, the epistemic one unchanged (and the
    aleatoric one bit for bit where the factor is 1). Works on numpy arrays and torch tensors alike."""
    inflated = ((factor * factor) * (sigma_aleatoric * sigma_aleatoric + sigma_epistemic * sigma_epistemic)
                - sigma_epistemic * sigma_epistemic) ** 0.5
    if isinstance(inflated, np.ndarray):
        return np.where(factor == 1.0, sigma_aleatoric, inflated)
    import torch

    return torch.where(factor == 1.0, sigma_aleatoric, inflated)


def fit_factors(error, sigma, depth_bohr, edges_bohr=DEFAULT_DEPTH_EDGES_BOHR, min_points: int = 1000) -> tuple:
    """Per depth bin, the factor on ``sigma`` after which the bin's +/- 3 sigma interval covers as a
    Gaussian's would (:func:`ase_mlrho.uncertainty.calibrated_scale`), at least 1. Flat arrays over the
    points of training slabs (points at infinite depth, i.e. cells without vacuum, are ignored). A bin with
    fewer than ``min_points`` points takes the factor of the bin above it (ValueError if the first does)."""
    error, sigma, depth = (np.ravel(np.asarray(a, dtype=np.float64)) for a in (error, sigma, depth_bohr))
    edges = np.asarray(edges_bohr, dtype=np.float64)
    factors = []
    for lo, hi in zip(edges, np.append(edges[1:], np.inf)):
        m = (depth >= lo) & (depth < hi)
        if m.sum() < min_points:
            if not factors:
                raise ValueError(f"only {int(m.sum())} points at depth {lo:g}-{hi:g} Bohr: the fit needs cells with "
                                 "a free surface (vacuum farther than the vacuum radius from every atom)")
            factors.append(factors[-1])
            continue
        factors.append(max(1.0, calibrated_scale(error[m], sigma[m])))
    return tuple(factors)


def fit_on_snapshots(model, snapshots, vacuum_radius_bohr: float = DEFAULT_VACUUM_RADIUS_BOHR,
                     coarse_spacing_bohr: float = 1.0, edges_bohr=DEFAULT_DEPTH_EDGES_BOHR,
                     log=None) -> tuple[SurfaceCalibration, list[dict]]:
    """Fit the surface term of ``model`` on reference snapshots (``sparc_bridge.snapshots.Snapshot``: SPARC
    runs of training or validation slabs, never test cells). Each is predicted without a surface term, its
    points binned by depth below its vacuum, and :func:`fit_factors` run on all of them together.
    Returns the calibration and, per cell, its 3-sigma coverage without and with the term (in-sample)."""
    from .domain import nearest_atom_distance_bohr
    from .inference import InferenceSettings, run_prediction

    base = SurfaceCalibration(vacuum_radius_bohr, coarse_spacing_bohr, tuple(edges_bohr))
    parts, cells = [], []
    for snap in snapshots:
        pos = snap.atoms.get_positions() / _BOHR_ANG
        term = SurfaceDepth.for_structure(base, pos, snap.grid.cell_bohr, snap.grid.pbc)
        if term is None:
            raise ValueError(f"{snap.name}: no point is farther than {vacuum_radius_bohr:g} Bohr from every atom, so "
                             "the cell has no free surface to fit the term on; give slabs or cells with a void")
        field = run_prediction(model, snap.atoms, None, InferenceSettings(surface_term=False), grid=snap.grid).field
        points = snap.grid.points_bohr(0, snap.grid.n_points)
        near = nearest_atom_distance_bohr(pos, snap.grid.cell_bohr, snap.grid.pbc, points)
        err = (field.density - snap.density_e_per_bohr3).ravel()
        parts.append((err, field.sigma_total.ravel(), term.depth_bohr(points, near)))
        if log:
            log(f"{snap.name}: {snap.grid.n_points} points, deepest {parts[-1][2].max():.1f} Bohr below the vacuum")
    err, sigma, depth = (np.concatenate(x) for x in zip(*parts))
    cal = SurfaceCalibration(vacuum_radius_bohr, coarse_spacing_bohr, tuple(float(e) for e in edges_bohr),
                             fit_factors(err, sigma, depth, edges_bohr), tuple(s.name for s in snapshots))
    for snap, (e, s, d) in zip(snapshots, parts):
        g = cal.factor_at(d)
        cells.append({"cell": snap.name, "points": int(e.size), "deepest_bohr": float(d.max()),
                      "coverage_3sigma_without": float(np.mean(np.abs(e) <= 3 * s)),
                      "coverage_3sigma_with": float(np.mean(np.abs(e) <= 3 * g * s)),
                      "mean_sigma_ratio": float(np.mean(g * s) / np.mean(s))})
    return cal, cells
