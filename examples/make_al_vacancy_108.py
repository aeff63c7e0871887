"""Build ``al_vacancy_108.xyz``: a 3 x 3 x 3 conventional fcc Al supercell (a = 4.05 A, 108 sites)
with the atom nearest the cell centre removed (107 atoms), rattled by 0.03 A with seed 42.

The vacancy position (Angstrom) is kept in the file's info line as ``vacancy_ang``.
"""

from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.io import write


def al_vacancy_108(seed: int = 42, rattle_ang: float = 0.03):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((3, 3, 3))
    centre = atoms.cell.sum(axis=0) / 2
    site = int(np.argmin(np.linalg.norm(atoms.positions - centre, axis=1)))
    vacancy = atoms.positions[site].copy()
    del atoms[site]
    atoms.rattle(rattle_ang, seed=seed)
    atoms.info["vacancy_ang"] = vacancy
    atoms.info["comment"] = f"fcc Al 3x3x3, a=4.05 A, one vacancy, rattled {rattle_ang} A seed {seed}"
    return atoms


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "al_vacancy_108.xyz"
    write(out, al_vacancy_108(), format="extxyz")
    print(f"wrote {out}")
