"""The SPARC settings of a model's reference data, and the rule that keeps energies on one footing.

A density model stands for the DFT settings of the SCF densities it was trained on: exchange-correlation
functional, smearing, mesh, pseudopotentials and Brillouin-zone sampling. A Harris-Foulkes energy, an EOS
scan or a warm start made with the model must run SPARC with the same settings, and a reference SCF run
computed with other settings (a Gamma-point reference for a k-point model, another mesh) must not be
compared with it: the difference would be the settings, not the model.

:class:`ReferenceSettings` is that record. It is stored in the model file's metadata (``sparc_reference``),
read from SPARC run directories (:func:`reference_settings_of_run`), and turned into the
:class:`~sparc_bridge.inputs.SparcSettings` of any cell (:meth:`ReferenceSettings.sparc_settings`).

k-points. A model trained on 32-atom cells with a 2x2x2 grid stands for a k-point *density*, not a grid:
the record keeps ``kpoint_length_ang`` = N_i |a_i| of its training cells (Angstrom, the "R_k" of
automatic k-point schemes), and a cell of edge lengths L_i gets N_i = max(1, round(kpoint_length_ang / L_i))
points along axis i, with the same shift. So the 4-atom conventional cell of the same crystal gets 4x4x4,
which with a shift of 0.5 is exactly the 32-atom cell's 2x2x2 set unfolded (the same densities and
energies per atom, at an eighth of the cost), and 108-atom cells (round(2 x 2/3) = 1) the Gamma point.
A Gamma-point record (``kpoint_length_ang`` None) gives the Gamma point for every cell.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .inputs import SparcSettings

__all__ = ["ReferenceSettings", "ReferenceMismatchError", "reference_settings_of_run", "common_reference_settings",
           "check_reference_run", "METADATA_KEY"]

METADATA_KEY = "sparc_reference"
"""Key of a model file's metadata under which its :class:`ReferenceSettings` are stored."""

_XC_NAMES = {"pbe": "GGA_PBE", "gga_pbe": "GGA_PBE", "lda": "LDA_PW", "lda_pw": "LDA_PW", "pz": "LDA_PZ",
             "lda_pz": "LDA_PZ", "pbesol": "GGA_PBEsol", "gga_pbesol": "GGA_PBEsol"}

#: SPARC's EXCHANGE_CORRELATION names back to the ``xc`` names sparc-x-api takes
_API_XC = {"GGA_PBE": "pbe", "GGA_PBEsol": "pbesol", "LDA_PW": "lda", "LDA_PZ": "pz"}


class ReferenceMismatchError(ValueError):
    """A SPARC run computed with other settings than the ones it is compared with; the message names both."""


def _xc_name(xc: str) -> str:
    return _XC_NAMES.get(str(xc).lower(), str(xc).upper())


@dataclass(frozen=True)
class ReferenceSettings:
    """DFT settings of a set of SPARC reference runs (Angstrom for ``kpoint_length_ang``, K, Bohr).

    ``pseudopotentials``: ``((symbol, psp8 file name), ...)`` sorted by symbol; ``kpoint_length_ang``:
    N_i |a_i| per axis of the reference cells, None for Gamma-point-only references.
    """

    xc: str = "GGA_PBE"
    elec_temp_type: str = "Fermi-Dirac"
    elec_temp_k: float = 631.554
    mesh_spacing_bohr: float = 0.25
    kpoint_length_ang: tuple[float, float, float] | None = None
    kpoint_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pseudopotentials: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "xc", _xc_name(self.xc))
        if self.kpoint_length_ang is not None:
            k = tuple(float(x) for x in self.kpoint_length_ang)
            if len(k) != 3 or not all(x > 0 and math.isfinite(x) for x in k):
                raise ValueError(f"kpoint_length_ang must be three positive lengths, got {self.kpoint_length_ang}")
            object.__setattr__(self, "kpoint_length_ang", k)
        object.__setattr__(self, "kpoint_shift", tuple(float(x) for x in self.kpoint_shift))
        object.__setattr__(self, "pseudopotentials", tuple(sorted((str(s), str(f)) for s, f in self.pseudopotentials)))

    # -------------------------------------------------------------------- per cell
    def kpts_for(self, cell_ang) -> tuple[int, int, int]:
        """The Monkhorst-Pack grid of a cell (rows = lattice vectors, Angstrom) at this k-point density."""
        if self.kpoint_length_ang is None:
            return (1, 1, 1)
        lengths = np.linalg.norm(np.asarray(cell_ang, dtype=np.float64), axis=1)
        return tuple(max(1, math.floor(k / l + 0.5)) for k, l in zip(self.kpoint_length_ang, lengths))  # halves up

    def describe_for(self, cell_ang) -> str:
        """One line naming the settings a cell gets: ``GGA_PBE, Fermi-Dirac 631.554 K, mesh 0.25 Bohr, k 2x2x2 shift 0.5``."""
        kpts = self.kpts_for(cell_ang)
        shift = "" if not any(self.kpoint_shift) or kpts == (1, 1, 1) else \
            " shift " + " ".join(f"{s:g}" for s in sorted(set(self.kpoint_shift)))
        k = "Gamma point" if kpts == (1, 1, 1) else "k " + "x".join(map(str, kpts)) + shift
        psp = ", ".join(f for _, f in self.pseudopotentials)
        mesh = "FD_GRID" if math.isnan(self.mesh_spacing_bohr) else f"mesh {self.mesh_spacing_bohr:g} Bohr"
        return (f"{self.xc}, {self.elec_temp_type} {self.elec_temp_k:g} K, {mesh}, {k}"
                + (f", {psp}" if psp else ""))

    def sparc_settings(self, atoms, base: SparcSettings = SparcSettings()) -> SparcSettings:
        """``base`` with these settings for ``atoms``: its k-point grid, the shift, mesh, xc and smearing."""
        kpts = self.kpts_for(atoms.cell[:])
        extra = tuple((k, v) for k, v in base.extra if str(k).upper() != "KPOINT_SHIFT")
        if kpts != (1, 1, 1) and any(self.kpoint_shift):
            extra += (("KPOINT_SHIFT", list(self.kpoint_shift)),)
        xc = base.xc if _xc_name(base.xc) == self.xc else _API_XC.get(self.xc, self.xc.lower())
        return replace(base, xc=xc, elec_temp_type=self.elec_temp_type, elec_temp_k=self.elec_temp_k,
                       mesh_spacing_bohr=self.mesh_spacing_bohr, kpts=kpts, extra=extra)

    # -------------------------------------------------------------------- file format
    def to_dict(self) -> dict:
        d = asdict(self)
        d["kpoint_length_ang"] = None if self.kpoint_length_ang is None else list(self.kpoint_length_ang)
        d["kpoint_shift"] = list(self.kpoint_shift)
        d["pseudopotentials"] = dict(self.pseudopotentials)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ReferenceSettings":
        k = d.get("kpoint_length_ang")
        return cls(xc=d["xc"], elec_temp_type=d["elec_temp_type"], elec_temp_k=float(d["elec_temp_k"]),
                   mesh_spacing_bohr=float(d["mesh_spacing_bohr"]), kpoint_length_ang=None if k is None else tuple(k),
                   kpoint_shift=tuple(d.get("kpoint_shift", (0.0, 0.0, 0.0))),
                   pseudopotentials=tuple(dict(d.get("pseudopotentials", {})).items()))

    @classmethod
    def from_metadata(cls, metadata: dict) -> "ReferenceSettings | None":
        """The record in a model file's metadata, or None (older files); ValueError for a malformed entry."""
        from ase_mlrho.model_files import metadata_entry

        return metadata_entry(metadata, METADATA_KEY, cls.from_dict)


# ----------------------------------------------------------------------------- reading runs
def _run_parameters(directory: Path) -> tuple[dict, list[str], np.ndarray]:
    """(.inpt parameters, psp8 file names from the .ion, cell in Angstrom) of a SPARC run directory
    (``FD_GRID`` in the parameters is the one SPARC printed when the .inpt has none)."""
    from ase.units import Bohr

    from .inputs import read_input_parameters

    params = read_input_parameters(directory)
    psp = []
    ion = directory / "SPARC.ion"
    if ion.is_file():
        for line in ion.read_text(errors="replace").splitlines():
            if line.strip().upper().startswith("PSEUDO_POT"):
                psp.append(Path(line.split(":", 1)[1].strip()).name)
    latvec = np.asarray(params["LATVEC"], dtype=np.float64)
    scale = np.asarray(params.get("LATVEC_SCALE", [1.0, 1.0, 1.0]), dtype=np.float64)
    cell_ang = latvec * scale[:, None] * Bohr  # LATVEC rows scaled by LATVEC_SCALE, in Bohr
    if "FD_GRID" not in params and (directory / "SPARC.out").is_file():
        for line in (directory / "SPARC.out").read_text(errors="replace").splitlines():
            if line.startswith("FD_GRID:"):
                params["FD_GRID"] = [int(n) for n in line.split(":")[1].split()]
                break
    return params, psp, cell_ang


def reference_settings_of_run(directory) -> ReferenceSettings:
    """The :class:`ReferenceSettings` of a finished SPARC run directory (``SPARC.inpt``, ``SPARC.ion``; the
    mesh from ``MESH_SPACING`` or, for runs given an ``FD_GRID``, from ``meta.json``)."""
    return _run_record(Path(directory))[0]


def _run_record(directory: Path) -> tuple[ReferenceSettings, dict, np.ndarray]:
    """(settings, .inpt parameters, cell in Angstrom) of a run directory, its input read once."""
    import json

    params, psp, cell_ang = _run_parameters(directory)
    mesh = params.get("MESH_SPACING")
    if mesh is None and (directory / "meta.json").is_file():
        mesh = json.loads((directory / "meta.json").read_text()).get("mesh_spacing_bohr")
    if mesh is None:  # a run given only FD_GRID: the nominal mesh is the one whose grid it is (checked by the caller)
        mesh = math.nan
    kpts = [int(k) for k in params.get("KPOINT_GRID", [1, 1, 1])]
    shift = [float(s) for s in params.get("KPOINT_SHIFT", [0.0, 0.0, 0.0])]
    lengths = np.linalg.norm(cell_ang, axis=1)
    klen = None if kpts == [1, 1, 1] else tuple(round(float(n * l), 3) for n, l in zip(kpts, lengths))
    symbols = _symbols_of_ion(directory / "SPARC.ion")
    settings = ReferenceSettings(xc=params.get("EXCHANGE_CORRELATION", "GGA_PBE"),
                                 elec_temp_type=str(params.get("ELEC_TEMP_TYPE", "Fermi-Dirac")),
                                 elec_temp_k=float(params.get("ELEC_TEMP", 631.554)),
                                 mesh_spacing_bohr=float(mesh), kpoint_length_ang=klen,
                                 kpoint_shift=tuple(shift) if klen is not None else (0.0, 0.0, 0.0),
                                 pseudopotentials=tuple(zip(symbols, psp)))
    return settings, params, cell_ang


def _symbols_of_ion(path: Path) -> list[str]:
    return [line.split(":", 1)[1].split()[0] for line in path.read_text(errors="replace").splitlines()
            if line.strip().upper().startswith("ATOM_TYPE")]


def _same_mesh(a: float, b: float, cell_ang, fd_grid) -> bool:
    """Equal nominal meshes; a run that gave SPARC only its FD_GRID (mesh NaN) matches a mesh whose grid it is."""
    if math.isnan(a) or math.isnan(b):
        from ase.units import Bohr

        from ase_mlrho.grid import Grid

        mesh = b if math.isnan(a) else a
        return not math.isnan(mesh) and fd_grid is not None and \
            list(Grid.from_cell(np.asarray(cell_ang) / Bohr, mesh).intervals) == list(fd_grid)
    return abs(a - b) < 1e-9


def _same_footing(a: ReferenceSettings, b: ReferenceSettings, cell_ang, fd_grid=None) -> bool:
    """Equal settings for the cell ``cell_ang``: every field, the k-point grid the cell gets from each
    (``fd_grid``: the run's FD_GRID, for runs without a nominal mesh)."""
    ka, kb = a.kpts_for(cell_ang), b.kpts_for(cell_ang)
    gamma = ka == (1, 1, 1)
    return (ka == kb and (gamma or a.kpoint_shift == b.kpoint_shift) and a.xc == b.xc
            and a.elec_temp_type == b.elec_temp_type and abs(a.elec_temp_k - b.elec_temp_k) < 1e-6
            and _same_mesh(a.mesh_spacing_bohr, b.mesh_spacing_bohr, cell_ang, fd_grid)
            and (not a.pseudopotentials or not b.pseudopotentials
                 or dict(a.pseudopotentials).items() <= dict(b.pseudopotentials).items()
                 or dict(b.pseudopotentials).items() <= dict(a.pseudopotentials).items()))


def same_footing(a: ReferenceSettings, b: ReferenceSettings, cell_ang) -> bool:
    """True when the two settings compute the cell ``cell_ang`` (Angstrom) the same way: same k-point grid and
    shift, xc, smearing, mesh and pseudopotentials."""
    return _same_footing(a, b, cell_ang)


def common_reference_settings(directories) -> ReferenceSettings:
    """The one :class:`ReferenceSettings` of a set of training runs; ReferenceMismatchError when they differ
    (a model must not learn two definitions of the density at once)."""
    runs = [(Path(d), *_run_record(Path(d))) for d in directories]
    if not runs:
        raise ValueError("no SPARC run directories given")
    first_dir, first, _, _ = runs[0]
    psp = dict(first.pseudopotentials)
    for d, s, params, cell in runs[1:]:
        if not _same_footing(first, s, cell, params.get("FD_GRID")):
            raise ReferenceMismatchError(
                f"training runs computed with different settings: {first_dir.name}: {first.describe_for(cell)}; "
                f"{d.name}: {s.describe_for(cell)}")
        psp.update(dict(s.pseudopotentials))
    return replace(first, pseudopotentials=tuple(psp.items()))


def check_reference_run(model_settings: ReferenceSettings, directory, model_name: str = "the model") -> None:
    """Refuse a reference run directory computed with other settings than ``model_settings`` give its cell:
    ReferenceMismatchError with one line naming both."""
    directory = Path(directory)
    run, params, cell = _run_record(directory)
    if not _same_footing(model_settings, run, cell, params.get("FD_GRID")):
        raise ReferenceMismatchError(
            f"{directory.name} was computed with {run.describe_for(cell)}; {model_name} runs SPARC with "
            f"{model_settings.describe_for(cell)} for this cell: the two energies would not be comparable "
            "(use a reference computed with the model's settings)")
