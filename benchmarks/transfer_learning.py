"""Transfer learning from small k-point cells to 108-atom cells: is it better, and cheaper in DFT?

All models are judged on held-out 108-atom cells (default: the shared Al108 630 K cell):

(a) small only  -- a model trained on small cells only (default: the shipped ``al-pbe``, 32-atom
                   k-point cells);
(b) large only  -- trained from scratch, with (a)'s recipe, on the first n 108-atom cells;
(c) transfer    -- (a) fine-tuned on the same n cells with its first N layers frozen.

A learning curve over n = 1 .. (number of large cells): eps and 3-sigma coverage on the test cells of
(b) and (c) against n and against the DFT core-hours spent (``meta.json`` ``wall_s`` x MPI ranks;
(c) also pays for (a)'s training cells). The large cells are taken in the order of their seeds (the
order they were computed). With n >= 2 cells one is held back for early stopping and calibration
(one per five, by snapshot); with one cell its own other grid points validate.

The number of frozen layers N is *measured*, not assumed: with all large cells, (a) is fine-tuned
for every N in ``--freeze`` and the N with the lowest eps on the held-back validation cell (never
the test cell) is used for the whole curve; the test eps of every N is reported too.

Also the descriptor distributions of small vs large cells (mean Jensen-Shannon divergence per
feature, MMD^2, a histogram plot), which say whether large cells hold local environments small
ones lack. Run::

    python benchmarks/transfer_learning.py --large data/sparc/al108 \\
        --test ../shared/data/sparc/al_n=3_T=630_seed=10 --out benchmarks/results/transfer_learning_kpoints

Two follow-ups on a finished run in ``--out`` (they add to its results.json):
``--lr-check LR...`` fine-tunes (a) on the split that chose N, with N frozen, at other learning rates
(the validation cell says whether the fine-tuning default, 1e-3, held (c) back); ``--half-budget SEED...``
fits (b) and (c) on all the large cells within half of (b)'s all-cells core-hours, in the curve's
order, validated on their own held-back grid points (no cell spent on validation, as with one cell):
the best (c) that the cost bar allows.

``--quick`` trains small networks on few points (the numbers then show only that the pipeline
runs). Results: ``OUT/results.json``, ``OUT/learning_curve.png``,
``OUT/descriptors_small_vs_large.png``, the models ``OUT/c_n=*.safetensors`` (with the SPARC
settings of the large cells recorded) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from sparc_bridge.snapshots import find_run_directories

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "sparc"


def core_hours_of_meta(meta: dict, default_cores: int, where: str) -> float:
    """DFT cost of one snapshot: wall time x MPI ranks, from its meta.json record."""
    if "wall_s" not in meta:
        raise ValueError(f"{where}: no wall_s in meta.json; cannot count its DFT cost")
    m = re.search(r"-np\s+(\d+)", str(meta.get("sparc_command", "")))
    cores = int(m.group(1)) if m else default_cores
    return float(meta["wall_s"]) * cores / 3600.0


def core_hours(directory: Path, default_cores: int) -> float:
    meta = json.loads((directory / "meta.json").read_text()) if (directory / "meta.json").is_file() else {}
    return core_hours_of_meta(meta, default_cores, str(directory))


def model_core_hours(model, default_cores: int) -> float:
    """DFT cost of a model's training and validation snapshots, from the meta.json records its file keeps."""
    training = model.metadata.get("training", {})
    records = training.get("train_snapshots", []) + training.get("validation_snapshots", [])
    return sum(core_hours_of_meta(r.get("meta", {}), default_cores, f"{model.name}: {r.get('name')}")
               for r in records)


def converged_only(dirs):
    from sparc_bridge.datagen import scf_converged

    kept = [d for d in dirs if scf_converged(d)]
    for d in sorted(set(dirs) - set(kept)):
        print(f"leaving out {d}: SCF did not converge", file=sys.stderr)
    return kept


def seed_of(directory: Path) -> int:
    m = re.search(r"seed=(\d+)", directory.name)
    return int(m.group(1)) if m else 0


def split_validation(snaps, seed: int):
    """One validation snapshot per 5, by snapshot (never by grid point); with a single snapshot it
    is used for both, which the results record."""
    from ase_mlrho.training import split_by_snapshot

    return (snaps, snaps) if len(snaps) == 1 else split_by_snapshot(snaps, seed)


def evaluate(model, tests, seed: int) -> dict:
    from ase_mlrho.evaluation import evaluate_snapshots

    per, overall, _ = evaluate_snapshots(model, tests, seed=seed)
    return {"eps_rho_percent": overall.eps_rho_percent, "coverage_3sigma": overall.coverage_3sigma,
            "coverage_1sigma": overall.coverage_1sigma, "miscalibration_area": overall.miscalibration_area,
            "sigma_epistemic_mean_e_per_bohr3": overall.sigma_epistemic_mean_e_per_bohr3, "per_snapshot": [m.to_dict() for m in per]}


def recipe_configs(path: Path, quick: bool, seed: int):
    """Descriptor, network and training settings of (a)'s recipe (a ``*.train.json``), for (b)."""
    from ase_mlrho.descriptors import DescriptorSpec
    from ase_mlrho.training import recipe_configs

    d, net, train = recipe_configs(json.loads(path.read_text()))
    spec, train = DescriptorSpec(**d), replace(train, seed=seed)
    if quick:
        train = replace(train, points_per_snapshot=3000, val_points_per_snapshot=2000, epochs=2, ensemble=2)
    return spec, net, train


@dataclass(frozen=True)
class Arms:
    """How (b) and (c) models are made: (b) from scratch with (a)'s recipe, (c) by fine-tuning (a)."""
    base: object
    base_path: Path
    spec: object
    net: object
    train_cfg: object
    ft_cfg: object

    def fit(self, arm: str, train, val, name: str, n_frozen: int = 0, seed: int | None = None):
        from ase_mlrho.training import train_model
        from ase_mlrho.transfer import finetune_model

        if arm == "b":
            cfg = self.train_cfg if seed is None else replace(self.train_cfg, seed=seed)
            return train_model(train, val, self.spec, self.net, cfg, name=name, progress=False)
        cfg = self.ft_cfg if seed is None else replace(self.ft_cfg, seed=seed)
        return finetune_model(self.base, train, val, n_frozen, cfg, name=name, base_path=self.base_path,
                              progress=False)


def plot_learning_curve(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = results["curve"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm, style in (("b", "o-"), ("c", "s-")):
        pts = [(r["n_large"], r["dft_core_hours"], r["eps_rho_percent"]) for r in curve if r["arm"] == arm]
        label = {"b": "(b) 108-atom cells only", "c": f"(c) transfer, {results['freeze']} layers frozen"}[arm]
        axes[0].plot([p[0] for p in pts], [p[2] for p in pts], style, label=label)
        axes[1].plot([p[1] for p in pts], [p[2] for p in pts], style, label=label)
    a = results["a"]
    for ax in axes:
        ax.axhline(a["eps_rho_percent"], color="grey", ls="--", label="(a) small cells only")
        ax.axhline(0.5 * a["eps_rho_percent"], color="grey", ls=":", label="50 % below (a)")
        ax.set_ylabel("eps on the held-out 108-atom cell (%)")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("108-atom DFT cells")
    axes[1].set_xlabel("DFT core-hours (small + large)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="al-pbe", help="model (a): shipped name or .safetensors file")
    ap.add_argument("--recipe", default=str(ROOT / "ase_mlrho" / "models" / "al-pbe.train.json"),
                    help="training recipe of (a), used for (b)")
    ap.add_argument("--large", nargs="+", default=[str(ROOT / "data" / "sparc" / "al108")])
    ap.add_argument("--test", nargs="+", default=[str(SHARED / "al_n=3_T=630_seed=10")],
                    help="held-out large cells (never trained, validated or chosen on)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "transfer_learning_kpoints"))
    ap.add_argument("--freeze", type=int, nargs="+", default=[0, 1, 2, 3], help="numbers of frozen layers to try")
    ap.add_argument("--cores", type=int, default=2, help="MPI ranks when meta.json does not say")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small networks, few points: a smoke run")
    ap.add_argument("--points", type=int, help="grid points sampled per cell for training and validation in (b) "
                    "and (c) (default: the recipe's and the fine-tuning defaults', 60 k and 30 k)")
    ap.add_argument("--curve", type=int, nargs="+", metavar="N", help="numbers of large cells on the curve "
                    "(default 1 .. all; the last must be all of them)")
    ap.add_argument("--noise-seeds", type=int, nargs="+", metavar="SEED",
                    help="after a finished run in --out: retrain the models the bars compare ((b) with all large "
                         "cells, (c) with 1 and 2) with these training seeds (same splits), to size the seed noise")
    ap.add_argument("--lr-check", type=float, nargs="+", metavar="LR",
                    help="after a finished run in --out: fine-tune on the split that chose N at these learning "
                         "rates (validation and test eps of each)")
    ap.add_argument("--half-budget", type=int, nargs="+", metavar="SEED",
                    help="after a finished run in --out: (b) and (c) on the cells within half of (b)'s all-cells "
                         "hours, validated on their own points, with these training seeds")
    args = ap.parse_args(argv)

    from ase_mlrho.model_files import load_model, resolve_model_path, save_model
    from ase_mlrho.transfer import (FINETUNE_DEFAULTS, compare_descriptor_distributions, descriptor_sample,
                                    plot_descriptor_histograms)
    from sparc_bridge.reference import METADATA_KEY, common_reference_settings
    from sparc_bridge.snapshots import load_snapshot

    test_dirs = converged_only(find_run_directories(args.test))
    test_set = {p.resolve() for p in test_dirs}
    large_dirs = sorted((p for p in converged_only(find_run_directories(args.large)) if p.resolve() not in test_set),
                        key=seed_of)
    if not test_dirs or not large_dirs:
        print(f"need large ({len(large_dirs)}) and held-out test ({len(test_dirs)}) snapshots; the large ones must "
              "not be the test cells. Make more with `mlrho datagen --element Al --supercell 3 ...`.",
              file=sys.stderr)
        return 2
    curve_ns = sorted(set(args.curve or range(1, len(large_dirs) + 1)))
    if curve_ns[-1] != len(large_dirs) or curve_ns[0] < 1:
        print(f"--curve must lie in 1 .. {len(large_dirs)} and end at {len(large_dirs)} (all large cells)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_path = resolve_model_path(args.base)
    base = load_model(base_path)
    spec, net, train_cfg = recipe_configs(Path(args.recipe), args.quick, args.seed)
    ft_cfg = replace(FINETUNE_DEFAULTS, seed=args.seed)
    if args.quick:
        ft_cfg = replace(ft_cfg, points_per_snapshot=3000, val_points_per_snapshot=2000, epochs=2)
    if args.points:
        train_cfg = replace(train_cfg, points_per_snapshot=args.points, val_points_per_snapshot=args.points // 2)
        ft_cfg = replace(ft_cfg, points_per_snapshot=args.points, val_points_per_snapshot=args.points // 2)
    reference = common_reference_settings(large_dirs).to_dict()
    arms = Arms(base, base_path, spec, net, train_cfg, ft_cfg)

    tests = [load_snapshot(p) for p in test_dirs]
    if args.noise_seeds:
        return seed_noise(args, out, arms, large_dirs, tests)
    if args.lr_check:
        return lr_check(args, out, arms, large_dirs, tests)
    if args.half_budget:
        return half_budget(args, out, arms, large_dirs, tests)
    hours_a = model_core_hours(base, args.cores)
    cost = {p.name: core_hours(p, args.cores) for p in large_dirs}
    large = [load_snapshot(p) for p in large_dirs]
    results = {"base": base.name, "base_file_sha256": base.metadata.get("weights_sha256"),
               "spec": spec.to_dict(), "network": net.to_dict(), "training_config": asdict(train_cfg),
               "finetune_config": asdict(ft_cfg), "quick": args.quick, "test": [s.name for s in tests],
               "large_order": [s.name for s in large], "large_core_hours": cost, "small_core_hours": hours_a}

    def save(name, model):
        model.metadata[METADATA_KEY] = reference
        save_model(model, out / f"{name}.safetensors")

    # descriptor distributions: (a)'s training cells against the large cells and the test cells
    t0 = time.perf_counter()
    small_dirs = [ROOT / r["path"] for r in base.metadata["training"]["train_snapshots"]
                  if r.get("path") and (ROOT / r["path"]).is_dir()]
    if small_dirs:
        small = [load_snapshot(p) for p in small_dirs]
        d_small = descriptor_sample(small, spec, 4000, args.seed)
        d_large = descriptor_sample(large, spec, 4000, args.seed)
        d_test = descriptor_sample(tests, spec, 4000, args.seed)
        names = spec.feature_names()
        cmps = [compare_descriptor_distributions(a, b, labels, names, seed=args.seed)
                for a, b, labels in ((d_small, d_large, ("small", "large")), (d_small, d_test, ("small", "test")),
                                     (d_large, d_test, ("large", "test")))]
        plot_descriptor_histograms(d_small, d_large, out / "descriptors_small_vs_large.png", cmps[0])
        results["descriptor_divergence"] = {c.labels[0] + "_vs_" + c.labels[1]: {"js_mean": c.js_mean, "mmd2": c.mmd2}
                                            for c in cmps}
        print(f"descriptor divergence ({time.perf_counter() - t0:.0f} s): "
              + ", ".join(f"{k} JS {v['js_mean']:.4f} MMD2 {v['mmd2']:.5f}"
                          for k, v in results["descriptor_divergence"].items()), file=sys.stderr)

    # (a)
    results["a"] = {**evaluate(base, tests, args.seed), "dft_core_hours": hours_a, "n_large": 0}
    print(f"(a) {base.name}: eps {results['a']['eps_rho_percent']:.3f} %, "
          f"coverage {results['a']['coverage_3sigma']:.4f}, DFT {hours_a:.2f} core-h", file=sys.stderr)
    atomic_json(out / "results.json", results)

    # N: measured on the held-back validation cell of the all-cells split
    tr_all, va_all = split_validation(large, args.seed)
    results["freeze_choice"] = {"train": [s.name for s in tr_all], "validation": [s.name for s in va_all],
                                "by_freeze": {}}
    tuned_all = {}
    for n_frozen in args.freeze:
        model = arms.fit("c", tr_all, va_all, f"transfer-freeze{n_frozen}", n_frozen)
        val_r = evaluate(model, va_all, args.seed)
        test_r = evaluate(model, tests, args.seed)
        tuned_all[n_frozen] = model
        results["freeze_choice"]["by_freeze"][str(n_frozen)] = {
            "validation_eps_rho_percent": val_r["eps_rho_percent"],
            "validation_coverage_3sigma": val_r["coverage_3sigma"],
            "test_eps_rho_percent": test_r["eps_rho_percent"], "test_coverage_3sigma": test_r["coverage_3sigma"],
            "seconds": model.metadata["training"]["seconds"]}
        print(f"N = {n_frozen}: validation eps {val_r['eps_rho_percent']:.3f} %, test eps "
              f"{test_r['eps_rho_percent']:.3f} % ({model.metadata['training']['seconds']:.0f} s)", file=sys.stderr)
        atomic_json(out / "results.json", results)
    by = results["freeze_choice"]["by_freeze"]
    n_best = min(args.freeze, key=lambda n: by[str(n)]["validation_eps_rho_percent"])
    results["freeze"] = n_best
    print(f"chosen: {n_best} frozen layers", file=sys.stderr)

    # the learning curve
    results["curve"] = []
    for n in curve_ns:
        cells = large[:n]
        tr, va = split_validation(cells, args.seed)
        hours_large = sum(cost[s.name] for s in cells)
        for arm in ("b", "c"):
            if arm == "c" and n == len(large):
                model = tuned_all[n_best]  # the same split and settings as the choice of N
            else:
                model = arms.fit(arm, tr, va, f"{'transfer' if arm == 'c' else 'large-only'}-n{n}", n_best)
            r = {"arm": arm, "n_large": n, **evaluate(model, tests, args.seed),
                 "train": [s.name for s in tr], "validation": [s.name for s in va],
                 "large_core_hours": hours_large,
                 "dft_core_hours": hours_large + (hours_a if arm == "c" else 0.0),
                 "train_seconds": model.metadata["training"]["seconds"]}
            results["curve"].append(r)
            save(f"{arm}_n={n}", model)
            print(f"({arm}) n = {n}: eps {r['eps_rho_percent']:.3f} %, coverage {r['coverage_3sigma']:.4f}, "
                  f"DFT {r['dft_core_hours']:.2f} core-h ({r['train_seconds']:.0f} s)", file=sys.stderr)
            atomic_json(out / "results.json", results)

    # the bars
    b_all = next(r for r in results["curve"] if r["arm"] == "b" and r["n_large"] == len(large))
    c_all = next(r for r in results["curve"] if r["arm"] == "c" and r["n_large"] == len(large))
    half = [r for r in results["curve"] if r["arm"] == "c" and r["large_core_hours"] <= 0.5 * b_all["large_core_hours"]]
    results["bars"] = {
        "c_vs_a_reduction": 1.0 - c_all["eps_rho_percent"] / results["a"]["eps_rho_percent"],
        "c_at_half_b_hours": [{"n_large": r["n_large"], "eps_rho_percent": r["eps_rho_percent"]} for r in half],
        "b_all_eps_rho_percent": b_all["eps_rho_percent"],
        "c_matches_b_at_half_hours": any(r["eps_rho_percent"] <= b_all["eps_rho_percent"] for r in half),
        "c_all_coverage_3sigma": c_all["coverage_3sigma"],
    }
    atomic_json(out / "results.json", results)
    plot_learning_curve(results, out / "learning_curve.png")

    print("| model | 108-atom cells | eps (%) | 3-sigma coverage | miscalibration | DFT core-hours |")
    print("|---|---|---|---|---|---|")
    a = results["a"]
    print(f"| (a) {base.name} | 0 | {a['eps_rho_percent']:.3f} | {a['coverage_3sigma']:.4f} | "
          f"{a['miscalibration_area']:.3f} | {hours_a:.2f} |")
    for r in results["curve"]:
        print(f"| ({r['arm']}) | {len(r['train'])} + {len(r['validation'])} val | {r['eps_rho_percent']:.3f} | "
              f"{r['coverage_3sigma']:.4f} | {r['miscalibration_area']:.3f} | {r['dft_core_hours']:.2f} |")
    print("\nfrozen layers (validation eps): " + ", ".join(
        f"N={k}: {v['validation_eps_rho_percent']:.3f} % (test {v['test_eps_rho_percent']:.3f} %)"
        for k, v in by.items()) + f"; chosen N = {n_best}")
    print(f"bars: (c) vs (a) {100 * results['bars']['c_vs_a_reduction']:.1f} % lower; (c) at <= half of (b)'s "
          f"108-atom hours matches (b): {results['bars']['c_matches_b_at_half_hours']}")
    return 0


def seed_noise(args, out: Path, arms: Arms, large_dirs, tests) -> int:
    """The models the bars compare, retrained with other training seeds on the same splits: how much of a
    difference between two curve points is seed noise."""
    from sparc_bridge.snapshots import load_snapshot

    results = json.loads((out / "results.json").read_text())
    large = [load_snapshot(p) for p in large_dirs]
    n_all = len(large)
    points = [("b", n_all), ("c", 1), ("c", 2)]
    noise = results.setdefault("seed_noise", {})
    for arm, n in points:
        key = f"{arm}_n={n}"
        first = next(r for r in results["curve"] if r["arm"] == arm and r["n_large"] == n)
        entry = noise.setdefault(key, {"seeds": [args.seed], "eps_rho_percent": [first["eps_rho_percent"]],
                                       "coverage_3sigma": [first["coverage_3sigma"]]})
        tr, va = split_validation(large[:n], args.seed)
        for seed in args.noise_seeds:
            if seed in entry["seeds"]:
                continue
            model = arms.fit(arm, tr, va, key, results["freeze"], seed=seed)
            r = evaluate(model, tests, args.seed)
            entry["seeds"].append(seed)
            entry["eps_rho_percent"].append(r["eps_rho_percent"])
            entry["coverage_3sigma"].append(r["coverage_3sigma"])
            print(f"({arm}) n = {n}, seed {seed}: eps {r['eps_rho_percent']:.3f} %, coverage "
                  f"{r['coverage_3sigma']:.4f}", file=sys.stderr)
            atomic_json(out / "results.json", results)
    for key, e in noise.items():
        e["mean"], e["std"] = float(np.mean(e["eps_rho_percent"])), float(np.std(e["eps_rho_percent"], ddof=1))
        print(f"{key}: eps {e['mean']:.3f} +- {e['std']:.3f} % over seeds {e['seeds']} "
              f"({', '.join(f'{v:.3f}' for v in e['eps_rho_percent'])}); coverage min {min(e['coverage_3sigma']):.4f}")
    atomic_json(out / "results.json", results)
    return 0


def _snapshots_by_name(large_dirs, names) -> list:
    from sparc_bridge.snapshots import load_snapshot

    by_name = {p.name: p for p in large_dirs}
    return [load_snapshot(by_name[n]) for n in names]


def lr_check(args, out: Path, arms: Arms, large_dirs, tests) -> int:
    """(a) fine-tuned with N frozen on the split that chose N, at other learning rates: validation and test eps."""
    results = json.loads((out / "results.json").read_text())
    choice = results["freeze_choice"]
    tr, va = _snapshots_by_name(large_dirs, choice["train"]), _snapshots_by_name(large_dirs, choice["validation"])
    entry = results.setdefault("lr_check", {"freeze": results["freeze"], "train": choice["train"],
                                            "validation": choice["validation"], "by_learning_rate": {}})
    by = entry["by_learning_rate"]
    by.setdefault(str(arms.ft_cfg.learning_rate), {
        "validation_eps_rho_percent": choice["by_freeze"][str(results["freeze"])]["validation_eps_rho_percent"],
        "test_eps_rho_percent": choice["by_freeze"][str(results["freeze"])]["test_eps_rho_percent"]})
    for lr in args.lr_check:
        if str(lr) in by:
            continue
        tuned = replace(arms, ft_cfg=replace(arms.ft_cfg, learning_rate=lr))
        model = tuned.fit("c", tr, va, f"transfer-lr{lr}", results["freeze"])
        by[str(lr)] = {"validation_eps_rho_percent": evaluate(model, va, args.seed)["eps_rho_percent"],
                       "test_eps_rho_percent": evaluate(model, tests, args.seed)["eps_rho_percent"]}
        atomic_json(out / "results.json", results)
    for lr, r in sorted(by.items(), key=lambda kv: float(kv[0])):
        print(f"fine-tuning learning rate {float(lr):g}: validation eps {r['validation_eps_rho_percent']:.3f} %, "
              f"test eps {r['test_eps_rho_percent']:.3f} %")
    atomic_json(out / "results.json", results)
    return 0


def half_budget(args, out: Path, arms: Arms, large_dirs, tests) -> int:
    """(b) and (c) on every large cell within half of (b)'s all-cells hours (the curve's order), validated on
    held-back grid points of the same cells, for each seed: the best (c) the cost bar allows, and (b) alike."""
    results = json.loads((out / "results.json").read_text())
    cost = results["large_core_hours"]
    limit = 0.5 * sum(cost[n] for n in results["large_order"])
    names, hours = [], 0.0
    for n in results["large_order"]:
        if hours + cost[n] > limit:
            break
        names.append(n)
        hours += cost[n]
    cells = _snapshots_by_name(large_dirs, names)
    entry = results.setdefault("half_budget", {"cells": names, "large_core_hours": hours, "limit_core_hours": limit,
                                               "validation": "held-back grid points of the same cells"})
    for arm in ("c", "b"):
        e = entry.setdefault(arm, {"seeds": [], "eps_rho_percent": [], "coverage_3sigma": []})
        for seed in args.half_budget:
            if seed in e["seeds"]:
                continue
            model = arms.fit(arm, cells, cells, f"{arm}-half-budget", results["freeze"], seed=seed)
            r = evaluate(model, tests, args.seed)
            e["seeds"].append(seed)
            e["eps_rho_percent"].append(r["eps_rho_percent"])
            e["coverage_3sigma"].append(r["coverage_3sigma"])
            atomic_json(out / "results.json", results)
        e["mean"] = float(np.mean(e["eps_rho_percent"]))
        print(f"({arm}) on {' + '.join(names)} ({hours:.2f} of at most {limit:.2f} core-h), own points validating: "
              f"eps {e['mean']:.3f} % ({', '.join(f'{v:.3f}' for v in e['eps_rho_percent'])}; seeds {e['seeds']}), "
              f"coverage min {min(e['coverage_3sigma']):.4f}")
    atomic_json(out / "results.json", results)
    return 0


def atomic_json(path: Path, data) -> None:
    from ase_mlrho.files import atomic_write

    atomic_write(path, lambda f: json.dump(data, f, indent=1, default=float))


if __name__ == "__main__":
    sys.exit(main())
