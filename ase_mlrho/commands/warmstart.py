"""``mlrho warmstart STRUCTURE_OR_DIR -m MODEL [--json]``: full SCF from the predicted density vs SPARC's
default guess (superposition of atomic densities).

Both runs use the same settings, grid and ``FIX_RAND``; the warm start reads the predicted density
(``READ_INIT_DENS``) and converges its first subspace with ``--rho-trigger`` CheFSI passes (a good
density is wasted on SPARC's default 4 passes from random orbitals, see
:func:`sparc_bridge.inputs.warm_start_parameters`). Reported: SCF iterations and wall time of both,
their final energies (which must agree to the SCF tolerance), and on a SPARC run directory the
reference energy of that run. SPARC settings the model records for warm starts (``warmstart_settings``,
e.g. al-pbe's ``MIXING_PARAMETER 0.6``) go to both runs alike; ``--sparc-param`` adds or overrides,
``--sparc-defaults`` runs both with SPARC's own. With ``--default-from-reference`` the default side is a
run made with SPARC's own settings, so the recorded ones are not applied to the warm side either.

JSON keys: ``warm_iterations``, ``default_iterations``, ``warm_wall_s``, ``default_wall_s``,
``iterations_saved``, ``speedup``, ``warm_energy_per_atom_ha``, ``default_energy_per_atom_ha``,
``energy_difference_ha_per_atom`` (warm - default), ``warm_scf_error_first_iteration``,
``predict_seconds``, ``seconds``.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import common


def register(subparsers) -> None:
    from sparc_bridge.inputs import DEFAULT_RHO_TRIGGER

    p = subparsers.add_parser(
        "warmstart", help="full SCF from the predicted density vs SPARC's default guess",
        description="Run SPARC's SCF twice on the same structure: from the predicted density and from SPARC's "
                    "default guess (atomic superposition), and report iterations and wall time of both. Needs "
                    "SPARC (ASE_SPARC_COMMAND).")
    p.add_argument("structure", metavar="STRUCTURE_OR_DIR", help="structure file or a SPARC run directory")
    common.add_common_options(p, "comparison")
    p.add_argument("--rho-trigger", type=int, default=DEFAULT_RHO_TRIGGER,
                   help=f"CheFSI passes of the warm start's first iteration (default {DEFAULT_RHO_TRIGGER})")
    p.add_argument("--default-from-reference", action="store_true",
                   help="when STRUCTURE_OR_DIR is a finished SPARC run computed with the model's settings from "
                        "SPARC's default guess, take its SCF as the default side instead of running it again")
    p.add_argument("--sparc-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a SPARC input parameter given to both runs alike (repeatable), e.g. NSTATES=101 or "
                        "NUM_CHEFSI=2: eigensolver or mixing settings compared on the same footing; overrides "
                        "the model's recorded warm-start settings of the same name")
    p.add_argument("--sparc-defaults", action="store_true",
                   help="run both sides with SPARC's own settings, not the ones the model records for warm starts "
                        "(al-pbe: MIXING_PARAMETER 0.6)")
    p.set_defaults(func=run)


def run(args) -> int:
    from sparc_bridge.harris_foulkes import GridMismatchError, warm_start_comparison
    from sparc_bridge.inputs import warm_start_params_for_model
    from sparc_bridge.ml_provider import MLDensityProvider, sparc_settings_for_model
    from sparc_bridge.run import SparcNotFoundError, SparcRunError

    name = "warmstart"
    try:
        if args.rho_trigger < 1:
            raise ValueError(f"--rho-trigger must be >= 1, got {args.rho_trigger}")
        given = common.parse_sparc_params(args.sparc_param)
        if given and args.default_from_reference:
            raise ValueError("--sparc-param changes both runs: the default side must run here, not come from "
                             "the reference run (drop --default-from-reference)")
        def check(model):
            if args.default_from_reference and not Path(args.structure).is_dir():
                raise ValueError("--default-from-reference needs a SPARC run directory as input")
        command, inp, model, provider_settings, workdir = common.prepare_run(args, name, check)
        recorded = warm_start_params_for_model(model.metadata)
    except (common.CommandError, ValueError) as exc:
        return common.fail(name, exc)
    applied = {} if args.sparc_defaults or args.default_from_reference else recorded
    both_sides = {**applied, **given}
    default_run = None
    if args.default_from_reference:
        from sparc_bridge.run import parse_run

        default_run = parse_run(inp.source)
        if not default_run.scf_converged:
            return common.fail(name, ValueError(f"{inp.source}: the reference SCF did not converge"))

    settings = sparc_settings_for_model(model, atoms=inp.atoms)
    t0 = time.perf_counter()
    try:
        grid, density, uncertainty = MLDensityProvider(model, *provider_settings)(inp.atoms)
        t_pred = time.perf_counter() - t0
        cmp = warm_start_comparison(inp.atoms, density, grid, settings, workdir, command, args.timeout,
                                    rho_trigger=args.rho_trigger, default_run=default_run,
                                    both_sides=both_sides)
    except (SparcRunError, GridMismatchError, ValueError) as exc:
        return common.run_failed(name, exc)
    except SparcNotFoundError as exc:
        return common.fail(name, exc)
    seconds = time.perf_counter() - t0

    s = cmp.summary()
    warm_wall = s["warm_wall_s"] + t_pred  # the prediction is part of the warm start's cost
    report = {
        "structure": inp.source,
        "natoms": len(inp.atoms),
        "model": model.name,
        **s,
        "warm_wall_with_prediction_s": warm_wall,
        "iterations_saved": s["default_iterations"] - s["warm_iterations"],
        "speedup": s["default_wall_s"] / warm_wall if warm_wall > 0 else None,
        "energy_difference_ha_per_atom": s["warm_energy_per_atom_ha"] - s["default_energy_per_atom_ha"],
        "warm_scf_error_first_iteration": cmp.warm.first_scf_error,
        "default_scf_error_first_iteration": cmp.default.first_scf_error,
        "warm_converged": cmp.warm.scf_converged,
        "default_converged": cmp.default.scf_converged,
        "energy_scf_reference_ha_per_atom": inp.scf_energy_ha_per_atom,
        "rho_trigger": int(args.rho_trigger),
        "sparc_params_both_sides": both_sides,
        "sparc_params_recorded_by_model": recorded,
        "sparc_params_recorded_applied": bool(applied),
        "default_side": "the reference run" if default_run is not None else "run here",
        "predict_seconds": t_pred,
        "seconds": seconds,
        "uncertainty": uncertainty,
        "workdir": str(workdir),
    }
    if common.finish_report(workdir, report, args.json):
        return 0
    print(f"structure     {inp.source}: {len(inp.atoms)} atoms, model {model.name}")
    if both_sides:
        print("both sides    " + ", ".join(f"{k} {v}" for k, v in both_sides.items())
              + (" (recorded by the model)" if applied and not given else ""))
    elif recorded:
        print("both sides    SPARC's own settings (the model's recorded " + ", ".join(
            f"{k} {v}" for k, v in recorded.items()) + " not applied: "
            + ("--sparc-defaults)" if args.sparc_defaults else "the default side is the reference run)"))
    print(f"warm start    {s['warm_iterations']:3d} SCF iterations, {s['warm_wall_s']:.1f} s SPARC "
          f"(+ {t_pred:.1f} s prediction), first SCF error {cmp.warm.first_scf_error:.2e}")
    print(f"default guess {s['default_iterations']:3d} SCF iterations, {s['default_wall_s']:.1f} s SPARC, "
          f"first SCF error {cmp.default.first_scf_error:.2e}")
    print(f"saved         {report['iterations_saved']} iterations, speed-up x{report['speedup']:.2f} (wall, "
          "prediction included)")
    print(f"energies      warm - default {report['energy_difference_ha_per_atom']:+.2e} Ha/atom")
    print(f"run directory {workdir}")
    return 0
