"""Descriptors of compact blocks of grid points from dense point-to-atom distance tables, in torch.

The grid is regular, so the atoms that a compact block of points can see are known before any point
is queried: the atom images within a radius R_sel of the block's centre c. For every point of the
block this module forms the distances to all of them (a P x C table), takes the M nearest of each
species with a partial sort (``torch.topk``), gathers the Set II neighbour tables of the M_s nearest
atoms, and sums Set III over the atoms within the cut-off -- dense tensor work that runs the same on
a CPU and on a GPU, instead of one k-d tree query per point.

Exactness. The selection holds every image within R_sel - |x - c| of a point x, so a point's
descriptor is exact when its M-th distance of each species (plus the tie tolerance) and the Set III
cut-off lie within that radius. The Set II neighbour tables are the per-atom tables of the
:class:`~ase_mlrho.descriptors.Descriptors` this engine wraps (a whole periodic structure, or the
cluster of atoms around one block of a very large cell), so they are exact by construction. Points
that fail the radius check, and points whose M_s + 1 nearest distances are too close to order
safely in the working precision (Set II orders tied atoms by a rule of its own), are computed by the
wrapped float64 reference instead; :attr:`DenseDescriptors.fallback_points` counts them. In
float64 the result equals :meth:`Descriptors.compute_float64` to rounding (~1e-12 Bohr); in float32
(the default, and the model's input precision) to ~1e-6 relative: positions are taken relative to c
in float64 before they are cast, so no precision is lost to large cells.

Units: Bohr.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.data import atomic_numbers

from . import descriptor_kernel
from .angular import power_spectrum_tensor
from .descriptors import _ABSENT_DISTANCE_BOHR, _ON_ATOM_BOHR, TIE_TOLERANCE_BOHR, Descriptors
from .neighbors import sphere_radius_for_atoms

__all__ = ["DenseDescriptors", "compact_sub_blocks"]

#: distances closer than this (Bohr) cannot be ordered safely in float32: such points take the float64 path
FLOAT32_TIE_BOHR = 1e-4
#: why a point takes the float64 reference: its descriptor reaches beyond the block's selection (the
#: selection radius then grows), or its nearest distances are tied (a perfect crystal: growing helps nothing)
_TOO_FAR, _TIED = 1, 2


def compact_sub_blocks(shape, max_points: int):
    """Cut a box of ``shape`` grid nodes into near-cubic sub-boxes of at most ``max_points`` nodes.

    Yields tuples of three slices. Compact boxes keep the set of atoms they can see small."""
    shape = tuple(int(n) for n in shape)
    max_points = max(1, int(max_points))
    # grow the shortest edge that can still grow, while the box stays within max_points: near-cubic
    # boxes, and full-size ones in thin blocks too (a block one plane thick gets 1 x 22 x 23, not 1 x 8 x 8)
    sub = [1, 1, 1]
    while True:
        open_axes = [i for i in range(3) if sub[i] < shape[i]
                     and np.prod(sub) // sub[i] * (sub[i] + 1) <= max_points]
        if not open_axes:
            break
        i = min(open_axes, key=lambda a: (sub[a], a))
        sub[i] += 1
    counts = [math.ceil(n / b) for n, b in zip(shape, sub)]
    for i in range(counts[0]):
        for j in range(counts[1]):
            for k in range(counts[2]):
                yield tuple(slice(c * b, min((c + 1) * b, n)) for c, b, n in zip((i, j, k), sub, shape))


class DenseDescriptors:
    """Set I/II/III descriptors of compact blocks of points, as torch tensors on ``device``.

    Parameters
    ----------
    reference : the :class:`~ase_mlrho.descriptors.Descriptors` of the structure (or of a cluster of
        it); it supplies the atom images, the Set II tables and the float64 fallback.
    device : torch device for the dense work ("cpu", "cuda", ...).
    dtype : torch.float32 (default; model input) or torch.float64 (reference checks).
    r_m_bohr : radius of the sphere holding M atoms of the rarest species, which sets how far beyond a
        block's own radius atoms are selected (default: from the reference's periodic cell; give it for an
        open cluster cut from a larger crystal, whose own extent says nothing about that). The reach grows
        when points fall back.
    engine : "torch" (dense tensors; any device) or "numba" (:mod:`~ase_mlrho.descriptor_kernel`: one
        compiled float64 loop per point on the CPU, the same selection and results, several times faster
        there; output float32 on the CPU).
    """

    def __init__(self, reference: Descriptors, device="cpu", dtype=torch.float32, r_m_bohr: float | None = None,
                 engine: str = "torch"):
        self.ref, self.spec = reference, reference.spec
        self.device, self.dtype = torch.device(device), dtype
        if engine not in ("torch", "numba"):
            raise ValueError(f"engine must be 'torch' or 'numba', got {engine!r}")
        if engine == "numba":
            if not descriptor_kernel.AVAILABLE:
                raise ImportError("the numba descriptor engine needs numba (pip install numba)")
            if self.device.type != "cpu" or dtype != torch.float32:
                raise ValueError("the numba descriptor engine runs on the CPU and returns float32")
        self.engine = engine
        # the numba engine orders distances in float64: only the reference's own tie tolerance applies
        self.tie_bohr = FLOAT32_TIE_BOHR if dtype == torch.float32 and engine == "torch" else TIE_TOLERANCE_BOHR
        self.fallback_points = 0
        self.points = 0
        spec, nb = self.spec, reference._all
        counts = [np.count_nonzero(reference.numbers == atomic_numbers[s]) for s in spec.species]
        if r_m_bohr is None:
            if any(reference.pbc):
                rarest = min((c for c in counts if c), default=1)
                r_m_bohr = sphere_radius_for_atoms(spec.m, abs(np.linalg.det(reference.cell_bohr)), rarest)
            else:  # an open cluster: its own extent bounds every distance
                r_m_bohr = float(np.linalg.norm(np.ptp(nb.positions_bohr, axis=0)))
        reach = 1.2 * r_m_bohr + 1.5
        if spec.has_angular:
            reach = max(reach, spec.angular_cutoff_bohr + 1.0)
        self.reach_bohr = reach
        self._species_index = np.full(len(reference.numbers), -1, dtype=np.int64)
        for b, s in enumerate(spec.species):
            self._species_index[reference.numbers == atomic_numbers[s]] = b
        self._present = [c > 0 for c in counts]
        if spec.m_s and engine == "torch":
            self._cand = torch.as_tensor(reference._candidates, dtype=dtype, device=self.device)
            self._shell = torch.as_tensor(reference._shell, device=self.device).to(dtype)
        if engine == "numba":
            self._tables = (np.ascontiguousarray(reference._candidates, dtype=np.float64),
                            np.ascontiguousarray(reference._n_cand, dtype=np.int64),
                            np.ascontiguousarray(reference._shell, dtype=np.float64))
        self._centers = torch.as_tensor(np.asarray(spec.angular_centers_bohr), dtype=dtype, device=self.device)

    # ------------------------------------------------------------------ the atoms a block sees
    def _images_near(self, centres: np.ndarray, radii: np.ndarray):
        """Atom images within ``radii[b]`` of ``centres[b]``, for every block b at once (one k-d tree
        call): flat arrays of block number, halo image index, in block order."""
        nb = self.ref._all
        r_max = float(np.max(radii))
        if nb._tree is None or (nb.halo_radius_bohr < r_max and any(nb.pbc)):
            nb._build_halo(max(r_max, nb.halo_radius_bohr * 1.25))
        lists = nb._tree.query_ball_point(centres, radii, return_sorted=False)
        counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        image = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if counts.sum() else np.zeros(0, np.int64)
        return np.repeat(np.arange(len(lists)), counts), image

    # ------------------------------------------------------------------ descriptors
    def compute(self, points_bohr) -> torch.Tensor:
        """(P, n_features) descriptors of the points (Bohr; inside the cell, close together)."""
        return self.compute_blocks([points_bohr])

    def compute_blocks(self, blocks) -> torch.Tensor:
        """Descriptors of several compact blocks of points at once (one batched tensor computation,
        padded to the largest block and the largest atom selection), rows in the order given."""
        blocks = [np.asarray(b, dtype=np.float64).reshape(-1, 3) for b in blocks]
        blocks = [b for b in blocks if len(b)]
        spec, dev, dt = self.spec, self.device, self.dtype
        if not blocks:
            return torch.zeros((0, spec.n_features), dtype=dt, device=dev)
        sizes = np.array([len(b) for b in blocks])
        total = int(sizes.sum())
        self.points += total
        n_b, p_max = len(blocks), int(sizes.max())
        pts = np.concatenate(blocks)
        if any(self.ref.pbc):
            pts = self.ref._all.wrap(pts)
        owner = np.repeat(np.arange(n_b), sizes)
        slot = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # row within its block
        centres = np.zeros((n_b, 3))
        np.add.at(centres, owner, pts)
        centres /= sizes[:, None]
        rel_flat = pts - centres[owner]
        r_pts = np.sqrt(np.einsum("pd,pd->p", rel_flat, rel_flat))
        radii = np.zeros(n_b)
        np.maximum.at(radii, owner, r_pts)
        radii += self.reach_bohr
        rel = np.zeros((n_b, p_max, 3))
        room = np.full((n_b, p_max), -1.0)  # padding rows: no room, never trusted, never returned
        rel[owner, slot] = rel_flat
        room[owner, slot] = radii[owner] - r_pts
        sel_block, sel_image = self._images_near(centres, radii)
        nb = self.ref._all
        sel_atom = nb._halo_atom[sel_image]
        sel_rel = nb._halo_pos[sel_image] - centres[sel_block]
        sel_species = self._species_index[sel_atom]
        if self.engine == "numba":  # numpy arrays for the compiled kernel, float64 geometry
            x, room_in, species_block = rel, room, self._numba_species_block
            out = np.zeros((n_b, p_max, spec.n_features), dtype=np.float32)
            bad = np.zeros((n_b, p_max), dtype=np.uint8)
        else:
            x, room_in, species_block = (torch.as_tensor(rel, dtype=dt, device=dev),
                                         torch.as_tensor(room, dtype=dt, device=dev), self._species_block)
            out = torch.empty((n_b, p_max, spec.n_features), dtype=dt, device=dev)
            bad = torch.zeros((n_b, p_max), dtype=torch.uint8, device=dev)
        for b in range(len(spec.species)):
            o = b * spec.n_per_species
            if not self._present[b]:
                out[..., o:o + spec.m] = _ABSENT_DISTANCE_BOHR
                out[..., o + spec.m:o + spec.n_per_species] = 0.0
                continue
            mine = sel_species == b
            bad |= species_block(x, room_in, n_b, sel_block[mine], sel_rel[mine], sel_atom[mine], out, o)
        if self.engine == "numba":
            out, bad = torch.from_numpy(out), torch.from_numpy(bad)
        keep = torch.as_tensor(owner * p_max + slot, device=dev)
        out = out.reshape(n_b * p_max, -1)[keep]
        code = bad.reshape(-1)[keep]
        bad = code != 0
        n_bad = int(bad.sum())
        if n_bad:
            # too far out, or too close to a tie: the float64 reference decides
            if int(torch.count_nonzero(code & _TOO_FAR)) > 0.01 * total:
                self.reach_bohr *= 1.15  # the next blocks select more atoms (ties need no more)
            idx = torch.nonzero(bad).flatten().cpu().numpy()
            exact = self.ref.compute_float64(pts[idx])
            out[torch.as_tensor(idx, device=dev)] = torch.as_tensor(exact, dtype=dt, device=dev)
            self.fallback_points += n_bad
        return out

    def _numba_species_block(self, x, room, n_b, sel_block, sel_rel, sel_atom, out, offset) -> np.ndarray:
        """:meth:`_species_block` by the compiled kernel, on numpy arrays (``out`` float32)."""
        counts, img, idx = _padded_selection(n_b, sel_block, sel_rel, sel_atom)
        bad = np.zeros(room.shape, dtype=np.uint8)
        if img.shape[1] < self.spec.m:
            bad[:] = _TOO_FAR
            return bad
        descriptor_kernel.species_block(x, room, counts, img, idx, self.spec, *self._tables, TIE_TOLERANCE_BOHR,
                                        _ON_ATOM_BOHR, out, offset, bad)
        return bad

    def _species_block(self, x, room, n_b, sel_block, sel_rel, sel_atom, out, offset) -> torch.Tensor:
        """Fill one species' columns ``out[..., offset:offset + n_per_species]`` of (B, P, n_features) from
        its selected images (flat arrays in block order: block number, position relative to the block
        centre, atom); return the (B, P) codes of points the dense route cannot vouch for
        (:data:`_TOO_FAR`, :data:`_TIED`)."""
        spec, dev, dt = self.spec, self.device, self.dtype
        out = out[..., offset:offset + spec.n_per_species]
        p = x.shape[1]
        _, img, idx = _padded_selection(n_b, sel_block, sel_rel, sel_atom)
        c = img.shape[1]
        if c < spec.m:
            return torch.full((n_b, p), _TOO_FAR, dtype=torch.uint8, device=dev)
        atoms = torch.as_tensor(img, dtype=dt, device=dev)
        disp = atoms.unsqueeze(1) - x.unsqueeze(2)  # (B, P, C, 3): point -> image
        dist = torch.sqrt(torch.sum(disp * disp, dim=-1))
        k_take = spec.m
        if spec.has_angular:
            k_take = max(k_take, int(torch.max(torch.sum(dist < spec.angular_cutoff_bohr, dim=-1))))
        k_take = min(k_take, c)
        d_sorted, order = torch.topk(dist, k_take, dim=-1, largest=False, sorted=True)  # (B, P, K)
        far = d_sorted[..., spec.m - 1] + TIE_TOLERANCE_BOHR > room
        if spec.has_angular:
            far |= room < spec.angular_cutoff_bohr
        tied = torch.zeros_like(far)
        out[..., :spec.m] = d_sorted[..., :spec.m]
        o2 = spec.m + spec.m_s * spec.k
        flat = n_b * p
        if spec.m_s:
            upto = min(spec.m, spec.m_s + 1)
            if upto > 1:
                tied = torch.any(torch.diff(d_sorted[..., :upto], dim=-1) <= self.tie_bohr, dim=-1)
            near = order[..., :spec.m_s]
            d_i = torch.gather(disp, 2, near.unsqueeze(-1).expand(-1, -1, -1, 3))  # (B, P, Ms, 3)
            atom_idx = torch.gather(torch.as_tensor(idx, device=dev).unsqueeze(1).expand(-1, p, -1), 2, near)
            out[..., spec.m:o2] = self._set2(d_i.reshape(flat, spec.m_s, 3),
                                              atom_idx.reshape(flat, spec.m_s)).reshape(n_b, p, -1)
        if spec.has_angular:
            v = torch.gather(disp, 2, order.unsqueeze(-1).expand(-1, -1, -1, 3))
            out[..., o2:o2 + spec.n_angular] = power_spectrum_tensor(
                d_sorted.reshape(flat, -1), v.reshape(flat, -1, 3), self._centers, spec.angular_width_bohr,
                spec.angular_cutoff_bohr, spec.angular_l_max).reshape(n_b, p, -1)
        return far.to(torch.uint8) * _TOO_FAR | tied.to(torch.uint8) * _TIED

    def _set2(self, d_i, atoms):
        """(P, M_s, k) Set II cosines, as :meth:`Descriptors._set2` (the same selection rule among ties)."""
        k = self.spec.k
        cand = self._cand[atoms]  # (P, Ms, C, 3)
        d_j = d_i.unsqueeze(2) + cand
        num = torch.sum(d_i.unsqueeze(2) * d_j, dim=-1)
        norm_i = torch.sqrt(torch.sum(d_i * d_i, dim=-1))
        norm_j = torch.sqrt(torch.sum(d_j * d_j, dim=-1))
        cos = num / (norm_i.unsqueeze(-1) * norm_j)
        on_atom = (norm_i.unsqueeze(-1) < _ON_ATOM_BOHR) | (norm_j < _ON_ATOM_BOHR)
        cos = torch.where(on_atom, torch.ones_like(cos), torch.clamp(cos, -1.0, 1.0))
        if cand.shape[2] > k:
            padded = torch.isnan(cand[..., 0])
            cos = torch.where(padded, torch.full_like(cos, -math.inf), cos)
            key = self._shell[atoms] * 4.0 - cos  # nearest shell first, then the largest cosines
            key = torch.where(padded, torch.full_like(key, math.inf), key)
            _, pick = torch.topk(key, k, dim=-1, largest=False)
            cos = torch.gather(cos, -1, pick)
        return torch.sort(cos, dim=-1, descending=True).values


def _padded_selection(n_b: int, sel_block, sel_rel, sel_atom):
    """Flat per-block selections -> (B,) counts, (B, C, 3) positions and (B, C) atom numbers, each block's
    images in order of distance from its centre, padded with images far away (never among a point's
    trusted nearest) to the largest selection C."""
    # nearest to the block's centre first (the numba kernel stops at the first image too far for any point)
    order = np.lexsort((np.einsum("id,id->i", sel_rel, sel_rel), sel_block))
    sel_block, sel_rel, sel_atom = sel_block[order], sel_rel[order], sel_atom[order]
    counts = np.bincount(sel_block, minlength=n_b)
    c = int(counts.max(initial=0))
    column = np.arange(len(sel_block)) - np.repeat(np.cumsum(counts) - counts, counts)
    img = np.full((n_b, c, 3), 1e6)
    idx = np.zeros((n_b, c), dtype=np.int64)
    img[sel_block, column] = sel_rel
    idx[sel_block, column] = sel_atom
    return counts, img, idx
