"""The Gamma-point part of a 108-atom Al density, from 4-atom cells by zone folding.

A k-point SCF of a 108-atom cell does not fit here (SPARC's own memory estimate for Al108 with
2x2x2 k-points is 40.8 GB against this machine's 24 GiB; the one shifted k-point that fits costs
hours). For the *perfect* crystal it is not needed: the Gamma point of the 3x3x3 supercell of the
4-atom cubic cell folds onto the Gamma-centred 3x3x3 grid of the 4-atom cell, and the supercell's
2x2x2 grid shifted by 1/2 onto the 4-atom cell's 6x6x6 grid shifted by 1/2 (likewise Al32: Gamma =
2x2x2 Gamma-centred, 2x2x2 shifted = 4x4x4 shifted). So four 4-atom SCFs give, exactly, the
perfect-crystal density difference Delta = rho_Gamma - rho_k of Al32 and Al108 (how converged the
2x2x2 Al32 references are: benchmarks/al_kpoints.py, 2x2x2 against 3x3x3). The Al32 pair can be set against the measured
thermal-cell difference (eps 2.8-3.0 %, benchmarks/README.md), which says how well the perfect
crystal stands for thermal cells.

With ``--test`` (a 108-atom Gamma-point run, a 3x3x3 supercell of the 4-atom cell) and models, it
also says how much of each model's error on that cell is this pattern: Delta tiled onto the cell
and Fourier-resampled to its grid, the best multiple alpha * Delta removed from the error, the
fraction of the error's variance removed and eps after removing it.

Usage (needs SPARC and ``ASE_SPARC_COMMAND``; finished runs are reused)::

    python benchmarks/gamma_folding.py --workdir mlrho-runs/gamma_folding \\
        --test ../shared/data/sparc/al_n=3_T=630_seed=10 -m al-pbe [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# (label, k-point grid, shift, a committed run of it): what each 4-atom run stands for
KPTS = ROOT / "data" / "sparc" / "al_kpts"
RUNS = (("al32_gamma", 2, 0.0, KPTS / "convergence" / "perfect_gamma_k2" / "al4_k=2x2x2_s=0_T=0_seed=0"),
        ("al32_k2", 4, 0.5, KPTS / "eos_al4" / "a=4.05" / "al_n=1_k=4x4x4_T=0_seed=0"),
        ("al108_gamma", 3, 0.0, KPTS / "convergence" / "perfect_gamma_k3" / "al4_k=3x3x3_s=0_T=0_seed=0"),
        ("al108_k2", 6, 0.5, KPTS / "convergence" / "perfect_k6" / "al_n=1_k=6x6x6_T=0_seed=0"))


def run_al4(workdir: Path, kpts: int, shift: float, sparc_command=None) -> Path:
    """The perfect 4-atom Al crystal (a = 4.05 A) with a kpts^3 grid, made by `mlrho datagen`."""
    from ase_mlrho.cli import main

    out = workdir / f"k{kpts}_s{shift:g}"
    rc = main(["datagen", "--element", "Al", "--supercell", "1", "-T", "0", "--seeds", "0", "--kpts",
               str(kpts), str(kpts), str(kpts), "--kpoint-shift", f"{shift:g}", "-o", str(out),
               "--name-prefix", f"al4_k={kpts}x{kpts}x{kpts}_s={shift:g}", "--no-progress",
               *(["--sparc-command", sparc_command] if sparc_command else [])])
    if rc != 0:
        raise SystemExit(f"the SPARC run {out} failed ({rc})")
    (run,) = [p for p in out.iterdir() if p.is_dir() and (p / "SPARC.out").is_file()]
    return run


def fourier_resample(field: np.ndarray, shape) -> np.ndarray:
    """A periodic field on a regular grid resampled to another regular grid of the same cell (band-limited)."""
    from scipy.signal import resample

    out = field
    for axis, n in enumerate(shape):
        out = resample(out, n, axis=axis)
    return out


def explained(error: np.ndarray, pattern: np.ndarray, dv: float, n_e: float) -> dict:
    """Fit error ~ alpha * pattern (least squares); what the pattern accounts for."""
    from ase_mlrho.evaluation import eps_rho_percent

    e, p = error.ravel(), pattern.ravel()
    alpha = float(e @ p / (p @ p))
    rest = e - alpha * p
    return {"alpha": alpha, "variance_fraction_explained": float(1.0 - rest @ rest / (e @ e)),
            "correlation": float(np.corrcoef(e, p)[0, 1]),
            "eps_percent": eps_rho_percent(e, dv, n_e),
            "eps_after_removing_percent": eps_rho_percent(rest, dv, n_e)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="mlrho-runs/gamma_folding")
    ap.add_argument("--test", help="a Gamma-point 108-atom run directory (3x3x3 supercell of the cubic cell)")
    ap.add_argument("-m", "--models", nargs="*", default=[], help="models to split the error of on --test")
    ap.add_argument("--sparc-command")
    ap.add_argument("--json", help="write the figures here as JSON")
    args = ap.parse_args(argv)

    from ase_mlrho.evaluation import eps_rho_percent
    from sparc_bridge.snapshots import load_snapshot

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    snaps = {label: load_snapshot(committed if committed is not None and committed.is_dir()
                                  else run_al4(workdir, k, s, args.sparc_command))
             for label, k, s, committed in RUNS}
    ref = snaps["al108_k2"]
    dv, n_e = ref.grid.dv_bohr3, ref.n_electrons
    rho = {k: s.density_e_per_bohr3 for k, s in snaps.items()}
    res = {"a_ang": 4.05, "grid": list(ref.grid.shape),
           "free_energy_ha_per_atom": {k: s.provenance.get("meta", {}).get("free_energy_ha", float("nan")) / 4
                                       for k, s in snaps.items()},
           "eps_percent": {
               "al32_gamma_vs_k2": eps_rho_percent(rho["al32_gamma"] - rho["al32_k2"], dv, n_e),
               "al108_gamma_vs_k2": eps_rho_percent(rho["al108_gamma"] - rho["al108_k2"], dv, n_e),
               "al32_k2_vs_al108_k2": eps_rho_percent(rho["al32_k2"] - rho["al108_k2"], dv, n_e)}}
    print("perfect Al crystal, a = 4.05 A, by zone folding (eps between densities, %):")
    for key, val in res["eps_percent"].items():
        print(f"  {key:28s} {val:.3f}")

    if args.test:
        from ase_mlrho.inference import predict_field
        from ase_mlrho.model_files import load_model

        test = load_snapshot(args.test)
        delta = np.tile(rho["al108_gamma"] - rho["al108_k2"], (3, 3, 3))
        delta = fourier_resample(delta, test.grid.shape)
        res["test"] = {"name": test.name, "models": {}}
        for name in args.models:
            model = load_model(name)
            pred = predict_field(model, test.atoms, test.grid, seed=0)
            # the pattern's sign: rho_Gamma - rho_k, so a model of rho_k errs by -Delta against rho_Gamma
            err = pred.density - test.density_e_per_bohr3
            r = explained(err, -delta, test.grid.dv_bohr3, test.n_electrons)
            res["test"]["models"][model.name] = r
            print(f"{model.name} on {test.name}: eps {r['eps_percent']:.3f} %, corr(error, -Delta) "
                  f"{r['correlation']:.3f}, alpha {r['alpha']:.2f}, {100 * r['variance_fraction_explained']:.1f} % "
                  f"of the error variance; eps without it {r['eps_after_removing_percent']:.3f} %")
    if args.json:
        from ase_mlrho.files import atomic_write

        atomic_write(Path(args.json), lambda f: json.dump(res, f, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
