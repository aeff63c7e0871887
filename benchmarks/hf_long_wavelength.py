"""Where in Fourier space does a predicted density's Harris-Foulkes error sit?

An oracle test: the Fourier components of the predicted density with |G| below a cut-off (in units
of 2*pi/L of the cell edge L; cubic cells) are replaced by those of the SPARC reference density, and
the Harris-Foulkes energy of the result is taken again (one SPARC diagonalisation). If the error
vanishes once a few hundred long-wavelength components are right, it is set by the smooth part of
the density error, which carries almost none of eps. ``--no-bragg`` keeps the model's components
at the (111) Bragg vectors of a 2x2x2 cubic supercell, to separate them from the rest.

    python benchmarks/hf_long_wavelength.py -m sige-pbe data/sparc/sige/x05/sige_x=0.5_n=2_T=1800_seed=22 \\
        --kmax 0 2 4 [--no-bragg]

Prints per cut-off: components replaced, eps (%), HF - SCF (Ha/atom). Needs SPARC.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from sparc_bridge.snapshots import load_snapshot
from ase_mlrho.evaluation import eps_rho_percent
from ase_mlrho.inference import predict_field
from ase_mlrho.model_files import load_model
from sparc_bridge.harris_foulkes import harris_foulkes_energy
from sparc_bridge.inputs import SparcSettings
from sparc_bridge.run import parse_run


def replace_low_g(pred: np.ndarray, ref: np.ndarray, kmax: float, keep_bragg111: bool = False) -> tuple[np.ndarray, int]:
    """``pred`` with its Fourier components |k| < kmax + 0.01 (integer grid units) taken from ``ref``."""
    f_pred, f_ref = np.fft.fftn(pred), np.fft.fftn(ref)
    kx, ky, kz = np.meshgrid(*(np.fft.fftfreq(n, 1.0 / n) for n in pred.shape), indexing="ij")
    mask = np.sqrt(kx ** 2 + ky ** 2 + kz ** 2) < kmax + 0.01
    if keep_bragg111:
        mask &= ~((np.abs(kx) == 2) & (np.abs(ky) == 2) & (np.abs(kz) == 2))
    return np.real(np.fft.ifftn(np.where(mask, f_ref, f_pred))), int(mask.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="SPARC reference run directory")
    ap.add_argument("-m", "--model", default="sige-pbe")
    ap.add_argument("--kmax", nargs="+", type=float, default=[0.0, 2.0, 4.0],
                    help="cut-offs in units of 2 pi / L (0: the model's density as it is)")
    ap.add_argument("--no-bragg", action="store_true", help="keep the model's (111) Bragg components")
    args = ap.parse_args(argv)

    snap = load_snapshot(args.run)
    e_scf = parse_run(args.run).free_energy_per_atom_ha
    pred = predict_field(load_model(args.model), snap.atoms, snap.grid).density
    ref = snap.density_e_per_bohr3
    mesh = float(snap.provenance.get("mesh_spacing_bohr") or np.mean(snap.grid.spacing_bohr))
    print(f"{'kmax (2pi/L)':>12} {'replaced':>9} {'eps (%)':>8} {'HF - SCF (Ha/atom)':>19}")
    for kmax in args.kmax:
        rho, n = replace_low_g(pred, ref, kmax, args.no_bragg) if kmax > 0 else (pred, 0)
        eps = eps_rho_percent(rho - ref, snap.grid.dv_bohr3, snap.n_electrons)
        with tempfile.TemporaryDirectory() as tmp:
            r = harris_foulkes_energy(snap.atoms, rho, snap.grid, SparcSettings(mesh_spacing_bohr=mesh), tmp)
        print(f"{kmax:>12g} {n:>9d} {eps:>8.3f} {r.energy_per_atom_ha - e_scf:>19.3e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
