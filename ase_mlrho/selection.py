"""Which structures to compute next: candidates ranked by the model's epistemic uncertainty.

The epistemic sigma is the part of the uncertainty that more data can reduce (the spread of the
posterior weight samples, and between the members of an ensemble), so the structures where it is largest
are the ones a DFT run teaches the model most about. Each candidate is predicted in full (its grid at the
model's mesh) and scored by its mean epistemic sigma (e/Bohr^3); the fraction of its points above the
model's validation p99.9 (the out-of-distribution threshold stored in the model file) is reported beside it.

Ranked by sigma alone, the choice runs to the edges of the pool: the most uncertain candidates are the ones
least like anything else (composition extremes, the hottest cells, vacancies), which a DFT run teaches the
model about *themselves* but little about the rest. ``by="density"`` ranks by *information density*
(Settles and Craven 2008): each point's epistemic sigma weighted by how typical its environment is of the
other candidates -- the density of their descriptor vectors there (a Gaussian kernel density estimate in the
leading principal components of the standardised descriptors, on a seeded random sample of grid points
per candidate), divided by its mean over the pool. A candidate then scores high when the model is
uncertain about environments that many candidates share.

``by="electron"`` ranks by the epistemic sigma per electron, sqrt(2/pi) * integral sigma_epi dV / N_e in %
(the epistemic part of the expected error, :func:`ase_mlrho.inference.expected_eps_percent`), normalised
like the error eps users judge a density by. Across compositions the mean sigma in e/Bohr^3 grows with a
cell's electron density: on the SiGe selection study's pool, scored by its starting model, it ranks the
Ge-rich cells first (Spearman with the cells' eps 0.79) while the largest errors are at x = 0.3; per
electron the ranking follows eps (0.95) and its top three are the three worst cells (benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .inference import InferenceSettings, expected_eps_percent, run_prediction

__all__ = ["check_candidates", "CandidateScore", "DensitySettings", "STRATEGIES", "SCORE_MEANING", "score_candidates",
           "typicality_weights", "rank"]

#: what candidates can be ranked by: the mean epistemic sigma, the same weighted by typicality, or the
#: epistemic sigma per electron
STRATEGIES = ("sigma", "density", "electron")
#: each strategy's score in words, and its unit
SCORE_MEANING = {
    "sigma": ("mean epistemic sigma", "e/Bohr^3"),
    "density": ("mean epistemic sigma times typicality over sampled points", "e/Bohr^3"),
    "electron": ("epistemic sigma per electron, sqrt(2/pi) int sigma_epi dV / N_e", "%"),
}


@dataclass(frozen=True)
class DensitySettings:
    """The typicality weighting of ``by="density"``: grid points sampled per candidate (seeded), and the
    principal components of the standardised descriptors the kernel density estimate works in. The kernel
    sums cost (all sampled points)^2, so with many candidates each gets fewer points: at most
    ``max_points_total`` in all, at least 20 per candidate."""

    points_per_candidate: int = 1000
    components: int = 8
    seed: int = 0
    max_points_total: int = 50_000

    def __post_init__(self):
        if self.points_per_candidate < 20 or self.components < 1 or self.max_points_total < 20:
            raise ValueError(f"points_per_candidate and max_points_total must be >= 20 and components >= 1, got "
                             f"{self.points_per_candidate}, {self.max_points_total} and {self.components}")

    def points_for(self, n_candidates: int) -> int:
        """Points sampled per candidate when there are ``n_candidates``."""
        return max(20, min(self.points_per_candidate, self.max_points_total // max(int(n_candidates), 1)))


@dataclass(frozen=True)
class CandidateScore:
    """One candidate structure: where it came from (file, frame), its size and its uncertainty figures
    (e/Bohr^3; ``ood_fraction`` None when the model records no validation threshold), its largest hole
    (Bohr) and the fraction of points beyond the training cells' (:mod:`ase_mlrho.domain`; None when the
    model records no training domain)."""

    source: str
    frame: int
    natoms: int
    formula: str
    sigma_epistemic_mean_e_per_bohr3: float
    sigma_epistemic_max_e_per_bohr3: float
    sigma_aleatoric_mean_e_per_bohr3: float
    ood_fraction: float | None
    sigma_epistemic_typical_e_per_bohr3: float | None = None
    by: str = "sigma"
    epistemic_eps_percent: float | None = None
    largest_hole_bohr: float | None = None
    beyond_training_fraction: float | None = None

    @property
    def score(self) -> float:
        """What candidates are ranked by: the mean epistemic sigma (``by="sigma"``), the mean over the
        sampled points of epistemic sigma times typicality (``by="density"``), or the epistemic sigma per
        electron in % (``by="electron"``)."""
        if self.by == "density":
            return self.sigma_epistemic_typical_e_per_bohr3
        if self.by == "electron":
            return self.epistemic_eps_percent
        return self.sigma_epistemic_mean_e_per_bohr3

    def to_dict(self) -> dict:
        return {**asdict(self), "score": self.score}


def check_candidates(model, candidates) -> None:
    """Every candidate ``(source, frame, ase.Atoms)`` must be one ``model`` can predict (its elements, a sane
    cell, no duplicated atom: :func:`~ase_mlrho.inference.validate_structure`), checked before any is
    scored: ValueError naming the file and frame of the first that is not."""
    from .inference import validate_structure

    for source, frame, atoms in candidates:
        try:
            validate_structure(model, atoms)
        except ValueError as exc:  # InvalidStructureError, UnknownSpeciesError
            raise ValueError(f"candidate {source} frame {frame}: {exc}") from exc


def score_candidates(model, candidates, settings: InferenceSettings = InferenceSettings(), progress=None,
                     by: str = "sigma", density: DensitySettings = DensitySettings()) -> list:
    """Score ``candidates`` (iterable of ``(source, frame, ase.Atoms)``) with ``model``, ranked ``by`` one of
    :data:`STRATEGIES`; the same seeds give the same scores. ``progress(i, n)`` is called after each
    candidate when given."""
    from dataclasses import replace

    from .descriptors import Descriptors

    if by not in STRATEGIES:
        raise ValueError(f"rank by one of {', '.join(STRATEGIES)}, not {by!r}")
    candidates = list(candidates)
    threshold = model.epistemic_sigma_validation_max
    n_points = density.points_for(len(candidates))
    out, sampled = [], []
    for i, (source, frame, atoms) in enumerate(candidates):
        run = run_prediction(model, atoms, None, settings)
        field, summary = run.field, run.summary
        epi = field.sigma_epistemic
        out.append(CandidateScore(
            str(source), int(frame), len(atoms), atoms.get_chemical_formula(), float(epi.mean()), float(epi.max()),
            float(field.sigma_aleatoric.mean()),
            None if threshold is None else float(np.mean(epi / field.renormalisation_factor > threshold)), by=by,
            epistemic_eps_percent=expected_eps_percent(float(epi.sum()), field.grid.dv_bohr3, field.n_electrons),
            largest_hole_bohr=summary.largest_hole_bohr, beyond_training_fraction=summary.beyond_training_fraction))
        if by == "density":
            rng = np.random.default_rng([density.seed, i])
            idx = rng.choice(epi.size, size=min(n_points, epi.size), replace=False)
            desc = Descriptors.from_atoms(model.spec, atoms).compute(field.grid.points_bohr_at(idx))
            sampled.append((epi.ravel()[idx], desc))
        if progress is not None:
            progress(i + 1, len(candidates))
    if by == "density":
        weights = typicality_weights([d for _, d in sampled], density.components)
        out = [replace(c, sigma_epistemic_typical_e_per_bohr3=float(np.mean(sig * w)))
               for c, (sig, _), w in zip(out, sampled, weights)]
    return out


def typicality_weights(features, components: int = 8, chunk: int = 2048) -> list:
    """Per point, how typical its environment is of the *other* candidates: the Gaussian kernel density of
    the other candidates' points at it (a candidate's own points do not count, or a perfect crystal, whose
    points repeat by symmetry, would make itself typical), divided by the mean of that over all the points
    (so the weights average to 1). Computed in the leading ``components`` principal components of the
    standardised features, with a Gaussian kernel of Scott's bandwidth (covariance ``n^(-2/(d+4))`` times
    that of all the points, as scipy's ``gaussian_kde``). ``features``: one (P_i, F) array per candidate;
    returns one (P_i,) array per candidate (all ones for a single candidate). Constant features are dropped."""
    sizes = np.array([len(f) for f in features])
    x = np.concatenate([np.asarray(f, dtype=np.float64) for f in features])
    std = x.std(axis=0)
    keep = std > 1e-9 * max(float(std.max()), 1e-300)
    if len(sizes) < 2 or not keep.any():
        return [np.ones(n) for n in sizes]
    z = (x[:, keep] - x[:, keep].mean(axis=0)) / std[keep]
    k = min(components, z.shape[1], len(z) - 2)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    y = z @ vt[:k].T
    n, d = y.shape
    cov = np.atleast_2d(np.cov(y.T)) * n ** (-2.0 / (d + 4))
    u = np.linalg.solve(np.linalg.cholesky(cov), y.T).T  # whitened: the kernel is exp(-|u_i - u_j|^2 / 2)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    onehot = np.zeros((n, len(sizes)))
    onehot[np.arange(n), owner] = 1.0
    sq = (u * u).sum(axis=1)
    other = np.empty(n)
    for s0 in range(0, n, chunk):
        s1 = min(s0 + chunk, n)
        d2 = np.maximum(sq[s0:s1, None] + sq[None, :] - 2.0 * u[s0:s1] @ u.T, 0.0)
        per_candidate = np.exp(-0.5 * d2) @ onehot  # (chunk, candidates): kernel sums per candidate
        own = per_candidate[np.arange(s1 - s0), owner[s0:s1]]
        other[s0:s1] = (per_candidate.sum(axis=1) - own) / (n - sizes[owner[s0:s1]])
    w = other / other.mean()
    return np.split(w, np.cumsum(sizes)[:-1])


def rank(scores) -> list:
    """Highest score first; ties keep the input order."""
    return sorted(scores, key=lambda s: -s.score)
