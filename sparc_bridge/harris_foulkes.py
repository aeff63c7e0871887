"""Harris-Foulkes energies of a given (e.g. machine-learned) density, computed by SPARC.

One SPARC run with ``READ_INIT_DENS`` and ``MAXIT_SCF: 1`` builds the Hamiltonian of the input
density, diagonalises it once (``RHO_TRIGGER`` CheFSI passes) and, under density mixing, prints the
Harris-Foulkes free energy of that density (SPARC_NOTES Q3). Its error is second order in the
density error when the subspace is converged, so a good predicted density gives a good energy
without an SCF. The first-iteration SCF error ``||rho_out - rho_in|| / ||rho_out||`` is a direct
measure of the input density's quality and is returned with it.

SPARC does not clip or renormalise a density it reads (SPARC_NOTES Q1), so
:func:`prepare_density` does both here: clip at 0, then scale to the exact valence electron count.

:class:`HarrisFoulkesCalculator` wraps this as an ASE calculator around any ``density_provider``:
a callable ``atoms -> (Grid, density_e_per_bohr3, uncertainty_summary_dict)``; the ML model is one
such provider, SPARC's own converged density another (used in the tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree

from ase_mlrho.grid import Grid
from ase_mlrho.inference import renormalise

from .density_file import read_density, write_density
from .inputs import (
    DEFAULT_LABEL,
    DEFAULT_RHO_TRIGGER,
    DENSITY_INPUT_NAME,
    HarrisFoulkesSettings,
    SparcSettings,
    write_harris_foulkes_input,
    write_scf_input,
    write_warm_start_input,
)
from .run import SparcResult, resolve_command, run_sparc
from .screening import ScreeningModel, SecondOrderCorrection, second_order_correction
from .snapshots import valence_electrons

__all__ = [
    "GridMismatchError",
    "PreparedDensity",
    "HarrisFoulkesResult",
    "WarmStartComparison",
    "prepare_density",
    "check_grid",
    "write_input_density",
    "harris_foulkes_energy",
    "warm_start_comparison",
    "HarrisFoulkesCalculator",
    "DensityProvider",
    "ScreeningCalibration",
    "calibrate_screening",
]

DensityProvider = Callable[[object], tuple]


class GridMismatchError(ValueError):
    """A density whose grid is not the grid SPARC will build for the structure."""


@dataclass(frozen=True, eq=False)
class PreparedDensity:
    """A density ready for SPARC: clipped at 0 and scaled to ``n_electrons``.

    ``electrons_before`` is the integral of the density as given, ``negative_charge`` the charge
    removed by clipping (both in electrons) -- a quick sanity figure for a predicted density.
    """

    density_e_per_bohr3: np.ndarray
    n_electrons: float
    electrons_before: float
    negative_charge: float
    scale: float


@dataclass(frozen=True)
class HarrisFoulkesResult:
    """A Harris-Foulkes evaluation: energy (Ha), density diagnostics, timings (s) and the run.

    With a screening model, ``second_order`` holds the estimated second-order correction
    (:mod:`sparc_bridge.screening`) and ``corrected_energy_ha`` / ``corrected_energy_per_atom_ha``
    the corrected energy; without one they are None.
    """

    energy_ha: float
    energy_per_atom_ha: float
    first_scf_error: float
    n_electrons: float
    electrons_before: float
    negative_charge: float
    prepare_s: float
    sparc_wall_s: float
    total_s: float
    run: SparcResult
    second_order: SecondOrderCorrection | None = None

    @property
    def energy_ev(self) -> float:
        return self.energy_ha * Hartree

    @property
    def corrected_energy_ha(self) -> float | None:
        return None if self.second_order is None else self.energy_ha + self.second_order.correction_ha

    @property
    def corrected_energy_per_atom_ha(self) -> float | None:
        e = self.corrected_energy_ha
        return None if e is None else e / self.run.natoms


@dataclass(frozen=True)
class WarmStartComparison:
    """Full SCF from a given density vs SPARC's default guess (atomic superposition)."""

    warm: SparcResult
    default: SparcResult

    @property
    def iterations(self) -> tuple[int, int]:
        return self.warm.n_scf_iterations, self.default.n_scf_iterations

    @property
    def wall_s(self) -> tuple[float, float]:
        return self.warm.wall_time_s, self.default.wall_time_s

    def summary(self) -> dict:
        # a default side parsed from an earlier run has only SPARC's own wall time: compare like with like
        own = self.default.wall_time_s is None or self.warm.wall_time_s is None
        return {
            "warm_iterations": self.warm.n_scf_iterations,
            "default_iterations": self.default.n_scf_iterations,
            "warm_wall_s": self.warm.sparc_walltime_s if own else self.warm.wall_time_s,
            "default_wall_s": self.default.sparc_walltime_s if own else self.default.wall_time_s,
            "warm_energy_per_atom_ha": self.warm.free_energy_per_atom_ha,
            "default_energy_per_atom_ha": self.default.free_energy_per_atom_ha,
        }


# ----------------------------------------------------------------------------- numerics (pure)
def n_valence_electrons(atoms, psp_dir: str | None = None) -> float:
    """Exact valence electron count of ``atoms`` for the pseudopotentials SPARC will use."""
    return float(sum(valence_electrons(s, psp_dir) for s in atoms.get_chemical_symbols()))


def prepare_density(density_e_per_bohr3: np.ndarray, grid: Grid, n_electrons: float) -> PreparedDensity:
    """Clip negative values and scale so that the density integrates to ``n_electrons`` on ``grid``."""
    rho = np.asarray(density_e_per_bohr3, dtype=np.float64)
    if rho.shape != grid.shape:
        raise GridMismatchError(f"density shape {rho.shape} differs from the grid shape {grid.shape}")
    if not np.all(np.isfinite(rho)):
        raise ValueError("density contains NaN or infinite values")
    before = grid.integrate(rho)
    negative = -grid.integrate(np.minimum(rho, 0.0))  # charge of the clipped negative values, as a positive number
    density, scale = renormalise(rho, grid.dv_bohr3, n_electrons)  # the one clip-and-scale of the package
    return PreparedDensity(density, float(n_electrons), before, negative, scale)


def check_grid(atoms, grid: Grid, settings: SparcSettings) -> None:
    """Raise :class:`GridMismatchError` unless ``grid`` is the grid SPARC builds for ``atoms``."""
    expected = settings.grid(atoms)
    if tuple(grid.shape) != tuple(expected.shape) or tuple(grid.pbc) != tuple(expected.pbc):
        raise GridMismatchError(
            f"density grid {grid.shape} (pbc {grid.pbc}) is not SPARC's grid {expected.shape} (pbc {expected.pbc}) "
            f"for this cell at a {settings.mesh_spacing_bohr} Bohr mesh; predict the density on "
            "SparcSettings.grid(atoms)"
        )
    diff = float(np.max(np.abs(np.asarray(grid.cell_bohr) - expected.cell_bohr)))
    if diff > 1e-6:
        raise GridMismatchError(
            f"density grid cell differs from the structure's cell by {diff:.3g} Bohr (tolerance 1e-6); "
            "the density belongs to another cell"
        )


def write_input_density(path, atoms, density_e_per_bohr3: np.ndarray, grid: Grid, psp_dir: str | None = None) -> Path:
    """Write a density for ``READ_INIT_DENS`` with the atoms' lines (Z, valence, Cartesian Bohr)."""
    return write_density(
        path,
        density_e_per_bohr3,
        grid.cell_bohr,
        numbers=atoms.numbers,
        positions_bohr=atoms.positions / Bohr,
        valence=[valence_electrons(s, psp_dir) for s in atoms.get_chemical_symbols()],
        comment="Input density for SPARC READ_INIT_DENS written by ase-mlrho",
        pbc=grid.pbc,
    )


# ----------------------------------------------------------------------------- SPARC runs
def harris_foulkes_energy(
    atoms,
    density_e_per_bohr3: np.ndarray,
    grid: Grid,
    settings: SparcSettings = SparcSettings(),
    directory=".",
    hf: HarrisFoulkesSettings = HarrisFoulkesSettings(),
    command: str | None = None,
    timeout_s: float | None = None,
    label: str = DEFAULT_LABEL,
    screening: ScreeningModel | None = None,
) -> HarrisFoulkesResult:
    """Harris-Foulkes free energy of ``density_e_per_bohr3`` (on ``grid``) for ``atoms``, by one SPARC diagonalisation.

    The density is clipped at 0 and renormalised to the exact valence electron count, written as
    SPARC's input density, and one SPARC run (``MAXIT_SCF 1``, ``hf.rho_trigger`` CheFSI passes) is
    made in ``directory``. Returns the energy in Ha and Ha/atom, the first-iteration SCF error and timings.

    With ``screening`` (a material's :class:`~sparc_bridge.screening.ScreeningModel`, e.g. from
    the model file), SPARC also prints the output density of that diagonalisation (its first mixing
    step switched off, which leaves the energy unchanged) and the result carries the second-order
    correction estimated from it, at no extra SPARC cost.
    """
    t0 = time.perf_counter()
    if screening is not None and not hf.print_output_density:
        hf = replace(hf, print_output_density=True)
    if screening is not None and not all(grid.pbc):
        raise ValueError("the second-order screened correction needs a fully periodic cell "
                         f"(pbc {tuple(grid.pbc)}); pass screening=None for plain Harris-Foulkes energies")
    check_grid(atoms, grid, settings)
    command = resolve_command(command)  # fail before any work when SPARC is not configured
    prepared = prepare_density(density_e_per_bohr3, grid, n_valence_electrons(atoms, settings.psp_dir))
    directory = Path(directory)
    write_harris_foulkes_input(atoms, directory, settings, hf, DENSITY_INPUT_NAME, label, prepared.n_electrons)
    write_input_density(directory / DENSITY_INPUT_NAME, atoms, prepared.density_e_per_bohr3, grid, settings.psp_dir)
    t1 = time.perf_counter()
    run = run_sparc(directory, label, command, timeout_s)
    t2 = time.perf_counter()
    second = None
    if screening is not None:
        rho_out = read_density(directory / f"{label}.dens").density_e_per_bohr3
        second = second_order_correction(prepared.density_e_per_bohr3, rho_out, grid.cell_bohr, screening)
    return HarrisFoulkesResult(
        energy_ha=run.free_energy_ha,
        energy_per_atom_ha=run.free_energy_per_atom_ha,
        first_scf_error=run.first_scf_error,
        n_electrons=prepared.n_electrons,
        electrons_before=prepared.electrons_before,
        negative_charge=prepared.negative_charge,
        prepare_s=t1 - t0,
        sparc_wall_s=t2 - t1,
        total_s=time.perf_counter() - t0,
        run=run,
        second_order=second,
    )


def warm_start_comparison(
    atoms,
    density_e_per_bohr3: np.ndarray,
    grid: Grid,
    settings: SparcSettings = SparcSettings(),
    directory=".",
    command: str | None = None,
    timeout_s: float | None = None,
    rho_trigger: int | None = DEFAULT_RHO_TRIGGER,
    default_run=None,
    both_sides: Mapping[str, object] | None = None,
) -> WarmStartComparison:
    """Full SCF started from the given density vs from SPARC's default guess, same settings and FIX_RAND.

    ``default_run``: a finished SCF of the same structure with the same settings from SPARC's default
    guess (e.g. the reference run itself, :func:`sparc_bridge.run.parse_run`), used instead of running
    the default side again: half the cost.

    The warm start uses ``rho_trigger`` first-iteration passes (a good density is wasted on an
    unconverged first subspace, see :func:`sparc_bridge.inputs.warm_start_parameters`); the default
    run is SPARC's ordinary start (RHO_TRIGGER 4). ``both_sides``: further SPARC parameters given to
    both runs alike (e.g. ``{"NSTATES": 101, "NUM_CHEFSI": 2}``), so that eigensolver or mixing
    settings are compared on the same footing; refused with ``default_run`` (that run used SPARC's own).
    Runs in ``directory/warm`` and ``directory/default``; returns both runs (iterations, wall times).
    """
    both_sides = dict(both_sides or {})
    if both_sides and default_run is not None:
        raise ValueError("extra SPARC parameters for both sides need the default side run here, not taken from "
                         f"a reference run computed without them ({', '.join(both_sides)})")
    check_grid(atoms, grid, settings)
    command = resolve_command(command)
    prepared = prepare_density(density_e_per_bohr3, grid, n_valence_electrons(atoms, settings.psp_dir))
    directory = Path(directory)
    warm_dir, default_dir = directory / "warm", directory / "default"
    write_warm_start_input(atoms, warm_dir, settings, rho_trigger=rho_trigger, extra=both_sides)
    write_input_density(warm_dir / DENSITY_INPUT_NAME, atoms, prepared.density_e_per_bohr3, grid, settings.psp_dir)
    warm = run_sparc(warm_dir, command=command, timeout_s=timeout_s)
    if default_run is not None:
        return WarmStartComparison(warm=warm, default=default_run)
    write_scf_input(atoms, default_dir, settings, print_density=False, fix_rand=1, extra=both_sides)
    default = run_sparc(default_dir, command=command, timeout_s=timeout_s)
    return WarmStartComparison(warm=warm, default=default)


# ----------------------------------------------------------------------------- ASE calculator
class HarrisFoulkesCalculator(Calculator):
    """ASE calculator: energy = Harris-Foulkes free energy (eV) of the density a provider predicts.

    Parameters
    ----------
    density_provider : callable ``atoms -> (Grid, density_e_per_bohr3, uncertainty_summary: dict)``.
        The grid must be SPARC's grid for the structure (``settings.grid(atoms)``).
    settings : :class:`SparcSettings` of the SPARC run.
    hf : :class:`HarrisFoulkesSettings` (RHO_TRIGGER, CHEB_DEGREE, FIX_RAND).
    directory : each evaluation runs SPARC in a fresh ``directory/hf_NNNN``.
    command, timeout_s : SPARC command (default: ``ASE_SPARC_COMMAND``) and time limit per run.
    screening : a :class:`~sparc_bridge.screening.ScreeningModel`: the energy is then the
        second-order corrected Harris-Foulkes energy (same single SPARC run).

    After a calculation, ``results`` holds ``energy`` and ``free_energy`` (eV), and
    ``last_result`` / ``last_uncertainty`` the full :class:`HarrisFoulkesResult` and the provider's summary.
    """

    implemented_properties = ["energy", "free_energy"]

    def __init__(
        self,
        density_provider: DensityProvider,
        settings: SparcSettings = SparcSettings(),
        hf: HarrisFoulkesSettings = HarrisFoulkesSettings(),
        directory=".",
        command: str | None = None,
        timeout_s: float | None = None,
        screening: ScreeningModel | None = None,
        **kwargs,
    ):
        if not callable(density_provider):
            raise TypeError("density_provider must be a callable atoms -> (Grid, density_e_per_bohr3, dict)")
        super().__init__(directory=str(directory), **kwargs)
        self.density_provider = density_provider
        self.settings = settings
        self.hf = hf
        self.command = command
        self.timeout_s = timeout_s
        self.screening = screening
        self.n_runs = 0
        self.last_result: HarrisFoulkesResult | None = None
        self.last_uncertainty: dict = {}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        provided = self.density_provider(self.atoms)
        if not (isinstance(provided, tuple) and len(provided) == 3):
            raise TypeError("density_provider must return (Grid, density_e_per_bohr3, uncertainty_summary_dict)")
        grid, density, uncertainty = provided
        run_dir = Path(self.directory) / f"hf_{self.n_runs:04d}"
        self.n_runs += 1
        result = harris_foulkes_energy(
            self.atoms, density, grid, self.settings, run_dir, self.hf, self.command, self.timeout_s,
            screening=self.screening,
        )
        self.last_result = result
        self.last_uncertainty = dict(uncertainty or {})
        energy_ev = result.energy_ev if result.second_order is None else result.corrected_energy_ha * Hartree
        self.results = {"energy": energy_ev, "free_energy": energy_ev}


# ----------------------------------------------------------------------------- screening calibration
@dataclass(frozen=True)
class ScreeningCalibration:
    """A fitted :class:`~sparc_bridge.screening.ScreeningModel` and, per calibration cell, the plain
    and corrected Harris-Foulkes errors against the cell's SCF energy (Ha/atom, in-sample)."""

    screening: ScreeningModel
    cells: tuple[dict, ...]


def calibrate_screening(model, run_dirs, directory, hf: HarrisFoulkesSettings = HarrisFoulkesSettings(),
                        command: str | None = None, timeout_s: float | None = None, log=None,
                        method: str | None = None) -> ScreeningCalibration:
    """Fit a material's screening model on SPARC reference runs (use training or validation cells,
    never test cells): for each run, predict the density with ``model``, take one Harris-Foulkes
    diagonalisation that also prints rho_out (in ``directory/<run name>``), and fit eps(q) to
    rho_out - rho_in = -eps (rho_in - rho_SCF) (:func:`sparc_bridge.screening.fit_screening`).
    ``method``: the second-order method the fitted model applies (None: the model's present one, else
    long-wavelength); the in-sample corrected errors are computed with it."""
    from .snapshots import load_snapshot
    from ase_mlrho.inference import predict_field

    from .ml_provider import model_reference_settings, sparc_settings_for_model
    from .reference import check_reference_run
    from .run import parse_run
    from .screening import fit_screening_residuals, long_wavelength_components, long_wavelength_residual

    log = log or (lambda msg: None)
    hf = replace(hf, print_output_density=True)
    runs = []
    for run_dir in map(Path, run_dirs):
        snap = load_snapshot(run_dir)
        check_reference_run(model_reference_settings(model), run_dir, f"model '{model.name}'")
        settings = sparc_settings_for_model(model, atoms=snap.atoms)
        check_grid(snap.atoms, snap.grid, settings)
        prediction = predict_field(model, snap.atoms, snap.grid).density
        work = Path(directory) / run_dir.name
        result = harris_foulkes_energy(snap.atoms, prediction, snap.grid, settings, work, hf, command, timeout_s)
        rho_in = prepare_density(prediction, snap.grid, result.n_electrons).density_e_per_bohr3
        rho_out = read_density(work / f"{DEFAULT_LABEL}.dens").density_e_per_bohr3
        residual = long_wavelength_residual(rho_in, rho_out, snap.grid.cell_bohr)
        _, delta_g = long_wavelength_components(rho_in - snap.density_e_per_bohr3, snap.grid.cell_bohr,
                                                residual.q_cut_per_bohr)
        error_hf = result.energy_per_atom_ha - parse_run(run_dir).free_energy_per_atom_ha
        runs.append((run_dir.name, snap.natoms, error_hf, residual, delta_g, rho_in, rho_out, snap.grid.cell_bohr))
        log(f"{run_dir.name}: HF - SCF {error_hf:+.3e} Ha/atom")
    names = ", ".join(r[0] for r in runs)
    screening = fit_screening_residuals([(r[3], r[4]) for r in runs],
                                        source=f"fit_screening on {len(runs)} cells: {names}")
    if method is None:
        present = ScreeningModel.from_metadata(model.metadata)
        method = present.method if present is not None else "long-wavelength"
    screening = replace(screening, method=method)
    cells = [{"run": name, "error_hf_ha_per_atom": error_hf,
              "error_corrected_ha_per_atom": error_hf + second_order_correction(
                  rho_in, rho_out, cell, screening).correction_ha / natoms}
             for name, natoms, error_hf, _, _, rho_in, rho_out, cell in runs]
    return ScreeningCalibration(screening, tuple(cells))
