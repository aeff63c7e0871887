"""The Bayesian density network.

* :class:`BayesianLinear` -- a linear layer with a mean-field Gaussian variational posterior over
  weights and biases and a zero-mean Gaussian prior; training uses the local reparameterisation
  trick (sample pre-activations, not weights: same distribution per point, lower-variance gradients).
* :class:`DensityNetwork` -- descriptor -> features -> Bayesian MLP -> (mean, sigma) of the
  standardised target, a heteroscedastic Gaussian likelihood (sigma = aleatoric noise, learned).
* :meth:`DensityNetwork.predict` -- mean density with aleatoric and epistemic uncertainty.
  Epistemic variance is the variance of the mean over ``n_samples`` weight sets drawn from the
  posterior with an explicit seed. The weight sets depend only on the seed, never on how the grid
  is chunked, so predictions are bit-for-bit repeatable and chunk-size independent.
* :class:`DensityEnsemble` -- a deep ensemble of such networks (trained from different seeds on
  different sampled points), predicting their equal-weight mixture: the members' mean-field
  posteriors each sit in one mode, the ensemble spans several, which lowers the error and widens
  the epistemic sigma where the members disagree.

The target is the density minus a superposition of spherical atomic densities (the "baseline",
a function of the Set I distances), scaled to unit variance; the transform is linear, so sigmas
map back to electrons/Bohr^3 exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .descriptors import DescriptorSpec

__all__ = ["NetworkConfig", "BayesianLinear", "DensityNetwork", "DensityEnsemble", "Prediction", "RadialBaseline"]


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture and prior of the Bayesian network.

    hidden : widths of the hidden layers.
    prior_sigma : standard deviation of the Gaussian prior on every weight and bias.
    posterior_sigma_init : initial posterior standard deviation (small: start near a point estimate).
    radial_widths_bohr : widths of Gaussian radial features sum_m exp(-d_m^2 / 2w^2) added per species.
    """

    hidden: tuple[int, ...] = (64, 64, 64)
    prior_sigma: float = 1.0
    posterior_sigma_init: float = 1e-3
    radial_widths_bohr: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {"hidden": list(self.hidden), "prior_sigma": self.prior_sigma,
                "posterior_sigma_init": self.posterior_sigma_init,
                "radial_widths_bohr": list(self.radial_widths_bohr)}

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkConfig":
        return cls(hidden=tuple(int(h) for h in d["hidden"]), prior_sigma=float(d["prior_sigma"]),
                   posterior_sigma_init=float(d["posterior_sigma_init"]),
                   radial_widths_bohr=tuple(float(w) for w in d.get("radial_widths_bohr", ())))


def _softplus_inverse(y: float) -> float:
    return math.log(math.expm1(y))


class BayesianLinear(nn.Module):
    """y = x W^T + b with W_ij ~ N(mu_ij, softplus(rho_ij)^2) independently (mean field)."""

    def __init__(self, n_in: int, n_out: int, prior_sigma: float, posterior_sigma_init: float):
        super().__init__()
        self.n_in, self.n_out, self.prior_sigma = n_in, n_out, prior_sigma
        bound = 1.0 / math.sqrt(n_in)
        self.weight_mu = nn.Parameter(torch.empty(n_out, n_in).uniform_(-bound, bound) * math.sqrt(3.0))
        self.bias_mu = nn.Parameter(torch.zeros(n_out))
        rho0 = _softplus_inverse(posterior_sigma_init)
        self.weight_rho = nn.Parameter(torch.full((n_out, n_in), rho0))
        self.bias_rho = nn.Parameter(torch.full((n_out,), rho0))

    def sigmas(self) -> tuple[torch.Tensor, torch.Tensor]:
        return nn.functional.softplus(self.weight_rho), nn.functional.softplus(self.bias_rho)

    def forward(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        mean = nn.functional.linear(x, self.weight_mu, self.bias_mu)
        if not sample:
            return mean
        w_sigma, b_sigma = self.sigmas()
        var = nn.functional.linear(x * x, w_sigma * w_sigma, b_sigma * b_sigma)
        return mean + torch.sqrt(var + 1e-20) * torch.randn_like(mean)

    def kl(self) -> torch.Tensor:
        """KL(q || p) for the Gaussian posterior and the N(0, prior_sigma^2) prior, summed."""
        total = torch.zeros((), dtype=self.weight_mu.dtype)
        for mu, sigma in ((self.weight_mu, self.sigmas()[0]), (self.bias_mu, self.sigmas()[1])):
            p = self.prior_sigma
            total = total + torch.sum(torch.log(p / sigma) + (sigma * sigma + mu * mu) / (2 * p * p) - 0.5)
        return total

    def sample_weights(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` weight sets: (n, out, in) and (n, out)."""
        w_sigma, b_sigma = self.sigmas()
        ew = torch.randn((n, *self.weight_mu.shape), generator=generator, dtype=self.weight_mu.dtype)
        eb = torch.randn((n, *self.bias_mu.shape), generator=generator, dtype=self.bias_mu.dtype)
        return self.weight_mu + w_sigma * ew, self.bias_mu + b_sigma * eb


class RadialBaseline(nn.Module):
    """A superposition of spherical atomic densities, as a function of the Set I distances.

    rho_0(x) = sum_s sum_{m < M} f_s(d_{s,m}(x)), with f_s a table on a uniform radial grid
    (linear interpolation, zero beyond the last knot). Zero tables give a zero baseline.
    """

    def __init__(self, spec: DescriptorSpec, r_max_bohr: float = 8.0, n_knots: int = 161):
        super().__init__()
        self.spec = spec
        self.r_max_bohr = float(r_max_bohr)
        self.register_buffer("table", torch.zeros(len(spec.species), n_knots, dtype=torch.float64))

    @property
    def knots_bohr(self) -> np.ndarray:
        return np.linspace(0.0, self.r_max_bohr, self.table.shape[1])

    def _knots(self, desc: torch.Tensor, b: int):
        """For species block b: knot index i0 (P, M), weight of knot i0+1 (P, M), inside-cut-off mask."""
        n_knots = self.table.shape[1]
        h = self.r_max_bohr / (n_knots - 1)
        o = b * self.spec.n_per_species
        d = desc[:, o:o + self.spec.m].to(torch.float64)
        t = torch.clamp(d / h, 0.0, n_knots - 1.0)
        i0 = torch.clamp(torch.floor(t).long(), max=n_knots - 2)
        return i0, t - i0, d < self.r_max_bohr

    def design(self, desc: torch.Tensor) -> torch.Tensor:
        """(P, n_species * n_knots) linear-interpolation weights, so baseline = design @ table.ravel()."""
        blocks = []
        for b in range(len(self.spec.species)):
            i0, frac, inside = self._knots(desc, b)
            inside = inside.to(torch.float64)
            w = torch.zeros(desc.shape[0], self.table.shape[1], dtype=torch.float64)
            w.scatter_add_(1, i0, (1.0 - frac) * inside)
            w.scatter_add_(1, i0 + 1, frac * inside)
            blocks.append(w)
        return torch.cat(blocks, dim=1)

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        """Baseline density at each point (float64), by direct interpolation (same as design @ table)."""
        total = torch.zeros(desc.shape[0], dtype=torch.float64)
        for b in range(len(self.spec.species)):
            i0, frac, inside = self._knots(desc, b)
            table = self.table[b]
            value = table[i0] * (1.0 - frac) + table[i0 + 1] * frac
            total += torch.where(inside, value, torch.zeros_like(value)).sum(dim=1)
        return total


@dataclass(frozen=True)
class Prediction:
    """Predicted density and its uncertainty at P points, electrons/Bohr^3 (float64 arrays)."""

    mean: np.ndarray
    sigma_aleatoric: np.ndarray
    sigma_epistemic: np.ndarray

    @property
    def sigma_total(self) -> np.ndarray:
        return np.sqrt(self.sigma_aleatoric ** 2 + self.sigma_epistemic ** 2)


class DensityNetwork(nn.Module):
    """Descriptor -> (standardised features) -> Bayesian MLP -> mean and sigma of the density.

    Buffers hold everything needed to go from raw descriptors to electrons/Bohr^3: feature
    means/stds, the target scale, the radial baseline, and a post-hoc calibration factor for sigma.
    """

    def __init__(self, spec: DescriptorSpec, config: NetworkConfig = NetworkConfig()):
        super().__init__()
        self.spec, self.config = spec, config
        self.baseline = RadialBaseline(spec)
        n_in = spec.n_features + len(spec.species) * len(config.radial_widths_bohr)
        widths = [n_in, *config.hidden, 2]
        self.layers = nn.ModuleList(
            BayesianLinear(a, b, config.prior_sigma, config.posterior_sigma_init) for a, b in zip(widths, widths[1:])
        )
        self.register_buffer("x_mean", torch.zeros(n_in))
        self.register_buffer("x_std", torch.ones(n_in))
        self.register_buffer("y_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("y_std", torch.ones((), dtype=torch.float64))
        self.register_buffer("sigma_scale", torch.ones((), dtype=torch.float64))

    # ------------------------------------------------------------------ features
    def raw_features(self, desc: torch.Tensor) -> torch.Tensor:
        """Descriptor plus Gaussian radial sums per species (unscaled)."""
        widths = self.config.radial_widths_bohr
        if not widths:
            return desc
        extra = []
        for b in range(len(self.spec.species)):
            o = b * self.spec.n_per_species
            d = desc[:, o:o + self.spec.m]
            for w in widths:
                extra.append(torch.exp(-(d * d) / (2.0 * w * w)).sum(dim=1, keepdim=True))
        return torch.cat([desc, *extra], dim=1)

    def features(self, desc: torch.Tensor) -> torch.Tensor:
        return (self.raw_features(desc) - self.x_mean) / self.x_std

    # ------------------------------------------------------------------ training forward
    def forward(self, desc: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, sigma) of the standardised target, one stochastic pass (local reparameterisation)."""
        h = self.features(desc)
        for layer in self.layers[:-1]:
            h = nn.functional.silu(layer(h, sample))
        out = self.layers[-1](h, sample)
        return out[:, 0], nn.functional.softplus(out[:, 1]) + 1e-4

    def kl(self) -> torch.Tensor:
        return sum(layer.kl() for layer in self.layers)

    def target(self, desc: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """Standardised residual of the density over the baseline."""
        return (rho.to(torch.float64) - self.baseline(desc) - self.y_mean) / self.y_std

    # ------------------------------------------------------------------ inference
    def sample_weight_sets(self, n_samples: int, seed: int) -> list:
        """``n_samples`` weight sets drawn from the posterior with ``seed``; with 0 samples, the
        posterior means (a deterministic network, no epistemic uncertainty)."""
        if n_samples == 0:
            return [(layer.weight_mu.detach()[None], layer.bias_mu.detach()[None]) for layer in self.layers]
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            return [layer.sample_weights(n_samples, gen) for layer in self.layers]

    def shared_inputs(self, desc) -> tuple:
        """What every network of one descriptor spec and config computes alike from ``desc``: the
        float32 tensor and its unscaled features (an ensemble makes them once for all its members)."""
        desc_t = torch.as_tensor(np.asarray(desc, dtype=np.float32))
        return desc_t, self.raw_features(desc_t)

    @torch.no_grad()
    def predict(self, desc, n_samples: int = 8, seed: int = 0, weight_sets=None, inputs=None,
                baseline=None) -> Prediction:
        """Mean density and sigmas (electrons/Bohr^3) at the points whose descriptors are given.

        mean = average over weight sets of the predicted mean; aleatoric variance = average of the
        predicted noise variances; epistemic variance = variance of the means over weight sets.
        Both sigmas are multiplied by the calibration factor fitted on validation snapshots.
        ``inputs``: :meth:`shared_inputs` of ``desc``, and ``baseline``: this network's baseline density
        at the points (float64), when the caller has them already.
        """
        desc_t, raw = self.shared_inputs(desc) if inputs is None else inputs
        weight_sets = weight_sets if weight_sets is not None else self.sample_weight_sets(n_samples, seed)
        x = (raw - self.x_mean).div_(self.x_std)  # (P, F), as features(), one temporary array
        w0, b0 = weight_sets[0]
        n_sets, n_out = w0.shape[0], w0.shape[1]
        # first layer: one matrix product for all weight sets at once, (P, S*out) -> contiguous (S, P, out)
        h = torch.addmm(b0.reshape(-1), x, w0.reshape(n_sets * n_out, -1).T)
        h = h.view(x.shape[0], n_sets, n_out).transpose(0, 1).contiguous()
        for w, b in weight_sets[1:]:
            # in-place SiLU on a contiguous array: the activations are the largest arrays here. (The
            # 2-output layer as W @ h^T would be ~6x faster alone, but its rounding then depends on the
            # batch size, and a field must not depend on how it was cut into blocks.)
            h = torch.baddbmm(b.unsqueeze(1), nn.functional.silu(h, inplace=True), w.transpose(1, 2))
        mu = h[:, :, 0].to(torch.float64)
        sig = nn.functional.softplus(h[:, :, 1]).to(torch.float64) + 1e-4
        mean_y = mu.mean(dim=0)
        var_ale = (sig * sig).mean(dim=0)
        var_epi = ((mu - mean_y) ** 2).mean(dim=0)  # the spread over weight sets (0 for one set)
        scale = self.y_std * self.sigma_scale
        base = self.baseline(desc_t) if baseline is None else baseline
        rho = base + self.y_mean + self.y_std * mean_y
        return Prediction(
            mean=rho.numpy(),
            sigma_aleatoric=(scale * torch.sqrt(var_ale)).numpy(),
            sigma_epistemic=(scale * torch.sqrt(var_epi)).numpy(),
        )


def _member_seed(seed: int, member: int) -> int:
    """Independent weight-sample seed of ensemble member ``member`` for the user's ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(member)]).generate_state(1)[0])


class DensityEnsemble(nn.Module):
    """Several independently trained :class:`DensityNetwork` members over one descriptor, predicting
    their equal-weight mixture (a deep ensemble of Bayesian networks).

    mean = average of the members' means; aleatoric variance = average of the members' aleatoric
    variances; epistemic variance = average of the members' own (weight-sample) epistemic variances
    plus the variance of the members' means. ``n_samples`` weight sets in all are shared out over
    the members (at least one each), so an ensemble costs about what one network with the same
    ``n_samples`` costs. The members' own ``sigma_scale`` is 1; the ensemble's ``sigma_scale``
    calibrates the mixture.
    """

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        spec, config = members[0].spec, members[0].config
        for m in members[1:]:
            if m.spec != spec or m.config != config:
                raise ValueError("ensemble members must share one descriptor spec and network config")
        self.spec, self.config = spec, config
        self.members = nn.ModuleList(members)
        self.register_buffer("sigma_scale", torch.ones((), dtype=torch.float64))

    def _baselines(self, desc_t) -> torch.Tensor:
        """(P, members) radial baselines, float64: on a CPU with numba one compiled loop over the Set I
        distances for all members, else each member's own interpolation."""
        from . import descriptor_kernel

        if descriptor_kernel.AVAILABLE and desc_t.device.type == "cpu":
            tables = torch.stack([m.baseline.table for m in self.members], dim=-1).numpy()  # (species, knots, K)
            return torch.from_numpy(descriptor_kernel.radial_baseline_sums(
                desc_t.numpy(), self.spec, tables, self.members[0].baseline.r_max_bohr))
        return torch.stack([m.baseline(desc_t) for m in self.members], dim=1)

    def samples_per_member(self, n_samples: int) -> list[int]:
        """How many weight sets each member draws for ``n_samples`` in all (0: posterior means)."""
        k = len(self.members)
        if n_samples == 0:
            return [0] * k
        return [max(1, n_samples // k + (i < n_samples % k)) for i in range(k)]

    def sample_weight_sets(self, n_samples: int, seed: int) -> list:
        """One list of weight sets per member (see :meth:`DensityNetwork.sample_weight_sets`)."""
        return [m.sample_weight_sets(n, _member_seed(seed, i))
                for i, (m, n) in enumerate(zip(self.members, self.samples_per_member(n_samples)))]

    @torch.no_grad()
    def predict(self, desc, n_samples: int = 8, seed: int = 0, weight_sets=None) -> Prediction:
        """Mean density and sigmas (electrons/Bohr^3) of the mixture of the members."""
        inputs = self.members[0].shared_inputs(desc)  # the same for every member: made once
        base = self._baselines(inputs[0])  # (P, members)
        weight_sets = weight_sets if weight_sets is not None else self.sample_weight_sets(n_samples, seed)
        preds = [m.predict(None, weight_sets=w, inputs=inputs, baseline=base[:, i])
                 for i, (m, w) in enumerate(zip(self.members, weight_sets))]
        means = np.stack([p.mean for p in preds])
        mean = means.mean(axis=0)
        var_ale = np.mean([p.sigma_aleatoric ** 2 for p in preds], axis=0)
        var_epi = np.mean([p.sigma_epistemic ** 2 for p in preds], axis=0) + means.var(axis=0)
        scale = float(self.sigma_scale)
        return Prediction(mean=mean, sigma_aleatoric=scale * np.sqrt(var_ale), sigma_epistemic=scale * np.sqrt(var_epi))
