"""The structure files of the cells unlike the training sets (issue 14 item 1; session 13).

An adjacent di-vacancy (an atom and its nearest neighbour removed) and a free (100) slab (10 A of vacuum
along z) of the 32-atom fcc Al cell (a = 4.05 A) and of the 64-atom Si32Ge32 cell (x = 0.5, Vegard's
5.544 A, the occupation of ``BulkSpec.decorate`` with seeds 61 and 65). ``mlrho datagen --structure``
thermalises and computes them (commands in ``data/README.md``); strained and hotter cells need no file.

    python benchmarks/unseen_structures.py [OUT_DIR]     # default data/sparc/unseen/structures

``--divacancies [OUT_DIR]`` writes instead the SiGe di-vacancies of session 14 (default
data/sparc/sige/divac/structures): x = 0.3 / 0.5 / 0.7 with occupation seeds 71 / 72 / 73 (training cells of
``sige-pbe``) and x = 0.4 with seed 74 (held out), each on its Vegard lattice.

``--al-slabs [OUT_DIR]`` writes the aluminium slabs of session 15 (default data/sparc/al_kpts/slab_structures):
free (100), (110) and (111) surfaces of fcc Al (a = 4.05 A), 32 atoms each with 10 A of vacuum, in orthogonal
cells (SPARC's non-orthogonal Laplacian made a hexagonal (111) cell several times slower): (100) and (110)
8 layers of 4 atoms, (111) 4 layers of 8. ``al-pbe`` trains on the first two and is tested on (111), an
orientation it never saw, and on the (100) slab of ``data/sparc/unseen`` (``data/README.md`` has the
``mlrho datagen`` lines).

``--sige-slabs [OUT_DIR]`` writes the SiGe slabs of session 16 (default data/sparc/sige/slab_structures), 64
atoms with 10 A of vacuum on Vegard lattices, orthogonal cells. ``sige-pbe`` trains on a (100) slab at x = 0.3
(the cubic 64-atom cell, 8 layers, two dangling bonds per surface atom, occupation seed 331) and a (110)
slab at x = 0.7 (lateral 7.9 x 11.2 A, one dangling bond per surface atom, seed 333); held out are a (111)
slab at x = 0.4 (4 bilayers of 16 atoms cut at the glide plane, one dangling bond per surface atom, lateral
7.8 x 13.5 A, seed 334), an orientation it never trained on, and the x = 0.5 (100) slab of
``data/sparc/unseen``.

``--voids [OUT_DIR]`` writes the void of session 18 (default data/sparc/unseen/structures): the Si32Ge32 cell
(x = 0.5, Vegard's 5.544 A, occupation seed 91) without an atom and its four nearest neighbours, 59 atoms, a
hole of 7.4 Bohr (the removed atom's second neighbours): larger than any bulk or defect hole in training, so
the surface term of ``sige-pbe`` (``ase_mlrho/surface.py``, fitted on slabs only) sees it as vacuum; and the
32-atom fcc Al cell without a tetrahedron of four mutually nearest sites, 28 atoms, a hole of 6.35 Bohr (the
Al di-vacancy's is 5.22); since session 20 also a held-out Al penta-vacancy (the tetrahedron and a fifth site
bonded to two of its sites, 27 atoms).

``--sige-voids [OUT_DIR]`` writes the SiGe voids of session 19 (default data/sparc/sige/void_structures): two
training voids like the held-out one (an atom and its four nearest neighbours removed, 59 atoms) at x = 0.3
and 0.7 (occupation seeds 92, 93), and a larger held-out void at x = 0.5 (seed 94): an atom with its first
and second neighbours removed (17 atoms, 47 left), a hole of about 8.7 Bohr (the third neighbours'
distance), which the surface term sees as vacuum.

``--larger [OUT_DIR]`` writes the larger cells of session 19 (default data/sparc/unseen/structures): the cubic
cells repeated 2 x 2 x 4 instead of 2 x 2 x 2, twice the atoms of every training cell and a cell twice as long
along z: Si64Ge64 (x = 0.5, Vegard's 5.544 A, occupation seed 95; Gamma point like every SiGe cell) and Al64
(a = 4.05 A), computed on a 2x2x1 grid shifted by 0.5, which for the perfect crystal is the Al32 2x2x2 grid of
``al-pbe``'s training cells unfolded: the same k-point sampling per atom, so the cell differs from the training
cells only in what a larger cell holds (longer-wavelength thermal displacements).

``--al-voids [OUT_DIR]`` writes the aluminium training voids of session 20 (default
data/sparc/al_kpts/void_structures): the held-out tetra-vacancy's cut (28 atoms), to be thermalised at another
temperature and seed, and an octahedral hexa-vacancy (the six atoms around an octahedral interstice removed, 26
atoms, a hole of 6.63 Bohr in the perfect lattice, the tetra-vacancy's is 6.35): ``al-pbe`` trains on both, the
held-out tetra-vacancy of ``data/sparc/unseen`` stays held out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

#: the fcc Al lattice constant every Al structure here is cut from (A)
AL_A_ANG = 4.05


def divacancy(atoms):
    """``atoms`` without atom 0 and its nearest neighbour (periodic images counted)."""
    atoms = atoms.copy()
    d = atoms.get_distances(0, range(1, len(atoms)), mic=True)
    del atoms[[0, 1 + int(np.argmin(d))]]
    return atoms


def void(atoms, n_shell: int = 4):
    """``atoms`` without atom 0 and its ``n_shell`` nearest neighbours (periodic images counted)."""
    atoms = atoms.copy()
    d = atoms.get_distances(0, range(1, len(atoms)), mic=True)
    del atoms[[0, *(1 + np.argsort(d)[:n_shell]).tolist()]]
    return atoms


def slab(atoms, vacuum_ang: float = 10.0):
    """``atoms`` with ``vacuum_ang`` of vacuum along z (half on each side), still periodic in 3D."""
    atoms = atoms.copy()
    atoms.center(vacuum=vacuum_ang / 2, axis=2)
    atoms.pbc = True
    return atoms


def al_fcc32():
    """The 32-atom fcc Al cell (a = 4.05 A, the cubic cell repeated twice) the Al structures start from."""
    from ase.build import bulk

    return bulk("Al", "fcc", a=AL_A_ANG, cubic=True).repeat(2)


def unseen_cells() -> dict:
    """File name -> the structures of session 13: Al and Si32Ge32 (x = 0.5) di-vacancies and (100) slabs."""
    from sparc_bridge.sampling import BulkSpec

    al = al_fcc32()
    spec = BulkSpec("Si", "diamond", 5.544, 2, "Ge", 0.5, 0)
    return {"al_divac.xyz": divacancy(al), "al_slab100.xyz": slab(al),
            "sige_divac.xyz": divacancy(spec.decorate(spec.build(), 61)),
            "sige_slab100.xyz": slab(spec.decorate(spec.build(), 65))}


#: the SiGe di-vacancies of session 14: (x, occupation seed)
DIVACANCIES = ((0.3, 71), (0.5, 72), (0.7, 73), (0.4, 74))


def sige_alloy(x: float, seed: int, build=None):
    """Si(1-x)Ge(x) on its Vegard lattice, the occupation of ``BulkSpec.decorate`` with ``seed``: the 64-atom cubic
    cell, or the structure ``build(a_ang)`` makes."""
    from selection_study import vegard_a_ang  # benchmarks/ is on sys.path when a script here runs
    from sparc_bridge.sampling import BulkSpec

    spec = BulkSpec("Si", "diamond", vegard_a_ang(x), 2, "Ge", x, 0)
    return spec.decorate(spec.build() if build is None else build(vegard_a_ang(x)), seed)


def sige_divacancies() -> dict:
    """File name -> structure of the SiGe di-vacancies in :data:`DIVACANCIES` (Vegard lattices)."""
    return {f"sige_x={x}_divac_s{seed}.xyz": divacancy(sige_alloy(x, seed)) for x, seed in DIVACANCIES}


def al_slabs() -> dict:
    """File name -> the Al slabs of session 15: (100), (110), (111), 32 atoms, 10 A of vacuum, orthogonal cells."""
    from ase.build import fcc110, fcc111

    out = {"al_slab100.xyz": slab(al_fcc32()),
           "al_slab111.xyz": fcc111("Al", (2, 4, 4), a=AL_A_ANG, vacuum=5.0, orthogonal=True, periodic=True),
           "al_slab110.xyz": fcc110("Al", (2, 2, 8), a=AL_A_ANG, vacuum=5.0, periodic=True)}
    for atoms in out.values():
        atoms.info.clear()  # ase.build's adsorbate_info does not survive extxyz
    return out


def diamond111_slab(a_ang: float, vacuum_ang: float = 10.0):
    """A 64-atom diamond (111) slab, 4 bilayers of 16 atoms in an orthogonal cell (the hexagonal surface cell's
    2 x 2 rectangle), cut at the glide plane: every surface atom keeps three bonds. ``ase.build.surface``
    cuts at the shuffle plane (surface atoms with one bond), so a fifth bilayer is built and its singly
    bonded atoms removed."""
    from ase.build import bulk, make_supercell, surface
    from ase.neighborlist import neighbor_list

    atoms = surface(bulk("Si", "diamond", a=a_ang), (1, 1, 1), 5, vacuum=vacuum_ang / 2, periodic=True)
    atoms = make_supercell(atoms, [[2, 0, 0], [-2, 4, 0], [0, 0, 1]])
    bond_ang = a_ang * np.sqrt(3) / 4  # the second neighbours are at 1.63 bonds
    bonds = np.bincount(neighbor_list("i", atoms, 1.3 * bond_ang), minlength=len(atoms))
    del atoms[bonds < 2]
    atoms.center(vacuum=vacuum_ang / 2, axis=2)
    return atoms


def sige_slabs() -> dict:
    """File name -> the SiGe slabs: (100) at x = 0.3 and (110) at x = 0.7 (training, session 16), (111) at
    x = 0.4 (held out, session 16) and (111) at x = 0.3, 0.5 and 0.6 (training, session 17: other seeds and
    compositions of the held-out cut); 64 atoms each."""
    from ase.build import bulk, surface

    def slab100(a):
        return slab(bulk("Si", "diamond", a=a, cubic=True) * (2, 2, 2))

    def slab110(a):
        return surface(bulk("Si", "diamond", a=a, cubic=True), (1, 1, 0), 4, vacuum=5.0, periodic=True) * (1, 2, 1)

    out = {}
    for name, x, seed, build in (("sige_x=0.3_slab100_s331.xyz", 0.3, 331, slab100),
                                 ("sige_x=0.7_slab110_s333.xyz", 0.7, 333, slab110),
                                 ("sige_x=0.4_slab111_s334.xyz", 0.4, 334, diamond111_slab),
                                 ("sige_x=0.6_slab111_s335.xyz", 0.6, 335, diamond111_slab),
                                 ("sige_x=0.3_slab111_s336.xyz", 0.3, 336, diamond111_slab),
                                 ("sige_x=0.5_slab111_s337.xyz", 0.5, 337, diamond111_slab)):
        out[name] = sige_alloy(x, seed, build)
    return out


def voids() -> dict:
    """File name -> the voids of session 18: SiGe (x = 0.5, 59 atoms) and an Al tetra-vacancy (28 atoms)."""
    from sparc_bridge.sampling import BulkSpec

    spec = BulkSpec("Si", "diamond", 5.544, 2, "Ge", 0.5, 0)
    return {"sige_void5.xyz": void(spec.decorate(spec.build(), 91)), "al_tetravac.xyz": al_tetravacancy(),
            "al_pentavac.xyz": al_pentavacancy()}


def _al_tetrahedron(al):
    """Atom 0 and three of its nearest neighbours that are nearest neighbours of each other (perfect fcc Al), and
    the table of nearest-neighbour pairs."""
    bonded = np.isclose(al.get_all_distances(mic=True), AL_A_ANG / np.sqrt(2), atol=1e-6)
    nn = np.flatnonzero(bonded[0])
    pair = next((i, j) for i in nn for j in nn if i < j and bonded[i, j])
    third = next(k for k in nn if k not in pair and all(bonded[k, p] for p in pair))
    return [0, *pair, third], bonded


def al_tetravacancy():
    """The 32-atom fcc Al cell without a tetrahedron of mutually nearest sites: 28 atoms, a hole of 6.35 Bohr."""
    al = al_fcc32()
    sites, _ = _al_tetrahedron(al)
    del al[sites]
    return al


def al_pentavacancy():
    """The tetra-vacancy with a fifth site removed, the lowest-index atom bonded to two of the tetrahedron's: 27
    atoms, a hole of 6.25 Bohr in the perfect lattice (held out since session 20, a shape no training cell has)."""
    al = al_fcc32()
    sites, bonded = _al_tetrahedron(al)
    fifth = next(i for i in range(len(al)) if i not in sites and bonded[i, sites].sum() == 2)
    del al[[*sites, fifth]]
    return al


def al_hexavacancy():
    """The 32-atom fcc Al cell without the six atoms around the octahedral interstice next to atom 0 (a/2 along
    x): an octahedron of sites, 26 atoms, a hole of 6.63 Bohr (the interstice's second shell, sqrt(3) a / 2)."""
    from ase.geometry import get_distances

    al = al_fcc32()
    site = al.positions[0] + [AL_A_ANG / 2, 0.0, 0.0]
    _, d = get_distances([site], al.positions, cell=al.cell, pbc=True)
    del al[np.flatnonzero(d[0] < 0.6 * AL_A_ANG)]
    return al


def al_voids() -> dict:
    """File name -> the Al training voids of session 20: a tetra-vacancy (the held-out cell's cut, thermalised at
    another temperature and seed) and an octahedral hexa-vacancy, a larger hole than the held-out one."""
    return {"al_tetravac.xyz": al_tetravacancy(), "al_hexavac.xyz": al_hexavacancy()}


#: the SiGe voids of session 19: (x, occupation seed, neighbours removed with the central atom)
SIGE_VOIDS = ((0.3, 92, 4), (0.7, 93, 4), (0.5, 94, 16))


def sige_voids() -> dict:
    """File name -> the SiGe voids of session 19: five-atom voids at x = 0.3 / 0.7 (training), a 17-atom one at
    x = 0.5 (held out); Vegard lattices."""
    return {f"sige_x={x}_void{n_shell + 1}_s{seed}.xyz": void(sige_alloy(x, seed), n_shell)
            for x, seed, n_shell in SIGE_VOIDS}


def larger_cells() -> dict:
    """File name -> the larger cells of session 19: Si64Ge64 (x = 0.5) and Al64, the cubic cells repeated 2 x 2 x 4."""
    from ase.build import bulk
    from sparc_bridge.sampling import BulkSpec

    spec = BulkSpec("Si", "diamond", 5.544, 2, "Ge", 0.5, 0)
    sige = spec.decorate(bulk("Si", "diamond", a=5.544, cubic=True) * (2, 2, 4), 95)
    return {"sige_2x2x4.xyz": sige, "al_2x2x4.xyz": bulk("Al", "fcc", a=AL_A_ANG, cubic=True) * (2, 2, 4)}


#: command-line flag -> (structure set, default folder under data/sparc); no flag: the unseen cells
STRUCTURE_SETS = {None: (unseen_cells, "unseen/structures"),
                  "--divacancies": (sige_divacancies, "sige/divac/structures"),
                  "--al-slabs": (al_slabs, "al_kpts/slab_structures"),
                  "--sige-slabs": (sige_slabs, "sige/slab_structures"),
                  "--voids": (voids, "unseen/structures"),
                  "--sige-voids": (sige_voids, "sige/void_structures"),
                  "--larger": (larger_cells, "unseen/structures"),
                  "--al-voids": (al_voids, "al_kpts/void_structures")}


def main(argv=None) -> int:
    from ase.io import write

    argv = sys.argv[1:] if argv is None else list(argv)
    flags = [a for a in argv if a in STRUCTURE_SETS]
    argv = [a for a in argv if a not in STRUCTURE_SETS]
    make, default = STRUCTURE_SETS[flags[0] if flags else None]
    out = Path(argv[0]) if argv else ROOT / "data" / "sparc" / default
    out.mkdir(parents=True, exist_ok=True)
    for name, atoms in make().items():
        write(out / name, atoms, format="extxyz")
        print(f"{name}: {atoms.get_chemical_formula()}, cell {np.round(atoms.cell.lengths(), 3).tolist()} A")
    return 0


if __name__ == "__main__":
    sys.exit(main())
