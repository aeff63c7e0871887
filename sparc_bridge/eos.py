"""Equation-of-state scans through ``ase.eos``: equilibrium volume, lattice parameter, bulk modulus.

A scan strains the lattice parameter linearly (every cell vector scaled by ``1 + strain``, atoms
moved with the cell), evaluates the energy with any ASE calculator (SCF DFT through sparc-x-api,
the Harris-Foulkes calculator of an ML density, a classical potential in tests), and fits an EOS.
A fit whose minimum lies outside the sampled volumes is an extrapolation and raises
:class:`EOSFitError` -- widen or shift the strains.

The lattice parameter reported is the conventional cubic one for a cubic crystal, from the volume
per atom: ``a0 = (n_conv * V0 / natoms) ** (1/3)`` with ``n_conv`` atoms in the conventional cell
(fcc 4, bcc 2, sc 1, diamond 8), so it is the same for any supercell.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from ase.eos import EquationOfState
from ase.units import GPa, Bohr, Hartree

__all__ = [
    "EOSFitError",
    "EOSResult",
    "EOSComparison",
    "CONVENTIONAL_ATOMS",
    "DEFAULT_STRAINS",
    "fit_eos",
    "conventional_cubic_atoms",
    "eos_report",
    "eos_differences",
    "strained",
    "eos_scan",
    "compare_eos",
    "eos_from_runs",
    "plot_eos",
]

#: Atoms in the conventional cubic cell of each cubic crystal.
CONVENTIONAL_ATOMS = {"sc": 1, "bcc": 2, "fcc": 4, "diamond": 8}
#: Default linear strains of the lattice parameter: -2.5 % .. +2.5 % in 5 steps.
DEFAULT_STRAINS = tuple(np.linspace(-0.025, 0.025, 5))


class EOSFitError(ValueError):
    """An EOS fit that cannot be trusted (minimum outside the sampled volumes, failed fit, too few points)."""


@dataclass(frozen=True)
class EOSResult:
    """A fitted equation of state. Volumes in Angstrom^3 (whole cell), energies in eV, B in GPa."""

    volumes_ang3: tuple[float, ...]
    energies_ev: tuple[float, ...]
    natoms: int
    eos_name: str
    v0_ang3: float
    e0_ev: float
    b_gpa: float
    crystal: str | None = None
    a0_ang: float | None = None
    label: str = ""

    @property
    def a0_bohr(self) -> float | None:
        return None if self.a0_ang is None else self.a0_ang / Bohr

    @property
    def v0_per_atom_ang3(self) -> float:
        return self.v0_ang3 / self.natoms

    @property
    def e0_per_atom_ha(self) -> float:
        return self.e0_ev / self.natoms / Hartree

    def summary(self) -> dict:
        return {
            "label": self.label,
            "natoms": self.natoms,
            "eos": self.eos_name,
            "v0_per_atom_ang3": self.v0_per_atom_ang3,
            "e0_per_atom_ha": self.e0_per_atom_ha,
            "b_gpa": self.b_gpa,
            "a0_ang": self.a0_ang,
            "a0_bohr": self.a0_bohr,
        }


def fit_eos(volumes_ang3: Sequence[float], energies_ev: Sequence[float], natoms: int, crystal: str | None = None,
            eos: str = "birchmurnaghan", label: str = "", conventional_atoms: int | None = None) -> EOSResult:
    """Fit ``ase.eos.EquationOfState`` to (V, E) points; raise :class:`EOSFitError` when the minimum is outside them.

    The cubic lattice parameter a0 = (n_conv V0 / natoms)^(1/3) is given when the atoms of the conventional
    cell are known: ``conventional_atoms`` (e.g. from :func:`conventional_cubic_atoms`) or the ``crystal`` name."""
    v = np.asarray(volumes_ang3, dtype=np.float64)
    e = np.asarray(energies_ev, dtype=np.float64)
    if v.shape != e.shape or v.size < 4:
        raise EOSFitError(f"need at least 4 (volume, energy) points of equal count, got {v.size} and {e.size}")
    if crystal is not None and crystal not in CONVENTIONAL_ATOMS:
        raise ValueError(f"unknown crystal {crystal!r}; known: {sorted(CONVENTIONAL_ATOMS)} (or None)")
    order = np.argsort(v)
    v, e = v[order], e[order]
    try:
        with warnings.catch_warnings():  # ase warns on an extrapolated minimum; we raise below instead
            warnings.simplefilter("ignore")
            v0, e0, b = EquationOfState(v, e, eos=eos).fit()
    except Exception as exc:  # ase raises ValueError / RuntimeError / numpy errors
        raise EOSFitError(f"EOS fit ({eos}) failed: {exc}") from exc
    if not (np.isfinite(v0) and v[0] <= v0 <= v[-1]):
        i = int(np.argmin(e))
        side = "below the smallest" if (i == 0 or v0 < v[0]) else "above the largest"
        raise EOSFitError(
            f"the EOS minimum (V0 = {v0:.4g} A^3) lies {side} sampled volume ({v[0]:.4g}..{v[-1]:.4g} A^3): "
            "the scan does not bracket the equilibrium; shift or widen the strains"
        )
    n_conv = conventional_atoms if conventional_atoms is not None else CONVENTIONAL_ATOMS.get(crystal)
    a0 = None if n_conv is None else float((n_conv * v0 / natoms) ** (1.0 / 3.0))
    return EOSResult(tuple(map(float, v)), tuple(map(float, e)), int(natoms), eos, float(v0), float(e0),
                     float(b / GPa), crystal, a0, label)


def conventional_cubic_atoms(atoms, symprec: float = 1e-3) -> int | None:
    """Atoms in the conventional cell of a cubic crystal (spglib), None when the structure is not cubic:
    what turns a fitted V0 into a lattice parameter whatever the supercell."""
    import spglib

    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    with warnings.catch_warnings():  # spglib 2.x warns about its own error-handling switch
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if dataset is None or not 195 <= int(dataset.number) <= 230:
        return None
    return int(len(dataset.std_types))


def eos_report(result: EOSResult, points: list | None = None) -> dict:
    """An EOS fit in atomic units, as ``mlrho eos --json`` reports it (a0 None when not cubic)."""
    return {
        "a0_bohr": result.a0_bohr,
        "a0_ang": result.a0_ang,
        "v0_bohr3_per_atom": result.v0_ang3 / result.natoms / Bohr ** 3,
        "e0_ha_per_atom": result.e0_per_atom_ha,
        "bulk_modulus_gpa": result.b_gpa,
        "eos": result.eos_name,
        "natoms": result.natoms,
        "points": points,
    }


def eos_differences(result: EOSResult, reference: EOSResult) -> dict:
    """``result - reference`` in atomic units (a0 in Bohr, V0 in Bohr^3/atom, E0 in Ha/atom; B in GPa and %)."""
    a, r = eos_report(result), eos_report(reference)
    return {
        "da0_bohr": None if a["a0_bohr"] is None or r["a0_bohr"] is None else a["a0_bohr"] - r["a0_bohr"],
        "dbulk_modulus_gpa": a["bulk_modulus_gpa"] - r["bulk_modulus_gpa"],
        "dbulk_modulus_percent": 100 * (a["bulk_modulus_gpa"] / r["bulk_modulus_gpa"] - 1),
        "dv0_bohr3_per_atom": a["v0_bohr3_per_atom"] - r["v0_bohr3_per_atom"],
        "de0_ha_per_atom": a["e0_ha_per_atom"] - r["e0_ha_per_atom"],
    }


def strained(atoms, strain: float):
    """A copy of ``atoms`` with the lattice parameter scaled by ``1 + strain`` (atoms follow the cell)."""
    if not strain > -1:
        raise ValueError(f"strain must be > -1, got {strain}")
    new = atoms.copy()
    new.set_cell(np.asarray(atoms.cell) * (1.0 + strain), scale_atoms=True)
    return new


def eos_scan(atoms, calculator, strains: Sequence[float] = DEFAULT_STRAINS, crystal: str | None = None,
             eos: str = "birchmurnaghan", label: str = "") -> EOSResult:
    """Energies of strained copies of ``atoms`` from ``calculator``, fitted with ``ase.eos``."""
    volumes, energies = [], []
    for s in strains:
        a = strained(atoms, float(s))
        a.calc = calculator
        energies.append(float(a.get_potential_energy()))
        volumes.append(float(a.get_volume()))
        a.calc = None
    return fit_eos(volumes, energies, len(atoms), crystal, eos, label)


@dataclass(frozen=True)
class EOSComparison:
    """Two (or more) EOS fits of the same structure side by side; the first is the reference."""

    results: Mapping[str, EOSResult]

    def differences(self) -> dict[str, dict[str, float]]:
        names = list(self.results)
        ref = self.results[names[0]]
        out = {}
        for n in names[1:]:
            r = self.results[n]
            d = {
                "da0_ang": (r.a0_ang - ref.a0_ang) if (r.a0_ang is not None and ref.a0_ang is not None) else None,
                "dB_gpa": r.b_gpa - ref.b_gpa,
                "dV0_per_atom_ang3": r.v0_per_atom_ang3 - ref.v0_per_atom_ang3,
                "dE0_per_atom_ha": r.e0_per_atom_ha - ref.e0_per_atom_ha,
            }
            out[n] = d
        return out

    def table(self) -> str:
        names = list(self.results)
        rows = [("a0 (A)", "a0_ang", "{:.4f}"), ("a0 (Bohr)", "a0_bohr", "{:.4f}"), ("B (GPa)", "b_gpa", "{:.2f}"),
                ("V0/atom (A^3)", "v0_per_atom_ang3", "{:.4f}"), ("E0/atom (Ha)", "e0_per_atom_ha", "{:.8f}")]
        header = "| quantity | " + " | ".join(names) + " | " + " | ".join(f"{n} - {names[0]}" for n in names[1:]) + " |"
        lines = [header, "|" + "---|" * (1 + 2 * len(names) - 1)]
        for title, attr, fmt in rows:
            vals = [getattr(self.results[n], attr) for n in names]
            cells = [fmt.format(x) if x is not None else "-" for x in vals]
            diffs = [("{:+.2e}".format(x - vals[0]) if (x is not None and vals[0] is not None) else "-") for x in vals[1:]]
            lines.append(f"| {title} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
        return "\n".join(lines)


def compare_eos(atoms, calculators: Mapping[str, object], strains: Sequence[float] = DEFAULT_STRAINS,
                crystal: str | None = None, eos: str = "birchmurnaghan") -> EOSComparison:
    """Scan the same strains with each calculator (the first is the reference) and compare the fits."""
    if len(calculators) < 2:
        raise ValueError("compare_eos needs at least two calculators, e.g. {'SCF': ..., 'ML-HF': ...}")
    return EOSComparison({name: eos_scan(atoms, calc, strains, crystal, eos, label=name)
                          for name, calc in calculators.items()})


def eos_from_runs(directories: Sequence, crystal: str | None = None, eos: str = "birchmurnaghan",
                  label: str = "SCF runs", sparc_label: str = "SPARC", conventional_atoms: int | None = None) -> EOSResult:
    """Fit an EOS to finished SPARC runs of one structure at several volumes (energies from :func:`parse_run`)."""
    from sparc.io import read_sparc

    from ase_mlrho.quiet import quiet_third_party

    from .run import parse_run

    volumes, energies, natoms = [], [], set()
    for d in directories:
        res = parse_run(d, sparc_label)
        with quiet_third_party():
            atoms = read_sparc(str(d), index=-1)
        volumes.append(float(atoms.get_volume()))
        energies.append(res.free_energy_ha * Hartree)
        natoms.add(len(atoms))
    if len(natoms) != 1:
        raise EOSFitError(f"the runs hold different numbers of atoms {sorted(natoms)}; an EOS needs one structure")
    return fit_eos(volumes, energies, natoms.pop(), crystal, eos, label, conventional_atoms)


def plot_eos(results: Mapping[str, EOSResult] | EOSResult, path) -> Path:
    """Plot energy per atom vs volume per atom with the fitted curves; write ``path`` (png/pdf/svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(results, EOSResult):
        results = {results.label or "EOS": results}
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, r in results.items():
        v = np.asarray(r.volumes_ang3) / r.natoms
        e = (np.asarray(r.energies_ev) - r.e0_ev) / r.natoms * 1000.0
        _, _, _, _, vv, ee, _, _ = EquationOfState(r.volumes_ang3, r.energies_ev, eos=r.eos_name).getplotdata()
        ee = (np.asarray(ee) - r.e0_ev) / r.natoms * 1000.0
        a0 = f", a0 {r.a0_ang:.4f} A" if r.a0_ang is not None else ""
        line, = ax.plot(vv / r.natoms, ee, "-", label=f"{name}: B {r.b_gpa:.1f} GPa{a0}")
        ax.plot(v, e, "o", color=line.get_color())
    ax.set_xlabel("volume per atom (A$^3$)")
    ax.set_ylabel("E - E0 per atom (meV)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    from ase_mlrho.files import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png"), binary=True)
    plt.close(fig)
    return path
