"""The training domain in one number: the largest hole the training cells had.

A density model has seen grid points at most so far from every atom: the centre of the largest
empty sphere of its training cells (a vacancy's centre, the octahedral hole of a hot crystal). A
structure with a larger hole -- a di-vacancy in a covalent crystal, a void, the vacuum above a
surface -- asks the model about points farther from every atom than any it was trained on. There the
density is extrapolated, and the epistemic sigma need not know it: measured on a held-out SiGe
di-vacancy with session 13's sige-pbe (benchmarks/README.md, "Cells unlike the training set"), the
3-sigma coverage within 3 Bohr of its 5.47 Bohr hole was 0.91 while fewer than 0.3 % of the cell's
points exceeded the epistemic out-of-distribution threshold, so the per-cell fraction never warned. The
hole is a local signal that does (it led to the di-vacancies in sige-pbe's training data since), and it
costs nothing: a point's distance to its nearest atom is the first Set I distance of its descriptor (the
smallest over species).

* :func:`nearest_atom_distance_bohr` -- distance from points to the nearest atom (periodic images).
* :func:`largest_hole` -- the largest such distance over a grid, and where.
* :func:`training_domain_metadata` -- the model file's ``training_domain`` entry, from training cells.
* :func:`nearest_atom_columns` -- where that distance sits in a descriptor row.
* :func:`hole_warning` -- the one-line warning of ``mlrho predict`` and the calculator.

A grid resolves an empty sphere's radius only to about a mesh spacing (the centre need not be a
node), so a structure is flagged when its largest hole exceeds the training one by more than the
model's mesh spacing. Units: Bohr (positions in Angstrom where they are reported to a user).
"""

from __future__ import annotations

import numpy as np

from .descriptors import DescriptorSpec
from .neighbors import PeriodicNeighbors

__all__ = ["nearest_atom_distance_bohr", "largest_hole", "training_domain_metadata", "nearest_atom_columns",
           "hole_warning", "beyond_training_domain", "HOLE_METHOD", "METADATA_KEY"]

METADATA_KEY = "training_domain"
HOLE_METHOD = ("largest distance from a node of a training cell's SPARC grid to its nearest atom (periodic "
               "images counted), over all training cells")


def nearest_atom_distance_bohr(positions_bohr, cell_bohr, pbc, points_bohr, workers: int = 1) -> np.ndarray:
    """Distance (Bohr) from each point to its nearest atom, every periodic image counted."""
    return PeriodicNeighbors(positions_bohr, cell_bohr, pbc).query(points_bohr, 1, workers=workers).distances_bohr[:, 0]


def largest_hole(atoms, grid, chunk_points: int = 262_144) -> tuple[float, int]:
    """(radius, flat index): the largest nearest-atom distance over the nodes of ``grid`` for ``atoms``
    (ase.Atoms, Angstrom), and the node where it is (file order)."""
    from ase.units import Bohr

    nb = PeriodicNeighbors(atoms.get_positions() / Bohr, grid.cell_bohr, grid.pbc)
    best, where = -1.0, 0
    for start, stop in grid.chunks(chunk_points):
        d = nb.query(grid.points_bohr(start, stop), 1).distances_bohr[:, 0]
        i = int(np.argmax(d))
        if d[i] > best:
            best, where = float(d[i]), start + i
    return best, where


def training_domain_metadata(snapshots, base: dict | None = None) -> dict:
    """The model file's ``training_domain`` entry: the largest hole over the training snapshots'
    grids and the cell it is in; with ``base`` (a fine-tuned model's parent entry), the larger of the
    two, since the parent's training data is part of what the model has seen."""
    radius, cell = -1.0, None
    for snap in snapshots:
        r, _ = largest_hole(snap.atoms, snap.grid)
        if r > radius:
            radius, cell = r, snap.name
    if base and base.get("largest_hole_bohr") is not None and float(base["largest_hole_bohr"]) >= radius:
        radius, cell = float(base["largest_hole_bohr"]), base.get("cell")
    return {"largest_hole_bohr": radius, "cell": cell, "method": HOLE_METHOD}


def nearest_atom_columns(spec: DescriptorSpec) -> list[int]:
    """Columns of a descriptor row holding the nearest distance of each species (Set I's first entry);
    their minimum is the distance to the nearest atom (an absent species sits at 1000 Bohr)."""
    return [b * spec.n_per_species for b in range(len(spec.species))]


def beyond_training_domain(largest_hole_bohr: float | None, training_hole_bohr: float | None,
                           margin_bohr: float) -> bool:
    """Whether a structure's largest hole exceeds the training cells' by more than ``margin_bohr`` (False
    when either is unknown): the rule behind :func:`hole_warning`."""
    return (training_hole_bohr is not None and largest_hole_bohr is not None
            and largest_hole_bohr > training_hole_bohr + margin_bohr)


def hole_warning(largest_hole_bohr: float | None, position_ang, training_hole_bohr: float | None,
                 margin_bohr: float, beyond_fraction: float | None) -> str | None:
    """The one-line warning of a structure with a larger hole than any training cell (None otherwise,
    or when the model records no training domain)."""
    if not beyond_training_domain(largest_hole_bohr, training_hole_bohr, margin_bohr):
        return None
    x, y, z = position_ang
    return (f"a hole of {largest_hole_bohr:.2f} Bohr (farthest point from every atom, at {x:.2f}, {y:.2f}, {z:.2f} "
            f"Angstrom) is larger than any in the training cells ({training_hole_bohr:.2f} Bohr); "
            f"{100 * beyond_fraction:.2g} % of the points lie beyond that distance from every atom and their density is "
            "extrapolated: the sigma there may be too small")
