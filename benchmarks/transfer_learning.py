"""Transfer learning from small to large cells: is it better, and cheaper in DFT?

Three models, all evaluated on held-out large cells (the paper: Al 32-atom training data, a few
108-atom cells, a 256-atom test cell; here the test is a 108-atom cell at 631 K):

(a) small only     -- trained from scratch on the small cells;
(b) large only     -- trained from scratch on large cells, as many as fit into the DFT budget of (c)
                      (``--large-budget transfer``, the issue's "same DFT budget") or all of them
                      (``--large-budget all``);
(c) transfer       -- (a) fine-tuned on the large cells with its first ``--freeze`` layers frozen.

For each: eps (% per electron, the prediction renormalised to N_e), 3-sigma coverage (pooled over
the test cells), and the DFT core-hours its training data cost (``meta.json`` ``wall_s`` x MPI ranks
of ``sparc_command``, default ``--cores``). Also the descriptor distributions of small vs large
cells (mean Jensen-Shannon divergence per feature, MMD^2, and a histogram plot): what large cells
add that small ones do not.

Snapshot arguments may be SPARC run directories, directories of them, or ``mlrho datagen`` output
directories (their manifest decides: failed and unconverged snapshots are left out). Snapshots
whose SCF did not converge are always left out. Run, when enough 108-atom snapshots exist::

    python benchmarks/transfer_learning.py \\
        --small ../shared/data/sparc/al_n=2_T=*_seed=* data/al32 \\
        --large data/al108 --test ../shared/data/sparc/al_n=3_T=630_seed=10 \\
        --out benchmarks/results/transfer_learning

``--quick`` trains small networks on few points (minutes instead of hours; the numbers then show
only that the pipeline runs). Results: ``OUT/results.json``, ``OUT/descriptors_small_vs_large.png``
and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from sparc_bridge.snapshots import find_run_directories

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "sparc"


def core_hours(directory: Path, default_cores: int) -> float:
    """DFT cost of one snapshot: wall time x MPI ranks, from its meta.json."""
    meta = json.loads((directory / "meta.json").read_text()) if (directory / "meta.json").is_file() else {}
    if "wall_s" not in meta:
        raise ValueError(f"{directory}: no wall_s in meta.json; cannot count its DFT cost")
    m = re.search(r"-np\s+(\d+)", str(meta.get("sparc_command", "")))
    cores = int(m.group(1)) if m else default_cores
    return float(meta["wall_s"]) * cores / 3600.0


def converged_only(dirs):
    from sparc_bridge.datagen import scf_converged

    kept = [d for d in dirs if scf_converged(d)]
    for d in sorted(set(dirs) - set(kept)):
        print(f"leaving out {d}: SCF did not converge", file=sys.stderr)
    return kept


def split_validation(snaps, seed: int):
    """One validation snapshot per 5, by snapshot (never by grid point); with a single snapshot it
    is used for both, which the results record."""
    if len(snaps) == 1:
        return snaps, snaps
    order = np.random.default_rng(seed).permutation(len(snaps))
    n_val = max(1, len(snaps) // 5)
    return [snaps[i] for i in sorted(order[n_val:])], [snaps[i] for i in sorted(order[:n_val])]


def evaluate(model, tests, seed: int) -> dict:
    from ase_mlrho.evaluation import evaluate_snapshots

    per, overall, _ = evaluate_snapshots(model, tests, seed=seed)
    return {"eps_rho_percent": overall.eps_rho_percent, "coverage_3sigma": overall.coverage_3sigma,
            "coverage_1sigma": overall.coverage_1sigma, "per_snapshot": [m.to_dict() for m in per]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", nargs="+", default=[str(SHARED / "al_n=2_T=*_seed=*")])
    ap.add_argument("--large", nargs="+", default=[str(SHARED / "al_n=3_T=*_seed=*")])
    ap.add_argument("--test", nargs="+", default=[str(SHARED / "al_n=3_T=630_seed=10")],
                    help="held-out large cells (never trained or validated on)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "transfer_learning"))
    ap.add_argument("--freeze", type=int, default=2, help="leading layers frozen in (c)")
    ap.add_argument("--large-budget", choices=("transfer", "all"), default="transfer")
    ap.add_argument("--cores", type=int, default=2, help="MPI ranks when meta.json does not say")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small networks, few points: a smoke run")
    args = ap.parse_args(argv)

    from sparc_bridge.snapshots import load_snapshot
    from ase_mlrho.descriptors import DescriptorSpec
    from ase_mlrho.model import NetworkConfig
    from ase_mlrho.training import TrainingConfig, train_model
    from ase_mlrho.transfer import (FINETUNE_DEFAULTS, compare_descriptor_distributions, descriptor_sample,
                                    finetune_model, plot_descriptor_histograms)

    test_dirs = converged_only(find_run_directories(args.test))
    test_set = {p.resolve() for p in test_dirs}
    small_dirs = [p for p in converged_only(find_run_directories(args.small)) if p.resolve() not in test_set]
    large_dirs = [p for p in converged_only(find_run_directories(args.large)) if p.resolve() not in test_set]
    if not test_dirs or not small_dirs or not large_dirs:
        print(f"need small ({len(small_dirs)}), large ({len(large_dirs)}) and held-out test ({len(test_dirs)}) "
              "snapshots; the large ones must not be the test cells. Generate more large cells with "
              "`mlrho datagen --element Al --supercell 3 ...` (about 20 min each here).", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.quick:
        spec = DescriptorSpec(m=16, m_s=2, k=4, species=("Al",))
        net = NetworkConfig(hidden=(32, 32, 32))
        train_cfg = TrainingConfig(points_per_snapshot=4000, val_points_per_snapshot=3000, epochs=8, seed=args.seed)
        ft_cfg = replace(FINETUNE_DEFAULTS, points_per_snapshot=4000, val_points_per_snapshot=3000, epochs=6,
                         seed=args.seed)
    else:
        spec, net = DescriptorSpec(species=("Al",)), NetworkConfig()
        train_cfg, ft_cfg = TrainingConfig(seed=args.seed), replace(FINETUNE_DEFAULTS, seed=args.seed)

    cost = {p.resolve(): core_hours(p, args.cores) for p in small_dirs + large_dirs}
    small = [load_snapshot(p) for p in small_dirs]
    large = [load_snapshot(p) for p in large_dirs]
    tests = [load_snapshot(p) for p in test_dirs]
    path_of = {id(s): p for s, p in zip(small + large, small_dirs + large_dirs)}

    def hours(snaps):
        return sum(cost[path_of[id(s)].resolve()] for s in snaps)

    results = {"spec": spec.to_dict(), "network": net.to_dict(), "training_config": asdict(train_cfg),
               "finetune_config": asdict(ft_cfg), "freeze": args.freeze, "quick": args.quick,
               "test": [s.name for s in tests], "models": {}}

    # descriptor distributions: small vs large (training) and vs the test cells
    t0 = time.perf_counter()
    d_small = descriptor_sample(small, spec, 4000, args.seed)
    d_large = descriptor_sample(large, spec, 4000, args.seed)
    d_test = descriptor_sample(tests, spec, 4000, args.seed)
    names = spec.feature_names()
    cmp_sl = compare_descriptor_distributions(d_small, d_large, ("small", "large"), names, seed=args.seed)
    cmp_st = compare_descriptor_distributions(d_small, d_test, ("small", "test"), names, seed=args.seed)
    cmp_lt = compare_descriptor_distributions(d_large, d_test, ("large", "test"), names, seed=args.seed)
    plot_descriptor_histograms(d_small, d_large, out / "descriptors_small_vs_large.png", cmp_sl)
    results["descriptor_divergence"] = {c.labels[0] + "_vs_" + c.labels[1]: {"js_mean": c.js_mean, "mmd2": c.mmd2}
                                        for c in (cmp_sl, cmp_st, cmp_lt)}
    print(f"descriptor divergence ({time.perf_counter() - t0:.0f} s): "
          + ", ".join(f"{k} JS {v['js_mean']:.4f} MMD2 {v['mmd2']:.4f}"
                      for k, v in results["descriptor_divergence"].items()), file=sys.stderr)

    def record(label, model, train, val, dft_snaps):
        r = evaluate(model, tests, args.seed)
        r.update(train=[s.name for s in train], validation=[s.name for s in val],
                 dft_core_hours=hours(dft_snaps), n_dft_snapshots=len(dft_snaps),
                 train_seconds=model.metadata["training"]["seconds"])
        results["models"][label] = r
        print(f"{label}: eps {r['eps_rho_percent']:.3f} %, 3-sigma coverage {r['coverage_3sigma']:.4f}, "
              f"DFT {r['dft_core_hours']:.2f} core-h", file=sys.stderr)
        atomic_json(out / "results.json", results)

    # (a) small only
    tr, va = split_validation(small, args.seed)
    model_a = train_model(tr, va, spec, net, train_cfg, name="small-only", progress=False)
    record("a_small_only", model_a, tr, va, small)

    # (c) transfer: (a) fine-tuned on the large cells
    tr_l, va_l = split_validation(large, args.seed)
    model_c = finetune_model(model_a, tr_l, va_l, args.freeze, ft_cfg, name="transfer", progress=False)
    record("c_transfer", model_c, tr_l, va_l, small + large)

    # (b) large only, within the DFT budget of (c) (or all)
    budget = hours(small + large) if args.large_budget == "transfer" else float("inf")
    chosen, spent = [], 0.0
    for s in large:
        if spent + hours([s]) <= budget + 1e-12:
            chosen.append(s)
            spent += hours([s])
    tr_b, va_b = split_validation(chosen, args.seed)
    model_b = train_model(tr_b, va_b, spec, net, train_cfg, name="large-only", progress=False)
    record("b_large_only", model_b, tr_b, va_b, chosen)
    if len(chosen) == len(large) and args.large_budget == "transfer":
        results["note"] = ("(b) used every large snapshot available, below the budget of (c): generate more "
                           "large snapshots for a same-budget comparison")
    atomic_json(out / "results.json", results)

    print("| model | training snapshots | eps (%) | 3-sigma coverage | DFT core-hours |")
    print("|---|---|---|---|---|")
    for label, r in results["models"].items():
        print(f"| {label} | {len(r['train'])} + {len(r['validation'])} val | {r['eps_rho_percent']:.3f} | "
              f"{r['coverage_3sigma']:.4f} | {r['dft_core_hours']:.2f} |")
    if "note" in results:
        print(f"\nnote: {results['note']}")
    return 0


def atomic_json(path: Path, data) -> None:
    from ase_mlrho.files import atomic_write

    atomic_write(path, lambda f: json.dump(data, f, indent=1, default=float))


if __name__ == "__main__":
    sys.exit(main())
