"""Independent brute-force references: explicit loops over periodic images, no k-d tree."""

import itertools

import numpy as np


def image_list(positions, cell, pbc, n_images):
    """All images of all atoms with shifts in [-n, n] along periodic directions: (positions, atom index)."""
    ranges = [range(-n_images, n_images + 1) if p else range(1) for p in pbc]
    pos, idx = [], []
    for shift in itertools.product(*ranges):
        pos.append(positions + np.asarray(shift, float) @ cell)
        idx.append(np.arange(len(positions)))
    return np.concatenate(pos), np.concatenate(idx)


def nearest(point, positions, cell, pbc, m, n_images):
    """Distances, atom indices and displacements of the m nearest images of one point."""
    img, idx = image_list(positions, cell, pbc, n_images)
    d = np.linalg.norm(img - point, axis=1)
    order = np.argsort(d, kind="stable")[:m]
    return d[order], idx[order], img[order] - point


def descriptor(point, positions, numbers, cell, pbc, spec_m, spec_ms, spec_k, species_numbers, n_images):
    """Set I + Set II for one point (random structures: no distance ties)."""
    out = []
    for z in species_numbers:
        sel = np.flatnonzero(numbers == z)
        d, idx, disp = nearest(point, positions[sel], cell, pbc, spec_m, n_images)
        out.extend(d)
        img_all, idx_all = image_list(positions, cell, pbc, n_images)
        for i in range(spec_ms):
            r_i = point + disp[i]
            dist_j = np.linalg.norm(img_all - r_i, axis=1)
            order = np.argsort(dist_j)
            order = order[dist_j[order] > 1e-9][:spec_k]  # exclude atom i itself
            cos = []
            for j in order:
                a, b = r_i - point, img_all[j] - point
                cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            out.extend(sorted(cos, reverse=True))
    return np.array(out)


def power_spectrum(point, positions, cell, pbc, centers, width, r_cut, l_max, n_images):
    """Set III by the pairwise Legendre form: p_nn'l = (2l+1)/4pi sum_ij g_n(d_i) g_n'(d_j) P_l(u_i . u_j),
    over every image within r_cut (an independent route from the spherical-harmonic sums)."""
    from scipy.special import eval_legendre

    img, _ = image_list(positions, cell, pbc, n_images)
    v = img - point
    d = np.linalg.norm(v, axis=1)
    keep = d < r_cut
    v, d = v[keep], d[keep]
    fc = 0.5 * (1 + np.cos(np.pi * d / r_cut))
    g = np.exp(-((d[:, None] - np.asarray(centers)) ** 2) / (2 * width ** 2)) * fc[:, None]
    u = v / d[:, None]
    cos = np.clip(u @ u.T, -1, 1)
    iu = np.triu_indices(len(centers))
    out = []
    for l in range(l_max + 1):
        m = g.T @ ((2 * l + 1) / (4 * np.pi) * eval_legendre(l, cos)) @ g
        out.append(m[iu])
    return np.concatenate(out)
