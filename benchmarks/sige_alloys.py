"""SiGe alloys: accuracy and uncertainty of a model across compositions and defects.

For each group of held-out SPARC cells (x = 0.5 like the training data, other compositions, a
vacancy cell) the model predicts the density on the SPARC grid and the script prints, per cell and
per group: eps (% per electron, renormalised prediction), 3-sigma coverage, miscalibration area,
and the mean aleatoric and epistemic sigma. It then asks whether the uncertainty rises where the
error rises:

* across cells: the Pearson correlation of eps with the mean epistemic sigma (and with the mean
  total sigma), and with the same sigmas per electron, as eps is (``epistemic_eps_percent``,
  ``expected_eps_percent``: sqrt(2/pi) * integral sigma dV / N_e; a mean sigma in e/Bohr^3 grows
  with a cell's electron density, eps does not);
* within cells: the Spearman rank correlation, over all grid points, of |error| with the epistemic
  sigma, and the ratio of the mean |error| in the top and bottom deciles of epistemic sigma.

With ``--hf`` (needs SPARC) it also takes the Harris-Foulkes energy of each predicted density
(one SPARC diagonalisation, :func:`sparc_bridge.harris_foulkes.harris_foulkes_energy`) and
reports HF - SCF in Ha/atom against the cell's own SCF energy; when the model file carries a
screening model (``mlrho screening``), also the second-order corrected energy of the same run
(:mod:`sparc_bridge.screening`). The CI fixtures of those energies come from ``mlrho energy`` work
directories through their own script, ``benchmarks/hf_fixture.py``.

    python benchmarks/sige_alloys.py -m sige-pbe \\
        --group "x=0.5" ../shared/data/sparc/sige_T=1200_seed=6 data/sige/x05 \\
        --group "x=0.4" data/sige/x04 --group "x=0.6" data/sige/x06 --group vacancy data/sige/vac \\
        --hf --json benchmarks/results/sige_alloys.json

Group arguments may be SPARC run directories or ``mlrho datagen`` output directories.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sparc_bridge.snapshots import find_run_directories


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def pearson(a, b) -> float | None:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="sige-pbe")
    ap.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "DIR"),
                    help="a group name followed by SPARC run or datagen directories (repeatable)")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--hf", action="store_true", help="also Harris-Foulkes energies through SPARC")
    ap.add_argument("--json", help="write all figures to this JSON file")
    args = ap.parse_args(argv)

    from sparc_bridge.snapshots import load_snapshot
    from ase_mlrho.evaluation import evaluate_snapshots
    from ase_mlrho.model_files import load_model

    model = load_model(args.model)
    rows, pooled_err, pooled_epi = [], [], []
    for name, *dirs in args.group:
        for d in find_run_directories(dirs):
            snap = load_snapshot(d)
            (m,), _, (pred,) = evaluate_snapshots(model, [snap], n_samples=args.samples)
            err = np.abs(pred.density - snap.density_e_per_bohr3).ravel()
            epi = pred.sigma_epistemic.ravel()
            lo, hi = np.quantile(epi, [0.1, 0.9])
            symbols = snap.atoms.get_chemical_symbols()
            row = {"group": name, **m.to_dict(), "natoms": len(symbols),
                   "x_ge": symbols.count("Ge") / len(symbols),
                   "T_K": snap.provenance.get("meta", {}).get("T_K"),
                   "spearman_abs_error_vs_sigma_epi": spearman(err, epi),
                   "error_ratio_top_vs_bottom_decile_sigma_epi": float(err[epi >= hi].mean() / err[epi <= lo].mean())}
            if args.hf:
                row.update(harris_foulkes(model, snap, pred))
            rows.append(row)
            pooled_err.append(err)
            pooled_epi.append(epi)
            print(_format_row(row), flush=True)

    eps = np.array([r["eps_rho_percent"] for r in rows])
    epi_mean = np.array([r["sigma_epistemic_mean_e_per_bohr3"] for r in rows])
    tot_mean = np.array([np.hypot(r["sigma_aleatoric_mean_e_per_bohr3"], r["sigma_epistemic_mean_e_per_bohr3"])
                         for r in rows])
    summary = {
        "model": args.model,
        "cells": len(rows),
        "pearson_eps_vs_mean_sigma_epi": pearson(eps, epi_mean),
        "pearson_eps_vs_mean_sigma_total": pearson(eps, tot_mean),
        "pearson_eps_vs_epistemic_eps": pearson(eps, [r["epistemic_eps_percent"] for r in rows]),
        "pearson_eps_vs_expected_eps": pearson(eps, [r["expected_eps_percent"] for r in rows]),
        # the ceiling of the first figure: a sigma that *is* each point's |error| has the cell mean
        # mae_e_per_bohr3, so no sigma in e/Bohr^3 that tracks the error can correlate with eps better
        "pearson_eps_vs_mean_abs_error": pearson(eps, [r["mae_e_per_bohr3"] for r in rows]),
        "pearson_mean_abs_error_vs_mean_sigma_epi": pearson([r["mae_e_per_bohr3"] for r in rows], epi_mean),
        "spearman_abs_error_vs_sigma_epi_pooled": spearman(np.concatenate(pooled_err), np.concatenate(pooled_epi)),
        "groups": {},
    }
    for name in dict.fromkeys(r["group"] for r in rows):
        g = [r for r in rows if r["group"] == name]
        summary["groups"][name] = {
            "cells": len(g),
            "eps_rho_percent_mean": float(np.mean([r["eps_rho_percent"] for r in g])),
            "eps_rho_percent_max": float(np.max([r["eps_rho_percent"] for r in g])),
            "coverage_3sigma_min": float(np.min([r["coverage_3sigma"] for r in g])),
            "sigma_epistemic_mean_e_per_bohr3": float(np.mean([r["sigma_epistemic_mean_e_per_bohr3"] for r in g])),
        }
        if args.hf:
            summary["groups"][name]["hf_error_ha_per_atom_max_abs"] = float(
                np.max([abs(r["hf_error_ha_per_atom"]) for r in g]))
            if all(r.get("hf_corrected_error_ha_per_atom") is not None for r in g):
                summary["groups"][name]["hf_corrected_error_ha_per_atom_max_abs"] = float(
                    np.max([abs(r["hf_corrected_error_ha_per_atom"]) for r in g]))
    print("\n| group | cells | eps mean (%) | eps max (%) | min 3-sigma coverage | mean epistemic sigma (e/Bohr^3) |"
          + (" max abs(HF - SCF) (Ha/atom) |" if args.hf else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.hf else ""))
    for name, g in summary["groups"].items():
        line = (f"| {name} | {g['cells']} | {g['eps_rho_percent_mean']:.2f} | {g['eps_rho_percent_max']:.2f} | "
                f"{g['coverage_3sigma_min']:.4f} | {g['sigma_epistemic_mean_e_per_bohr3']:.2e} |")
        if args.hf:
            line += f" {g['hf_error_ha_per_atom_max_abs']:.1e} |"
        print(line)
    print(f"\nacross cells: Pearson(eps, mean epistemic sigma) = {summary['pearson_eps_vs_mean_sigma_epi']}, "
          f"Pearson(eps, mean total sigma) = {summary['pearson_eps_vs_mean_sigma_total']} (ceiling: "
          f"Pearson(eps, mean |error|) = {summary['pearson_eps_vs_mean_abs_error']}; in the same units, "
          f"Pearson(mean |error|, mean epistemic sigma) = {summary['pearson_mean_abs_error_vs_mean_sigma_epi']}); "
          f"per electron: "
          f"Pearson(eps, epistemic eps) = {summary['pearson_eps_vs_epistemic_eps']}, "
          f"Pearson(eps, expected eps) = {summary['pearson_eps_vs_expected_eps']}; "
          f"within cells (pooled points): Spearman(|error|, epistemic sigma) = "
          f"{summary['spearman_abs_error_vs_sigma_epi_pooled']:.3f}")
    for name, g in summary["groups"].items():
        if "hf_corrected_error_ha_per_atom_max_abs" in g:
            print(f"{name}: max abs(HF + second order - SCF) = {g['hf_corrected_error_ha_per_atom_max_abs']:.1e} Ha/atom")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "cells": rows}, indent=1))
    return 0


def harris_foulkes(model, snap, pred) -> dict:
    """HF energy of the predicted density vs the cell's own SCF energy (Ha/atom), and the second-order
    corrected one when the model carries a screening model (the CI fixture of these runs is made from
    ``mlrho energy`` work directories by ``benchmarks/hf_fixture.py``)."""
    from sparc_bridge.harris_foulkes import harris_foulkes_energy
    from sparc_bridge.inputs import SparcSettings
    from sparc_bridge.screening import ScreeningModel

    settings = SparcSettings(mesh_spacing_bohr=model.mesh_spacing_bohr)
    screening = ScreeningModel.from_metadata(model.metadata)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlrho-hf-") as tmp:
        r = harris_foulkes_energy(snap.atoms, pred.density, snap.grid, settings, directory=tmp, screening=screening)
    e_scf = snap.free_energy_ha / len(snap.atoms)
    e_corr = r.corrected_energy_per_atom_ha
    return {"hf_energy_ha_per_atom": r.energy_per_atom_ha, "scf_energy_ha_per_atom": e_scf,
            "hf_error_ha_per_atom": r.energy_per_atom_ha - e_scf, "hf_first_scf_error": r.first_scf_error,
            "hf_corrected_energy_ha_per_atom": e_corr,
            "hf_corrected_error_ha_per_atom": None if e_corr is None else e_corr - e_scf,
            "hf_seconds": time.perf_counter() - t0}


def _format_row(r: dict) -> str:
    text = (f"{r['group']:>8} {r['name']:<40} x={r['x_ge']:.3f} N={r['natoms']:3d} eps={r['eps_rho_percent']:.3f} % "
            f"cov3={r['coverage_3sigma']:.4f} miscal={r['miscalibration_area']:.3f} "
            f"ale={r['sigma_aleatoric_mean_e_per_bohr3']:.2e} epi={r['sigma_epistemic_mean_e_per_bohr3']:.2e} "
            f"eps_exp={r['expected_eps_percent']:.3f} % eps_epi={r['epistemic_eps_percent']:.3f} % "
            f"spearman(|err|,epi)={r['spearman_abs_error_vs_sigma_epi']:.3f}")
    if "hf_error_ha_per_atom" in r:
        text += f" HF-SCF={r['hf_error_ha_per_atom']:+.2e} Ha/atom"
    if r.get("hf_corrected_error_ha_per_atom") is not None:
        text += f" corrected-SCF={r['hf_corrected_error_ha_per_atom']:+.2e} Ha/atom"
    return text


if __name__ == "__main__":
    sys.exit(main())
