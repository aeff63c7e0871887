"""How far is a Gamma-point-only reference density from a k-point-sampled one of the same cell?

The shared Al data (and the SPARC runs made like them) sample the Brillouin zone of a 32-atom cell
at Gamma only. For a metal that leaves a cell-wide part in the density: which states near the Fermi
level a 96-electron cell occupies depends on the whole configuration, not on the neighbourhood of a
grid point. A local model cannot learn that part, so it bounds the error any grid-point model can
reach on such references. This script measures it: it reruns the SCF of each given reference cell
with a Monkhorst-Pack grid (same mesh, smearing, tolerance; input built by ``sparc_bridge.inputs``),
then prints

* eps(Gamma vs k): (1/N_e) * integral |rho_Gamma - rho_k| dV, in %, the size of the finite-size part;
* the free energies per atom of both runs;
* for each model given: eps against the Gamma reference and against the k-point density.

Usage (needs SPARC, ``ASE_SPARC_COMMAND``; one SPARC job at a time; a finished run is reused)::

    python benchmarks/kpoint_finite_size.py --runs "../shared/data/sparc/al_n=2_T=630_seed=4" \\
        --kpts 2 2 2 --shift 0.5 --workdir mlrho-runs/kpoints -m al-pbe [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from sparc_bridge.snapshots import load_snapshot
from ase_mlrho.evaluation import eps_rho_percent, evaluate_snapshots
from ase_mlrho.model_files import load_model
from sparc_bridge.inputs import SparcSettings, write_scf_input
from sparc_bridge.run import is_complete, parse_run, run_sparc


def kpoint_run(snap, workdir: Path, kpts, shift: float, command=None, timeout_s=None) -> Path:
    """The SCF of the Gamma-point snapshot ``snap``'s cell with a k-point grid, in ``workdir/<name>``
    (reused when complete)."""
    directory = workdir / f"{snap.name}_k{'x'.join(map(str, kpts))}_s{shift:g}"
    if not is_complete(directory):
        settings = SparcSettings(mesh_spacing_bohr=float(snap.provenance.get("mesh_spacing_bohr") or 0.25),
                                 kpts=tuple(kpts), extra=(("KPOINT_SHIFT", [shift] * 3),))
        write_scf_input(snap.atoms, directory, settings)
        run_sparc(directory, command=command, timeout_s=timeout_s)
    return directory


def compare(run_dir: Path, gamma, k_dir: Path, models) -> dict:
    """Densities and energies of the Gamma-point run (``run_dir``, loaded as ``gamma``) and the
    k-point run, and each model's eps against both."""
    kpt = load_snapshot(k_dir)
    if gamma.density_e_per_bohr3.shape != kpt.density_e_per_bohr3.shape:
        raise ValueError(f"{run_dir} and {k_dir} have different grids")
    dv, ne = gamma.grid.dv_bohr3, gamma.n_electrons
    k_result = parse_run(k_dir)
    rec = {
        "run": run_dir.name, "natoms": gamma.natoms, "kpoint_dir": str(k_dir),
        "e_gamma_per_atom_ha": parse_run(run_dir).free_energy_per_atom_ha,
        "e_kpoints_per_atom_ha": k_result.free_energy_per_atom_ha,
        "kpoint_wall_s": k_result.sparc_walltime_s,
        "eps_gamma_vs_kpoints_percent": eps_rho_percent(gamma.density_e_per_bohr3 - kpt.density_e_per_bohr3, dv, ne),
        "models": {},
    }
    for name in models:
        _, _, preds = evaluate_snapshots(load_model(name), [gamma])
        rho = preds[0].density.reshape(gamma.density_e_per_bohr3.shape)
        rec["models"][name] = {
            "eps_vs_gamma_percent": eps_rho_percent(rho - gamma.density_e_per_bohr3, dv, ne),
            "eps_vs_kpoints_percent": eps_rho_percent(rho - kpt.density_e_per_bohr3, dv, ne),
        }
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="Gamma-point SPARC reference run directories")
    ap.add_argument("--kpts", nargs=3, type=int, default=(2, 2, 2))
    ap.add_argument("--shift", type=float, default=0.5, help="KPOINT_SHIFT on every axis (0.5: Monkhorst-Pack)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("-m", "--models", nargs="*", default=["al-pbe"])
    ap.add_argument("--timeout-s", type=float, default=None)
    ap.add_argument("--json", help="write the records here")
    args = ap.parse_args(argv)

    records = []
    print(f"{'run':<28} {'eps(G vs k) %':>13} {'E_G (Ha/at)':>13} {'E_k (Ha/at)':>13}  models: eps vs G / vs k (%)")
    for run in map(Path, args.runs):
        gamma = load_snapshot(run)
        k_dir = kpoint_run(gamma, Path(args.workdir), args.kpts, args.shift, timeout_s=args.timeout_s)
        rec = compare(run, gamma, k_dir, args.models)
        records.append(rec)
        models = "  ".join(f"{n} {m['eps_vs_gamma_percent']:.3f} / {m['eps_vs_kpoints_percent']:.3f}"
                           for n, m in rec["models"].items())
        print(f"{rec['run']:<28} {rec['eps_gamma_vs_kpoints_percent']:>13.3f} {rec['e_gamma_per_atom_ha']:>13.7f} "
              f"{rec['e_kpoints_per_atom_ha']:>13.7f}  {models}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"kpts": list(args.kpts), "shift": args.shift, "records": records},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
