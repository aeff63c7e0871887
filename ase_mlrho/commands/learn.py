"""``mlrho learn``: uncertainty-driven data acquisition with SPARC (see :mod:`sparc_bridge.active_learning`)."""

from __future__ import annotations

import json
import sys

from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "learn", help="active learning: choose the most uncertain candidates, compute them with SPARC, refit, repeat",
        description="Each round: score the candidates not chosen yet by the model's mean epistemic sigma, compute the "
                    "most uncertain with one SPARC SCF each (the model's reference settings), refit on the training "
                    "runs plus everything chosen so far, and record the validation error. Resumable: run the same "
                    "command again. Writes WORKDIR/manifest.json (what was chosen, why, and the models). Needs SPARC.")
    p.add_argument("-m", "--model", required=True, help="starting model: shipped name or .safetensors file")
    p.add_argument("--candidates", nargs="+", required=True, metavar="FILE",
                   help="candidate structures (any ase.io format; every frame of a trajectory is a candidate)")
    p.add_argument("--train", nargs="*", default=[], metavar="SPARC_DIR", help="SPARC runs every refit trains on")
    p.add_argument("--val", nargs="+", required=True, metavar="SPARC_DIR",
                   help="SPARC runs every refit validates on (early stopping, calibration, the recorded error)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds (default 3); more than a finished run had goes on from where it stopped")
    p.add_argument("--per-round", type=int, default=2, help="SPARC runs per round (default 2)")
    p.add_argument("--refit", choices=("retrain", "finetune"), default="retrain",
                   help="retrain from scratch with the starting model's recipe (default), or fine-tune the previous "
                        "round's model (single networks)")
    p.add_argument("--freeze", type=int, default=1, help="layers frozen with --refit finetune (default 1)")
    p.add_argument("--random", type=int, default=None, metavar="SEED",
                   help="choose at random with this seed instead of by uncertainty (a study's control arm)")
    p.add_argument("--by", choices=("sigma", "density", "electron"), default="sigma",
                   help="rank candidates by mean epistemic sigma (default), by epistemic sigma weighted by how "
                        "typical each point is of the candidates (density: avoids spending DFT on outliers), or by "
                        "epistemic sigma per electron (electron: like the error eps; compares compositions)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight samples when scoring (default 0)")
    p.add_argument("--workdir", required=True, metavar="DIR", help="directory of the run (new, or the same to resume)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="time limit of each SPARC run")
    p.add_argument("--dft-cache", default=None, metavar="DIR",
                   help="directory of SPARC runs shared between learning runs: a structure computed before with the "
                        "same settings is copied, not recomputed (the arms of a selection study share their DFT)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON when done")
    p.set_defaults(func=run)


def run(args) -> int:
    from sparc_bridge.active_learning import LearningPlan, run_active_learning
    from sparc_bridge.run import SparcNotFoundError, SparcRunError

    name = "learn"
    try:
        plan = LearningPlan(candidates=tuple(args.candidates), train_dirs=tuple(args.train), val_dirs=tuple(args.val),
                            rounds=args.rounds, per_round=args.per_round, refit=args.refit, freeze=args.freeze,
                            random_seed=args.random, seed=args.seed, strategy=args.by)
        command = common.sparc_command()
    except (common.CommandError, ValueError) as exc:
        return common.fail(name, exc)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    try:
        manifest = run_active_learning(args.model, plan, args.workdir, command, args.timeout, log=log,
                                       dft_cache=args.dft_cache)
    except SparcNotFoundError as exc:
        return common.fail(name, exc)
    except (SparcRunError, RuntimeError) as exc:
        return common.run_failed(name, exc)
    except (ValueError, OSError) as exc:
        return common.fail(name, exc)
    if args.json:
        print(json.dumps(manifest, indent=1))
    else:
        for r in manifest["rounds"]:
            v = r.get("validation", {})
            print(f"round {r['round']}: {', '.join(c['key'] for c in r.get('chosen', []))} -> "
                  f"validation eps {v.get('eps_percent_mean', float('nan')):.3f} % ({r['status']})")
    return 0
