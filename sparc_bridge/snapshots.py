"""SPARC run directories as :class:`~ase_mlrho.data.Snapshot` objects.

A SPARC run directory holds ``SPARC.inpt``, ``SPARC.ion``, ``SPARC.out`` (and usually
``SPARC.static``), the converged density ``SPARC.dens`` or ``SPARC.dens.gz``, and optionally a
``meta.json`` saying how the structure was made. Atoms come from sparc-x-api's reader, the density
from :mod:`sparc_bridge.density_file`, the grid from :mod:`ase_mlrho.grid`, and every one of them
is cross-checked against the others, so a snapshot that loads is a consistent one.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from ase.units import Hartree

from ase_mlrho.data import Snapshot
from ase_mlrho.grid import Grid
from ase_mlrho.quiet import quiet_third_party

from .density_file import read_density

__all__ = ["load_snapshot", "valence_electrons", "SnapshotError", "find_density_file", "find_run_directories"]


class SnapshotError(ValueError):
    """A SPARC run directory that cannot be used as a snapshot; the message says why."""


def find_density_file(directory: Path, label: str = "SPARC") -> Path | None:
    for name in (f"{label}.dens", f"{label}.dens.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_snapshot(directory, label: str = "SPARC") -> Snapshot:
    """Load a SPARC run directory into a :class:`Snapshot`, checking that the pieces agree.

    Raises :class:`SnapshotError` when files are missing, when the density grid differs from the
    grid SPARC printed, or when the density does not integrate to the electron count (1e-4 relative).
    """
    from sparc.io import SparcBundle  # heavy import, only needed here

    directory = Path(directory)
    if not directory.is_dir():
        raise SnapshotError(f"{directory}: not a directory")
    for suffix in (".inpt", ".ion", ".out"):
        if not (directory / f"{label}{suffix}").is_file():
            raise SnapshotError(f"{directory}: missing {label}{suffix}; is this a finished SPARC run?")
    dens_path = find_density_file(directory, label)
    if dens_path is None:
        raise SnapshotError(f"{directory}: no {label}.dens(.gz); run SPARC with PRINT_DENSITY: 1")
    try:
        with quiet_third_party():
            bundle = SparcBundle(directory, mode="r", label=label)
            raw = bundle.read_raw_results()
            atoms = bundle.convert_to_ase(index=-1, include_all_files=True)
    except Exception as exc:  # sparc-x-api raises many kinds; name the directory
        raise SnapshotError(f"{directory}: sparc-x-api could not read the run ({type(exc).__name__}: {exc})") from exc

    out_params = raw.get("out", {}).get("parameters", {})
    inpt_params = raw.get("inpt", {}).get("params", {})
    cell_bohr = np.asarray(out_params.get("LATVEC", inpt_params.get("LATVEC")), dtype=np.float64)
    scale = np.asarray(out_params.get("LATVEC_SCALE", inpt_params.get("LATVEC_SCALE", [1, 1, 1])), float)
    if cell_bohr.shape != (3, 3):
        raise SnapshotError(f"{directory}: no LATVEC in {label}.out / {label}.inpt")
    cell_bohr = cell_bohr / np.linalg.norm(cell_bohr, axis=1)[:, None] * (
        scale * np.linalg.norm(cell_bohr, axis=1)
    )[:, None]
    pbc = tuple(c == "P" for c in str(out_params.get("BC", inpt_params.get("BC", "P P P"))).split())
    fd_grid = out_params.get("FD_GRID")
    if fd_grid is None:
        raise SnapshotError(f"{directory}: {label}.out does not echo FD_GRID; did SPARC finish?")
    grid = Grid.from_intervals(cell_bohr, fd_grid, pbc)

    dens = read_density(dens_path)
    if dens.shape != grid.shape:
        raise SnapshotError(f"{dens_path}: density grid {dens.shape} differs from SPARC's grid {grid.shape}")
    n_electrons = _electrons_from_out(directory / f"{label}.out")
    if n_electrons is None:
        n_electrons = float(sum(valence_electrons(s) for s in atoms.get_chemical_symbols()))
    rho = dens.density_e_per_bohr3
    integral = grid.integrate(rho)
    if abs(integral - n_electrons) > 1e-4 * n_electrons:
        raise SnapshotError(
            f"{dens_path}: density integrates to {integral:.6f} electrons, SPARC reports {n_electrons:g}"
        )

    free_energy_ha = None
    if atoms.calc is not None and "free energy" in atoms.calc.results:
        free_energy_ha = float(atoms.calc.results["free energy"]) / Hartree
    meta = {}
    if (directory / "meta.json").is_file():
        meta = json.loads((directory / "meta.json").read_text())
    atoms.calc = None
    provenance = {
        "path": str(directory),  # as given: model files record it, and must not name this machine's folders
        "sparc_version": raw.get("out", {}).get("sparc_version"),
        # the nominal mesh: MESH_SPACING when SPARC was given one, else what meta.json records
        # (runs set up with FD_GRID, e.g. by sparc_bridge.datagen, carry it there)
        "mesh_spacing_bohr": inpt_params.get("MESH_SPACING", meta.get("mesh_spacing_bohr")),
        "fd_grid": [int(n) for n in fd_grid],
        "meta": meta,
    }
    valence = {s: valence_electrons(s) for s in sorted(set(atoms.get_chemical_symbols()))}
    return Snapshot(directory.name, atoms, grid, rho, n_electrons, free_energy_ha, provenance, valence)


def _electrons_from_out(path: Path) -> float | None:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Total number of electrons"):
            return float(line.split(":")[1])
    return None


@lru_cache(maxsize=None)
def valence_electrons(symbol: str, psp_dir: str | None = None) -> float:
    """Valence electrons of ``symbol`` in the psp8 pseudopotential SPARC would use.

    Searched as sparc-x-api does: ``psp_dir``, ``$SPARC_PSP_PATH``, ``$SPARC_PP_PATH``, then the psp8
    set bundled with sparc-x-api (Al 3, Si 4, Ge 14: Ge's 3d shell is in the valence).
    """
    from sparc.sparc_parsers.pseudopotential import find_pseudo_path, parse_psp8_header

    search = psp_dir or os.environ.get("SPARC_PSP_PATH") or os.environ.get("SPARC_PP_PATH")
    if search is None:
        import sparc

        search = str(Path(sparc.__file__).parent / "psp")
    try:
        path = find_pseudo_path(symbol, search)
    except Exception as exc:
        raise SnapshotError(f"no psp8 pseudopotential for {symbol} in {search} ({exc})") from exc
    return float(parse_psp8_header(Path(path).read_text())["zion"])


def find_run_directories(patterns) -> list[Path]:
    """SPARC run directories from run directories, their parents, ``mlrho datagen`` outputs (converged
    snapshots only, from the manifest) and shell-style globs; each directory once, in the order found."""
    import glob

    from .datagen import MANIFEST_NAME, training_directories

    out = []
    for pattern in patterns:
        for p in sorted(Path(x) for x in (glob.glob(str(pattern)) or [pattern])):
            if (p / MANIFEST_NAME).is_file():
                out += training_directories(p)
            elif (p / "SPARC.out").is_file():
                out.append(p)
            elif p.is_dir():
                out += sorted(q for q in p.iterdir() if (q / "SPARC.out").is_file())
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique
