"""Cells unlike the training set: does the uncertainty grow where the model has not been? (issue 14, item 1)

For a model and groups of held-out SPARC cells (a reference group like the training data, and cells of
kinds it has never seen: di-vacancies, strained lattices, a hotter cell, a free surface), the model
predicts each density on the SPARC grid and the script reports, per cell:

* eps (% per electron), the expected error ``eps_exp`` the model's sigma predicts, 3-sigma coverage,
  the mean epistemic sigma and its ratio to the reference group's, and the out-of-distribution fraction
  (points whose epistemic sigma exceeds the model's validation p99.9, what ``mlrho predict`` warns on);
* eps and coverage with the other renormalisation, ``posterior`` (the charge added or removed where the
  sigma is largest; ``mlrho predict --renormalise posterior``), from the same prediction;
* the same near the defect or surface: coverage, mean |error| over mean sigma, and the epistemic sigma
  relative to the cell's mean, in shells of the distance to the nearest atom (periodic images counted).
  A vacancy or a surface is where points lie far from every atom; bulk points stay within about half a
  bond length (Al fcc: 3.83 Bohr at the octahedral hole; diamond Si: 4.4 Bohr at the tetrahedral hole).

* the warnings ``mlrho predict`` would print: the epistemic out-of-distribution fraction above 1 %, and a
  hole larger than any training cell's by more than the model's mesh spacing (:mod:`ase_mlrho.domain`),
  with the coverage over the points farther from every atom than any training point.

Across cells: Pearson(eps, mean epistemic sigma), in e/Bohr^3 as issue 14 words it, and per electron.

    python benchmarks/unlike_training.py -m al-pbe --group bulk data/sparc/al_kpts/test \\
        --group unseen data/sparc/ood/al_* --json benchmarks/results/unlike_training/al-pbe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sige_alloys import pearson  # benchmarks/ is on sys.path when a script here runs
from vacancy_coverage import near_hole, nearest_atom_distance_bohr, region_figures

#: shells of the distance from a grid point to its nearest atom (Bohr)
SHELL_EDGES_BOHR = (0.0, 2.0, 3.0, 4.0, 5.0, np.inf)


def shells(err, sigma, epi, dist, edges=SHELL_EDGES_BOHR) -> list[dict]:
    """Coverage and sigma by shells of the nearest-atom distance (empty shells left out)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (dist >= lo) & (dist < hi)
        if not m.any():
            continue
        out.append({"from_bohr": lo, "to_bohr": None if np.isinf(hi) else hi, **region_figures(err, sigma, epi, m)})
    return out


def _hole_text(h: dict) -> str:
    w = h["within_3_bohr"]
    return (f"{h['largest_empty_sphere_bohr']:.2f}, {w['coverage_3sigma']:.3f}, {w['mean_abs_error_over_mean_sigma']:.2f}, "
            f"{w['epistemic_sigma_over_cell_mean']:.2f}")


def _beyond_text(b: dict | None) -> str:
    return "none" if b is None else f"{b['points']}, {b['coverage_3sigma']:.3f}"


def _warnings_text(r: dict) -> str:
    return ", ".join(w for w, on in (("OOD", r["warns_ood"]), ("hole", r["warns_hole"])) if on) or "none"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "DIR"),
                    help="a group name followed by SPARC run or datagen directories (repeatable); the first "
                         "group is the reference the epistemic sigma is compared with")
    ap.add_argument("--json", help="write all figures to this JSON file")
    args = ap.parse_args(argv)

    from ase_mlrho.domain import beyond_training_domain
    from ase_mlrho.evaluation import eps_rho_percent, evaluate_snapshots
    from ase_mlrho.inference import OOD_WARNING_FRACTION, renormalise_posterior
    from ase_mlrho.model_files import load_model
    from sparc_bridge.snapshots import find_run_directories, load_snapshot

    model = load_model(args.model)
    threshold = model.epistemic_sigma_validation_max
    r_train = model.training_hole_bohr
    rows = []
    for name, *dirs in args.group:
        for d in find_run_directories(dirs):
            snap = load_snapshot(d)
            (m,), _, (pred,) = evaluate_snapshots(model, [snap])
            err = (pred.density - snap.density_e_per_bohr3).ravel()
            epi, sig = pred.sigma_epistemic.ravel(), pred.sigma_total.ravel()
            dist = nearest_atom_distance_bohr(snap)
            ood = None if threshold is None else float(np.mean(epi > threshold))
            # the same prediction brought to the electron count the other way (renormalisation "posterior")
            f = pred.renormalisation_factor
            post, _ = renormalise_posterior(pred.density / f, (pred.sigma_total / f) ** 2, snap.grid.dv_bohr3,
                                            snap.n_electrons)
            err_post = (post - snap.density_e_per_bohr3).ravel()
            rows.append({"group": name, **m.to_dict(), "natoms": len(snap.atoms),
                         "ood_fraction": ood,
                         "sigma_epistemic_max_over_threshold": None if threshold is None else float(epi.max() / threshold),
                         "shells": shells(err, sig, epi, dist), "hole": near_hole(snap, err, sig, epi, dist),
                         "largest_hole_bohr": float(dist.max()), "training_hole_bohr": r_train,
                         "warns_ood": ood is not None and ood > OOD_WARNING_FRACTION,
                         "warns_hole": beyond_training_domain(float(dist.max()), r_train, model.mesh_spacing_bohr),
                         "beyond_training": (None if r_train is None or not np.any(dist > r_train) else
                                             region_figures(err, sig, epi, dist > r_train)),
                         "posterior": {"eps_rho_percent": eps_rho_percent(err_post, snap.grid.dv_bohr3, snap.n_electrons),
                                       "coverage_3sigma": float(np.mean(np.abs(err_post) <= 3 * sig / f))}})
    ref = np.mean([r["sigma_epistemic_mean_e_per_bohr3"] for r in rows if r["group"] == args.group[0][0]])
    for r in rows:
        r["sigma_epistemic_over_reference"] = r["sigma_epistemic_mean_e_per_bohr3"] / ref

    print(f"model {args.model}; out-of-distribution threshold (validation p99.9 of the epistemic sigma) "
          f"{threshold:.3g} e/Bohr^3; epistemic sigma relative to the mean of group '{args.group[0][0]}'\n")
    print("| cell | group | atoms | eps % | eps_exp % | cov 3σ | posterior renormalisation: eps %, cov 3σ | σ_epi | σ_epi / ref | OOD % | max σ_epi / p99.9 | "
          "far from atoms (> 4 Bohr): points, cov 3σ, |err|/σ, σ_epi / cell's | "
          "within 3 Bohr of the largest hole: radius, cov 3σ, |err|/σ, σ_epi / cell's | "
          f"beyond the training hole ({r_train:.2f} Bohr): points, cov 3σ | warnings |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        far = [s for s in r["shells"] if s["from_bohr"] >= 4.0]
        n_far = sum(s["points"] for s in far)
        far_text = "none"
        if n_far:
            w = [s["points"] / n_far for s in far]
            far_text = (f"{n_far}, {sum(wi * s['coverage_3sigma'] for wi, s in zip(w, far)):.3f}, "
                        f"{max(s['mean_abs_error_over_mean_sigma'] for s in far):.2f} (max), "
                        f"{max(s['epistemic_sigma_over_cell_mean'] for s in far):.2f} (max)")
        print(f"| {r['name']} | {r['group']} | {r['natoms']} | {r['eps_rho_percent']:.3f} | "
              f"{r['expected_eps_percent']:.3f} | {r['coverage_3sigma']:.4f} | "
              f"{r['posterior']['eps_rho_percent']:.3f}, {r['posterior']['coverage_3sigma']:.4f} | "
              f"{r['sigma_epistemic_mean_e_per_bohr3']:.2e} | {r['sigma_epistemic_over_reference']:.2f} | "
              f"{100 * (r['ood_fraction'] or 0):.2f} | {r['sigma_epistemic_max_over_threshold'] or 0:.2f} | {far_text} | "
              f"{_hole_text(r['hole'])} | {_beyond_text(r['beyond_training'])} | {_warnings_text(r)} |")
    eps = [r["eps_rho_percent"] for r in rows]
    summary = {"model": args.model, "cells": len(rows), "ood_threshold_e_per_bohr3": threshold,
               "pearson_eps_vs_mean_sigma_epi": pearson(eps, [r["sigma_epistemic_mean_e_per_bohr3"] for r in rows]),
               "pearson_eps_vs_epistemic_eps": pearson(eps, [r["epistemic_eps_percent"] for r in rows]),
               "pearson_eps_vs_mean_abs_error": pearson(eps, [r["mae_e_per_bohr3"] for r in rows]),
               "min_coverage_3sigma": float(min(r["coverage_3sigma"] for r in rows))}
    print(f"\nacross the {len(rows)} cells: Pearson(eps, mean σ_epi) = {summary['pearson_eps_vs_mean_sigma_epi']}, "
          f"per electron Pearson(eps, eps_epi) = {summary['pearson_eps_vs_epistemic_eps']} (ceiling in e/Bohr^3: "
          f"Pearson(eps, mean |error|) = {summary['pearson_eps_vs_mean_abs_error']}); "
          f"worst 3σ coverage {summary['min_coverage_3sigma']:.4f}")
    if args.json:
        from ase_mlrho.files import atomic_write

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, lambda f: json.dump({"summary": summary, "cells": rows}, f, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
