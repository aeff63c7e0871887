"""``mlrho predict STRUCTURE [-m MODEL] [-o OUT.zarr|.cube|.dens|.npz] ...``: a structure's density
with uncertainty.

Reads anything ``ase.io.read`` reads, predicts block by block (serial, local processes or Dask),
writes the output atomically (a zarr store is built as ``OUT.zarr.partial`` and renamed when
complete; rerunning the same command resumes an interrupted store), and prints a summary: a few
human lines, or with ``--json`` exactly one JSON object on stdout. Progress goes to stderr.
Any bad input exits with status 2 and one line on stderr, before any output is created.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..structure_files import read_structure


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict a structure's electron density with uncertainty",
        description="Predict the valence electron density of a structure (any file ase.io.read reads) with "
                    "aleatoric and epistemic uncertainty, on the model's grid, and write it to zarr (density and "
                    "three sigmas, chunked, resumable), a Gaussian cube file, a SPARC .dens file or an .npz file. "
                    "Units in every output: electrons/Bohr^3.")
    p.add_argument("structure", metavar="STRUCTURE", help="structure file (xyz, extxyz, cif, POSCAR, SPARC .ion, ...)")
    p.add_argument("-m", "--model", default="al-pbe", help="shipped model name or model file (default al-pbe)")
    p.add_argument("-o", "--output", metavar="OUT", help="OUT.zarr, OUT.cube, OUT.dens[.gz] or OUT.npz "
                                                         "(default: no file, summary only)")
    p.add_argument("--index", default="-1", help="frame of a trajectory file to use (ase.io.read index; default -1)")
    p.add_argument("--samples", type=int, default=None, help="posterior weight samples (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight samples (default 0)")
    p.add_argument("--executor", choices=("serial", "processes", "dask"), default="serial",
                   help="serial (default), local worker processes (--workers), or Dask (--dask-address to join a "
                        "cluster); every executor gives the same field to rounding")
    p.add_argument("--workers", type=int, default=1, help="worker processes for processes / a Dask LocalCluster")
    p.add_argument("--dask-address", metavar="ADDR", help="join a running Dask scheduler (tcp://host:port) instead "
                                                          "of starting a LocalCluster; implies --executor dask")
    p.add_argument("--chunk-points", type=int, default=None, help="grid points per block (default 262144)")
    p.add_argument("--neighbour-tables", choices=("auto", "structure", "block"), default="auto",
                   help="neighbour tables of all atoms in every worker (structure), or of the atoms around each "
                        "block only (block: worker memory independent of the cell, for 10^5+ atoms); "
                        "auto (default) picks block from 20000 atoms on; the results agree to rounding")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (any format); without it an "
                                                            "existing OUT is refused before any work")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="run descriptors and network as dense torch tensors on this device (cuda, cuda:1, cpu); "
                        "default: the k-d tree path on the CPUs, which is the faster one there")
    p.add_argument("--renormalise", choices=("scale", "posterior"), default="scale",
                   help="how the field reaches the exact electron count: scale (default) clips at zero and scales "
                        "everything by one factor; posterior adds or removes the charge where the model's sigma is "
                        "largest (the most probable field with that count; for cells unlike the training data, "
                        "e.g. a surface; not with .zarr)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw where the model is least sure: the grid plane through the largest epistemic sigma "
                        "(density, epistemic sigma over the out-of-distribution threshold, a line with its +/- 3 sigma "
                        "bands); with no output, .npz or .zarr")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"mlrho predict: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _check_plot(plot: str, output: str | None, overwrite: bool) -> None:
    """Refuse a figure that could not be written, before any work (ValueError)."""
    path = Path(plot)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--plot {plot}: the figure is a PNG file; name it FILE.png")
    if output and Path(output).suffix.lower() not in (".npz", ".zarr"):
        raise ValueError(f"--plot needs the density and its sigmas, which {Path(output).name} output does not keep; "
                         "write OUT.npz or OUT.zarr (or no output)")
    if not path.resolve().parent.is_dir():
        raise ValueError(f"--plot {plot}: directory {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise ValueError(f"--plot {plot} already exists; remove it, choose another name, or pass --overwrite")


def run(args) -> int:
    import time

    t_start = getattr(args, "t_start", None) or time.perf_counter()
    from ..grid import InvalidStructureError
    from sparc_bridge.density_file import DENS_SINK

    from ..inference import (CORE_SINKS, DEFAULT_CHUNK_POINTS, ExecutorSettings,
                             InferenceSettings, OutputError, check_output, run_prediction)

    sinks = (*CORE_SINKS, DENS_SINK)  # the command layer may use both packages: SPARC's .dens is an output too

    executor = "dask" if args.dask_address else args.executor
    try:  # cheap checks first: a missing file or a refused output costs no torch import
        settings = InferenceSettings(n_samples=args.samples, seed=args.seed,
                                     chunk_points=args.chunk_points or DEFAULT_CHUNK_POINTS,
                                     neighbour_tables=args.neighbour_tables, device=args.device,
                                     renormalisation=args.renormalise)
        ex = ExecutorSettings(executor, args.workers, args.dask_address)
        if args.output:
            check_output(args.output, args.overwrite, sinks)
        if args.plot:
            _check_plot(args.plot, args.output, args.overwrite)
        atoms = read_structure(args.structure, args.index)
    except (ValueError, OutputError, InvalidStructureError, OSError) as exc:
        return _fail(exc)
    from ..model_files import ModelFileError, load_model

    try:
        model = load_model(args.model)  # (run_prediction checks the structure against it before any work)
    except (ValueError, ModelFileError, InvalidStructureError, OSError) as exc:
        return _fail(exc)

    try:
        result = run_prediction(model, atoms, args.output, settings, ex, progress=not args.quiet,
                                overwrite=args.overwrite, sinks=sinks)
    except (ValueError, OSError) as exc:  # OutputError, InvalidStructureError, a field that cannot be renormalised
        return _fail(exc)
    s = result.summary
    if args.plot:
        from ..uncertainty import plot_uncertainty_slice

        title = f"{Path(args.structure).name}, {model.name}:"
        if result.field is not None:
            node = plot_uncertainty_slice(result.field, atoms, args.plot, s.ood_threshold_e_per_bohr3, title=title)
        elif Path(s.output).suffix.lower() == ".zarr":  # read from the store: the argmax slab by slab, then one plane
            from ..sinks import largest_epistemic_plane
            from ..uncertainty import plot_uncertainty_plane

            p = largest_epistemic_plane(s.output)
            node = p["node"]
            plot_uncertainty_plane(p["grid"], node, p["plane"], p["line"], p["renormalisation_factor"], atoms,
                                   args.plot, s.ood_threshold_e_per_bohr3, title=title)
        else:  # an .npz too large to hold: its arrays were streamed to disk
            return _fail(f"--plot: the field of {s.n_points:,} points was too large to keep in memory, so no figure "
                         f"was drawn ({s.output} is written); for fields this large write .zarr, which --plot reads")
    total_s = time.perf_counter() - t_start
    for warning in s.warnings:
        print(f"mlrho predict: warning: {warning}", file=sys.stderr)
    if args.json:
        keys = ("natoms", "grid_shape", "n_electrons", "electrons_raw", "seconds", "points_per_second",
                "sigma_total_max_e_per_bohr3", "sigma_total_mean_e_per_bohr3", "expected_eps_percent", "ood_fraction",
                "output")
        d = s.to_dict()
        report = {k: d[k] for k in keys}
        report.update({k: d[k] for k in ("n_points", "renormalisation_factor", "ood_threshold_e_per_bohr3",
                                           "largest_hole_bohr", "largest_hole_position_ang", "training_hole_bohr",
                                           "beyond_training_fraction", "surface_term", "chunks", "chunks_resumed",
                                           "executor", "workers")})
        report["model"] = model.name
        if args.plot:
            report["plot"] = {"file": args.plot, "largest_epistemic_sigma_node": list(node)}
        report["command_seconds"] = total_s  # the whole command: start-up, model loading, prediction, output
        print(json.dumps(report))
    else:
        nx, ny, nz = s.grid_shape
        ood = "n/a (the model records no validation range)" if s.ood_fraction is None else \
            f"{100 * s.ood_fraction:.3g} % of points above the 99.9th percentile of the validation cells' epistemic sigma"
        print(f"structure      {args.structure}: {s.natoms} atoms, model {model.name}")
        print(f"grid           {nx} x {ny} x {nz} = {s.n_points:,} points, {s.chunks} blocks"
              + (f" ({s.chunks_resumed} resumed)" if s.chunks_resumed else ""))
        print(f"electrons      {s.n_electrons:.6g} (raw prediction integrates to {s.electrons_raw:.6g})")
        print(f"time           {total_s:.2f} s in all; prediction {s.seconds:.2f} s, {s.points_per_second:,.0f} "
              f"points/s ({s.executor}, {s.workers} worker{'s' if s.workers > 1 else ''})")
        print(f"sigma total    max {s.sigma_total_max_e_per_bohr3:.3e}, mean {s.sigma_total_mean_e_per_bohr3:.3e} "
              "e/Bohr^3")
        print(f"expected error {s.expected_eps_percent:.2g} % per electron (the eps against DFT that the sigma predicts: "
              "sqrt(2/pi) int sigma dV / N_e)")
        print(f"epistemic OOD  {ood}")
        x, y, z = s.largest_hole_position_ang
        reach = "the model records no training domain" if s.training_hole_bohr is None else (
            f"the training cells reached {s.training_hole_bohr:.2f} Bohr; {100 * s.beyond_training_fraction:.3g} % of "
            "points lie farther from every atom")
        print(f"largest hole   {s.largest_hole_bohr:.2f} Bohr from every atom at ({x:.2f}, {y:.2f}, {z:.2f}) Angstrom; "
              f"{reach}")
        cal = model.surface_calibration
        if cal is not None:
            raised = [(e, f) for e, f in zip(cal.depth_edges_bohr, cal.factors) if f > 1.0]
            how = ", ".join(f"x{f:.2f} from {e:g} Bohr" for e, f in dict.fromkeys(raised[:1] + raised[-1:]))
            print("surface term   " + (f"applied: the sigma raised by depth below the vacuum ({how or 'all factors 1'})"
                                       if s.surface_term else
                                       f"not needed: no point is {cal.vacuum_radius_bohr:g} Bohr from every atom"))
        print(f"output         {s.output or '(none: pass -o OUT.zarr|.cube|.dens|.npz to keep the field)'}")
        if args.plot:
            print(f"figure         {args.plot} (the plane k = {node[2]} through the largest epistemic sigma)")
    return 0
