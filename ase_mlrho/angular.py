"""Set III: the rotation-invariant angular power spectrum of the atoms around a grid point.

Sets I and II describe the neighbourhood of x by sorted distances and by a few cosines measured
from the nearest atoms' own neighbours; neither says how the nearest atoms are arranged *around x*
(two atoms on the same side of x vs on opposite sides give the same Set I). Set III adds that, as
the power spectrum of a smooth neighbour density centred on x (a SOAP-like 3-body invariant):

    c_nlm(x) = sum_i g_n(d_i) f_c(d_i) Y_lm(u_i),       d_i = |r_i - x|, u_i = (r_i - x) / d_i
    p_nn'l(x) = sum_m c_nlm c_n'lm                         (n <= n', l = 0..l_max)

with Gaussian radial channels g_n(d) = exp(-(d - r_n)^2 / 2w^2), a smooth cosine cut-off
f_c(d) = (1 + cos(pi d / r_cut)) / 2 and real orthonormal spherical harmonics Y_lm. The sum runs
over every atom image within r_cut of x, so p is smooth in x and in the atomic positions, and
invariant to rotations (sum over m), translations and permutations.

Pure functions; float64.
"""

from __future__ import annotations

import math

import numpy as np

from .threads import torch_threads

__all__ = ["real_spherical_harmonics", "real_harmonic_norms", "power_spectrum", "power_spectrum_tensor", "cosine_cutoff", "n_power_spectrum"]


def cosine_cutoff(d: np.ndarray, r_cut: float) -> np.ndarray:
    return np.where(d < r_cut, 0.5 * (1.0 + np.cos(np.pi * np.minimum(d, r_cut) / r_cut)), 0.0)


def real_spherical_harmonics(u, l_max: int):
    """Real orthonormal spherical harmonics of unit vectors ``u`` (..., 3): (..., (l_max+1)^2),
    ordered l = 0..l_max, m = -l..l. Built from the Cartesian recursion of the associated
    Legendre functions (no angles, no special functions). Works on numpy arrays and torch tensors."""
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    norms = real_harmonic_norms(l_max)
    comps = [None] * ((l_max + 1) ** 2)
    # (x + i y)^m = C_m + i S_m
    c_m, s_m = [x * 0 + 1.0], [x * 0]
    for _ in range(l_max):
        c_m.append(c_m[-1] * x - s_m[-1] * y)
        s_m.append(c_m[-2] * y + s_m[-1] * x)
    for m in range(l_max + 1):
        # Q_l^m(z) = P_l^m(z) / sin^m(theta), a polynomial in z (Condon-Shortley phase dropped)
        q_prev2, q_prev = None, z * 0 + float(_double_factorial(2 * m - 1))
        for l in range(m, l_max + 1):
            if l == m:
                q = q_prev
            elif l == m + 1:
                q = z * (2 * m + 1) * q_prev
            else:
                q = ((2 * l - 1) * z * q_prev - (l + m - 1) * q_prev2) / (l - m)
            norm = float(norms[l, m])
            if m == 0:
                comps[l * l + l] = norm * q
            else:
                comps[l * l + l + m] = norm * q * c_m[m]
                comps[l * l + l - m] = norm * q * s_m[m]
            if l > m:
                q_prev2, q_prev = q_prev, q
    if isinstance(u, np.ndarray):
        return np.stack(comps, axis=-1)
    import torch

    return torch.stack(comps, dim=-1)


def real_harmonic_norms(l_max: int) -> np.ndarray:
    """(l_max+1, l_max+1) normalisation of the real harmonics at [l, m], m <= l (sqrt 2 included for m > 0)."""
    out = np.zeros((l_max + 1, l_max + 1))
    for l in range(l_max + 1):
        for m in range(l + 1):
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
            out[l, m] = norm if m == 0 else math.sqrt(2.0) * norm
    return out


def _double_factorial(n: int) -> int:
    return 1 if n <= 0 else n * _double_factorial(n - 2)


def n_power_spectrum(n_radial: int, l_max: int) -> int:
    return (l_max + 1) * n_radial * (n_radial + 1) // 2


def power_spectrum(dist: np.ndarray, disp: np.ndarray, centers_bohr, width_bohr: float, r_cut_bohr: float,
                   l_max: int, dtype=np.float64) -> np.ndarray:
    """(P, n_power_spectrum) power spectrum from neighbour distances (P, K) and displacement vectors
    (P, K, 3); neighbours beyond r_cut (or padded with inf distance) contribute nothing.
    Computed with torch (batched matrix products) on one thread (see threads.py), in ``dtype``:
    float64 for reference values, float32 (relative error ~1e-6, twice as fast) for model input."""
    with torch_threads(1):
        return _power_spectrum(dist, disp, centers_bohr, width_bohr, r_cut_bohr, l_max, dtype)


def _power_spectrum(dist, disp, centers_bohr, width_bohr, r_cut_bohr, l_max, dtype=np.float64):
    import torch

    d = torch.as_tensor(np.asarray(dist, dtype=dtype))
    v = torch.as_tensor(np.asarray(disp, dtype=dtype))
    return power_spectrum_tensor(d, v, centers_bohr, width_bohr, r_cut_bohr, l_max).numpy()


def power_spectrum_tensor(d, v, centers_bohr, width_bohr: float, r_cut_bohr: float, l_max: int):
    """:func:`power_spectrum` on torch tensors (P, K) and (P, K, 3), in their dtype and on their device."""
    import torch

    centers = torch.as_tensor(np.asarray(centers_bohr), dtype=d.dtype, device=d.device)
    n = len(centers)
    inside = d < r_cut_bohr
    weight = torch.where(inside, 0.5 * (1.0 + torch.cos(torch.clamp(d, max=r_cut_bohr) * (math.pi / r_cut_bohr))), 0.0)
    g = torch.exp(-((d.unsqueeze(-1) - centers) ** 2) / (2.0 * width_bohr ** 2)) * weight.unsqueeze(-1)  # (P, K, n)
    at_x = d < 1e-8  # an atom at x: any direction will do (only l = 0 survives the sum over m)
    u = v / torch.where(at_x, 1.0, d).unsqueeze(-1)
    u = torch.where(at_x.unsqueeze(-1), torch.tensor([0.0, 0.0, 1.0], dtype=u.dtype, device=u.device), u)
    ylm = real_spherical_harmonics(u, l_max)  # (P, K, (L+1)^2)
    c = torch.bmm(g.transpose(1, 2), ylm)  # (P, n, (L+1)^2)
    iu = torch.triu_indices(n, n, device=d.device)
    out = []
    for l in range(l_max + 1):
        cl = c[:, :, l * l:(l + 1) * (l + 1)]
        p = torch.bmm(cl, cl.transpose(1, 2))
        out.append(p[:, iu[0], iu[1]])
    return torch.cat(out, dim=1)
