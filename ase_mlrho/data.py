"""Training and test data: :class:`Snapshot`, one DFT ground state (structure, grid, density, electrons).

The core knows no DFT code: a SPARC run directory is read into a :class:`Snapshot` by
:func:`sparc_bridge.snapshots.load_snapshot`, which also checks that its pieces agree. A snapshot carries
its electron count and the valence electrons of its species, so training never reads pseudopotentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from .grid import Grid

__all__ = ["Snapshot"]


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One SPARC ground state: structure, grid, converged density, and where it came from.

    Attributes
    ----------
    name : directory name.
    atoms : ``ase.Atoms`` in Angstrom (as sparc-x-api reads them, in the order of the ``.ion`` file's ASE-SORT).
    grid : the SPARC grid (shape equals the printed ``FD_GRID``).
    density_e_per_bohr3 : (Nx, Ny, Nz) converged electron density.
    n_electrons : total valence electrons (from SPARC's output).
    free_energy_ha : SCF free energy (Ha), or None if the run printed none.
    provenance : path, SPARC version, settings, and the ``meta.json`` content.
    valence_electrons : valence electrons per element of the pseudopotentials the run used.
    """

    name: str
    atoms: Atoms
    grid: Grid
    density_e_per_bohr3: np.ndarray
    n_electrons: float
    free_energy_ha: float | None = None
    provenance: dict = field(default_factory=dict)
    valence_electrons: dict = field(default_factory=dict)

    @property
    def natoms(self) -> int:
        return len(self.atoms)

    @property
    def electrons_integrated(self) -> float:
        return self.grid.integrate(self.density_e_per_bohr3)
