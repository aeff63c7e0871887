"""Transfer learning from small to large cells, and the descriptor distributions that motivate it.

:func:`finetune_model` -- reload a trained model, freeze its first N Bayesian layers (posterior
means *and* widths), and fine-tune the rest on a few large-cell snapshots with the same ELBO loss
(:func:`ase_mlrho.training.optimise`). What the base model learnt about its inputs and outputs is kept:
the feature and target scalers and the radial baseline are the base model's, untouched, so the
frozen layers still see the inputs they were trained on. The calibration *method* is kept too, and
its one factor is re-fitted on the fine-tuning validation snapshots. The model file records its
lineage: base model name, weights sha256 (and file sha256 when loaded from a file), the frozen
layers and the snapshots used.

:func:`compare_descriptor_distributions` -- how different the descriptors of two sets of snapshots
(e.g. 32-atom vs 108-atom cells) are: a Jensen-Shannon divergence per feature (histograms on shared
bins, base 2, so 0 = identical and 1 = disjoint), averaged, and a kernel two-sample statistic (MMD^2,
Gaussian kernel, median-heuristic bandwidth) on jointly standardised features.
:func:`plot_descriptor_histograms` draws the per-feature histograms side by side.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .descriptors import DescriptorSpec
from .domain import METADATA_KEY as DOMAIN_KEY
from .domain import training_domain_metadata
from .files import file_sha256
from .model import DensityEnsemble
from .model_files import MLRhoModel, network_sha256
from .training import (CALIBRATION_METHOD, TrainingConfig, build_dataset, calibrate, optimise, scratch_training,
                       validation_uncertainty_metadata)

__all__ = [
    "FINETUNE_DEFAULTS",
    "finetune_model",
    "freeze_layers",
    "DistributionComparison",
    "descriptor_sample",
    "jensen_shannon_per_feature",
    "mmd2_rbf",
    "compare_descriptor_distributions",
    "plot_descriptor_histograms",
]

#: Fine-tuning defaults: fewer epochs and a smaller learning rate than training from scratch, so the
#: trainable layers adapt without forgetting (the paper fine-tunes the later layers briefly).
FINETUNE_DEFAULTS = TrainingConfig(epochs=30, learning_rate=1e-3, patience=8)

#: The one calibration method ase-mlrho knows (see :func:`ase_mlrho.training.calibrate`).
_CALIBRATION_METHOD = CALIBRATION_METHOD
_PARAM_NAMES = ("weight_mu", "bias_mu", "weight_rho", "bias_rho")


# ----------------------------------------------------------------------------- fine-tuning
def freeze_layers(network, n_frozen: int) -> list[str]:
    """Set ``requires_grad = False`` on the posterior means and widths of the first ``n_frozen``
    Bayesian layers (and True on the others). Returns the names of the frozen parameters."""
    n_layers = len(network.layers)
    if not 0 <= int(n_frozen) < n_layers:
        raise ValueError(f"--freeze must be between 0 and {n_layers - 1} for this network of {n_layers} "
                         f"Bayesian layers (freezing all {n_layers} leaves nothing to fine-tune)")
    frozen = []
    for i, layer in enumerate(network.layers):
        for pname in _PARAM_NAMES:
            param = getattr(layer, pname)
            param.requires_grad_(i >= n_frozen)
            if i < n_frozen:
                frozen.append(f"layers.{i}.{pname}")
    return frozen


def _snapshot_record(snapshot) -> dict:
    return {"name": snapshot.name, "natoms": snapshot.natoms, "path": snapshot.provenance.get("path"),
            "meta": snapshot.provenance.get("meta", {})}


def _check_snapshots(base: MLRhoModel, snapshots, what: str) -> None:
    for snap in snapshots:
        base.check_species(snap.atoms.numbers)
        meta = snap.provenance.get("meta", {}) or {}
        mesh = snap.provenance.get("mesh_spacing_bohr") or meta.get("mesh_spacing_bohr")
        # nominal meshes; 5% slack because a model trained on FD_GRID inputs (no MESH_SPACING in the .inpt)
        # records its grid's actual spacing, which SPARC's rounding puts up to a few % below the nominal one
        if mesh is not None and abs(float(mesh) - base.mesh_spacing_bohr) > 0.05 * base.mesh_spacing_bohr:
            raise ValueError(f"{what} snapshot {snap.name} uses a {mesh} Bohr mesh but model '{base.name}' was "
                             f"trained at {base.mesh_spacing_bohr} Bohr; fine-tune on data at the model's mesh")


def finetune_model(base: MLRhoModel, train_snapshots, val_snapshots, n_frozen: int,
                   config: TrainingConfig = FINETUNE_DEFAULTS, name: str | None = None,
                   base_path=None, checkpoint=None, progress: bool = True, log=None,
                   extra_metadata: dict | None = None) -> MLRhoModel:
    """Fine-tune a copy of ``base`` on ``train_snapshots`` with its first ``n_frozen`` layers frozen.

    Early stopping and the calibration factor use ``val_snapshots`` (split by snapshot, never by
    grid point). ``base`` itself is left unchanged. The frozen layers of the result equal the base
    model's bit for bit. ``base_path`` (the base model file), when given, is recorded by sha256.
    A deep ensemble is fine-tuned member by member (member i with seed ``config.seed + i``) and its
    mixture re-calibrated; the calibration uses the base model's number of weight sets.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not train_snapshots or not val_snapshots:
        raise ValueError("fine-tuning needs at least one training and one validation snapshot")
    _check_snapshots(base, train_snapshots, "fine-tuning")
    _check_snapshots(base, val_snapshots, "validation")
    method = base.metadata.get("calibration", {}).get("method", _CALIBRATION_METHOD)
    if method != _CALIBRATION_METHOD:
        raise ValueError(f"model '{base.name}' uses the calibration method {method!r}, which fine-tuning cannot "
                         f"re-fit; known: {_CALIBRATION_METHOD!r}")
    t0 = time.perf_counter()
    name = name or f"{base.name}-finetuned"
    # calibrate with the weight sets the model predicts with (the base model's default)
    config = replace(config, n_samples=int(base.metadata.get("n_samples", config.n_samples)))
    spec: DescriptorSpec = base.network.spec
    # An ensemble is fine-tuned member by member (member i on the points of seed + i, as in training),
    # then its mixture is re-calibrated as a whole.
    members = list(base.network.members) if isinstance(base.network, DensityEnsemble) else [base.network]
    val = build_dataset(val_snapshots, spec, config.val_points_per_snapshot, config.seed + 1, progress)
    x_va = torch.as_tensor(val.desc)
    tuned, runs = [], []
    for i, member in enumerate(members):
        member_config = replace(config, seed=config.seed + i)
        member_name = name if len(members) == 1 else f"{name}[{i}]"
        network = copy.deepcopy(member)
        frozen = freeze_layers(network, n_frozen)
        train = build_dataset(train_snapshots, spec, member_config.points_per_snapshot, member_config.seed,
                              progress)
        # targets through the base model's baseline and scalers (kept, not re-fitted)
        x_tr = torch.as_tensor(train.desc)
        with torch.no_grad():
            y_tr = network.target(x_tr, torch.as_tensor(train.rho)).to(torch.float32)
            y_va = network.target(x_va, torch.as_tensor(val.rho)).to(torch.float32)
        history, best_epoch = optimise(network, x_tr, y_tr, x_va, y_va, member_config, member_name, checkpoint,
                                       progress, log)
        for p in network.parameters():
            p.requires_grad_(True)
        tuned.append(network)
        runs.append({"seed": member_config.seed, "best_epoch": best_epoch, "epochs_run": len(history),
                     "history": history})
    network = tuned[0] if len(tuned) == 1 else DensityEnsemble(tuned)

    # re-fit the calibration factor by the base model's method, on the fine-tuning validation snapshots
    scale, err, sig_total, epi = calibrate(network, val, config)

    base_meta = base.metadata
    lineage_entry = {
        "operation": "finetune",
        "base_model": base.name,
        "base_weights_sha256": network_sha256(base.network),
        "base_file": Path(base_path).name if base_path else None,  # a name: model files name no folders
        "base_file_sha256": file_sha256(base_path) if base_path else None,
        "base_training_snapshots": [s.get("name") for s in base_meta.get("training", {}).get("train_snapshots", [])],
        "base_training_command": base_meta.get("training_command"),
        "frozen_layers": int(n_frozen),
        "n_layers": len(tuned[0].layers),
        "frozen_parameters": frozen,
        "finetune_snapshots": [_snapshot_record(s) for s in train_snapshots],
        "validation_snapshots": [_snapshot_record(s) for s in val_snapshots],
        "kept_from_base": ["descriptor_spec", "network_config", "x_mean", "x_std", "y_mean", "y_std",
                           "radial baseline", "calibration method"],
        "config": asdict(config),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    metadata = {k: copy.deepcopy(v) for k, v in base_meta.items()
                if k in ("valence_electrons", "mesh_spacing_bohr", "n_samples")}
    metadata.update({
        "name": name,
        "n_samples": config.n_samples,
        **validation_uncertainty_metadata(err, sig_total, epi, method, scale),
        "training": {
            "kind": "finetune",
            "train_snapshots": [_snapshot_record(s) for s in train_snapshots],
            "validation_snapshots": [_snapshot_record(s) for s in val_snapshots],
            "config": asdict(config),
            "best_epoch": runs[0]["best_epoch"],
            "epochs_run": runs[0]["epochs_run"],
            "seconds": time.perf_counter() - t0,
            "threads": torch.get_num_threads(),
            "history": runs[0]["history"],
            **({"members": runs} if len(runs) > 1 else {}),
        },
        # the from-scratch training this model descends from (its recipe), however many fine-tunings ago
        "base_training": scratch_training(base_meta),
        "lineage": list(copy.deepcopy(base_meta.get("lineage", []))) + [lineage_entry],
    })
    metadata["calibration"]["base_sigma_scale"] = float(base.network.sigma_scale)
    metadata[DOMAIN_KEY] = training_domain_metadata(train_snapshots, base_meta.get(DOMAIN_KEY))
    metadata.update(extra_metadata or {})
    network.eval()
    return MLRhoModel(network, metadata)


# ----------------------------------------------------------------------------- descriptor distributions
@dataclass(frozen=True)
class DistributionComparison:
    """Divergence between descriptor samples A and B.

    js_per_feature : Jensen-Shannon divergence (base 2, in [0, 1]) of each feature's histogram.
    js_mean : their average -- the headline number.
    mmd2 : squared maximum mean discrepancy, Gaussian kernel (bandwidth by the median heuristic) on
        jointly standardised features, unbiased estimate (about 0 for identical distributions).
    """

    labels: tuple[str, str]
    feature_names: tuple[str, ...]
    js_per_feature: tuple[float, ...]
    js_mean: float
    mmd2: float
    n_points: tuple[int, int]
    n_bins: int

    def to_dict(self) -> dict:
        return asdict(self)


def descriptor_sample(snapshots, spec: DescriptorSpec, points_per_snapshot: int = 4000, seed: int = 0) -> np.ndarray:
    """Descriptors at grid points drawn uniformly from each snapshot (as training samples them)."""
    return build_dataset(snapshots, spec, points_per_snapshot, seed).desc


def jensen_shannon_per_feature(a, b, n_bins: int = 50) -> np.ndarray:
    """JS divergence (bits) of every column of ``a`` (N, F) vs ``b`` (M, F), histograms on shared
    bins spanning the pooled range of each feature. Constant features give 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, F) arrays with the same F, got {a.shape} and {b.shape}")
    out = np.zeros(a.shape[1])
    for j in range(a.shape[1]):
        lo, hi = min(a[:, j].min(), b[:, j].min()), max(a[:, j].max(), b[:, j].max())
        if hi <= lo:
            continue
        edges = np.linspace(lo, hi, n_bins + 1)
        p = np.histogram(a[:, j], edges)[0].astype(np.float64)
        q = np.histogram(b[:, j], edges)[0].astype(np.float64)
        p, q = p / p.sum(), q / q.sum()
        m = 0.5 * (p + q)
        out[j] = 0.5 * (_kl_bits(p, m) + _kl_bits(q, m))
    return np.clip(out, 0.0, 1.0)


def _kl_bits(p, q) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))


def mmd2_rbf(a, b, max_points: int = 2000, seed: int = 0, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 between samples ``a`` and ``b`` (rows) with a Gaussian kernel, after
    standardising both with their pooled mean and std; at most ``max_points`` rows of each (seeded)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = a[rng.choice(len(a), min(max_points, len(a)), replace=False)]
    b = b[rng.choice(len(b), min(max_points, len(b)), replace=False)]
    pooled = np.concatenate([a, b])
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    std[std == 0] = 1.0
    a, b = (a - mean) / std, (b - mean) / std

    def sqdist(x, y):
        return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0.0)

    daa, dbb, dab = sqdist(a, a), sqdist(b, b), sqdist(a, b)
    if bandwidth is None:
        bandwidth = float(np.sqrt(0.5 * np.median(dab)))  # median heuristic on the cross distances
    g = 1.0 / (2.0 * max(bandwidth, 1e-12) ** 2)
    kaa, kbb, kab = np.exp(-g * daa), np.exp(-g * dbb), np.exp(-g * dab)
    n, m = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                 - 2.0 * kab.mean())


def compare_descriptor_distributions(desc_a, desc_b, labels=("A", "B"), feature_names=None, n_bins: int = 50,
                                     max_points_mmd: int = 2000, seed: int = 0) -> DistributionComparison:
    """Jensen-Shannon per feature (and its mean) and MMD^2 between two descriptor samples."""
    js = jensen_shannon_per_feature(desc_a, desc_b, n_bins)
    names = tuple(feature_names) if feature_names is not None else tuple(f"f{i}" for i in range(len(js)))
    return DistributionComparison(
        labels=(str(labels[0]), str(labels[1])), feature_names=names,
        js_per_feature=tuple(float(v) for v in js), js_mean=float(np.mean(js)),
        mmd2=mmd2_rbf(desc_a, desc_b, max_points_mmd, seed), n_points=(len(desc_a), len(desc_b)), n_bins=n_bins)


def plot_descriptor_histograms(desc_a, desc_b, path, comparison: DistributionComparison | None = None,
                               labels=("A", "B"), feature_names=None, max_features: int = 16,
                               n_bins: int = 50) -> Path:
    """Per-feature histograms of A and B, overlaid (density-normalised), each panel titled with its
    JS divergence; the features shown are the ``max_features`` most divergent. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_write

    comparison = comparison or compare_descriptor_distributions(desc_a, desc_b, labels, feature_names, n_bins)
    js = np.asarray(comparison.js_per_feature)
    show = np.argsort(-js)[:max_features]
    ncol = 4
    nrow = int(np.ceil(len(show) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
    for ax, j in zip(axes.ravel(), show):
        lo = min(desc_a[:, j].min(), desc_b[:, j].min())
        hi = max(desc_a[:, j].max(), desc_b[:, j].max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1, n_bins + 1)
        ax.hist(desc_a[:, j], edges, density=True, alpha=0.5, label=comparison.labels[0])
        ax.hist(desc_b[:, j], edges, density=True, alpha=0.5, label=comparison.labels[1])
        ax.set_title(f"{comparison.feature_names[j]}  JS={js[j]:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(show):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"descriptor distributions: {comparison.labels[0]} vs {comparison.labels[1]}; "
                 f"mean JS {comparison.js_mean:.4f} bits, MMD^2 {comparison.mmd2:.4f}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()), binary=True)
