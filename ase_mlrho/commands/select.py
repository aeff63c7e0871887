"""``mlrho select -m MODEL CANDIDATE... --top K``: the candidate structures most worth a DFT run.

Every frame of every candidate file (any format ``ase.io.read`` reads; trajectories give all their frames)
is predicted with the model and ranked by its mean epistemic sigma (:mod:`ase_mlrho.selection`). The top K
are printed most uncertain first, one per line: ``FILE FRAME score``, ready for ``mlrho datagen --structure
FILE`` (one frame) or a SPARC run. ``--json`` prints the scores of all candidates; ``--manifest`` writes the
choice, the model (name and weights sha256), the seed and every score to a JSON file (atomically), so that a
selection round can be recorded and repeated. ``--by density`` weights each point's sigma by how typical its
environment is of all the candidates (information density), so that outliers of the pool do not take the DFT;
``--by electron`` ranks by the epistemic sigma per electron (%), normalised like the error eps: across
compositions or densities it follows the error where the mean sigma in e/Bohr^3 follows the electron density.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "select", help="rank candidate structures by the model's epistemic uncertainty (what to compute next)",
        description="Predict every frame of the candidate files and rank them by mean epistemic sigma "
                    "(the uncertainty more data reduces): the top K are the structures a DFT run teaches the "
                    "model most about.")
    p.add_argument("candidates", nargs="+", metavar="CANDIDATE",
                   help="structure files or trajectories (every frame is a candidate)")
    p.add_argument("-m", "--model", default="al-pbe", help="shipped model name or model file (default al-pbe)")
    p.add_argument("--top", type=int, default=1, metavar="K", help="how many to choose (default 1)")
    p.add_argument("--by", choices=("sigma", "density", "electron"), default="sigma",
                   help="rank by mean epistemic sigma (default), by epistemic sigma weighted by how typical each "
                        "point is of all the candidates (density: favours what many candidates share), or by "
                        "epistemic sigma per electron (electron: like the error eps; compares compositions)")
    p.add_argument("--samples", type=int, default=None, help="posterior weight samples (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight samples (default 0): same seed, same ranking")
    p.add_argument("--manifest", metavar="FILE", help="write the choice and every score to this JSON file")
    p.add_argument("--json", action="store_true", help="print all candidates' scores as one JSON object on stdout")
    p.set_defaults(func=run)


def _fail(message) -> int:
    print(f"mlrho select: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def read_candidates(paths) -> list:
    """``(file, frame, atoms)`` for every frame of every file; ValueError with one line for a bad file."""
    from ..structure_files import read_frames

    out = [(str(path), i, atoms) for path in paths for i, atoms in enumerate(read_frames(path, ":"))]
    if not out:
        raise ValueError("no candidate structures")
    return out


def run(args) -> int:
    try:
        if args.top < 1:
            raise ValueError(f"--top must be >= 1, got {args.top}")
        if args.manifest and not Path(args.manifest).resolve().parent.is_dir():
            raise ValueError(f"--manifest {args.manifest}: directory {Path(args.manifest).parent} does not exist")
        candidates = read_candidates(args.candidates)
    except ValueError as exc:
        return _fail(exc)
    from ..files import atomic_write
    from ..inference import InferenceSettings
    from ..model_files import ModelFileError, load_model
    from ..selection import SCORE_MEANING, check_candidates, rank, score_candidates

    try:
        model = load_model(args.model)
        check_candidates(model, candidates)  # every frame, before any is scored
    except (ModelFileError, ValueError) as exc:
        return _fail(exc)

    def progress(i, n):
        if not args.json:
            print(f"scored {i}/{n}", file=sys.stderr, end="\r" if i < n else "\n")

    ranked = rank(score_candidates(model, candidates, InferenceSettings(n_samples=args.samples, seed=args.seed),
                                   progress, by=args.by))
    chosen = ranked[:args.top]
    meaning, unit = SCORE_MEANING[args.by]
    report = {"model": model.name, "weights_sha256": model.metadata.get("weights_sha256"), "seed": args.seed,
              "score": f"{meaning} ({unit})", "by": args.by,
              "top": args.top,
              "chosen": [{"file": c.source, "frame": c.frame} for c in chosen],
              "candidates": [c.to_dict() for c in ranked]}
    if args.manifest:
        atomic_write(args.manifest, lambda f: json.dump(report, f, indent=1))
    if args.json:
        print(json.dumps(report))
        return 0
    for c in chosen:
        ood = "" if c.ood_fraction is None else f", {100 * c.ood_fraction:.2g} % of points above the validation p99.9"
        hole = "" if not c.beyond_training_fraction else \
            f", a hole of {c.largest_hole_bohr:.2f} Bohr beyond the training cells' ({100 * c.beyond_training_fraction:.2g} % of points)"
        print(f"{c.source} {c.frame} {c.score:.4e}  ({c.formula}{ood}{hole})")
    return 0
