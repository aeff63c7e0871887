"""Set I / Set II grid-point descriptors (Pathrudkar et al., npj Comput. Mater. 2024).

For a grid point x and, for each species s of the spec (one block per species, so that a Si and a
Ge at the same place give different descriptors):

* **Set I** -- the distances from x to its M nearest atoms of species s, sorted ascending.
* **Set II** -- for each of the M_s nearest atoms i of species s (in order of distance from x), the
  k nearest neighbouring atoms j of atom i (any species, all periodic images, i itself excluded):
  cos of the angle at x between r_i - x and r_j - x; each block of k cosines sorted descending.

Neighbours j of atom i that are tied in distance (perfect crystals: 12 equidistant neighbours in
fcc) are chosen by a rotation-invariant rule: nearest distance shell first, and within a shell the
largest cosines. So descriptors of perfect crystals do not depend on the order in which a k-d tree
happens to return equidistant atoms.

All geometry is float64 in Bohr; ``compute`` returns float32 (``compute_float64`` for tests).
The descriptors depend only on relative positions, so they are invariant to rotation, translation,
permutation of atoms and the choice of periodic supercell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from ase.units import Bohr

from .angular import n_power_spectrum, power_spectrum
from .grid import Grid, InvalidStructureError
from .neighbors import PeriodicNeighbors, validate_positions

__all__ = ["DescriptorSpec", "Descriptors", "UnknownSpeciesError", "TIE_TOLERANCE_BOHR", "check_numbers",
           "check_closest_pair", "MIN_PAIR_DISTANCE_ANG"]

#: distances closer than this are one neighbour shell for the Set II tie rule
TIE_TOLERANCE_BOHR = 1e-6
#: Two nuclei closer than this are refused as a duplicated atom (H2's bond, the shortest, is 0.74 Angstrom).
MIN_PAIR_DISTANCE_ANG = 0.5


def check_closest_pair(neighbors: PeriodicNeighbors) -> None:
    """Refuse two nuclei closer than :data:`MIN_PAIR_DISTANCE_ANG` (periodic images included).

    Such a pair is a duplicated atom, as a bad CIF merge or a wrong wrap leaves: no bond is that short,
    and the model would answer with a density it has never seen and no error, only an
    out-of-distribution warning. Raises :class:`InvalidStructureError` naming the two atoms.
    """
    if neighbors.n_atoms < 2 and not any(neighbors.pbc):
        return
    res = neighbors.query(neighbors.positions_bohr, 2)
    nearest = int(np.argmin(res.distances_bohr[:, -1]))
    d_ang = float(res.distances_bohr[nearest, -1]) * Bohr
    i, j = sorted((nearest, int(res.atom_index[nearest, -1])))  # the pair, lower index first
    if d_ang < 1e-6 * Bohr:
        raise InvalidStructureError(f"atom {i} coincides with another atom (or its periodic image)")
    if d_ang < MIN_PAIR_DISTANCE_ANG:
        which = "its own periodic image" if j == i else f"atom {j} (or its periodic image)"
        raise InvalidStructureError(
            f"atom {i} is {d_ang:.3g} Angstrom from {which}, closer than {MIN_PAIR_DISTANCE_ANG} Angstrom, "
            "shorter than any bond: a duplicated atom? "
            f"ase.geometry.get_duplicate_atoms(atoms, cutoff={MIN_PAIR_DISTANCE_ANG}, delete=True) removes them")


class UnknownSpeciesError(InvalidStructureError):
    """The structure holds an element that the descriptor spec (or model) does not know."""


@dataclass(frozen=True)
class DescriptorSpec:
    """Size and species of the Set I / Set II descriptor.

    m : number of nearest atoms per species in Set I (the paper's M).
    m_s : number of those atoms whose neighbourhoods enter Set II (the paper's M_s), 0 <= m_s <= m.
    k : number of neighbours of each such atom in Set II.
    species : chemical symbols, one descriptor block each (order fixes the feature layout).
    angular_l_max, angular_centers_bohr, angular_width_bohr, angular_cutoff_bohr : Set III, the
        angular power spectrum of the atoms within the cut-off around x (see :mod:`ase_mlrho.angular`);
        off (the paper's descriptor) when ``angular_l_max < 0`` or there are no centres.
    """

    m: int = 32
    m_s: int = 4
    k: int = 4
    species: tuple[str, ...] = field(default=("Al",))
    angular_l_max: int = -1
    angular_centers_bohr: tuple[float, ...] = ()
    angular_width_bohr: float = 0.5
    angular_cutoff_bohr: float = 8.0

    def __post_init__(self):
        species = (self.species,) if isinstance(self.species, str) else tuple(self.species)
        object.__setattr__(self, "species", species)
        if not isinstance(self.m, (int, np.integer)) or self.m < 1:
            raise ValueError(f"M (Set I neighbours) must be an integer >= 1, got {self.m!r}")
        if not isinstance(self.m_s, (int, np.integer)) or not 0 <= self.m_s <= self.m:
            raise ValueError(f"M_s must be an integer with 0 <= M_s <= M = {self.m}, got {self.m_s!r}")
        if not isinstance(self.k, (int, np.integer)) or (self.m_s > 0 and self.k < 1):
            raise ValueError(f"k (Set II neighbours per atom) must be an integer >= 1, got {self.k!r}")
        if not species:
            raise ValueError("a descriptor spec needs at least one species")
        for s in species:
            if s not in atomic_numbers or s == "X":
                raise ValueError(f"unknown chemical symbol {s!r} in the descriptor spec")
        if len(set(species)) != len(species):
            raise ValueError(f"species listed twice: {species}")
        object.__setattr__(self, "angular_centers_bohr", tuple(float(c) for c in self.angular_centers_bohr))
        if self.has_angular and not (self.angular_width_bohr > 0 and self.angular_cutoff_bohr > 0):
            raise ValueError("Set III needs a positive radial width and cut-off")

    @property
    def has_angular(self) -> bool:
        return self.angular_l_max >= 0 and len(self.angular_centers_bohr) > 0

    @property
    def n_angular(self) -> int:
        return n_power_spectrum(len(self.angular_centers_bohr), self.angular_l_max) if self.has_angular else 0

    @property
    def n_per_species(self) -> int:
        return self.m + self.m_s * self.k + self.n_angular

    @property
    def n_features(self) -> int:
        return len(self.species) * self.n_per_species

    def feature_names(self) -> list[str]:
        names = []
        for s in self.species:
            names += [f"{s}:d{i}" for i in range(self.m)]
            names += [f"{s}:cos{i}_{j}" for i in range(self.m_s) for j in range(self.k)]
            names += [f"{s}:ps{i}" for i in range(self.n_angular)]
        return names

    def to_dict(self) -> dict:
        d = {"m": int(self.m), "m_s": int(self.m_s), "k": int(self.k), "species": list(self.species)}
        if self.has_angular:
            d.update(angular_l_max=int(self.angular_l_max), angular_centers_bohr=list(self.angular_centers_bohr),
                     angular_width_bohr=float(self.angular_width_bohr),
                     angular_cutoff_bohr=float(self.angular_cutoff_bohr))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DescriptorSpec":
        extra = {k: d[k] for k in ("angular_l_max", "angular_width_bohr", "angular_cutoff_bohr") if k in d}
        if "angular_centers_bohr" in d:
            extra["angular_centers_bohr"] = tuple(d["angular_centers_bohr"])
        return cls(m=int(d["m"]), m_s=int(d["m_s"]), k=int(d["k"]), species=tuple(d["species"]), **extra)


def unknown_species(known, numbers) -> list[str]:
    """Element symbols among ``numbers`` (atomic numbers) that are not in ``known`` (symbols), sorted."""
    known_z = {atomic_numbers[s] for s in known}
    return sorted({chemical_symbols[int(z)] for z in set(np.asarray(numbers).reshape(-1).tolist()) - known_z})


def check_numbers(spec: DescriptorSpec, numbers, n_atoms: int) -> np.ndarray:
    """Atomic numbers as an int array, one per atom, all of species the spec knows
    (:class:`UnknownSpeciesError` naming the others)."""
    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    if numbers.shape[0] != n_atoms:
        raise InvalidStructureError(f"{numbers.shape[0]} atomic numbers for {n_atoms} positions")
    unknown = unknown_species(spec.species, numbers)
    if unknown:
        raise UnknownSpeciesError(
            f"the descriptor knows {', '.join(spec.species)}; the structure also has {', '.join(unknown)}"
        )
    return numbers


class Descriptors:
    """Descriptor calculator for one structure; build once, then compute any chunk of points.

    Parameters
    ----------
    spec : the descriptor spec.
    positions_bohr, numbers, cell_bohr, pbc : the structure (Bohr). Use :meth:`from_atoms` for an ``ase.Atoms``.
    """

    def __init__(self, spec: DescriptorSpec, positions_bohr, numbers, cell_bohr, pbc=(True, True, True)):
        pos, cell, pbc = validate_positions(positions_bohr, cell_bohr, pbc)
        numbers = check_numbers(spec, numbers, len(pos))
        self.spec = spec
        self.cell_bohr, self.pbc, self.numbers = cell, pbc, numbers
        self._all = PeriodicNeighbors(pos, cell, pbc)
        check_closest_pair(self._all)
        self._by_species = []
        for s in spec.species:
            sel = np.flatnonzero(numbers == atomic_numbers[s])
            if sel.size == 0:
                self._by_species.append(None)
            else:
                self._by_species.append((sel, PeriodicNeighbors(pos[sel], cell, pbc)))
        self._candidates, self._shell, self._n_cand = self._atom_neighbourhoods()

    @classmethod
    def from_atoms(cls, spec: DescriptorSpec, atoms) -> "Descriptors":
        """Descriptors for an ``ase.Atoms`` (positions and cell in Angstrom)."""
        return cls(spec, atoms.get_positions() / Bohr, atoms.numbers, np.asarray(atoms.cell) / Bohr, atoms.pbc)

    # ------------------------------------------------------------------ per-structure tables
    def _atom_neighbourhoods(self):
        """For every atom: displacement vectors to the candidate neighbours for Set II (all atoms
        within the k-th neighbour distance + tolerance, images included, the atom itself excluded),
        padded with NaN, and their distance-shell index."""
        k = self.spec.k
        n = self._all.n_atoms
        if self.spec.m_s == 0:
            return np.zeros((n, 0, 3)), np.zeros((n, 0), dtype=np.int64), np.zeros(n, dtype=np.int64)
        if not any(self.pbc) and k > n - 1:
            raise InvalidStructureError(f"Set II needs k = {k} neighbours per atom; the structure has only {n} atoms")
        extra = 12
        while True:
            q = k + 1 + extra
            if not any(self.pbc):
                q = min(q, n)
            res = self._all.query(self._all.positions_bohr, q)
            dist, disp = res.distances_bohr[:, 1:], res.displacements_bohr[:, 1:]  # drop the atom itself
            limit = dist[:, k - 1] + TIE_TOLERANCE_BOHR
            n_cand = np.sum(dist <= limit[:, None], axis=1)
            if np.all(n_cand < dist.shape[1]) or (not any(self.pbc) and q == n):
                break
            extra *= 2
        c = int(n_cand.max())
        valid = np.arange(c)[None, :] < n_cand[:, None]  # (n, c): column j holds a candidate of atom a
        cand = np.where(valid[..., None], disp[:, :c], np.nan)
        gaps = np.diff(dist[:, :c], axis=1) > TIE_TOLERANCE_BOHR
        shell = np.concatenate([np.zeros((n, 1), dtype=np.int64), np.cumsum(gaps, axis=1)], axis=1)
        shell = np.where(valid, shell, np.iinfo(np.int64).max // 8)
        return cand, shell, n_cand

    # ------------------------------------------------------------------ descriptors
    def compute_float64(self, points_bohr, workers: int = 1) -> np.ndarray:
        """(P, n_features) float64 descriptors of the given Cartesian points (Bohr)."""
        return self._compute(points_bohr, workers, np.float64)

    def _compute(self, points_bohr, workers: int, set3_dtype) -> np.ndarray:
        pts = np.asarray(points_bohr, dtype=np.float64)
        spec = self.spec
        out = np.empty((pts.shape[0], spec.n_features), dtype=np.float64)
        for b, entry in enumerate(self._by_species):
            o = b * spec.n_per_species
            if entry is None:
                # species absent from this structure: as if its atoms were infinitely far away
                out[:, o:o + spec.m] = _ABSENT_DISTANCE_BOHR
                out[:, o + spec.m:o + spec.n_per_species] = 0.0
                continue
            sel, nb = entry
            # Set II needs displacements up to the M_s-th atom and any atoms tied with it; Set III all
            n_disp = spec.m if spec.has_angular else min(spec.m, spec.m_s + _TIE_MARGIN)
            res = nb.query(pts, spec.m, workers=workers, n_displacements=n_disp)
            out[:, o:o + spec.m] = res.distances_bohr
            o2 = o + spec.m + spec.m_s * spec.k
            if spec.m_s:
                blocks = self._set2_ordered(res.distances_bohr, res.displacements_bohr, sel[res.atom_index])
                out[:, o + spec.m:o2] = blocks.reshape(len(pts), -1)
            if spec.has_angular:
                out[:, o2:o2 + spec.n_angular] = self._set3(nb, pts, res, workers, set3_dtype)
        return out

    def _set3(self, nb, pts, res, workers, dtype=np.float64) -> np.ndarray:
        """Set III over every atom within the cut-off: points whose M-th neighbour lies inside the
        cut-off are queried again with more neighbours."""
        spec = self.spec
        dist, disp = res.distances_bohr, res.displacements_bohr
        out = np.empty((len(pts), spec.n_angular))
        short = np.flatnonzero(dist[:, -1] < spec.angular_cutoff_bohr)
        full = np.setdiff1d(np.arange(len(pts)), short)
        args = (spec.angular_centers_bohr, spec.angular_width_bohr, spec.angular_cutoff_bohr, spec.angular_l_max, dtype)
        # neighbours are sorted by distance: columns beyond the last one inside the cut-off add nothing
        k_in = int(np.max(np.sum(dist[full] < spec.angular_cutoff_bohr, axis=1), initial=1))
        for part in np.array_split(full, max(1, len(full) // _SET3_BLOCK)):
            out[part] = power_spectrum(dist[part, :k_in], disp[part, :k_in], *args)
        k = 2 * spec.m
        while short.size:
            r = nb.query(pts[short], k, workers=workers)
            done = r.distances_bohr[:, -1] >= spec.angular_cutoff_bohr
            if np.any(done):
                out[short[done]] = power_spectrum(r.distances_bohr[done], r.displacements_bohr[done], *args)
            short, k = short[~done], 2 * k
        return out

    def _set2_ordered(self, dist, disp, atoms) -> np.ndarray:
        """(P, M_s, k) Set II blocks of the M_s nearest atoms. Atoms of x tied in distance (a grid
        point on a mirror plane of a perfect crystal) are ordered by a rotation-invariant rule --
        nearest shell first, then their blocks in descending lexicographic order -- and the
        choice among atoms tied at the M_s-th place follows the same rule."""
        ms = self.spec.m_s
        blocks = self._set2(disp[:, :ms], atoms[:, :ms])
        upto = min(dist.shape[1], ms + 1)
        tied = np.flatnonzero(np.any(np.diff(dist[:, :upto], axis=1) <= TIE_TOLERANCE_BOHR, axis=1))
        if tied.size == 0:
            return blocks
        d = dist[tied]
        n_c = min(disp.shape[1], int(np.max(np.sum(d <= d[:, ms - 1:ms] + TIE_TOLERANCE_BOHR, axis=1))))
        cand = self._set2(disp[tied, :n_c], atoms[tied, :n_c])  # (T, n_c, k)
        shells = np.concatenate(
            [np.zeros((len(tied), 1)), np.cumsum(np.diff(d[:, :n_c], axis=1) > TIE_TOLERANCE_BOHR, axis=1)], axis=1
        )
        keys = [np.round(-cand[:, :, j], 8) for j in reversed(range(self.spec.k))] + [shells]
        order = np.broadcast_to(np.arange(n_c), (len(tied), n_c))
        for key in keys:  # least significant key first; stable sorts give the lexicographic order
            step = np.argsort(np.take_along_axis(key, order, axis=1), axis=1, kind="stable")
            order = np.take_along_axis(order, step, axis=1)
        blocks[tied] = np.take_along_axis(cand, order[:, :ms, None], axis=1)
        return blocks

    def compute(self, points_bohr, workers: int = 1) -> np.ndarray:
        """(P, n_features) float32 descriptors: geometry, Set I and Set II in float64, Set III in
        float32 (its relative error, ~1e-6, is far below what the model resolves; twice as fast)."""
        return self._compute(points_bohr, workers, np.float32).astype(np.float32)

    def compute_grid(self, grid: Grid, start: int = 0, stop: int | None = None, workers: int = 1) -> np.ndarray:
        """Descriptors of grid points ``start:stop`` in file order."""
        return self.compute(grid.points_bohr(start, stop), workers)

    def _set2(self, d_i: np.ndarray, atoms: np.ndarray) -> np.ndarray:
        """(P, M_s, k) sorted cosines at x between r_i - x (= d_i) and r_j - x (= d_i + r_j - r_i)."""
        k = self.spec.k
        cand = self._candidates[atoms]  # (P, Ms, C, 3)
        d_j = d_i[:, :, None, :] + cand
        num = np.einsum("pmd,pmcd->pmc", d_i, d_j)
        norm_i = np.sqrt(np.einsum("pmd,pmd->pm", d_i, d_i))
        norm_j = np.sqrt(np.einsum("pmcd,pmcd->pmc", d_j, d_j))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = num / (norm_i[:, :, None] * norm_j)
        # a grid point on top of an atom (r_i = x or r_j = x): the angle is undefined; use 1
        on_atom = (norm_i[:, :, None] < _ON_ATOM_BOHR) | (norm_j < _ON_ATOM_BOHR)
        cos = np.where(on_atom, 1.0, np.clip(cos, -1.0, 1.0))
        if cand.shape[2] > k:
            padded = np.isnan(cand[..., 0])
            cos = np.where(padded, -np.inf, cos)
            # nearest shell first, then the largest cosines: a rotation-invariant choice among ties
            key = self._shell[atoms] * 4.0 - cos
            order = np.argsort(key, axis=-1, kind="stable")[..., :k]
            cos = np.take_along_axis(cos, order, axis=-1)
        return -np.sort(-cos, axis=-1)


#: extra displacements kept beyond M_s for atoms tied in distance with the M_s-th one
_TIE_MARGIN = 12

#: points per block in the Set III evaluation (bounds its (points x neighbours x harmonics) work array)
_SET3_BLOCK = 4096

#: a point closer than this to an atom is "on" the atom (Set II angle undefined, cosine set to 1)
_ON_ATOM_BOHR = 1e-8

#: Set I distance used for a species that the spec knows but the structure lacks
_ABSENT_DISTANCE_BOHR = 1.0e3
