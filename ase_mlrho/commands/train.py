"""``mlrho train SPARC_DIR... -o MODEL``: train a Bayesian density model on SPARC snapshots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a density model on SPARC run directories",
                              description="Train a Bayesian density model (KL-regularised ELBO) on grid points "
                                          "sampled from SPARC snapshots. Validation is split by snapshot.")
    p.add_argument("sparc_dirs", nargs="+", metavar="SPARC_DIR", help="training snapshots")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--val", nargs="+", default=None, metavar="SPARC_DIR",
                   help="validation snapshots (early stopping, calibration); default: 20%% of the inputs, by snapshot")
    p.add_argument("--config", help="JSON file with keys 'descriptor', 'network', 'training' "
                                    "(fields of DescriptorSpec, NetworkConfig, TrainingConfig); options override it")
    p.add_argument("--name", help="model name stored in the file (default: output file stem)")
    p.add_argument("--m", type=int, help="Set I neighbours M")
    p.add_argument("--m-s", type=int, help="Set II atoms M_s")
    p.add_argument("--k", type=int, help="Set II neighbours per atom k")
    p.add_argument("--hidden", help="hidden widths, e.g. 64,64,64")
    p.add_argument("--epochs", type=int, help="passes over the sampled training points")
    p.add_argument("--points", type=int, help="grid points sampled per training snapshot")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="seed of the point sampling, initial weights and weight samples "
                                                 "(same seed, same model bit for bit)")
    p.add_argument("--ensemble", type=int, metavar="K",
                   help="train K networks (seeds SEED..SEED+K-1) and save them as one ensemble model (default 1)")
    p.add_argument("--checkpoint", help="checkpoint file written at every validation improvement")
    p.add_argument("--settings-from", metavar="MODEL",
                   help="carry the material settings of an earlier model of the same material and DFT settings "
                        "(Harris-Foulkes eigensolver, screening, warm-start SPARC settings) into the new file, "
                        "as a retrain on more data needs them")
    p.set_defaults(func=run)


#: metadata ``--settings-from`` carries: SPARC settings measured for the material, not figures of the weights
CARRIED_SETTINGS = ("hf_settings", "hf_screening", "warmstart_settings")


def carried_settings(source, reference, species, cell_ang) -> dict:
    """The :data:`CARRIED_SETTINGS` entries of model ``source`` and a ``settings_from`` record of where they came
    from, for a new model of ``species`` trained on references computed with ``reference`` (cell ``cell_ang``
    of one of them). ValueError when the source model is of other species or other DFT settings: its screening
    and eigensolver settings were measured for another material."""
    from sparc_bridge.reference import ReferenceSettings, same_footing

    meta = source.metadata
    if sorted(meta.get("species", [])) != sorted(species):
        raise ValueError(f"--settings-from {source.name}: its species {', '.join(meta.get('species', []))} "
                         f"are not the training cells' {', '.join(species)}")
    theirs = ReferenceSettings.from_metadata(meta)
    if theirs is not None and not same_footing(theirs, reference, cell_ang):
        raise ValueError(f"--settings-from {source.name}: its references were computed with "
                         f"{theirs.describe_for(cell_ang)}, the training cells with {reference.describe_for(cell_ang)}")
    out = {k: meta[k] for k in CARRIED_SETTINGS if k in meta}
    if not out:
        raise ValueError(f"--settings-from {source.name}: the model records none of {', '.join(CARRIED_SETTINGS)}")
    out["settings_from"] = {"model": source.name, "weights_sha256": meta.get("weights_sha256"), "keys": sorted(out)}
    return out


def _configs(args):
    from ..training import recipe_configs

    cfg = json.loads(Path(args.config).read_text()) if args.config else {}
    d, n, t = dict(cfg.get("descriptor", {})), dict(cfg.get("network", {})), dict(cfg.get("training", {}))
    for key, val in (("m", args.m), ("m_s", args.m_s), ("k", args.k)):
        if val is not None:
            d[key] = val
    if args.hidden:
        n["hidden"] = [int(h) for h in args.hidden.split(",")]
    for key, val in (("epochs", args.epochs), ("points_per_snapshot", args.points), ("learning_rate", args.lr),
                     ("seed", args.seed), ("ensemble", args.ensemble)):
        if val is not None:
            t[key] = val
    return recipe_configs({"descriptor": d, "network": n, "training": t})


def run(args) -> int:
    from sparc_bridge.snapshots import SnapshotError, load_snapshot
    from ..descriptors import DescriptorSpec
    from ..model_files import load_model, save_model
    from ..training import split_by_snapshot, train_model
    from sparc_bridge.reference import METADATA_KEY, common_reference_settings

    try:
        descriptor, net_cfg, train_cfg = _configs(args)
        # the DFT settings the model will stand for; refused when the runs disagree
        reference = common_reference_settings(list(args.sparc_dirs) + list(args.val or []))
        snaps = [load_snapshot(d) for d in args.sparc_dirs]
        if args.val:
            val = [load_snapshot(d) for d in args.val]
            train = snaps
        else:
            train, val = split_by_snapshot(snaps, train_cfg.seed)
        species = sorted({s for snap in train for s in snap.atoms.get_chemical_symbols()})
        descriptor.setdefault("species", species)
        spec = DescriptorSpec(**{**descriptor, "species": tuple(descriptor["species"])})
        out = Path(args.output)
        if not out.parent.is_dir():
            raise ValueError(f"cannot write {out}: directory {out.parent} does not exist")
        settings = {} if not args.settings_from else carried_settings(
            load_model(args.settings_from), reference, list(spec.species), train[0].atoms.cell[:])
    except (SnapshotError, ValueError, TypeError, OSError, KeyError) as exc:  # ModelFileError is a ValueError
        print(f"mlrho train: {exc}", file=sys.stderr)
        return 2
    name = args.name or out.stem
    command = common.command_line(args)
    model = train_model(train, val, spec, net_cfg, train_cfg, name=name, checkpoint=args.checkpoint,
                        extra_metadata={"training_command": command, METADATA_KEY: reference.to_dict(), **settings})
    save_model(model, out)
    cal = model.metadata["calibration"]
    members = f" ({model.ensemble_size} members)" if model.ensemble_size > 1 else ""
    print(f"wrote {out}{members}: {len(train)} training / {len(val)} validation snapshots, "
          f"{model.metadata['training']['seconds']:.0f} s, sigma scale {cal['sigma_scale']:.3f}, "
          f"validation 3-sigma coverage {cal['validation_coverage_3sigma']:.4f}")
    return 0
