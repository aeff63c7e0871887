"""Record the training domain (the training cells' largest hole) in a model file trained before it existed.

``mlrho train`` and ``mlrho finetune`` write the model file's ``training_domain`` entry themselves
(:mod:`ase_mlrho.domain`). For a model file from before, this script finds the cells its metadata says it
was trained on (``training.train_snapshots``, and ``base_training`` for a fine-tuned model: its parent's
cells are part of what it has seen), computes the largest distance from a node of their grids to the
nearest atom, prints it per cell, and writes the entry into the file (atomically; the weights are
untouched). Paths written ``shared:NAME`` are the shared data directory's (``--shared``).

    python benchmarks/training_domain.py ase_mlrho/models/sige-pbe.safetensors --shared "$SHARED"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def training_cells(metadata: dict) -> list[str]:
    """Paths of the cells a model was trained on, its parents' included (fine-tuning)."""
    paths = [s["path"] for s in metadata.get("training", {}).get("train_snapshots", [])]
    base = metadata.get("base_training")
    if base:
        paths += [s["path"] for s in base.get("train_snapshots", [])]
    return list(dict.fromkeys(paths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_file", help="a .safetensors model file (rewritten in place unless -o)")
    ap.add_argument("--shared", default="../shared/data/sparc", help="where shared:NAME cells live")
    ap.add_argument("-o", "--output", help="write the model here instead")
    args = ap.parse_args(argv)

    from ase_mlrho.domain import METADATA_KEY, largest_hole, training_domain_metadata
    from ase_mlrho.model_files import load_model, save_model
    from sparc_bridge.snapshots import load_snapshot

    model = load_model(args.model_file)
    snaps = []
    for p in training_cells(model.metadata):
        path = Path(args.shared) / p.split(":", 1)[1] if p.startswith("shared:") else Path(p)
        snap = load_snapshot(path)
        print(f"{snap.name}: largest hole {largest_hole(snap.atoms, snap.grid)[0]:.3f} Bohr", flush=True)
        snaps.append(snap)
    entry = training_domain_metadata(snaps)
    entry["source"] = "benchmarks/training_domain.py (recorded after training, from the cells in the metadata)"
    model.metadata[METADATA_KEY] = entry
    out = save_model(model, args.output or args.model_file)
    print(f"{model.name}: training domain {entry['largest_hole_bohr']:.3f} Bohr (cell {entry['cell']}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
