"""What ``mlrho energy``, ``mlrho eos`` and ``mlrho warmstart`` share: options, inputs, run directories.

* Inputs: a SPARC run directory (loaded with :func:`ase_mlrho.data.load_snapshot`, which also
  gives the reference SCF energy) or any structure file ``ase.io.read`` reads.
* SPARC: found as sparc-x-api finds it (``ASE_SPARC_COMMAND``, else ``sparc`` on PATH), checked
  *before* any prediction, so a missing SPARC costs one clear line and no work.
* Run directories: each invocation works in its own directory (``--workdir``, default a new
  directory under ``./mlrho-runs/``). A given ``--workdir`` must be new or empty, so results of
  different runs never mix. The command's report (``mlrho_report.json``) is written atomically and
  only when the command succeeded; every SPARC run inside has SPARC's own success marker
  (:data:`sparc_bridge.run.MARKER_NAME`). A directory without the report is not a finished run.
* Errors: bad input (arguments, structure, model, missing SPARC) exits 2 with one line on stderr;
  a SPARC run that fails or an EOS that cannot be fitted exits 1 with SPARC's own message.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

#: the command's report, written atomically into the work directory when the command succeeded
REPORT_NAME = "mlrho_report.json"
#: parent of the default work directories
DEFAULT_RUNS_DIR = "mlrho-runs"

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


class CommandError(Exception):
    """Bad input: printed as one line, exit status 2."""


@dataclass(frozen=True)
class LoadedInput:
    """The structure to compute and, for a SPARC run directory, its reference SCF figures (Ha, s)."""

    atoms: object
    source: str
    is_run_dir: bool
    scf_energy_ha_per_atom: float | None = None
    scf_iterations: int | None = None
    scf_walltime_s: float | None = None
    grid_shape: tuple[int, int, int] | None = None
    snapshot: object = None


def add_common_options(p, what: str) -> None:
    """Options every bridge command takes."""
    p.add_argument("-m", "--model", default="al-pbe", help="shipped model name or model file (default al-pbe)")
    p.add_argument("--workdir", metavar="DIR",
                   help=f"directory for the SPARC runs of this {what} (new or empty; default: a new directory "
                        f"under ./{DEFAULT_RUNS_DIR}/)")
    p.add_argument("--index", default="-1", help="frame of a trajectory file (ase.io.read index; default -1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's posterior weight samples (default 0)")
    p.add_argument("--samples", type=int, default=None, help="posterior weight samples (default: the model's)")
    p.add_argument("--workers", type=int, default=1, help="local processes for the density prediction (default 1)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="time limit of each SPARC run (default: none)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")


def parse_sparc_params(items) -> dict:
    """``["NSTATES=101", "mixing_parameter=0.5"]`` -> ``{"NSTATES": 101, "MIXING_PARAMETER": 0.5}``.

    Each name and value is checked up front against sparc-x-api's parameter list (SPARC's own
    documentation), so a misspelt or ill-typed parameter costs one line, not a failed SPARC run."""
    from sparc.api import SparcAPI

    api = SparcAPI()
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip().upper(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"--sparc-param wants NAME=VALUE, got {item!r}")
        if name not in api.parameters:
            raise ValueError(f"--sparc-param {name}: not a SPARC input parameter (SPARC {api.sparc_version}'s list, "
                             "from sparc-x-api)")
        for kind in (int, float):
            try:
                params[name] = kind(value)
                break
            except ValueError:
                continue
        else:
            params[name] = value
        if not api.validate_input(name, params[name]):
            raise ValueError(f"--sparc-param {name}={value}: not a valid value of {name} "
                             f"({api.parameters[name].get('type', 'see SPARC documentation')})")
    return params


def add_second_order_option(p, what: str) -> None:
    """``--no-second-order``: plain Harris-Foulkes energies even if the model carries a screening model."""
    p.add_argument("--no-second-order", action="store_true",
                   help=f"{what} without the second-order screened correction even if the model carries a "
                        "screening model (mlrho screening)")


def model_screening(args, model):
    """The model's :class:`~sparc_bridge.screening.ScreeningModel` (None with ``--no-second-order`` or
    when it has none); CommandError for a malformed entry."""
    from sparc_bridge.screening import ScreeningModel

    if args.no_second_order:
        return None
    try:
        return ScreeningModel.from_metadata(model.metadata)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def model_hf_settings(args, model):
    """The Harris-Foulkes eigensolver settings the model records for its material (``--rho-trigger``
    overrides the passes); CommandError for a malformed entry."""
    from sparc_bridge.inputs import HarrisFoulkesSettings

    try:
        return HarrisFoulkesSettings.for_model(model.metadata, getattr(args, "rho_trigger", None))
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def fail(command: str, message) -> int:
    """One line on stderr, exit status 2."""
    print(f"mlrho {command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run_failed(command: str, message) -> int:
    """SPARC's own (possibly multi-line) message on stderr, exit status 1."""
    print(f"mlrho {command}: error: {message}", file=sys.stderr)
    return EXIT_RUN_FAILED


def sparc_command() -> str:
    """The SPARC command; :class:`CommandError` with how to configure it when there is none."""
    from sparc_bridge.run import SparcNotFoundError, resolve_command

    try:
        return resolve_command()
    except SparcNotFoundError as exc:
        raise CommandError(str(exc)) from None


def load_input(path: str, index: str = "-1") -> LoadedInput:
    """A SPARC run directory (with its reference SCF energy) or a structure file."""
    from sparc_bridge.snapshots import SnapshotError, load_snapshot

    p = Path(path)
    if not p.exists():
        raise CommandError(f"{path} does not exist")
    if p.is_dir():
        try:
            snap = load_snapshot(p)
        except SnapshotError as exc:
            raise CommandError(f"{exc} (give a finished SPARC run directory or a structure file)") from None
        iterations = walltime = None
        try:
            from sparc_bridge.run import parse_run

            ref = parse_run(p)
            iterations, walltime = ref.n_scf_iterations, ref.sparc_walltime_s
        except Exception:  # noqa: BLE001 - the reference's timing is a nicety; the energy comes from the snapshot
            pass
        e = None if snap.free_energy_ha is None else snap.free_energy_ha / snap.natoms
        return LoadedInput(snap.atoms, str(p), True, e, iterations, walltime, tuple(snap.grid.shape), snap)
    from ..structure_files import read_structure

    try:
        atoms = read_structure(path, index)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    atoms.calc = None
    return LoadedInput(atoms, str(p), False)


def load_checked_model(model_name: str, atoms, psp_dir: str | None = None):
    """Load the model and refuse a structure it cannot describe (unknown species, other valences)."""
    from ase_mlrho.grid import InvalidStructureError
    from ase_mlrho.model_files import ModelFileError, load_model
    from sparc_bridge.ml_provider import ModelPseudopotentialMismatchError, check_model_for_structure

    try:
        model = load_model(model_name)
        check_model_for_structure(model, atoms, psp_dir)
    except (ModelFileError, InvalidStructureError, ModelPseudopotentialMismatchError) as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}") from None
    return model


def check_reference(model, run_dir) -> None:
    """CommandError unless the reference run ``run_dir`` was computed with the settings the model runs SPARC
    with for its cell (k-points, mesh, xc, smearing, pseudopotentials): never two energies computed two ways."""
    from sparc_bridge.ml_provider import model_reference_settings
    from sparc_bridge.reference import ReferenceMismatchError, check_reference_run

    try:
        check_reference_run(model_reference_settings(model), run_dir, f"model '{model.name}'")
    except ReferenceMismatchError as exc:
        raise CommandError(str(exc)) from None
    except (OSError, KeyError, ValueError) as exc:
        raise CommandError(f"{run_dir}: cannot read the reference run's settings ({exc})") from None


def command_line(args) -> str:
    """The command as the user typed it (``mlrho`` and its arguments, shell-quoted), for a model file's metadata."""
    return "mlrho " + " ".join(shlex.quote(str(a)) for a in args.argv)


def check_model_output(path) -> None:
    """CommandError unless ``path`` can be a model file to write: a ``.safetensors`` name in an existing directory."""
    if not str(path).endswith(".safetensors"):
        raise CommandError(f"-o {path}: the model file must end in .safetensors")
    if not Path(path).resolve().parent.is_dir():
        raise CommandError(f"-o {path}: the directory {Path(path).parent} does not exist")


def check_reference_dirs(model, run_dirs) -> None:
    """CommandError unless every one of ``run_dirs`` is a SPARC run directory computed with the model's
    reference settings (:func:`check_reference`)."""
    for d in run_dirs:
        if not Path(d).is_dir():
            raise CommandError(f"{d} is not a SPARC run directory")
        check_reference(model, d)


class PreparedRun(NamedTuple):
    """What energy / eos / warmstart all need before SPARC runs."""

    command: str
    inp: LoadedInput
    model: object
    provider_settings: tuple  # (InferenceSettings, ExecutorSettings) of the density prediction
    workdir: Path


def prepare_run(args, name: str, check=None) -> PreparedRun:
    """SPARC's command, the structure, the model checked against it, the ML provider settings and a
    fresh work directory, in that order; ``check(model)`` (command-specific input checks that may raise
    ValueError or CommandError) runs before the work directory is made. Raises CommandError or ValueError."""
    from ase_mlrho.inference import ExecutorSettings, InferenceSettings

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    provider_settings = (InferenceSettings(n_samples=args.samples, seed=args.seed),
                         ExecutorSettings("processes", args.workers) if args.workers > 1 else ExecutorSettings())
    command = sparc_command()
    inp = load_input(args.structure, args.index)
    model = load_checked_model(args.model, inp.atoms)
    if inp.is_run_dir:
        check_reference(model, inp.source)
    if check is not None:
        check(model)
    return PreparedRun(command, inp, model, provider_settings, make_workdir(args.workdir, name))


def make_workdir(workdir: str | None, command: str) -> Path:
    """``workdir`` (created; must be new or empty) or a new directory under ``./mlrho-runs/``."""
    if workdir:
        d = Path(workdir)
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise CommandError(f"--workdir {workdir} exists and is not an empty directory; give a new one")
        d.mkdir(parents=True, exist_ok=True)
        return d
    parent = Path(DEFAULT_RUNS_DIR)
    parent.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=parent))


def write_report(workdir: Path, report: dict) -> Path:
    """The command's report, atomically: its presence marks a finished command."""
    from ase_mlrho.files import atomic_write, jsonable

    return atomic_write(workdir / REPORT_NAME, lambda f: json.dump(jsonable(report), f, indent=1))


def finish_report(workdir: Path, report: dict, as_json: bool) -> bool:
    """Write the command's report into its work directory (marking the command finished) and, with
    ``as_json``, print it as the one JSON document on stdout. Returns ``as_json`` (nothing more to print)."""
    write_report(workdir, report)
    if as_json:
        print_json(report)
    return as_json


def print_json(report: dict) -> None:
    from ase_mlrho.files import jsonable

    print(json.dumps(jsonable(report)))
