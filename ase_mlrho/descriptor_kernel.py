"""Sets I, II and III of compact blocks of grid points in one compiled loop per point (numba, CPU).

The same selection as :class:`~ase_mlrho.dense_descriptors.DenseDescriptors` (the atom images within
a radius of a block's centre are known before any point is looked at), without the dense tensors:
for each point the distances to the block's images are formed once, in float64, and

* Set I keeps the M nearest with an insertion into a sorted list (no full sort);
* Set II takes the M_s nearest atoms' neighbour tables (the same per-atom tables and the same
  "nearest shell first, then the largest cosines" rule as :meth:`Descriptors._set2`);
* Set III accumulates c_nlm = sum_i g_n(d_i) f_c(d_i) Y_lm(u_i) over the images within the cut-off,
  with the real spherical harmonics of :func:`~ase_mlrho.angular.real_spherical_harmonics` by the
  same recursion, then p_nn'l = sum_m c_nlm c_n'lm in the layout of
  :func:`~ase_mlrho.angular.power_spectrum_tensor`.

Everything is float64 until the float32 output, so the result is the float64 reference rounded
once. Points the block cannot vouch for (an M-th distance or the Set III sphere beyond the block's
selection, or M_s + 1 nearest distances within ``tie_bohr`` of each other, which Set II orders by a
rule of its own) are flagged, and the caller gives them to the float64 reference.

Also here, for the same CPU path: :func:`radial_baseline_sums`, every ensemble member's radial
baseline (a table interpolated at the Set I distances) in one loop.

Why: on a CPU the k-d tree queries and the batched torch Set III cost ~14 us per point (two thirds
of a prediction, ``benchmarks/profile_stages.py``); this loop does the same work in ~4.4 us (session 7).
Units: Bohr.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .angular import _double_factorial, real_harmonic_norms
from .descriptors import TIE_TOLERANCE_BOHR

try:  # numba is a dependency; the torch path remains the definition and the fallback
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is missing
    njit = None

__all__ = ["AVAILABLE", "species_block", "radial_baseline_sums"]

AVAILABLE = njit is not None


def _ylm(x, y, z, l_max, norms, dfact, rec_a, rec_b, c_m, s_m, out):
    """Real orthonormal Y_lm of the unit vector (x, y, z) into ``out`` ((l_max+1)^2, index l*l + l + m):
    Q_l^m(z) = P_l^m(z) / sin^m(theta) by the upward recursion in l, with the coefficients
    (2l-1)/(l-m) and (l+m-1)/(l-m) tabulated (:func:`_harmonic_tables`), times cos(m phi) and sin(m phi)
    sin^m(theta) from (x + i y)^m."""
    c_m[0] = 1.0
    s_m[0] = 0.0
    for m in range(1, l_max + 1):
        c_m[m] = c_m[m - 1] * x - s_m[m - 1] * y
        s_m[m] = c_m[m - 1] * y + s_m[m - 1] * x
    for m in range(l_max + 1):
        q2 = 0.0
        q1 = dfact[m]
        for l in range(m, l_max + 1):
            if l == m + 1:
                q = z * (2 * m + 1) * q1
            elif l > m + 1:
                q = rec_a[l, m] * z * q1 - rec_b[l, m] * q2
            else:
                q = q1
            nq = norms[l, m] * q
            if m == 0:
                out[l * l + l] = nq
            else:
                out[l * l + l + m] = nq * c_m[m]
                out[l * l + l - m] = nq * s_m[m]
            if l > m:
                q2 = q1
                q1 = q


@functools.lru_cache(maxsize=8)
def _harmonic_tables(l_max: int) -> tuple[np.ndarray, ...]:
    """The constants of :func:`_ylm` (made once per l_max, not per batch): the normalisations of
    :func:`~ase_mlrho.angular.real_harmonic_norms`, (2m-1)!!, and the recursion coefficients
    (2l-1)/(l-m) and (l+m-1)/(l-m) for l >= m + 2 (zero elsewhere)."""
    dfact = np.array([float(_double_factorial(2 * m - 1)) for m in range(l_max + 1)])
    a, b = np.zeros((l_max + 1, l_max + 1)), np.zeros((l_max + 1, l_max + 1))
    for l in range(l_max + 1):
        for m in range(max(0, l - 1)):
            a[l, m] = (2 * l - 1) / (l - m)
            b[l, m] = (l + m - 1) / (l - m)
    return real_harmonic_norms(l_max), dfact, a, b


def _species_block(x, room, counts, img, img_r, idx, m, m_s, k, cand, n_cand, shell, l_max, centers, width, r_cut,
                   norms, dfact, rec_a, rec_b, tie_bohr, on_atom_bohr, out, offset, bad):
    """Fill ``out[b, p, offset:offset + n_per_species]`` (float32) for every block b and point p, and
    set ``bad[b, p]`` (uint8) where the selection cannot vouch for the point: 1 when its descriptor
    reaches beyond the selection, 2 when its nearest atoms are tied. Padding rows have room < 0.

    x (B, P, 3), room (B, P): points relative to their block's centre, and the radius left around
    each; counts (B,), img (B, C, 3), img_r (B, C), idx (B, C): the block's images of this species
    (relative to the centre, nearest to the centre first), their distances from it, and their atom
    numbers in the Set II tables cand (N, Cc, 3) / n_cand (N,) / shell (N, Cc)."""
    n_b, n_p = room.shape
    n_rad = centers.shape[0]
    n_lm = (l_max + 1) * (l_max + 1)
    c_max = img.shape[1]
    dist = np.empty(c_max)
    dvec = np.empty((c_max, 3))
    top_d = np.empty(m)
    top_j = np.empty(m, np.int64)
    c_nlm = np.zeros((max(n_rad, 1), max(n_lm, 1)))
    ylm = np.empty(max(n_lm, 1))
    g = np.empty(max(n_rad, 1))
    c_m = np.empty(l_max + 2)
    s_m = np.empty(l_max + 2)
    n_cc = cand.shape[1]
    cosv = np.empty(max(n_cc, 1))
    keyv = np.empty(max(n_cc, 1))
    pick = np.empty(max(k, 1))
    inv_2w2 = 1.0 / (2.0 * width * width) if width > 0 else 0.0
    step = centers[1] - centers[0] if n_rad > 1 else 0.0
    equal_steps = n_rad > 1
    for n in range(2, n_rad):
        if abs(centers[n] - centers[n - 1] - step) > 1e-12 * max(1.0, abs(step)):
            equal_steps = False
    q_step = math.exp(-2.0 * inv_2w2 * step * step)
    for b in range(n_b):
        nc = counts[b]
        for p in range(n_p):
            r = room[b, p]
            if r < 0.0:
                continue
            px, py, pz = x[b, p, 0], x[b, p, 1], x[b, p, 2]
            # ---- distances and Set I: the M nearest, sorted, by insertion
            for i in range(m):
                top_d[i] = np.inf
                top_j[i] = -1
            # images come nearest to the centre first: once |image| - |x| exceeds both the M-th
            # distance so far and the Set III cut-off, no later image can matter to this point
            r_x = math.sqrt(px * px + py * py + pz * pz)
            reach = r_cut if n_rad > 0 else 0.0
            n_seen = nc
            for j in range(nc):
                if img_r[b, j] - r_x > max(top_d[m - 1], reach) + 1e-9:
                    n_seen = j
                    break
                dx = img[b, j, 0] - px
                dy = img[b, j, 1] - py
                dz = img[b, j, 2] - pz
                d = math.sqrt(dx * dx + dy * dy + dz * dz)
                dist[j] = d
                dvec[j, 0] = dx
                dvec[j, 1] = dy
                dvec[j, 2] = dz
                if d < top_d[m - 1]:
                    i = m - 1
                    while i > 0 and top_d[i - 1] > d:
                        top_d[i] = top_d[i - 1]
                        top_j[i] = top_j[i - 1]
                        i -= 1
                    top_d[i] = d
                    top_j[i] = j
            if top_d[m - 1] + TIE_TOLERANCE_BOHR > r or (n_rad > 0 and r < r_cut):
                bad[b, p] = 1  # beyond the selection: the reference computes it, the caller widens
                continue
            tied = False
            for i in range(1, min(m, m_s + 1)):
                if top_d[i] - top_d[i - 1] <= tie_bohr:
                    tied = True
            if tied:
                bad[b, p] = 2  # Set II's own order among tied atoms: the reference computes it
                continue
            for i in range(m):
                out[b, p, offset + i] = top_d[i]
            # ---- Set II: cosines at x between r_i - x and r_j - x, j among the neighbours of atom i
            o = offset + m
            for i in range(m_s):
                jj = top_j[i]
                a = idx[b, jj]
                ax, ay, az = dvec[jj, 0], dvec[jj, 1], dvec[jj, 2]
                norm_i = top_d[i]
                nca = n_cand[a]
                for c in range(nca):
                    qx = ax + cand[a, c, 0]
                    qy = ay + cand[a, c, 1]
                    qz = az + cand[a, c, 2]
                    norm_j = math.sqrt(qx * qx + qy * qy + qz * qz)
                    if norm_i < on_atom_bohr or norm_j < on_atom_bohr:
                        cs = 1.0
                    else:
                        cs = (ax * qx + ay * qy + az * qz) / (norm_i * norm_j)
                        cs = min(1.0, max(-1.0, cs))
                    cosv[c] = cs
                    keyv[c] = shell[a, c] * 4.0 - cs
                if nca > k:
                    # nearest shell first, then the largest cosines (the reference's rule among ties)
                    for t in range(k):
                        best = -1
                        for c in range(nca):
                            if keyv[c] < np.inf and (best < 0 or keyv[c] < keyv[best]):
                                best = c
                        pick[t] = cosv[best]
                        keyv[best] = np.inf
                else:
                    for t in range(k):
                        pick[t] = cosv[t]
                # descending
                for t in range(1, k):
                    v = pick[t]
                    s = t
                    while s > 0 and pick[s - 1] < v:
                        pick[s] = pick[s - 1]
                        s -= 1
                    pick[s] = v
                for t in range(k):
                    out[b, p, o + i * k + t] = pick[t]
            # ---- Set III: power spectrum of the images within the cut-off
            if n_rad == 0:
                continue
            o = offset + m + m_s * k
            for n in range(n_rad):
                for q in range(n_lm):
                    c_nlm[n, q] = 0.0
            for j in range(n_seen):
                d = dist[j]
                if d >= r_cut:
                    continue
                wgt = 0.5 * (1.0 + math.cos(d * (math.pi / r_cut)))
                t = d - centers[0]
                if equal_steps and t * t * inv_2w2 < 600.0:
                    # equally spaced centres: g_{n+1} = g_n * ratio_n, ratio_{n+1} = ratio_n * q (two exp)
                    gn = math.exp(-t * t * inv_2w2) * wgt
                    ratio = math.exp(inv_2w2 * step * (2.0 * t - step))
                    for n in range(n_rad):
                        g[n] = gn
                        gn *= ratio
                        ratio *= q_step
                else:
                    for n in range(n_rad):
                        t = d - centers[n]
                        g[n] = math.exp(-t * t * inv_2w2) * wgt
                if d < 1e-8:
                    _ylm(0.0, 0.0, 1.0, l_max, norms, dfact, rec_a, rec_b, c_m, s_m, ylm)
                else:
                    inv_d = 1.0 / d
                    _ylm(dvec[j, 0] * inv_d, dvec[j, 1] * inv_d, dvec[j, 2] * inv_d, l_max, norms, dfact, rec_a, rec_b,
                         c_m, s_m, ylm)
                for n in range(n_rad):
                    gn = g[n]
                    for q in range(n_lm):
                        c_nlm[n, q] += gn * ylm[q]
            col = o
            for l in range(l_max + 1):
                for n in range(n_rad):
                    for n2 in range(n, n_rad):
                        acc = 0.0
                        for q in range(l * l, (l + 1) * (l + 1)):
                            acc += c_nlm[n, q] * c_nlm[n2, q]
                        out[b, p, col] = acc
                        col += 1


def _baseline_sums(d, tables, h, r_max, out):
    """out[p, k] += sum_j table_k(d[p, j]) for every point p and member k: linear interpolation on the
    uniform knots of ``tables`` (n_knots, K), zero at and beyond ``r_max`` (as RadialBaseline._knots)."""
    n_knots = tables.shape[0]
    n_k = tables.shape[1]
    for p in range(d.shape[0]):
        for j in range(d.shape[1]):
            r = np.float64(d[p, j])
            if not r < r_max:
                continue
            t = min(max(r / h, 0.0), n_knots - 1.0)
            i0 = min(int(math.floor(t)), n_knots - 2)
            f = t - i0
            for k in range(n_k):
                out[p, k] += tables[i0, k] * (1.0 - f) + tables[i0 + 1, k] * f


if AVAILABLE:
    _baseline_sums = njit(cache=True)(_baseline_sums)
    _ylm = njit(cache=True, error_model="numpy", inline="always")(_ylm)
    _species_block = njit(cache=True, error_model="numpy")(_species_block)


def radial_baseline_sums(desc, spec, tables, r_max_bohr: float) -> np.ndarray:
    """(P, K) radial baselines of K ensemble members at once from the Set I distances of ``desc`` (P, n_features):
    ``tables`` (n_species, n_knots, K) on uniform knots from 0 to ``r_max_bohr``; the same numbers as
    :meth:`~ase_mlrho.model.RadialBaseline.forward` per member, without the float64 work arrays."""
    desc = np.asarray(desc)
    out = np.zeros((desc.shape[0], tables.shape[2]))
    h = r_max_bohr / (tables.shape[1] - 1)
    for b in range(tables.shape[0]):
        o = b * spec.n_per_species
        _baseline_sums(desc[:, o:o + spec.m], np.ascontiguousarray(tables[b]), float(h), float(r_max_bohr), out)
    return out


def species_block(x, room, counts, img, idx, spec, cand, n_cand, shell, tie_bohr, on_atom_bohr, out, offset, bad):
    """Run the compiled kernel for one species (see :func:`_species_block`); arrays as described there,
    ``out`` float32 (B, P, n_features), ``bad`` uint8 (B, P)."""
    l_max = spec.angular_l_max if spec.has_angular else 0
    centers = np.asarray(spec.angular_centers_bohr if spec.has_angular else (), dtype=np.float64)
    img = np.ascontiguousarray(img, dtype=np.float64)
    _species_block(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(room, dtype=np.float64),
                   np.ascontiguousarray(counts, dtype=np.int64), img, np.sqrt(np.einsum("bcd,bcd->bc", img, img)),
                   np.ascontiguousarray(idx, dtype=np.int64), int(spec.m), int(spec.m_s), int(spec.k),
                   cand, n_cand, shell, int(l_max), centers, float(spec.angular_width_bohr),
                   float(spec.angular_cutoff_bohr), *_harmonic_tables(l_max),
                   float(tie_bohr), float(on_atom_bohr), out, int(offset), bad)
