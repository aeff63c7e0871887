"""Model vs DFT on whole snapshots: the figures ``mlrho evaluate`` reports.

eps = (1/N_e) * integral |rho_pred - rho_DFT| dV, in %, with the prediction clipped at zero and
renormalised to N_e first (as every user of the density does); RMSE and NRMSE = RMSE / (max - min
of rho_DFT); coverage of the +/- 1, 2, 3 sigma intervals; miscalibration area; mean sigmas; the
eps the sigma predicts (``expected_eps_percent``) and its epistemic part (``epistemic_eps_percent``),
per electron like eps, so they compare across compositions with different electron densities.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .inference import FieldPrediction, expected_eps_percent, predict_field
from .uncertainty import coverage, miscalibration_area

__all__ = ["SnapshotMetrics", "eps_rho_percent", "field_metrics", "evaluate_snapshots", "pooled_metrics"]


@dataclass(frozen=True)
class SnapshotMetrics:
    name: str
    eps_rho_percent: float
    rmse_e_per_bohr3: float
    mae_e_per_bohr3: float
    nrmse_percent: float
    coverage_1sigma: float
    coverage_2sigma: float
    coverage_3sigma: float
    miscalibration_area: float
    sigma_aleatoric_mean_e_per_bohr3: float
    sigma_epistemic_mean_e_per_bohr3: float
    expected_eps_percent: float
    epistemic_eps_percent: float
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def eps_rho_percent(error, dv_bohr3: float, n_electrons: float) -> float:
    """The density error per electron, (1/N_e) * integral |error| dV, in %."""
    return float(100.0 * np.sum(np.abs(error)) * dv_bohr3 / n_electrons)


def field_metrics(name: str, rho_pred, rho_ref, sigma_ale, sigma_epi, dv_bohr3: float, n_electrons: float,
                  seconds: float = 0.0) -> SnapshotMetrics:
    """Metrics of a (renormalised) predicted field against the reference field."""
    rho_pred, rho_ref = np.ravel(rho_pred), np.ravel(rho_ref)
    err = rho_pred - rho_ref
    sig = np.sqrt(np.ravel(sigma_ale) ** 2 + np.ravel(sigma_epi) ** 2)
    rmse = float(np.sqrt(np.mean(err * err)))
    return SnapshotMetrics(
        name=name,
        eps_rho_percent=eps_rho_percent(err, dv_bohr3, n_electrons),
        rmse_e_per_bohr3=rmse,
        mae_e_per_bohr3=float(np.mean(np.abs(err))),
        nrmse_percent=float(100.0 * rmse / (rho_ref.max() - rho_ref.min())),
        coverage_1sigma=coverage(err, sig, 1),
        coverage_2sigma=coverage(err, sig, 2),
        coverage_3sigma=coverage(err, sig, 3),
        miscalibration_area=miscalibration_area(err, sig),
        sigma_aleatoric_mean_e_per_bohr3=float(np.mean(sigma_ale)),
        sigma_epistemic_mean_e_per_bohr3=float(np.mean(sigma_epi)),
        expected_eps_percent=expected_eps_percent(float(np.sum(sig)), dv_bohr3, n_electrons),
        epistemic_eps_percent=expected_eps_percent(float(np.sum(sigma_epi)), dv_bohr3, n_electrons),
        seconds=float(seconds),
    )


def evaluate_snapshots(model, snapshots, n_samples=None, seed: int = 0, progress: bool = False):
    """Predict every snapshot on its own SPARC grid. Returns (per-snapshot metrics, overall metrics,
    predictions)."""
    per, preds = [], []
    for snap in snapshots:
        t0 = time.perf_counter()
        pred = predict_field(model, snap.atoms, snap.grid, n_samples=n_samples, seed=seed, progress=progress)
        seconds = time.perf_counter() - t0
        per.append(field_metrics(snap.name, pred.density, snap.density_e_per_bohr3, pred.sigma_aleatoric,
                                 pred.sigma_epistemic, snap.grid.dv_bohr3, snap.n_electrons, seconds))
        preds.append(pred)
    return per, pooled_metrics(snapshots, preds, sum(m.seconds for m in per)), preds


def pooled_metrics(snapshots, preds: list[FieldPrediction], seconds: float) -> SnapshotMetrics:
    """The same metrics over all grid points of all snapshots together (eps weighted by electrons)."""
    err_abs_dv = sum(float(np.sum(np.abs(p.density - s.density_e_per_bohr3)) * s.grid.dv_bohr3)
                     for s, p in zip(snapshots, preds))
    n_e = sum(s.n_electrons for s in snapshots)
    ref = np.concatenate([s.density_e_per_bohr3.ravel() for s in snapshots])
    pred = np.concatenate([p.density.ravel() for p in preds])
    ale = np.concatenate([p.sigma_aleatoric.ravel() for p in preds])
    epi = np.concatenate([p.sigma_epistemic.ravel() for p in preds])
    m = field_metrics("overall", pred, ref, ale, epi, 1.0, 1.0, seconds)
    sig_dv = sum(float(np.sum(p.sigma_total) * s.grid.dv_bohr3) for s, p in zip(snapshots, preds))
    epi_dv = sum(float(np.sum(p.sigma_epistemic) * s.grid.dv_bohr3) for s, p in zip(snapshots, preds))
    return SnapshotMetrics(**{**m.to_dict(), "eps_rho_percent": 100.0 * err_abs_dv / n_e,
                              "expected_eps_percent": expected_eps_percent(sig_dv, 1.0, n_e),
                              "epistemic_eps_percent": expected_eps_percent(epi_dv, 1.0, n_e)})
