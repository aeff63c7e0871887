"""Transfer learning (ase_mlrho.transfer, `mlrho finetune`) and descriptor-distribution comparison."""

import json
import shutil

import numpy as np
import pytest
import torch

from ase_mlrho.cli import main
from sparc_bridge.snapshots import load_snapshot
from ase_mlrho.descriptors import DescriptorSpec
from ase_mlrho.inference import predict_field
from ase_mlrho.model import NetworkConfig
from ase_mlrho.model_files import load_model, save_model
from ase_mlrho.training import TrainingConfig, scratch_training, train_model
from ase_mlrho.transfer import (compare_descriptor_distributions, finetune_model, freeze_layers,
                                jensen_shannon_per_feature, mmd2_rbf, plot_descriptor_histograms)

TINY = TrainingConfig(points_per_snapshot=3000, val_points_per_snapshot=2000, epochs=3, batch_size=512, seed=1)


@pytest.fixture(scope="module")
def base_model_path(tmp_path_factory):
    from tests.conftest import FIXTURES

    snap = load_snapshot(FIXTURES / "al4")
    spec = DescriptorSpec(m=12, m_s=2, k=3, species=("Al",))
    model = train_model([snap], [snap], spec, NetworkConfig(hidden=(16, 16)), TINY, name="toy-base", progress=False)
    path = tmp_path_factory.mktemp("base") / "toy-base.safetensors"
    save_model(model, path)
    return path


def _state(network):
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def test_frozen_layers_unchanged_bit_for_bit_and_rest_trained(base_model_path, al4_dir):
    base = load_model(base_model_path)
    before = _state(base.network)
    snap = load_snapshot(al4_dir)
    cfg = TrainingConfig(points_per_snapshot=3000, val_points_per_snapshot=2000, epochs=4, batch_size=512,
                         learning_rate=1e-2, seed=5)
    tuned = finetune_model(base, [snap], [snap], n_frozen=2, config=cfg, name="toy-ft", base_path=base_model_path,
                           progress=False)
    after = _state(tuned.network)
    assert all(torch.equal(before[k], v) for k, v in _state(base.network).items())  # base left alone
    for i in range(3):
        for p in ("weight_mu", "bias_mu", "weight_rho", "bias_rho"):
            key = f"layers.{i}.{p}"
            if i < 2:
                assert torch.equal(before[key], after[key]), key  # bit for bit
    assert not torch.equal(before["layers.2.weight_mu"], after["layers.2.weight_mu"])  # the head was trained
    # the base model's scalers and baseline are kept
    for key in ("x_mean", "x_std", "y_mean", "y_std", "baseline.table"):
        assert torch.equal(before[key], after[key]), key
    # calibration: same method, factor re-fitted on the fine-tuning validation snapshots
    cal = tuned.metadata["calibration"]
    assert cal["method"] == base.metadata["calibration"]["method"]
    assert float(tuned.network.sigma_scale) == cal["sigma_scale"] > 0
    assert cal["base_sigma_scale"] == float(before["sigma_scale"])


def test_lineage_recorded_and_model_loads_and_predicts(base_model_path, al4_dir, tmp_path, capsys):
    out = tmp_path / "ft.safetensors"
    rc = main(["finetune", "-m", str(base_model_path), str(al4_dir), "--val", str(al4_dir), "-o", str(out),
               "--freeze", "1", "--epochs", "2", "--points", "2000", "--val-points", "1000", "--seed", "3", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frozen_layers"] == 1 and summary["base_model"] == "toy-base"
    base = load_model(base_model_path)
    model = load_model(out)
    (entry,) = model.metadata["lineage"]
    assert entry["operation"] == "finetune" and entry["base_model"] == "toy-base"
    assert entry["base_weights_sha256"] == base.metadata["weights_sha256"]
    import hashlib
    assert entry["base_file_sha256"] == hashlib.sha256(base_model_path.read_bytes()).hexdigest()
    assert entry["frozen_layers"] == 1 and entry["n_layers"] == 3
    assert entry["frozen_parameters"] == ["layers.0.weight_mu", "layers.0.bias_mu", "layers.0.weight_rho",
                                          "layers.0.bias_rho"]
    assert [s["name"] for s in entry["finetune_snapshots"]] == ["al4"]
    assert entry["base_training_snapshots"] == ["al4"]
    assert model.metadata["training_command"].startswith("mlrho finetune")
    assert model.metadata["descriptor_spec"] == base.metadata["descriptor_spec"]
    assert torch.equal(model.network.layers[0].weight_mu, base.network.layers[0].weight_mu)
    snap = load_snapshot(al4_dir)
    pred = predict_field(model, snap.atoms, snap.grid, seed=0)
    assert np.all(np.isfinite(pred.density)) and abs(pred.density.sum() * snap.grid.dv_bohr3 - 12.0) < 1e-9
    assert np.all(pred.sigma_epistemic >= 0)
    # a second generation appends to the lineage
    out2 = tmp_path / "ft2.safetensors"
    assert main(["finetune", "-m", str(out), str(al4_dir), "--val", str(al4_dir), "-o", str(out2), "--freeze", "2",
                 "--epochs", "1", "--points", "1000", "--val-points", "1000"]) == 0
    meta2 = load_model(out2).metadata
    assert [e["base_model"] for e in meta2["lineage"]] == ["toy-base", "ft"]
    assert meta2["lineage"][1]["base_training_command"] == model.metadata["training_command"]
    # the recipe a retrain from scratch uses is the base's (3 epochs), not a fine-tuning schedule (2, then 1)
    assert meta2["training"]["config"]["epochs"] == 1
    assert scratch_training(meta2) == scratch_training(model.metadata) == base.metadata["training"]
    assert scratch_training(meta2)["config"]["epochs"] == TINY.epochs == 3


def test_finetune_settings_from_carries_the_material_settings(base_model_path, al4_dir, tmp_path, capsys):
    """`mlrho finetune --settings-from MODEL` carries MODEL's Harris-Foulkes, screening and warm-start settings
    verbatim (as `mlrho train --settings-from` does); without it the fine-tuned file has none; refused, writing
    nothing, for a model of another material."""
    args = ["finetune", "-m", str(base_model_path), str(al4_dir), "--val", str(al4_dir), "--freeze", "1",
            "--epochs", "1", "--points", "1000", "--val-points", "1000"]
    out = tmp_path / "ft.safetensors"
    assert main([*args, "--settings-from", "al-pbe-gamma", "-o", str(out)]) == 0
    source, meta = load_model("al-pbe-gamma").metadata, load_model(out).metadata
    assert meta["hf_settings"] == source["hf_settings"] and meta["hf_screening"] == source["hf_screening"]
    assert meta["settings_from"] == {"model": "al-pbe-gamma", "weights_sha256": source["weights_sha256"],
                                     "keys": ["hf_screening", "hf_settings"]}
    assert main([*args, "-o", str(tmp_path / "plain.safetensors")]) == 0
    assert "hf_settings" not in load_model(tmp_path / "plain.safetensors").metadata
    capsys.readouterr()
    assert main([*args, "--settings-from", "sige-pbe", "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlrho finetune: --settings-from sige-pbe") and "are not the training cells' Al" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_finetune_errors_and_unconverged_exclusion(base_model_path, al4_dir, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["finetune", "-m", str(base_model_path), str(al4_dir), "--val", str(al4_dir), "-o", str(out),
                 "--freeze", "3"]) == 2
    assert "between 0 and 2" in capsys.readouterr().err
    bad = tmp_path / "unconverged"
    shutil.copytree(al4_dir, bad)
    meta = json.loads((bad / "meta.json").read_text())
    (bad / "meta.json").write_text(json.dumps({**meta, "converged": False}))
    assert main(["finetune", "-m", str(base_model_path), str(bad), "--val", str(al4_dir), "-o", str(out),
                 "--freeze", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "skipping" in err and "did not converge" in err and "no usable" in err
    net = load_model(base_model_path).network
    with pytest.raises(ValueError):
        freeze_layers(net, -1)
    # data at another mesh than the model's is refused with a clear message
    import dataclasses
    snap = load_snapshot(al4_dir)
    coarse = dataclasses.replace(snap, provenance={**snap.provenance, "mesh_spacing_bohr": 0.4})
    with pytest.raises(ValueError, match="0.4 Bohr mesh"):
        finetune_model(load_model(base_model_path), [coarse], [snap], 1, TINY, progress=False)


def test_ensemble_finetuned_member_by_member(al4_dir, tmp_path):
    """A deep ensemble (the shipped al-pbe is one) is fine-tuned member by member: each member's frozen
    layers stay bit for bit, its head moves, and the mixture is re-calibrated and round-trips a file."""
    from ase_mlrho.model import DensityEnsemble

    snap = load_snapshot(al4_dir)
    spec = DescriptorSpec(m=12, m_s=2, k=3, species=("Al",))
    base = train_model([snap], [snap], spec, NetworkConfig(hidden=(16, 16)),
                       TrainingConfig(points_per_snapshot=2000, val_points_per_snapshot=1500, epochs=2,
                                      batch_size=512, seed=2, ensemble=2), name="toy-ens", progress=False)
    before = [_state(m) for m in base.network.members]
    cfg = TrainingConfig(points_per_snapshot=2000, val_points_per_snapshot=1500, epochs=3, batch_size=512,
                         learning_rate=1e-2, seed=7)
    tuned = finetune_model(base, [snap], [snap], n_frozen=1, config=cfg, name="toy-ens-ft", progress=False)
    assert isinstance(tuned.network, DensityEnsemble) and len(tuned.network.members) == 2
    for b, member in zip(before, tuned.network.members):
        after = _state(member)
        for p in ("weight_mu", "bias_mu", "weight_rho", "bias_rho"):
            assert torch.equal(b[f"layers.0.{p}"], after[f"layers.0.{p}"])
        assert not torch.equal(b["layers.2.weight_mu"], after["layers.2.weight_mu"])
    assert [m["seed"] for m in tuned.metadata["training"]["members"]] == [7, 8]
    assert float(tuned.network.sigma_scale) == tuned.metadata["calibration"]["sigma_scale"] > 0
    assert tuned.metadata["lineage"][-1]["n_layers"] == 3
    path = tmp_path / "ens-ft.safetensors"
    save_model(tuned, path)
    again = load_model(path)
    a = predict_field(tuned, snap.atoms, snap.grid, seed=0)
    b = predict_field(again, snap.atoms, snap.grid, seed=0)
    assert np.array_equal(a.density, b.density) and np.array_equal(a.sigma_epistemic, b.sigma_epistemic)


def test_divergence_zero_for_identical_and_larger_for_shifted():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4))  # same distribution, another sample
    c = b + np.array([0.0, 0.5, 1.0, 0.0])  # shifted features 1 and 2
    js_same = jensen_shannon_per_feature(a, b, n_bins=30)
    js_shift = jensen_shannon_per_feature(a, c, n_bins=30)
    assert np.all(js_same < 5e-3)
    assert js_shift[0] < 5e-3 and js_shift[3] < 5e-3
    assert 0.02 < js_shift[1] < js_shift[2] <= 1.0
    assert jensen_shannon_per_feature(a[:, :1], a[:, :1] + 100.0).item() == pytest.approx(1.0)  # disjoint
    assert abs(mmd2_rbf(a, b, max_points=1500)) < 5e-3
    assert mmd2_rbf(a, c, max_points=1500) > 10 * abs(mmd2_rbf(a, b, max_points=1500))
    same = compare_descriptor_distributions(a, b)
    shifted = compare_descriptor_distributions(a, c, labels=("small", "large"))
    assert same.js_mean < 5e-3 < shifted.js_mean and shifted.mmd2 > same.mmd2
    assert json.loads(json.dumps(shifted.to_dict()))["labels"] == ["small", "large"]


def test_histogram_plot(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3000, 5)), rng.normal(0.3, 1.0, size=(3000, 5))
    path = plot_descriptor_histograms(a, b, tmp_path / "hist.png", labels=("Al32", "Al108"),
                                      feature_names=[f"d{i}" for i in range(5)])
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
