"""Training the Bayesian density network: minimise the KL-regularised ELBO on grid points sampled
from many SPARC snapshots.

Recipe (each step a function, in order):

1. sample grid points from every snapshot (:func:`build_dataset`), descriptors + target density;
2. fit the radial baseline (a superposition of spherical atomic densities, linear least squares
   with a smoothness penalty) and the feature/target scalers on the training points only;
3. minimise  mean NLL(heteroscedastic Gaussian) + kl_weight * KL(q || prior) / N_train  with Adam,
   local reparameterisation, cosine learning-rate decay, early stopping on the validation NLL;
4. calibrate: fit one factor on the total sigma on validation snapshots (NLL-optimal, raised where
   the +/- 3 sigma interval would cover less than a Gaussian's 99.73 %), and record
   the range of epistemic sigma seen there (for out-of-distribution warnings).

With ``TrainingConfig.ensemble`` = K > 1, steps 1-3 run K times (seeds seed .. seed + K - 1: other
sampled points, other initial weights) and step 4 calibrates the mixture (a deep ensemble).

Validation is split by snapshot, never by grid point (neighbouring points are nearly identical,
so a point-wise split leaks). Everything is seeded.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .descriptors import Descriptors, DescriptorSpec
from .domain import METADATA_KEY as DOMAIN_KEY
from .domain import training_domain_metadata
from .model import DensityEnsemble, DensityNetwork, NetworkConfig
from .model_files import MLRhoModel
from .uncertainty import calibrated_scale, coverage, miscalibration_area

__all__ = ["TrainingConfig", "Dataset", "build_dataset", "train_model", "fit_baseline", "split_by_snapshot",
           "recipe_configs", "scratch_training"]


@dataclass(frozen=True)
class TrainingConfig:
    points_per_snapshot: int = 60000
    val_points_per_snapshot: int = 30000
    epochs: int = 60
    batch_size: int = 2048
    learning_rate: float = 3e-3
    patience: int = 12
    kl_weight: float = 1.0
    baseline_ridge: float = 1e-3
    n_samples: int = 8
    seed: int = 0
    ensemble: int = 1


@dataclass(frozen=True, eq=False)
class Dataset:
    """Sampled grid points: descriptors (N, F) float32, density (N,) float64, snapshot index (N,)."""

    desc: np.ndarray
    rho: np.ndarray
    snapshot: np.ndarray
    names: tuple[str, ...]


def build_dataset(snapshots, spec: DescriptorSpec, points_per_snapshot: int, seed: int,
                  progress: bool = False) -> Dataset:
    """Uniformly sampled grid points of each snapshot (all points if the grid is smaller)."""
    rng = np.random.default_rng(seed)
    descs, rhos, ids = [], [], []
    it = snapshots
    if progress:
        from tqdm import tqdm

        it = tqdm(snapshots, desc="descriptors", unit="snapshot", file=sys.stderr)
    for i, snap in enumerate(it):
        n = snap.grid.n_points
        idx = np.sort(rng.choice(n, size=min(points_per_snapshot, n), replace=False))
        d = Descriptors.from_atoms(spec, snap.atoms)
        descs.append(d.compute(snap.grid.points_bohr_at(idx)))
        rhos.append(snap.density_e_per_bohr3.reshape(-1)[idx])
        ids.append(np.full(idx.size, i))
    return Dataset(np.concatenate(descs), np.concatenate(rhos), np.concatenate(ids),
                   tuple(s.name for s in snapshots))


def split_by_snapshot(snapshots, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded fifth of the snapshots (at least one) for validation, whole
    snapshots only (neighbouring grid points are nearly identical, so a point-wise split leaks)."""
    if len(snapshots) < 2:
        raise ValueError("need at least two snapshots (or --val) to split validation by snapshot")
    order = np.random.default_rng(seed).permutation(len(snapshots))
    n_val = max(1, len(snapshots) // 5)
    return [snapshots[i] for i in sorted(order[n_val:])], [snapshots[i] for i in sorted(order[:n_val])]


def scratch_training(metadata: dict) -> dict:
    """The ``training`` record of the from-scratch training a model descends from: its own for a trained model,
    ``base_training`` for a fine-tuned one (which :func:`ase_mlrho.transfer.finetune_model` keeps through any
    number of fine-tunings). Its ``config`` is the recipe a retrain from scratch should use, not the shorter
    fine-tuning schedule."""
    training = metadata.get("training", {})
    return metadata.get("base_training", {}) if training.get("kind") == "finetune" else training


def recipe_configs(recipe: dict) -> tuple[dict, NetworkConfig, TrainingConfig]:
    """A training recipe (``ase_mlrho/models/*.train.json``: sections 'descriptor', 'network' and
    'training', each optional) as (DescriptorSpec keywords, NetworkConfig, TrainingConfig)."""
    d, n, t = (dict(recipe.get(k, {})) for k in ("descriptor", "network", "training"))
    for key in ("hidden", "radial_widths_bohr"):
        if key in n:
            n[key] = tuple(n[key])
    return d, NetworkConfig(**n), TrainingConfig(**t)


def fit_baseline(network: DensityNetwork, desc: np.ndarray, rho: np.ndarray, ridge: float) -> None:
    """Least-squares radial atomic density (per species) so that the superposition matches rho,
    with a second-difference smoothness penalty ``ridge`` (relative to the data term)."""
    x = torch.as_tensor(desc)
    design = network.baseline.design(x).numpy()
    k = network.baseline.table.shape[1]
    n_species = len(network.spec.species)
    ata = design.T @ design / len(rho)
    atb = design.T @ rho / len(rho)
    d2 = np.diff(np.eye(k), n=2, axis=0)
    penalty = np.kron(np.eye(n_species), d2.T @ d2)
    # the table must vanish at the cut-off so the baseline is continuous when a neighbour leaves
    end = np.zeros(n_species * k)
    end[k - 1::k] = 1.0
    scale = np.trace(ata) / ata.shape[0]
    lhs = ata + ridge * scale * penalty + 1e3 * scale * np.diag(end) + 1e-10 * scale * np.eye(len(ata))
    table = np.linalg.solve(lhs, atb)
    network.baseline.table.copy_(torch.as_tensor(table.reshape(n_species, k)))


def _fit_scalers(network: DensityNetwork, desc: np.ndarray, rho: np.ndarray) -> None:
    with torch.no_grad():
        x = torch.as_tensor(desc)
        feats = network.raw_features(x)
        network.x_mean.copy_(feats.mean(dim=0))
        network.x_std.copy_(torch.clamp(feats.std(dim=0), min=1e-6))
        resid = torch.as_tensor(rho) - network.baseline(x)
        network.y_mean.copy_(resid.mean())
        network.y_std.copy_(torch.clamp(resid.std(), min=1e-12))


def _validation_scores(network: DensityNetwork, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Validation (mean absolute error, Gaussian NLL) of the posterior-mean network, standardised units."""
    with torch.no_grad():
        mu, sig = network(x, sample=False)
        return float(torch.mean(torch.abs(y - mu))), float(torch.mean(torch.log(sig) + 0.5 * ((y - mu) / sig) ** 2))


def train_model(train_snapshots, val_snapshots, spec: DescriptorSpec, net_config: NetworkConfig = NetworkConfig(),
                config: TrainingConfig = TrainingConfig(), name: str = "model", checkpoint=None,
                progress: bool = True, log=None, extra_metadata: dict | None = None) -> MLRhoModel:
    """Train a model on ``train_snapshots``, early-stop and calibrate on ``val_snapshots``.

    With ``config.ensemble`` = K > 1, K networks are trained (member i with seed ``config.seed + i``,
    so on other sampled grid points and from another initialisation) and calibrated together as a
    :class:`~ase_mlrho.model.DensityEnsemble`.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not train_snapshots or not val_snapshots:
        raise ValueError("training needs at least one training and one validation snapshot")
    if config.ensemble < 1:
        raise ValueError(f"ensemble must be >= 1 member, got {config.ensemble}")
    t0 = time.perf_counter()
    val = build_dataset(val_snapshots, spec, config.val_points_per_snapshot, config.seed + 1, progress)
    members, runs = [], []
    for i in range(config.ensemble):
        member_config = replace(config, seed=config.seed + i)
        member_name = name if config.ensemble == 1 else f"{name}[{i}]"
        network, history, best_epoch = _train_network(train_snapshots, val, spec, net_config, member_config,
                                                      member_name, checkpoint, progress, log)
        members.append(network)
        runs.append({"seed": member_config.seed, "best_epoch": best_epoch, "epochs_run": len(history),
                     "history": history})
    network = members[0] if len(members) == 1 else DensityEnsemble(members)

    scale, err, sig_total, epi = calibrate(network, val, config)
    seconds = time.perf_counter() - t0
    training = {
        "train_snapshots": [_provenance(s) for s in train_snapshots],
        "validation_snapshots": [_provenance(s) for s in val_snapshots],
        "config": asdict(config),
        "best_epoch": runs[0]["best_epoch"],
        "epochs_run": runs[0]["epochs_run"],
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "history": runs[0]["history"],
    }
    if len(runs) > 1:
        training["members"] = runs
    metadata = {
        "name": name,
        "n_samples": config.n_samples,
        **validation_uncertainty_metadata(err, sig_total, epi, CALIBRATION_METHOD, scale),
        "training": training,
        "lineage": [],
    }
    metadata.update(_species_metadata(spec, train_snapshots))
    metadata[DOMAIN_KEY] = training_domain_metadata(train_snapshots)
    metadata.update(extra_metadata or {})
    return MLRhoModel(network, metadata)


def _train_network(train_snapshots, val: Dataset, spec: DescriptorSpec, net_config: NetworkConfig,
                   config: TrainingConfig, name: str, checkpoint, progress: bool, log):
    """One network: sample its training points (seeded by ``config.seed``), fit the baseline and the
    scalers, minimise the ELBO. Returns (network with sigma_scale 1, history, best epoch)."""
    torch.manual_seed(config.seed)
    train = build_dataset(train_snapshots, spec, config.points_per_snapshot, config.seed, progress)
    network = DensityNetwork(spec, net_config)
    fit_baseline(network, train.desc, train.rho, config.baseline_ridge)
    _fit_scalers(network, train.desc, train.rho)

    x_tr, x_va = torch.as_tensor(train.desc), torch.as_tensor(val.desc)
    y_tr = network.target(x_tr, torch.as_tensor(train.rho)).to(torch.float32)
    y_va = network.target(x_va, torch.as_tensor(val.rho)).to(torch.float32)
    history, best_epoch = optimise(network, x_tr, y_tr, x_va, y_va, config, name, checkpoint, progress, log)
    return network, history, best_epoch


def optimise(network: DensityNetwork, x_tr, y_tr, x_va, y_va, config: TrainingConfig, name: str = "model",
             checkpoint=None, progress: bool = False, log=None) -> tuple[list, int]:
    """Minimise the ELBO loss  mean NLL + kl_weight * KL / N  on standardised targets ``y_tr``;
    keep the state with the lowest validation mean absolute error of the posterior-mean network
    (the error users see, eps, is an L1 norm; the validation NLL also rewards sigmas that the
    calibration step re-scales afterwards, and picked under-trained states). Returns (history, best epoch)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    torch.manual_seed(config.seed)
    n_train = len(y_tr)
    opt = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.learning_rate,
                                                total_steps=config.epochs * steps_per_epoch,
                                                pct_start=0.1, final_div_factor=100.0)
    gen = torch.Generator().manual_seed(config.seed)
    best = (math.inf, copy.deepcopy(network.state_dict()), -1)
    history = []
    epochs = range(config.epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc=f"training {name}", unit="epoch", file=sys.stderr)
    for epoch in epochs:
        network.train()
        perm = torch.randperm(n_train, generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
            mu, sig = network(x_tr[idx])
            nll = torch.mean(torch.log(sig) + 0.5 * ((y_tr[idx] - mu) / sig) ** 2)
            loss = nll + config.kl_weight * network.kl() / n_train
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        network.eval()
        val_mae, val_nll = _validation_scores(network, x_va, y_va)
        history.append({"epoch": epoch, "train_loss": total / n_train, "val_mae": val_mae, "val_nll": val_nll})
        if progress:
            epochs.set_postfix(loss=f"{total / n_train:.3f}", val_mae=f"{val_mae:.4f}", val_nll=f"{val_nll:.3f}")
        if val_mae < best[0]:
            best = (val_mae, copy.deepcopy(network.state_dict()), epoch)
            if checkpoint is not None:
                _save_checkpoint(network, checkpoint, name, epoch, val_mae)
        elif epoch - best[2] >= config.patience:
            log(f"early stop at epoch {epoch}: best validation MAE {best[0]:.4f} at epoch {best[2]}")
            break
    network.load_state_dict(best[1])
    network.eval()
    return history, best[2]


def calibrate(network: DensityNetwork | DensityEnsemble, val: Dataset, config: TrainingConfig):
    """Fit the sigma calibration factor on validation points (uncertainty.calibrated_scale) and store
    it in the network. Returns (factor, errors, calibrated total sigma, calibrated epistemic sigma)."""
    network.sigma_scale.fill_(1.0)
    pred = network.predict(val.desc, n_samples=config.n_samples, seed=config.seed)
    err = pred.mean - val.rho
    scale = calibrated_scale(err, pred.sigma_total)
    network.sigma_scale.fill_(scale)
    return scale, err, pred.sigma_total * scale, pred.sigma_epistemic * scale


CALIBRATION_METHOD = ("factor on the total sigma fitted on the validation snapshots: NLL-optimal, raised where "
                      "needed so the +/- 3 sigma interval covers 99.73 % (uncertainty.calibrated_scale)")


def validation_uncertainty_metadata(err, sigma_total, sigma_epistemic, method: str, scale: float) -> dict:
    """The model file's ``calibration`` and ``epistemic_sigma_validation`` entries, from the
    (calibrated) errors and sigmas on the validation snapshots, e/Bohr^3."""
    return {
        "calibration": {
            "method": method,
            "sigma_scale": scale,
            "validation_coverage_1sigma": coverage(err, sigma_total, 1),
            "validation_coverage_3sigma": coverage(err, sigma_total, 3),
            "validation_miscalibration_area": miscalibration_area(err, sigma_total),
        },
        "epistemic_sigma_validation": {
            "mean_e_per_bohr3": float(np.mean(sigma_epistemic)),
            "p99_e_per_bohr3": float(np.percentile(sigma_epistemic, 99)),
            "p999_e_per_bohr3": float(np.percentile(sigma_epistemic, 99.9)),
            "max_e_per_bohr3": float(np.max(sigma_epistemic)),
        },
    }


def _provenance(snapshot) -> dict:
    return {"name": snapshot.name, "natoms": snapshot.natoms, "path": snapshot.provenance.get("path"),
            "meta": snapshot.provenance.get("meta", {})}


def _species_metadata(spec, snapshots) -> dict:
    meshes = {s.provenance.get("mesh_spacing_bohr") for s in snapshots}
    meshes.discard(None)
    if len(meshes) > 1:
        raise ValueError(f"training snapshots use different mesh spacings: {sorted(meshes)}")
    mesh = meshes.pop() if meshes else float(np.mean(snapshots[0].grid.spacing_bohr))
    valence: dict[str, float] = {}
    for snap in snapshots:  # each snapshot says the valence of its elements (its pseudopotentials)
        for symbol, z in snap.valence_electrons.items():
            if symbol in valence and abs(valence[symbol] - float(z)) > 1e-9:
                raise ValueError(f"training snapshots use different pseudopotentials for {symbol}: "
                                 f"{valence[symbol]:g} and {float(z):g} valence electrons")
            valence[symbol] = float(z)
    missing = [s for s in spec.species if s not in valence]
    if missing:
        raise ValueError(f"no training snapshot says the valence electrons of {', '.join(missing)}")
    return {"valence_electrons": {s: valence[s] for s in spec.species}, "mesh_spacing_bohr": float(mesh)}


def _save_checkpoint(network, path, name, epoch, val_mae) -> None:
    from .model_files import save_model

    meta = {"name": f"{name}-checkpoint", "checkpoint": {"epoch": epoch, "val_mae": val_mae},
            "valence_electrons": {}, "mesh_spacing_bohr": 0.0}
    save_model(MLRhoModel(copy.deepcopy(network), meta), path)
