"""SPARC input sets, written by sparc-x-api's ``SPARC.write_input`` (never a hand-rolled ``.inpt``).

Three kinds of run are needed by the project:

* **SCF** -- the reference: a normal self-consistent run that prints its converged density.
* **Harris-Foulkes** (HF) -- one diagonalisation of the Hamiltonian built from a given density:
  ``READ_INIT_DENS: 1`` + ``INPUT_DENS_FILE``, ``MAXIT_SCF: 1``, density mixing (so that SPARC's
  first-iteration energy *is* the Harris-Foulkes functional of the input density, SPARC_NOTES Q3),
  ``FIX_RAND: 1`` (repeatable random start orbitals) and ``RHO_TRIGGER`` CheFSI passes on the fixed
  input Hamiltonian, enough of them that the subspace is converged (see :data:`DEFAULT_RHO_TRIGGER`).
* **warm start** -- a normal SCF that starts from a given density (``READ_INIT_DENS: 1``).

The grid is always written as ``FD_GRID`` (intervals) taken from
:meth:`ase_mlrho.grid.Grid.from_atoms`, so the density written on the Python side and the grid
SPARC builds agree exactly. sparc-x-api validates every parameter against SPARC's schema: an
unknown or misspelt name raises :class:`UnknownSparcParameterError` (a ``KeyError``), never a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from ase_mlrho.grid import Grid
from ase_mlrho.quiet import quiet_third_party

__all__ = [
    "SparcSettings",
    "HarrisFoulkesSettings",
    "InputSet",
    "UnknownSparcParameterError",
    "DEFAULT_RHO_TRIGGER",
    "DEFAULT_STATES_FACTOR",
    "HF_METADATA_KEY",
    "DEFAULT_LABEL",
    "DENSITY_INPUT_NAME",
    "scf_parameters",
    "harris_foulkes_parameters",
    "warm_start_parameters",
    "write_input_set",
    "write_scf_input",
    "write_harris_foulkes_input",
    "write_warm_start_input",
    "read_input_parameters",
]

DEFAULT_LABEL = "SPARC"
#: File name of the density given to SPARC, relative to the run directory (= the ``.inpt`` directory).
DENSITY_INPUT_NAME = "input_density.cube"

#: CheFSI passes on the fixed input Hamiltonian in a single-diagonalisation Harris-Foulkes run.
#:
#: Measured with ``benchmarks/harris_foulkes_convergence.py``: SPARC's own converged density fed back
#: (READ_INIT_DENS, MAXIT_SCF 1, FIX_RAND 1), error of the single-shot energy against the SCF energy
#: of the same run; PBE, 0.25 Bohr mesh, Gamma point, SPARC 2025-12-03 on 2 MPI ranks of a shared
#: 2-core machine (load ~4, so wall times are inflated and comparable only with each other).
#: CHEB_DEGREE 30 is SPARC's default at this mesh. SCF wall for Al32 a = 4.05 A: 153 s / 39
#: iterations in the reference run, 324 s / 47 iterations fresh under the same load as the rows below.
#:
#: ===================  ===========  ===========  ========================  ===============  ========
#: structure            RHO_TRIGGER  CHEB_DEGREE  E_HF - E_SCF (Ha/atom)    first SCF error  wall (s)
#: ===================  ===========  ===========  ========================  ===============  ========
#: Al4 a = 4.05 A       4 (SPARC)    30           +4.5e-3                   1.5e-1           6
#: Al4                  10           30           +3.1e-9                   4.1e-5           2
#: Al4                  20           30           +6.0e-10                  2.2e-7           2
#: Al32 a = 4.05 A      8            60           +2.2e-5                   2.8e-3           83
#: Al32                 10           50           +1.3e-5                   2.1e-3           90
#: Al32                 12           40           +1.6e-5                   2.4e-3           89
#: Al32                 16           30           +1.6e-5                   2.4e-3           83
#: Al32                 20           30           +2.7e-6                   9.6e-4           108
#: Al32                 24           30           +4.6e-7                   3.9e-4           129
#: Al32 T = 1575 K (3)  16           30           +2.9e-6                   1.1e-3           123
#: Al32 T = 1575 K (3)  20           30           +2.9e-7                   3.3e-4           97
#: Al32 T = 1575 K (3)  24           30           +2.9e-8                   9.6e-5           154
#: ===================  ===========  ===========  ========================  ===============  ========
#:
#: The error falls with the number of filter applications RHO_TRIGGER x CHEB_DEGREE, and so does
#: the cost: a higher degree with fewer passes buys nothing. 20 x 30 is the cheapest setting below
#: the 1e-5 Ha/atom target on both 32-atom cells (with a margin of 4x on the perfect crystal), so
#: that an ML density's own error, not the eigensolver, dominates. The needed passes grow with the
#: number of states (4 atoms: 10 suffice), so check larger cells with the benchmark.
#: The error is positive: an unconverged subspace raises the band energy.
DEFAULT_RHO_TRIGGER = 20

#: NSTATES factor of a Harris-Foulkes run when a model records none (None: SPARC's default, 1.2).
#:
#: Session 6, same benchmark, same load for every row (a fresh SCF of each cell beside them):
#:
#: =====================  ===========  ======  =======  =======================  ========  ==========
#: cell                   RHO_TRIGGER  degree  NSTATES  E_HF - E_SCF (Ha/atom)   wall (s)  fresh SCF
#: =====================  ===========  ======  =======  =======================  ========  ==========
#: Al32 945 K (Gamma)     20           30      62       +4.5e-7                  110       250 s / 35
#: Al32                   12           30      62       +5.2e-5                  71
#: Al32                   12           30      80       +2.0e-7                  89
#: Al32                   8            30      100      +9.9e-8                  80
#: Al32                   10           30      100      +1.9e-9                  94
#: Al32                   6            30      120      +3.9e-6                  72
#: Al32                   5 / 4        50 / 60 100      +3.1e-7 / +2.3e-6        79 / 75
#: Si32Ge32 1500 K        20           20      350      +1.8e-9                  314       273 s / 14
#: Si32Ge32               12 / 8       20      350      +2.9e-9 / +1.9e-6        190 / 133
#: Si32Ge32               8 / 6        20      420/500  +2.3e-8 / +8.0e-8        165 / 158
#: Si32Ge32               4 / 5 / 6    40/36/30 350     +1.6e-5 / +1.3e-6 / +6.5e-7  122 / 137 / 139
#: Al32 1500 K, 2x2x2 k   8            30      100      +1.8e-7                  400 (*)   667 s / 23
#: Al32 1500 K, 2x2x2 k   7 / 6        30      100/120  +2.2e-6 / +4.3e-6        316 / 342
#: Al32 800 K, 2x2x2 k    7            30      100      +2.7e-6                  333
#: =====================  ===========  ======  =======  =======================  ========  ==========
#:
#: (Session 7; (*) with other work on the machine, ~355 s alone at ~40 s per pass.) With 4 irreducible
#: k-points the SCF converges in 23 iterations, so the k-point model ``al-pbe`` records 7 passes
#: (47 % of the fresh SCF) and the Gamma-point ``al-pbe-gamma`` keeps 8.
#:
#: A metal's states at the Fermi level converge slowly when the filter's cut-off (the highest state
#: kept) is close to them; twice the occupied states move it away, and 8 passes then beat SPARC's
#: 62 states at 20 (the passes cost 1.5x more each). SiGe (288 occupied states, 160 of them Ge 3d)
#: gains nothing from more states or a higher degree: its subspace is converged by 8 passes. The
#: shipped models record these choices (``hf_settings``).
DEFAULT_STATES_FACTOR = None

#: model-file metadata key of a material's measured Harris-Foulkes eigensolver settings
#: ({"rho_trigger": int, "states_factor": float or null, "source": str}); see benchmarks/README.md
HF_METADATA_KEY = "hf_settings"

#: model-file metadata key of the SPARC settings a material's warm-start comparisons give to both runs
#: alike ({"sparc": {NAME: value}, "source": str}), e.g. al-pbe's MIXING_PARAMETER 0.6: a larger Pulay
#: step that the warm start, already close to the fixed point, gains more from than SPARC's default guess
#: (measured in benchmarks/README.md, 'Warm start')
WARMSTART_METADATA_KEY = "warmstart_settings"


def warm_start_params_for_model(metadata: dict) -> dict:
    """The SPARC parameters a model file records for warm starts (``warmstart_settings``), names upper
    case; ``{}`` when it records none. ValueError naming the key for a malformed entry (the names are
    checked against SPARC's schema when an input file is written)."""
    from ase_mlrho.model_files import metadata_entry

    def parse(entry: dict) -> dict:
        params = entry["sparc"]
        if not isinstance(params, dict) or not all(
                isinstance(k, str) and k and isinstance(v, (int, float, str)) and not isinstance(v, bool)
                for k, v in params.items()):
            raise ValueError("want {'sparc': {NAME: number or text}, 'source': ...}")
        return {k.upper(): v for k, v in params.items()}

    return metadata_entry(metadata, WARMSTART_METADATA_KEY, parse) or {}


class UnknownSparcParameterError(KeyError):
    """A SPARC parameter name that SPARC's schema (as shipped with sparc-x-api) does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class SparcSettings:
    """Physical and numerical settings shared by every SPARC run of a study.

    Defaults match the shared reference data: PBE, Fermi-Dirac smearing at 631.554 K, a 0.25 Bohr
    mesh, Gamma point only, SCF tolerance 1e-6. ``extra`` holds further SPARC parameters as
    ``(NAME, value)`` pairs; they are validated by sparc-x-api like every other parameter.
    """

    xc: str = "pbe"
    elec_temp_type: str = "Fermi-Dirac"
    elec_temp_k: float = 631.554
    mesh_spacing_bohr: float = 0.25
    kpts: tuple[int, int, int] = (1, 1, 1)
    tol_scf: float = 1e-6
    maxit_scf: int = 100
    psp_dir: str | None = None
    extra: tuple[tuple[str, object], ...] = ()

    def grid(self, atoms) -> Grid:
        """The grid SPARC will use for ``atoms`` (written as ``FD_GRID``)."""
        return Grid.from_atoms(atoms, self.mesh_spacing_bohr)


@dataclass(frozen=True)
class HarrisFoulkesSettings:
    """Eigensolver settings of a single-diagonalisation Harris-Foulkes run.

    ``rho_trigger``: CheFSI passes on the fixed input Hamiltonian before the one output density is
    formed (SPARC's default of 4 is far too few from random orbitals); ``cheb_degree``: Chebyshev
    filter degree (None = SPARC's default from the mesh, 30 at 0.25 Bohr); ``fix_rand``: repeatable
    random start orbitals. ``print_output_density`` makes SPARC print rho_out itself (mixing
    parameter 1, no preconditioner), useful to compare the input density with the density it produces.
    ``states_factor``: NSTATES = floor(states_factor x N_electrons / 2) + 5, SPARC's own rule with its factor
    1.2 replaced (None: SPARC's default). More states than SPARC's default converge the occupied ones in far
    fewer passes (see :data:`DEFAULT_STATES_FACTOR`).
    """

    rho_trigger: int = DEFAULT_RHO_TRIGGER
    cheb_degree: int | None = None
    fix_rand: int = 1
    print_output_density: bool = False
    states_factor: float | None = DEFAULT_STATES_FACTOR

    @classmethod
    def for_model(cls, metadata: dict, rho_trigger: int | None = None) -> "HarrisFoulkesSettings":
        """The eigensolver settings a model file records for its material (``hf_settings``: measured with
        ``benchmarks/harris_foulkes_convergence.py``), else the defaults; ``rho_trigger`` overrides."""
        from ase_mlrho.model_files import metadata_entry

        def parse(entry) -> "HarrisFoulkesSettings":
            if not isinstance(entry, dict):
                raise TypeError("not a mapping")
            return cls(rho_trigger=int(entry.get("rho_trigger", DEFAULT_RHO_TRIGGER)),
                       states_factor=entry.get("states_factor", DEFAULT_STATES_FACTOR))

        hf = metadata_entry(metadata, HF_METADATA_KEY, parse) or parse({})
        return hf if rho_trigger is None else replace(hf, rho_trigger=int(rho_trigger))

    def nstates(self, n_electrons: float) -> int | None:
        """NSTATES for a cell with ``n_electrons`` valence electrons (None: SPARC's default)."""
        if self.states_factor is None:
            return None
        return int(self.states_factor * (float(n_electrons) / 2.0)) + 5

    def __post_init__(self):
        if int(self.rho_trigger) < 1:
            raise ValueError(f"rho_trigger must be >= 1, got {self.rho_trigger}")
        if self.cheb_degree is not None and int(self.cheb_degree) < 1:
            raise ValueError(f"cheb_degree must be >= 1 or None, got {self.cheb_degree}")
        if self.states_factor is not None and not float(self.states_factor) >= 1.0:
            raise ValueError(f"states_factor must be >= 1 (every occupied state needs a place), got {self.states_factor}")


@dataclass(frozen=True)
class InputSet:
    """A written SPARC input set: where it is, its label, the grid and the parameters given."""

    directory: Path
    label: str
    grid: Grid
    parameters: Mapping[str, object] = field(default_factory=dict)

    @property
    def inpt_path(self) -> Path:
        return self.directory / f"{self.label}.inpt"


# ----------------------------------------------------------------------------- parameters (pure)
def _base_parameters(atoms, settings: SparcSettings) -> dict:
    grid = settings.grid(atoms)
    params = {
        "xc": settings.xc,
        "kpts": tuple(int(k) for k in settings.kpts),
        "FD_GRID": [int(n) for n in grid.intervals],
        "ELEC_TEMP_TYPE": settings.elec_temp_type,
        "ELEC_TEMP": float(settings.elec_temp_k),
        "TOL_SCF": float(settings.tol_scf),
        "MAXIT_SCF": int(settings.maxit_scf),
        # .static then holds 'Total free energy (Ha)' with 16 digits (SPARC_NOTES Q3)
        "PRINT_FORCES": 1,
        "PRINT_ATOMS": 1,
    }
    for name, value in settings.extra:
        params[str(name).upper()] = value
    return params


def scf_parameters(atoms, settings: SparcSettings = SparcSettings(), print_density: bool = True,
                   fix_rand: int | None = None) -> dict:
    """Parameters of a reference SCF run (prints its converged density when ``print_density``)."""
    params = _base_parameters(atoms, settings)
    params["PRINT_DENSITY"] = int(bool(print_density))
    if fix_rand is not None:
        params["FIX_RAND"] = int(fix_rand)
    return params


def harris_foulkes_parameters(
    atoms,
    settings: SparcSettings = SparcSettings(),
    hf: HarrisFoulkesSettings = HarrisFoulkesSettings(),
    density_file: str = DENSITY_INPUT_NAME,
    n_electrons: float | None = None,
) -> dict:
    """Parameters of a single-diagonalisation Harris-Foulkes run from ``density_file``.

    Density mixing is set explicitly: only then is SPARC's first-iteration energy the
    Harris-Foulkes functional of the input density (potential mixing gives the KS energy of rho_out).
    ``n_electrons`` (valence electrons of the cell) sets NSTATES by ``hf.states_factor``; an explicit
    NSTATES in ``settings.extra`` wins.
    """
    params = _base_parameters(atoms, settings)
    nstates = hf.nstates(n_electrons) if n_electrons is not None else None
    if nstates is not None and "NSTATES" not in params:
        params["NSTATES"] = nstates
    params.update(
        READ_INIT_DENS=1,
        INPUT_DENS_FILE=str(density_file),
        MAXIT_SCF=1,
        MIXING_VARIABLE="density",
        RHO_TRIGGER=int(hf.rho_trigger),
        FIX_RAND=int(hf.fix_rand),
        PRINT_DENSITY=int(bool(hf.print_output_density)),
    )
    if hf.cheb_degree is not None:
        params["CHEB_DEGREE"] = int(hf.cheb_degree)
    if hf.print_output_density:
        params.update(MIXING_PARAMETER=1.0, MIXING_PRECOND="none")
    return params


def warm_start_parameters(
    atoms,
    settings: SparcSettings = SparcSettings(),
    density_file: str = DENSITY_INPUT_NAME,
    print_density: bool = False,
    fix_rand: int | None = 1,
    rho_trigger: int | None = DEFAULT_RHO_TRIGGER,
) -> dict:
    """Parameters of a normal SCF that starts from ``density_file`` instead of atomic densities.

    ``RHO_TRIGGER`` matters here too: SPARC's orbitals start random whatever the density, and with
    its default of 4 passes the first output density is so poor that mixing throws the good input
    away. Measured on Al4 from its own converged density: RHO_TRIGGER 4 -> first SCF error 0.15 and
    17 iterations (default guess: 16); RHO_TRIGGER 20 -> first error 2e-7, converged at once.
    ``None`` leaves SPARC's default.
    """
    params = scf_parameters(atoms, settings, print_density=print_density, fix_rand=fix_rand)
    params.update(READ_INIT_DENS=1, INPUT_DENS_FILE=str(density_file))
    if rho_trigger is not None:
        params["RHO_TRIGGER"] = int(rho_trigger)
    return params


# ----------------------------------------------------------------------------- writing
def write_input_set(atoms, directory, parameters: Mapping[str, object], settings: SparcSettings = SparcSettings(),
                    label: str = DEFAULT_LABEL) -> InputSet:
    """Write ``<label>.inpt``/``.ion`` (+ the psp8 files) into ``directory`` with sparc-x-api.

    Raises :class:`UnknownSparcParameterError` for a parameter SPARC does not know and
    ``ValueError`` for a value sparc-x-api's validator refuses.
    """
    from sparc import SPARC  # heavy import

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_third_party(all_warnings=False):
            calc = SPARC(directory=str(directory), label=label, psp_dir=settings.psp_dir, **dict(parameters))
            calc.write_input(atoms)
    except KeyError as exc:
        message = exc.args[0] if exc.args else str(exc)
        raise UnknownSparcParameterError(
            f"{message} (check the spelling against SPARC's manual; sparc-x-api validates every name)"
        ) from None
    return InputSet(directory=directory, label=label, grid=settings.grid(atoms), parameters=dict(parameters))


def write_scf_input(atoms, directory, settings: SparcSettings = SparcSettings(), label: str = DEFAULT_LABEL,
                    print_density: bool = True, fix_rand: int | None = None,
                    extra: Mapping[str, object] | None = None) -> InputSet:
    """Write a reference SCF input set (see :func:`scf_parameters`); ``extra`` parameters are added last."""
    return write_input_set(atoms, directory, {**scf_parameters(atoms, settings, print_density, fix_rand),
                                              **(extra or {})}, settings, label)


def write_harris_foulkes_input(atoms, directory, settings: SparcSettings = SparcSettings(),
                               hf: HarrisFoulkesSettings = HarrisFoulkesSettings(),
                               density_file: str = DENSITY_INPUT_NAME, label: str = DEFAULT_LABEL,
                               n_electrons: float | None = None) -> InputSet:
    """Write a single-diagonalisation Harris-Foulkes input set (the density file is written separately)."""
    return write_input_set(atoms, directory, harris_foulkes_parameters(atoms, settings, hf, density_file, n_electrons),
                           settings, label)


def write_warm_start_input(atoms, directory, settings: SparcSettings = SparcSettings(),
                           density_file: str = DENSITY_INPUT_NAME, label: str = DEFAULT_LABEL,
                           print_density: bool = False, fix_rand: int | None = 1,
                           rho_trigger: int | None = DEFAULT_RHO_TRIGGER,
                           extra: Mapping[str, object] | None = None) -> InputSet:
    """Write a warm-start SCF input set (the density file is written separately); ``extra`` parameters
    are added last."""
    return write_input_set(atoms, directory,
                           {**warm_start_parameters(atoms, settings, density_file, print_density, fix_rand,
                                                    rho_trigger), **(extra or {})},
                           settings, label)


def read_input_parameters(directory, label: str = DEFAULT_LABEL) -> dict:
    """Read ``<label>.inpt`` back through sparc-x-api's parser: ``{NAME: value}`` with SPARC's types."""
    from sparc.io import SparcBundle

    with quiet_third_party():
        bundle = SparcBundle(Path(directory), mode="r", label=label)
        params = bundle.read_raw_results()["inpt"]["params"]
    return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in params.items()}
