"""Uncertainty: decomposition, calibration metrics and post-hoc calibration.

Total variance = aleatoric (the learned noise sigma^2, averaged over weight samples) + epistemic
(the variance of the predicted mean over weight samples). Calibration is judged on held-out
snapshots by how often the truth falls inside the central +/- k sigma intervals (a calibrated model
covers 68.3 %, 95.4 %, 99.7 % at k = 1, 2, 3), by the miscalibration area (mean absolute gap between
observed and expected coverage over all confidence levels), the Gaussian NLL and the sharpness
(mean sigma: narrower is better at equal calibration).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf, erfinv

__all__ = [
    "coverage", "miscalibration_area", "gaussian_nll", "sharpness", "calibration_scale",
    "tail_calibration_scale", "calibrated_scale", "expected_coverage",
    "reliability_curve", "plot_reliability", "combine_sigmas",
]


def combine_sigmas(sigma_aleatoric, sigma_epistemic):
    """Total sigma = sqrt(aleatoric^2 + epistemic^2)."""
    return np.sqrt(np.asarray(sigma_aleatoric) ** 2 + np.asarray(sigma_epistemic) ** 2)


def _z(error, sigma):
    """|error| / sigma as a flat array (fields of any shape pool all their points)."""
    e = np.ravel(np.asarray(error, dtype=np.float64))
    return np.abs(e) / np.maximum(np.ravel(np.asarray(sigma, dtype=np.float64)), 1e-300)


def coverage(error, sigma, k: float) -> float:
    """Fraction of points with |error| <= k sigma."""
    return float(np.mean(_z(error, sigma) <= k))


def reliability_curve(error, sigma, n_levels: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """Expected vs observed coverage of central Gaussian intervals at confidence levels 1/(n+1)..n/(n+1)."""
    expected = np.arange(1, n_levels + 1) / (n_levels + 1)
    z = np.sort(_z(error, sigma))
    k = np.sqrt(2.0) * erfinv(expected)  # half-width in sigmas of the central interval
    observed = np.searchsorted(z, k, side="right") / z.size
    return expected, observed


def miscalibration_area(error, sigma, n_levels: int = 99) -> float:
    """Mean |observed - expected| coverage over confidence levels (0 = perfectly calibrated)."""
    expected, observed = reliability_curve(error, sigma, n_levels)
    return float(np.mean(np.abs(observed - expected)))


def gaussian_nll(error, sigma) -> float:
    """Mean negative log-likelihood of the errors under N(0, sigma^2)."""
    s = np.maximum(np.asarray(sigma, dtype=np.float64), 1e-300)
    e = np.asarray(error, dtype=np.float64)
    return float(np.mean(0.5 * np.log(2 * np.pi * s * s) + 0.5 * (e / s) ** 2))


def sharpness(sigma) -> float:
    """Mean predicted sigma."""
    return float(np.mean(sigma))


def calibration_scale(error, sigma) -> float:
    """The factor c that minimises the Gaussian NLL of ``error`` under N(0, (c sigma)^2):
    c^2 = mean((error / sigma)^2). Fitted on validation snapshots, never on test data."""
    z = np.asarray(error, dtype=np.float64) / np.maximum(np.asarray(sigma, dtype=np.float64), 1e-300)
    return float(np.sqrt(np.mean(z * z)))


def tail_calibration_scale(error, sigma, k: float = 3.0) -> float:
    """The factor c at which the +/- k (c sigma) interval covers the Gaussian share erf(k/sqrt 2)
    of the points (99.73 % at k = 3): the empirical quantile of |error|/sigma, divided by k."""
    return float(np.quantile(_z(error, sigma), expected_coverage(k)) / k)


def calibrated_scale(error, sigma, k: float = 3.0) -> float:
    """The calibration factor used for shipped models: the NLL-optimal factor, raised where needed
    so that the +/- k sigma interval covers as often as a Gaussian's would. Density errors have
    heavier tails than a Gaussian, and users read the +/- 3 sigma band as a near-certain bound."""
    return max(calibration_scale(error, sigma), tail_calibration_scale(error, sigma, k))


def expected_coverage(k: float) -> float:
    """Coverage of a calibrated Gaussian within +/- k sigma."""
    return float(erf(k / np.sqrt(2.0)))


def plot_reliability(error, sigma, path, title: str = "Reliability diagram") -> None:
    """Save a reliability diagram (observed vs expected coverage) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    expected, observed = reliability_curve(error, sigma)
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.plot(expected, observed, "C0-", lw=2, label="model")
    ax.fill_between(expected, expected, observed, color="C0", alpha=0.2,
                    label=f"miscalibration area {np.mean(np.abs(observed - expected)):.3f}")
    for k in (1, 2, 3):
        ax.plot(expected_coverage(k), coverage(error, sigma, k), "o", color=f"C{k}",
                label=f"{k} sigma: {100 * coverage(error, sigma, k):.1f} % (ideal {100 * expected_coverage(k):.1f} %)")
    ax.set_xlabel("expected coverage")
    ax.set_ylabel("observed coverage")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
