"""Neighbours and descriptors against brute force, invariances, and bad input."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.units import Bohr

from ase_mlrho.descriptors import DescriptorSpec, Descriptors, UnknownSpeciesError
from ase_mlrho.grid import Grid, InvalidStructureError
from ase_mlrho.neighbors import PeriodicNeighbors
from tests import brute_force


def random_triclinic(rng, n_atoms, scale=6.0):
    cell = np.eye(3) * scale + rng.uniform(-0.35, 0.35, (3, 3)) * scale
    frac = rng.uniform(0, 1, (n_atoms, 3))
    return cell, frac @ cell


@pytest.mark.parametrize("seed,n_atoms,m,pbc", [
    (0, 5, 12, (True, True, True)),
    (1, 3, 30, (True, True, True)),
    (2, 1, 40, (True, True, True)),          # M far beyond the atoms in the cell: several image shells
    (3, 6, 16, (True, True, False)),         # one non-periodic direction
    (4, 4, 20, (False, True, True)),
])
def test_neighbors_match_brute_force(seed, n_atoms, m, pbc):
    rng = np.random.default_rng(seed)
    cell, pos = random_triclinic(rng, n_atoms)
    pos = pos + rng.normal(0, 3.0, pos.shape)  # atoms outside the cell: wrapped along periodic directions
    pts = rng.uniform(-0.5, 1.5, (40, 3)) @ cell
    nb = PeriodicNeighbors(pos, cell, pbc)
    res = nb.query(pts, m)
    for p, x in enumerate(pts):
        d, idx, disp = brute_force.nearest(x, pos, cell, pbc, m, n_images=12)
        np.testing.assert_allclose(res.distances_bohr[p], d, rtol=0, atol=1e-10)
        np.testing.assert_allclose(np.linalg.norm(res.displacements_bohr[p], axis=1), d, atol=1e-10)
        # the displacement points from x to an image of the reported atom
        frac = np.linalg.solve(cell.T, (x + res.displacements_bohr[p] - pos[res.atom_index[p]]).T).T
        periodic = np.array(pbc)
        np.testing.assert_allclose(frac[:, periodic], np.round(frac[:, periodic]), atol=1e-9)
        np.testing.assert_allclose(frac[:, ~periodic], 0.0, atol=1e-9)


def _halo_by_formula(frac, cell, periodic, radius, spacings):
    """The periodic halo written out: every image (atom a, integer shift s, |s_d| <= ceil(margin_d) + 3) whose
    fractional coordinates lie within margin_d = radius / plane spacing of the unit cube along each periodic
    direction, shift-major and atom-minor (the order the tree indexes)."""
    import itertools
    import math

    margin = np.where(periodic, radius / spacings, 0.0)
    ranges = [range(-math.ceil(m) - 3, math.ceil(m) + 4) if p else [0] for m, p in zip(margin, periodic)]
    atoms, pos = [], []
    for shift in itertools.product(*ranges):
        for a, f in enumerate(frac):
            g = f + np.array(shift, dtype=float)
            if all((not p) or (-m - 1e-12 <= x <= 1 + m + 1e-12) for x, m, p in zip(g, margin, periodic)):
                atoms.append(a)
                pos.append(g @ cell)
    return np.array(atoms), np.array(pos).reshape(-1, 3)


@pytest.mark.parametrize("seed", range(6))
def test_the_periodic_halo_is_every_image_within_the_margin_in_order(seed):
    """PeriodicNeighbors builds its halo one image of the cell at a time (memory O(N)); it must hold exactly the
    images the formula above lists, in the same order: triclinic cells, mixed periodicity, 1 to 9 atoms, margins
    from a tenth of a cell to more than two cells."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 10))
    cell = np.diag(rng.uniform(4, 9, 3)) + rng.normal(0, 1.2, (3, 3))
    pbc = (True, True, True) if seed < 2 else tuple(bool(b) for b in rng.random(3) < 0.6)
    frac = rng.random((n, 3))
    nb = PeriodicNeighbors(frac @ cell, cell, pbc)
    radius = float(rng.uniform(0.5, 14.0))
    nb._build_halo(radius)
    atoms, pos = _halo_by_formula(nb.frac_positions, cell, np.array(pbc), radius, nb._spacings)
    assert np.array_equal(nb._halo_atom, atoms)
    np.testing.assert_allclose(nb._halo_pos, pos, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False)])
def test_bounded_nearest_distance_matches_brute_force(pbc):
    """``nearest_distance_within``: the nearest image's distance where it is within the radius, inf beyond."""
    rng = np.random.default_rng(7)
    cell, pos = random_triclinic(rng, 3)
    pts = rng.uniform(-0.5, 1.5, (60, 3)) @ cell
    radius = 2.5
    got = PeriodicNeighbors(pos, cell, pbc).nearest_distance_within(pts, radius)
    want = np.array([brute_force.nearest(x, pos, cell, pbc, 1, n_images=12)[0][0] for x in pts])
    assert np.isinf(got).any() and np.isfinite(got).any()
    np.testing.assert_allclose(got[want <= radius], want[want <= radius], rtol=0, atol=1e-10)
    assert np.all(np.isinf(got[want > radius]))


@pytest.mark.parametrize("seed,n_atoms,spec,pbc", [
    (10, 7, DescriptorSpec(m=12, m_s=3, k=4, species=("Al",)), (True, True, True)),
    (11, 1, DescriptorSpec(m=40, m_s=4, k=6, species=("Al",)), (True, True, True)),
    (12, 6, DescriptorSpec(m=10, m_s=2, k=3, species=("Al",)), (True, False, True)),
    (13, 8, DescriptorSpec(m=8, m_s=3, k=4, species=("Si", "Ge")), (True, True, True)),
])
def test_descriptors_match_brute_force(seed, n_atoms, spec, pbc):
    rng = np.random.default_rng(seed)
    cell, pos = random_triclinic(rng, n_atoms)
    z_of = {"Al": 13, "Si": 14, "Ge": 32}
    numbers = np.array([z_of[spec.species[i % len(spec.species)]] for i in range(n_atoms)])
    pts = rng.uniform(0, 1, (25, 3)) @ cell
    desc = Descriptors(spec, pos, numbers, cell, pbc).compute_float64(pts)
    assert desc.shape == (25, spec.n_features)
    species_z = [z_of[s] for s in spec.species]
    for p, x in enumerate(pts):
        ref = brute_force.descriptor(x, pos, numbers, cell, pbc, spec.m, spec.m_s, spec.k, species_z, n_images=10)
        np.testing.assert_allclose(desc[p], ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed,n_atoms,m,pbc", [(20, 3, 16, (True, True, True)), (21, 1, 8, (True, True, True)),
                                              (22, 5, 12, (True, False, True))])
def test_set3_power_spectrum_matches_pairwise_legendre(seed, n_atoms, m, pbc):
    """Set III (spherical-harmonic sums, every image within the cut-off even beyond the M nearest)
    against the pairwise Legendre form with explicit image loops."""
    rng = np.random.default_rng(seed)
    cell, pos = random_triclinic(rng, n_atoms, scale=5.0)
    spec = DescriptorSpec(m=m, m_s=1, k=2, species=("Al",), angular_l_max=5,
                          angular_centers_bohr=(1.0, 2.5, 4.0), angular_width_bohr=0.8, angular_cutoff_bohr=7.5)
    pts = rng.uniform(0, 1, (15, 3)) @ cell
    desc = Descriptors(spec, pos, np.full(n_atoms, 13), cell, pbc).compute_float64(pts)
    assert desc.shape[1] == spec.n_features == m + 2 + 6 * 6
    for p, x in enumerate(pts):
        ref = brute_force.power_spectrum(x, pos, cell, pbc, spec.angular_centers_bohr, 0.8, 7.5, 5, n_images=6)
        np.testing.assert_allclose(desc[p, m + 2:], ref, rtol=0, atol=1e-10)


def _rattled_al(seed=0):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.rattle(0.1, seed=seed)
    atoms.set_cell(atoms.cell.array + np.array([[0, 0.2, 0], [0.1, 0, 0], [0, -0.15, 0]]), scale_atoms=True)
    return atoms


@pytest.mark.parametrize("spec", [
    DescriptorSpec(m=24, m_s=4, k=4),
    DescriptorSpec(m=24, m_s=2, k=4, angular_l_max=4, angular_centers_bohr=(1.5, 3.0, 4.5), angular_cutoff_bohr=7.0),
])
def test_invariance_rotation_translation_permutation_supercell(spec):
    atoms = _rattled_al()
    rng = np.random.default_rng(5)
    pts_ang = rng.uniform(0, 1, (60, 3)) @ atoms.cell.array
    ref = Descriptors.from_atoms(spec, atoms).compute(pts_ang / Bohr)

    # rotation of atoms, cell and points together
    rot = atoms.copy()
    rot.rotate(37, (1, 2, 3), rotate_cell=True)
    from scipy.spatial.transform import Rotation
    R = Rotation.from_rotvec(np.deg2rad(37) * np.array([1, 2, 3]) / np.linalg.norm([1, 2, 3])).as_matrix()
    got = Descriptors.from_atoms(spec, rot).compute((pts_ang @ R.T) / Bohr)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)

    # translation of everything (atoms and points)
    shift = np.array([1.3, -2.7, 0.45])
    tr = atoms.copy()
    tr.translate(shift)
    np.testing.assert_allclose(Descriptors.from_atoms(spec, tr).compute((pts_ang + shift) / Bohr), ref,
                               rtol=1e-6, atol=1e-5)

    # permutation of atoms
    perm = atoms[rng.permutation(len(atoms))]
    np.testing.assert_allclose(Descriptors.from_atoms(spec, perm).compute(pts_ang / Bohr), ref, rtol=1e-6, atol=1e-5)

    # the same point in a 2x2x2 supercell
    sc = atoms * (2, 2, 2)
    np.testing.assert_allclose(Descriptors.from_atoms(spec, sc).compute(pts_ang / Bohr), ref, rtol=1e-6, atol=1e-5)


def test_perfect_crystal_ties_do_not_depend_on_atom_order():
    """fcc has 12 equidistant neighbours: Set II must not depend on which the tree returns first."""
    spec = DescriptorSpec(m=16, m_s=4, k=4)
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    grid = Grid.from_atoms(atoms, 0.6)
    pts = grid.points_bohr()
    ref = Descriptors.from_atoms(spec, atoms).compute(pts)
    rng = np.random.default_rng(0)
    for _ in range(3):
        perm = atoms[rng.permutation(len(atoms))]
        np.testing.assert_allclose(Descriptors.from_atoms(spec, perm).compute(pts), ref, atol=1e-5)
    sc = atoms * (2, 1, 3)
    np.testing.assert_allclose(Descriptors.from_atoms(spec, sc).compute(pts), ref, atol=1e-5)
    rot = atoms.copy()
    rot.rotate(90, "z", rotate_cell=True)  # a symmetry-equivalent frame; points rotated with it
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    np.testing.assert_allclose(Descriptors.from_atoms(spec, rot).compute(pts @ R.T), ref, atol=1e-5)


def test_species_resolved_features_distinguish_si_and_ge():
    spec = DescriptorSpec(m=8, m_s=2, k=3, species=("Si", "Ge"))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=2)
    pts = np.array([[0.3, 0.7, 1.1], [2.0, 2.5, 0.2]]) / Bohr
    a = Descriptors.from_atoms(spec, atoms).compute(pts)
    swapped = atoms.copy()
    swapped.numbers[0] = 32
    b = Descriptors.from_atoms(spec, swapped).compute(pts)
    assert np.abs(a - b).max() > 0.1


def test_bad_input_is_refused_clearly():
    spec = DescriptorSpec()
    with pytest.raises(InvalidStructureError, match="no atoms"):
        Descriptors.from_atoms(spec, Atoms(cell=np.eye(3) * 5, pbc=True))
    with pytest.raises(InvalidStructureError, match="singular"):
        Descriptors.from_atoms(spec, Atoms("Al2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True))
    with pytest.raises(InvalidStructureError, match="singular"):
        Descriptors.from_atoms(spec, Atoms("Al", cell=np.zeros((3, 3)), pbc=True))
    bad = bulk("Al", "fcc", a=4.05)
    bad.positions[0, 1] = np.nan
    with pytest.raises(InvalidStructureError, match="NaN"):
        Descriptors.from_atoms(spec, bad)
    with pytest.raises(ValueError, match="M"):
        DescriptorSpec(m=0)
    with pytest.raises(ValueError, match="M_s"):
        DescriptorSpec(m=4, m_s=5)
    with pytest.raises(ValueError, match="unknown chemical symbol"):
        DescriptorSpec(species=("Xx",))
    with pytest.raises(UnknownSpeciesError, match="Cu"):
        Descriptors.from_atoms(spec, bulk("Cu", "fcc", a=3.6))
    twin = Atoms("Al2", positions=[[0, 0, 0], [0, 0, 0]], cell=np.eye(3) * 5, pbc=True)
    with pytest.raises(InvalidStructureError, match="coincides"):
        Descriptors.from_atoms(spec, twin)


@pytest.mark.parametrize("pbc", [True, False])
def test_nuclei_closer_than_half_an_angstrom_are_refused(pbc):
    """A duplicated atom (two nuclei 0.45 Angstrom apart, through the periodic boundary when there is one;
    brute force: the minimum-image distance) is refused, naming both atoms; 0.55 Angstrom (also no bond,
    but above the limit) and one atom in a 0.45 Angstrom-wide periodic cell tell the limit and the self-image case."""
    spec = DescriptorSpec(m=1, m_s=0)
    cell = np.eye(3) * 6.0
    far = 6.0 - 0.45 if pbc else 0.45
    close = Atoms("Al3", positions=[[0.0, 1, 1], [3, 3, 3], [far, 1, 1]], cell=cell, pbc=pbc)
    mic = np.linalg.norm(close.get_distance(0, 2, mic=pbc))
    assert mic == pytest.approx(0.45)
    with pytest.raises(InvalidStructureError, match=r"atom 0 is 0.45 Angstrom from atom 2 .*duplicated"):
        Descriptors.from_atoms(spec, close)
    close.positions[2, 0] = 6.0 - 0.55 if pbc else 0.55
    Descriptors.from_atoms(spec, close)  # accepted
    if pbc:
        thin = Atoms("Al", positions=[[0, 0, 0]], cell=[6.0, 6.0, 0.45], pbc=True)
        with pytest.raises(InvalidStructureError, match="0.45 Angstrom from its own periodic image"):
            Descriptors.from_atoms(spec, thin)
