"""Uncertainty at the defect itself: 3-sigma coverage of the grid points near a vacancy (held-out Al31 cell).

The vacancy centre is the centre of the largest empty sphere (the grid point farthest from every atom, periodic
images included). For each model: coverage within 3 and 4 Bohr of it, the mean |error| over the mean sigma there,
and the epistemic sigma there relative to the cell's mean.

    python benchmarks/vacancy_coverage.py -m al-pbe -m al-pbe-gamma [--cell DIR]

Writes ``benchmarks/results/al_kpoints/vacancy_coverage.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def nearest_atom_distance_bohr(snap) -> np.ndarray:
    """Distance (Bohr) from every grid point of a snapshot to its nearest atom, periodic images counted
    (:func:`ase_mlrho.domain.nearest_atom_distance_bohr`, the package's neighbour search)."""
    from ase.units import Bohr

    from ase_mlrho.domain import nearest_atom_distance_bohr as distances

    grid = snap.grid
    return distances(snap.atoms.get_positions() / Bohr, grid.cell_bohr, grid.pbc, grid.points_bohr(0, grid.n_points))


def region_figures(err, sig, epi, mask) -> dict:
    """Coverage and sigma over the grid points of ``mask`` (flat fields, e/Bohr^3): their count, 3-sigma
    coverage, mean |error| over mean total sigma, and mean epistemic sigma over the whole cell's."""
    return {"points": int(mask.sum()), "coverage_3sigma": float(np.mean(np.abs(err[mask]) <= 3 * sig[mask])),
            "mean_abs_error_over_mean_sigma": float(np.abs(err[mask]).mean() / sig[mask].mean()),
            "epistemic_sigma_over_cell_mean": float(epi[mask].mean() / epi.mean())}


def near_hole(snap, err, sig, epi, dist, radii=(3.0, 4.0)) -> dict:
    """Figures over the grid points within each radius (Bohr) of the centre of the largest empty sphere (the
    grid point farthest from every atom: a vacancy's centre). ``err``, ``sig``, ``epi``: flat fields (error,
    total and epistemic sigma, e/Bohr^3); ``dist``: :func:`nearest_atom_distance_bohr`."""
    pts = snap.grid.points_bohr_at(np.arange(snap.grid.n_points))
    cell = snap.grid.cell_bohr
    frac = (pts - pts[np.argmax(dist)]) @ np.linalg.inv(cell)
    r = np.linalg.norm((frac - np.round(frac)) @ cell, axis=1)
    out = {"largest_empty_sphere_bohr": float(dist.max())}
    for radius in radii:
        out[f"within_{radius:g}_bohr"] = region_figures(err, sig, epi, r < radius)
    return out


def near_vacancy(snap, model_name: str, radii=(3.0, 4.0)) -> dict:
    from ase_mlrho.inference import predict_field
    from ase_mlrho.model_files import load_model

    f = predict_field(load_model(model_name), snap.atoms, snap.grid)
    err = (f.density - snap.density_e_per_bohr3).reshape(-1)
    sig, epi = f.sigma_total.reshape(-1), f.sigma_epistemic.reshape(-1)
    out = {"model": model_name, **near_hole(snap, err, sig, epi, nearest_atom_distance_bohr(snap), radii)}
    for radius in radii:
        w = out[f"within_{radius:g}_bohr"]
        print(f"{model_name}: within {radius:g} Bohr ({w['points']} points): 3-sigma coverage "
              f"{w['coverage_3sigma']:.3f}, mean|err|/mean sigma {w['mean_abs_error_over_mean_sigma']:.2f}, "
              f"epistemic sigma x{w['epistemic_sigma_over_cell_mean']:.2f} of the cell mean")
    return out


def main(argv=None) -> int:
    from ase_mlrho.files import atomic_write
    from sparc_bridge.snapshots import load_snapshot

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", action="append", help="model (repeatable; default al-pbe)")
    p.add_argument("--cell", help="SPARC run directory of a vacancy cell (default: data/sparc/al_kpts/test_vacancy/*)")
    args = p.parse_args(argv)
    cell = Path(args.cell) if args.cell else sorted((ROOT / "data/sparc/al_kpts/test_vacancy").glob("al_n=*"))[0]
    snap = load_snapshot(cell)
    rows = [near_vacancy(snap, m) for m in (args.model or ["al-pbe"])]
    out = ROOT / "benchmarks/results/al_kpoints/vacancy_coverage.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda fh: json.dump({"cell": cell.name, "rows": rows}, fh, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
