"""``mlrho finetune -m BASE SPARC_DIR... -o MODEL --freeze N [--val DIR...]``: transfer learning.

Freezes the first N Bayesian layers of the base model, fine-tunes the rest on the given snapshots
(typically a few large cells), keeps the base model's scalers, baseline and calibration method
(re-fitting its factor on the validation snapshots) and records the lineage in the model file.
Snapshots whose SCF did not converge (``meta.json`` ``"converged": false`` or SPARC's warning in
``SPARC.out``) are excluded unless ``--include-unconverged``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a trained model on new snapshots (transfer learning)",
                              description="Transfer learning: freeze the first N layers of a trained model and "
                                          "fine-tune the rest on SPARC snapshots (e.g. a few large cells).")
    p.add_argument("-m", "--model", required=True, help="base model: shipped name or .safetensors file")
    p.add_argument("sparc_dirs", nargs="+", metavar="SPARC_DIR", help="fine-tuning snapshots")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--freeze", type=int, required=True, metavar="N", help="number of leading layers to freeze")
    p.add_argument("--val", nargs="+", default=None, metavar="SPARC_DIR",
                   help="validation snapshots (early stopping, calibration); default: 20%% of the inputs, by snapshot")
    p.add_argument("--name", help="model name stored in the file (default: output file stem)")
    p.add_argument("--epochs", type=int, help="passes over the fine-tuning points (default: the fine-tuning defaults)")
    p.add_argument("--points", type=int, help="grid points sampled per fine-tuning snapshot")
    p.add_argument("--val-points", type=int, help="grid points sampled per validation snapshot")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, help="seed of the point sampling and weight samples (same seed, same model)")
    p.add_argument("--include-unconverged", action="store_true",
                   help="also use snapshots whose SCF did not converge (excluded by default)")
    p.add_argument("--checkpoint", help="checkpoint file written at every validation improvement")
    p.add_argument("--settings-from", metavar="MODEL",
                   help="carry the material settings (Harris-Foulkes eigensolver, screening, warm-start SPARC "
                        "settings) of MODEL, usually the base model, into the new file; refused when MODEL is of "
                        "other species or DFT settings than the fine-tuning cells (see mlrho train --settings-from)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def _usable(dirs, include_unconverged: bool) -> tuple[list[str], list[str]]:
    from sparc_bridge.datagen import scf_converged

    keep, dropped = [], []
    for d in dirs:
        (keep if include_unconverged or scf_converged(d) else dropped).append(d)
    return keep, dropped


def run(args) -> int:
    from dataclasses import replace

    from sparc_bridge.snapshots import SnapshotError, load_snapshot
    from sparc_bridge.reference import METADATA_KEY as REFERENCE_KEY, common_reference_settings
    from ..descriptors import UnknownSpeciesError
    from ..model_files import ModelFileError, load_model, resolve_model_path, save_model
    from ..training import split_by_snapshot
    from ..transfer import FINETUNE_DEFAULTS, finetune_model
    from .train import carried_settings

    try:
        base_path = resolve_model_path(args.model)
        base = load_model(base_path)
        config = FINETUNE_DEFAULTS
        for key, val in (("epochs", args.epochs), ("points_per_snapshot", args.points),
                         ("val_points_per_snapshot", args.val_points), ("learning_rate", args.lr),
                         ("seed", args.seed)):
            if val is not None:
                config = replace(config, **{key: val})
        dirs, dropped = _usable(args.sparc_dirs, args.include_unconverged)
        val_dirs, val_dropped = _usable(args.val or [], args.include_unconverged)
        for d in dropped + val_dropped:
            print(f"mlrho finetune: skipping {d}: its SCF did not converge (use --include-unconverged)",
                  file=sys.stderr)
        # the fine-tuned model stands for the DFT settings of the fine-tuning runs (refused when they disagree)
        reference = common_reference_settings(list(dirs) + list(val_dirs))
        snaps = [load_snapshot(d) for d in dirs]
        if args.val:
            train, val = snaps, [load_snapshot(d) for d in val_dirs]
        else:
            train, val = split_by_snapshot(snaps, config.seed)
        if not train or not val:
            raise ValueError("no usable fine-tuning or validation snapshots left")
        out = Path(args.output)
        if not out.parent.is_dir():
            raise ValueError(f"cannot write {out}: directory {out.parent} does not exist")
        settings = {} if not args.settings_from else carried_settings(
            load_model(args.settings_from), reference, list(base.network.spec.species), train[0].atoms.cell[:])
        command = common.command_line(args)
        model = finetune_model(base, train, val, args.freeze, config, name=args.name or out.stem,
                               base_path=base_path, checkpoint=args.checkpoint,
                               extra_metadata={"training_command": command,
                                               REFERENCE_KEY: reference.to_dict(), **settings})
    except (ModelFileError, SnapshotError, UnknownSpeciesError, ValueError, TypeError, OSError, KeyError) as exc:
        print(f"mlrho finetune: {exc}", file=sys.stderr)
        return 2
    save_model(model, out)
    cal = model.metadata["calibration"]
    summary = {"output": str(out), "base_model": base.name, "frozen_layers": args.freeze,
               "n_layers": model.metadata["lineage"][-1]["n_layers"], "train_snapshots": [s.name for s in train],
               "validation_snapshots": [s.name for s in val], "excluded_unconverged": dropped + val_dropped,
               "seconds": model.metadata["training"]["seconds"], "sigma_scale": cal["sigma_scale"],
               "validation_coverage_3sigma": cal["validation_coverage_3sigma"]}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {out}: fine-tuned '{base.name}' ({args.freeze} of {summary['n_layers']} layers frozen) on "
              f"{len(train)} snapshots / {len(val)} validation, {summary['seconds']:.0f} s, sigma scale "
              f"{cal['sigma_scale']:.3f}, validation 3-sigma coverage {cal['validation_coverage_3sigma']:.4f}")
    return 0
