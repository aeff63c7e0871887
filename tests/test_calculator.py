"""MLRhoCalculator: ASE conventions, units, caching, and the structures it refuses or wraps."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.units import Bohr

from ase_mlrho import inference
from ase_mlrho.calculator import MLRhoCalculator, OutOfDistributionWarning
from ase_mlrho.descriptors import UnknownSpeciesError
from ase_mlrho.grid import InvalidStructureError
from ase_mlrho.inference import run_prediction
from ase_mlrho.model_files import load_model
from tests.test_inference import al_cell, train_toy_model


@pytest.fixture(scope="session")
def toy_model_path(tmp_path_factory):
    return train_toy_model(str(tmp_path_factory.getbasetemp()))


@pytest.fixture
def counted(monkeypatch):
    """Count the predictions the calculator runs."""
    calls = []
    real = inference.run_prediction

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("ase_mlrho.calculator.run_prediction", counting)
    return calls


def test_properties_shapes_and_units_follow_ase_conventions(toy_model_path):
    atoms = al_cell((2, 1, 1))
    calc = MLRhoCalculator(model=toy_model_path, seed=3)
    atoms.calc = calc
    rho = calc.get_property("density", atoms)
    assert rho.shape == (62, 31, 31) and rho.dtype == np.float64
    assert rho is not calc.results["density"]  # ASE hands out copies
    # electrons/Angstrom^3: mean x volume (Angstrom^3) is the electron count, exactly after renormalisation
    assert rho.mean() * atoms.get_volume() == pytest.approx(24.0, rel=1e-12)
    assert np.array_equal(calc.get_pseudo_density(atoms), rho)
    assert np.array_equal(calc.get_pseudo_density(atoms, spin=0), rho / 2)
    # the same numbers as the inference engine, converted from electrons/Bohr^3
    field = run_prediction(load_model(toy_model_path), atoms,
                           settings=inference.InferenceSettings(seed=3)).field
    assert np.allclose(rho, field.density / Bohr ** 3, rtol=1e-14, atol=0)
    ale = calc.get_property("density_sigma_aleatoric", atoms)
    epi = calc.get_property("density_sigma_epistemic", atoms)
    tot = calc.get_property("density_sigma_total", atoms)
    assert np.allclose(tot, np.sqrt(ale ** 2 + epi ** 2), rtol=1e-12)
    assert np.allclose(epi, field.sigma_epistemic / Bohr ** 3, rtol=1e-14, atol=0)
    assert epi.max() > 0 and ale.min() > 0
    raw = calc.get_property("electrons_raw", atoms)
    assert raw == pytest.approx(field.electrons_raw, rel=1e-14) and abs(raw - 24.0) < 2.4
    assert calc.get_property("n_electrons", atoms) == 24.0
    with pytest.raises(PropertyNotImplementedError):
        calc.get_property("energy", atoms)


def test_results_are_cached_until_the_atoms_or_parameters_change(toy_model_path, counted):
    atoms = al_cell((1, 1, 1))
    calc = MLRhoCalculator(model=load_model(toy_model_path))
    atoms.calc = calc
    first = calc.get_pseudo_density(atoms)
    calc.get_property("density_sigma_total", atoms)
    calc.get_property("electrons_raw")
    assert len(counted) == 1  # one prediction serves every property
    atoms.positions[0] += 0.05
    moved = calc.get_pseudo_density(atoms)
    assert len(counted) == 2 and not np.array_equal(moved, first)
    calc.get_pseudo_density(atoms)
    assert len(counted) == 2
    calc.set(seed=1)  # other weight samples: recomputed, same density to the sampling noise
    other = calc.get_pseudo_density(atoms)
    assert len(counted) == 3 and not np.array_equal(other, moved)
    assert np.max(np.abs(other - moved)) < 0.05 * moved.max()
    calc.set(seed=1)  # no change: still cached
    calc.get_pseudo_density(atoms)
    assert len(counted) == 3
    calc.reset()
    assert calc.results == {} and calc.grid is None
    calc.get_pseudo_density(atoms)
    assert len(counted) == 4


def test_out_of_distribution_structures_warn_once_with_the_fraction(toy_model_path, recwarn):
    """The toy model saw only the perfect crystal at a = 4.05 A: that is in distribution, 6 % compression is
    not. The calculator reports the fraction (the points above the model's validation threshold, counted
    here from its own epistemic field) and warns in one line naming it; the expected eps is sqrt(2/pi)
    * integral sigma dV / N_e of the field it returns."""
    thr = load_model(toy_model_path).epistemic_sigma_validation_max
    for a_ang, warned in ((4.05, False), (3.8, True)):
        atoms = bulk("Al", "fcc", a=a_ang, cubic=True)
        calc = MLRhoCalculator(model=toy_model_path)
        atoms.calc = calc
        epi = calc.get_density_uncertainty(atoms, "epistemic") * Bohr ** 3 / calc.summary.renormalisation_factor
        fraction = calc.get_property("ood_fraction", atoms)
        assert fraction == pytest.approx(np.mean(epi > thr), abs=1e-6)
        assert (fraction > 0.01) is warned
        every = [w for w in recwarn if issubclass(w.category, OutOfDistributionWarning)]
        ood = [w for w in every if "epistemic sigma" in str(w.message)]  # (the toy model's raw count may warn too)
        assert len(ood) == int(warned)
        if warned:
            assert f"{100 * fraction:.1f} %" in str(ood[0].message) and "\n" not in str(ood[0].message)
        sigma = calc.get_density_uncertainty(atoms) * Bohr ** 3  # e/Bohr^3
        brute = 100 * np.sqrt(2 / np.pi) * sigma.mean() * atoms.get_volume() / Bohr ** 3 / 12.0
        assert calc.get_property("expected_eps_percent", atoms) == pytest.approx(brute, rel=1e-9)
        calc.get_pseudo_density(atoms)  # cached: no second warning
        assert len([w for w in recwarn if issubclass(w.category, OutOfDistributionWarning)]) == len(every)
        recwarn.clear()


def test_the_same_seed_gives_a_bit_identical_density(toy_model_path):
    atoms = al_cell((1, 1, 1))
    a = MLRhoCalculator(model=toy_model_path, seed=7).get_property("density_sigma_epistemic", atoms)
    b = MLRhoCalculator(model=toy_model_path, seed=7, chunk_points=4096).get_property("density_sigma_epistemic", atoms)
    c = MLRhoCalculator(model=toy_model_path, seed=7).get_property("density_sigma_epistemic", atoms)
    assert np.array_equal(a, c)
    assert np.max(np.abs(a - b)) <= 1e-6 * a.max()


def test_posterior_renormalisation_is_passed_to_the_engine(toy_model_path):
    atoms = al_cell((1, 1, 1))
    calc = MLRhoCalculator(model=toy_model_path, renormalisation="posterior")
    rho = calc.get_property("density", atoms)
    field = run_prediction(load_model(toy_model_path), atoms,
                           settings=inference.InferenceSettings(renormalisation="posterior")).field
    assert np.allclose(rho, field.density / Bohr ** 3, rtol=1e-14, atol=0)
    assert rho.mean() * atoms.get_volume() == pytest.approx(12.0, rel=1e-12)
    scaled = MLRhoCalculator(model=toy_model_path).get_property("density", atoms)
    assert np.max(np.abs(rho - scaled)) > 1e-6 * rho.max()  # not the default field under another name


def test_atoms_outside_the_cell_are_wrapped(toy_model_path):
    atoms = al_cell((1, 1, 1))
    far = atoms.copy()
    far.positions += 3 * atoms.cell[0] - 2 * atoms.cell[2]  # whole lattice vectors: the same crystal
    calc = MLRhoCalculator(model=toy_model_path)
    rho = calc.get_property("density", atoms)
    rho_far = calc.get_property("density", far)
    assert np.max(np.abs(rho_far - rho)) <= 1e-6 * rho.max()


def test_a_one_atom_primitive_cell_is_the_infinite_crystal(toy_model_path):
    prim = bulk("Al", "fcc", a=4.05)  # 1 atom, 2.86 A vectors: far smaller than the descriptor's reach
    calc = MLRhoCalculator(model=toy_model_path)
    rho = calc.get_property("density", prim)
    assert rho.mean() * prim.get_volume() == pytest.approx(3.0, rel=1e-12)
    # the raw prediction integrates close to the conventional cell's, per atom
    raw_prim = calc.get_property("electrons_raw", prim)
    raw_conv = MLRhoCalculator(model=toy_model_path).get_property("electrons_raw", bulk("Al", "fcc", a=4.05, cubic=True))
    assert raw_prim == pytest.approx(raw_conv / 4, rel=1e-2)


@pytest.mark.parametrize("case, error, match", [
    ("copper", UnknownSpeciesError, "knows Al; structure has Cu"),
    ("empty", InvalidStructureError, "no atoms"),
    ("singular", InvalidStructureError, "singular"),
    ("outside_vacuum", InvalidStructureError, "outside the box along the non-periodic direction 2"),
    ("cluster", InvalidStructureError, "M = 12 nearest atoms"),
    ("duplicate", InvalidStructureError, "atom 0 is 0.3 Angstrom from atom 1 .or its periodic image.*duplicated atom"),
])
def test_structures_the_calculator_refuses(case, error, match, toy_model_path):
    if case == "copper":
        atoms = al_cell((1, 1, 1))
        atoms[1].symbol = "Cu"
    elif case == "empty":
        atoms = Atoms(cell=[4, 4, 4], pbc=True)
    elif case == "singular":
        atoms = Atoms("Al2", positions=[[0, 0, 0], [1, 1, 0]], cell=[[4, 0, 0], [0, 4, 0], [4, 4, 0]], pbc=True)
    elif case == "outside_vacuum":
        atoms = al_cell((1, 1, 1), rattle=0)
        atoms.cell[2] = [0, 0, 12.0]
        atoms.pbc = (True, True, False)
        atoms.positions[0, 2] = -1.0
    elif case == "duplicate":  # a copy of atom 0 placed 0.3 Angstrom away through the periodic boundary
        atoms = al_cell((1, 1, 1), rattle=0)
        atoms.positions[1] = atoms.positions[0] + [atoms.cell[0, 0] - 0.3, 0, 0]
    else:
        atoms = al_cell((1, 1, 1), rattle=0)
        atoms.center(vacuum=5.0)
        atoms.pbc = False
    calc = MLRhoCalculator(model=toy_model_path)
    with pytest.raises(error, match=match):
        calc.get_property("density", atoms)


def test_a_slab_with_vacuum_works(toy_model_path):
    slab = al_cell((1, 1, 1), rattle=0)
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = (True, True, False)
    calc = MLRhoCalculator(model=toy_model_path)
    rho = calc.get_property("density", slab)
    grid = calc.grid
    assert grid.pbc == (True, True, False) and rho.shape == grid.shape and rho.shape[2] == grid.intervals[2] + 1
    assert rho.sum() * Bohr ** 3 * grid.dv_bohr3 == pytest.approx(12.0, rel=1e-12)  # SPARC's sum x dV
