"""Read and write SPARC's ``.dens`` cube files exactly as SPARC reads them.

SPARC's reader (``readDens_cube``, see ``shared/SPARC_NOTES.md`` Q1) is token based:

1. line 1: skipped, must be non-empty;
2. line 2: three tokens are consumed (it must hold at least three);
3. line 3: ``natoms`` then an origin that is ignored;
4. lines 4-6: ``N_d  vx vy vz`` -- node count and voxel vector in Bohr. SPARC checks that
   ``N_d * voxel_d`` equals the lattice vector to 1e-4 Bohr, and that ``N_d`` equals its own grid;
5. ``natoms`` lines of five numbers (Z, valence charge, x, y, z), read and ignored;
6. the data, electrons/Bohr^3, z index fastest (C order of an ``(Nx, Ny, Nz)`` array).

Files may be gzip-compressed (``.gz``). Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ase_mlrho.files import atomic_write

__all__ = ["DensityFile", "DensityFileError", "read_density", "write_density", "DENS_SINK"]


class DensityFileError(ValueError):
    """A density file that cannot be read: the message names the file and the problem."""


@dataclass(frozen=True, eq=False)
class DensityFile:
    """The content of a SPARC density cube file.

    Attributes
    ----------
    density_e_per_bohr3 : (Nx, Ny, Nz) float64 array, ``[i, j, k]`` = rho at node (i, j, k).
    voxel_bohr : (3, 3) voxel vectors in Bohr as written in the header (rows).
    numbers : (natoms,) atomic numbers from the atom lines.
    valence : (natoms,) valence charges from the atom lines (SPARC writes Zval there).
    positions_bohr : (natoms, 3) Cartesian positions in Bohr.
    header : the first two (comment) lines.
    """

    density_e_per_bohr3: np.ndarray
    voxel_bohr: np.ndarray
    numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    valence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    positions_bohr: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    header: tuple[str, str] = ("", "")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.density_e_per_bohr3.shape)

    @property
    def cell_bohr(self) -> np.ndarray:
        """Lattice vectors as SPARC checks them: ``N_d * voxel_d`` (exact for periodic directions)."""
        return self.voxel_bohr * np.asarray(self.shape, dtype=np.float64)[:, None]


def _open_text(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="ascii")
    return open(path, mode, encoding="ascii")


def read_density(path) -> DensityFile:
    """Read a SPARC (or any Gaussian-cube) density file, plain or ``.gz``, following SPARC's rules.

    Raises :class:`DensityFileError` naming the file and the problem for an unreadable header, a
    non-positive grid count, a wrong number of values (truncated or padded data), or NaN/inf values.
    """
    path = Path(path)
    try:
        with _open_text(path, "r") as f:
            text = f.read()
    except FileNotFoundError:
        raise DensityFileError(f"{path}: no such density file") from None
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise DensityFileError(f"{path}: cannot read the file ({exc})") from None

    lines = text.split("\n", 6)
    if len(lines) < 7:
        raise DensityFileError(f"{path}: the header is incomplete (fewer than 6 lines)")
    if not lines[0].strip():
        raise DensityFileError(f"{path}: line 1 is empty; SPARC's reader needs a non-empty comment line")
    if len(lines[1].split()) < 3:
        raise DensityFileError(f"{path}: line 2 needs at least three tokens for SPARC's reader")
    try:
        natoms = int(lines[2].split()[0])
        counts, voxels = [], []
        for line in lines[3:6]:
            tok = line.split()
            counts.append(int(tok[0]))
            voxels.append([float(t) for t in tok[1:4]])
        voxel = np.array(voxels, dtype=np.float64)
        if voxel.shape != (3, 3):
            raise ValueError("voxel lines need four numbers")
    except (ValueError, IndexError) as exc:
        raise DensityFileError(f"{path}: unreadable header (lines 3-6: natoms and 'N vx vy vz'): {exc}") from None
    if natoms < 0:
        raise DensityFileError(f"{path}: negative atom count {natoms} (orbital cube files are not supported)")
    if min(counts) <= 0:
        raise DensityFileError(
            f"{path}: grid counts must be positive (SPARC reads Bohr only), got {counts}"
        )
    if not np.all(np.isfinite(voxel)):
        raise DensityFileError(f"{path}: voxel vectors are not finite: {voxel.tolist()}")

    rest = lines[6].split("\n", natoms) if natoms else [lines[6]]
    atom_rows = []
    for i in range(natoms):
        tok = rest[i].split() if i < len(rest) else []
        if len(tok) < 5:
            raise DensityFileError(f"{path}: atom line {i + 1} of {natoms} needs 5 numbers (Z, charge, x, y, z)")
        try:
            atom_rows.append([float(t) for t in tok[:5]])
        except ValueError:
            raise DensityFileError(f"{path}: atom line {i + 1} is not numeric: {rest[i]!r}") from None
    atoms = np.array(atom_rows, dtype=np.float64).reshape(natoms, 5)
    data_text = rest[natoms] if len(rest) > natoms else ""

    n_expected = counts[0] * counts[1] * counts[2]
    try:
        values = np.array(data_text.split(), dtype=np.float64)
    except ValueError as exc:
        raise DensityFileError(f"{path}: non-numeric value in the data block ({exc})") from None
    if values.size != n_expected:
        kind = "truncated" if values.size < n_expected else "too many values"
        raise DensityFileError(
            f"{path}: {kind}: the header announces {counts[0]}x{counts[1]}x{counts[2]} = {n_expected} values, "
            f"the data block holds {values.size}"
        )
    if not np.all(np.isfinite(values)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise DensityFileError(f"{path}: {bad} NaN or infinite density values")
    return DensityFile(
        density_e_per_bohr3=values.reshape(counts),
        voxel_bohr=voxel,
        numbers=atoms[:, 0].astype(int),
        valence=atoms[:, 1].copy(),
        positions_bohr=atoms[:, 2:5].copy(),
        header=(lines[0].rstrip("\r"), lines[1].rstrip("\r")),
    )


def write_density(
    path,
    density_e_per_bohr3: np.ndarray,
    cell_bohr: np.ndarray,
    numbers=(),
    positions_bohr=None,
    valence=None,
    comment: str = "Electron density written by ase-mlrho",
    pbc=(True, True, True),
) -> Path:
    """Write a density file that SPARC's ``READ_INIT_DENS`` reader accepts.

    The voxel vectors are ``cell_bohr[d] / N_d`` printed with 16 significant digits, so that
    ``N_d * voxel_d`` reproduces the lattice vector far inside SPARC's 1e-4 Bohr check -- also for
    non-periodic directions, where SPARC's check wants L/N although the node spacing is L/(N-1).
    Values are printed with 11 significant digits (``%.10E``), six per line, z index fastest.
    """
    rho = np.asarray(density_e_per_bohr3, dtype=np.float64)
    if rho.ndim != 3 or min(rho.shape) < 1:
        raise ValueError(f"density must be a non-empty (Nx, Ny, Nz) array, got shape {rho.shape}")
    if not np.all(np.isfinite(rho)):
        raise ValueError("density contains NaN or infinite values; refusing to write it")
    cell = np.asarray(cell_bohr, dtype=np.float64).reshape(3, 3)
    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    natoms = numbers.size
    positions = np.zeros((natoms, 3)) if positions_bohr is None else np.asarray(positions_bohr, float).reshape(natoms, 3)
    valence = np.zeros(natoms) if valence is None else np.asarray(valence, float).reshape(natoms)
    comment = " ".join(str(comment).split()) or "Electron density written by ase-mlrho"
    voxel = cell / np.asarray(rho.shape, dtype=np.float64)[:, None]
    lengths = np.linalg.norm(cell, axis=1)
    bc = " ".join("P" if p else "D" for p in np.broadcast_to(pbc, 3))

    def _write(f):
        f.write(comment + "\n")
        f.write(f"Cell length: {lengths[0]:.10f} {lengths[1]:.10f} {lengths[2]:.10f}, boundary condition: {bc}.\n")
        f.write(f"{natoms:5d} {0.0:.16e} {0.0:.16e} {0.0:.16e}\n")
        for n, v in zip(rho.shape, voxel):
            f.write(f"{n:5d} {v[0]:.16e} {v[1]:.16e} {v[2]:.16e}\n")
        for z, q, r in zip(numbers, valence, positions):
            f.write(f"{z:5d} {q:.6f} {r[0]:.12f} {r[1]:.12f} {r[2]:.12f}\n")
        flat = rho.ravel(order="C")
        block = 6 * 65536
        for start in range(0, flat.size, block):
            part = flat[start:start + block]
            n_full = part.size // 6
            if n_full:
                np.savetxt(f, part[: 6 * n_full].reshape(n_full, 6), fmt="%.10E", delimiter=" ")
            if part.size % 6:
                np.savetxt(f, part[6 * n_full:].reshape(1, -1), fmt="%.10E", delimiter=" ")

    return atomic_write(path, _write)


# ----------------------------------------------------------------------------- an output of ase_mlrho.inference
def _write_predicted_density(path, out) -> Path:
    """A predicted field as SPARC's ``.dens`` (what SPARC reads as its initial density)."""
    from ase.data import chemical_symbols

    valence = [out.model.valence_electrons[chemical_symbols[int(z)]] for z in out.structure.numbers]
    return write_density(path, out.arrays["density"], out.grid.cell_bohr, out.structure.numbers,
                         out.structure.positions_bohr, valence,
                         comment=f"Electron density predicted by ase-mlrho model {out.model.name}", pbc=out.grid.pbc)


def _dens_sink():
    from ase_mlrho.sinks import FileSink  # (ase_mlrho.sinks imports no torch: the .dens reader stays light)

    return FileSink("dens", (".dens", ".dens.gz"), ("density",), _write_predicted_density)


DENS_SINK = _dens_sink()
"""SPARC's ``.dens`` as an output of :func:`ase_mlrho.inference.run_prediction` (``sinks=(*CORE_SINKS, DENS_SINK)``)."""
