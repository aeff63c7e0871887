"""Per-block neighbour tables (ase_mlrho.local_descriptors) against the structure-wide tables.

The block route must give the same descriptors as the structure-wide route (which
tests/test_neighbors_descriptors.py checks against brute-force image loops) for any block, cell
shape, species mix and descriptor set, also when its first cluster radius is too small; and the
same predicted field. Its memory per atom is bounded by construction: checked here on 10^5 atoms.
"""

import numpy as np
import pytest
from ase.build import bulk
from ase.units import Bohr

from ase_mlrho.descriptors import Descriptors, DescriptorSpec, UnknownSpeciesError
from ase_mlrho.grid import Grid
from ase_mlrho.inference import ChunkPlan, InferenceSettings, run_prediction
from ase_mlrho.local_descriptors import LocalDescriptors

AL_SPEC = DescriptorSpec(m=32, m_s=4, k=4, species=("Al",), angular_l_max=3, angular_centers_bohr=(0.0, 3.0, 6.0),
                         angular_width_bohr=1.0, angular_cutoff_bohr=9.0)
SIGE_SPEC = DescriptorSpec(m=12, m_s=3, k=4, species=("Si", "Ge"), angular_l_max=2,
                           angular_centers_bohr=(0.0, 4.0), angular_width_bohr=1.2, angular_cutoff_bohr=8.0)


def triclinic_al(n, seed):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (n, n, n)
    atoms.rattle(0.1, seed=seed)
    atoms.set_cell(atoms.cell[:] @ np.array([[1, 0.1, 0], [0, 1, 0.05], [0.02, 0, 1]]), scale_atoms=True)
    return atoms


def dilute_sige():
    atoms = bulk("Si", "diamond", a=5.54, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=5)
    symbols = atoms.get_chemical_symbols()
    symbols[3] = "Ge"  # one Ge in 16 atoms: its M = 12 nearest images lie far outside the cell
    atoms.set_chemical_symbols(symbols)
    return atoms


def compare_blocks(spec, atoms, spacing, chunk, radius=None):
    grid = Grid.from_atoms(atoms, spacing)
    args = (atoms.positions / Bohr, atoms.numbers, atoms.cell[:] / Bohr)
    whole, local = Descriptors(spec, *args), LocalDescriptors(spec, *args)
    if radius is not None:
        local.radius_bohr = radius
    plan = ChunkPlan.for_grid(grid.shape, chunk)
    worst, radii = 0.0, []
    picks = sorted({0, 1, plan.n_chunks // 2, plan.n_chunks - 1})  # first, interior and last (cell-edge) blocks
    for b in picks:
        pts = grid.points_bohr_at(plan.flat_indices(b))
        src = local.grid_block(grid, plan.slices(b))
        got = src.compute(pts, float64=True)
        worst = max(worst, float(np.max(np.abs(got - whole.compute_float64(pts)))))
        radii.append(src.radius_bohr)
    return worst, radii


@pytest.mark.parametrize("n", [1, 3])
def test_block_descriptors_equal_structure_descriptors_al(n):
    # n = 1: a 4-atom cell far smaller than the cluster radius (many images); n = 3: 108 atoms, slab blocks
    worst, _ = compare_blocks(AL_SPEC, triclinic_al(n, seed=n), 0.5, 4000)
    assert worst < 1e-10


def test_block_descriptors_two_species_with_a_rare_one():
    worst, _ = compare_blocks(SIGE_SPEC, dilute_sige(), 0.6, 3000)
    assert worst < 1e-10


def test_a_too_small_first_radius_grows_until_exact():
    worst, radii = compare_blocks(AL_SPEC, triclinic_al(2, seed=7), 0.5, 5000, radius=3.0)
    assert worst < 1e-10
    assert min(radii) > 9.0  # grew at least to the Set III cut-off (and the M-th neighbour)


def test_block_tables_give_the_same_predicted_field(tmp_path_factory):
    from ase_mlrho.model_files import load_model
    from tests.test_inference import train_toy_model

    model = load_model(train_toy_model(str(tmp_path_factory.getbasetemp())))
    atoms = triclinic_al(1, seed=9).repeat((2, 1, 1))
    a = run_prediction(model, atoms, settings=InferenceSettings(chunk_points=9000, neighbour_tables="structure")).field
    b = run_prediction(model, atoms, settings=InferenceSettings(chunk_points=9000, neighbour_tables="block")).field
    for name in ("density", "sigma_aleatoric", "sigma_epistemic"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.max(np.abs(x - y)) <= 1e-6 * np.max(np.abs(x)), name


def test_memory_per_atom_is_bounded_and_unknown_species_are_refused():
    rng = np.random.default_rng(0)
    side = 46  # a jittered simple-cubic lattice of 46^3 = 97,336 atoms, 2.83 Bohr apart (no duplicated atoms)
    cell = np.diag([130.0, 130.0, 130.0])  # Bohr
    frac = (np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / side
    n = len(frac)
    local = LocalDescriptors(AL_SPEC, (frac + rng.uniform(-0.02, 0.02, frac.shape) / side) @ cell, np.full(n, 13), cell)
    held = sum(v.nbytes for v in vars(local).values() if isinstance(v, np.ndarray))
    assert held <= 64 * n  # positions, numbers, cell list: no per-atom neighbour tables
    # one block of such a cell is computed from a cluster of a few thousand atoms only
    src = local.block(np.array([0.5, 0.5, 0.5]), np.array([0.52, 0.52, 0.52]))
    d = src.compute(np.array([[66.0, 66.0, 66.0]]))
    assert d.shape == (1, AL_SPEC.n_features) and src._desc._all.n_atoms < 5000
    with pytest.raises(UnknownSpeciesError, match="Cu"):
        LocalDescriptors(AL_SPEC, [[0, 0, 0], [2, 2, 2]], [13, 29], np.eye(3) * 8)
    with pytest.raises(ValueError, match="periodic"):
        LocalDescriptors(AL_SPEC, [[0, 0, 0]], [13], np.eye(3) * 8, pbc=(True, True, False))
