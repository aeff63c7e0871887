"""Data generation (sparc_bridge.datagen, `mlrho datagen`).

Without SPARC: sampling (seeded, decorrelated frames), the plan and names, the manifest, resume
after a kill, failed and unconverged SCF runs -- with a fake SPARC executable that copies the outputs
of the committed 4-atom run. With the ``sparc`` marker: `mlrho datagen` on Al4 end to end.
"""

import json
import sys

import numpy as np
import pytest

from ase_mlrho.cli import main
from sparc_bridge import datagen
from sparc_bridge.datagen import (BulkSpec, DatagenError, DatagenPlan, MDSettings, plan_snapshots, read_manifest,
                                  run_datagen, sample_trajectory, scf_converged, training_directories)
from sparc_bridge.inputs import read_input_parameters

TINY_MD = MDSettings(timestep_fs=2.0, equilibration_steps=20, frames_per_trajectory=1)

FAKE_SPARC = r'''
import gzip, os, shutil, sys
fixture = sys.argv[1]
name = os.path.basename(os.getcwd())
with open(os.environ["FAKE_SPARC_CALLS"], "a") as f:
    f.write(name + "\n")
if os.environ.get("FAKE_SPARC_FAIL", "\0") in name:
    print("[FATAL] fake SPARC failure for the test")
    sys.exit(1)
for suffix in (".out", ".static"):
    shutil.copy(os.path.join(fixture, "SPARC" + suffix), "SPARC" + suffix)
with gzip.open(os.path.join(fixture, "SPARC.dens.gz"), "rb") as src, open("SPARC.dens", "wb") as dst:
    dst.write(src.read())
open("SPARC.eigen", "w").write("scratch\n")
if os.environ.get("FAKE_SPARC_UNCONVERGED", "\0") in name:
    text = open("SPARC.out").read().replace("Total walltime", "WARNING: SCF#1 did not converge to desired accuracy!\nTotal walltime")
    open("SPARC.out", "w").write(text)
'''


@pytest.fixture
def fake_sparc(tmp_path, monkeypatch, al4_dir):
    """A SPARC command that 'computes' by copying the Al4 fixture's outputs; records every call."""
    script = tmp_path / "fake_sparc.py"
    script.write_text(FAKE_SPARC)
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    monkeypatch.setenv("FAKE_SPARC_CALLS", str(calls))
    monkeypatch.delenv("FAKE_SPARC_FAIL", raising=False)
    monkeypatch.delenv("FAKE_SPARC_UNCONVERGED", raising=False)
    cmd = f"{sys.executable} {script} {al4_dir}"
    return cmd, lambda: [line for line in calls.read_text().splitlines() if line]


def _plan(temps=(300.0, 600.0), seeds=(1, 2), md=TINY_MD):
    return DatagenPlan(temperatures_k=temps, seeds=seeds, bulk=BulkSpec("Al", "fcc", 4.05, 1), md=md)


# ----------------------------------------------------------------------------- sampling
def test_sampling_is_seeded_and_frames_are_spaced():
    atoms = BulkSpec("Al", "fcc", 4.05, 1).build()
    md = MDSettings(equilibration_steps=10, frames_per_trajectory=3, decorrelation_fs=8.0)
    a = sample_trajectory(atoms, 500.0, seed=3, md=md)
    b = sample_trajectory(atoms, 500.0, seed=3, md=md)
    c = sample_trajectory(atoms, 500.0, seed=4, md=md)
    assert len(a) == 3
    for x, y in zip(a, b):
        assert np.array_equal(x.positions, y.positions)  # bit for bit with the same seed
    assert not np.allclose(a[0].positions, c[0].positions)
    assert all(f.calc is None for f in a)
    assert not np.allclose(a[0].positions, a[1].positions)
    assert md.decorrelation_steps == 4
    assert md.frame_times_fs() == [20.0, 28.0, 36.0]
    # frame k of the trajectory is the structure after equilibration + k * spacing steps
    md1 = MDSettings(equilibration_steps=14, frames_per_trajectory=1)
    assert np.array_equal(sample_trajectory(atoms, 500.0, seed=3, md=md1)[0].positions, a[1].positions)
    # 0 K is the perfect crystal
    assert np.allclose(sample_trajectory(atoms, 0.0, seed=3, md=md)[0].positions, atoms.positions)


def test_shared_data_recipe_is_the_default():
    md = MDSettings()
    assert (md.timestep_fs, md.equilibration_steps, md.friction_per_ase_time) == (2.0, 600, 0.02)
    assert md.describe() == ("ase EMT Langevin 2 fs x 600 steps, friction 0.02, MaxwellBoltzmann init, "
                             "numpy default_rng(seed)")
    s = datagen.default_sparc_settings(["Al"])
    assert (s.xc, s.elec_temp_type, s.elec_temp_k, s.mesh_spacing_bohr) == ("pbe", "Fermi-Dirac", 631.554, 0.25)
    assert datagen.default_sparc_settings(["Si", "Ge"]).mesh_spacing_bohr == 0.4


def test_plan_names_and_validation():
    plan = DatagenPlan(temperatures_k=(630.0, 0.0, 630.0), seeds=(4, 0, 5), bulk=BulkSpec(supercell=2),
                       md=MDSettings(frames_per_trajectory=2, decorrelation_fs=100.0))
    names = [s.name for s in plan_snapshots(plan)]
    assert names == ["al_n=2_T=630_seed=4_frame=0", "al_n=2_T=630_seed=4_frame=1", "al_n=2_T=0_seed=0",
                     "al_n=2_T=630_seed=5_frame=0", "al_n=2_T=630_seed=5_frame=1"]
    single = DatagenPlan(temperatures_k=(630.0,), seeds=(4,), bulk=BulkSpec(supercell=2))
    assert [s.name for s in plan_snapshots(single)] == ["al_n=2_T=630_seed=4"]  # as in the shared data
    with pytest.raises(ValueError, match="repeated"):
        DatagenPlan(temperatures_k=(300.0, 300.0), seeds=(1, 1), bulk=BulkSpec())
    with pytest.raises(ValueError, match="one seed each"):
        DatagenPlan(temperatures_k=(300.0, 600.0), seeds=(1,), bulk=BulkSpec())
    with pytest.raises(ValueError, match="multiple of"):
        MDSettings(frames_per_trajectory=2, decorrelation_fs=3.0)
    with pytest.raises(NotImplementedError, match="AIMD"):
        datagen.make_calculator("sparc-aimd")


def test_pluggable_calculator():
    factory = datagen.make_calculator("ase.calculators.lj:LennardJones")
    atoms = BulkSpec().build()
    frames = sample_trajectory(atoms, 300.0, 1, TINY_MD, calculator_factory=factory)
    assert len(frames) == 1 and not np.allclose(frames[0].positions, atoms.positions)


# ----------------------------------------------------------------------------- runs with a fake SPARC
def test_run_writes_shared_layout_and_manifest(tmp_path, fake_sparc):
    cmd, calls = fake_sparc
    out = tmp_path / "data"
    report = run_datagen(_plan(), out, command=cmd, progress=False)
    assert report.ok and report.done == ("al_n=1_T=300_seed=1", "al_n=1_T=600_seed=2")
    for name in report.done:
        d = out / name
        assert sorted(p.name for p in d.iterdir()) == ["SPARC.dens.gz", "SPARC.inpt", "SPARC.ion", "SPARC.out",
                                                      "SPARC.static", "SPARC_RUN_OK.json", "meta.json"]
        meta = json.loads((d / "meta.json").read_text())
        for key in ("name", "seed", "T_K", "sampler", "a_ang", "supercell", "mesh_spacing_bohr", "wall_s",
                    "natoms", "symbols", "sparc_command"):
            assert key in meta
        assert meta["converged"] is True and meta["sparc_version"] == "December 03, 2025"
        assert meta["symbols"] == "Al4" and meta["mesh_spacing_bohr"] == 0.25 and meta["supercell"] == 1
    manifest = read_manifest(out)
    entry = manifest["snapshots"]["al_n=1_T=300_seed=1"]
    assert entry["status"] == "done" and entry["seed"] == 1 and entry["T_K"] == 300.0
    assert len(entry["positions_sha256"]) == 64 and entry["sparc_version"] == "December 03, 2025"
    assert manifest["recipe"]["md"]["equilibration_steps"] == 20
    assert manifest["recipe"]["sparc"]["elec_temp_k"] == 631.554
    # the input SPARC computed is the stored sample
    from ase.io import read
    sample = read(out / "samples" / "al_n=1_T=300_seed=1.traj")
    assert datagen.positions_sha256(sample) == entry["positions_sha256"]
    # a rerun computes nothing
    n = len(calls())
    assert run_datagen(_plan(), out, command=cmd, progress=False).ran_now == ()
    assert len(calls()) == n
    assert training_directories(out) == [out / name for name in report.done]


def test_killed_run_resumes_and_never_reuses_partial_dirs(tmp_path, fake_sparc, monkeypatch):
    cmd, calls = fake_sparc
    out = tmp_path / "data"
    real = datagen.run_sparc
    state = {"n": 0}

    def killed_on_second(*a, **k):
        state["n"] += 1
        if state["n"] == 2:
            (out / "al_n=1_T=600_seed=2.partial" / "junk").write_text("half-finished")
            raise KeyboardInterrupt  # a kill in the middle of the second SCF
        return real(*a, **k)

    monkeypatch.setattr(datagen, "run_sparc", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_datagen(_plan(), out, command=cmd, progress=False)
    entries = read_manifest(out)["snapshots"]
    assert entries["al_n=1_T=300_seed=1"]["status"] == "done"
    assert entries["al_n=1_T=600_seed=2"]["status"] == "running"
    assert (out / "al_n=1_T=600_seed=2.partial").is_dir() and not (out / "al_n=1_T=600_seed=2").exists()
    assert training_directories(out) == [out / "al_n=1_T=300_seed=1"]

    monkeypatch.setattr(datagen, "run_sparc", real)
    report = run_datagen(_plan(), out, command=cmd, progress=False)
    assert report.ran_now == ("al_n=1_T=600_seed=2",) and report.ok
    assert not (out / "al_n=1_T=600_seed=2.partial").exists()
    assert not (out / "al_n=1_T=600_seed=2" / "junk").exists()
    assert calls() == ["al_n=1_T=300_seed=1.partial", "al_n=1_T=600_seed=2.partial"]


def test_extending_with_new_temperatures_and_refusing_another_recipe(tmp_path, fake_sparc):
    cmd, calls = fake_sparc
    out = tmp_path / "data"
    run_datagen(_plan((300.0,), (1,)), out, command=cmd, progress=False)
    report = run_datagen(_plan((300.0, 900.0), (1, 3)), out, command=cmd, progress=False)
    assert report.ran_now == ("al_n=1_T=900_seed=3",)
    other = MDSettings(timestep_fs=1.0, equilibration_steps=20)
    with pytest.raises(DatagenError, match="different recipe.*md"):
        run_datagen(_plan((300.0,), (1,), md=other), out, command=cmd, progress=False)


def test_failed_and_unconverged_runs_are_flagged_not_dropped(tmp_path, fake_sparc, monkeypatch):
    cmd, calls = fake_sparc
    out = tmp_path / "data"
    monkeypatch.setenv("FAKE_SPARC_FAIL", "T=300")
    monkeypatch.setenv("FAKE_SPARC_UNCONVERGED", "T=600")
    plan = _plan((300.0, 600.0, 900.0), (1, 2, 3))
    report = run_datagen(plan, out, command=cmd, progress=False)
    assert not report.ok
    assert report.failed == ("al_n=1_T=300_seed=1",) and "fake SPARC failure" in report.errors[report.failed[0]]
    assert report.unconverged == ("al_n=1_T=600_seed=2",) and report.done == ("al_n=1_T=900_seed=3",)
    text = report.format()
    assert "FAILED al_n=1_T=300_seed=1" in text and "UNCONVERGED al_n=1_T=600_seed=2" in text
    entries = read_manifest(out)["snapshots"]
    assert entries["al_n=1_T=300_seed=1"]["status"] == "failed"
    assert (out / "al_n=1_T=300_seed=1.failed" / "sparc.log").is_file()
    assert entries["al_n=1_T=600_seed=2"]["status"] == "unconverged"
    assert scf_converged(out / "al_n=1_T=900_seed=3") and not scf_converged(out / "al_n=1_T=600_seed=2")
    # excluded from training by default, available on request
    assert training_directories(out) == [out / "al_n=1_T=900_seed=3"]
    assert len(training_directories(out, include_unconverged=True)) == 2
    # failed runs are not retried silently; --retry-failed retries them
    n = len(calls())
    assert run_datagen(plan, out, command=cmd, progress=False).failed == ("al_n=1_T=300_seed=1",)
    assert len(calls()) == n
    monkeypatch.delenv("FAKE_SPARC_FAIL")
    report = run_datagen(plan, out, command=cmd, progress=False, retry_failed=True)
    assert report.ran_now == ("al_n=1_T=300_seed=1",) and "al_n=1_T=300_seed=1" in report.done
    assert not (out / "al_n=1_T=300_seed=1.failed").exists()


def test_cli_with_fake_sparc(tmp_path, fake_sparc, capsys):
    cmd, _ = fake_sparc
    out = tmp_path / "data"
    rc = main(["datagen", "--element", "Al", "--a", "4.05", "--supercell", "1", "-T", "300", "--seeds", "7",
               "--steps", "10", "-o", str(out), "--sparc-command", cmd, "--json", "--no-progress"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["done"] == ["al_n=1_T=300_seed=7"]
    assert main(["datagen", "--element", "Al", "-T", "300", "-o", str(tmp_path / "x"), "--calculator",
                 "sparc-aimd"]) == 2
    assert not (tmp_path / "x").exists()
    assert "AIMD" in capsys.readouterr().err


def test_cli_kpoint_grid_reaches_sparc_input_names_and_recipe(tmp_path, fake_sparc, capsys):
    cmd, _ = fake_sparc
    out = tmp_path / "data"
    rc = main(["datagen", "--element", "Al", "--supercell", "1", "-T", "300", "--seeds", "7", "--steps", "10",
               "--kpts", "2", "2", "2", "--kpoint-shift", "0.5", "-o", str(out), "--sparc-command", cmd, "--json",
               "--no-progress"])
    assert rc == 0
    name = "al_n=1_k=2x2x2_T=300_seed=7"
    assert json.loads(capsys.readouterr().out)["done"] == [name]
    params = read_input_parameters(out / name)
    assert list(params["KPOINT_GRID"]) == [2, 2, 2] and list(params["KPOINT_SHIFT"]) == [0.5, 0.5, 0.5]
    recipe = json.loads((out / "manifest.json").read_text())["recipe"]["sparc"]
    assert recipe["kpts"] == [2, 2, 2] and recipe["extra"] == [["KPOINT_SHIFT", [0.5, 0.5, 0.5]]]
    assert main(["datagen", "--element", "Al", "-T", "300", "--kpts", "0", "1", "1", "-o", str(tmp_path / "y")]) == 2
    assert "--kpts must be positive" in capsys.readouterr().err


def test_cli_sparc_params_reach_every_input_and_the_recipe(tmp_path, fake_sparc, capsys):
    """--sparc-param (e.g. a smaller mixing parameter for a cell whose SCF stalls) reaches the SPARC input and
    the manifest's recipe, so a resumed run cannot silently change it; names datagen sets from its own options,
    unknown names and ill-typed values are refused with one line, before anything is written."""
    cmd, _ = fake_sparc
    out = tmp_path / "data"
    base = ["datagen", "--element", "Al", "--supercell", "1", "-T", "300", "--seeds", "7", "--steps", "10",
            "--sparc-command", cmd, "--json", "--no-progress"]
    assert main(base + ["-o", str(out), "--kpoint-shift", "0.5", "--sparc-param", "mixing_parameter=0.1",
                        "--sparc-param", "MIXING_HISTORY=11"]) == 0
    name = "al_n=1_T=300_seed=7"
    assert json.loads(capsys.readouterr().out)["done"] == [name]
    params = read_input_parameters(out / name)
    assert float(params["MIXING_PARAMETER"]) == 0.1 and int(params["MIXING_HISTORY"]) == 11
    assert list(params["KPOINT_SHIFT"]) == [0.5, 0.5, 0.5]
    recipe = json.loads((out / "manifest.json").read_text())["recipe"]["sparc"]
    assert recipe["extra"] == [["KPOINT_SHIFT", [0.5, 0.5, 0.5]], ["MIXING_PARAMETER", 0.1], ["MIXING_HISTORY", 11]]
    # the same output with another mixing parameter is another recipe: refused, the data set untouched
    assert main(base + ["-o", str(out), "--kpoint-shift", "0.5", "--sparc-param", "MIXING_PARAMETER=0.2"]) == 2
    assert "recipe" in capsys.readouterr().err
    for bad, message in ((["TOL_SCF=1e-4"], "use --tol-scf"), (["KPOINT_GRID=2 2 2"], "use --kpts"),
                         (["LATVEC_SCALE=7.6 7.6 7.6"], "the cell comes from the structure"),
                         (["MIXING_PARAMETR=0.1"], "not a SPARC input parameter"),
                         (["MIXING_PARAMETER=fast"], "not a valid value"), (["MIXING_PARAMETER"], "NAME=VALUE")):
        assert main(base + ["-o", str(tmp_path / "bad")] + [a for b in bad for a in ("--sparc-param", b)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- real SPARC
@pytest.mark.sparc
def test_datagen_al4_end_to_end(sparc_command, tmp_path, capsys):
    from sparc_bridge.snapshots import load_snapshot

    out = tmp_path / "al4"
    rc = main(["datagen", "--element", "Al", "--supercell", "1", "-T", "600", "--seeds", "1", "--steps", "20",
               "-o", str(out), "--sparc-command", sparc_command, "--timeout-s", "300", "--json", "--no-progress",
               "--sparc-param", "MIXING_PARAMETER=0.2"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    (d,) = training_directories(out)
    assert "MIXING_PARAMETER: 0.2" in (d / "SPARC.out").read_text()  # SPARC's echo of what it ran with (default 0.3)
    snap = load_snapshot(d)
    meta = json.loads((d / "meta.json").read_text())
    assert snap.natoms == 4 and snap.grid.shape == (31, 31, 31) and meta["converged"]
    assert meta["wall_s"] > 0 and meta["sparc_version"]
    assert snap.provenance["meta"]["positions_sha256"] == read_manifest(out)["snapshots"][d.name]["positions_sha256"]


def test_structure_file_source(tmp_path, fake_sparc):
    from ase.io import write

    cmd, _ = fake_sparc
    path = tmp_path / "my_cell.extxyz"
    write(path, BulkSpec().build())
    plan = DatagenPlan(temperatures_k=(450.0,), seeds=(9,), structure_file=str(path), md=TINY_MD)
    report = run_datagen(plan, tmp_path / "data", command=cmd, progress=False)
    assert report.done == ("my_cell_T=450_seed=9",)
    manifest = read_manifest(tmp_path / "data")
    assert manifest["recipe"]["structure"]["sha256"] and manifest["recipe"]["structure"]["file"].endswith(".extxyz")
    meta = json.loads((tmp_path / "data" / "my_cell_T=450_seed=9" / "meta.json").read_text())
    assert meta["structure_file"] == str(path) and meta["supercell"] is None and meta["natoms"] == 4


# ----------------------------------------------------------------------------- alloys, vacancies, rattle
SIGE = BulkSpec("Si", "diamond", 5.54, 2, "Ge", 0.4)


def test_random_alloy_occupation_is_exact_and_seeded():
    ideal = SIGE.build()
    a, b, c = SIGE.decorate(ideal, 41), SIGE.decorate(ideal, 41), SIGE.decorate(ideal, 42)
    assert len(a) == 64 and a.get_chemical_symbols().count("Ge") == round(0.4 * 64) == 26
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    assert a.get_chemical_symbols() != c.get_chemical_symbols()
    assert np.array_equal(a.positions, ideal.positions)  # occupation only: no displacement
    assert ideal.get_chemical_symbols() == ["Si"] * 64  # the input is left alone
    assert SIGE.prefix == "sige_x=0.4_n=2"


def test_vacancies_remove_random_sites():
    spec = BulkSpec("Si", "diamond", 5.54, 2, "Ge", 0.5, vacancies=2)
    ideal = spec.build()
    atoms = spec.decorate(ideal, 51)
    assert len(atoms) == 62 and spec.prefix == "sige_x=0.5_n=2_vac=2"
    # every remaining atom sits on a site of the ideal crystal; two sites are empty
    d = np.linalg.norm(atoms.positions[:, None, :] - ideal.positions[None, :, :], axis=-1)
    assert np.all(d.min(axis=1) < 1e-12) and len(set(d.argmin(axis=1))) == 62
    with pytest.raises(ValueError, match="vacancies"):
        BulkSpec("Al", "fcc", 4.05, 1, vacancies=4).build()
    with pytest.raises(ValueError, match="alloy_element"):
        BulkSpec("Si", "diamond", 5.54, 1, None, 0.5)


def test_rattle_sampler_amplitude_matches_shared_scheme():
    md = MDSettings(calculator="rattle")
    ideal = BulkSpec("Si", "diamond", 5.54, 3).build()  # 216 atoms, 648 displacement components
    (frame,) = sample_trajectory(ideal, 900.0, 5, md)
    disp = frame.positions - ideal.positions
    disp -= np.round(disp @ np.linalg.inv(ideal.cell[:])) @ ideal.cell[:]  # undo the wrap
    expected = 0.0045 * np.sqrt(900.0)  # 0.135 A, as in ../shared/data/sparc/sige_*/meta.json
    assert abs(disp.std() / expected - 1) < 0.1  # 648 samples: the estimate's relative error is ~3 %
    assert abs(disp.mean()) < 4 * expected / np.sqrt(disp.size)
    again = sample_trajectory(ideal, 900.0, 5, md)[0]
    assert np.array_equal(again.positions, frame.positions)
    assert datagen.make_calculator("rattle") is None


def test_alloy_datagen_names_and_meta(tmp_path, fake_sparc):
    cmd, calls = fake_sparc
    plan = DatagenPlan(temperatures_k=(1200.0,), seeds=(41,), md=MDSettings(calculator="rattle"),
                       bulk=BulkSpec("Si", "diamond", 5.54, 1, "Ge", 0.5, vacancies=1))
    assert plan.species() == ["Si", "Ge"]
    assert plan.sparc_settings(plan.species()).mesh_spacing_bohr == 0.4
    report = run_datagen(plan, tmp_path / "d", command=cmd, progress=False)
    assert report.done == ("sige_x=0.5_n=1_vac=1_T=1200_seed=41",)
    meta = json.loads((tmp_path / "d" / report.done[0] / "meta.json").read_text())
    assert meta["alloy_element"] == "Ge" and meta["alloy_fraction"] == 0.5 and meta["vacancies"] == 1
    sample = datagen._load_sample(tmp_path / "d" / "samples" / f"{report.done[0]}.traj")
    assert len(sample) == 7 and sample.get_chemical_symbols().count("Ge") in (3, 4)  # 4 Ge placed, then 1 site removed
    # recipes of plain crystals keep their old form (data sets made before alloys existed still resume)
    assert set(_plan().recipe(["Al"])["structure"]) == {"element", "lattice", "a_ang", "supercell"}
    assert "rattle_ang_per_sqrt_k" not in _plan().recipe(["Al"])["md"]
