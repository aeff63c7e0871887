"""Tests of the SPARC bridge: inputs, runs, Harris-Foulkes energies, EOS fits.

Everything except the tests marked ``sparc`` runs without SPARC: parsing uses committed fixtures,
failures use fake executables (small shell scripts), EOS scans use ASE's EMT potential.
"""

from __future__ import annotations

import json
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.units import Bohr, Hartree

from sparc_bridge.snapshots import load_snapshot
from ase_mlrho.grid import Grid
from sparc_bridge.eos import EOSFitError, compare_eos, eos_from_runs, eos_scan, fit_eos, plot_eos
from sparc_bridge.harris_foulkes import (
    GridMismatchError,
    HarrisFoulkesCalculator,
    harris_foulkes_energy,
    prepare_density,
    warm_start_comparison,
    write_input_density,
)
from sparc_bridge.inputs import (
    DEFAULT_RHO_TRIGGER,
    DENSITY_INPUT_NAME,
    HarrisFoulkesSettings,
    SparcSettings,
    UnknownSparcParameterError,
    read_input_parameters,
    write_harris_foulkes_input,
    write_input_set,
    write_scf_input,
    write_warm_start_input,
)
from sparc_bridge.run import MARKER_NAME, SparcNotFoundError, SparcRunError, parse_run, resolve_command, run_sparc

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def al4_hf_dir():
    return FIXTURES / "al4_hf_rt4"


@pytest.fixture
def al4_atoms():
    return bulk("Al", "fcc", a=4.05, cubic=True)


# ============================================================================ parsing fixtures
def test_parse_scf_fixture(al4_dir):
    r = parse_run(al4_dir)
    # SPARC.static: "Total free energy (Ha): -9.054013388226656E+00"
    assert r.energy_source == "SPARC.static"
    assert r.free_energy_ha == pytest.approx(-9.054013388226656, abs=1e-13)
    assert r.free_energy_per_atom_ha == pytest.approx(-9.054013388226656 / 4, abs=1e-13)
    # SPARC.out: same total to 10 digits, "Free energy per atom : -2.2635033471E+00"
    assert r.free_energy_per_atom_ha == pytest.approx(-2.2635033471, abs=1e-10)
    assert r.natoms == 4
    assert r.n_scf_iterations == 15
    assert len(r.scf_errors) == 15 and len(r.scf_energies_per_atom_ha) == 15
    # iteration table in Ha/atom (sparc-x-api's column is eV/atom despite its name)
    assert r.scf_energies_per_atom_ha[0] == pytest.approx(-2.2587472310, abs=1e-12)
    assert r.scf_energies_per_atom_ha[-1] == pytest.approx(-2.2635033471, abs=1e-12)
    assert r.first_scf_error == pytest.approx(1.648e-01, rel=1e-12)
    assert r.scf_errors[-1] == pytest.approx(6.007e-07, rel=1e-12)
    assert r.scf_converged
    assert r.sparc_walltime_s == pytest.approx(4.071)
    assert r.fd_grid == (31, 31, 31)


def test_parse_single_shot_fixture(al4_hf_dir):
    r = parse_run(al4_hf_dir)
    assert r.free_energy_ha == pytest.approx(-9.035973737442621, abs=1e-13)
    assert r.free_energy_per_atom_ha == pytest.approx(-2.2589934344, abs=1e-10)
    assert r.n_scf_iterations == 1
    assert r.scf_energies_per_atom_ha == pytest.approx((-2.2589934344,), abs=1e-12)
    assert r.first_scf_error == pytest.approx(1.487e-01, rel=1e-12)
    assert not r.scf_converged  # "WARNING: SCF#1 did not converge to desired accuracy!"


# ============================================================================ input sets
def test_scf_input_round_trip(tmp_path, al4_atoms):
    settings = SparcSettings()
    s = write_scf_input(al4_atoms, tmp_path, settings)
    p = read_input_parameters(tmp_path)
    assert p["FD_GRID"] == list(Grid.from_atoms(al4_atoms, 0.25).intervals) == [31, 31, 31]
    assert s.grid.shape == (31, 31, 31)
    assert np.allclose(p["LATVEC"], np.asarray(al4_atoms.cell) / Bohr, atol=1e-12)
    assert p["EXCHANGE_CORRELATION"] == "GGA_PBE"
    assert p["ELEC_TEMP_TYPE"] == "Fermi-Dirac" and p["ELEC_TEMP"] == pytest.approx(631.554)
    assert p["KPOINT_GRID"] == [1, 1, 1]
    assert p["TOL_SCF"] == pytest.approx(1e-6)
    assert p["PRINT_DENSITY"] and "READ_INIT_DENS" not in p and "MESH_SPACING" not in p
    assert (tmp_path / "SPARC.ion").is_file()


def test_harris_foulkes_input_round_trip(tmp_path, al4_atoms):
    write_harris_foulkes_input(al4_atoms, tmp_path, hf=HarrisFoulkesSettings(rho_trigger=17, cheb_degree=45))
    p = read_input_parameters(tmp_path)
    assert p["READ_INIT_DENS"] and p["INPUT_DENS_FILE"] == DENSITY_INPUT_NAME
    assert p["MAXIT_SCF"] == 1 and p["RHO_TRIGGER"] == 17 and p["CHEB_DEGREE"] == 45
    assert p["FIX_RAND"] and p["MIXING_VARIABLE"] == "density"
    assert p["FD_GRID"] == [31, 31, 31]
    write_harris_foulkes_input(al4_atoms, tmp_path / "d")
    p = read_input_parameters(tmp_path / "d")
    assert p["RHO_TRIGGER"] == DEFAULT_RHO_TRIGGER and "CHEB_DEGREE" not in p


def test_harris_foulkes_states_follow_the_electron_count(tmp_path, al4_atoms):
    """NSTATES = floor(f N_e / 2) + 5 (SPARC's rule, its factor 1.2 replaced); an explicit NSTATES wins."""
    hf = HarrisFoulkesSettings(states_factor=2.0)
    assert hf.nstates(96) == 101 and hf.nstates(12) == 17
    assert HarrisFoulkesSettings(states_factor=None).nstates(96) is None
    with pytest.raises(ValueError, match="states_factor"):
        HarrisFoulkesSettings(states_factor=0.9)
    write_harris_foulkes_input(al4_atoms, tmp_path, hf=hf, n_electrons=12)
    assert read_input_parameters(tmp_path)["NSTATES"] == 17
    explicit = SparcSettings(extra=(("NSTATES", 30),))
    write_harris_foulkes_input(al4_atoms, tmp_path / "x", explicit, hf=hf, n_electrons=12)
    assert read_input_parameters(tmp_path / "x")["NSTATES"] == 30


def test_warm_start_input_round_trip(tmp_path, al4_atoms):
    write_warm_start_input(al4_atoms, tmp_path)
    p = read_input_parameters(tmp_path)
    assert p["READ_INIT_DENS"] and p["INPUT_DENS_FILE"] == DENSITY_INPUT_NAME
    assert p["MAXIT_SCF"] == 100 and p["RHO_TRIGGER"] == DEFAULT_RHO_TRIGGER
    write_warm_start_input(al4_atoms, tmp_path / "plain", rho_trigger=None)
    assert "RHO_TRIGGER" not in read_input_parameters(tmp_path / "plain")


def test_unknown_parameter_raises_not_warns(tmp_path, al4_atoms):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnknownSparcParameterError, match="RHO_TRIGER"):
            write_input_set(al4_atoms, tmp_path, {"RHO_TRIGER": 3})
        with pytest.raises(KeyError):
            write_scf_input(al4_atoms, tmp_path, SparcSettings(extra=(("MAXIT_SCFF", 3),)))
    with pytest.raises(ValueError):
        write_input_set(al4_atoms, tmp_path, {"MAXIT_SCF": "many"})


# ============================================================================ density file, SPARC's reader rules
def _sparc_read_cube(data: bytes):
    """Emulation of SPARC's readDens_cube (fscanf token rules, SPARC_NOTES Q1) on raw bytes."""
    text = data.decode("ascii")
    first_nl = text.index("\n")
    assert first_nl > 0, "line 1 must be non-empty (%*[^\\n]\\n)"
    pos = first_nl + 1
    tokens_iter = re.finditer(r"\S+", text[pos:])

    def tok():
        return next(tokens_iter)

    tok(), tok(), float(tok().group())  # %s %s %lf
    m = tok()
    # rest of line 2 skipped: next token must be on the next line
    nl_end = text.index("\n", pos + m.end()) + 1
    tokens_iter = re.finditer(r"\S+", text[nl_end:])
    natoms = int(tok().group())
    line3_end = text.index("\n", nl_end) + 1  # rest of line 3 skipped
    rest = text[line3_end:]
    values = rest.split()
    counts, voxels = [], []
    for d in range(3):
        counts.append(int(values[4 * d]))
        voxels.append([float(x) for x in values[4 * d + 1:4 * d + 4]])
    i = 12 + 5 * natoms
    n = counts[0] * counts[1] * counts[2]
    dens = np.array(values[i:i + n], dtype=float)
    assert len(values) == i + n, "nothing may follow the data block"
    return natoms, np.array(counts), np.array(voxels), dens.reshape(counts)


def test_density_file_accepted_by_sparc_reader(tmp_path, al4_dir, al4_atoms):
    snap = load_snapshot(al4_dir)
    prepared = prepare_density(snap.density_e_per_bohr3, snap.grid, 12.0)
    path = write_input_density(tmp_path / DENSITY_INPUT_NAME, snap.atoms, prepared.density_e_per_bohr3, snap.grid)
    write_harris_foulkes_input(snap.atoms, tmp_path)
    p = read_input_parameters(tmp_path)
    natoms, counts, voxel, rho = _sparc_read_cube(path.read_bytes())
    assert natoms == 4
    assert counts.tolist() == p["FD_GRID"]  # periodic: nodes == intervals
    latvec = np.asarray(p["LATVEC"]) * np.asarray(p["LATVEC_SCALE"])[:, None]
    assert np.max(np.linalg.norm(counts[:, None] * voxel - latvec, axis=1)) < 1e-10  # SPARC allows 1e-4
    assert np.allclose(rho, prepared.density_e_per_bohr3, rtol=1e-10, atol=0)
    assert rho.sum() * snap.grid.dv_bohr3 == pytest.approx(12.0, abs=1e-8)


def test_prepare_density_clips_and_renormalises():
    grid = Grid(np.eye(3) * 4.0, (4, 4, 4))
    rho = np.full(grid.shape, 0.1)
    rho[0, 0, 0] = -0.64  # -0.64 * dV(=1) electrons
    p = prepare_density(rho, grid, 3.0)
    assert p.electrons_before == pytest.approx(63 * 0.1 - 0.64)
    assert p.negative_charge == pytest.approx(0.64)
    assert p.density_e_per_bohr3.min() == 0.0
    assert grid.integrate(p.density_e_per_bohr3) == pytest.approx(3.0, abs=1e-14)
    assert p.scale == pytest.approx(3.0 / 6.3)


def test_density_grid_must_match_cell(tmp_path, al4_dir):
    snap = load_snapshot(al4_dir)
    bad = Grid.from_atoms(snap.atoms, 0.3)  # 26^3, not SPARC's 31^3 at 0.25 Bohr
    with pytest.raises(GridMismatchError, match=r"\(26, 26, 26\).*\(31, 31, 31\)"):
        harris_foulkes_energy(snap.atoms, np.ones(bad.shape), bad, SparcSettings(), tmp_path, command="true")
    other_cell = Grid(snap.grid.cell_bohr * 1.01, snap.grid.shape)
    with pytest.raises(GridMismatchError, match="another cell"):
        harris_foulkes_energy(snap.atoms, snap.density_e_per_bohr3, other_cell, SparcSettings(), tmp_path,
                              command="true")
    with pytest.raises(GridMismatchError, match="density shape"):
        harris_foulkes_energy(snap.atoms, snap.density_e_per_bohr3[:-1], snap.grid, SparcSettings(), tmp_path,
                              command="true")
    assert not (tmp_path / "SPARC.inpt").exists()


# ============================================================================ running: errors with fake executables
def _fake_sparc(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "fake_sparc.sh"
    exe.write_text("#!/bin/bash\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def test_missing_sparc_is_one_clear_error(tmp_path, monkeypatch, al4_atoms):
    monkeypatch.delenv("ASE_SPARC_COMMAND", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SparcNotFoundError, match="ASE_SPARC_COMMAND"):
        resolve_command()
    write_scf_input(al4_atoms, tmp_path)
    with pytest.raises(SparcNotFoundError, match=r"export ASE_SPARC_COMMAND=.*mpirun"):
        run_sparc(tmp_path)
    with pytest.raises(SparcNotFoundError, match="-name"):
        resolve_command("mpirun -np 2 sparc -name SPARC")


def test_sparc_nonzero_exit_reports_fatal_message(tmp_path, al4_atoms):
    run_dir = tmp_path / "run"
    write_scf_input(al4_atoms, run_dir)
    cmd = _fake_sparc(tmp_path, 'echo "[FATAL] Density file names not provided properly!"; exit 1')
    with pytest.raises(SparcRunError, match=r"exit status 1.*\[FATAL\] Density file names not provided properly"):
        run_sparc(run_dir, command=cmd)
    assert not (run_dir / MARKER_NAME).exists()


def test_sparc_fatal_with_zero_exit_is_a_failure(tmp_path, al4_atoms, al4_dir):
    run_dir = tmp_path / "run"
    write_scf_input(al4_atoms, run_dir)
    cmd = _fake_sparc(tmp_path, f'cp {al4_dir}/SPARC.out {al4_dir}/SPARC.static . ; '
                                'echo "[FATAL] Incorrect CUBE file (input_density.cube): inconsistent grid sizes!"')
    with pytest.raises(SparcRunError, match="inconsistent grid sizes"):
        run_sparc(run_dir, command=cmd)
    assert not (run_dir / MARKER_NAME).exists()


def test_unfinished_and_missing_outputs_are_failures(tmp_path, al4_atoms, al4_dir):
    run_dir = tmp_path / "run"
    write_scf_input(al4_atoms, run_dir)
    cmd = _fake_sparc(tmp_path, f"head -n 90 {al4_dir}/SPARC.out > SPARC.out")
    with pytest.raises(SparcRunError, match="unfinished"):
        run_sparc(run_dir, command=cmd)
    cmd = _fake_sparc(tmp_path, "echo nothing")
    with pytest.raises(SparcRunError, match="wrote no SPARC.out"):
        run_sparc(run_dir, command=cmd)
    assert not (run_dir / MARKER_NAME).exists()


def test_timeout_kills_and_fails(tmp_path, al4_atoms):
    write_scf_input(al4_atoms, tmp_path)
    cmd = _fake_sparc(tmp_path, "sleep 30")
    with pytest.raises(SparcRunError, match="did not finish within 0.5 s"):
        run_sparc(tmp_path, command=cmd, timeout_s=0.5)
    assert not (tmp_path / MARKER_NAME).exists()


def test_successful_fake_run_writes_marker_and_cleans_old_outputs(tmp_path, al4_atoms, al4_dir):
    run_dir = tmp_path / "run"
    write_scf_input(al4_atoms, run_dir)
    (run_dir / "SPARC.out").write_text("stale")
    (run_dir / MARKER_NAME).write_text("{}")
    cmd = _fake_sparc(tmp_path, f'test "$1 $2" = "-name SPARC" || exit 3; test -e SPARC.out && exit 4; '
                                f"cp {al4_dir}/SPARC.out {al4_dir}/SPARC.static .")
    r = run_sparc(run_dir, command=cmd)
    assert r.free_energy_ha == pytest.approx(-9.054013388226656, abs=1e-13)
    assert r.wall_time_s is not None and r.wall_time_s > 0
    marker = json.loads((run_dir / MARKER_NAME).read_text())
    assert marker["free_energy_ha"] == r.free_energy_ha and marker["n_scf_iterations"] == 15


def test_calculator_with_fake_sparc(tmp_path, al4_dir, al4_hf_dir, monkeypatch):
    """The calculator plumbing (provider -> density file -> run -> eV) without SPARC."""
    snap = load_snapshot(al4_dir)
    cmd = _fake_sparc(tmp_path, f"test -s {DENSITY_INPUT_NAME} || exit 5; "
                                f"cp {al4_hf_dir}/SPARC.out {al4_hf_dir}/SPARC.static .")
    monkeypatch.setenv("ASE_SPARC_COMMAND", cmd)
    calls = []

    def provider(atoms):
        calls.append(len(atoms))
        return snap.grid, snap.density_e_per_bohr3, {"sigma_total_e": 0.01}

    calc = HarrisFoulkesCalculator(provider, directory=tmp_path / "hf")
    atoms = snap.atoms.copy()
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(-9.035973737442621 * Hartree, abs=1e-10)
    assert calc.get_property("free_energy", atoms) == pytest.approx(-9.035973737442621 * Hartree, abs=1e-10)
    assert calls == [4]
    assert calc.last_uncertainty == {"sigma_total_e": 0.01}
    assert calc.last_result.first_scf_error == pytest.approx(0.1487)
    assert (tmp_path / "hf" / "hf_0000" / MARKER_NAME).is_file()


# ============================================================================ EOS
def test_eos_scan_emt_supercell_invariant_a0():
    r1 = eos_scan(bulk("Al", "fcc", a=4.05, cubic=True), EMT(), crystal="fcc")
    r2 = eos_scan(bulk("Al", "fcc", a=4.05, cubic=True).repeat(2), EMT(), crystal="fcc")
    assert len(r1.volumes_ang3) == 5
    assert r1.volumes_ang3[0] == pytest.approx((4.05 * 0.975) ** 3)
    assert r1.a0_ang == pytest.approx(3.99417, abs=1e-4)  # ASE EMT aluminium
    assert r1.b_gpa == pytest.approx(39.66, abs=0.05)
    assert r1.a0_bohr == pytest.approx(r1.a0_ang / Bohr)
    assert r2.a0_ang == pytest.approx(r1.a0_ang, abs=1e-9) and r2.b_gpa == pytest.approx(r1.b_gpa, rel=1e-8)


def test_eos_minimum_outside_scan_raises():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(EOSFitError, match="does not bracket"):
            eos_scan(bulk("Al", "fcc", a=3.7, cubic=True), EMT(), crystal="fcc")
    with pytest.raises(EOSFitError, match="at least 4"):
        fit_eos([1, 2, 3], [0, -1, 0], 1)


def test_compare_eos_table_and_plot(tmp_path):
    atoms = bulk("Al", "fcc", a=4.0, cubic=True)
    cmp = compare_eos(atoms, {"EMT": EMT(), "EMT again": EMT()}, crystal="fcc")
    table = cmp.table()
    assert "| a0 (A) | 3.9943 | 3.9943 | +0.00e+00 |" in table
    assert cmp.differences()["EMT again"]["dB_gpa"] == pytest.approx(0.0, abs=1e-9)
    path = plot_eos(cmp.results, tmp_path / "eos.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eos_from_shared_scf_runs(shared_sparc):
    runs = sorted(shared_sparc.glob("al_n=2_T=0_a=*"))
    if len(runs) < 5:
        pytest.skip("the five Al32 EOS reference runs are not in the shared data")
    r = eos_from_runs(runs, crystal="fcc")
    # PBE, Gamma point only, 32 atoms: a0 = 3.9966 A = 7.5526 Bohr, B = 105.7 GPa (Birch-Murnaghan)
    assert r.a0_ang == pytest.approx(3.9966, abs=2e-4)
    assert r.a0_bohr == pytest.approx(7.5526, abs=4e-4)
    assert r.b_gpa == pytest.approx(105.7, abs=0.5)
    assert r.natoms == 32


# ============================================================================ with SPARC (4-atom cell)
@pytest.mark.sparc
def test_hf_of_converged_density_equals_scf_energy(sparc_command, al4_dir, tmp_path):
    snap = load_snapshot(al4_dir)
    r = harris_foulkes_energy(snap.atoms, snap.density_e_per_bohr3, snap.grid, SparcSettings(), tmp_path,
                              command=sparc_command, timeout_s=120)
    e_scf = snap.free_energy_ha / snap.natoms
    assert abs(r.energy_per_atom_ha - e_scf) < 1e-6
    assert r.first_scf_error < 1e-4
    assert r.run.n_scf_iterations == 1
    assert (tmp_path / MARKER_NAME).is_file()


@pytest.mark.sparc
def test_hf_calculator_with_sparc_density_provider(sparc_command, al4_dir, tmp_path):
    snap = load_snapshot(al4_dir)
    calc = HarrisFoulkesCalculator(lambda atoms: (snap.grid, snap.density_e_per_bohr3, {}),
                                   directory=tmp_path, command=sparc_command, timeout_s=120)
    atoms = snap.atoms.copy()
    atoms.calc = calc
    e_ev = atoms.get_potential_energy()
    assert abs(e_ev / Hartree / 4 - snap.free_energy_ha / 4) < 1e-6


@pytest.mark.sparc
def test_sparc_rejects_density_on_wrong_grid(sparc_command, al4_dir, tmp_path):
    """Bypassing the Python check, SPARC's own fatal message comes back as the error."""
    snap = load_snapshot(al4_dir)
    write_harris_foulkes_input(snap.atoms, tmp_path)
    wrong = Grid.from_atoms(snap.atoms, 0.3)
    write_input_density(tmp_path / DENSITY_INPUT_NAME, snap.atoms, np.full(wrong.shape, 0.0268), wrong)
    with pytest.raises(SparcRunError, match=r"\[FATAL\].*(inconsistent|grid)"):
        run_sparc(tmp_path, command=sparc_command, timeout_s=60)
    assert not (tmp_path / MARKER_NAME).exists()


@pytest.mark.sparc
def test_warm_start_needs_fewer_iterations(sparc_command, al4_dir, tmp_path):
    snap = load_snapshot(al4_dir)
    cmp = warm_start_comparison(snap.atoms, snap.density_e_per_bohr3, snap.grid, SparcSettings(), tmp_path,
                                command=sparc_command, timeout_s=120)
    warm, default = cmp.iterations
    assert warm < default
    assert cmp.warm.free_energy_per_atom_ha == pytest.approx(cmp.default.free_energy_per_atom_ha, abs=1e-5)
    assert all(t > 0 for t in cmp.wall_s)


def test_cleaning_keeps_the_input_density(tmp_path, al4_atoms, al4_dir):
    """Old outputs are removed before a run, except the density file the run is told to read."""
    write_harris_foulkes_input(al4_atoms, tmp_path, density_file="SPARC.dens")
    (tmp_path / "SPARC.dens").write_text("old converged density")
    (tmp_path / "SPARC.dens_01").write_text("older output")
    cmd = _fake_sparc(tmp_path, f"cp {al4_dir}/SPARC.out {al4_dir}/SPARC.static .")
    run_sparc(tmp_path, command=cmd)
    assert (tmp_path / "SPARC.dens").read_text() == "old converged density"
    assert not (tmp_path / "SPARC.dens_01").exists()


def test_harris_foulkes_settings_from_the_model_file():
    """A model records its material's measured eigensolver settings; --rho-trigger overrides the passes."""
    from sparc_bridge.inputs import HF_METADATA_KEY

    meta = {HF_METADATA_KEY: {"rho_trigger": 10, "states_factor": 2.0, "source": "test"}}
    hf = HarrisFoulkesSettings.for_model(meta)
    assert (hf.rho_trigger, hf.states_factor, hf.nstates(96)) == (10, 2.0, 101)
    assert HarrisFoulkesSettings.for_model(meta, rho_trigger=14).rho_trigger == 14
    assert HarrisFoulkesSettings.for_model({}) == HarrisFoulkesSettings()
    for bad in ({HF_METADATA_KEY: "fast"}, {HF_METADATA_KEY: {"rho_trigger": 0}},
                {HF_METADATA_KEY: {"states_factor": 0.5}}):
        with pytest.raises(ValueError, match=HF_METADATA_KEY):
            HarrisFoulkesSettings.for_model(bad)
