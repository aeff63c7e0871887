"""Aluminium on k-point-converged references: convergence of the reference, model accuracy, Harris-Foulkes
energies and the equation of state, all with the same k-point density (``data/sparc/al_kpts``).

    python benchmarks/al_kpoints.py convergence            # 2x2x2-equivalent vs denser grids (SPARC outputs only)
    python benchmarks/al_kpoints.py evaluate -m al-pbe [-m OTHER ...]   # densities on the held-out k-point cells
    python benchmarks/al_kpoints.py hf -m al-pbe --workdir mlrho-runs/hf   # needs SPARC: HF energies, both methods
    python benchmarks/al_kpoints.py eos -m al-pbe --workdir mlrho-runs/eos # needs SPARC: Al4 EOS, ML-HF vs SCF
    python benchmarks/al_kpoints.py warmstart -m al-pbe                 # needs SPARC: SCF from the prediction
    python benchmarks/al_kpoints.py bulk-modulus --kpts 3 6             # needs SPARC: B against the k-point grid

Each writes ``benchmarks/results/al_kpoints/<what>.json`` (paths relative to the repository) and prints a table.
The held-out cells are ``data/sparc/al_kpts/test*``: never trained, validated or calibrated on.
The perfect-crystal references are 4-atom cubic cells with 4x4x4 k-points (shift 0.5): the k-point set of the
32-atom cell's 2x2x2 grid unfolded (see :mod:`sparc_bridge.reference`), at an eighth of the cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "sparc" / "al_kpts"
RESULTS = ROOT / "benchmarks" / "results" / "al_kpoints"
EOS_LATTICE_ANG = (3.95, 4.00, 4.05, 4.10, 4.15)


def rel(path) -> str:
    """A path relative to the repository (results never name this machine's folders)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return p.name


def finished_runs(*patterns) -> list[Path]:
    out = []
    for pattern in patterns:
        out += sorted(p.parent for p in DATA.glob(f"{pattern}/SPARC.out")
                      if not p.parent.name.endswith((".partial", ".failed")) and (p.parent / "meta.json").is_file())
    return out


def test_runs() -> list[Path]:
    return finished_runs("test/*", "test_vacancy/*")


def write_result(name: str, payload: dict) -> Path:
    from ase_mlrho.files import atomic_write

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    atomic_write(path, lambda f: json.dump(payload, f, indent=1))
    return path


# ----------------------------------------------------------------------------- convergence
def convergence() -> dict:
    """Density and free-energy differences of the same structure at denser k-point grids: every finished run
    under ``convergence/`` against the run of the same positions (sha256) on the 2x2x2-equivalent grid."""
    from sparc_bridge.snapshots import load_snapshot
    from ase_mlrho.evaluation import eps_rho_percent

    meta_of = lambda d: json.loads((d / "meta.json").read_text())
    coarse_runs = {meta_of(c)["positions_sha256"]: c
                   for c in finished_runs("eos_al4/*/*", "test_al4/*", "train_al4/*", "test/*", "train/*", "val/*")}
    rows = []
    for d in finished_runs("convergence/*/*"):
        meta = meta_of(d)
        coarse = coarse_runs.get(meta["positions_sha256"])
        if coarse is None:
            continue
        a, b = load_snapshot(coarse), load_snapshot(d)
        kind = "perfect" if meta["T_K"] == 0 else f"thermal {meta['T_K']:g} K"
        rows.append({"cell": f"Al{b.natoms} {kind}", "coarse": rel(coarse), "dense": rel(d),
                     "kpts_coarse": meta_of(coarse)["sparc_settings"]["kpts"],
                     "kpts_dense": meta["sparc_settings"]["kpts"],
                     "eps_percent": eps_rho_percent(a.density_e_per_bohr3 - b.density_e_per_bohr3, b.grid.dv_bohr3,
                                                    b.n_electrons),
                     "dfree_energy_ha_per_atom": (a.free_energy_ha - b.free_energy_ha) / b.natoms,
                     "wall_coarse_s": meta_of(coarse)["wall_s"], "wall_dense_s": meta["wall_s"],
                     "scf_iterations_coarse": meta_of(coarse)["n_scf_iterations"],
                     "scf_iterations_dense": meta["n_scf_iterations"]})
    for r in rows:
        print(f"{r['cell']:26s} k {r['kpts_dense']} vs {r['kpts_coarse']}: eps {r['eps_percent']:.3f} %, "
              f"dF {r['dfree_energy_ha_per_atom']:+.2e} Ha/atom, wall {r['wall_coarse_s']:.0f} s -> "
              f"{r['wall_dense_s']:.0f} s")
    return {"rows": rows}


# ----------------------------------------------------------------------------- density accuracy
def evaluate(models, seed: int = 0) -> dict:
    from sparc_bridge.snapshots import load_snapshot
    from ase_mlrho.evaluation import evaluate_snapshots
    from ase_mlrho.model_files import load_model

    snaps = [load_snapshot(d) for d in test_runs()]
    out = {"cells": [rel(d) for d in test_runs()], "models": {}}
    for name in models:
        model = load_model(name)
        per, overall, _ = evaluate_snapshots(model, snaps, None, seed, progress=False)
        out["models"][model.name] = {"file": name if "/" not in name else rel(name),
                                     "cells": [m.to_dict() for m in per], "overall": overall.to_dict()}
        for m in per:
            print(f"{model.name:14s} {m.name:40s} eps {m.eps_rho_percent:6.3f} %  cov3 {m.coverage_3sigma:.4f}  "
                  f"miscal {m.miscalibration_area:.4f}  sig_epi {m.sigma_epistemic_mean_e_per_bohr3:.2e}")
    return out


# ----------------------------------------------------------------------------- Harris-Foulkes
def harris_foulkes(model_name: str, workdir: Path, seed: int = 0, cells=None) -> dict:
    """One SPARC diagonalisation per cell (default: the held-out k-point cells); the plain energy and both
    second-order estimates of it from the same run. A finished run in ``workdir`` made with the same model
    (the weights' sha256 is recorded beside it) is reused, not repeated."""
    from dataclasses import replace

    from ase_mlrho.model_files import load_model
    from sparc_bridge.density_file import read_density
    from sparc_bridge.harris_foulkes import harris_foulkes_energy
    from ase_mlrho.inference import InferenceSettings
    from sparc_bridge.ml_provider import MLDensityProvider, model_reference_settings, sparc_settings_for_model
    from sparc_bridge.reference import check_reference_run
    from sparc_bridge.run import is_complete, parse_run
    from sparc_bridge.screening import ScreeningModel, second_order_correction
    from sparc_bridge.snapshots import load_snapshot

    model = load_model(model_name)
    screening = ScreeningModel.from_metadata(model.metadata)
    sha = model.metadata["weights_sha256"]
    rows = []
    for d in (test_runs() if cells is None else [Path(c) for c in cells]):
        check_reference_run(model_reference_settings(model), d, model.name)
        snap = load_snapshot(d)
        work = workdir / d.name
        stamp = work / "model_weights_sha256"
        if is_complete(work) and stamp.is_file() and stamp.read_text() == sha:
            energy_per_atom, sparc_s = parse_run(work).free_energy_per_atom_ha, None
            grid = snap.grid
        else:
            settings = sparc_settings_for_model(model, atoms=snap.atoms)
            grid, density, _ = MLDensityProvider(model, InferenceSettings(seed=seed))(snap.atoms)
            r = harris_foulkes_energy(snap.atoms, density, grid, settings, work, screening=screening)
            stamp.write_text(sha)
            energy_per_atom, sparc_s = r.energy_per_atom_ha, r.sparc_wall_s
        rho_in = read_density(work / "input_density.cube").density_e_per_bohr3
        rho_out = read_density(work / "SPARC.dens").density_e_per_bohr3
        e_scf = snap.free_energy_ha / snap.natoms
        row = {"cell": rel(d), "natoms": snap.natoms, "e_scf_ha_per_atom": e_scf,
               "error_hf_ha_per_atom": energy_per_atom - e_scf, "sparc_seconds": sparc_s,
               "mean_lda_kernel_ha_bohr3": None}
        for method in ("long-wavelength", "all-wavelength"):
            c = second_order_correction(rho_in, rho_out, grid.cell_bohr, replace(screening, method=method))
            row["mean_lda_kernel_ha_bohr3"] = c.mean_fxc_ha_bohr3
            row[method] = {"correction_ha_per_atom": c.correction_ha / snap.natoms,
                           "error_ha_per_atom": row["error_hf_ha_per_atom"] + c.correction_ha / snap.natoms,
                           "hartree_ha_per_atom": None if c.hartree_ha is None else c.hartree_ha / snap.natoms,
                           "xc_ha_per_atom": None if c.xc_ha is None else c.xc_ha / snap.natoms}
        rows.append(row)
        print(f"{d.name:40s} HF - SCF {row['error_hf_ha_per_atom']:+.3e}; corrected: long-wavelength "
              f"{row['long-wavelength']['error_ha_per_atom']:+.3e}, all-wavelength "
              f"{row['all-wavelength']['error_ha_per_atom']:+.3e} Ha/atom; <f_xc> {row['mean_lda_kernel_ha_bohr3']:.2f}")
    return {"model": model.name, "screening": screening.to_dict(), "rows": rows}


# ----------------------------------------------------------------------------- EOS
def eos(model_name: str, workdir: Path) -> dict:
    """``mlrho eos`` on the 4-atom cell at a = 4.05 A, strains giving a = 3.95 .. 4.15 A, against the SCF runs."""
    import contextlib
    import io

    from ase.build import bulk
    from ase.io import write

    from ase_mlrho.cli import main

    runs = [finished_runs(f"eos_al4/a={a:.2f}/*")[0] for a in EOS_LATTICE_ANG]
    workdir.mkdir(parents=True, exist_ok=True)
    structure = workdir / "al4_a4.05.xyz"
    write(structure, bulk("Al", "fcc", a=4.05, cubic=True))
    strains = [f"{a / 4.05 - 1:.9f}" for a in EOS_LATTICE_ANG]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["eos", str(structure), "-m", model_name, "--strains", *strains, "--scf-runs", *map(str, runs),
                   "--workdir", str(workdir / "scan"), "--json"])
    if rc != 0:
        raise SystemExit(f"mlrho eos failed ({rc})")
    report = json.loads(buf.getvalue())
    report["structure"], report["workdir"] = rel(structure), rel(workdir / "scan")
    report["scf_runs"] = [rel(r) for r in runs]
    m, s, d = report["ml"], report["scf"], report["differences"]
    print(f"ML-HF a0 {m['a0_bohr']:.4f} Bohr, B {m['bulk_modulus_gpa']:.2f} GPa; SCF a0 {s['a0_bohr']:.4f} Bohr, "
          f"B {s['bulk_modulus_gpa']:.2f} GPa; da0 {d['da0_bohr']:+.4f} Bohr, dB {d['dbulk_modulus_percent']:+.2f} %")
    return report


# ----------------------------------------------------------------------------- warm start
def warm_start(model_name: str, workdir: Path, cells=None) -> dict:
    """``mlrho warmstart`` on held-out k-point cells (default: the 4-atom thermal test cells): a full SCF from
    the predicted density against SPARC's default guess, iterations and wall time of both."""
    import contextlib
    import io

    from ase_mlrho.cli import main

    rows = []
    for d in (finished_runs("test_al4/*") if cells is None else [Path(c) for c in cells]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["warmstart", str(d), "-m", model_name, "--workdir", str(workdir / d.name), "--json"])
        if rc != 0:
            raise SystemExit(f"mlrho warmstart failed on {d} ({rc})")
        r = json.loads(buf.getvalue())
        row = {k: r[k] for k in ("natoms", "warm_iterations", "default_iterations", "warm_wall_s", "default_wall_s",
                                 "warm_wall_with_prediction_s", "speedup", "energy_difference_ha_per_atom")}
        row["cell"] = rel(d)
        row["iterations_saved_percent"] = 100 * (1 - r["warm_iterations"] / r["default_iterations"])
        rows.append(row)
        print(f"{d.name:40s} warm {r['warm_iterations']} vs default {r['default_iterations']} SCF iterations "
              f"({row['iterations_saved_percent']:.0f} % fewer), wall {r['warm_wall_with_prediction_s']:.0f} s vs "
              f"{r['default_wall_s']:.0f} s")
    return {"model": model_name, "rows": rows}


# ----------------------------------------------------------------------------- bulk modulus against k-points
def bulk_modulus_convergence(kgrids, workdir: Path) -> dict:
    """SCF energies of the 1-atom primitive fcc cell at a = 3.95 .. 4.15 A for several k-point grids (shift 0.5,
    the recipe's other settings), and the Birch-Murnaghan a0 and B of each: what the reference's Brillouin-zone
    sampling does to the bulk modulus. The 32-atom cell's 2x2x2 grid holds 8 x 32 / 4 = 64 k-points per
    conventional cell, about a 2.5 x 2.5 x 2.5 grid of the primitive cell (16 points in its zone)."""
    from ase.build import bulk
    from ase.units import Bohr

    from sparc_bridge.eos import fit_eos
    from sparc_bridge.inputs import SparcSettings, write_scf_input
    from sparc_bridge.run import run_sparc

    rows = []
    for n in kgrids:
        volumes, energies, walls = [], [], []
        for a in EOS_LATTICE_ANG:
            atoms = bulk("Al", "fcc", a=a)
            settings = SparcSettings(kpts=(n, n, n), extra=(("KPOINT_SHIFT", [0.5, 0.5, 0.5]),))
            d = workdir / f"k={n}" / f"a={a:.2f}"
            if not (d / "SPARC_RUN_OK.json").is_file():
                write_scf_input(atoms, d, settings)
                run_sparc(d)
            from sparc_bridge.run import parse_run

            r = parse_run(d)
            volumes.append(atoms.get_volume())
            energies.append(r.free_energy_ha * 27.211386245988)
            walls.append(r.sparc_walltime_s)
        fit = fit_eos(volumes, energies, 1, None, "birchmurnaghan", label=f"k {n}x{n}x{n}")
        a0_ang = (4 * fit.v0_ang3) ** (1 / 3)
        rows.append({"kpts_primitive": [n, n, n], "a0_ang": a0_ang, "a0_bohr": a0_ang / Bohr,
                     "bulk_modulus_gpa": fit.b_gpa, "energies_ha_per_atom": [e / 27.211386245988 for e in energies],
                     "sparc_walltime_s": walls})
        print(f"primitive fcc, k {n}x{n}x{n}: a0 {a0_ang:.4f} A, B {fit.b_gpa:.2f} GPa "
              f"(SPARC {sum(w or 0 for w in walls):.0f} s for 5 points)")
    return {"cell": "primitive fcc Al (1 atom)", "lattice_ang": list(EOS_LATTICE_ANG), "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("convergence", "evaluate", "hf", "eos", "warmstart", "bulk-modulus"))
    p.add_argument("--kpts", type=int, nargs="+", default=[3, 6, 9, 12, 16],
                   help="bulk-modulus: k-point grids N (NxNxN) of the primitive cell")
    p.add_argument("-m", "--model", action="append", help="model name or file (evaluate: repeatable)")
    p.add_argument("--workdir", default="mlrho-runs/al_kpoints", help="SPARC run directories (hf, eos)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight samples")
    p.add_argument("--cells", nargs="+", help="hf, warmstart: SPARC run directories (default: the held-out k-point cells)")
    p.add_argument("--name", help="results file name (default: WHAT_MODEL)")
    args = p.parse_args(argv)
    models = args.model or ["al-pbe"]
    if args.what == "convergence":
        payload = convergence()
    elif args.what == "evaluate":
        payload = evaluate(models, args.seed)
    elif args.what == "bulk-modulus":
        payload = bulk_modulus_convergence(args.kpts, Path(args.workdir) / "bulk_modulus")
    elif args.what == "warmstart":
        payload = warm_start(models[0], Path(args.workdir) / "warmstart", args.cells)
    elif args.what == "hf":
        payload = harris_foulkes(models[0], Path(args.workdir) / "hf", args.seed, args.cells)
    else:
        payload = eos(models[0], Path(args.workdir) / "eos")
    suffix = "" if args.what in ("convergence", "bulk-modulus") else "_" + Path(models[0]).stem
    print(f"wrote {rel(write_result(args.name or args.what + suffix, payload))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
