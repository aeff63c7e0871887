"""Second-order (screened) correction of a Harris-Foulkes energy from the same single diagonalisation.

Why. The Harris-Foulkes (HF) free energy of an input density rho_in = rho* + delta is stationary at
the SCF density rho*, and to second order (a standard linear-response expansion)

    E_HF[rho_in] - E*  =  -1/2 delta^T K eps delta,        eps = 1 - chi0 K,

with K the Hartree-xc kernel and chi0 the independent-particle response: always negative, and large
for the long-wavelength part of delta, where K ~ 4 pi / q^2 and, in a semiconductor or metal, the
dielectric function eps(q) is large. The one diagonalisation that gives E_HF also gives the output
density rho_out, and to first order its residual R = rho_out - rho_in = -eps delta. So the error
can be estimated without knowing rho*:

    E_HF - E*  ~  -1/2 Omega sum_G K(G) |R(G)|^2 / eps(G),

with R(G) the Fourier coefficients of R, Omega the cell volume, eps(G) a model dielectric function
of the material, and the sum over the long-wavelength components where the Hartree part dominates
the kernel. The corrected energy ``E_HF + correction`` then costs nothing beyond the HF run itself
(SPARC prints rho_out when its first mixing step is switched off).

Approximations, chosen from measurements on SiGe (``benchmarks/README.md``):

* eps is diagonal in G and isotropic: ``eps(q) = 1 + 1 / (1 / (eps0 - 1) + q^2 / k2)``, a
  Thomas-Fermi form (``k2`` = squared screening wave number) that saturates at ``eps0`` for an
  insulator; ``eps0 = inf`` is a metal. Its two parameters are fitted once per material
  (:func:`fit_screening`) on training cells, from their rho_in, rho_out and SCF density.
  The cells it is fitted on fix eps(q) only down to their smallest q (2 pi / L): below that
  (larger cells) eps0 is an extrapolation; the shipped SiGe fits (64-atom cells, q >= 0.30 / Bohr)
  gave eps0 = 158 and, for the session-12 model, infinity (k2 0.746 and 0.739 / Bohr^2), far above
  cold Si's ~12: 1/(eps0 - 1) << q^2/k2 leaves eps0 undetermined there. Refit on larger cells
  before trusting the correction of much larger ones.
* K(G) = 4 pi / q^2 + <f_xc>, with <f_xc> the cell average (the G = 0 component) of the LDA
  (Perdew-Wang 92) xc kernel at rho_in.
* Only components with K > 0 count (q below q* = sqrt(4 pi / -<f_xc>), about 1.5 / Bohr in
  SiGe): there the expansion is dominated by the Hartree term; at shorter wavelengths eps ~ 1 and
  the diagonal approximation of the local xc kernel fails.

Everything here is pure numerics on arrays: Hartree atomic units (Bohr, Ha, electrons/Bohr^3).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

__all__ = [
    "ScreeningModel",
    "SecondOrderCorrection",
    "LongWavelengthResidual",
    "pw92_xc_energy_density",
    "lda_xc_kernel",
    "mean_xc_kernel",
    "reciprocal_norms",
    "hartree_cutoff_per_bohr",
    "long_wavelength_components",
    "long_wavelength_residual",
    "second_order_correction",
    "all_wavelength_correction",
    "lda_xc_potential",
    "METHODS",
    "second_order_from_fourier",
    "correction_of",
    "fit_screening",
    "fit_screening_residuals",
    "METADATA_KEY",
]

METADATA_KEY = "hf_screening"
"""Key of a model file's metadata under which its fitted :class:`ScreeningModel` is stored."""

METHODS = ("long-wavelength", "all-wavelength")
"""How :func:`second_order_correction` estimates the error (``ScreeningModel.method``):

* ``long-wavelength`` -- 1/2 Omega sum K |R|^2 / eps over 0 < q < q*, K = 4 pi / q^2 + <f_xc> (the cell
  average of the LDA kernel): the Hartree-dominated components only. Right for bulk cells, where the
  density error is smooth; wrong at a defect, where the error is local and its short wavelengths count.
* ``all-wavelength`` -- every component: delta ~ -eps^-1 R (eps -> 1 at short wavelengths) gives the
  Hartree part 1/2 Omega sum_{G != 0} 4 pi / q^2 |R|^2 / eps and the xc part
  -1/2 int [v_xc(rho_in) - v_xc(rho_in - delta)] R dV with the LDA potential itself (a secant, not the
  kernel f_xc = dv_xc/dn, which diverges where the density nearly vanishes, e.g. inside a vacancy).
"""

KERNEL_DENSITY_FLOOR = 1e-4
"""Densities below this (e/Bohr^3) are raised to it before the xc kernel (~ -n^(-2/3)) is averaged,
so that near-empty grid points of a bulk cell cannot dominate the average."""


@dataclass(frozen=True)
class ScreeningModel:
    """Model dielectric function ``eps(q) = 1 + 1 / (1/(eps0 - 1) + q^2 / k2_per_bohr2)``.

    ``eps0``: static long-wavelength limit (``math.inf`` for a metal); ``k2_per_bohr2``: squared
    Thomas-Fermi screening wave number (1/Bohr^2). ``source`` records how it was obtained.
    """

    eps0: float
    k2_per_bohr2: float
    source: str = ""
    method: str = "long-wavelength"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown second-order method {self.method!r}; known: {', '.join(METHODS)}")
        if not (self.eps0 > 1.0):
            raise ValueError(f"eps0 must be > 1, got {self.eps0}")
        if not (self.k2_per_bohr2 > 0.0 and math.isfinite(self.k2_per_bohr2)):
            raise ValueError(f"k2_per_bohr2 must be a positive number, got {self.k2_per_bohr2}")

    def epsilon(self, q_per_bohr) -> np.ndarray:
        """eps(q) at wave numbers ``q_per_bohr`` (1/Bohr)."""
        q2 = np.asarray(q_per_bohr, dtype=np.float64) ** 2
        inv = 0.0 if math.isinf(self.eps0) else 1.0 / (self.eps0 - 1.0)
        return 1.0 + 1.0 / (inv + q2 / self.k2_per_bohr2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eps0"] = "inf" if math.isinf(self.eps0) else float(self.eps0)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ScreeningModel":
        return cls(eps0=float(d["eps0"]), k2_per_bohr2=float(d["k2_per_bohr2"]), source=str(d.get("source", "")),
                   method=str(d.get("method", "long-wavelength")))

    @classmethod
    def from_metadata(cls, metadata: dict) -> "ScreeningModel | None":
        """The screening model stored in a model file's metadata, or None; ValueError for a malformed entry."""
        from ase_mlrho.model_files import metadata_entry

        return metadata_entry(metadata, METADATA_KEY, cls.from_dict)


@dataclass(frozen=True, eq=False)
class LongWavelengthResidual:
    """What the correction needs from one diagonalisation: the Fourier coefficients ``residual_g``
    (R(G) = (1/N) FFT of rho_out - rho_in) at the components 0 < q < q*, their wave numbers
    ``q_per_bohr``, the cell volume and the mean xc kernel at rho_in (which fixes q*)."""

    q_per_bohr: np.ndarray
    residual_g: np.ndarray
    volume_bohr3: float
    mean_fxc_ha_bohr3: float

    @property
    def q_cut_per_bohr(self) -> float:
        return hartree_cutoff_per_bohr(self.mean_fxc_ha_bohr3)


@dataclass(frozen=True)
class SecondOrderCorrection:
    """The estimate: ``correction_ha`` (whole cell, add it to the HF energy), the kernel average and
    cut-off used, how many Fourier components entered, the method, its Hartree and xc parts (Ha, whole cell;
    None for ``long-wavelength``), and (not compared) the residual it came from."""

    correction_ha: float
    mean_fxc_ha_bohr3: float
    q_cut_per_bohr: float
    n_components: int
    residual: LongWavelengthResidual | None = field(default=None, compare=False, repr=False)
    method: str = "long-wavelength"
    hartree_ha: float | None = None
    xc_ha: float | None = None


# ----------------------------------------------------------------------------- LDA xc (PW92)
def pw92_xc_energy_density(n) -> np.ndarray:
    """LDA exchange-correlation energy per volume n*e_xc(n) (Ha/Bohr^3), Perdew-Wang 1992, unpolarised."""
    n = np.asarray(n, dtype=np.float64)
    rs = (3.0 / (4.0 * np.pi * n)) ** (1.0 / 3.0)
    e_x = -0.75 * (3.0 / np.pi) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    a, a1, b1, b2, b3, b4 = 0.031091, 0.21370, 7.5957, 3.5876, 1.6382, 0.49294
    den = 2.0 * a * (b1 * np.sqrt(rs) + b2 * rs + b3 * rs ** 1.5 + b4 * rs * rs)
    e_c = -2.0 * a * (1.0 + a1 * rs) * np.log1p(1.0 / den)
    return n * (e_x + e_c)


def lda_xc_potential(n) -> np.ndarray:
    """LDA xc potential v_xc(n) = d (n e_xc) / dn (Ha), central differences (relative step 1e-4)."""
    n = np.asarray(n, dtype=np.float64)
    if np.any(n <= 0):
        raise ValueError("the xc potential needs positive densities")
    h = 1e-4 * n
    return (pw92_xc_energy_density(n + h) - pw92_xc_energy_density(n - h)) / (2.0 * h)


def lda_xc_kernel(n) -> np.ndarray:
    """LDA xc kernel f_xc(n) = d^2 (n e_xc) / dn^2 (Ha Bohr^3), central differences (relative step 1e-3)."""
    n = np.asarray(n, dtype=np.float64)
    if np.any(n <= 0):
        raise ValueError("the xc kernel needs positive densities")
    h = 1e-3 * n
    return (pw92_xc_energy_density(n + h) - 2.0 * pw92_xc_energy_density(n) + pw92_xc_energy_density(n - h)) / (h * h)


def mean_xc_kernel(density_e_per_bohr3) -> float:
    """Cell average of the LDA xc kernel at the density (its G = 0 Fourier component)."""
    n = np.maximum(np.asarray(density_e_per_bohr3, dtype=np.float64), KERNEL_DENSITY_FLOOR)
    return float(np.mean(lda_xc_kernel(n)))


# ----------------------------------------------------------------------------- Fourier space
def reciprocal_norms(shape, cell_bohr) -> np.ndarray:
    """|G| (1/Bohr) of the FFT grid of a periodic cell (rows of ``cell_bohr`` = lattice vectors), in
    numpy's FFT order."""
    recip = 2.0 * np.pi * np.linalg.inv(np.asarray(cell_bohr, dtype=np.float64)).T
    k = np.meshgrid(*(np.fft.fftfreq(n, 1.0 / n) for n in shape), indexing="ij")
    g = sum(k[i][..., None] * recip[i] for i in range(3))
    return np.sqrt(np.sum(g * g, axis=-1))


def hartree_cutoff_per_bohr(mean_fxc_ha_bohr3: float) -> float:
    """q* where K = 4 pi / q^2 + <f_xc> changes sign; ValueError unless the kernel average is negative."""
    if not mean_fxc_ha_bohr3 < 0:
        raise ValueError(f"the mean xc kernel must be negative, got {mean_fxc_ha_bohr3}")
    return math.sqrt(4.0 * math.pi / -mean_fxc_ha_bohr3)


def long_wavelength_components(field_values, cell_bohr, q_cut_per_bohr: float) -> tuple[np.ndarray, np.ndarray]:
    """(q, F(G)) of a periodic grid field, F(G) = (1/N) FFT, at the components 0 < q < ``q_cut_per_bohr``."""
    field_values = np.asarray(field_values, dtype=np.float64)
    q = reciprocal_norms(field_values.shape, cell_bohr)
    m = (q > 1e-12) & (q < q_cut_per_bohr)
    return q[m], (np.fft.fftn(field_values) / field_values.size)[m]


def long_wavelength_residual(rho_in, rho_out, cell_bohr) -> LongWavelengthResidual:
    """The :class:`LongWavelengthResidual` of one diagonalisation on a periodic grid."""
    rho_in, rho_out = np.asarray(rho_in, dtype=np.float64), np.asarray(rho_out, dtype=np.float64)
    if rho_in.shape != rho_out.shape or rho_in.ndim != 3:
        raise ValueError(f"rho_in and rho_out must be 3-d arrays of one shape, got {rho_in.shape}, {rho_out.shape}")
    fxc = mean_xc_kernel(rho_in)
    q, r = long_wavelength_components(rho_out - rho_in, cell_bohr, hartree_cutoff_per_bohr(fxc))
    volume = abs(float(np.linalg.det(np.asarray(cell_bohr, dtype=np.float64))))
    return LongWavelengthResidual(q, r, volume, fxc)


def second_order_from_fourier(residual_g, q_per_bohr, volume_bohr3: float, mean_fxc_ha_bohr3: float,
                              screening: ScreeningModel) -> SecondOrderCorrection:
    """The correction from the residual's Fourier coefficients ``residual_g`` (R(G) = (1/N) FFT of
    rho_out - rho_in) at wave numbers ``q_per_bohr``: +1/2 Omega sum K |R|^2 / eps over 0 < q < q*."""
    q_cut = hartree_cutoff_per_bohr(mean_fxc_ha_bohr3)
    q = np.asarray(q_per_bohr, dtype=np.float64)
    r2 = np.abs(np.asarray(residual_g)) ** 2
    m = (q > 1e-12) & (q < q_cut)
    kernel = 4.0 * math.pi / q[m] ** 2 + mean_fxc_ha_bohr3
    corr = 0.5 * volume_bohr3 * float(np.sum(kernel * r2[m] / screening.epsilon(q[m])))
    return SecondOrderCorrection(corr, float(mean_fxc_ha_bohr3), q_cut, int(m.sum()))


def correction_of(residual: LongWavelengthResidual, screening: ScreeningModel) -> SecondOrderCorrection:
    """The correction of a :class:`LongWavelengthResidual` (which it keeps)."""
    c = second_order_from_fourier(residual.residual_g, residual.q_per_bohr, residual.volume_bohr3,
                                  residual.mean_fxc_ha_bohr3, screening)
    return replace(c, residual=residual)


#: densities are raised to this (e/Bohr^3) before the LDA potential of the all-wavelength xc part
POTENTIAL_DENSITY_FLOOR = 1e-8


def all_wavelength_correction(rho_in, rho_out, cell_bohr, screening: ScreeningModel) -> SecondOrderCorrection:
    """The ``all-wavelength`` estimate of E* - E_HF (Ha, whole cell); see :data:`METHODS`.

    delta(G) = -R(G) / eps(q) for G != 0 (R = rho_out - rho_in, both integrate to the same charge);
    Hartree part +1/2 Omega sum 4 pi / q^2 |R|^2 / eps; xc part -1/2 dV sum [v_xc(rho_in) - v_xc(rho_in -
    delta)] R with the LDA (PW92) potential, densities floored at :data:`POTENTIAL_DENSITY_FLOOR`.
    """
    rho_in, rho_out = np.asarray(rho_in, dtype=np.float64), np.asarray(rho_out, dtype=np.float64)
    if rho_in.shape != rho_out.shape or rho_in.ndim != 3:
        raise ValueError(f"rho_in and rho_out must be 3-d arrays of one shape, got {rho_in.shape}, {rho_out.shape}")
    cell = np.asarray(cell_bohr, dtype=np.float64)
    volume = abs(float(np.linalg.det(cell)))
    q = reciprocal_norms(rho_in.shape, cell)
    nonzero = q > 1e-12
    residual = rho_out - rho_in
    r_g = np.fft.fftn(residual) / residual.size
    eps = np.ones_like(q)
    eps[nonzero] = screening.epsilon(q[nonzero])
    hartree = 0.5 * volume * float(np.sum(4.0 * math.pi / q[nonzero] ** 2 * np.abs(r_g[nonzero]) ** 2
                                          / eps[nonzero]))
    delta_g = np.where(nonzero, -r_g / eps, 0.0)
    delta = np.real(np.fft.ifftn(delta_g * residual.size))
    floor = POTENTIAL_DENSITY_FLOOR
    v_in = lda_xc_potential(np.maximum(rho_in, floor))
    v_star = lda_xc_potential(np.maximum(rho_in - delta, floor))
    xc = -0.5 * (volume / residual.size) * float(np.sum((v_in - v_star) * residual))
    fxc = mean_xc_kernel(rho_in)
    return SecondOrderCorrection(hartree + xc, fxc, math.inf, int(nonzero.sum()), None, "all-wavelength",
                                 hartree, xc)


def second_order_correction(rho_in, rho_out, cell_bohr, screening: ScreeningModel) -> SecondOrderCorrection:
    """Estimated E* - E_HF (Ha, whole cell) from the input and output densities of one diagonalisation
    on the same periodic grid, by the screening model's method (see the module docstring and :data:`METHODS`)."""
    if screening.method == "all-wavelength":
        return all_wavelength_correction(rho_in, rho_out, cell_bohr, screening)
    return correction_of(long_wavelength_residual(rho_in, rho_out, cell_bohr), screening)


def fit_screening(cells, source: str = "") -> ScreeningModel:
    """Fit (eps0, k2) of :class:`ScreeningModel` to cells with known SCF densities.

    ``cells``: iterable of ``(rho_in, rho_out, rho_scf, cell_bohr)``; see :func:`fit_screening_residuals`.
    """
    pairs = []
    for rho_in, rho_out, rho_scf, cell in cells:
        rho_in = np.asarray(rho_in, dtype=np.float64)
        if rho_in.ndim != 3 or np.shape(rho_out) != rho_in.shape or np.shape(rho_scf) != rho_in.shape:
            raise ValueError(f"rho_in, rho_out and rho_scf must be 3-d arrays of one shape, got {rho_in.shape}, "
                             f"{np.shape(rho_out)}, {np.shape(rho_scf)}")
        residual = long_wavelength_residual(rho_in, rho_out, cell)
        _, delta_g = long_wavelength_components(rho_in - np.asarray(rho_scf), cell, residual.q_cut_per_bohr)
        pairs.append((residual, delta_g))
    return fit_screening_residuals(pairs, source)


def fit_screening_residuals(pairs, source: str = "") -> ScreeningModel:
    """Fit (eps0, k2) from ``(LongWavelengthResidual, delta_g)`` pairs, ``delta_g`` the Fourier
    coefficients of rho_in - rho_SCF at the same components.

    R(G) = -eps(q) delta(G) to first order; the fit minimises sum 4 pi / q^2 |R + eps delta|^2 over
    0 < q < q* (Hartree-weighted, the components the correction uses), each cell's terms divided by
    its own sum 4 pi / q^2 |R|^2 so that every cell counts alike however large its density error,
    by least squares in (log(eps0 - 1), log k2). A fit that runs to the upper bound of ``eps0``
    (1 + e^12) is a metal: ``eps0`` is then returned as infinity (pure Thomas-Fermi screening),
    which is what the bound stood for.
    """
    from scipy.optimize import least_squares

    blocks = []
    for residual, delta_g in pairs:
        q, r = residual.q_per_bohr, residual.residual_g
        w = np.sqrt(4.0 * math.pi) / q
        norm = float(np.linalg.norm(w * r))
        if not norm > 0:
            raise ValueError("a calibration cell has no long-wavelength residual (rho_out = rho_in?)")
        blocks.append((q, r, np.asarray(delta_g), w / norm))
    if not blocks:
        raise ValueError("fit_screening needs at least one cell")

    def residuals(p):
        model = ScreeningModel(1.0 + math.exp(p[0]), math.exp(p[1]))
        out = [(w * (r + model.epsilon(q) * d)) for q, r, d, w in blocks]
        return np.concatenate([np.concatenate([o.real, o.imag]) for o in out])

    upper = 12.0
    fit = least_squares(residuals, x0=[math.log(9.0), math.log(1.0)], bounds=([-5.0, -10.0], [upper, 5.0]))
    eps0 = math.inf if fit.x[0] > upper - 1e-3 else 1.0 + math.exp(fit.x[0])
    return ScreeningModel(eps0, math.exp(fit.x[1]), source)
