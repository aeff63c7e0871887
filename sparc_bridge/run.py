"""Run SPARC in its own directory, detect failure, and parse the results with sparc-x-api.

The command is found the way sparc-x-api finds it: an explicit ``command``, else the
``ASE_SPARC_COMMAND`` environment variable (e.g. ``mpirun -np 2 /path/to/sparc``, without
``-name``), else ``sparc`` on ``PATH``. It is run as ``<command> -name <label>`` with the run
directory as working directory, stdout and stderr going to ``sparc.log`` there.

A run counts as successful only when the process exits with 0, neither its log nor its ``.out``
holds a fatal message, and the ``.out`` is complete (SPARC prints ``Total walltime`` last) with an
energy in it. Only then is the marker file ``SPARC_RUN_OK.json`` written (atomically), so no run
directory looks complete when it is not; old outputs and the marker are removed before a run.

Energies are returned in Hartree at full precision: ``Total free energy (Ha)`` of the ``.static``
file (16 digits) when present, else the ``.out`` total. sparc-x-api converts both to eV; we divide
by ``ase.units.Hartree`` again. Note: sparc-x-api's ``.out`` parser multiplies the per-iteration
column by Hartree without renaming it, so its values under ``'Free Energy (Ha/atom)'`` are eV/atom;
:func:`parse_run` converts them back to Ha/atom.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase.units import Hartree

from ase_mlrho.quiet import quiet_third_party

from ase_mlrho.files import atomic_write
from .inputs import DEFAULT_LABEL

__all__ = [
    "SparcNotFoundError",
    "SparcRunError",
    "SparcResult",
    "MARKER_NAME",
    "LOG_NAME",
    "resolve_command",
    "run_sparc",
    "parse_run",
    "is_complete",
]

MARKER_NAME = "SPARC_RUN_OK.json"
LOG_NAME = "sparc.log"
_OUTPUT_SUFFIXES = (".out", ".static", ".dens", ".densUp", ".densDwn", ".eigen", ".aimd", ".geopt", ".restart")
_FATAL_PATTERNS = (
    re.compile(r"\[FATAL\]"),
    re.compile(r"\bERROR\b", re.IGNORECASE),
    re.compile(r"Cannot open", re.IGNORECASE),
    re.compile(r"MPI_Abort|BAD TERMINATION|application called", re.IGNORECASE),
    re.compile(r"Segmentation fault|core dumped|Killed", re.IGNORECASE),
    re.compile(r"command not found|No such file or directory"),
)
_NOT_FATAL = re.compile(r"SCF Error|Error\s*\(|error\s*=|TOL_", re.IGNORECASE)


class SparcNotFoundError(RuntimeError):
    """No SPARC executable configured."""


class SparcRunError(RuntimeError):
    """A SPARC run that failed; the message quotes SPARC's own words and names the directory."""


@dataclass(frozen=True)
class SparcResult:
    """What one SPARC ground-state run gave.

    Energies in Hartree. ``scf_energies_per_atom_ha``/``scf_errors`` are SPARC's per-iteration
    table (energy of iteration k is the Harris-Foulkes functional of that iteration's input density
    under density mixing; error = ||rho_out - rho_in|| / ||rho_out||). ``sparc_walltime_s`` is
    SPARC's own ``Total walltime``; ``wall_time_s`` the wall time of the whole process seen from
    Python (MPI start-up included).
    """

    directory: str
    label: str
    natoms: int
    free_energy_ha: float
    free_energy_per_atom_ha: float
    n_scf_iterations: int
    scf_energies_per_atom_ha: tuple[float, ...]
    scf_errors: tuple[float, ...]
    scf_converged: bool
    sparc_walltime_s: float | None
    wall_time_s: float | None
    fd_grid: tuple[int, int, int] | None
    energy_source: str

    @property
    def first_scf_error(self) -> float:
        """SCF error of iteration 1: relative L2 residual ||rho_out - rho_in|| / ||rho_out|| of the input density."""
        return float(self.scf_errors[0])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["first_scf_error"] = self.first_scf_error
        return d


# ----------------------------------------------------------------------------- command
def resolve_command(command: str | None = None) -> str:
    """The SPARC command line (without ``-name``): ``command``, ``$ASE_SPARC_COMMAND`` or ``sparc`` on PATH.

    Raises :class:`SparcNotFoundError` saying how to configure SPARC when none is found.
    """
    cmd = command if command else os.environ.get("ASE_SPARC_COMMAND", "").strip()
    if not cmd:
        exe = shutil.which("sparc")
        if exe is None:
            raise SparcNotFoundError(
                "no SPARC executable found: set ASE_SPARC_COMMAND to the command that runs SPARC, without "
                "'-name' (e.g. export ASE_SPARC_COMMAND=\"mpirun -np 2 /path/to/sparc\"), or put `sparc` on PATH"
            )
        cmd = shlex.quote(exe)
    if re.search(r"(^|\s)-name(\s|$)", cmd):
        raise SparcNotFoundError(
            f"the SPARC command {cmd!r} contains '-name'; remove it (the label is appended by the bridge, "
            "as sparc-x-api does)"
        )
    return cmd


def describe_command(command: str) -> str:
    """``command`` with every absolute path cut to its file name, for provenance records that others read
    (``mpirun -np 2 /opt/x/bin/sparc`` -> ``mpirun -np 2 sparc``): how SPARC was launched, not where it lay."""
    return " ".join(os.path.basename(tok) if os.path.isabs(tok) else tok for tok in shlex.split(command))


# ----------------------------------------------------------------------------- running
def _clean_outputs(directory: Path, label: str) -> None:
    """Remove the marker and SPARC outputs of a previous run (SPARC would otherwise write ``.out_01``...)."""
    (directory / MARKER_NAME).unlink(missing_ok=True)
    (directory / LOG_NAME).unlink(missing_ok=True)
    inpt = directory / f"{label}.inpt"
    keep = set()  # never delete the density this run reads (it may be an old SPARC.dens)
    if inpt.is_file():
        m = re.search(r"^\s*INPUT_DENS_FILE\s*:\s*(.+)$", inpt.read_text(errors="replace"), re.MULTILINE)
        if m:
            keep = {Path(name).name for name in m.group(1).split()}
    for suffix in _OUTPUT_SUFFIXES:
        for path in directory.glob(f"{label}{suffix}*"):
            if re.fullmatch(re.escape(label + suffix) + r"(_\d+)?", path.name) and path.name not in keep:
                path.unlink()


def _fatal_lines(text: str, limit: int = 8) -> list[str]:
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if not s or _NOT_FATAL.search(s) and "[FATAL]" not in s:
            continue
        if any(p.search(s) for p in _FATAL_PATTERNS):
            lines.append(s)
            if len(lines) >= limit:
                break
    return lines


def _tail(text: str, n: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _line_buffered(command: str) -> str:
    """``command`` under coreutils' ``stdbuf -oL -eL`` where it exists.

    SPARC prints its errors (``[FATAL] ...``) with C stdio, which is block-buffered when writing to a
    file; an error path ends in MPI_Abort, which discards that buffer, so the log would keep only
    mpirun's "MPI_ABORT was invoked" and never SPARC's reason. ``stdbuf`` makes stdio line-buffered in
    every process started under it (mpirun passes its environment on to the ranks it starts locally).
    """
    stdbuf = shutil.which("stdbuf")
    return f"{shlex.quote(stdbuf)} -oL -eL {command}" if stdbuf else command


def run_sparc(directory, label: str = DEFAULT_LABEL, command: str | None = None,
              timeout_s: float | None = None) -> SparcResult:
    """Run SPARC on the input set in ``directory`` and return its parsed :class:`SparcResult`.

    Raises :class:`SparcNotFoundError` when no SPARC is configured and :class:`SparcRunError` (with
    SPARC's own message) when the run times out, exits non-zero, prints a fatal error, or leaves an
    incomplete output. The marker file is written only on success.
    """
    directory = Path(directory)
    cmd = resolve_command(command)
    if not (directory / f"{label}.inpt").is_file():
        raise SparcRunError(f"{directory}: no {label}.inpt; write an input set first (sparc_bridge.inputs)")
    _clean_outputs(directory, label)
    full = f"{cmd} -name {shlex.quote(label)}"
    t0 = time.perf_counter()
    with open(directory / LOG_NAME, "w") as log:
        proc = subprocess.Popen(_line_buffered(full), shell=True, cwd=directory, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise SparcRunError(
                f"SPARC did not finish within {timeout_s} s in {directory} (killed); command: {full}"
            ) from None
        except BaseException:
            _kill_group(proc)
            raise
    wall = time.perf_counter() - t0
    log_text = (directory / LOG_NAME).read_text(errors="replace")
    out_path = directory / f"{label}.out"
    out_text = out_path.read_text(errors="replace") if out_path.is_file() else ""

    fatal = _fatal_lines(log_text) + [ln for ln in _fatal_lines(out_text) if "[FATAL]" in ln]
    if rc != 0 or fatal:
        what = "; ".join(dict.fromkeys(fatal)) or _tail(log_text) or "(no output)"
        raise SparcRunError(
            f"SPARC failed in {directory} (exit status {rc}): {what}\ncommand: {full}\nlog: {directory / LOG_NAME}"
        )
    if not out_text:
        raise SparcRunError(f"SPARC wrote no {label}.out in {directory} (exit status 0); log tail:\n{_tail(log_text)}")
    if "Total walltime" not in out_text:
        raise SparcRunError(
            f"SPARC's {out_path} is unfinished (no 'Total walltime' line): the run stopped early; "
            f"log tail:\n{_tail(log_text)}"
        )
    try:
        result = parse_run(directory, label, wall_time_s=wall)
    except SparcRunError:
        raise
    except Exception as exc:
        raise SparcRunError(f"cannot parse SPARC's output in {directory}: {type(exc).__name__}: {exc}") from exc
    atomic_write(directory / MARKER_NAME, lambda f: json.dump(result.to_dict(), f, indent=1))
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the SPARC process group this call started (mpirun and its ranks)."""
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()


def is_complete(directory) -> bool:
    """Whether ``directory`` holds a run that :func:`run_sparc` finished successfully."""
    return (Path(directory) / MARKER_NAME).is_file()


# ----------------------------------------------------------------------------- parsing
def _seconds(text) -> float | None:
    if text is None:
        return None
    m = re.match(r"\s*([0-9.eE+-]+)", str(text))
    return float(m.group(1)) if m else None


def parse_run(directory, label: str = DEFAULT_LABEL, wall_time_s: float | None = None) -> SparcResult:
    """Parse a finished SPARC run directory with sparc-x-api's parsers (``.out`` and ``.static``).

    Works on any SPARC run directory, e.g. the committed test fixtures and the shared reference runs.
    """
    from sparc.io import SparcBundle

    directory = Path(directory)
    out_path = directory / f"{label}.out"
    if not out_path.is_file():
        raise SparcRunError(f"{directory}: no {label}.out to parse")
    with quiet_third_party():
        raw = SparcBundle(directory, mode="r", label=label).read_raw_results()
    out = raw.get("out", {})
    steps = out.get("ionic_steps") or []
    if not steps or "total free energy" not in steps[-1]:
        raise SparcRunError(f"{out_path}: no 'Total free energy' in SPARC's output; the run did not finish")
    step = steps[-1]
    run_info = out.get("run_info", {})
    natoms = int(run_info.get("total number of atoms", 0)) or len(raw["static"][-1]["atoms"]["symbols"])

    static = raw.get("static") or []
    if static and "free energy" in static[-1]:
        energy_ha = float(static[-1]["free energy"]) / Hartree
        source = f"{label}.static"
    else:
        energy_ha = float(step["total free energy"]["value"]) / Hartree
        source = f"{label}.out"

    conv = step.get("convergence") or []
    table = conv[-1] if conv else {}
    # sparc-x-api bug: values under 'Free Energy (Ha/atom)' are eV/atom (out.py multiplies, key not renamed)
    e_col = next((k for k in table if k.startswith("Free Energy")), None)
    scf_e = tuple(float(v) / Hartree for v in np.atleast_1d(table.get(e_col, []))) if e_col else ()
    scf_err = tuple(float(v) for v in np.atleast_1d(table.get("SCF Error", [])))
    if not scf_err:
        raise SparcRunError(f"{out_path}: no SCF iteration table")

    out_text = out_path.read_text(errors="replace")
    m = re.search(r"Total number of SCF\s*:\s*(\d+)", out_text)
    n_scf = int(m.group(1)) if m else len(scf_err)
    params = out.get("parameters", {})
    fd_grid = tuple(int(n) for n in params["FD_GRID"]) if "FD_GRID" in params else None
    return SparcResult(
        directory=str(directory),
        label=label,
        natoms=natoms,
        free_energy_ha=energy_ha,
        free_energy_per_atom_ha=energy_ha / natoms,
        n_scf_iterations=n_scf,
        scf_energies_per_atom_ha=scf_e,
        scf_errors=scf_err,
        scf_converged="did not converge" not in out_text,
        sparc_walltime_s=_seconds(run_info.get("total walltime")),
        wall_time_s=wall_time_s,
        fd_grid=fd_grid,
        energy_source=source,
    )
