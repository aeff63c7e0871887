"""The SPARC settings a model stands for (``sparc_bridge.reference``) and the refusal of references
computed with other settings. Checked against real SPARC runs committed in the repository: Gamma-point
Al32 runs (``data/sparc``), k-point Al4 runs (``data/sparc/al_kpts/eos_al4``) and the 4-atom fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.dft.kpoints import monkhorst_pack

from ase_mlrho.cli import main
from ase_mlrho.model_files import load_model, save_model
from sparc_bridge.inputs import SparcSettings, read_input_parameters, write_scf_input
from sparc_bridge.reference import (METADATA_KEY, ReferenceMismatchError, ReferenceSettings, check_reference_run,
                                    common_reference_settings, reference_settings_of_run)

ROOT = Path(__file__).resolve().parent.parent
GAMMA_RUNS = [ROOT / "data" / "sparc" / "al_n=2_T=315_seed=11", ROOT / "data" / "sparc" / "al_n=2_T=945_seed=13"]
K_RUNS = sorted(p.parent for p in (ROOT / "data" / "sparc" / "al_kpts" / "eos_al4").glob("*/*/SPARC.out")
                if not p.parent.name.endswith((".partial", ".failed")))
K_MODEL = ReferenceSettings(mesh_spacing_bohr=0.25, kpoint_length_ang=(16.2, 16.2, 16.2),
                            kpoint_shift=(0.5, 0.5, 0.5), pseudopotentials=(("Al", "13_Al_3_1.9_1.9_pbe_n_v1.0.psp8"),))
needs_k_runs = pytest.mark.skipif(len(K_RUNS) < 2, reason="the k-point Al4 runs under data/sparc/al_kpts are missing")


def al_cubic(a=4.05, n=1):
    return bulk("Al", "fcc", a=a, cubic=True).repeat(n)


def test_kpoint_grid_per_cell_follows_the_density():
    assert K_MODEL.kpts_for(al_cubic(n=1).cell[:]) == (4, 4, 4)
    assert K_MODEL.kpts_for(al_cubic(n=2).cell[:]) == (2, 2, 2)
    assert K_MODEL.kpts_for(al_cubic(n=3).cell[:]) == (1, 1, 1)  # 16.2 / 12.15 = 1.33
    assert K_MODEL.kpts_for(al_cubic(a=3.85, n=2).cell[:]) == (2, 2, 2)  # strained cells keep the grid
    assert K_MODEL.kpts_for(al_cubic(a=4.25, n=2).cell[:]) == (2, 2, 2)
    # halves round up (no banker's rounding): 12 / 8 = 1.5 -> 2, 12 / 16 = 0.75 -> 1, 12 / 4.8 = 2.5 -> 3
    assert ReferenceSettings(kpoint_length_ang=(12.0,) * 3).kpts_for(np.diag([8.0, 16.0, 4.8])) == (2, 1, 3)
    assert ReferenceSettings().kpts_for(al_cubic(n=1).cell[:]) == (1, 1, 1)  # a Gamma-point record


def test_al4_4x4x4_is_the_al32_2x2x2_set_unfolded():
    """The reason the rule keeps N |a| fixed: the shifted 2x2x2 set of the doubled cell, unfolded with the
    doubled cell's reciprocal lattice, is the shifted 4x4x4 set of the conventional cell (fractions of the
    conventional reciprocal vectors, modulo 1)."""
    small = {tuple(np.round(np.mod(k, 1.0), 9)) for k in monkhorst_pack((4, 4, 4))}
    folded = monkhorst_pack((2, 2, 2)) / 2.0  # doubled cell: its reciprocal vectors are half as long
    unfolded = {tuple(np.round(np.mod(k + np.array(g) / 2.0, 1.0), 9)) for k in folded
                for g in np.ndindex(2, 2, 2)}
    assert unfolded == small and len(small) == 64


def test_settings_of_gamma_runs():
    s = reference_settings_of_run(GAMMA_RUNS[0])
    assert s.kpoint_length_ang is None and s.kpoint_shift == (0.0, 0.0, 0.0)
    assert s.xc == "GGA_PBE" and s.elec_temp_type == "Fermi-Dirac" and s.elec_temp_k == pytest.approx(631.554)
    assert s.mesh_spacing_bohr == 0.25
    assert dict(s.pseudopotentials) == {"Al": "13_Al_3_1.9_1.9_pbe_n_v1.0.psp8"}
    assert common_reference_settings(GAMMA_RUNS) == s


@needs_k_runs
def test_settings_of_kpoint_runs_and_mixtures_refused():
    s = reference_settings_of_run(K_RUNS[0])
    inpt = read_input_parameters(K_RUNS[0])
    edge_ang = float(np.linalg.norm(np.asarray(inpt["LATVEC"])[0])) * 0.529177210544
    assert s.kpoint_length_ang == pytest.approx((4 * edge_ang,) * 3, abs=2e-3)
    assert s.kpoint_shift == (0.5, 0.5, 0.5) and s.mesh_spacing_bohr == 0.25
    assert s.kpts_for(al_cubic(n=2).cell[:]) == (2, 2, 2)
    common_reference_settings(K_RUNS)  # several lattice constants, one k-point density: accepted
    with pytest.raises(ReferenceMismatchError) as err:
        common_reference_settings([K_RUNS[0], GAMMA_RUNS[0]])
    msg = str(err.value)
    assert "Gamma point" in msg and "k 4x4x4 shift 0.5" not in msg.split(";")[1] and "\n" not in msg


def test_check_reference_run_names_both_settings():
    check_reference_run(ReferenceSettings(), GAMMA_RUNS[0])  # Gamma model, Gamma run: fine
    with pytest.raises(ReferenceMismatchError) as err:
        check_reference_run(K_MODEL, GAMMA_RUNS[0], "model 'al-k'")
    msg = str(err.value)
    assert "Gamma point" in msg and "k 2x2x2 shift 0.5" in msg and "model 'al-k'" in msg
    with pytest.raises(ReferenceMismatchError, match="mesh 0.3 Bohr"):
        check_reference_run(ReferenceSettings(mesh_spacing_bohr=0.3), GAMMA_RUNS[0])
    with pytest.raises(ReferenceMismatchError, match="LDA_PW"):
        check_reference_run(ReferenceSettings(xc="lda"), GAMMA_RUNS[0])


def test_fd_grid_runs_match_by_their_grid(tmp_path):
    """A run given only FD_GRID (as the bridge writes them) matches the mesh whose grid it is."""
    d = tmp_path / "run"
    write_scf_input(al_cubic(), d, SparcSettings())  # 0.25 Bohr -> FD_GRID 31 31 31
    s = reference_settings_of_run(d)
    assert math.isnan(s.mesh_spacing_bohr)
    check_reference_run(ReferenceSettings(mesh_spacing_bohr=0.25), d)
    with pytest.raises(ReferenceMismatchError):
        check_reference_run(ReferenceSettings(mesh_spacing_bohr=0.2), d)


def test_sparc_settings_write_the_grid_and_shift(tmp_path):
    settings = K_MODEL.sparc_settings(al_cubic(n=2))
    assert settings.kpts == (2, 2, 2) and settings.xc == "pbe" and settings.mesh_spacing_bohr == 0.25
    write_scf_input(al_cubic(n=2), tmp_path, settings)
    params = read_input_parameters(tmp_path)
    assert list(params["KPOINT_GRID"]) == [2, 2, 2]
    assert list(params["KPOINT_SHIFT"]) == [0.5, 0.5, 0.5]
    assert "KPOINT_SHIFT" not in dict(K_MODEL.sparc_settings(al_cubic(n=3)).extra)  # Gamma: no shift
    # the written run reads back as the same settings
    assert reference_settings_of_run(tmp_path).kpts_for(al_cubic(n=2).cell[:]) == (2, 2, 2)
    check_reference_run(K_MODEL, tmp_path)


def test_round_trip_and_malformed_entry():
    assert ReferenceSettings.from_dict(json.loads(json.dumps(K_MODEL.to_dict()))) == K_MODEL
    assert ReferenceSettings.from_metadata({}) is None
    with pytest.raises(ValueError, match=METADATA_KEY):
        ReferenceSettings.from_metadata({METADATA_KEY: {"xc": "GGA_PBE"}})
    with pytest.raises(ValueError):
        ReferenceSettings(kpoint_length_ang=(1.0, -2.0, 3.0))


def test_energy_refuses_a_reference_computed_otherwise(tmp_path, capsys, monkeypatch):
    """A k-point model given a Gamma-point reference run: one line naming both settings, exit 2, before
    any prediction (SPARC is never started: the command is a file that does not exist)."""
    monkeypatch.setenv("ASE_SPARC_COMMAND", str(tmp_path / "no-such-sparc"))
    model = load_model("al-pbe")
    model.metadata[METADATA_KEY] = K_MODEL.to_dict()
    path = save_model(model, tmp_path / "al-k.safetensors")
    rc = main(["energy", str(GAMMA_RUNS[0]), "-m", str(path), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "Gamma point" in err and "k 2x2x2 shift 0.5" in err
    assert not (tmp_path / "w").exists()


def test_energy_and_eos_run_sparc_with_the_models_kpoints(tmp_path, capsys, monkeypatch):
    """A k-point model's Harris-Foulkes runs get the k-point grid of their own cell (4-atom cell: 4x4x4, shift
    0.5), through `mlrho energy` and every strain of `mlrho eos` (a fake SPARC answers; see test_bridge_cli)."""
    from tests.test_bridge_cli import _FAKE_SPARC, FAKE_A_MIN_BOHR, FAKE_HF_OFFSET_HA, FAKE_WARM_ITERATIONS, FIXTURES
    import stat
    import sys

    exe = tmp_path / "fake_sparc.py"
    exe.write_text(_FAKE_SPARC.format(python=sys.executable, fixtures=str(FIXTURES), a_min=FAKE_A_MIN_BOHR,
                                      hf_offset=FAKE_HF_OFFSET_HA, warm_iterations=FAKE_WARM_ITERATIONS))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("ASE_SPARC_COMMAND", str(exe))
    model = load_model("al-pbe-gamma")
    model.metadata[METADATA_KEY] = K_MODEL.to_dict()
    path = save_model(model, tmp_path / "al-k.safetensors")
    xyz = tmp_path / "al4.xyz"
    al_cubic().write(xyz)
    assert main(["energy", str(xyz), "-m", str(path), "--workdir", str(tmp_path / "e"), "--json",
                 "--no-second-order"]) == 0
    assert main(["eos", str(xyz), "-m", str(path), "--workdir", str(tmp_path / "s"), "--json",
                 "--no-second-order"]) == 0
    capsys.readouterr()
    runs = [tmp_path / "e" / "hf"] + sorted((tmp_path / "s" / "ml").glob("hf_*"))
    assert len(runs) == 6
    for run in runs:
        params = read_input_parameters(run)
        assert list(params["KPOINT_GRID"]) == [4, 4, 4], run
        assert list(params["KPOINT_SHIFT"]) == [0.5, 0.5, 0.5], run


@needs_k_runs
def test_train_refuses_references_computed_two_ways(tmp_path, capsys):
    """A model must not learn two definitions of the density: Gamma-point and k-point runs together are refused
    before any training, with one line naming both settings."""
    rc = main(["train", str(GAMMA_RUNS[0]), str(K_RUNS[0]), "-o", str(tmp_path / "mixed.safetensors")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "different settings" in err and "Gamma point" in err and "k 4x4x4 shift 0.5" in err
    assert not (tmp_path / "mixed.safetensors").exists()
