"""The machine-learned density as a density provider for the Harris-Foulkes calculator and warm starts.

:class:`MLDensityProvider` turns a trained ase-mlrho model into the callable that
:class:`sparc_bridge.harris_foulkes.HarrisFoulkesCalculator` expects,
``atoms -> (Grid, density_e_per_bohr3, uncertainty_summary)``:

* the grid is SPARC's grid for the cell at the *model's* mesh spacing
  (``Grid.from_atoms(atoms, model.mesh_spacing_bohr)``), so the density is predicted exactly on
  the nodes SPARC will build; :func:`sparc_settings_for_model` gives the matching
  :class:`~sparc_bridge.inputs.SparcSettings` (a mesh that differs from the model's would put
  the prediction on a grid the model was not trained on, and the bridge would refuse it anyway);
* the prediction is :func:`ase_mlrho.inference.run_prediction` in memory (what
  :func:`~ase_mlrho.inference.predict_field` runs), clipped and renormalised to the model's
  valence electron count, with an explicit seed so an energy is repeatable bit for bit;
* the summary says how much to trust the density: raw integral, renormalisation factor,
  sigma statistics (e/Bohr^3 and the integrated total sigma in electrons) and the fraction of
  out-of-distribution points.

A structure with elements the model does not know raises
:class:`ase_mlrho.descriptors.UnknownSpeciesError` before any prediction or SPARC run; a model
whose valence electron counts differ from the pseudopotentials SPARC will use raises
:class:`ModelPseudopotentialMismatchError` (its densities integrate to the wrong charge).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ase_mlrho.grid import Grid
from ase_mlrho.inference import ExecutorSettings, InferenceSettings

from .inputs import SparcSettings

__all__ = ["MLDensityProvider", "ModelPseudopotentialMismatchError",
           "sparc_settings_for_model", "model_reference_settings", "check_model_for_structure"]


class ModelPseudopotentialMismatchError(ValueError):
    """A model trained with other valence electron counts than SPARC's pseudopotentials give."""


def _as_model(model):
    from ase_mlrho.model_files import MLRhoModel, load_model

    return model if isinstance(model, MLRhoModel) else load_model(model)


def model_reference_settings(model):
    """The :class:`~sparc_bridge.reference.ReferenceSettings` a model was trained on: the record in its file,
    or, for files older than that record, the Gamma-point PBE settings of the shared data at the model's mesh."""
    from .reference import ReferenceSettings

    model = _as_model(model)
    recorded = ReferenceSettings.from_metadata(model.metadata)
    return recorded if recorded is not None else ReferenceSettings(mesh_spacing_bohr=float(model.mesh_spacing_bohr))


def sparc_settings_for_model(model, base: SparcSettings = SparcSettings(), atoms=None) -> SparcSettings:
    """``base`` with the settings of the model's reference data: its mesh (the SPARC grid must be the grid
    the model predicts on) and, for ``atoms``, its xc, smearing and k-point grid (see
    :mod:`sparc_bridge.reference`); without ``atoms`` only the mesh is set."""
    model = _as_model(model)
    if atoms is None:
        return replace(base, mesh_spacing_bohr=float(model.mesh_spacing_bohr))
    return model_reference_settings(model).sparc_settings(atoms, base)


def check_model_for_structure(model, atoms, psp_dir: str | None = None) -> None:
    """Refuse, before any work, a structure the model cannot describe for SPARC.

    Raises :class:`~ase_mlrho.descriptors.UnknownSpeciesError` for elements the model does not know,
    and :class:`ModelPseudopotentialMismatchError` when the model's valence electron count of an
    element differs from the pseudopotential SPARC will use.
    """
    from .snapshots import valence_electrons

    model = _as_model(model)
    model.check_species(atoms.numbers)
    known = model.valence_electrons
    for symbol in sorted(set(atoms.get_chemical_symbols())):
        psp = valence_electrons(symbol, psp_dir)
        if symbol in known and abs(known[symbol] - psp) > 1e-9:
            raise ModelPseudopotentialMismatchError(
                f"model '{model.name}' was trained with {known[symbol]:g} valence electrons for {symbol}, "
                f"SPARC's pseudopotential has {psp:g}; use the pseudopotentials the model was trained with "
                "(SparcSettings.psp_dir / SPARC_PSP_PATH)"
            )


class MLDensityProvider:
    """Density provider ``atoms -> (Grid, density_e_per_bohr3, uncertainty_summary)`` from a model.

    Parameters
    ----------
    model : a shipped model's name, a ``.safetensors`` path, or an :class:`~ase_mlrho.model_files.MLRhoModel`.
    settings : :class:`~ase_mlrho.inference.InferenceSettings` (weight samples, seed, block size), the same
        settings as every other prediction; the mesh is always the model's (the grid SPARC builds).
    executor : :class:`~ase_mlrho.inference.ExecutorSettings` (serial, or local worker processes).
    psp_dir : pseudopotential directory SPARC uses (None: sparc-x-api's search), for the valence check.

    ``last_field`` keeps the last :class:`~ase_mlrho.inference.FieldPrediction` (with the sigmas).
    """

    def __init__(self, model, settings: InferenceSettings = InferenceSettings(),
                 executor: ExecutorSettings = ExecutorSettings(), psp_dir: str | None = None):
        if settings.mesh_spacing_bohr is not None:
            raise ValueError("the provider predicts on the model's own mesh (the grid SPARC builds); "
                             "leave InferenceSettings.mesh_spacing_bohr unset")
        self.model = _as_model(model)
        self.settings = settings
        self.executor = executor
        self.psp_dir = psp_dir
        self.last_field = None

    @property
    def mesh_spacing_bohr(self) -> float:
        return float(self.model.mesh_spacing_bohr)

    def grid(self, atoms) -> Grid:
        """SPARC's grid for ``atoms`` at the model's mesh spacing."""
        return Grid.from_atoms(atoms, self.mesh_spacing_bohr)

    def __call__(self, atoms):
        from ase_mlrho.inference import run_prediction

        check_model_for_structure(self.model, atoms, self.psp_dir)
        grid = self.grid(atoms)
        s = self.settings
        t0 = time.perf_counter()
        run = run_prediction(self.model, atoms, None, s, self.executor, grid=grid)
        seconds = time.perf_counter() - t0
        f = run.field
        self.last_field = f
        summary = run.summary
        sigma_total = f.sigma_total
        uncertainty = {
            "model": self.model.name,
            "seed": int(s.seed),
            "n_samples": int(s.n_samples if s.n_samples is not None else self.model.n_samples),
            "grid_shape": list(grid.shape),
            "n_electrons": float(f.n_electrons),
            "electrons_raw": float(f.electrons_raw),
            "renormalisation_factor": float(f.renormalisation_factor),
            "sigma_total_max_e_per_bohr3": float(sigma_total.max()),
            "sigma_total_mean_e_per_bohr3": float(sigma_total.mean()),
            "sigma_epistemic_mean_e_per_bohr3": float(f.sigma_epistemic.mean()),
            "sigma_aleatoric_mean_e_per_bohr3": float(f.sigma_aleatoric.mean()),
            # integral of the total sigma: an upper-bound scale of the electrons the density may misplace
            "sigma_total_integral_e": float(np.sum(sigma_total) * grid.dv_bohr3),
            "ood_fraction": summary.ood_fraction,
            "predict_seconds": seconds,
        }
        return grid, f.density, uncertainty
