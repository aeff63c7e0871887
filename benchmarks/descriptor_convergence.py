"""Descriptor convergence study (the paper's way of choosing M, M_s and k).

For each descriptor size, train the same network with the same budget on the same training
snapshots and measure the density error per electron (eps, %) on the validation snapshot, on the
whole grid. The chosen descriptor is the smallest one whose validation eps is within --tol (relative)
of the best. Test snapshots are never touched here.

    python benchmarks/descriptor_convergence.py [--data ../shared/data/sparc] [--epochs 15] [--points 30000]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sparc_bridge.snapshots import load_snapshot
from ase_mlrho.descriptors import DescriptorSpec
from ase_mlrho.evaluation import evaluate_snapshots
from ase_mlrho.model import NetworkConfig
from ase_mlrho.training import TrainingConfig, train_model

TRAIN = ["al_n=2_T=315_seed=1", "al_n=2_T=315_seed=7", "al_n=2_T=945_seed=2", "al_n=2_T=1260_seed=5",
         "al_n=2_T=1575_seed=3", "al_n=2_T=1890_seed=6"]
VAL = ["al_n=2_T=945_seed=8"]
# (M, M_s, k): Set I first at fixed Set II, then Set II at the chosen M
GRID = [(8, 4, 4), (16, 4, 4), (24, 4, 4), (32, 4, 4), (48, 4, 4),
        (32, 0, 4), (32, 2, 4), (32, 6, 4), (32, 4, 2), (32, 4, 8)]
#: Set III as shipped in al-pbe, added to the chosen Set I/II size for comparison
ANGULAR = {"angular_l_max": 4, "angular_centers_bohr": (0.0, 1.5, 3.0, 4.5, 6.0, 7.5),
           "angular_width_bohr": 1.0, "angular_cutoff_bohr": 9.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sparc"))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--points", type=int, default=30000)
    ap.add_argument("--tol", type=float, default=0.03, help="relative tolerance for 'converged'")
    ap.add_argument("--json", help="also write the table to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data)
    train = [load_snapshot(data / n) for n in TRAIN]
    val = [load_snapshot(data / n) for n in VAL]
    net = NetworkConfig()
    cfg = TrainingConfig(epochs=args.epochs, points_per_snapshot=args.points, val_points_per_snapshot=10000)
    rows = []
    print(f"{'M':>3s} {'M_s':>3s} {'k':>2s} {'features':>8s} {'val eps %':>9s} {'train s':>8s}", flush=True)
    for m, ms, k, angular in [(*g, {}) for g in GRID] + [(32, 4, 4, ANGULAR)]:
        spec = DescriptorSpec(m=m, m_s=ms, k=k, species=("Al",), **angular)
        t0 = time.perf_counter()
        model = train_model(train, val, spec, net, cfg, name=f"M{m}_Ms{ms}_k{k}", progress=False, log=lambda s: None)
        seconds = time.perf_counter() - t0
        per, _, _ = evaluate_snapshots(model, val, n_samples=0)
        rows.append({"m": m, "m_s": ms, "k": k, "set3": bool(angular), "n_features": spec.n_features,
                     "val_eps_percent": per[0].eps_rho_percent, "train_seconds": seconds})
        print(f"{m:3d} {ms:3d} {k:2d} {spec.n_features:8d} {per[0].eps_rho_percent:9.3f} {seconds:8.0f}"
              + ("  (+ Set III)" if angular else ""), flush=True)
    plain = [r for r in rows if not r["set3"]]
    best = min(r["val_eps_percent"] for r in plain)
    ok = [r for r in plain if r["val_eps_percent"] <= best * (1 + args.tol)]
    choice = min(ok, key=lambda r: (r["n_features"], r["m"]))
    print(f"smallest converged Set I/II descriptor (within {100 * args.tol:.0f} % of the best {best:.3f} %): "
          f"M={choice['m']} M_s={choice['m_s']} k={choice['k']} ({choice['val_eps_percent']:.3f} %)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "choice": choice}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
