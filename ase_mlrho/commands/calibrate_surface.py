"""``mlrho calibrate-surface -m MODEL SPARC_DIR... -o OUT``: fit the surface term of the sigma
(:mod:`ase_mlrho.surface`) on SPARC runs of slabs and store it in a copy of the model file.

Give the model's training or validation slabs (cells with vacuum), never its test cells: the term is
judged on held-out slabs afterwards (``benchmarks/slab_depth.py``). Each cell is predicted without a
surface term; its points are binned by their depth below the vacuum, and each bin gets the factor on
the total sigma after which its +/- 3 sigma interval covers 99.73 % (at least 1). Bulk and defect cells
have no vacuum and keep their sigma exactly. Does not need SPARC (the runs are read, not made).
"""

from __future__ import annotations

from . import common


def register(subparsers) -> None:
    from ase_mlrho.surface import DEFAULT_DEPTH_EDGES_BOHR, DEFAULT_VACUUM_RADIUS_BOHR

    p = subparsers.add_parser(
        "calibrate-surface", help="fit the sigma's surface term on slabs and write the model with it",
        description="Fit how much the sigma must grow below a free surface, where a point's neighbourhood looks "
                    "like bulk but its density is not, on SPARC runs of the model's training or validation slabs; "
                    "write a copy of the model with the term (mlrho predict and the calculator then apply it).")
    p.add_argument("sparc_dirs", nargs="+", metavar="SPARC_DIR", help="finished SPARC runs of cells with vacuum")
    p.add_argument("-m", "--model", required=True, help="shipped model name or model file")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--vacuum-radius", type=float, default=DEFAULT_VACUUM_RADIUS_BOHR, metavar="BOHR",
                   help="a point farther than this from every atom is vacuum; keep it above the largest hole of "
                        f"any bulk or defect cell (default {DEFAULT_VACUUM_RADIUS_BOHR:g} Bohr)")
    p.add_argument("--edges", type=float, nargs="+", default=list(DEFAULT_DEPTH_EDGES_BOHR), metavar="BOHR",
                   help="depth bin edges below the vacuum, from 0 (default: "
                        f"{' '.join(f'{e:g}' for e in DEFAULT_DEPTH_EDGES_BOHR)})")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from ase_mlrho.model_files import ModelFileError, load_model, save_model
    from ase_mlrho.surface import METADATA_KEY, fit_on_snapshots
    from sparc_bridge.snapshots import SnapshotError, load_snapshot

    name = "calibrate-surface"
    try:
        common.check_model_output(args.output)
        model = load_model(args.model)
        common.check_reference_dirs(model, args.sparc_dirs)
        snaps = [load_snapshot(d) for d in args.sparc_dirs]
        for snap in snaps:
            model.check_species(snap.atoms.numbers)
        cal, cells = fit_on_snapshots(model, snaps, args.vacuum_radius, edges_bohr=tuple(args.edges),
                                      log=None if args.json else print)
    except (common.CommandError, ModelFileError, SnapshotError, ValueError) as exc:
        return common.fail(name, exc)
    entry = {**cal.to_metadata(), "command": common.command_line(args), "cells": cells}
    model.metadata.setdefault("calibration", {})[METADATA_KEY] = entry
    try:
        path = save_model(model, args.output)
    except OSError as exc:
        return common.fail(name, f"cannot write {args.output}: {exc}")
    if args.json:
        common.print_json({"model": str(path), "surface": entry})
        return 0
    print("depth below the vacuum (Bohr) -> factor on sigma: " + ", ".join(
        f"{lo:g}+: {f:.3f}" for lo, f in zip(cal.depth_edges_bohr, cal.factors)))
    for c in cells:
        print(f"{c['cell']}: 3-sigma coverage {c['coverage_3sigma_without']:.4f} -> {c['coverage_3sigma_with']:.4f} "
              f"(in-sample), mean sigma x{c['mean_sigma_ratio']:.3f}")
    print(f"model written    {path}")
    return 0
