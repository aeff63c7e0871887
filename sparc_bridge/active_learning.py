"""Uncertainty-driven data acquisition with SPARC: choose, compute, refit, repeat (``mlrho learn``).

Each round
1. scores every candidate not chosen before with the current model (``strategy`` "sigma": its mean
   epistemic sigma; "density": the same weighted by how typical each point is of the pool; "electron":
   the epistemic sigma per electron, :func:`ase_mlrho.selection.score_candidates`) and chooses the
   ``per_round`` highest -- or,
   with ``random_seed`` set, ``per_round`` at random (the control arm of a selection study);
2. computes each chosen structure as it is (no MD) with one SPARC SCF at the model's reference settings
   (:func:`sparc_bridge.datagen.run_datagen`, resumable on its own);
3. refits: ``retrain`` trains a new model from scratch with the starting model's recipe (descriptor,
   network, training settings, ensemble size) on the training runs plus every run chosen so far;
   ``finetune`` fine-tunes the previous round's model (single networks) with ``freeze`` layers frozen;
   both validate on ``val_dirs``;
4. records the validation error per electron.

Everything goes to ``workdir/manifest.json``, rewritten atomically after every step: the plan, and per
round the scores of all candidates, the chosen ones with their rank and score (why they were chosen),
the SPARC run directories, the model file and its validation figures. Run it again with the same plan
and it resumes at the first unfinished step; a different plan in the same directory is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ase_mlrho.files import atomic_write

__all__ = ["LearningPlan", "run_active_learning", "read_learning_manifest", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT = "ase-mlrho-active-learning"


@dataclass(frozen=True)
class LearningPlan:
    """What an active-learning run does (JSON-ready; recorded in the manifest and checked on resume).

    candidates : structure files; every frame of a trajectory is a candidate.
    train_dirs, val_dirs : SPARC runs the refits train and validate on (besides the chosen ones).
    rounds, per_round : how many rounds, and how many DFT runs each.
    refit : "retrain" (from scratch, the starting model's recipe) or "finetune" (single networks).
    freeze : layers frozen when fine-tuning.
    random_seed : None to choose by uncertainty; an integer to choose at random with that seed.
    seed : seed of the weight samples (and of the density's point samples) when scoring.
    strategy : what the uncertainty choice ranks by, one of :data:`ase_mlrho.selection.STRATEGIES`.
    """

    candidates: tuple[str, ...]
    train_dirs: tuple[str, ...]
    val_dirs: tuple[str, ...]
    rounds: int = 3
    per_round: int = 2
    refit: str = "retrain"
    freeze: int = 1
    random_seed: int | None = None
    seed: int = 0
    strategy: str = "sigma"

    def __post_init__(self):
        from ase_mlrho.selection import STRATEGIES

        for name in ("candidates", "train_dirs", "val_dirs"):
            object.__setattr__(self, name, tuple(str(x) for x in getattr(self, name)))
        if not self.candidates:
            raise ValueError("give at least one candidate structure file")
        if not self.val_dirs:
            raise ValueError("give at least one validation run (the refits early-stop and calibrate on it)")
        if self.rounds < 1 or self.per_round < 1:
            raise ValueError(f"rounds and per_round must be >= 1, got {self.rounds} and {self.per_round}")
        if self.refit not in ("retrain", "finetune"):
            raise ValueError(f"refit must be retrain or finetune, got {self.refit!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("candidates", "train_dirs", "val_dirs"):  # as given (relative paths keep the manifest portable)
            d[name] = [str(x) for x in d[name]]
        return d


def read_learning_manifest(workdir) -> dict:
    return json.loads((Path(workdir) / MANIFEST).read_text())


def _save(workdir: Path, manifest: dict) -> None:
    atomic_write(workdir / MANIFEST, lambda f: json.dump(manifest, f, indent=1))


def _candidates(plan: LearningPlan) -> list[tuple[str, int, object]]:
    """``(file, frame, atoms)`` for every frame of every candidate file."""
    from ase_mlrho.structure_files import read_frames

    return [(path, i, atoms) for path in plan.candidates for i, atoms in enumerate(read_frames(path))]


def _key(source: str, frame: int) -> str:
    return f"{Path(source).name}@{frame}"


def _choose(plan: LearningPlan, model, pool, round_index: int, log) -> tuple[list[dict], list[dict]]:
    """(scores of the pool, chosen entries) for one round."""
    from ase_mlrho.inference import InferenceSettings
    from ase_mlrho.selection import SCORE_MEANING, DensitySettings, rank, score_candidates

    scores = score_candidates(model, pool, InferenceSettings(seed=plan.seed), by=plan.strategy,
                              density=DensitySettings(seed=plan.seed))
    table = [dict(s.to_dict(), key=_key(s.source, s.frame)) for s in scores]
    for row in table:
        row["source"] = Path(row["source"]).name
    if plan.random_seed is None:
        order = [_key(s.source, s.frame) for s in rank(scores)]
        why = f"largest {SCORE_MEANING[plan.strategy][0]}"
    else:
        rng = np.random.default_rng([int(plan.random_seed), round_index])
        order = [_key(pool[i][0], pool[i][1]) for i in rng.permutation(len(pool))]
        why = f"random (seed {plan.random_seed}, round {round_index})"
    by_key = {row["key"]: row for row in table}
    chosen = [{"key": k, "rank": r + 1, "score": by_key[k]["score"], "why": why}
              for r, k in enumerate(order[:plan.per_round])]
    unit = SCORE_MEANING[plan.strategy][1]
    for c in chosen:
        log(f"round {round_index}: chose {c['key']} (#{c['rank']}, score {c['score']:.3e} {unit}: {c['why']})")
    return table, chosen


def _cache_key(atoms, settings) -> str:
    """What makes two SPARC runs the same: the structure (positions, cell, species) and the settings."""
    from .sampling import positions_sha256

    h = hashlib.sha256(positions_sha256(atoms).encode())
    h.update(json.dumps(asdict(settings), sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _copy_tree_whole(src: Path, dst: Path) -> None:
    """Copy the directory ``src`` to ``dst`` through a temporary sibling and one rename: ``dst`` is whole or absent."""
    tmp = dst.with_name(dst.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.rename(dst)


def _compute(workdir: Path, round_index: int, chosen: list[dict], atoms_of: dict, model, command, timeout_s,
             log, dft_cache: Path | None = None) -> list[str]:
    """One SPARC SCF per chosen structure (datagen at T = 0: the structure as given) with the model's
    reference settings for that cell (its k-points); the run directories. With ``dft_cache``, a structure
    computed before with the same settings (by another run sharing the cache, e.g. another arm of a
    selection study) is copied from there instead of recomputed, and new runs are added to it."""
    from ase.io import write

    from .datagen import DatagenPlan, run_datagen, training_directories
    from .ml_provider import sparc_settings_for_model

    dirs = []
    for c in chosen:
        name = c["key"].replace("@", "_frame").replace(".", "_")
        structure = workdir / f"round_{round_index}" / "structures" / f"{name}.xyz"
        structure.parent.mkdir(parents=True, exist_ok=True)
        if not structure.exists():
            write(structure, atoms_of[c["key"]], format="extxyz")
        out = workdir / f"round_{round_index}" / "dft" / name
        settings = sparc_settings_for_model(model, atoms=atoms_of[c["key"]])
        cached = None if dft_cache is None else Path(dft_cache) / _cache_key(atoms_of[c["key"]], settings)
        if cached is not None and cached.is_dir() and not out.exists():
            log(f"round {round_index}: {c['key']} was computed before: copied from {cached.name}")
            _copy_tree_whole(cached, out)
        plan = DatagenPlan(temperatures_k=(0.0,), structure_file=str(structure), sparc=settings, name_prefix=name)
        report = run_datagen(plan, out, command=command, timeout_s=timeout_s, progress=False, log=log)
        if not report.ok:
            raise RuntimeError(f"SPARC failed on {c['key']}: {report.errors}")
        if cached is not None and not cached.is_dir():
            _copy_tree_whole(out, cached)
        dirs += [str(d) for d in training_directories(out)]
    return dirs


def _refit(plan: LearningPlan, start_model, previous_path: Path, train_dirs: list[str], out: Path, log):
    from ase_mlrho.model import DensityEnsemble
    from ase_mlrho.model_files import load_model, save_model
    from ase_mlrho.training import TrainingConfig, scratch_training, train_model
    from ase_mlrho.transfer import FINETUNE_DEFAULTS, finetune_model

    from .reference import METADATA_KEY, common_reference_settings
    from .snapshots import load_snapshot

    train = [load_snapshot(d) for d in train_dirs]
    val = [load_snapshot(d) for d in plan.val_dirs]
    reference = common_reference_settings(list(train_dirs) + list(plan.val_dirs))
    extra = {METADATA_KEY: reference.to_dict()}
    if plan.refit == "finetune":
        base = load_model(previous_path)
        model = finetune_model(base, train, val, plan.freeze, FINETUNE_DEFAULTS, name=out.stem, base_path=previous_path,
                               progress=False, log=log, extra_metadata=extra)
    else:
        cfg = scratch_training(start_model.metadata).get("config")  # a fine-tuned start: its base's recipe
        config = TrainingConfig(**cfg) if cfg else TrainingConfig()
        net = start_model.network
        k = len(net.members) if isinstance(net, DensityEnsemble) else 1
        config = replace(config, ensemble=k)
        model = train_model(train, val, start_model.spec, net.config, config, name=out.stem, progress=False, log=log,
                            extra_metadata=extra)
    save_model(model, out)
    return model


def _validate(model, val_dirs) -> dict:
    from ase_mlrho.evaluation import evaluate_snapshots

    from .snapshots import load_snapshot

    per, _, _ = evaluate_snapshots(model, [load_snapshot(d) for d in val_dirs])
    return {"eps_percent_mean": float(np.mean([m.eps_rho_percent for m in per])),
            "coverage_3sigma_mean": float(np.mean([m.coverage_3sigma for m in per])),
            "cells": {m.name: m.eps_rho_percent for m in per}}


def _without_rounds(plan: dict) -> dict:
    return {k: v for k, v in plan.items() if k != "rounds"}


def run_active_learning(model_path, plan: LearningPlan, workdir, command: str | None = None,
                        timeout_s: float | None = None, log=print, dft_cache=None) -> dict:
    """Run (or resume) the loop of ``plan`` from the model file ``model_path`` in ``workdir``; the manifest.
    ``dft_cache``: a directory of SPARC runs shared between runs (see :func:`_compute`)."""
    from ase_mlrho.model_files import load_model, resolve_model_path
    from ase_mlrho.selection import check_candidates

    workdir = Path(workdir)
    model_path = Path(resolve_model_path(model_path))
    start = load_model(model_path)
    pool_all = _candidates(plan)
    check_candidates(start, pool_all)  # before anything is written: a bad frame is named, not met in round 3
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / MANIFEST
    if path.is_file():
        manifest = read_learning_manifest(workdir)
        before = {"strategy": "sigma", **manifest.get("plan", {})}  # runs from before strategy
        if _without_rounds(before) != _without_rounds(plan.to_dict()):
            raise ValueError(f"{workdir} holds an active-learning run with another plan; use a new --workdir")
        if plan.rounds != before.get("rounds"):  # the same plan, more rounds: go on from where it stopped
            if plan.rounds < len(manifest["rounds"]):
                raise ValueError(f"{workdir} has run {len(manifest['rounds'])} rounds already; --rounds "
                                 f"{plan.rounds} would drop some")
            log(f"{workdir}: rounds {before.get('rounds')} -> {plan.rounds}; the rounds done are kept")
            manifest["plan"] = plan.to_dict()
            _save(workdir, manifest)
    else:
        manifest = {"format": FORMAT, "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "start_model": model_path.name, "plan": plan.to_dict(), "rounds": []}
        _save(workdir, manifest)
    atoms_of = {_key(s, f): a for s, f, a in pool_all}
    if len(atoms_of) != len(pool_all):
        raise ValueError("two candidates share a file name and frame; give files distinct names")
    current_path = model_path
    for r in range(1, plan.rounds + 1):
        rounds = manifest["rounds"]
        if len(rounds) < r:
            rounds.append({"round": r, "status": "started", "model_in": current_path.name})
            _save(workdir, manifest)
        entry = rounds[r - 1]
        if entry["status"] == "fitted":
            current_path = workdir / entry["model_out"]
            continue
        model = load_model(current_path)
        done = {c["key"] for e in rounds[:r - 1] for c in e["chosen"]}
        if "chosen" not in entry:
            pool = [(s, f, a) for s, f, a in pool_all if _key(s, f) not in done]
            if not pool:
                log(f"round {r}: no candidates left")
                break
            entry["scores"], entry["chosen"] = _choose(plan, model, pool, r, log)
            entry["status"] = "chosen"
            _save(workdir, manifest)
        if entry["status"] == "chosen":
            runs = _compute(workdir, r, entry["chosen"], atoms_of, model, command, timeout_s, log, dft_cache)
            entry["runs"] = [str(Path(d).relative_to(workdir)) for d in runs]
            entry["status"] = "computed"
            _save(workdir, manifest)
        chosen_runs = [str(workdir / d) for e in rounds[:r] for d in e["runs"]]
        out = workdir / f"round_{r}" / f"model_round_{r}.safetensors"
        new = _refit(plan, start, current_path, list(plan.train_dirs) + chosen_runs, out, log)
        entry["validation"] = _validate(new, plan.val_dirs)
        entry["model_out"] = str(out.relative_to(workdir))
        entry["status"] = "fitted"
        entry["dft_runs_so_far"] = len(chosen_runs)
        _save(workdir, manifest)
        log(f"round {r}: refit on {len(plan.train_dirs) + len(chosen_runs)} runs, validation eps "
            f"{entry['validation']['eps_percent_mean']:.3f} %")
        current_path = out
    return manifest
