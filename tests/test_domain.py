"""The training domain (ase_mlrho.domain): nearest-atom distances against brute force, the largest hole of
fcc Al and of a vacancy against geometry, and the figures and warnings predictions report."""

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.units import Bohr

from ase_mlrho.calculator import MLRhoCalculator, OutOfDistributionWarning
from ase_mlrho.cli import main
from ase_mlrho.descriptors import Descriptors, DescriptorSpec
from ase_mlrho.domain import (METADATA_KEY, largest_hole, nearest_atom_columns, nearest_atom_distance_bohr,
                              training_domain_metadata)
from ase_mlrho.grid import Grid
from ase_mlrho.inference import InferenceSettings, run_prediction
from ase_mlrho.model_files import MLRhoModel, load_model, save_model
from tests.brute_force import nearest
from tests.conftest import FIXTURES
from tests.test_inference import train_toy_model

A_ANG = 4.05  # fcc Al lattice parameter of the cells below


@pytest.fixture(scope="module")
def toy_model_path(tmp_path_factory):
    return train_toy_model(str(tmp_path_factory.mktemp("domain")))


@pytest.fixture(scope="module")
def toy_model(toy_model_path):
    return load_model(toy_model_path)


def _vacancy_cell():
    """Al31: a 2x2x2 fcc supercell without its atom at the origin (the hole is centred there)."""
    atoms = bulk("Al", "fcc", a=A_ANG, cubic=True).repeat((2, 2, 2))
    del atoms[0]
    return atoms


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True)])
def test_nearest_atom_distance_matches_brute_force(pbc):
    rng = np.random.default_rng(3)
    cell = np.array([[7.0, 0.0, 0.0], [2.1, 6.2, 0.0], [-1.3, 0.8, 8.4]])
    pos = rng.random((5, 3)) @ cell
    points = rng.random((40, 3)) @ cell
    d = nearest_atom_distance_bohr(pos, cell, pbc, points)
    brute = [nearest(p, pos, cell, pbc, 1, 3)[0][0] for p in points]
    np.testing.assert_allclose(d, brute, rtol=1e-12)


def test_largest_hole_of_fcc_and_of_a_vacancy_is_the_geometric_one():
    # 16 nodes per 2a: the octahedral holes (a/2 from six atoms) and the vacant site are grid nodes
    perfect = bulk("Al", "fcc", a=A_ANG, cubic=True).repeat((2, 2, 2))
    grid = Grid(np.asarray(perfect.cell) / Bohr, (16, 16, 16))
    radius, _ = largest_hole(perfect, grid)
    assert radius == pytest.approx(A_ANG / 2 / Bohr, rel=1e-12)  # octahedral hole: a / 2
    radius, flat = largest_hole(_vacancy_cell(), grid, chunk_points=1000)
    assert radius == pytest.approx(A_ANG / np.sqrt(2) / Bohr, rel=1e-12)  # the vacant site: one bond length
    assert flat == 0  # the node at the origin, where the atom was


def test_descriptor_columns_hold_the_nearest_atom_distance():
    rng = np.random.default_rng(7)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.symbols[[1, 4, 6]] = "Ge"
    atoms.rattle(0.1, seed=2)
    # C is absent from the structure: its columns sit at 1000 Bohr and must not count
    spec = DescriptorSpec(m=6, m_s=2, k=3, species=("Si", "Ge", "C"))
    points = rng.random((50, 3)) @ (np.asarray(atoms.cell) / Bohr)
    desc = Descriptors.from_atoms(spec, atoms).compute(points)
    d = nearest_atom_distance_bohr(atoms.get_positions() / Bohr, np.asarray(atoms.cell) / Bohr, atoms.pbc, points)
    np.testing.assert_allclose(desc[:, nearest_atom_columns(spec)].min(axis=1), d, rtol=1e-6)


def test_training_records_the_largest_hole_of_its_cells(toy_model):
    from sparc_bridge.snapshots import load_snapshot

    snap = load_snapshot(FIXTURES / "al4")
    entry = toy_model.metadata[METADATA_KEY]
    assert entry["largest_hole_bohr"] == pytest.approx(largest_hole(snap.atoms, snap.grid)[0], rel=1e-12)
    assert entry["cell"] == "al4" and toy_model.training_hole_bohr == entry["largest_hole_bohr"]
    # a fine-tuned model keeps its parent's larger domain, and takes the new cells' when they reach farther
    assert training_domain_metadata([snap], {"largest_hole_bohr": 9.0, "cell": "parent"})["cell"] == "parent"
    assert training_domain_metadata([snap], {"largest_hole_bohr": 1.0, "cell": "parent"})["cell"] == "al4"


def test_a_prediction_reports_the_hole_and_warns_beyond_the_training_domain(toy_model, tmp_path):
    atoms = _vacancy_cell()
    atoms.rattle(0.02, seed=4)
    grid = Grid.from_atoms(atoms, toy_model.mesh_spacing_bohr)
    hole, flat = largest_hole(atoms, grid)
    dist = nearest_atom_distance_bohr(atoms.get_positions() / Bohr, grid.cell_bohr, grid.pbc,
                                      grid.points_bohr(0, grid.n_points))
    r_train = toy_model.training_hole_bohr
    assert hole > r_train + toy_model.mesh_spacing_bohr  # the vacancy is larger than al4's holes
    summaries = [run_prediction(toy_model, atoms, None, InferenceSettings(chunk_points=c)).summary for c in (997, 40000)]
    out = tmp_path / "rho.zarr"
    summaries.append(run_prediction(toy_model, atoms, out, InferenceSettings(chunk_points=5000)).summary)
    for s in summaries:  # whatever the blocks, the same figures: the hole from float32 descriptors
        assert s.largest_hole_bohr == pytest.approx(hole, rel=1e-6)
        np.testing.assert_allclose(s.largest_hole_position_ang, grid.points_bohr_at(np.array([flat]))[0] * Bohr,
                                   atol=1e-12)
        assert s.training_hole_bohr == r_train
        assert s.beyond_training_fraction == pytest.approx(np.mean(dist > r_train), abs=0.5 / grid.n_points)
        assert s.hole_warning and f"a hole of {hole:.2f} Bohr" in s.hole_warning and s.hole_warning in s.warnings
    import zarr

    attrs = zarr.open_group(str(out), mode="r").attrs
    assert attrs["largest_hole_bohr"] == pytest.approx(hole, rel=1e-6)
    assert attrs["beyond_training_fraction"] == summaries[0].beyond_training_fraction

    # a hole within the training domain (plus a mesh spacing) does not warn
    perfect = bulk("Al", "fcc", a=A_ANG, cubic=True)
    s = run_prediction(toy_model, perfect, None, InferenceSettings()).summary
    assert s.largest_hole_bohr <= r_train + toy_model.mesh_spacing_bohr and s.hole_warning is None
    # a model file from before the training domain: the hole is reported, nothing compared, no warning
    old = MLRhoModel(toy_model.network, {k: v for k, v in toy_model.metadata.items() if k != METADATA_KEY})
    s = run_prediction(old, atoms, None, InferenceSettings()).summary
    assert s.largest_hole_bohr == pytest.approx(hole, rel=1e-6)
    assert s.training_hole_bohr is None and s.beyond_training_fraction is None and s.hole_warning is None


def test_cli_and_calculator_report_the_hole(toy_model, toy_model_path, tmp_path, capsys):
    from ase.io import write

    atoms = _vacancy_cell()
    write(tmp_path / "vac.xyz", atoms)
    assert main(["predict", str(tmp_path / "vac.xyz"), "-m", toy_model_path, "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["largest_hole_bohr"] == pytest.approx(A_ANG / np.sqrt(2) / Bohr, rel=1e-6)
    assert report["training_hole_bohr"] == toy_model.training_hole_bohr and report["beyond_training_fraction"] > 0
    assert "warning: a hole of 5.41 Bohr" in captured.err
    assert main(["predict", str(tmp_path / "vac.xyz"), "-m", toy_model_path, "--quiet"]) == 0
    assert "largest hole   5.41 Bohr from every atom at (0.00, 0.00, 0.00) Angstrom" in capsys.readouterr().out

    calc = MLRhoCalculator(toy_model)
    with pytest.warns(OutOfDistributionWarning, match="a hole of 5.41 Bohr"):
        assert calc.get_property("largest_hole_ang", atoms) == pytest.approx(A_ANG / np.sqrt(2), rel=1e-6)
    assert calc.get_property("beyond_training_fraction", atoms) == report["beyond_training_fraction"]


def test_a_saved_model_keeps_its_training_domain(toy_model, tmp_path):
    path = save_model(toy_model, tmp_path / "m.safetensors")
    assert load_model(path).training_hole_bohr == toy_model.training_hole_bohr
