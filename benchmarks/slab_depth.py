"""Where in a slab a model's error and sigma fall short: the grid points of SPARC slab runs binned by depth below
the outermost atomic plane (along the third cell vector, the slab normal of the slabs in data/sparc), per bin
the share of the cell's absolute error, the 3-sigma coverage, mean |error| / mean sigma, the epistemic share of
the sigma and the mean signed error (bias).

    python benchmarks/slab_depth.py -m sige-pbe data/sparc/sige/test_slab111/sige_x=0.4_slab111_T=1200_seed=334

Prints one markdown table per cell; ``--json FILE`` writes the figures. Negative depths lie in the vacuum.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ase.units import Bohr
from vacancy_coverage import region_figures  # benchmarks/ is on sys.path when a script here runs

#: bin edges (Bohr) of the depth below the outermost atomic plane; a SiGe (111) bilayer is ~5.9 Bohr thick
DEPTH_EDGES_BOHR = (-np.inf, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0, np.inf)


def depth_below_surface_bohr(points_bohr: np.ndarray, atom_z_bohr: np.ndarray) -> np.ndarray:
    """Depth of each point below the nearer of the two outermost atomic planes along z (positive inside the slab,
    negative in the vacuum). Assumes the slab is not cut by the periodic boundary along z (true of slabs
    centred in their cell, as ase.build makes them)."""
    z = points_bohr[:, 2]
    return np.minimum(z - atom_z_bohr.min(), atom_z_bohr.max() - z)


def depth_profile(err: np.ndarray, sigma: np.ndarray, sigma_epi: np.ndarray, depth_bohr: np.ndarray,
                  edges=DEPTH_EDGES_BOHR) -> list[dict]:
    """Per depth bin (empty ones left out; an open end is None): the figures of
    ``vacancy_coverage.region_figures`` (points, 3-sigma coverage, mean |err| / mean sigma, epistemic sigma over
    the cell's mean) and the bin's share of the summed |err|, mean sigma_epi / mean sigma and mean signed error
    (e/Bohr^3). All inputs flat arrays over the same points."""
    total = np.abs(err).sum()
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (depth_bohr >= lo) & (depth_bohr < hi)
        if not m.any():
            continue
        rows.append({"depth_from_bohr": None if np.isinf(lo) else float(lo),
                     "depth_to_bohr": None if np.isinf(hi) else float(hi),
                     **region_figures(err, sigma, sigma_epi, m),
                     "share_of_abs_error": float(np.abs(err[m]).sum() / total),
                     "sigma_epi_over_sigma": float(sigma_epi[m].mean() / sigma[m].mean()),
                     "bias_e_per_bohr3": float(err[m].mean())})
    return rows


def _bin_text(r: dict) -> str:
    lo, hi = r["depth_from_bohr"], r["depth_to_bohr"]
    return f"below {hi:g}" if lo is None else f"beyond {lo:g}" if hi is None else f"{lo:g} to {hi:g}"


def main(argv=None) -> int:
    from ase_mlrho.inference import InferenceSettings, run_prediction
    from ase_mlrho.model_files import load_model
    from sparc_bridge.snapshots import load_snapshot

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True, help="shipped model name or model file")
    p.add_argument("sparc_dirs", nargs="+", metavar="SPARC_DIR", help="SPARC runs of slabs (normal along z)")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    model = load_model(args.model)
    out = {"model": args.model, "cells": {}}
    for d in args.sparc_dirs:
        snap = load_snapshot(d)
        field = run_prediction(model, snap.atoms, None, InferenceSettings(), grid=snap.grid).field
        err = (field.density - snap.density_e_per_bohr3).ravel()
        sigma, sigma_epi = field.sigma_total.ravel(), field.sigma_epistemic.ravel()
        depth = depth_below_surface_bohr(snap.grid.points_bohr(0, snap.grid.n_points),
                                         snap.atoms.get_positions()[:, 2] / Bohr)
        rows = depth_profile(err, sigma, sigma_epi, depth)
        cov = float(np.mean(np.abs(err) <= 3 * sigma))
        out["cells"][snap.name] = {"coverage_3sigma": cov, "bins": rows}
        print(f"\n{snap.name} ({Path(d).parent.name}): 3-sigma coverage {cov:.4f}")
        print("| depth (Bohr) | points | share of |err| | cov 3σ | mean |err| / mean σ | σ_epi / σ | bias (e/Bohr^3) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {_bin_text(r)} | {r['points']} | {r['share_of_abs_error']:.3f} | "
                  f"{r['coverage_3sigma']:.4f} | {r['mean_abs_error_over_mean_sigma']:.2f} | "
                  f"{r['sigma_epi_over_sigma']:.2f} | {r['bias_e_per_bohr3']:+.2e} |")
    if args.json:
        from ase_mlrho.files import atomic_write

        atomic_write(args.json, lambda f: json.dump(out, f, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
