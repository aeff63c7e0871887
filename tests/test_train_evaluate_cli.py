"""`mlrho train` and `mlrho evaluate` end to end on the committed 4-atom SPARC fixture."""

import json

import numpy as np
import pytest
import torch

from ase_mlrho.cli import main
from sparc_bridge.snapshots import load_snapshot
from ase_mlrho.inference import predict_field
from ase_mlrho.model_files import load_model


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory, request):
    from tests.conftest import FIXTURES

    out = tmp_path_factory.mktemp("model") / "toy.safetensors"
    al4 = str(FIXTURES / "al4")
    rc = main(["train", al4, "--val", al4, "-o", str(out), "--m", "12", "--m-s", "2", "--k", "3",
               "--hidden", "16,16", "--epochs", "3", "--points", "3000", "--seed", "1"])
    assert rc == 0 and out.is_file()
    return out


def test_evaluate_json_matches_direct_numpy(toy_model, al4_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", "-m", str(toy_model), str(al4_dir), "--json", "--seed", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    snap = load_snapshot(al4_dir)
    model = load_model(toy_model)
    pred = predict_field(model, snap.atoms, snap.grid, seed=3)
    # direct numpy: renormalise the raw prediction, then the metric definitions of the issue
    err = pred.density - snap.density_e_per_bohr3
    assert abs(pred.density.sum() * snap.grid.dv_bohr3 - 12.0) < 1e-9
    eps = 100 * np.abs(err).sum() * snap.grid.dv_bohr3 / 12.0
    rmse = np.sqrt(np.mean(err ** 2))
    sig = np.sqrt(pred.sigma_aleatoric ** 2 + pred.sigma_epistemic ** 2)
    got = report["snapshots"][0]
    assert got["name"] == "al4"
    assert got["eps_rho_percent"] == pytest.approx(eps, rel=1e-9)
    assert got["rmse_e_per_bohr3"] == pytest.approx(rmse, rel=1e-9)
    assert got["mae_e_per_bohr3"] == pytest.approx(np.mean(np.abs(err)), rel=1e-9)
    rho = snap.density_e_per_bohr3
    assert got["nrmse_percent"] == pytest.approx(100 * rmse / (rho.max() - rho.min()), rel=1e-9)
    for k in (1, 2, 3):
        assert got[f"coverage_{k}sigma"] == pytest.approx(np.mean(np.abs(err) <= k * sig), abs=1e-12)
    assert got["sigma_epistemic_mean_e_per_bohr3"] == pytest.approx(pred.sigma_epistemic.mean(), rel=1e-9)
    assert 0 <= got["miscalibration_area"] <= 0.5
    assert report["overall"]["eps_rho_percent"] == pytest.approx(eps, rel=1e-9)


def test_evaluate_plots(toy_model, al4_dir, tmp_path, capsys):
    assert main(["evaluate", "-m", str(toy_model), str(al4_dir), "--plot", str(tmp_path / "plots")]) == 0
    assert "al4" in capsys.readouterr().out
    for name in ("al4_slice.png", "al4_reliability.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / "plots" / name).stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["al4_reliability.png", "al4_slice.png"]


def test_model_file_records_how_it_was_made(toy_model):
    meta = load_model(toy_model).metadata
    assert meta["descriptor_spec"] == {"m": 12, "m_s": 2, "k": 3, "species": ["Al"]}
    assert meta["valence_electrons"] == {"Al": 3.0} and meta["mesh_spacing_bohr"] == 0.25
    assert meta["training"]["train_snapshots"][0]["name"] == "al4"
    assert meta["training_command"].startswith("mlrho train")
    assert len(meta["weights_sha256"]) == 64
    # the DFT settings of its references, read from the fixture's SPARC.inpt / SPARC.ion
    assert meta["sparc_reference"] == {"xc": "GGA_PBE", "elec_temp_type": "Fermi-Dirac", "elec_temp_k": 631.554,
                                       "mesh_spacing_bohr": 0.25, "kpoint_length_ang": None,
                                       "kpoint_shift": [0.0, 0.0, 0.0],
                                       "pseudopotentials": {"Al": "13_Al_3_1.9_1.9_pbe_n_v1.0.psp8"}}


def test_cli_errors_are_one_clear_line(tmp_path, al4_dir, capsys):
    assert main(["evaluate", "-m", "no-such-model", str(al4_dir)]) == 2
    assert "no shipped model named" in capsys.readouterr().err
    assert main(["train", str(al4_dir), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "at least two snapshots" in capsys.readouterr().err


def test_train_an_ensemble_and_predict_with_it(tmp_path, al4_dir, capsys):
    """`--ensemble 2`: two members with seeds 1 and 2, calibrated together, used like any model."""
    out = tmp_path / "ens.safetensors"
    args = [str(al4_dir), "--val", str(al4_dir), "--m", "12", "--m-s", "2", "--k", "3", "--hidden", "16,16",
            "--epochs", "2", "--points", "2000", "--seed", "1"]
    assert main(["train", *args, "--ensemble", "2", "-o", str(out)]) == 0
    assert "(2 members)" in capsys.readouterr().out
    model = load_model(out)
    assert model.ensemble_size == 2
    assert [m["seed"] for m in model.metadata["training"]["members"]] == [1, 2]
    # member 0 is the network a plain run with seed 1 trains, bit for bit
    single = tmp_path / "one.safetensors"
    assert main(["train", *args, "-o", str(single)]) == 0
    one = load_model(single).network.state_dict()
    for k, v in model.network.members[0].state_dict().items():
        if k != "sigma_scale":
            assert torch.equal(v, one[k]), k
    snap = load_snapshot(al4_dir)
    pred = predict_field(model, snap.atoms, snap.grid, seed=0)
    assert abs(pred.density.sum() * snap.grid.dv_bohr3 - 12.0) < 1e-9
    assert np.all(pred.sigma_epistemic > 0)
    # an ensemble fine-tunes member by member (tests/test_transfer.py checks the frozen layers)
    assert main(["finetune", "-m", str(out), str(al4_dir), "--val", str(al4_dir), "--freeze", "1", "--epochs", "1",
                 "--points", "1000", "--val-points", "1000", "-o", str(tmp_path / "ft.safetensors")]) == 0
    tuned = load_model(tmp_path / "ft.safetensors")
    assert tuned.ensemble_size == 2 and tuned.metadata["lineage"][-1]["frozen_layers"] == 1


def test_train_settings_from_carries_the_material_settings(tmp_path, al4_dir, capsys):
    """`--settings-from MODEL`: the retrained file carries the earlier model's Harris-Foulkes, screening and
    warm-start settings verbatim, with a record of their source; refused for another material or other DFT
    settings (al-pbe's references are k-point sampled, the 4-atom fixture is Gamma point)."""
    out = tmp_path / "re.safetensors"
    args = [str(al4_dir), "--val", str(al4_dir), "--m", "12", "--m-s", "2", "--k", "3", "--hidden", "8",
            "--epochs", "1", "--points", "1000", "--seed", "1"]
    assert main(["train", *args, "--settings-from", "al-pbe-gamma", "-o", str(out)]) == 0
    source, meta = load_model("al-pbe-gamma").metadata, load_model(out).metadata
    assert meta["hf_settings"] == source["hf_settings"] and meta["hf_screening"] == source["hf_screening"]
    assert "warmstart_settings" not in meta  # al-pbe-gamma records none
    assert meta["settings_from"] == {"model": "al-pbe-gamma", "weights_sha256": source["weights_sha256"],
                                     "keys": ["hf_screening", "hf_settings"]}
    assert "--settings-from al-pbe-gamma" in meta["training_command"]
    capsys.readouterr()
    for other, message in (("sige-pbe", "species Si, Ge are not the training cells' Al"),
                           ("al-pbe", "k 4x4x4 shift 0.5, 13_Al")):
        assert main(["train", *args, "--settings-from", other, "-o", str(tmp_path / "x.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mlrho train: --settings-from " + other) and message in err, err
    assert not (tmp_path / "x.safetensors").exists()
