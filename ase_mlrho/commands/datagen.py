"""``mlrho datagen``: thermalised snapshots of a structure, one SPARC SCF each (resumable).

Examples::

    mlrho datagen --element Al --a 4.05 --supercell 2 -T 315 630 945 --seeds 1 4 2 -o data/al32
    mlrho datagen --structure POSCAR -T 300 900 --frames 3 --decorrelation-fs 200 -o data/mine
    mlrho datagen --element Si --lattice diamond --a 5.522 --supercell 2 --alloy Ge --x 0.4 \
        --calculator rattle -T 1200 --seeds 41 -o data/sige
    mlrho datagen --structure big.xyz -T 945 --kpts 2 2 1 --kpoint-shift 0.5 \
        --sparc-param MIXING_PARAMETER=0.1 -o data/big      # an SCF that stalls at SPARC's default mixing

Rerunning the same command resumes: finished snapshots are kept, an interrupted one is redone from
scratch, failed ones are retried only with ``--retry-failed``. Exit status 0 when every snapshot is
converged, 1 when some failed, did not converge or remain, 2 for a usage error.
"""

from __future__ import annotations

import json
import sys

from .common import parse_sparc_params


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "datagen", help="generate training data: MD sampling + one SPARC SCF per snapshot (resumable)",
        description="Sample thermalised configurations (ASE molecular dynamics, EMT Langevin by default) at the "
                    "given temperatures, keep decorrelated frames, and run one SPARC SCF per snapshot "
                    "(PBE, psp8 from sparc-x-api, Fermi-Dirac 631.554 K, mesh 0.25 Bohr, 0.4 Bohr for Si/Ge). "
                    "Writes one directory per snapshot (the layout of data/sparc in the repository) and manifest.json.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--structure", help="structure file (any format ase.io.read knows; periodic)")
    src.add_argument("--element", help="bulk crystal of this element (with --lattice, --a, --supercell)")
    p.add_argument("--lattice", default="fcc", help="bulk lattice (default fcc)")
    p.add_argument("--a", type=float, default=4.05, dest="a_ang", help="lattice constant in Angstrom (default 4.05)")
    p.add_argument("--supercell", type=int, default=1, help="repeat of the cubic cell per axis (default 1)")
    p.add_argument("--alloy", metavar="ELEMENT", help="random alloy: this element on a fraction --x of the sites "
                   "(a new random occupation per seed)")
    p.add_argument("--x", type=float, default=0.0, dest="alloy_fraction", help="fraction of sites given to --alloy")
    p.add_argument("--vacancies", type=int, default=0, help="random vacancies per snapshot (default 0)")
    p.add_argument("-T", "--temperatures", nargs="+", type=float, required=True, metavar="K",
                   help="temperatures in K, one trajectory each (repeat a temperature with another seed)")
    p.add_argument("--seeds", nargs="+", type=int, help="one seed per temperature (default 0, 1, 2, ...)")
    p.add_argument("-o", "--output", required=True, help="output directory (resumed if it exists)")
    p.add_argument("--name-prefix", help="snapshot name prefix (default: al_n=SUPERCELL or the file stem)")
    p.add_argument("--calculator", default="emt",
                   help="MD calculator: emt (default), package.module:factory, rattle (Gaussian displacements of "
                        "--rattle * sqrt(T) A, no MD: the shared SiGe data's scheme), or sparc-aimd (not implemented)")
    p.add_argument("--rattle", type=float, default=0.0045, dest="rattle_ang_per_sqrt_k",
                   help="amplitude of --calculator rattle in A/sqrt(K) (default 0.0045)")
    p.add_argument("--timestep-fs", type=float, default=2.0, help="MD time step in fs (default 2)")
    p.add_argument("--steps", type=int, default=600, help="equilibration steps before the first frame (default 600)")
    p.add_argument("--friction", type=float, default=0.02, help="Langevin friction, inverse ASE time units")
    p.add_argument("--frames", type=int, default=1, help="frames kept per trajectory (default 1)")
    p.add_argument("--decorrelation-fs", type=float, default=200.0, help="time between kept frames (default 200 fs)")
    p.add_argument("--mesh-bohr", type=float, help="SPARC mesh spacing (default 0.25 Bohr, 0.4 with Si/Ge)")
    p.add_argument("--elec-temp-k", type=float, help="Fermi-Dirac electronic temperature (default 631.554 K)")
    p.add_argument("--kpts", nargs=3, type=int, metavar="N",
                   help="Monkhorst-Pack k-point grid (default 1 1 1, the Gamma point of the shared data); "
                        "snapshot names get _k=N1xN2xN3")
    p.add_argument("--kpoint-shift", type=float, metavar="S",
                   help="KPOINT_SHIFT on every axis (SPARC's default 0; 0.5 gives a shifted grid)")
    p.add_argument("--tol-scf", type=float, default=1e-6, help="SPARC's SCF tolerance TOL_SCF (default 1e-6)")
    p.add_argument("--maxit-scf", type=int, default=100, help="most SCF iterations per snapshot (default 100); "
                   "a snapshot that needs more is flagged unconverged")
    p.add_argument("--sparc-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a further SPARC input parameter for every SCF (repeatable), e.g. MIXING_PARAMETER=0.1 "
                        "for a cell whose SCF stalls; checked against SPARC's parameter list and stored in the "
                        "recipe of the manifest")
    p.add_argument("--sparc-command", help="SPARC command without -name (default: $ASE_SPARC_COMMAND)")
    p.add_argument("--timeout-s", type=float, help="time limit of each SCF")
    p.add_argument("--retry-failed", action="store_true", help="run failed snapshots again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


#: SPARC parameters datagen writes from its own options (or fixes): --sparc-param may not set them
_OWN_OPTIONS = {"KPOINT_GRID": "--kpts", "KPOINT_SHIFT": "--kpoint-shift", "TOL_SCF": "--tol-scf",
                "MAXIT_SCF": "--maxit-scf", "MESH_SPACING": "--mesh-bohr", "FD_GRID": "--mesh-bohr",
                "ELEC_TEMP": "--elec-temp-k", "ELEC_TEMP_TYPE": "--elec-temp-k (Fermi-Dirac)",
                "EXCHANGE_CORRELATION": "another tool (datagen computes PBE references)",
                "ECUT": "--mesh-bohr", "LATVEC": "--structure (the cell comes from the structure)",
                "LATVEC_SCALE": "--structure (the cell comes from the structure)",
                "CELL": "--structure (the cell comes from the structure)",
                "PRINT_DENSITY": "another tool (datagen needs the density printed)"}


def _plan(args):
    from sparc_bridge.datagen import BulkSpec, DatagenPlan, MDSettings, default_sparc_settings

    md = MDSettings(timestep_fs=args.timestep_fs, equilibration_steps=args.steps,
                    friction_per_ase_time=args.friction, frames_per_trajectory=args.frames,
                    decorrelation_fs=args.decorrelation_fs, calculator=args.calculator,
                    rattle_ang_per_sqrt_k=args.rattle_ang_per_sqrt_k)
    bulk = None
    if args.element:
        bulk = BulkSpec(args.element, args.lattice, args.a_ang, args.supercell, args.alloy, args.alloy_fraction,
                        args.vacancies)
    elif args.alloy or args.vacancies:
        raise ValueError("--alloy and --vacancies apply to a bulk crystal (--element), not to --structure")
    plan = DatagenPlan(temperatures_k=tuple(args.temperatures), seeds=tuple(args.seeds) if args.seeds else None,
                       bulk=bulk, structure_file=args.structure, md=md, name_prefix=args.name_prefix)
    base = default_sparc_settings(plan.species())
    changes = {"tol_scf": args.tol_scf, "maxit_scf": args.maxit_scf}
    if args.mesh_bohr is not None:
        changes["mesh_spacing_bohr"] = args.mesh_bohr
    if args.elec_temp_k is not None:
        changes["elec_temp_k"] = args.elec_temp_k
    if args.kpts is not None:
        if min(args.kpts) < 1:
            raise ValueError(f"--kpts must be positive integers, got {' '.join(map(str, args.kpts))}")
        changes["kpts"] = tuple(args.kpts)
    if args.kpoint_shift is not None:
        if not 0.0 <= args.kpoint_shift < 1.0:
            raise ValueError(f"--kpoint-shift must be in [0, 1), got {args.kpoint_shift}")
        changes["extra"] = (("KPOINT_SHIFT", [float(args.kpoint_shift)] * 3),)
    given = parse_sparc_params(args.sparc_param)
    for name in given:
        if name in _OWN_OPTIONS:
            raise ValueError(f"--sparc-param {name}: datagen sets it itself; use {_OWN_OPTIONS[name]}")
    changes["extra"] = changes.get("extra", ()) + tuple(given.items())
    from dataclasses import replace

    return replace(plan, sparc=replace(base, **changes))


def run(args) -> int:
    from sparc_bridge.datagen import DatagenError, run_datagen
    from sparc_bridge.run import SparcNotFoundError

    try:
        plan = _plan(args)
        report = run_datagen(plan, args.output, command=args.sparc_command, timeout_s=args.timeout_s,
                             retry_failed=args.retry_failed, progress=not args.no_progress)
    except (DatagenError, SparcNotFoundError, ValueError, NotImplementedError, OSError, ImportError) as exc:
        print(f"mlrho datagen: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.format())
    return 0 if report.ok else 1
