"""``MLRhoCalculator``: the model's electron density, with uncertainty, as an ASE calculator.

A thin adapter in the style of ASE's own calculators (``ase.calculators.emt``): it turns an
``ase.Atoms`` into a call of :func:`ase_mlrho.inference.run_prediction` and the result into ASE
units. Example::

    from ase.build import bulk
    from ase_mlrho.calculator import MLRhoCalculator

    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat(3)
    atoms.calc = MLRhoCalculator(model="al-pbe", seed=0)
    rho = atoms.calc.get_pseudo_density(atoms)     # (Nx, Ny, Nz), electrons/Angstrom^3
    sigma = atoms.calc.get_property("density_sigma_total", atoms)

Properties (all (Nx, Ny, Nz) float64 arrays in electrons/Angstrom^3 on the model's grid for the
cell -- SPARC's grid rule at the model's mesh spacing, node (0, 0, 0) at the cell origin,
``array[i, j, k]`` at fractional position ``(i, j, k) / intervals``):

* ``density`` -- clipped at zero and renormalised to the exact valence electron count, so for a
  periodic cell ``density.mean() * atoms.get_volume()`` equals the electron count; by one factor
  (``renormalisation="scale"``, default) or, with ``renormalisation="posterior"``, by adding or removing
  the charge where the sigma is largest (:class:`~ase_mlrho.inference.InferenceSettings`);
* ``density_sigma_aleatoric``, ``density_sigma_epistemic``, ``density_sigma_total``
  (= sqrt(aleatoric^2 + epistemic^2)), scaled by the same renormalisation factor ("scale") or as
  predicted ("posterior");
* ``electrons_raw`` -- the integral of the raw prediction before clipping and renormalisation (a
  diagnostic: far from the electron count means the model is struggling), and ``n_electrons``. More
  than 2 % off, the calculator warns once per structure (:class:`OutOfDistributionWarning`): a box
  without vacuum along a non-periodic direction, or a cell in the wrong length unit, do that;
* ``expected_eps_percent`` -- the error per electron the model's own sigma predicts, in % (what
  ``mlrho evaluate`` would measure as eps against DFT; :func:`~ase_mlrho.inference.expected_eps_percent`);
* ``ood_fraction`` -- the fraction of grid points whose epistemic sigma exceeds the 99.9th
  percentile of the model's validation cells (None when the model file records no such threshold).
  Above 1 % the calculator warns once per structure (:class:`OutOfDistributionWarning`, one line
  with the fraction): the structure is unlike the training cells, treat the density with care.
* ``beyond_training_fraction`` -- the fraction of grid points farther from every atom than any point of
  the training cells (None when the model file records no training domain), and ``largest_hole_ang``,
  the largest distance from a grid point to its nearest atom, Angstrom. When that hole exceeds the
  training cells' by more than the model's mesh spacing (a di-vacancy in a covalent crystal, a void, a
  surface's vacuum) the calculator warns once per structure (:class:`OutOfDistributionWarning`, one line
  with the hole's size and position): the density there is extrapolated (:mod:`ase_mlrho.domain`).

Everything is computed at once and cached until the atoms change (positions, numbers, cell, pbc) or
a parameter changes (``calc.set(seed=1)``); ``calc.reset()`` clears the cache.

Structures the calculator refuses or changes, and why:

* unknown elements -> :class:`~ase_mlrho.descriptors.UnknownSpeciesError` naming them;
* no atoms, a singular or non-finite cell -> :class:`~ase_mlrho.grid.InvalidStructureError`;
* two nuclei closer than 0.5 Angstrom, periodic images included (a duplicated atom) -> the same,
  naming both atoms;
* atoms outside the cell along periodic directions are wrapped (the field is periodic; nothing in
  the result depends on which image of an atom is given). Along a non-periodic direction they are
  refused: the grid covers only the box;
* small periodic cells (down to a 1-atom primitive cell) are accepted: the descriptors are built
  from all periodic images, so they describe the infinite crystal exactly; a fully non-periodic
  structure with fewer atoms of a species than the descriptor's M is refused.
"""

from __future__ import annotations

import warnings

from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr

from .inference import ExecutorSettings, InferenceSettings, run_prediction

__all__ = ["MLRhoCalculator", "OutOfDistributionWarning"]


class OutOfDistributionWarning(UserWarning):
    """The structure's epistemic sigma exceeds the model's validation range at many grid points, or it has
    a larger hole than any training cell."""

#: 1 electron/Bohr^3 in electrons/Angstrom^3
E_PER_BOHR3_TO_E_PER_ANG3 = 1.0 / Bohr ** 3


class MLRhoCalculator(Calculator):
    """Electron density and its uncertainty from a trained ase-mlrho model.

    Parameters
    ----------
    model : a shipped model's name (``"al-pbe"``), the path of a ``.safetensors`` model file, or
        an :class:`~ase_mlrho.model_files.MLRhoModel`.
    n_samples : posterior weight samples for the epistemic sigma (None: the model's default).
    seed : seed of the weight samples; the same seed gives a bit-identical field.
    chunk_points : grid points per block; bounds the memory of one prediction.
    mesh_spacing_bohr : grid spacing (None: the model's, which is what it was trained on).
    executor, workers : ``"serial"`` (default), ``"processes"`` or ``"dask"`` and its worker count;
        the numbers do not depend on it.
    device : None (default: the k-d tree path on the CPUs) or a torch device ("cuda", "cuda:1",
        "cpu") for dense descriptors and the network on that device; the same field to float32 rounding.
    surface_term : apply the model's surface term below a free surface (default; :mod:`ase_mlrho.surface`: a
        larger aleatoric sigma where the neighbourhood looks like bulk but the density is not); False gives the
        network's own sigmas. ``calc.summary.surface_term`` says whether it was applied.
    """

    implemented_properties = ["density", "density_sigma_total", "density_sigma_aleatoric",
                              "density_sigma_epistemic", "electrons_raw", "n_electrons", "expected_eps_percent",
                              "ood_fraction", "beyond_training_fraction", "largest_hole_ang"]
    default_parameters = {"n_samples": None, "seed": 0, "chunk_points": InferenceSettings.chunk_points,
                          "mesh_spacing_bohr": None, "executor": "serial", "workers": 1, "device": None,
                          "renormalisation": "scale", "surface_term": True}
    nolabel = True

    def __init__(self, model="al-pbe", n_samples=None, seed=0, chunk_points=InferenceSettings.chunk_points,
                 mesh_spacing_bohr=None, executor="serial", workers=1, device=None, renormalisation="scale",
                 surface_term=True, **kwargs):
        from .model_files import MLRhoModel, load_model

        self.model = model if isinstance(model, MLRhoModel) else load_model(model)
        Calculator.__init__(self, n_samples=n_samples, seed=seed, chunk_points=chunk_points,
                            mesh_spacing_bohr=mesh_spacing_bohr, executor=executor, workers=workers, device=device,
                            renormalisation=renormalisation, surface_term=surface_term, **kwargs)
        self.grid = None
        self.summary = None

    @property
    def settings(self) -> InferenceSettings:
        p = self.parameters
        return InferenceSettings(n_samples=p.n_samples, seed=int(p.seed), chunk_points=int(p.chunk_points),
                                 mesh_spacing_bohr=p.mesh_spacing_bohr, device=p.device,
                                 renormalisation=p.renormalisation, surface_term=bool(p.surface_term))

    def calculate(self, atoms=None, properties=("density",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        p = self.parameters
        run = run_prediction(self.model, self.atoms, None, self.settings, ExecutorSettings(p.executor, int(p.workers)))
        f = run.field
        conv = E_PER_BOHR3_TO_E_PER_ANG3
        self.grid = f.grid
        self.summary = run.summary
        self.results = {
            "density": f.density * conv,
            "density_sigma_aleatoric": f.sigma_aleatoric * conv,
            "density_sigma_epistemic": f.sigma_epistemic * conv,
            "density_sigma_total": f.sigma_total * conv,
            "electrons_raw": float(f.electrons_raw),
            "n_electrons": float(f.n_electrons),
            "expected_eps_percent": run.summary.expected_eps_percent,
            "ood_fraction": run.summary.ood_fraction,
            "beyond_training_fraction": run.summary.beyond_training_fraction,
            "largest_hole_ang": run.summary.largest_hole_bohr * Bohr,
        }
        for warning in run.summary.warnings:
            warnings.warn(f"{self.model.name}: {warning}", OutOfDistributionWarning, stacklevel=3)

    def set(self, **kwargs):
        """Change parameters (n_samples, seed, chunk_points, ...); any change clears the cache."""
        changed = Calculator.set(self, **kwargs)
        if changed:
            self.reset()
        return changed

    def reset(self):
        Calculator.reset(self)
        self.grid = None
        self.summary = None

    def get_pseudo_density(self, atoms=None, spin=None):
        """The predicted valence density, electrons/Angstrom^3, (Nx, Ny, Nz) on the model's grid
        (``rho.mean() * volume`` equals the electron count for a periodic cell). The model is
        spin-unpolarised: ``spin`` may be None, 0 or 1 (each spin channel is half the density)."""
        rho = self.get_property("density", self._atoms_for(atoms))
        if spin is None:
            return rho
        if spin not in (0, 1):
            raise ValueError(f"spin must be None, 0 or 1, got {spin!r}")
        return 0.5 * rho

    def get_density_uncertainty(self, atoms=None, kind: str = "total"):
        """Sigma of the density, electrons/Angstrom^3: ``kind`` total, aleatoric or epistemic."""
        if kind not in ("total", "aleatoric", "epistemic"):
            raise ValueError(f"kind must be total, aleatoric or epistemic, got {kind!r}")
        return self.get_property(f"density_sigma_{kind}", self._atoms_for(atoms))

    def _atoms_for(self, atoms):
        if atoms is None and self.atoms is None:
            raise ValueError("this calculator has not seen a structure yet: pass it, "
                             "e.g. calc.get_pseudo_density(atoms)")
        return atoms
