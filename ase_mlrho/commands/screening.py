"""``mlrho screening -m MODEL SPARC_DIR... -o OUT``: fit the material's screening model for the
second-order corrected Harris-Foulkes energy and store it in a copy of the model file.

For each reference run (training or validation cells of the model, never its test cells): predict
the density, one SPARC diagonalisation that also prints rho_out, then fit eps(q) to
rho_out - rho_in = -eps (rho_in - rho_SCF) (:mod:`sparc_bridge.screening`). The model file written
to ``-o`` is the input model with ``hf_screening`` in its metadata; ``mlrho energy`` then reports
the corrected energy beside the plain Harris-Foulkes one. Needs SPARC.
"""

from __future__ import annotations

from . import common


def register(subparsers) -> None:
    from sparc_bridge.inputs import DEFAULT_RHO_TRIGGER

    p = subparsers.add_parser(
        "screening", help="fit the screening model of the second-order corrected Harris-Foulkes energy",
        description="Fit the model dielectric function eps(q) used to correct Harris-Foulkes energies to second "
                    "order, on SPARC reference runs (the model's training or validation cells), and write the "
                    "model with it. Needs SPARC (ASE_SPARC_COMMAND).")
    p.add_argument("sparc_dirs", nargs="+", metavar="SPARC_DIR", help="finished SPARC SCF runs (calibration cells)")
    p.add_argument("-m", "--model", required=True, help="shipped model name or model file")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--workdir", metavar="DIR", help="directory for the SPARC runs (new or empty)")
    p.add_argument("--rho-trigger", type=int, default=None,
                   help=f"CheFSI passes of each diagonalisation (default: the model's measured setting, else "
                        f"{DEFAULT_RHO_TRIGGER})")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="time limit of each SPARC run")
    p.add_argument("--method", choices=("long-wavelength", "all-wavelength"), default=None,
                   help="second-order method the fitted model applies (default: the model's present one, "
                        "else long-wavelength)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from sparc_bridge.snapshots import SnapshotError
    from ase_mlrho.model_files import ModelFileError, load_model, save_model
    from sparc_bridge.harris_foulkes import GridMismatchError, calibrate_screening
    from sparc_bridge.run import SparcRunError
    from sparc_bridge.screening import METADATA_KEY

    name = "screening"
    try:
        common.check_model_output(args.output)
        command = common.sparc_command()
        model = load_model(args.model)
        common.check_reference_dirs(model, args.sparc_dirs)
        hf = common.model_hf_settings(args, model)
        workdir = common.make_workdir(args.workdir, name)
    except (common.CommandError, ModelFileError, ValueError) as exc:
        return common.fail(name, exc)
    try:
        cal = calibrate_screening(model, args.sparc_dirs, workdir, hf, command, args.timeout,
                                  log=None if args.json else print, method=args.method)
    except (SparcRunError, GridMismatchError) as exc:
        return common.run_failed(name, exc)
    except (SnapshotError, ValueError) as exc:
        return common.fail(name, exc)
    model.metadata[METADATA_KEY] = cal.screening.to_dict()
    try:
        path = save_model(model, args.output)
    except OSError as exc:
        return common.fail(name, f"cannot write {args.output}: {exc}")
    report = {"model": str(path), "screening": cal.screening.to_dict(), "cells": list(cal.cells),
              "workdir": str(workdir)}
    if common.finish_report(workdir, report, args.json):
        return 0
    s = cal.screening
    print(f"eps(q) = 1 + 1/(1/(eps0-1) + q^2/k2): eps0 {s.eps0:.3g}, k2 {s.k2_per_bohr2:.4g} / Bohr^2")
    for c in cal.cells:
        print(f"{c['run']}: HF - SCF {c['error_hf_ha_per_atom']:+.3e}, corrected {c['error_corrected_ha_per_atom']:+.3e} "
              "Ha/atom (in-sample)")
    print(f"model written    {path}")
    return 0
