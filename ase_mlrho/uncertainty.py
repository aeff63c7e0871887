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
    "reliability_curve", "plot_reliability", "plot_uncertainty_slice", "plot_uncertainty_plane",
    "combine_sigmas",
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
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_write

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
    try:  # never a half-written figure; the figure is closed whatever happens
        fmt = Path(path).suffix.lstrip(".").lower() or "png"
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=130), binary=True)
    finally:
        plt.close(fig)


def plot_uncertainty_slice(field, atoms, path, ood_threshold_e_per_bohr3: float | None = None,
                           title: str = "") -> tuple[int, int, int]:
    """Save a figure of a prediction where the model is least sure, and return that grid node (i, j, k).

    ``field`` is a :class:`~ase_mlrho.inference.FieldPrediction` in memory, ``atoms`` the ``ase.Atoms``
    it was predicted for (Angstrom). The node is the one of largest epistemic sigma; the figure is
    :func:`plot_uncertainty_plane`'s. (A zarr store: :func:`ase_mlrho.sinks.largest_epistemic_plane`.)"""
    from .sinks import SIGMA_FIELDS  # (sinks imports this module: not at the top)

    node = tuple(int(n) for n in np.unravel_index(int(np.argmax(field.sigma_epistemic)), field.grid.shape))
    i, j, k = node
    plane = {n: getattr(field, n)[:, :, k] for n in SIGMA_FIELDS}
    line = {n: getattr(field, n)[:, j, k] for n in SIGMA_FIELDS}
    plot_uncertainty_plane(field.grid, node, plane, line, field.renormalisation_factor, atoms, path,
                           ood_threshold_e_per_bohr3, title)
    return node


def plot_uncertainty_plane(grid, node, plane: dict, line: dict, renormalisation_factor: float, atoms, path,
                           ood_threshold_e_per_bohr3: float | None = None, title: str = "") -> None:
    """Save a figure of the grid plane k through ``node`` = (i, j, k), the node of largest epistemic sigma.

    ``plane`` holds the (Nx, Ny) arrays ``density``, ``sigma_aleatoric`` and ``sigma_epistemic`` at that k,
    ``line`` the (Nx,) arrays at (j, k), e/Bohr^3 as written (scaled by ``renormalisation_factor``).
    Panels: (1) the density, with the atoms within one plane spacing of the plane; (2) the epistemic
    sigma as predicted (before the renormalisation) over the model's out-of-distribution threshold (the
    validation cells' p99.9), with the contour where it crosses 1, or the epistemic sigma itself when the
    model stores no threshold; (3) the line along the first lattice vector through the node: the mean
    density and its +/- 3 sigma bands (total and epistemic). Axes are node index x node spacing along
    the first two lattice vectors, in Bohr (exact distances for orthogonal cells). Written atomically (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.units import Bohr

    from .files import atomic_write

    i, j, k = node
    h = grid.spacing_bohr
    extent = (-0.5 * h[0], (grid.shape[0] - 0.5) * h[0], -0.5 * h[1], (grid.shape[1] - 0.5) * h[1])
    frac = atoms.cell.scaled_positions(atoms.positions)
    frac[:, list(grid.pbc)] %= 1.0
    atom_nodes = frac * np.asarray(grid.intervals, dtype=np.float64)  # atom positions in node units
    dk = atom_nodes[:, 2] - k
    if grid.pbc[2]:
        dk = (dk + grid.intervals[2] / 2) % grid.intervals[2] - grid.intervals[2] / 2
    near = np.abs(dk) <= 1.0 + 1e-9

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    im = ax.imshow(plane["density"].T, origin="lower", extent=extent, cmap="viridis")
    ax.plot(atom_nodes[near, 0] * h[0], atom_nodes[near, 1] * h[1], "o", mfc="none", mec="w", ms=7,
            label=f"atoms within one plane spacing ({int(near.sum())})")
    ax.plot(i * h[0], j * h[1], "r+", ms=12, mew=2, label="largest epistemic sigma")
    fig.colorbar(im, ax=ax, label="density (e/Bohr^3)")
    ax.set_title(f"density, plane k = {k} of {grid.shape[2]}")
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[1]
    epi = plane["sigma_epistemic"].T
    if ood_threshold_e_per_bohr3:  # the threshold is on the sigma as predicted, before the renormalisation scaled it
        ratio = epi / renormalisation_factor / ood_threshold_e_per_bohr3
        im = ax.imshow(ratio, origin="lower", extent=extent, cmap="magma")
        if ratio.min() < 1.0 < ratio.max():
            ax.contour(ratio, levels=[1.0], colors="c", extent=extent, origin="lower")
        fig.colorbar(im, ax=ax, label="epistemic sigma / out-of-distribution threshold")
        ax.set_title(f"epistemic sigma; cyan: the threshold ({ood_threshold_e_per_bohr3:.3g} e/Bohr^3)")
    else:
        im = ax.imshow(epi, origin="lower", extent=extent, cmap="magma")
        fig.colorbar(im, ax=ax, label="epistemic sigma (e/Bohr^3)")
        ax.set_title("epistemic sigma")
    ax.plot(i * h[0], j * h[1], "w+", ms=12, mew=2)  # the node (white); cyan is the threshold's contour
    for ax in axes[:2]:
        ax.set_xlabel("along a (Bohr)")
        ax.set_ylabel("along b (Bohr)")
    ax = axes[2]
    x = np.arange(grid.shape[0]) * h[0]
    mu, epi_line = line["density"], line["sigma_epistemic"]
    tot = np.sqrt(line["sigma_aleatoric"] ** 2 + epi_line ** 2)
    ax.fill_between(x, mu - 3 * tot, mu + 3 * tot, color="C0", alpha=0.25, label="+/- 3 sigma (total)")
    ax.fill_between(x, mu - 3 * epi_line, mu + 3 * epi_line,
                    color="C3", alpha=0.4, label="+/- 3 sigma (epistemic)")
    ax.plot(x, mu, "k-", lw=1.2, label="predicted density")
    ax.axvline(i * h[0], color="r", lw=0.8, ls=":")
    ax.set_xlabel("along a (Bohr), through the largest epistemic sigma")
    ax.set_ylabel("density (e/Bohr^3)")
    ax.legend(fontsize=7)
    position = grid.points_bohr_at(np.array([np.ravel_multi_index((i, j, k), grid.shape)]))[0] * Bohr
    fig.suptitle(f"{title}  largest epistemic sigma {epi_line[i]:.3g} e/Bohr^3 at node "
                 f"({i}, {j}, {k}) = ({position[0]:.2f}, {position[1]:.2f}, {position[2]:.2f}) Angstrom".strip())
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)
