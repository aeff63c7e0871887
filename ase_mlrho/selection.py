"""Which structures to compute next: candidates ranked by the model's epistemic uncertainty.

The epistemic sigma is the part of the uncertainty that more data can reduce (the spread of the
posterior weight samples, and between the members of an ensemble), so the structures where it is largest
are the ones a DFT run teaches the model most about. Each candidate is predicted in full (its grid at the
model's mesh) and scored by its mean epistemic sigma (e/Bohr^3); the fraction of its points above the
model's validation p99.9 (the out-of-distribution threshold stored in the model file) is reported beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .inference import InferenceSettings, run_prediction

__all__ = ["CandidateScore", "score_candidates", "rank"]


@dataclass(frozen=True)
class CandidateScore:
    """One candidate structure: where it came from (file, frame), its size and its uncertainty figures
    (e/Bohr^3; ``ood_fraction`` None when the model records no validation threshold)."""

    source: str
    frame: int
    natoms: int
    formula: str
    sigma_epistemic_mean_e_per_bohr3: float
    sigma_epistemic_max_e_per_bohr3: float
    sigma_aleatoric_mean_e_per_bohr3: float
    ood_fraction: float | None

    @property
    def score(self) -> float:
        """What candidates are ranked by: the mean epistemic sigma."""
        return self.sigma_epistemic_mean_e_per_bohr3

    def to_dict(self) -> dict:
        return {**asdict(self), "score": self.score}


def score_candidates(model, candidates, settings: InferenceSettings = InferenceSettings(), progress=None) -> list:
    """Score ``candidates`` (iterable of ``(source, frame, ase.Atoms)``) with ``model``; the same seed gives the
    same scores. ``progress(i, n)`` is called after each candidate when given."""
    candidates = list(candidates)
    threshold = model.epistemic_sigma_validation_max
    out = []
    for i, (source, frame, atoms) in enumerate(candidates):
        field = run_prediction(model, atoms, None, settings).field
        epi = field.sigma_epistemic
        out.append(CandidateScore(
            str(source), int(frame), len(atoms), atoms.get_chemical_formula(), float(epi.mean()), float(epi.max()),
            float(field.sigma_aleatoric.mean()),
            None if threshold is None else float(np.mean(epi / field.renormalisation_factor > threshold))))
        if progress is not None:
            progress(i + 1, len(candidates))
    return out


def rank(scores) -> list:
    """Most uncertain first; ties keep the input order."""
    return sorted(scores, key=lambda s: -s.score)
