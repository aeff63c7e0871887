"""The inference form of a density network or deep ensemble: every weight set in one stack, on one device.

:meth:`DensityNetwork.predict` and :meth:`DensityEnsemble.predict` run member by member and
return numpy arrays; they are the readable definition and the reference. :class:`Predictor` computes
the same mixture (mean, aleatoric and epistemic sigma, see :class:`~ase_mlrho.model.DensityEnsemble`)
with one matrix product per layer for the weight sets of *all* members, the members' radial
baselines from one shared interpolation, and everything kept as torch tensors on ``device`` (CPU or
GPU), so descriptors made on a GPU never leave it. Agreement with the reference: float32 rounding
(the tests check 1e-6 relative on the mean).

Units: electrons/Bohr^3.
"""

from __future__ import annotations

import torch
from torch import nn

from .model import DensityEnsemble, DensityNetwork

__all__ = ["Predictor"]


class Predictor:
    """Stacked weight sets of a :class:`DensityNetwork` (one member) or :class:`DensityEnsemble`.

    Parameters
    ----------
    network : the network or ensemble.
    weight_sets : its ``sample_weight_sets(n_samples, seed)`` (for an ensemble, one list per member).
    device : torch device of the computation.
    """

    def __init__(self, network, weight_sets, device="cpu"):
        self.device = torch.device(device)
        if isinstance(network, DensityEnsemble):
            members, sets, scale = list(network.members), list(weight_sets), float(network.sigma_scale)
        elif isinstance(network, DensityNetwork):
            members, sets, scale = [network], [weight_sets], 1.0
        else:
            raise TypeError(f"expected a DensityNetwork or DensityEnsemble, got {type(network).__name__}")
        dev = self.device
        self.spec = members[0].spec
        self.ensemble_scale = scale
        self.members = members
        self.n_sets = [int(s[0][0].shape[0]) for s in sets]
        # standardisation and first layer per member (their feature statistics differ slightly)
        self.first = [(m.x_mean.to(dev), m.x_std.to(dev), s[0][0].to(dev), s[0][1].to(dev)) for m, s in zip(members, sets)]
        # later layers: all members' weight sets stacked, (S, out, in) and (S, 1, out)
        self.later = []
        for layer in range(1, len(sets[0])):
            w = torch.cat([s[layer][0] for s in sets]).to(dev)
            b = torch.cat([s[layer][1] for s in sets]).to(dev)
            self.later.append((w.transpose(1, 2).contiguous(), b.unsqueeze(1)))
        f64 = dict(dtype=torch.float64, device=dev)
        self.y_mean = torch.tensor([float(m.y_mean) for m in members], **f64)
        self.y_std = torch.tensor([float(m.y_std) for m in members], **f64)
        self.member_scale = torch.tensor([float(m.y_std * m.sigma_scale) for m in members], **f64)
        base = members[0].baseline
        for m in members[1:]:
            if m.baseline.table.shape != base.table.shape or m.baseline.r_max_bohr != base.r_max_bohr:
                raise ValueError("ensemble members must share one radial baseline grid")
        self.baseline = base
        self.tables = torch.stack([m.baseline.table for m in members]).to(dev)  # (K, species, knots)

    def _baselines(self, desc: torch.Tensor) -> torch.Tensor:
        """(K, P) radial baseline of every member, from one interpolation."""
        total = torch.zeros((len(self.members), desc.shape[0]), dtype=torch.float64, device=desc.device)
        for b in range(len(self.spec.species)):
            i0, frac, inside = self.baseline._knots(desc, b)
            t = self.tables[:, b]  # (K, knots)
            value = t[:, i0] * (1.0 - frac) + t[:, i0 + 1] * frac  # (K, P, M)
            total += torch.where(inside, value, torch.zeros_like(value)).sum(dim=2)
        return total

    @torch.no_grad()
    def predict(self, desc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean density, aleatoric and epistemic sigma (float64 tensors, e/Bohr^3) of descriptors ``desc``."""
        desc = desc.to(self.device, torch.float32)
        raw = self.members[0].raw_features(desc)
        parts = []
        for x_mean, x_std, w0, b0 in self.first:
            x = (raw - x_mean) / x_std
            s, n_out = w0.shape[0], w0.shape[1]
            h = torch.addmm(b0.reshape(-1), x, w0.reshape(s * n_out, -1).T)
            parts.append(h.view(x.shape[0], s, n_out).transpose(0, 1))
        h = torch.cat(parts).contiguous() if len(parts) > 1 else parts[0].contiguous()  # (S, P, H)
        for w_t, b in self.later:
            h = torch.baddbmm(b, nn.functional.silu(h, inplace=True), w_t)
        mu = h[:, :, 0].to(torch.float64)
        sig2 = (nn.functional.softplus(h[:, :, 1]).to(torch.float64) + 1e-4) ** 2
        means, var_ale, var_epi, start = [], [], [], 0
        baselines = self._baselines(desc)
        for k, n in enumerate(self.n_sets):
            mu_k, sig2_k = mu[start:start + n], sig2[start:start + n]
            start += n
            means.append(baselines[k] + self.y_mean[k] + self.y_std[k] * mu_k.mean(dim=0))
            var_ale.append(self.member_scale[k] ** 2 * sig2_k.mean(dim=0))
            epi = mu_k.var(dim=0, unbiased=False) if n > 1 else torch.zeros_like(mu_k[0])
            var_epi.append(self.member_scale[k] ** 2 * epi)
        means = torch.stack(means)
        mean = means.mean(dim=0)
        ale = torch.stack(var_ale).mean(dim=0)
        epi = torch.stack(var_epi).mean(dim=0)
        if len(self.members) > 1:
            epi = epi + means.var(dim=0, unbiased=False)
        scale = self.ensemble_scale
        return mean, scale * torch.sqrt(ale), scale * torch.sqrt(epi)
