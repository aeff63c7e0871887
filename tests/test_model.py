"""Bayesian network, training, uncertainty and model files on problems with known answers."""

import json

import numpy as np
import pytest
import torch

from ase_mlrho.descriptors import DescriptorSpec, UnknownSpeciesError
from ase_mlrho.model import DensityNetwork, NetworkConfig
from ase_mlrho.model_files import MLRhoModel, ModelFileError, load_model, save_model
from ase_mlrho.training import TrainingConfig, optimise
from ase_mlrho.uncertainty import calibrated_scale, calibration_scale, coverage, gaussian_nll, miscalibration_area

SPEC = DescriptorSpec(m=1, m_s=0, k=1, species=("Al",))  # one input feature: a distance


def _synthetic(n, noise, rng, lo=2.0, hi=4.0):
    x = rng.uniform(lo, hi, (n, 1)).astype(np.float32)
    y = np.sin(2 * x[:, 0]) + noise * rng.standard_normal(n)
    return x, y.astype(np.float32)


def _fit(noise=0.1, epochs=25, seed=0):
    rng = np.random.default_rng(seed)
    x, y = _synthetic(4000, noise, rng)
    xv, yv = _synthetic(1000, noise, rng)
    torch.manual_seed(seed)  # the initial weights: independent of which tests ran before in this process
    net = DensityNetwork(SPEC, NetworkConfig(hidden=(32, 32)))
    net.x_mean.fill_(3.0)
    net.x_std.fill_(0.6)
    cfg = TrainingConfig(epochs=epochs, batch_size=256, learning_rate=1e-2, patience=100, seed=seed)
    history, _ = optimise(net, torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(xv), torch.as_tensor(yv), cfg)
    return net, history


@pytest.fixture(scope="module")
def fitted():
    return _fit()


def test_elbo_decreases_and_aleatoric_sigma_learns_the_noise(fitted):
    net, history = fitted
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0] - 0.5
    rng = np.random.default_rng(7)
    x, y = _synthetic(5000, 0.1, rng)
    pred = net.predict(x, n_samples=16, seed=3)
    # the mean recovers sin(2x), the aleatoric sigma the noise level 0.1
    assert np.sqrt(np.mean((pred.mean - np.sin(2 * x[:, 0])) ** 2)) < 0.03
    assert 0.085 < np.median(pred.sigma_aleatoric) < 0.115
    # and the total sigma is calibrated on fresh noisy data
    assert abs(coverage(pred.mean - y, pred.sigma_total, 1) - 0.683) < 0.04
    assert coverage(pred.mean - y, pred.sigma_total, 3) > 0.99


def test_epistemic_sigma_grows_away_from_the_training_data(fitted):
    net, _ = fitted
    inside = np.linspace(2.2, 3.8, 50, dtype=np.float32)[:, None]
    outside = np.linspace(7.0, 9.0, 50, dtype=np.float32)[:, None]
    s_in = net.predict(inside, n_samples=32, seed=0).sigma_epistemic
    s_out = net.predict(outside, n_samples=32, seed=0).sigma_epistemic
    assert np.median(s_out) > 3 * np.median(s_in)


def test_prediction_is_repeatable_for_a_seed_and_chunking(fitted):
    net, _ = fitted
    x = np.linspace(2, 4, 301, dtype=np.float32)[:, None]
    a = net.predict(x, n_samples=8, seed=11)
    b = net.predict(x, n_samples=8, seed=11)
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.sigma_epistemic, b.sigma_epistemic)
    parts = [net.predict(x[i:i + 50], n_samples=8, seed=11) for i in range(0, 301, 50)]
    np.testing.assert_allclose(np.concatenate([p.mean for p in parts]), a.mean, rtol=1e-6, atol=1e-7)
    c = net.predict(x, n_samples=8, seed=12)
    assert not np.array_equal(a.sigma_epistemic, c.sigma_epistemic)


def test_uncertainty_metrics_against_analytic_values():
    rng = np.random.default_rng(0)
    sigma = np.full(200_000, 0.5)
    err = rng.normal(0, 0.5, sigma.size)
    assert abs(coverage(err, sigma, 1) - 0.6827) < 0.005
    assert abs(coverage(err, sigma, 3) - 0.9973) < 0.001
    assert miscalibration_area(err, sigma) < 0.005
    assert abs(gaussian_nll(err, sigma) - (0.5 * np.log(2 * np.pi * 0.25) + 0.5)) < 0.01
    assert abs(calibration_scale(2 * err, sigma) - 2.0) < 0.01
    # heavy tails: the tail factor makes +/- 3 sigma cover like a Gaussian's 99.73 %
    t_err = rng.standard_t(4, sigma.size) * 0.5
    assert coverage(t_err, sigma * calibration_scale(t_err, sigma), 3) < 0.99
    assert abs(coverage(t_err, sigma * calibrated_scale(t_err, sigma), 3) - 0.9973) < 0.0005
    assert calibrated_scale(err, sigma) == pytest.approx(calibration_scale(err, sigma), rel=0.02)
    # overconfident by a factor 2: coverage of 1 sigma is that of 0.5 sigma, area large
    assert abs(coverage(2 * err, sigma, 1) - 0.3829) < 0.005
    assert miscalibration_area(2 * err, sigma) > 0.1


def _model(fitted):
    net, _ = fitted
    meta = {"name": "toy", "valence_electrons": {"Al": 3.0}, "mesh_spacing_bohr": 0.25, "n_samples": 4}
    return MLRhoModel(net, meta)


def test_save_load_roundtrip_is_exact(tmp_path, fitted):
    model = _model(fitted)
    path = save_model(model, tmp_path / "toy.safetensors")
    back = load_model(path)
    for k, v in model.network.state_dict().items():
        assert torch.equal(v, back.network.state_dict()[k]), k
    x = np.linspace(2, 4, 20, dtype=np.float32)[:, None]
    a, b = model.predict(x, seed=5), back.predict(x, seed=5)
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.sigma_total, b.sigma_total)
    assert back.n_samples == 4 and back.valence_electrons == {"Al": 3.0}
    assert back.n_electrons([13, 13]) == 6.0
    with pytest.raises(UnknownSpeciesError, match="model 'toy' knows Al; structure has Cu"):
        back.check_species([13, 29])


def test_corrupt_and_mismatched_model_files(tmp_path, fitted):
    path = save_model(_model(fitted), tmp_path / "toy.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "trunc.safetensors")
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(tmp_path / "flip.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "junk.safetensors")
    # a wrong format version
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["ase_mlrho"])
    meta["format_version"] = 99
    header["__metadata__"]["ase_mlrho"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "v99.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    with pytest.raises(ModelFileError, match="format version 99"):
        load_model(tmp_path / "v99.safetensors")
    with pytest.raises(ModelFileError, match="no shipped model named"):
        load_model("no-such-model")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------- ensembles
@pytest.fixture(scope="module")
def ensemble(fitted):
    from ase_mlrho.model import DensityEnsemble

    second, _ = _fit(seed=1)
    return DensityEnsemble([fitted[0], second])


def test_ensemble_prediction_is_the_mixture_of_its_members(ensemble):
    """Brute force: each member predicted on its own with its share of weight samples and its seed."""
    from ase_mlrho.model import _member_seed

    x = np.linspace(2, 4, 101, dtype=np.float32)[:, None]
    ensemble.sigma_scale.fill_(1.5)
    try:
        got = ensemble.predict(x, n_samples=5, seed=9)
    finally:
        ensemble.sigma_scale.fill_(1.0)
    assert ensemble.samples_per_member(5) == [3, 2] and ensemble.samples_per_member(1) == [1, 1]
    parts = [m.predict(x, n_samples=n, seed=_member_seed(9, i))
             for i, (m, n) in enumerate(zip(ensemble.members, (3, 2)))]
    means = np.stack([p.mean for p in parts])
    np.testing.assert_allclose(got.mean, means.mean(axis=0), rtol=1e-12)
    ale = np.sqrt(np.mean([p.sigma_aleatoric ** 2 for p in parts], axis=0))
    epi = np.sqrt(np.mean([p.sigma_epistemic ** 2 for p in parts], axis=0) + np.var(means, axis=0))
    np.testing.assert_allclose(got.sigma_aleatoric, 1.5 * ale, rtol=1e-12)
    np.testing.assert_allclose(got.sigma_epistemic, 1.5 * epi, rtol=1e-12)
    # repeatable for a seed; with 0 samples only the members' disagreement is left
    again = ensemble.predict(x, n_samples=5, seed=9)
    assert np.array_equal(again.mean, ensemble.predict(x, n_samples=5, seed=9).mean)
    det = ensemble.predict(x, n_samples=0)
    posterior_means = [m.predict(x, n_samples=0).mean for m in ensemble.members]
    np.testing.assert_allclose(det.sigma_epistemic, np.std(posterior_means, axis=0), rtol=1e-12)


def test_ensemble_disagrees_away_from_the_training_data(ensemble):
    inside = np.linspace(2.2, 3.8, 50, dtype=np.float32)[:, None]
    outside = np.linspace(7.0, 9.0, 50, dtype=np.float32)[:, None]
    s_in = ensemble.predict(inside, n_samples=0).sigma_epistemic
    s_out = ensemble.predict(outside, n_samples=0).sigma_epistemic
    assert np.median(s_out) > 3 * np.median(s_in)


def test_ensemble_save_load_roundtrip_is_exact(tmp_path, ensemble):
    model = MLRhoModel(ensemble, {"name": "toy-ens", "valence_electrons": {"Al": 3.0}, "mesh_spacing_bohr": 0.25})
    path = save_model(model, tmp_path / "ens.safetensors")
    back = load_model(path)
    assert back.ensemble_size == 2 and back.metadata["format_version"] == 2
    assert len(back.metadata["scalers"]["y_std_e_per_bohr3"]) == 2
    x = np.linspace(2, 4, 20, dtype=np.float32)[:, None]
    a, b = model.predict(x, n_samples=4, seed=5), back.predict(x, n_samples=4, seed=5)
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.sigma_total, b.sigma_total)
    # a version-1 reader's file (single network) still loads
    single = load_model(save_model(_model((ensemble.members[0], None)), tmp_path / "one.safetensors"))
    assert single.ensemble_size == 1


def test_ensemble_members_must_match():
    from ase_mlrho.model import DensityEnsemble

    a = DensityNetwork(SPEC, NetworkConfig(hidden=(8,)))
    with pytest.raises(ValueError, match="at least two"):
        DensityEnsemble([a])
    with pytest.raises(ValueError, match="share one descriptor spec"):
        DensityEnsemble([a, DensityNetwork(SPEC, NetworkConfig(hidden=(16,)))])
