"""Second-order screened correction of Harris-Foulkes energies (sparc_bridge.screening).

References: published LDA correlation energies, an analytic exchange kernel, a brute-force
discrete Fourier sum, exact linear-response data with known parameters, and real SPARC runs
(the long-wavelength residual components of four SiGe cells, committed as a fixture).
"""

import math
from pathlib import Path

import numpy as np
import pytest

from sparc_bridge.screening import (
    ScreeningModel,
    fit_screening,
    lda_xc_kernel,
    mean_xc_kernel,
    pw92_xc_energy_density,
    reciprocal_norms,
    second_order_correction,
    second_order_from_fourier,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sige_hf_second_order.npz"
ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = ("sige_T=1200_seed=6", "sige_x=0.5_n=2_T=600_seed=21", "sige_x=0.5_n=2_T=1800_seed=22")


# ----------------------------------------------------------------------------- LDA pieces
@pytest.mark.parametrize("rs, ec_ha", [(1.0, -0.0598), (2.0, -0.0448), (5.0, -0.0282), (10.0, -0.0186)])
def test_pw92_correlation_energy_per_electron(rs, ec_ha):
    # Ceperley-Alder / Perdew-Wang 92 correlation energies of the uniform gas (Ha per electron)
    n = 3.0 / (4.0 * math.pi * rs ** 3)
    e_x = -0.75 * (3.0 / math.pi) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    assert float(pw92_xc_energy_density(n)) / n - e_x == pytest.approx(ec_ha, abs=2e-4)


def test_xc_kernel_against_exchange_and_polynomial_derivative():
    n = np.array([1e-3, 0.01, 0.05, 0.2])
    f = lda_xc_kernel(n)
    f_x = -(1.0 / 3.0) * (3.0 / math.pi) ** (1.0 / 3.0) * n ** (-2.0 / 3.0)  # analytic exchange kernel
    # correlation makes the kernel more negative, by less than the exchange part
    assert np.all(f < f_x) and np.all(f > 2 * f_x)
    for ni, fi in zip(n, f):  # an independent second derivative: a quartic through 9 points within +-4 %
        x = ni * np.linspace(0.96, 1.04, 9)
        c = np.polyfit(x - ni, pw92_xc_energy_density(x), 4)
        assert fi == pytest.approx(2 * c[-3], rel=1e-4)
    with pytest.raises(ValueError, match="positive"):
        lda_xc_kernel(np.array([0.1, 0.0]))
    # the cell average floors near-empty points instead of letting them dominate
    assert mean_xc_kernel(np.array([0.0, 0.05])) == pytest.approx(float(np.mean(lda_xc_kernel(np.array([1e-4, 0.05])))))


# ----------------------------------------------------------------------------- the correction
def _triclinic_cell():
    return np.array([[7.0, 0.0, 0.0], [1.5, 6.5, 0.0], [0.7, -0.9, 8.0]])


def test_correction_equals_brute_force_fourier_sum():
    rng = np.random.default_rng(3)
    shape, cell = (6, 5, 7), _triclinic_cell()
    rho_in = 0.05 + 0.01 * rng.random(shape)
    rho_out = rho_in + 1e-3 * rng.standard_normal(shape)
    screening = ScreeningModel(12.0, 0.9)
    got = second_order_correction(rho_in, rho_out, cell, screening)

    # brute force: explicit DFT over the nodes, explicit G = h b1 + k b2 + l b3 with the FFT's aliasing
    fxc = float(np.mean(lda_xc_kernel(rho_in)))
    q_cut = math.sqrt(4 * math.pi / -fxc)
    recip = 2 * math.pi * np.linalg.inv(cell).T
    volume = abs(np.linalg.det(cell))
    frac = np.stack(np.meshgrid(*(np.arange(n) / n for n in shape), indexing="ij"), -1).reshape(-1, 3)
    r_flat = (rho_out - rho_in).reshape(-1)
    total, count = 0.0, 0
    for h in range(shape[0]):
        for k in range(shape[1]):
            for l in range(shape[2]):
                m = np.array([h if h <= shape[0] // 2 else h - shape[0], k if k <= shape[1] // 2 else k - shape[1],
                              l if l <= shape[2] // 2 else l - shape[2]])
                g = m @ recip
                q = float(np.linalg.norm(g))
                if q == 0 or q >= q_cut:
                    continue
                rg = np.sum(r_flat * np.exp(-2j * math.pi * (frac @ np.array([h, k, l])))) / r_flat.size
                eps = 1 + 1 / (1 / (12.0 - 1) + q * q / 0.9)
                total += 0.5 * volume * (4 * math.pi / q ** 2 + fxc) * abs(rg) ** 2 / eps
                count += 1
    assert got.n_components == count > 10
    assert got.correction_ha == pytest.approx(total, rel=1e-10)
    assert got.q_cut_per_bohr == pytest.approx(q_cut) and got.mean_fxc_ha_bohr3 == pytest.approx(fxc)


def test_fit_recovers_screening_and_correction_is_exact_in_linear_response():
    # synthetic cells where rho_out - rho_in = -eps(q) (rho_in - rho_scf) holds exactly
    rng = np.random.default_rng(7)
    truth = ScreeningModel(11.0, 0.75)
    cells = []
    for cell in (np.diag([20.0, 20.0, 20.0]), _triclinic_cell() * 2.5):
        shape = (24, 22, 26)
        rho_scf = 0.06 + 0.01 * rng.random(shape)
        q = reciprocal_norms(shape, cell)
        delta_g = np.fft.fftn(1e-3 * rng.standard_normal(shape)) * np.exp(-q ** 2)  # a smooth error
        delta_g[0, 0, 0] = 0.0
        delta = np.real(np.fft.ifftn(delta_g))
        residual = np.real(np.fft.ifftn(-truth.epsilon(q) * np.fft.fftn(delta)))
        rho_in = rho_scf + delta
        cells.append((rho_in, rho_in + residual, rho_scf, cell, delta))
    fitted = fit_screening([c[:4] for c in cells], source="synthetic")
    assert fitted.eps0 == pytest.approx(11.0, rel=1e-6) and fitted.k2_per_bohr2 == pytest.approx(0.75, rel=1e-6)
    assert fitted.source == "synthetic"
    for rho_in, rho_out, _, cell, delta in cells:
        # the second-order HF error -1/2 Omega sum K eps |delta|^2 over the same components, from delta itself
        corr = second_order_correction(rho_in, rho_out, cell, fitted)
        q = reciprocal_norms(rho_in.shape, cell)
        m = (q > 0) & (q < corr.q_cut_per_bohr)
        d_g = np.fft.fftn(delta) / delta.size
        expected = 0.5 * abs(np.linalg.det(cell)) * np.sum(
            (4 * np.pi / q[m] ** 2 + corr.mean_fxc_ha_bohr3) * truth.epsilon(q[m]) * np.abs(d_g[m]) ** 2)
        assert corr.correction_ha == pytest.approx(expected, rel=1e-6)


def test_screening_model_checks_and_round_trip():
    for bad in ({"eps0": 1.0, "k2_per_bohr2": 1.0}, {"eps0": 5.0, "k2_per_bohr2": 0.0},
                {"eps0": 5.0, "k2_per_bohr2": float("nan")}):
        with pytest.raises(ValueError):
            ScreeningModel(**bad)
    metal = ScreeningModel(math.inf, 0.8, "Thomas-Fermi")
    assert metal.epsilon(0.5) == pytest.approx(1 + 0.8 / 0.25)  # Thomas-Fermi
    assert ScreeningModel.from_dict(metal.to_dict()) == metal
    insulator = ScreeningModel(12.0, 0.8)
    assert insulator.epsilon(1e-9) == pytest.approx(12.0)
    assert ScreeningModel.from_metadata({"hf_screening": insulator.to_dict()}) == insulator
    assert ScreeningModel.from_metadata({}) is None
    with pytest.raises(ValueError, match="negative"):
        second_order_from_fourier(np.ones(3), np.ones(3), 1.0, 0.5, insulator)
    with pytest.raises(ValueError, match="3-d"):
        second_order_correction(np.ones((4, 4)), np.ones((4, 4)), np.eye(3), insulator)
