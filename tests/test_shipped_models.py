"""The shipped models load, refuse what they do not know, and still predict real SPARC densities
as well as they did when they were shipped (regression guards at the measured figures)."""

import numpy as np
import pytest
from ase.build import bulk
from ase.units import Bohr

from sparc_bridge.snapshots import load_snapshot
from ase_mlrho.descriptors import UnknownSpeciesError
from ase_mlrho.evaluation import evaluate_snapshots
from ase_mlrho.model_files import load_model, shipped_models
from tests.conftest import ROOT, SHARED_SPARC


def _trained_names(model) -> set:
    """Names of the SPARC cells a model was trained on (its file's metadata)."""
    return {s["name"] for s in model.metadata["training"]["train_snapshots"]}


def test_shipped_models_load_with_their_metadata():
    assert {"al-pbe", "al-pbe-108", "al-pbe-gamma", "sige-pbe"} <= set(shipped_models())
    al = load_model("al-pbe-gamma")  # the Gamma-point model (history; compares with Gamma-point references)
    assert al.species == ("Al",) and al.valence_electrons == {"Al": 3.0} and al.mesh_spacing_bohr == 0.25
    assert al.spec.has_angular and al.metadata["training"]["validation_snapshots"][0]["name"] == "al_n=2_T=945_seed=8"
    test_names = {"al_n=2_T=630_seed=4", "al_n=2_T=1575_seed=9"}
    assert not test_names & _trained_names(al)
    sige = load_model("sige-pbe")
    assert sige.species == ("Si", "Ge") and sige.valence_electrons == {"Si": 4.0, "Ge": 14.0}
    assert sige.mesh_spacing_bohr == 0.4


def test_a_sige_model_refuses_carbon():
    atoms = bulk("Si", "diamond", a=5.43)
    atoms[0].symbol = "C"
    with pytest.raises(UnknownSpeciesError, match="model 'sige-pbe' knows Si, Ge; structure has C"):
        load_model("sige-pbe").check_species(atoms.numbers)


def test_al_pbe_gamma_on_the_held_out_vacancy_cell():
    """Al31 with a vacancy at 630 K (SPARC, committed in data/sparc): eps 2.59 %, 3-sigma coverage
    0.974 when shipped."""
    snap = load_snapshot(ROOT / "data" / "sparc" / "al_n=2_T=630_a=4.05_seed=35_vacancy")
    (m,), _, (pred,) = evaluate_snapshots(load_model("al-pbe-gamma"), [snap])
    assert m.eps_rho_percent < 2.65
    assert m.coverage_3sigma > 0.97
    assert abs(pred.density.sum() * snap.grid.dv_bohr3 - 93.0) < 1e-9


@pytest.mark.skipif(not (SHARED_SPARC / "sige_T=1200_seed=6").is_dir(), reason="shared SiGe data not found")
def test_sige_pbe_on_a_held_out_cell():
    """Si32Ge32 at 1200 K (never trained on): eps 0.507 %, 3-sigma coverage 0.9986 when shipped (session 19)."""
    snap = load_snapshot(SHARED_SPARC / "sige_T=1200_seed=6")
    (m,), _, _ = evaluate_snapshots(load_model("sige-pbe"), [snap])
    assert m.eps_rho_percent < 0.55
    assert m.coverage_3sigma > 0.99
    assert np.isclose(snap.n_electrons, 576.0)


SIGE_DATA = ROOT / "data" / "sparc" / "sige"
#: the committed held-out SiGe cells: never trained on or used for any choice (x = 0.3-0.7, 600-2300 K, vacancies)
SIGE_HELD_OUT = (
    ("x05", "sige_x=0.5_n=2_T=600_seed=21"), ("x05", "sige_x=0.5_n=2_T=1800_seed=22"),
    ("x04", "sige_x=0.4_n=2_T=1200_seed=41"), ("x04", "sige_x=0.4_n=2_T=2300_seed=42"),
    ("x06", "sige_x=0.6_n=2_T=1200_seed=61"), ("x06", "sige_x=0.6_n=2_T=2300_seed=62"),
    ("vac", "sige_x=0.5_n=2_vac=1_T=900_seed=51"),
    ("x03", "sige_x=0.3_n=2_T=1200_seed=31"), ("x03", "sige_x=0.3_n=2_T=2300_seed=32"),
    ("x07", "sige_x=0.7_n=2_T=1200_seed=81"), ("x07", "sige_x=0.7_n=2_T=2300_seed=82"),
    ("vac03", "sige_x=0.3_n=2_vac=1_T=900_seed=53"), ("vac07", "sige_x=0.7_n=2_vac=1_T=900_seed=57"))


def test_sige_pbe_on_committed_held_out_cells_and_its_expected_error():
    """All 13 committed held-out SiGe cells (data/sparc/sige, made by `mlrho datagen`; x = 0.3 / 0.7 from
    session 11, when the model had not seen those compositions; since session 12 it is trained on the
    selection study's pool, other seeds and temperatures at x = 0.3-0.7; since session 14 on three
    di-vacancies too, since sessions 16-17 on free slabs, since session 19 on two voids). When shipped (session
    19, an ensemble of 4): x = 0.5 at 1800 K eps 0.681 %, 3-sigma coverage 0.9963; x = 0.4 at 2300 K 0.742 %,
    0.9964; the x = 0.3 vacancy 0.778 %, 0.9990; every cell's coverage >= 0.9962. The eps the sigma predicts
    (sqrt(2/pi) integral sigma dV / N_e) is 1.03-1.33 times the measured one, and across the cells Pearson(eps,
    epistemic sigma per electron) = 0.97 (0.69 with the mean epistemic sigma in e/Bohr^3, which grows with a
    cell's Ge content and electron density where eps does not: benchmarks/README.md)."""
    model = load_model("sige-pbe")
    assert model.ensemble_size == 4
    snaps = [load_snapshot(SIGE_DATA / g / n) for g, n in SIGE_HELD_OUT]
    metrics, _, _ = evaluate_snapshots(model, snaps)
    by_name = {m.name: m for m in metrics}
    m05, m04 = by_name["sige_x=0.5_n=2_T=1800_seed=22"], by_name["sige_x=0.4_n=2_T=2300_seed=42"]
    vac03 = by_name["sige_x=0.3_n=2_vac=1_T=900_seed=53"]
    assert m05.eps_rho_percent < 0.72 and m04.eps_rho_percent < 0.78 and vac03.eps_rho_percent < 0.84
    assert snaps[3].atoms.get_chemical_symbols().count("Ge") == 26  # round(0.4 * 64)
    assert [len(s.atoms) for s in snaps].count(63) == 3  # the three vacancy cells
    assert min(m.coverage_3sigma for m in metrics) >= 0.99
    eps = np.array([m.eps_rho_percent for m in metrics])
    expected = np.array([m.expected_eps_percent for m in metrics])
    assert np.all(expected > 0.95 * eps) and np.all(expected < 1.4 * eps)
    assert np.corrcoef(eps, [m.epistemic_eps_percent for m in metrics])[0, 1] > 0.9


def test_sige_pbe_covers_a_held_out_di_vacancy_at_its_centre():
    """The held-out x = 0.4 di-vacancy at 1500 K (data/sparc/sige/divac_test; sige-pbe has three other
    di-vacancies in its training data since session 14, where the session-12 model covered only 0.872 of the
    points within 3 Bohr of the centre). When shipped (session 19): eps 0.788 %, coverage 0.9960, within 3 Bohr
    of the centre (the grid point farthest from every atom, 5.44 Bohr) 1.000; the hole lies within the training
    cells' (5.62 Bohr), so no hole warning."""
    model = load_model("sige-pbe")
    run, snap, eps, cov, cov_centre, hole = _around_the_largest_hole(
        model, SIGE_DATA / "divac_test" / "sige_x=0.4_n=2_divac_T=1500_seed=74")
    assert len(snap.atoms) == 62
    assert cov >= 0.99 and cov_centre >= 0.95
    assert run.summary.largest_hole_bohr == pytest.approx(hole, rel=1e-6)
    assert run.summary.largest_hole_bohr < model.training_hole_bohr and run.summary.hole_warning is None


def _held_out_slab_metrics(name, training_hole_bohr, training_slabs, held_out_dirs):
    """Metrics of model ``name`` on held-out slab runs, after checking that its training domain reaches into the
    vacuum (``training_hole_bohr``), that ``training_slabs`` are among its training cells and the held-out ones not."""
    model = load_model(name)
    assert model.training_hole_bohr == pytest.approx(training_hole_bohr, abs=0.01)
    names = _trained_names(model)
    assert training_slabs <= names
    snaps = [load_snapshot(d) for d in held_out_dirs]
    assert not names & {s.name for s in snaps}
    return evaluate_snapshots(model, snaps)[0]


def test_sige_pbe_on_held_out_free_surfaces():
    """sige-pbe has five free slabs in its training data: (100) at x = 0.3, 1500 K and (110) at x = 0.7, 900 K
    (session 16), and three (111) slabs at x = 0.3 / 0.5 / 0.6 (session 17, fine-tuned), 10 A of vacuum. On the
    held-out x = 0.5 (100) slab at 900 K (data/sparc/unseen/sige_slab) session 14's model, which had seen no
    surface, was 4.10 % off with 3-sigma coverage 0.954; session 16's 1.267 % and 0.9911; the shipped one 1.236 %
    and 0.9929. On the held-out (111) slab at x = 0.4, 1200 K (data/sparc/sige/test_slab111): 3.50 % and 0.919,
    then 1.731 % and 0.9505, then (session 17's weights) 1.642 % and 0.9604, the shortfall in the slab's inner
    bilayers (coverage 0.83 at 6-8 Bohr below the surface; benchmarks/slab_depth.py, benchmarks/README.md). Since
    session 18 the model carries a surface term (ase_mlrho.surface), fitted on its five training slabs only:
    session 17's weights then covered the (111) slab 0.9923 and the (100) slab 0.9968, and the error the sigma
    predicted (eps_exp) for the (111) slab was 1.610 % against 1.642 % measured (1.300 % without the term). Session
    19's weights (two voids added), with the term refitted: (111) 1.621 %, 0.9920, eps_exp 1.563 %; (100) 1.219 %,
    0.9971.
    Its training domain reaches into the vacuum (largest training hole 10.66 Bohr)."""
    m100, m111 = _held_out_slab_metrics(
        "sige-pbe", 10.664, {"sige_x=0.3_slab100_T=1500_seed=331", "sige_x=0.7_slab110_T=900_seed=333",
                             "sige_x=0.6_slab111_T=1800_seed=335", "sige_x=0.3_slab111_T=900_seed=336",
                             "sige_x=0.5_slab111_T=1500_seed=337"},
        [ROOT / "data" / "sparc" / "unseen" / "sige_slab" / "sige_x=0.5_slab100_T=900_seed=65",
         SIGE_DATA / "test_slab111" / "sige_x=0.4_slab111_T=1200_seed=334"])
    assert m100.eps_rho_percent < 1.30 and m100.coverage_3sigma >= 0.99
    assert m111.eps_rho_percent < 1.70 and m111.coverage_3sigma >= 0.99  # without the surface term: 0.9604
    assert 0.9 * m111.eps_rho_percent < m111.expected_eps_percent < 1.1 * m111.eps_rho_percent
    surface = load_model("sige-pbe").surface_calibration
    assert set(surface.fitted_on) == {"sige_x=0.3_slab100_T=1500_seed=331", "sige_x=0.7_slab110_T=900_seed=333",
                                      "sige_x=0.6_slab111_T=1800_seed=335", "sige_x=0.3_slab111_T=900_seed=336",
                                      "sige_x=0.5_slab111_T=1500_seed=337"}  # training slabs, never the held-out ones
    assert surface.factors[:3] == (1.0, 1.0, 1.0) and max(surface.factors) > 1.5  # the surface itself: unchanged


AL_KPTS = ROOT / "data" / "sparc" / "al_kpts"


def test_al_pbe_on_held_out_kpoint_cells():
    """The shipped al-pbe (k-point references, an ensemble of 4) on committed held-out k-point cells
    (data/sparc/al_kpts/test*: never trained, validated or calibrated on). When shipped (session 15: session 8's
    14 training cells, strained ones among them, and two free slabs; 2 validation cells; one weight set per member
    by default): Al32 800 K eps 0.669 %, 3-sigma coverage 0.998, miscalibration 0.040; Al32 1500 K 0.796 %, 0.998,
    0.042; Al31 vacancy 600 K 0.606 %, 0.998, 0.085 (session 8's model without slabs: 0.665 / 0.807 / 0.596 %;
    session 20's, fine-tuned with three voids as well: 0.673 / 0.795 / 0.598 %, coverage 0.998 / 0.997 / 0.998).
    The model records the settings of its references."""
    model = load_model("al-pbe")
    ref = model.metadata["sparc_reference"]
    assert ref["kpoint_length_ang"] == [16.2, 16.2, 16.2] and ref["kpoint_shift"] == [0.5, 0.5, 0.5]
    assert model.ensemble_size == 4 and model.metadata["hf_screening"]["method"] == "all-wavelength"
    # one weight set per member: calibration as with 8 (benchmarks/README.md), half the network's cost
    assert model.n_samples == 4 and model.metadata["training"]["config"]["n_samples"] == 4
    # eps(q) refitted on the k-point training cells, the vacancy among them (session 6; carried to the session-8 weights)
    assert model.metadata["hf_screening"]["k2_per_bohr2"] == pytest.approx(1.0529, abs=1e-4)
    assert "k-point training cells" in model.metadata["hf_screening"]["source"]
    names = _trained_names(model)
    cells = sorted(p.parent for p in AL_KPTS.glob("test*/*/SPARC.out"))
    assert len(cells) >= 2 and not names & {c.name for c in cells}
    bars = {"test_al4": 0.30, "test": 0.70, "test_vacancy": 0.63}  # eps (%) a little above the shipped figures
    hot = {"al_n=2_k=2x2x2_T=1500_seed=302": 0.85}  # cells whose own figure is above their group's
    snaps = [load_snapshot(c) for c in cells if c.parent.name in bars]
    metrics, _, _ = evaluate_snapshots(model, snaps)
    assert len(metrics) >= 4
    for snap, m in zip(snaps, metrics):
        group = snap.provenance["path"].split("/")[-2]
        assert m.eps_rho_percent < hot.get(m.name, bars[group]), m.name
        assert m.coverage_3sigma > 0.99, m.name
        if group in ("test", "test_vacancy"):  # 32-atom cells: calibrated (the 4-atom cells' errors are smaller: sigma over-covers)
            assert m.miscalibration_area < 0.1, m.name


def test_al_pbe_on_held_out_free_surfaces():
    """al-pbe has two free Al slabs in its training data (session 15: (100) at 1200 K and (110) at 900 K, 10 A of
    vacuum). On the held-out (100) slab at 600 K (data/sparc/unseen/al_slab, SPARC, 2x2x1 k-points) session 8's
    model, which had seen no surface, was 16.5 % off with 3-sigma coverage 0.555 (benchmarks/README.md); the
    session-15 one: eps 1.262 %, coverage 0.9990 (session 20's, with three voids as well: 1.229 %, 0.9992). On a
    held-out (111) slab at 900 K, an orientation it never saw (data/sparc/al_kpts/test_slab111): 13.05 % and
    0.518 before, 1.269 % and 0.9993 with slabs (session 20: 1.207 %, 0.9993). Its training domain now
    reaches into the vacuum (the largest hole of its training cells, 9.74 Bohr), so a slab of the same vacuum
    raises no hole warning."""
    metrics = _held_out_slab_metrics(
        "al-pbe", 9.744, {"al_slab100_k=2x2x1_T=1200_seed=321", "al_slab110_k=2x3x1_T=900_seed=323"},
        [ROOT / "data" / "sparc" / "unseen" / "al_slab" / "al_slab100_k=2x2x1_T=600_seed=313",
         AL_KPTS / "test_slab111" / "al_slab111_k=3x2x1_T=900_seed=324"])
    for m in metrics:
        assert m.eps_rho_percent < 1.4 and m.coverage_3sigma >= 0.99, m.name


def test_shipped_models_record_measured_harris_foulkes_settings():
    """Each shipped model carries its material's eigensolver settings (benchmarks/README.md, 'The Harris-Foulkes
    step'): aluminium twice the states, 7 passes on k-point cells (al-pbe: the SCF needs only ~23 iterations there)
    and 8 at the Gamma point, SiGe 8 passes with SPARC's states."""
    from sparc_bridge.inputs import HarrisFoulkesSettings

    al = HarrisFoulkesSettings.for_model(load_model("al-pbe").metadata)
    assert (al.rho_trigger, al.states_factor, al.nstates(96)) == (7, 2.0, 101)
    gamma = HarrisFoulkesSettings.for_model(load_model("al-pbe-gamma").metadata)
    assert (gamma.rho_trigger, gamma.states_factor) == (8, 2.0)
    sige = HarrisFoulkesSettings.for_model(load_model("sige-pbe").metadata)
    assert (sige.rho_trigger, sige.states_factor, sige.nstates(576)) == (8, None, None)


def test_al_pbe_records_its_measured_warm_start_mixing():
    """al-pbe's warm starts run both sides with MIXING_PARAMETER 0.6 (benchmarks/README.md, 'Warm start': 52 % and
    61 % fewer SCF iterations on the held-out k-point cells, against 35 % and 50 % with SPARC's 0.3); the other
    models record nothing (not measured) and run with SPARC's own settings."""
    from sparc_bridge.inputs import warm_start_params_for_model

    assert warm_start_params_for_model(load_model("al-pbe").metadata) == {"MIXING_PARAMETER": 0.6}
    for name in ("al-pbe-108", "al-pbe-gamma", "sige-pbe"):
        assert warm_start_params_for_model(load_model(name).metadata) == {}, name


AL108 = ROOT / "data" / "sparc" / "al108"


def test_al_pbe_108_on_gamma_point_108_atom_cells():
    """al-pbe-108 (issue 17): the k-point al-pbe fine-tuned, no layer frozen (the number measured best on a held-back
    cell, benchmarks/README.md), on two Gamma-point Al108 cells (945, 1260 K), validated and calibrated on two
    (315, 1890 K). When shipped: the 1890 K validation cell (never trained on) eps 1.295 %, 3-sigma coverage 0.995;
    315 K 0.462 %, 1.000; the shared held-out 630 K cell 0.625 %, 1.000 (al-pbe there: 1.406 %, 0.887).
    It stands for Gamma-point references, and its energies are computed that way."""
    model = load_model("al-pbe-108")
    assert model.metadata["sparc_reference"]["kpoint_length_ang"] is None  # Gamma point
    step = model.metadata["lineage"][-1]
    assert step["base_model"] == "al-pbe" and step["frozen_layers"] == 0 and model.ensemble_size == 4
    from sparc_bridge.inputs import HarrisFoulkesSettings
    assert HarrisFoulkesSettings.for_model(model.metadata).rho_trigger == 8  # al-pbe-gamma's, Gamma-point cells
    cells = [AL108 / "al_n=3_T=1890_seed=104", AL108 / "al_n=3_T=315_seed=103"]
    bars = [(1.35, 0.99), (0.50, 0.999)]
    shared = SHARED_SPARC / "al_n=3_T=630_seed=10"
    if shared.is_dir():
        cells.append(shared)
        bars.append((0.66, 0.99))
    metrics, _, _ = evaluate_snapshots(model, [load_snapshot(c) for c in cells])
    for m, (eps_bar, cov_bar) in zip(metrics, bars):
        assert m.eps_rho_percent < eps_bar and m.coverage_3sigma >= cov_bar, m.name


def _around_the_largest_hole(model, run_dir):
    """(prediction run, snapshot, eps %, 3-sigma coverage of the cell, coverage within 3 Bohr of the grid point
    farthest from every atom, that farthest distance) of a loaded model on a SPARC run."""
    from ase_mlrho.domain import nearest_atom_distance_bohr
    from ase_mlrho.inference import InferenceSettings, run_prediction

    snap = load_snapshot(run_dir)
    run = run_prediction(model, snap.atoms, None, InferenceSettings(), grid=snap.grid)
    f = run.field
    err = (f.density - snap.density_e_per_bohr3).ravel()
    inside = np.abs(err) <= 3 * f.sigma_total.ravel()
    eps = 50 * np.abs(err).sum() * snap.grid.dv_bohr3 / snap.n_electrons
    pts = snap.grid.points_bohr(0, snap.grid.n_points)
    dist = nearest_atom_distance_bohr(snap.atoms.get_positions() / Bohr, snap.grid.cell_bohr, snap.grid.pbc, pts)
    frac = (pts - pts[np.argmax(dist)]) @ np.linalg.inv(snap.grid.cell_bohr)
    near = np.linalg.norm((frac - np.round(frac)) @ snap.grid.cell_bohr, axis=1) < 3.0
    assert near.sum() > 1000
    return run, snap, eps, inside.mean(), inside[near].mean(), dist.max()


def test_sige_pbe_on_a_held_out_void():
    """A held-out void (data/sparc/unseen/sige_void, session 18: Si32Ge32 without an atom and its four nearest
    neighbours, 59 atoms at 900 K, a hole of 7.21 Bohr). Session 18's model, which had seen no void: eps 0.775 %,
    3-sigma coverage 0.9974 with the surface term (its vacuum is the void's centre; 0.9932 without), but within 3
    Bohr of the centre only 0.927, |err| 1.37 times sigma there. Since session 19 sige-pbe is trained on two voids
    of the same kind at other compositions (x = 0.3, 0.7; data/sparc/sige/void*): eps 0.751 %, coverage 0.9982,
    within 3 Bohr of the centre 0.997 (|err| 0.67 sigma). The hole is only just above the term's 7 Bohr: one
    coarse node lies in it as the cell is given, none after a 0.25-Bohr shift (ase_mlrho.surface,
    "Resolution"); covered either way."""
    from ase_mlrho.inference import InferenceSettings, run_prediction

    model = load_model("sige-pbe")
    run, snap, eps, cov, cov_centre, hole = _around_the_largest_hole(
        model, ROOT / "data" / "sparc" / "unseen" / "sige_void" / "sige_x=0.5_n=2_void5_T=900_seed=91")
    assert len(snap.atoms) == 59 and hole == pytest.approx(7.21, abs=0.01)
    assert run.summary.surface_term is True and run.summary.hole_warning is None
    assert eps < 0.78 and cov >= 0.99
    without = run_prediction(model, snap.atoms, None, InferenceSettings(surface_term=False), grid=snap.grid).field
    assert np.mean(np.abs(without.density - snap.density_e_per_bohr3) <= 3 * without.sigma_total) >= 0.99
    assert cov_centre >= 0.95  # issue 14's bar at an Al vacancy's centre; 0.927 before voids were in training
    trained = _trained_names(model)
    assert {"sige_x=0.3_n=2_void5_T=600_seed=92", "sige_x=0.7_n=2_void5_T=1500_seed=93"} <= trained
    assert snap.name not in trained


def test_sige_pbe_on_a_larger_held_out_void():
    """A void larger than any in training (data/sparc/unseen/sige_void17, session 19: Si32Ge32 without an atom and
    its first and second neighbours, 47 atoms at 1200 K, a hole of 8.24 Bohr, vacuum to the surface term). When
    shipped: eps 1.364 %, 3-sigma coverage 0.9967, 0.999 within 3 Bohr of the centre; the out-of-distribution
    warning fires (3.7 % of the points above the validation p99.9). Session 18's model: 1.417 %, 0.9940, 0.958."""
    run, snap, eps, cov, cov_centre, hole = _around_the_largest_hole(
        load_model("sige-pbe"),
        ROOT / "data" / "sparc" / "unseen" / "sige_void17" / "sige_x=0.5_n=2_void17_T=1200_seed=94")
    assert len(snap.atoms) == 47 and hole == pytest.approx(8.24, abs=0.01)
    assert run.summary.surface_term is True and run.summary.ood_warning is not None
    assert eps < 1.45 and cov >= 0.99 and cov_centre >= 0.95


def test_sige_pbe_on_a_larger_held_out_cell():
    """Si64Ge64 (data/sparc/unseen/sige_2x2x4, session 19: the cubic cell repeated 2 x 2 x 4, 128 atoms, x = 0.5
    at 1200 K, Gamma point like every training cell, 1150 s of SPARC): as accurate and as well covered as the
    64-atom cells the model was trained on sizes of. When shipped: eps 0.508 % (the held-out 64-atom cell at the same
    composition and temperature: 0.507 %), 3-sigma coverage 0.9991, no warning."""
    snap = load_snapshot(ROOT / "data" / "sparc" / "unseen" / "sige_2x2x4" / "sige_x=0.5_n=2x2x4_T=1200_seed=95")
    (m,), _, _ = evaluate_snapshots(load_model("sige-pbe"), [snap])
    assert len(snap.atoms) == 128 and np.isclose(snap.n_electrons, 64 * 4 + 64 * 14)
    assert m.eps_rho_percent < 0.55 and m.coverage_3sigma >= 0.99


@pytest.mark.parametrize("cell, atoms, hole_bohr, eps_bar", [
    ("al_kpts/test_vacancy/al_n=2_vac=1_k=2x2x2_T=600_seed=303", 31, 4.89, 0.63),
    ("unseen/al_tetravac/al_n=2_tetravac_k=2x2x2_T=600_seed=315", 28, 5.20, 1.00),
    ("unseen/al_pentavac/al_n=2_pentavac_k=2x2x2_T=450_seed=331", 27, 5.96, 1.05),
])
def test_al_pbe_covers_held_out_vacancies_at_their_centres(cell, atoms, hole_bohr, eps_bar):
    """Issue 14's bar at a defect: 3-sigma coverage >= 0.95 within 3 Bohr of the centre of a held-out Al31
    vacancy (600 K), asked here of larger vacancy clusters too. A tetra-vacancy: four vacancies on a tetrahedron
    of nearest-neighbour sites (data/sparc/unseen/al_tetravac, session 18: Al28 at 600 K, 2x2x2 k-points; the
    hole, 6.35 Bohr in the perfect lattice, is 5.20 Bohr after the EMT dynamics, as its neighbours move in).
    Session 15's al-pbe, which had seen one single vacancy: the tetra-vacancy's eps 1.066 %, 3-sigma coverage
    0.9922, within 3 Bohr of the hole's centre only 0.922 (|err| 1.24 times sigma there). Since session 20 al-pbe is
    trained on three voids of the Al32 cell (data/sparc/al_kpts/train_tetravac*, train_hexavac: the same cut at 945
    and 450 K, an octahedral hexa-vacancy at 315 K): tetra-vacancy eps 0.962 %, coverage 0.9967, 0.986 at the
    centre; the Al31 vacancy 0.598 %, 0.9981, 0.994 at the centre (session 15: 0.606 %, 0.9982). A held-out
    penta-vacancy (data/sparc/unseen/al_pentavac, session 20: the tetrahedron and a fifth site bonded to two of its
    sites, Al27 at 450 K), a shape no training cell has and a hole (5.96 Bohr) larger than any training defect's
    (5.86): session 15's al-pbe 1.123 %, 0.9896 (below 0.99), 0.878 at the centre, and its out-of-distribution
    warning fired; the shipped one 1.003 %, 0.9967, 1.000, no warning. al-pbe has no surface term, and no hole here
    is vacuum to one (under 7 Bohr)."""
    model = load_model("al-pbe")
    trained = _trained_names(model)
    assert {"al_n=2_tetravac_k=2x2x2_T=945_seed=325", "al_n=2_tetravac_k=2x2x2_T=450_seed=327",
            "al_n=2_hexavac_k=2x2x2_T=315_seed=326"} <= trained and cell.split("/")[-1] not in trained
    run, snap, eps, cov, cov_centre, hole = _around_the_largest_hole(model, ROOT / "data" / "sparc" / cell)
    assert len(snap.atoms) == atoms and hole == pytest.approx(hole_bohr, abs=0.01)
    assert run.summary.surface_term is None and run.summary.hole_warning is None
    assert eps < eps_bar and cov >= 0.99
    assert cov_centre >= 0.95


@pytest.mark.parametrize("cell, eps_bar", [
    ("al_2x2x4/al_n=2x2x4_k=2x2x1_T=630_seed=316", 0.65),
    ("al_2x2x4_945/al_n=2x2x4_k=2x2x1_T=945_seed=332", 0.78),
])
def test_al_pbe_on_larger_held_out_kpoint_cells(cell, eps_bar):
    """Al64 (data/sparc/unseen/al_2x2x4*: the cubic cell repeated 2 x 2 x 4, EMT at 630 K, session 19, and at 945 K,
    session 21) on a 2x2x1 grid shifted by 0.5, for the perfect crystal the Al32 2x2x2 grid of the training cells
    unfolded: the same k-point sampling, twice the atoms. At 630 K, session 15's al-pbe: eps 0.605 % (the held-out
    Al32 cells 0.61-0.80 %), 3-sigma coverage 0.9957, no warning; session 20's (trained on three voids as well):
    0.605 %, 0.9938. At 945 K, session 20's: 0.739 %, 0.9971, no warning. Neither cell is in its training data."""
    snap = load_snapshot(ROOT / "data" / "sparc" / "unseen" / cell)
    model = load_model("al-pbe")
    assert snap.name not in _trained_names(model)
    (m,), _, _ = evaluate_snapshots(model, [snap])
    assert len(snap.atoms) == 64 and np.isclose(snap.n_electrons, 64 * 3)
    assert m.eps_rho_percent < eps_bar and m.coverage_3sigma >= 0.99


def test_a_raw_electron_count_far_from_the_exact_one_warns():
    """al-pbe's raw integral stays within 0.45 % of the electron count on every committed SPARC cell (bulk,
    defects, slabs, strained and hot cells); the renormalisation would hide a larger miss, so above 2 % the
    prediction warns. A (111) slab whose box ends at its outer atoms along the non-periodic direction (the
    density beyond is lost: -15.5 % when measured) and cells in the wrong length unit warn: Al's 7.65 Bohr
    read as 7.65 Angstrom (1.89x too large, +7.3 %) and the reverse mix-up (0.53x too small, +26.9 %). The same
    slab with 6 Angstrom of vacuum (+0.18 %) does not."""
    from ase.build import fcc111

    from ase_mlrho.inference import InferenceSettings, run_prediction

    model = load_model("al-pbe")

    def summary(atoms):
        return run_prediction(model, atoms, settings=InferenceSettings(n_samples=2)).summary

    slab = fcc111("Al", (2, 2, 6), a=4.05, vacuum=6.0)
    slab.pbc = (True, True, False)
    ok = summary(slab)
    assert abs(ok.electrons_raw / ok.n_electrons - 1) < 0.005 and ok.electrons_warning is None
    slab.positions[:, 2] -= slab.positions[:, 2].min()
    slab.cell[2, 2] = slab.positions[:, 2].max() + 0.01  # no vacuum: the box ends at the outer layers
    cut = summary(slab)
    assert cut.electrons_raw / cut.n_electrons - 1 < -0.10
    assert cut.electrons_warning in cut.warnings and "% from the structure's 72" in cut.electrons_warning
    too_large = summary(bulk("Al", "fcc", a=4.05 / Bohr, cubic=True))  # the lattice constant in Bohr, read as A
    assert too_large.electrons_raw / too_large.n_electrons - 1 > 0.05 and too_large.electrons_warning is not None
    too_small = summary(bulk("Al", "fcc", a=4.05 * Bohr, cubic=True).repeat((2, 2, 2)))
    assert too_small.electrons_raw / too_small.n_electrons - 1 > 0.10 and too_small.electrons_warning is not None
