"""`mlrho energy`, `mlrho eos`, `mlrho warmstart` and the ML density provider.

Without SPARC (CI): argument handling, the missing-SPARC message, model/species mismatch, and the
JSON reports with a fake SPARC executable -- a small Python script that writes a plausible
``SPARC.out``/``.static`` from the committed fixtures, with an energy that depends on the lattice
parameter (so EOS fits have a minimum) and fewer SCF iterations for a warm start. Tests marked
``sparc`` run the real thing on the 4-atom fixture with a toy model trained in seconds.
"""

from __future__ import annotations

import json
import math
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.units import Bohr

from ase_mlrho.cli import main
from ase_mlrho.descriptors import UnknownSpeciesError
from ase_mlrho.grid import Grid
from sparc_bridge.inputs import SparcSettings, write_scf_input
from ase_mlrho.inference import InferenceSettings
from sparc_bridge.ml_provider import MLDensityProvider, sparc_settings_for_model
from sparc_bridge.run import MARKER_NAME, run_sparc

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPORT = "mlrho_report.json"
#: minimum of the fake SPARC's energy, conventional fcc lattice parameter in Bohr
FAKE_A_MIN_BOHR = 7.60
FAKE_HF_OFFSET_HA = 1.0e-5
FAKE_WARM_ITERATIONS = 3

_FAKE_SPARC = r'''#!{python}
"""Fake SPARC: writes SPARC.out/.static from the committed fixtures with E(a) = E0 + k (a - a_min)^2 per atom."""
import os, re, sys, pathlib
fixtures = pathlib.Path({fixtures!r})
if sys.argv[1:] != ["-name", "SPARC"]:
    sys.exit(3)
inpt = pathlib.Path("SPARC.inpt").read_text()
def param(name):
    m = re.search(r"^" + name + r":\s*(.*)$", inpt, re.M)
    return m.group(1).strip() if m else None
lines = inpt.splitlines()
i = next(k for k, l in enumerate(lines) if l.startswith("LATVEC:"))
row = [float(x) for x in lines[i + 1].split()]
scale = float((param("LATVEC_SCALE") or "1 1 1").split()[0])
edge = scale * sum(x * x for x in row) ** 0.5
natoms = sum(int(n) for n in re.findall(r"N_TYPE_ATOM:\s*(\d+)", pathlib.Path("SPARC.ion").read_text()))
a_conv = edge / round((natoms / 4) ** (1 / 3))
e = -2.26 + 0.02 * (a_conv - {a_min}) ** 2
hf = param("MAXIT_SCF") == "1"
warm = param("READ_INIT_DENS") == "1"
if warm and not os.path.getsize(param("INPUT_DENS_FILE").split()[0]):
    sys.exit(5)
template = fixtures / ("al4_hf_rt4" if hf else "al4")
if hf:
    e += {hf_offset}
out = (template / "SPARC.out").read_text()
static = (template / "SPARC.static").read_text()
out = re.sub(r"(Free energy per atom\s*:\s*)\S+", lambda m: m.group(1) + "%.10E" % e, out)
out = re.sub(r"(Total free energy\s*:\s*)\S+", lambda m: m.group(1) + "%.10E" % (e * natoms), out)
out = re.sub(r"(Total number of atoms\s*:\s*)\d+", lambda m: m.group(1) + str(natoms), out)
head, rest = out.split("Timing (sec)\n", 1)
table, tail = rest.split("Total number of SCF:", 1)
rows = table.strip().splitlines()
if warm and not hf:
    rows = rows[:{warm_iterations}]
    tail = re.sub(r"^\s*\d+", " %d" % len(rows), tail, count=1)
last = rows[-1].split()
rows[-1] = "%-12s %.10E        %s        %s" % (last[0], e, last[2], last[3])
out = head + "Timing (sec)\n" + "\n".join(rows) + "\nTotal number of SCF:" + tail
static = re.sub(r"(Total free energy \(Ha\):\s*)\S+", lambda m: m.group(1) + "%.15E" % (e * natoms), static)
pathlib.Path("SPARC.out").write_text(out)
pathlib.Path("SPARC.static").write_text(static)
if hf and param("PRINT_DENSITY") == "1":  # rho_out = rho_in: a zero residual
    pathlib.Path("SPARC.dens").write_text(pathlib.Path(param("INPUT_DENS_FILE").split()[0]).read_text())
'''


def fake_energy_per_atom_ha(a_conv_bohr: float, hf: bool = False) -> float:
    return -2.26 + 0.02 * (a_conv_bohr - FAKE_A_MIN_BOHR) ** 2 + (FAKE_HF_OFFSET_HA if hf else 0.0)


@pytest.fixture
def fake_sparc(tmp_path, monkeypatch):
    exe = tmp_path / "fake_sparc.py"
    exe.write_text(_FAKE_SPARC.format(python=sys.executable, fixtures=str(FIXTURES), a_min=FAKE_A_MIN_BOHR,
                                      hf_offset=FAKE_HF_OFFSET_HA, warm_iterations=FAKE_WARM_ITERATIONS))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("ASE_SPARC_COMMAND", str(exe))
    return str(exe)


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    """A tiny Al model trained on the 4-atom fixture in seconds (see test_train_evaluate_cli)."""
    out = tmp_path_factory.mktemp("bridge_model") / "toy.safetensors"
    al4 = str(FIXTURES / "al4")
    rc = main(["train", al4, "--val", al4, "-o", str(out), "--m", "12", "--m-s", "2", "--k", "3",
               "--hidden", "16,16", "--epochs", "3", "--points", "3000", "--seed", "1"])
    assert rc == 0 and out.is_file()
    return str(out)


@pytest.fixture
def al4_xyz(tmp_path):
    path = tmp_path / "al4.xyz"
    bulk("Al", "fcc", a=4.05, cubic=True).write(path)
    return str(path)


def _json(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out)


# ============================================================================ the ML density provider
def test_ml_provider_predicts_on_sparcs_grid(toy_model):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    provider = MLDensityProvider(toy_model, InferenceSettings(seed=3))
    grid, rho, summary = provider(atoms)
    expected = Grid.from_atoms(atoms, provider.model.mesh_spacing_bohr)
    assert grid.shape == expected.shape == (31, 31, 31)
    assert np.allclose(grid.cell_bohr, expected.cell_bohr)
    assert sparc_settings_for_model(provider.model).grid(atoms).shape == grid.shape
    assert rho.min() >= 0 and grid.integrate(rho) == pytest.approx(12.0, abs=1e-9)
    for key in ("electrons_raw", "renormalisation_factor", "sigma_total_mean_e_per_bohr3",
                "sigma_total_max_e_per_bohr3", "sigma_total_integral_e", "ood_fraction", "seed", "model"):
        assert key in summary
    assert summary["seed"] == 3 and summary["n_electrons"] == 12.0
    _, rho2, _ = provider(atoms)
    assert np.array_equal(rho, rho2)  # explicit seed: bit-for-bit repeatable


def test_ml_provider_refuses_other_species(toy_model):
    with pytest.raises(UnknownSpeciesError, match="model 'toy' knows Al; structure has Cu"):
        MLDensityProvider(toy_model)(bulk("Cu", "fcc", a=3.6, cubic=True))


# ============================================================================ argument handling and bad input
def test_missing_sparc_is_one_line_and_no_work(tmp_path, monkeypatch, capsys, al4_dir):
    monkeypatch.delenv("ASE_SPARC_COMMAND", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for cmd in (["energy", str(al4_dir)], ["eos", str(al4_dir)], ["warmstart", str(al4_dir)],
                ["screening", str(al4_dir), "-o", str(tmp_path / "out.safetensors")]):
        workdir = tmp_path / f"w_{cmd[0]}"
        assert main(cmd + ["-m", "no-such-model", "--workdir", str(workdir)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert err.startswith(f"mlrho {cmd[0]}: error: no SPARC executable found")
        assert "ASE_SPARC_COMMAND" in err
        assert not workdir.exists()


def test_model_for_other_species_is_refused(fake_sparc, toy_model, tmp_path, capsys):
    cu = tmp_path / "cu4.xyz"
    bulk("Cu", "fcc", a=3.6, cubic=True).write(cu)
    for cmd in ("energy", "eos", "warmstart"):
        workdir = tmp_path / f"w_{cmd}"
        assert main([cmd, str(cu), "-m", toy_model, "--workdir", str(workdir)]) == 2
        err = capsys.readouterr().err
        assert "UnknownSpeciesError: model 'toy' knows Al; structure has Cu" in err
        assert not workdir.exists()


def test_bad_arguments(fake_sparc, toy_model, al4_xyz, tmp_path, capsys):
    assert main(["energy", str(tmp_path / "nope.xyz"), "-m", toy_model]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["energy", al4_xyz, "-m", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eos", al4_xyz, "-m", toy_model, "--strains", "-0.01", "0", "0.01"]) == 2
    assert "at least 4 strains" in capsys.readouterr().err
    assert main(["eos", al4_xyz, "-m", toy_model, "--strains", "-0.01", "0", "0", "0.01"]) == 2
    assert "distinct" in capsys.readouterr().err
    assert main(["eos", al4_xyz, "-m", toy_model, "--scf-runs", str(tmp_path)]) == 2
    assert "not a SPARC run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: mutually exclusive references
        main(["eos", al4_xyz, "-m", toy_model, "--with-scf", "--scf-runs", str(tmp_path)])
    assert exc.value.code == 2
    capsys.readouterr()
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    assert main(["energy", al4_xyz, "-m", toy_model, "--workdir", str(used)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["warmstart", al4_xyz, "-m", toy_model, "--rho-trigger", "0"]) == 2
    assert "--rho-trigger" in capsys.readouterr().err


# ============================================================================ JSON reports with a fake SPARC
def test_energy_json_on_run_directory(fake_sparc, toy_model, al4_dir, tmp_path, capsys):
    workdir = tmp_path / "e"
    assert main(["energy", str(al4_dir), "-m", toy_model, "--workdir", str(workdir), "--json"]) == 0
    r = _json(capsys)
    a = 4.05 / Bohr
    e_hf = fake_energy_per_atom_ha(a, hf=True)
    e_scf = -9.054013388226656 / 4  # the fixture's own SCF energy
    assert r["energy_hf_ha_per_atom"] == pytest.approx(e_hf, abs=1e-12)
    assert r["energy_scf_ha_per_atom"] == pytest.approx(e_scf, abs=1e-12)
    assert r["error_ha_per_atom"] == pytest.approx(e_hf - e_scf, abs=1e-12)
    assert r["scf_error_first_iteration"] == pytest.approx(0.1487)
    assert r["seconds"] > 0 and r["predict_seconds"] > 0
    assert r["scf_reference_iterations"] == 15 and r["scf_reference_walltime_s"] == pytest.approx(4.071)
    assert r["grid_shape"] == r["reference_grid_shape"] == [31, 31, 31]
    assert r["natoms"] == 4 and r["model"] == "toy" and r["rho_trigger"] == 20
    assert r["uncertainty"]["n_electrons"] == 12.0
    assert json.loads((workdir / REPORT).read_text()) == r
    assert (workdir / "hf" / MARKER_NAME).is_file() and (workdir / "hf" / "input_density.cube").is_file()


def test_energy_on_structure_file_has_no_reference(fake_sparc, toy_model, al4_xyz, tmp_path, capsys,
                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)  # default work directory: a new one under ./mlrho-runs/
    assert main(["energy", al4_xyz, "-m", toy_model, "--json", "--rho-trigger", "7"]) == 0
    r = _json(capsys)
    assert r["energy_scf_ha_per_atom"] is None and r["error_ha_per_atom"] is None
    assert math.isfinite(r["energy_hf_ha_per_atom"]) and r["scf_reference_iterations"] is None
    workdir = Path(r["workdir"])
    assert workdir.parent == Path("mlrho-runs") and (workdir / REPORT).is_file()
    assert "RHO_TRIGGER: 7" in (workdir / "hf" / "SPARC.inpt").read_text()
    assert main(["energy", al4_xyz, "-m", toy_model]) == 0  # a second run gets its own directory
    assert "E_HF" in capsys.readouterr().out
    assert len(list(Path("mlrho-runs").iterdir())) == 2


def test_failed_sparc_leaves_no_report(toy_model, al4_xyz, tmp_path, capsys, monkeypatch):
    exe = tmp_path / "failing_sparc.sh"
    exe.write_text('#!/bin/bash\necho "[FATAL] Incorrect CUBE file: inconsistent grid sizes!"\nexit 1\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("ASE_SPARC_COMMAND", str(exe))
    workdir = tmp_path / "e"
    assert main(["energy", al4_xyz, "-m", toy_model, "--workdir", str(workdir), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "inconsistent grid sizes" in captured.err
    assert not (workdir / REPORT).exists() and not (workdir / "hf" / MARKER_NAME).exists()


def _check_eos_block(block: dict, natoms: int):
    for key in ("a0_bohr", "a0_ang", "v0_bohr3_per_atom", "e0_ha_per_atom", "bulk_modulus_gpa"):
        assert isinstance(block[key], float) and math.isfinite(block[key])
    assert block["a0_ang"] == pytest.approx(block["a0_bohr"] * Bohr, rel=1e-12)
    # the conventional fcc lattice parameter, not the supercell edge
    assert block["a0_bohr"] == pytest.approx((4 * block["v0_bohr3_per_atom"]) ** (1 / 3), rel=1e-12)
    assert block["natoms"] == natoms


@pytest.mark.filterwarnings("ignore:Covariance of the parameters could not be estimated")  # the fake E(a) is exact
def test_eos_json_with_scf(fake_sparc, toy_model, tmp_path, capsys):
    al32 = tmp_path / "al32.xyz"
    bulk("Al", "fcc", a=4.05, cubic=True).repeat(2).write(al32)
    # 2x2x2: a0 must be the conventional cubic parameter, not the supercell edge; 4 strains keep it quick
    workdir = tmp_path / "eos"
    plot = tmp_path / "eos.png"
    assert main(["eos", str(al32), "-m", toy_model, "--workdir", str(workdir), "--with-scf", "--json",
                 "--strains", "-0.04", "-0.02", "0", "0.02", "--plot", str(plot)]) == 0
    r = _json(capsys)
    assert set(r) >= {"ml", "scf", "differences", "seconds", "strains"}
    for name in ("ml", "scf"):
        _check_eos_block(r[name], 32)
        assert r[name]["a0_bohr"] == pytest.approx(FAKE_A_MIN_BOHR, abs=0.01)
        assert len(r[name]["points"]) == 4
    # the fake HF energy is the SCF energy plus a constant: same a0 and B, E0 shifted
    assert r["differences"]["da0_bohr"] == pytest.approx(0.0, abs=1e-9)
    assert r["differences"]["dbulk_modulus_gpa"] == pytest.approx(0.0, abs=1e-6)
    assert r["differences"]["de0_ha_per_atom"] == pytest.approx(FAKE_HF_OFFSET_HA, abs=1e-9)
    assert r["conventional_cell_atoms"] == 4
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert len(list((workdir / "ml").glob(f"hf_*/{MARKER_NAME}"))) == 4
    assert len(list((workdir / "scf").glob(f"scf_*/{MARKER_NAME}"))) == 4


def test_eos_json_without_reference_and_from_runs(fake_sparc, toy_model, al4_xyz, tmp_path, capsys):
    assert main(["eos", al4_xyz, "-m", toy_model, "--workdir", str(tmp_path / "a"), "--json"]) == 0
    r = _json(capsys)
    assert r["scf"] is None and "differences" not in r
    _check_eos_block(r["ml"], 4)
    assert r["strains"] == pytest.approx([-0.025, -0.0125, 0.0, 0.0125, 0.025])
    # --scf-runs: finished SPARC runs at several lattice constants as the reference (no SCF is run)
    runs = []
    for i, a in enumerate((3.95, 4.0, 4.05, 4.1)):
        d = tmp_path / "runs" / f"a{i}"
        write_scf_input(bulk("Al", "fcc", a=a, cubic=True), d, SparcSettings())
        run_sparc(d)
        runs.append(str(d))
    assert main(["eos", al4_xyz, "-m", toy_model, "--workdir", str(tmp_path / "b"), "--json",
                 "--scf-runs", *runs]) == 0
    r = _json(capsys)
    _check_eos_block(r["scf"], 4)
    assert r["scf_source"] == "scf-runs"
    assert r["differences"]["da0_bohr"] == pytest.approx(0.0, abs=2e-3)


def test_eos_minimum_outside_scan_fails(fake_sparc, toy_model, tmp_path, capsys):
    far = tmp_path / "al_far.xyz"
    bulk("Al", "fcc", a=4.15, cubic=True).write(far)  # fake minimum at 7.60 Bohr = 4.02 A, below the scan
    workdir = tmp_path / "eos"
    assert main(["eos", str(far), "-m", toy_model, "--workdir", str(workdir), "--strains", "0", "0.01", "0.02",
                 "0.03"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlrho eos: error:") and ("does not bracket" in err or "EOS fit" in err)
    assert not (workdir / REPORT).exists()


def test_warmstart_json(fake_sparc, toy_model, al4_dir, tmp_path, capsys):
    workdir = tmp_path / "w"
    assert main(["warmstart", str(al4_dir), "-m", toy_model, "--workdir", str(workdir), "--json"]) == 0
    r = _json(capsys)
    assert r["warm_iterations"] == FAKE_WARM_ITERATIONS and r["default_iterations"] == 15
    assert r["iterations_saved"] == 15 - FAKE_WARM_ITERATIONS
    assert r["warm_wall_s"] > 0 and r["default_wall_s"] > 0 and r["speedup"] > 0
    assert r["energy_difference_ha_per_atom"] == pytest.approx(0.0, abs=1e-12)
    assert r["energy_scf_reference_ha_per_atom"] == pytest.approx(-9.054013388226656 / 4, abs=1e-12)
    assert "READ_INIT_DENS: 1" in (workdir / "warm" / "SPARC.inpt").read_text()
    assert "READ_INIT_DENS" not in (workdir / "default" / "SPARC.inpt").read_text()
    assert (workdir / REPORT).is_file()


def test_warmstart_settings_for_both_sides(fake_sparc, toy_model, al4_dir, tmp_path, capsys):
    """--sparc-param reaches both runs' input files alike, and cannot be mixed with a reference default side."""
    workdir = tmp_path / "w"
    assert main(["warmstart", str(al4_dir), "-m", toy_model, "--workdir", str(workdir), "--json",
                 "--sparc-param", "NSTATES=20", "--sparc-param", "num_chefsi=2"]) == 0
    r = _json(capsys)
    assert r["sparc_params_both_sides"] == {"NSTATES": 20, "NUM_CHEFSI": 2}
    for side in ("warm", "default"):
        text = (workdir / side / "SPARC.inpt").read_text()
        assert "NSTATES: 20" in text and "NUM_CHEFSI: 2" in text, side
    assert main(["warmstart", str(al4_dir), "-m", toy_model, "--sparc-param", "NSTATES=20",
                 "--default-from-reference"]) == 2
    assert "drop --default-from-reference" in capsys.readouterr().err
    assert main(["warmstart", str(al4_dir), "-m", toy_model, "--sparc-param", "NSTATES"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_warmstart_uses_the_settings_the_model_records(fake_sparc, toy_model, al4_dir, tmp_path, capsys):
    """A model's recorded warm-start settings reach both input files; --sparc-param overrides one of the same
    name; --sparc-defaults drops them; with the default side taken from the reference run (made with SPARC's
    own settings) the warm side does not get them either; a malformed entry is one line."""
    from ase_mlrho.model_files import load_model, save_model
    from sparc_bridge.inputs import WARMSTART_METADATA_KEY

    model = load_model(toy_model)
    model.metadata[WARMSTART_METADATA_KEY] = {"sparc": {"mixing_parameter": 0.6}, "source": "test"}
    recorded = save_model(model, tmp_path / "recorded.safetensors")

    def inputs(workdir, sides=("warm", "default")):
        return [(workdir / side / "SPARC.inpt").read_text() for side in sides]

    assert main(["warmstart", str(al4_dir), "-m", str(recorded), "--workdir", str(tmp_path / "a"), "--json"]) == 0
    r = _json(capsys)
    assert r["sparc_params_both_sides"] == {"MIXING_PARAMETER": 0.6} and r["sparc_params_recorded_applied"]
    assert all("MIXING_PARAMETER: 0.6" in t for t in inputs(tmp_path / "a"))
    assert main(["warmstart", str(al4_dir), "-m", str(recorded), "--workdir", str(tmp_path / "b"), "--json",
                 "--sparc-param", "MIXING_PARAMETER=0.4", "--sparc-param", "NSTATES=20"]) == 0
    assert _json(capsys)["sparc_params_both_sides"] == {"MIXING_PARAMETER": 0.4, "NSTATES": 20}
    assert all("MIXING_PARAMETER: 0.4" in t and "NSTATES: 20" in t for t in inputs(tmp_path / "b"))
    assert main(["warmstart", str(al4_dir), "-m", str(recorded), "--workdir", str(tmp_path / "c"), "--json",
                 "--sparc-defaults"]) == 0
    r = _json(capsys)
    assert r["sparc_params_both_sides"] == {} and not r["sparc_params_recorded_applied"]
    assert r["sparc_params_recorded_by_model"] == {"MIXING_PARAMETER": 0.6}
    assert not any("MIXING_PARAMETER" in t for t in inputs(tmp_path / "c"))
    assert main(["warmstart", str(al4_dir), "-m", str(recorded), "--workdir", str(tmp_path / "d"),
                 "--default-from-reference"]) == 0
    out = capsys.readouterr().out
    assert "not applied: the default side is the reference run" in out
    assert "MIXING_PARAMETER" not in inputs(tmp_path / "d", ("warm",))[0]
    model.metadata[WARMSTART_METADATA_KEY] = {"sparc": {"MIXING_PARAMETER": [0.6]}}
    bad = save_model(model, tmp_path / "bad.safetensors")
    assert main(["warmstart", str(al4_dir), "-m", str(bad), "--workdir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warmstart_settings" in err[0]


def test_warmstart_default_side_from_the_reference_run(fake_sparc, toy_model, al4_dir, al4_xyz, tmp_path, capsys):
    """The reference run's own SCF (15 iterations, in the fixture's SPARC.out) stands for the default guess."""
    workdir = tmp_path / "w"
    assert main(["warmstart", str(al4_dir), "-m", toy_model, "--workdir", str(workdir), "--json",
                 "--default-from-reference"]) == 0
    r = _json(capsys)
    assert r["default_iterations"] == 15 and r["warm_iterations"] == FAKE_WARM_ITERATIONS
    assert r["default_side"] == "the reference run"
    assert not (workdir / "default").exists()
    assert main(["warmstart", al4_xyz, "-m", toy_model, "--default-from-reference"]) == 2
    assert "needs a SPARC run directory" in capsys.readouterr().err


# ============================================================================ with SPARC (4-atom cell)
@pytest.mark.sparc
def test_energy_end_to_end_with_sparc(sparc_command, toy_model, al4_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ASE_SPARC_COMMAND", sparc_command)
    workdir = tmp_path / "e"
    assert main(["energy", str(al4_dir), "-m", toy_model, "--workdir", str(workdir), "--json",
                 "--timeout", "300"]) == 0
    r = _json(capsys)
    assert math.isfinite(r["error_ha_per_atom"]) and math.isfinite(r["scf_error_first_iteration"])
    # a toy model trained on this very cell: its density is close, so the energy is too
    assert abs(r["error_ha_per_atom"]) < 1e-3
    assert r["energy_scf_ha_per_atom"] == pytest.approx(-2.2635033471, abs=1e-10)
    assert (workdir / "hf" / MARKER_NAME).is_file()


# ============================================================================ second-order correction plumbing
def test_energy_reports_second_order_when_the_model_has_screening(fake_sparc, toy_model, al4_dir, tmp_path, capsys):
    """A model file with a screening model: ``mlrho energy`` asks SPARC for rho_out and reports the
    corrected energy (the fake SPARC returns rho_out = rho_in, so the correction is exactly 0);
    ``--no-second-order`` and models without one report null."""
    from ase_mlrho.model_files import load_model, save_model
    from sparc_bridge.screening import ScreeningModel

    model = load_model(toy_model)
    model.metadata["hf_screening"] = ScreeningModel(12.0, 0.9, "test").to_dict()
    screened = save_model(model, tmp_path / "screened.safetensors")
    assert main(["energy", str(al4_dir), "-m", str(screened), "--workdir", str(tmp_path / "w1"), "--json"]) == 0
    rep = _json(capsys)
    assert abs(rep["second_order"]["correction_ha_per_atom"]) < 1e-20  # rho_out = rho_in up to the file's digits
    assert rep["energy_corrected_ha_per_atom"] == pytest.approx(rep["energy_hf_ha_per_atom"], abs=1e-15)
    assert rep["error_corrected_ha_per_atom"] == pytest.approx(rep["error_ha_per_atom"], abs=1e-15)
    assert "PRINT_DENSITY: 1" in (tmp_path / "w1" / "hf" / "SPARC.inpt").read_text()
    for extra, workdir in ((["--no-second-order"], "w2"), ([], "w3")):
        model_path = str(screened) if extra else toy_model
        assert main(["energy", str(al4_dir), "-m", model_path, "--workdir", str(tmp_path / workdir), "--json",
                     *extra]) == 0
        rep = _json(capsys)
        assert rep["second_order"] is None and rep["energy_corrected_ha_per_atom"] is None
        assert "PRINT_DENSITY: 0" in (tmp_path / workdir / "hf" / "SPARC.inpt").read_text()
    # the EOS scan uses the corrected energies too (here equal to the plain ones)
    assert main(["eos", str(al4_dir), "-m", str(screened), "--workdir", str(tmp_path / "e"), "--json"]) == 0
    rep = _json(capsys)
    assert rep["second_order"]["eps0"] == 12.0
    assert "PRINT_DENSITY: 1" in (tmp_path / "e" / "ml" / "hf_0000" / "SPARC.inpt").read_text()
    for point in rep["ml"]["points"]:
        assert point["energy_ha_per_atom"] == pytest.approx(point["energy_hf_ha_per_atom"], abs=1e-12)


def test_screening_command_refuses_bad_output_name(fake_sparc, toy_model, al4_dir, tmp_path, capsys):
    assert main(["screening", str(al4_dir), "-m", toy_model, "-o", str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlrho screening: error:") and ".safetensors" in err
    assert main(["screening", str(tmp_path / "nope"), "-m", toy_model, "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "is not a SPARC run directory" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
    assert main(["screening", str(al4_dir), "-m", toy_model, "-o", str(tmp_path / "no" / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not exist" in err


def test_malformed_screening_in_a_model_file_is_one_line(fake_sparc, toy_model, al4_dir, tmp_path, capsys):
    from ase_mlrho.model_files import load_model, save_model

    model = load_model(toy_model)
    model.metadata["hf_screening"] = {"eps0": 0.5}
    bad = save_model(model, tmp_path / "bad.safetensors")
    for cmd in ("energy", "eos"):
        assert main([cmd, str(al4_dir), "-m", str(bad), "--workdir", str(tmp_path / cmd)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "hf_screening" in err and "malformed" in err
