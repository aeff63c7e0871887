"""The sigma's surface term (ase_mlrho.surface): depth below the vacuum against brute force over periodic
images, the fitted factors against known error scales, and what it does to a prediction: exactly its factor
on the total sigma below a surface, the epistemic sigma and the density untouched, and nothing at all in a
cell without vacuum."""

import copy
import json

import numpy as np
import pytest
from ase.build import bulk, fcc100, fcc111
from ase.units import Bohr

from ase_mlrho import descriptor_kernel
from ase_mlrho.cli import main
from ase_mlrho.grid import Grid
from ase_mlrho.inference import InferenceSettings, run_prediction
from ase_mlrho.model_files import ModelFileError, load_model, save_model
from ase_mlrho.surface import (METADATA_KEY, SurfaceCalibration, SurfaceDepth, fit_factors, inflate_aleatoric,
                               vacuum_boundary_nodes_bohr)
from tests import brute_force
from tests.conftest import ROOT

SIGE = ROOT / "data" / "sparc" / "sige"


def _min_image_distance(points, targets, cell):
    """Brute force: the smallest distance from each point to any periodic image (shifts -1..1 along each
    lattice vector: enough for the cells here, at least 10 Bohr along each vector) of any target."""
    images, _ = brute_force.image_list(targets, cell, (True,) * 3, 1)
    best = np.full(len(points), np.inf)
    for chunk in np.array_split(images, 27):  # one shift's images at a time: bounded memory
        best = np.minimum(best, np.sqrt(((points[:, None, :] - chunk[None, :, :]) ** 2).sum(-1)).min(axis=1))
    return best


def _slab(kind):
    slab = (fcc100 if kind == "fcc100" else fcc111)("Al", size=(2, 2, 4), vacuum=6.0)
    slab.pbc = True
    return slab


@pytest.mark.parametrize("kind", ["fcc100", "fcc111"])  # an orthogonal and a 60-degree cell
def test_depth_below_the_vacuum_matches_brute_force(kind):
    slab = _slab(kind)
    pos, cell = slab.get_positions() / Bohr, np.asarray(slab.cell) / Bohr
    cal = SurfaceCalibration(vacuum_radius_bohr=7.0, coarse_spacing_bohr=1.0, factors=(1.0,) * 8)
    grid = Grid.from_cell(cell, 1.0)
    nodes = grid.points_bohr(0, grid.n_points)
    vacuum = nodes[_min_image_distance(nodes, pos, cell) > 7.0]
    boundary = vacuum_boundary_nodes_bohr(pos, cell, (True,) * 3, 7.0, 1.0)
    assert 0 < len(boundary) < 0.5 * len(vacuum)  # a surface's worth of the vacuum's nodes
    term = SurfaceDepth.for_structure(cal, pos, cell, (True,) * 3)
    points = np.random.default_rng(1).random((400, 3)) @ cell
    near = _min_image_distance(points, pos, cell)
    depth = term.depth_bohr(points, near)
    expected = np.where(near > 7.0, 0.0, _min_image_distance(points, vacuum, cell))
    assert np.all(depth[near > 7.0] == 0.0) and np.count_nonzero(near > 7.0) > 20
    assert depth.max() > 8.0  # the slab's interior lies well below the vacuum
    np.testing.assert_allclose(depth, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False)])
def test_boundary_nodes_give_the_depth_all_vacuum_nodes_give_in_a_sheared_cell(pbc):
    """The vacuum's boundary nodes stand for all of it: a random slab whose third vector leans 3 times the first's
    length (index neighbours are then far from Cartesian ones), depths from the boundary nodes against depths
    from every vacuum node."""
    from ase_mlrho.neighbors import PeriodicNeighbors

    rng = np.random.default_rng(5)
    cell = np.array([[10.86, 0, 0], [0, 10.86, 0], [3 * 10.86, 0, 25.0]]) / Bohr
    frac = rng.random((40, 3))
    frac[:, 2] = 0.2 + 0.35 * frac[:, 2]
    pos = frac @ cell
    cal = SurfaceCalibration(factors=(1.0,) * 8)
    grid = Grid.from_cell(cell, 1.0, pbc)
    nodes = grid.points_bohr(0, grid.n_points)
    vacuum = nodes[PeriodicNeighbors(pos, cell, pbc).query(nodes, 1).distances_bohr[:, 0] > 7.0]
    term = SurfaceDepth.for_structure(cal, pos, cell, pbc)
    assert len(term.boundary_bohr) < 0.2 * len(vacuum)
    pts = rng.random((20000, 3)) @ cell
    near = PeriodicNeighbors(pos, cell, pbc).query(pts, 1).distances_bohr[:, 0]
    want = np.where(near > 7.0, 0.0, PeriodicNeighbors(vacuum, cell, pbc).query(pts, 1).distances_bohr[:, 0])
    np.testing.assert_allclose(term.depth_bohr(pts, near), want, rtol=0, atol=1e-9)


def test_a_crystal_and_its_vacancy_have_no_vacuum():
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat(2)
    del atoms[0]  # the vacancy's centre is 2.86 A = 5.4 Bohr from its nearest atoms
    cal = SurfaceCalibration(factors=(2.0,) * 8)
    assert SurfaceDepth.for_structure(cal, atoms.get_positions() / Bohr, np.asarray(atoms.cell) / Bohr,
                                      (True,) * 3) is None


def test_fit_recovers_known_error_scales_per_depth_bin():
    rng = np.random.default_rng(0)
    n = 600_000
    depth = rng.uniform(0.0, 12.0, n)
    sigma = rng.lognormal(-7.5, 0.4, n)
    scale = np.select([depth < 4.0, depth < 8.0], [0.5, 1.0], 2.0)  # the errors' true scale in units of sigma
    err = scale * sigma * rng.standard_normal(n)
    f = fit_factors(err, sigma, depth, edges_bohr=(0.0, 4.0, 8.0, 20.0))
    assert f[0] == 1.0  # errors smaller than sigma: never shrunk
    assert 1.0 <= f[1] < 1.03 and f[2] == pytest.approx(2.0, rel=0.03)
    assert f[3] == f[2]  # no point beyond 20 Bohr: the bin above's factor
    g = SurfaceCalibration(depth_edges_bohr=(0.0, 4.0, 8.0, 20.0), factors=f).factor_at(depth)
    deep = depth >= 8.0
    assert np.mean(np.abs(err[deep]) <= 3 * sigma[deep]) < 0.9  # before: the deep points are not covered
    assert np.mean(np.abs(err[deep]) <= 3 * g[deep] * sigma[deep]) == pytest.approx(0.9973, abs=0.001)
    with pytest.raises(ValueError, match="no free surface|needs cells with a free surface"):
        fit_factors(err, sigma, depth + 5.0, edges_bohr=(0.0, 4.0))


def test_inflation_scales_the_total_and_keeps_the_epistemic_sigma():
    import torch

    ale, epi = np.array([3.0, 0.0, 1e-4]), np.array([4.0, 2.0, 3e-4])
    new = inflate_aleatoric(ale, epi, np.array([2.0, 1.5, 1.0]))
    np.testing.assert_allclose(new, [np.sqrt(84.0), np.sqrt(5.0), 1e-4], rtol=1e-12)
    assert new[2] == ale[2]  # factor 1: bit for bit
    np.testing.assert_allclose(np.hypot(new, epi), [10.0, 3.0, np.hypot(1e-4, 3e-4)], rtol=1e-12)
    t = inflate_aleatoric(torch.tensor(ale), torch.tensor(epi), torch.tensor([2.0, 1.5, 1.0]))
    np.testing.assert_allclose(t.numpy(), new, rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(depth_edges_bohr=(1.0, 2.0), factors=(1.0, 1.0)), "increase from 0"),
    (dict(depth_edges_bohr=(0.0, 2.0, 2.0), factors=(1.0,) * 3), "increase from 0"),
    (dict(depth_edges_bohr=(0.0, 2.0), factors=(1.0, 0.9)), ">= 1"),
    (dict(depth_edges_bohr=(0.0, 2.0), factors=(1.0,)), "one per depth bin"),
    (dict(vacuum_radius_bohr=-1.0), "positive"),
])
def test_a_calibration_that_makes_no_sense_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        SurfaceCalibration(**bad)


def test_factor_by_depth_and_the_metadata_round_trip():
    cal = SurfaceCalibration(7.5, 0.8, (0.0, 2.0, 5.0), (1.0, 1.25, 2.0), ("a", "b"))
    np.testing.assert_array_equal(cal.factor_at([0.0, 1.99, 2.0, 4.9, 5.0, 50.0, np.inf]),
                                  [1.0, 1.0, 1.25, 1.25, 2.0, 2.0, 1.0])
    assert SurfaceCalibration.from_metadata(json.loads(json.dumps(cal.to_metadata()))) == cal


@pytest.fixture(scope="module")
def sige():
    return load_model("sige-pbe")


def _with_term(model, factors, edges=(0.0, 2.0, 5.0, 9.0)):
    m = copy.copy(model)
    m.metadata = copy.deepcopy(model.metadata)
    m.metadata["calibration"][METADATA_KEY] = SurfaceCalibration(depth_edges_bohr=edges, factors=factors).to_metadata()
    return m


def _si_slab():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((1, 1, 2))
    atoms.center(vacuum=8.0, axis=2)
    atoms.rattle(0.05, seed=3)
    atoms.symbols[::2] = "Ge"  # Si0.5Ge0.5: the model's training compositions (a pure Si cell is far outside them)
    return atoms


@pytest.mark.parametrize("route", ["compiled kernel", "k-d tree", "torch cpu"])
def test_below_a_surface_the_total_sigma_grows_by_exactly_the_factor(sige, route, monkeypatch):
    """A SiGe slab (16 atoms, 8 A of vacuum each side) with factors 1 / 1.5 / 2 / 3 at 0 / 2 / 5 / 9 Bohr below the
    vacuum: the total sigma with the term over the one without is the factor at the brute-force depth of each
    grid point, on each of the CPU routes; density and epistemic sigma are the same."""
    if route == "k-d tree":
        monkeypatch.setattr(descriptor_kernel, "AVAILABLE", False)
    if route == "compiled kernel" and not descriptor_kernel.AVAILABLE:
        pytest.skip("numba is not installed")
    model = _with_term(sige, (1.0, 1.5, 2.0, 3.0))
    atoms = _si_slab()
    settings = dict(mesh_spacing_bohr=0.8)  # the term does not depend on the mesh; a coarse one is quicker
    if route == "torch cpu":
        settings["device"] = "cpu"
    with_term = run_prediction(model, atoms, None, InferenceSettings(**settings)).field
    without = run_prediction(model, atoms, None, InferenceSettings(surface_term=False, **settings)).field
    np.testing.assert_array_equal(with_term.density, without.density)
    np.testing.assert_array_equal(with_term.sigma_epistemic, without.sigma_epistemic)
    grid = with_term.grid
    pos, cell = atoms.get_positions() / Bohr, grid.cell_bohr
    coarse = Grid.from_cell(cell, 1.0)
    nodes = coarse.points_bohr(0, coarse.n_points)
    vacuum = nodes[_min_image_distance(nodes, pos, cell) > 7.0]
    idx = np.random.default_rng(2).choice(grid.n_points, 1500, replace=False)
    pts = grid.points_bohr_at(idx)
    near = _min_image_distance(pts, pos, cell)
    depth = np.where(near > 7.0, 0.0, _min_image_distance(pts, vacuum, cell))
    expected = np.select([depth < 2.0, depth < 5.0, depth < 9.0], [1.0, 1.5, 2.0], 3.0)
    ratio = with_term.sigma_total.ravel()[idx] / without.sigma_total.ravel()[idx]
    assert {1.0, 1.5, 2.0, 3.0} <= set(expected.tolist())
    np.testing.assert_allclose(ratio, expected, rtol=1e-5 if route == "torch cpu" else 1e-10)


def test_a_cell_without_vacuum_keeps_its_sigma_bit_for_bit(sige):
    model = _with_term(sige, (3.0,) * 4)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms[1].symbol = "Ge"
    a = run_prediction(model, atoms, None, InferenceSettings()).field
    b = run_prediction(sige, atoms, None, InferenceSettings()).field
    np.testing.assert_array_equal(a.sigma_aleatoric, b.sigma_aleatoric)
    np.testing.assert_array_equal(a.sigma_epistemic, b.sigma_epistemic)


def test_a_model_file_with_a_broken_surface_term_is_refused(sige, tmp_path):
    model = _with_term(sige, (1.0,) * 4)
    model.metadata["calibration"][METADATA_KEY]["factors"] = [1.0, 0.5, 1.0, 1.0]
    path = save_model(model, tmp_path / "broken.safetensors")
    with pytest.raises(ModelFileError, match="'surface' entry is malformed"):
        load_model(path)


def test_calibrate_surface_on_a_training_slab(tmp_path, capsys):
    """`mlrho calibrate-surface` on sige-pbe's (110) training slab (SPARC, committed): the written model carries
    the term; in-sample, every depth bin then covers 99.73 % within 3 sigma, so the cell at least that."""
    run = SIGE / "train_slab110" / "sige_x=0.7_slab110_T=900_seed=333"
    out = tmp_path / "surf.safetensors"
    assert main(["calibrate-surface", "-m", "sige-pbe", str(run), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = load_model(out)
    cal = model.surface_calibration
    assert cal.fitted_on == ("sige_x=0.7_slab110_T=900_seed=333",) and len(cal.factors) == 8
    assert cal.factors[0] == 1.0 and max(cal.factors) > 1.2  # the vacuum and the surface: no change; inside: more
    (cell,) = report["surface"]["cells"]
    assert cell["coverage_3sigma_without"] < 0.99 <= 0.997 <= cell["coverage_3sigma_with"]
    assert report["surface"]["command"].startswith("mlrho calibrate-surface -m sige-pbe")
    assert model.metadata["weights_sha256"] == load_model("sige-pbe").metadata["weights_sha256"]


def test_calibrate_surface_refuses_a_cell_without_vacuum(tmp_path, capsys):
    run = SIGE / "x05" / "sige_x=0.5_n=2_T=600_seed=21"
    assert main(["calibrate-surface", "-m", "sige-pbe", str(run), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "no free surface" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_the_calculator_applies_the_term_unless_told_not_to(sige):
    from ase_mlrho.calculator import MLRhoCalculator

    atoms = _si_slab()
    calc = MLRhoCalculator(model=_with_term(sige, (2.0,) * 4), mesh_spacing_bohr=0.8)
    with_term = calc.get_property("density_sigma_total", atoms)
    assert calc.summary.surface_term is True
    calc.set(surface_term=False)
    without = calc.get_property("density_sigma_total", atoms)
    assert calc.summary.surface_term is None  # not asked for
    np.testing.assert_allclose(with_term / without, 2.0, rtol=1e-9)  # every depth has the factor 2, the vacuum too
