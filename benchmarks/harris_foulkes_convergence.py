"""Convergence of the single-diagonalisation Harris-Foulkes energy with RHO_TRIGGER and CHEB_DEGREE.

SPARC's own converged density of a reference run is fed back (READ_INIT_DENS, MAXIT_SCF 1). The
exact answer is then the SCF energy itself, so the difference per atom is the error of the
eigensolver subspace alone (plus the 6-digit rounding of the printed density). The target is
< 1e-5 Ha/atom, so that an ML density's own error dominates. Wall time is set beside the SCF wall
time of the same cell (SPARC's ``Total walltime`` of the reference run, or a fresh SCF with ``--scf``).

Usage (needs SPARC, ``ASE_SPARC_COMMAND``; runs one SPARC job at a time)::

    python benchmarks/harris_foulkes_convergence.py --workdir mlrho-runs/hfconv \\
        --runs ../shared/data/sparc/al_n=2_T=0_a=4.05 --configs 16x30,24x30,8x60 [--scf] [--json out.jsonl]
    python benchmarks/harris_foulkes_convergence.py --table out.jsonl   # print the table of a finished run

Each run is repeated with the reference run's own k-points, mesh and smearing (read from its SPARC.inpt);
a third number in a configuration sets NSTATES (more states: fewer passes, each dearer).

Prints a table: run, RHO_TRIGGER, CHEB_DEGREE, |E_HF - E_SCF| (Ha/atom), first SCF error, HF wall, SCF wall.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from sparc_bridge.snapshots import load_snapshot
from sparc_bridge.harris_foulkes import harris_foulkes_energy
from sparc_bridge.inputs import HarrisFoulkesSettings, write_scf_input
from sparc_bridge.reference import reference_settings_of_run
from sparc_bridge.run import parse_run, run_sparc

DEFAULT_RUNS = ("al_n=2_T=0_a=4.05", "al_n=2_T=1575_seed=3")
DEFAULT_CONFIGS = "16x30,20x30,24x30,8x60,10x50,12x40"


def parse_configs(text: str) -> list[tuple[int, int | None, int | None]]:
    """'16x30,8x60x90,20' -> [(16, 30, None), (8, 60, 90), (20, None, None)]: RHO_TRIGGER, CHEB_DEGREE
    and NSTATES (None = SPARC's default: CHEB_DEGREE from the mesh, NSTATES from the electron count)."""
    configs = []
    for item in text.split(","):
        parts = [int(x) if x else None for x in item.strip().split("x")]
        rt, cheb, nstates = (parts + [None, None])[:3]
        configs.append((rt, cheb, nstates))
    return configs


def measure(run_dir: Path, configs, workdir: Path, scf: bool, command=None, timeout_s=None):
    """Yield one record per configuration (and one for a fresh SCF when ``scf``)."""
    snap = load_snapshot(run_dir)
    ref = parse_run(run_dir)
    # the reference run's own k-points, mesh and smearing: the comparison is then like for like
    settings = reference_settings_of_run(run_dir).sparc_settings(snap.atoms)
    base = {"run": run_dir.name, "natoms": snap.natoms, "e_scf_per_atom_ha": ref.free_energy_per_atom_ha,
            "scf_wall_s": ref.sparc_walltime_s, "scf_iterations": ref.n_scf_iterations}
    for rho_trigger, cheb, nstates in configs:
        hf = HarrisFoulkesSettings(rho_trigger=rho_trigger, cheb_degree=cheb)
        run_settings = replace(settings, extra=settings.extra + (("NSTATES", nstates),)) if nstates else settings
        directory = workdir / run_dir.name / f"rt{rho_trigger}_cheb{cheb or 'default'}_nst{nstates or 'default'}"
        r = harris_foulkes_energy(snap.atoms, snap.density_e_per_bohr3, snap.grid, run_settings, directory, hf,
                                  command=command, timeout_s=timeout_s)
        yield dict(base, kind="hf", rho_trigger=rho_trigger, cheb_degree=cheb, nstates=nstates,
                   e_hf_per_atom_ha=r.energy_per_atom_ha,
                   error_per_atom_ha=r.energy_per_atom_ha - ref.free_energy_per_atom_ha,
                   first_scf_error=r.first_scf_error, hf_wall_s=r.run.sparc_walltime_s,
                   hf_process_s=r.run.wall_time_s)
    if scf:
        directory = workdir / run_dir.name / "scf"
        write_scf_input(snap.atoms, directory, settings, print_density=False, fix_rand=1)
        r = run_sparc(directory, command=command, timeout_s=timeout_s)
        yield dict(base, kind="scf", e_scf_fresh_per_atom_ha=r.free_energy_per_atom_ha,
                   scf_fresh_wall_s=r.sparc_walltime_s, scf_fresh_iterations=r.n_scf_iterations)


def format_table(records) -> str:
    lines = ["| run | RHO_TRIGGER | CHEB_DEGREE | NSTATES | E_HF - E_SCF (Ha/atom) | first SCF error | HF wall (s) | "
             "SCF wall (s), iterations |", "|---|---|---|---|---|---|---|---|"]
    fresh = {r["run"]: r for r in records if r["kind"] == "scf"}
    for r in records:
        if r["kind"] != "hf":
            continue
        f = fresh.get(r["run"])
        scf = f"{r['scf_wall_s']:.0f} ({r['scf_iterations']}, reference run)"
        if f:
            scf += f"; {f['scf_fresh_wall_s']:.0f} ({f['scf_fresh_iterations']}, fresh)"
        lines.append(f"| {r['run']} | {r['rho_trigger']} | {r['cheb_degree'] or 'default'} | {r.get('nstates') or 'default'} | "
                     f"{r['error_per_atom_ha']:+.1e} | {r['first_scf_error']:.1e} | {r['hf_wall_s']:.0f} | {scf} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="*", default=None, help="SPARC reference run directories")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="RHO_TRIGGERxCHEB_DEGREE[xNSTATES] list, e.g. 16x30,8x60,12x30x90")
    p.add_argument("--workdir", type=Path, default=Path("hf_convergence"))
    p.add_argument("--json", type=Path, default=None, help="append one JSON record per run here")
    p.add_argument("--scf", action="store_true", help="also time a fresh SCF of each cell")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--table", type=Path, default=None, help="only print the table of a JSON-lines file")
    args = p.parse_args(argv)

    if args.table:
        records = [json.loads(x) for x in args.table.read_text().splitlines() if x.strip()]
        print(format_table(records))
        return 0
    shared = ROOT.parent / "shared" / "data" / "sparc"
    runs = [Path(r) for r in args.runs] if args.runs else [shared / r for r in DEFAULT_RUNS]
    records = []
    for run_dir in runs:
        for rec in measure(run_dir, parse_configs(args.configs), args.workdir, args.scf, timeout_s=args.timeout):
            records.append(rec)
            print(json.dumps(rec), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    print(format_table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
