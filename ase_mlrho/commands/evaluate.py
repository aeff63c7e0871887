"""``mlrho evaluate -m MODEL SPARC_DIR... [--json] [--plot DIR]``: model vs DFT densities."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="compare a model's densities with SPARC snapshots",
                              description="Predict each SPARC run directory's density and compare it with "
                                          "SPARC's converged density: error per electron, RMSE, NRMSE, "
                                          "coverage of the 1/2/3 sigma intervals, miscalibration area.")
    p.add_argument("sparc_dirs", nargs="+", metavar="SPARC_DIR",
                   help="finished SPARC run directories with their converged density (SPARC.dens or SPARC.dens.gz)")
    p.add_argument("-m", "--model", default="al-pbe", help="shipped model name or model file (default al-pbe)")
    p.add_argument("--samples", type=int, default=None, help="weight samples (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior weight samples (default 0): the same "
                                                       "seed gives the same figures bit for bit")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--plot", metavar="DIR", help="write a density slice with its +/-3 sigma band and a "
                                                 "reliability diagram per snapshot to DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    from sparc_bridge.snapshots import SnapshotError, load_snapshot
    from ..evaluation import evaluate_snapshots
    from ..model_files import ModelFileError, load_model

    try:
        model = load_model(args.model)
        snapshots = [load_snapshot(d) for d in args.sparc_dirs]
        for s in snapshots:
            model.check_species(s.atoms.numbers)
    except (ModelFileError, SnapshotError, ValueError) as exc:
        print(f"mlrho evaluate: {exc}", file=sys.stderr)
        return 2
    per, overall, preds = evaluate_snapshots(model, snapshots, args.samples, args.seed, progress=not args.json)
    if args.plot:
        _plots(Path(args.plot), snapshots, preds)
    if args.json:
        print(json.dumps({"model": model.name, "snapshots": [m.to_dict() for m in per], "overall": overall.to_dict()}))
        return 0
    width = max(len("snapshot"), *(len(m.name) for m in [*per, overall]))
    head = f"{'snapshot':{width}s} {'eps %':>7s} {'RMSE':>9s} {'NRMSE %':>8s} {'cov1':>6s} {'cov2':>6s} {'cov3':>6s} " \
           f"{'miscal':>7s} {'sig_ale':>9s} {'sig_epi':>9s} {'eps_exp':>7s} {'eps_epi':>7s} {'s':>6s}"
    print(f"model {model.name}: eps % = 100 int|rho_ML - rho_DFT| dV / N_electrons (electrons misplaced, per "
          "electron); RMSE in e/Bohr^3; cov k = fraction of points inside +/- k sigma; miscal = miscalibration "
          "area; sig_ale / sig_epi = mean aleatoric / epistemic sigma (e/Bohr^3); eps_exp = the eps % the "
          "sigma predicts (sqrt(2/pi) int sigma dV / N_electrons), eps_epi = its epistemic part; s = seconds")
    print(head)
    for m in [*per, overall]:
        print(f"{m.name:{width}s} {m.eps_rho_percent:7.3f} {m.rmse_e_per_bohr3:9.2e} {m.nrmse_percent:8.3f} "
              f"{m.coverage_1sigma:6.3f} {m.coverage_2sigma:6.3f} {m.coverage_3sigma:6.3f} "
              f"{m.miscalibration_area:7.4f} {m.sigma_aleatoric_mean_e_per_bohr3:9.2e} "
              f"{m.sigma_epistemic_mean_e_per_bohr3:9.2e} {m.expected_eps_percent:7.3f} {m.epistemic_eps_percent:7.3f} "
              f"{m.seconds:6.1f}")
    return 0


def _plots(directory: Path, snapshots, preds) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..files import atomic_write
    from ..uncertainty import plot_reliability

    directory.mkdir(parents=True, exist_ok=True)
    for snap, pred in zip(snapshots, preds):
        k = snap.grid.shape[2] // 2
        j = snap.grid.shape[1] // 2
        x = np.arange(snap.grid.shape[0]) * snap.grid.spacing_bohr[0]
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
        ref, mu, sig = snap.density_e_per_bohr3[:, j, k], pred.density[:, j, k], pred.sigma_total[:, j, k]
        ax0.fill_between(x, mu - 3 * sig, mu + 3 * sig, color="C0", alpha=0.3, label="ML +/- 3 sigma")
        ax0.plot(x, mu, "C0-", label="ML mean")
        ax0.plot(x, ref, "k--", label="SPARC (DFT)")
        ax0.set_xlabel("x (Bohr)")
        ax0.set_ylabel("density (e/Bohr^3)")
        ax0.set_title(f"{snap.name}: line through the cell")
        ax0.legend(fontsize=8)
        im = ax1.imshow((pred.density - snap.density_e_per_bohr3)[:, :, k].T, origin="lower", cmap="RdBu_r")
        ax1.set_title("ML - DFT, slice k = %d" % k)
        fig.colorbar(im, ax=ax1, label="e/Bohr^3")
        fig.tight_layout()
        try:
            atomic_write(directory / f"{snap.name}_slice.png", lambda f: fig.savefig(f, format="png", dpi=120),
                         binary=True)
        finally:
            plt.close(fig)
        plot_reliability(pred.density - snap.density_e_per_bohr3, pred.sigma_total,
                         directory / f"{snap.name}_reliability.png", title=snap.name)
