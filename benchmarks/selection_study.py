"""Uncertainty-driven data selection against random selection at equal DFT budget (SiGe, needs SPARC).

From a model trained on two Si32Ge32 cells, each arm grows the training set from one pool of candidate
structures, one SPARC SCF per round, with ``mlrho learn``: the ``uq`` arm takes the candidate with the
largest mean epistemic sigma, the ``density`` arm the one with the largest sigma weighted by typicality
(information density: sigma where many candidates share the environment, ``mlrho learn --by density``),
the ``electron`` arm the one with the largest epistemic sigma per electron (``mlrho learn --by electron``,
session 13), the ``random:S`` arms one at random (seed S). After every round the refitted
model is scored on two fixed held-out sets, never chosen, trained or validated on: the committed SiGe
test cells (x = 0.4, 0.5, 0.6 and an x = 0.5 vacancy: the study's first set), and those with cells drawn
like the pool added (x = 0.3 and 0.7 at 1200 and 2300 K, a vacancy at each: ``data/sparc/sige/x03``,
``x07``, ``vac03``, ``vac07``, session 11). The arms share their DFT (``--dft-cache``): a structure two
arms choose is computed once. A larger ``--rounds`` continues the arms from where they stopped.

    python benchmarks/selection_study.py pool      # the candidate structures (no DFT)
    python benchmarks/selection_study.py start     # the starting model (two cells, the study's recipe)
    python benchmarks/selection_study.py run [--arms uq density random:1 random:2] [--rounds 10]
    python benchmarks/selection_study.py report    # held-out error against DFT runs; table, JSON, figure

All of it resumes where it stopped. Work goes to ``mlrho-runs/selection`` (``--workdir``); results to
``benchmarks/results/selection_study/``.

The pool (18 candidates, 64 sites each, Gaussian rattle 0.0045 sqrt(T) A as in the shared data, lattice
constant by Vegard's law between Si 5.431 and Ge 5.658 A): x = 0.3 ... 0.7 at 600, 1500 and 2400 K, and
one vacancy at x = 0.3, 0.5, 0.7 (1200 K). The starting cells are x = 0.5 only (450 K and 2400 K), so the
pool holds compositions and defects the starting model has not seen, as a user's candidates would.
The study's recipe is ``sige-pbe``'s descriptor and network with fewer points and epochs (the refits are
the study's CPU cost): 30,000 points per cell, 16 epochs, an ensemble of 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from al_kpoints import rel  # benchmarks/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parent.parent
SIGE = ROOT / "data" / "sparc" / "sige"
RESULTS = ROOT / "benchmarks" / "results" / "selection_study"
START_CELLS = ("train05/sige_x=0.5_n=2_T=450_seed=71", "train05/sige_x=0.5_n=2_T=2400_seed=78")
VAL_CELL = "train05/sige_x=0.5_n=2_T=1350_seed=74"
HELD_OUT_GROUPS = ("x04", "x05", "x06", "vac")
#: the second held-out set (session 11): cells drawn like the pool, its composition extremes included
WIDE_GROUPS = ("x03", "x04", "x05", "x06", "x07", "vac", "vac03", "vac07")
RECIPE = {"points_per_snapshot": 30000, "val_points_per_snapshot": 30000, "epochs": 16, "batch_size": 512,
          "learning_rate": 0.002, "patience": 8, "n_samples": 4, "seed": 0, "ensemble": 4}


def vegard_a_ang(x: float) -> float:
    """Lattice constant of Si(1-x)Ge(x) by Vegard's law (Si 5.431, Ge 5.658 A; the shared data's 5.522 at x = 0.4)."""
    return round(5.431 + (5.658 - 5.431) * x, 3)


def pool_entries() -> list[dict]:
    """The candidates: composition, temperature, vacancies and seed of each."""
    entries = []
    seed = 900
    for x in (0.3, 0.4, 0.5, 0.6, 0.7):
        for t in (600, 1500, 2400):
            entries.append({"x": x, "T_K": t, "vacancies": 0, "seed": seed})
            seed += 1
    for x in (0.3, 0.5, 0.7):
        entries.append({"x": x, "T_K": 1200, "vacancies": 1, "seed": seed})
        seed += 1
    return entries


def make_pool(workdir: Path) -> list[Path]:
    """One extended-XYZ file per candidate (its name is its key in the learning manifests)."""
    from ase.io import write

    from sparc_bridge.sampling import BulkSpec, MDSettings, sample_trajectory

    out = workdir / "pool"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for e in pool_entries():
        spec = BulkSpec("Si", "diamond", vegard_a_ang(e["x"]), 2, "Ge", e["x"], e["vacancies"])
        name = f"{spec.prefix}_T={e['T_K']}_seed={e['seed']}.xyz"
        path = out / name
        if not path.is_file():
            atoms = spec.decorate(spec.build(), e["seed"])
            frame = sample_trajectory(atoms, e["T_K"], e["seed"], MDSettings(calculator="rattle"))[0]
            write(path, frame, format="extxyz")
        files.append(path)
    return files


def start_model(workdir: Path) -> Path:
    from ase_mlrho.cli import main

    out = workdir / "start.safetensors"
    if out.is_file():
        return out
    recipe = json.loads((ROOT / "ase_mlrho" / "models" / "sige-pbe.train.json").read_text())
    recipe["training"] = RECIPE
    cfg = workdir / "study.train.json"
    cfg.write_text(json.dumps(recipe, indent=1))
    rc = main(["train", *[str(SIGE / c) for c in START_CELLS], "--val", str(SIGE / VAL_CELL), "--config", str(cfg),
               "--ensemble", str(RECIPE["ensemble"]), "--name", "sige-study-start", "-o", str(out)])
    if rc != 0:
        raise SystemExit(f"training the starting model failed ({rc})")
    return out


def run_arm(workdir: Path, arm: str, rounds: int, per_round: int) -> dict:
    from ase_mlrho.commands.common import sparc_command
    from sparc_bridge.active_learning import LearningPlan, run_active_learning

    strategies = {"uq": "sigma", "density": "density", "electron": "electron"}
    if arm not in strategies and not arm.startswith("random:"):
        raise SystemExit(f"unknown arm {arm!r}: uq, density, electron or random:SEED")
    random_seed = int(arm.split(":")[1]) if arm.startswith("random:") else None
    plan = LearningPlan(candidates=tuple(str(p) for p in make_pool(workdir)),
                        train_dirs=tuple(str(SIGE / c) for c in START_CELLS), val_dirs=(str(SIGE / VAL_CELL),),
                        rounds=rounds, per_round=per_round, random_seed=random_seed, seed=0,
                        strategy=strategies.get(arm, "sigma"))
    return run_active_learning(start_model(workdir), plan, workdir / arm.replace(":", "_"), sparc_command(),
                               dft_cache=workdir / "dft_cache")


def held_out_cells(groups=HELD_OUT_GROUPS) -> list[Path]:
    return sorted(p.parent for g in groups for p in (SIGE / g).glob("*/SPARC_RUN_OK.json"))  # not a run under way


#: the horizons the bar is judged at: the first study's 5 runs, and every arm's full length where longer
HORIZONS = (5,)


def _bars(arms: dict, key: str) -> dict:
    """The bar on one held-out set (``key``: the curve entry that holds its mean eps), at each horizon h
    (runs) all random arms reached: their mean error after h runs, and after how many runs (at most h) each
    uncertainty arm that ran h rounds first reaches it. Keyed by str(h)."""
    randoms = [c for a, c in arms.items() if a.startswith("random")]
    chosen_by_uq = [a for a in arms if not a.startswith("random")]
    if not (chosen_by_uq and randoms):
        return {}
    full = min(c[-1]["dft_runs"] for c in randoms)
    bars = {}
    for h in sorted({*(h for h in HORIZONS if h <= full), full}):
        at = lambda curve: next(p for p in curve if p["dft_runs"] == h)  # noqa: E731
        target = float(np.mean([at(c)[key] for c in randoms]))
        bar = {"random_final_runs": h, "random_final_eps_percent_mean": target}
        for a in chosen_by_uq:
            if arms[a][-1]["dft_runs"] < h:
                continue
            reach = next((p["dft_runs"] for p in arms[a] if p["dft_runs"] <= h and p[key] <= target), None)
            bar[a] = {"runs_to_reach_it": reach, "runs_done": h, "ratio": None if reach is None else reach / h}
        bars[str(h)] = bar
    return bars


def report(workdir: Path) -> dict:
    """Held-out eps (mean over the cells) of every arm's model after every round, and the bar's figure."""
    from ase_mlrho.evaluation import evaluate_snapshots
    from ase_mlrho.files import atomic_write
    from ase_mlrho.model_files import load_model
    from sparc_bridge.active_learning import read_learning_manifest
    from sparc_bridge.snapshots import load_snapshot

    middle_cells, wide_cells = held_out_cells(), held_out_cells(WIDE_GROUPS)
    middle = [c.name for c in middle_cells]
    snaps = [load_snapshot(d) for d in wide_cells]
    # per model file and held-out cell, (eps %, 3-sigma coverage); kept in the workdir between reports, so a
    # report after more rounds or more held-out cells evaluates only what is new (a model file is written once)
    cache_path = workdir / "held_out_scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}

    def score(path: Path) -> dict:
        st = path.stat()
        key = f"{path.relative_to(workdir)}:{st.st_size}:{st.st_mtime_ns}"
        have = cache.setdefault(key, {})
        todo = [s for s in snaps if s.name not in have]
        if todo:
            per, _, _ = evaluate_snapshots(load_model(path), todo)
            have.update({m.name: [m.eps_rho_percent, m.coverage_3sigma] for m in per})
            atomic_write(cache_path, lambda f: json.dump(cache, f))
        mid = [have[c] for c in middle]
        wide = [have[c.name] for c in wide_cells]
        return {"eps_percent_mean": float(np.mean([e for e, _ in mid])),
                "coverage_3sigma_min": float(min(c for _, c in mid)),
                "eps_percent_mean_wide": float(np.mean([e for e, _ in wide])),
                "coverage_3sigma_min_wide": float(min(c for _, c in wide)),
                "cells": {c.name: have[c.name][0] for c in wide_cells}}

    start = score(workdir / "start.safetensors")
    arms = {}
    for d in sorted(p for p in workdir.iterdir() if (p / "manifest.json").is_file()):
        m = read_learning_manifest(d)
        curve = [{"dft_runs": 0, **start}]
        for r in m["rounds"]:
            if r.get("status") != "fitted":
                break
            curve.append({"dft_runs": r["dft_runs_so_far"], "chosen": [c["key"] for c in r["chosen"]],
                          **score(d / r["model_out"])})
        arms[d.name] = curve
    if not arms:
        raise SystemExit(f"no arm has run in {workdir} yet (python benchmarks/selection_study.py run)")
    out = {"held_out": [rel(c) for c in middle_cells], "held_out_wide": [rel(c) for c in wide_cells],
           "start_cells": list(START_CELLS), "val_cell": VAL_CELL, "recipe": RECIPE, "pool": pool_entries(),
           "arms": arms}
    for name, key, what in (("bar", "eps_percent_mean", f"the {len(middle)} committed x = 0.4-0.6 cells"),
                            ("bar_wide", "eps_percent_mean_wide", f"all {len(wide_cells)} cells, x = 0.3-0.7")):
        out[name] = _bars(arms, key)
        print(f"held-out eps (%), mean over {what}")
        print(f"{'arm':10s} " + " ".join(f"{'n=' + str(p['dft_runs']):>8s}" for p in max(arms.values(), key=len)))
        for a, c in arms.items():
            print(f"{a:10s} " + " ".join(f"{p[key]:8.3f}" for p in c))
        for b in out[name].values():
            print(f"random arms after {b['random_final_runs']} runs: {b['random_final_eps_percent_mean']:.3f} %")
            for a in (a for a in arms if a in b):
                print(f"  {a} reaches it after {b[a]['runs_to_reach_it']} of {b['random_final_runs']} runs "
                      f"(ratio {b[a]['ratio']}; the bar: <= 0.6)")
    plot(out, RESULTS / "selection_study.png")
    return out


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("eps_percent_mean", f"{len(out['held_out'])} committed cells, x = 0.4-0.6"),
              ("eps_percent_mean_wide", f"{len(out['held_out_wide'])} cells drawn like the pool, x = 0.3-0.7"))
    for ax, (key, what), bars in zip(axes, panels, (out.get("bar", {}), out.get("bar_wide", {}))):
        for bar in bars.values():  # the bar: the random arms' error after h runs, reached within 0.6 h runs
            h, target = bar["random_final_runs"], bar["random_final_eps_percent_mean"]
            ax.hlines(target, 0.6 * h, h, color="grey", ls=":", lw=1)
            ax.plot(0.6 * h, target, marker="|", ms=14, color="grey")
            ax.annotate(f"bar ({h} runs)", (0.6 * h, target), textcoords="offset points", xytext=(-4, -12),
                        ha="right", fontsize=7, color="grey")
        for arm, curve in out["arms"].items():
            ax.plot([p["dft_runs"] for p in curve], [p[key] for p in curve], ".--" if arm.startswith("random") else "o-",
                    label=arm, lw=1 if arm.startswith("random") else 2)
        ax.set_xlabel("SPARC runs added to the two starting cells")
        ax.set_ylabel("held-out eps, mean over the cells (%)")
        ax.set_title(what, fontsize=10)
        ax.legend()
    fig.suptitle("choosing by uncertainty vs at random")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("pool", "start", "run", "report"))
    ap.add_argument("--workdir", default="mlrho-runs/selection")
    ap.add_argument("--arms", nargs="+", default=["uq", "density", "random:1", "random:2"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=1)
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.what == "pool":
        for p in make_pool(workdir):
            print(rel(p))
    elif args.what == "start":
        print(rel(start_model(workdir)))
    elif args.what == "run":
        for arm in args.arms:
            m = run_arm(workdir, arm, args.rounds, args.per_round)
            print(f"{arm}: {sum(len(r.get('runs', [])) for r in m['rounds'])} runs", file=sys.stderr)
    else:
        from ase_mlrho.files import atomic_write

        out = report(workdir)
        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write(RESULTS / "selection_study.json", lambda f: json.dump(out, f, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
