"""How far the raw prediction's integral lies from the exact electron count, on real SPARC cells.

Before it is written, a prediction is renormalised to the structure's electron count. A model that knows the
structure misses that count by little; a large miss means something is wrong with the input. Examples are
a box that ends at the outer atoms along a non-periodic direction, or a cell in the wrong length unit. The
renormalisation would hide such a miss, so ``mlrho predict`` and the calculator warn above
``ase_mlrho.inference.RAW_ELECTRONS_WARNING_FRACTION``. This script measures the miss on every SPARC cell
given and prints the largest. Each cell is predicted on its own SPARC grid, with the shipped model of its
species (SiGe cells: ``sige-pbe``, Al cells: ``al-pbe``).

    python benchmarks/raw_electrons.py "data/sparc/**/SPARC.dens*" [more patterns: the owner's SPARC runs]

Writes ``benchmarks/results/raw_electrons.json``: each cell by its path in the repository, or by its directory
name alone when it lies outside (``"in_repository": false``).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patterns", nargs="+", help="glob patterns of SPARC density files (** allowed)")
    ap.add_argument("--samples", type=int, default=4, help="weight samples per prediction (default 4)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "raw_electrons.json"))
    args = ap.parse_args(argv)

    from ase_mlrho.files import atomic_write
    from ase_mlrho.inference import RAW_ELECTRONS_WARNING_FRACTION, predict_field
    from ase_mlrho.model_files import load_model
    from sparc_bridge.snapshots import load_snapshot

    models = {"sige": load_model("sige-pbe"), "al": load_model("al-pbe")}
    rows = []
    for pattern in args.patterns:
        for path in sorted(glob.glob(pattern, recursive=True)):
            directory = Path(path).parent
            snap = load_snapshot(directory)
            kind = "sige" if set(snap.atoms.get_chemical_symbols()) & {"Si", "Ge"} else "al"
            field = predict_field(models[kind], snap.atoms, grid=snap.grid, n_samples=args.samples)
            miss = 100.0 * (field.electrons_raw / snap.n_electrons - 1.0)
            try:
                cell, inside = directory.resolve().relative_to(ROOT).as_posix(), True
            except ValueError:  # no folder outside the repository is named in the results
                cell, inside = directory.name, False
            rows.append({"cell": cell, "in_repository": inside, "model": models[kind].name, "natoms": len(snap.atoms),
                         "electrons": snap.n_electrons, "electrons_raw": field.electrons_raw, "miss_percent": miss})
            print(f"{models[kind].name:9s} {len(snap.atoms):4d} atoms  {miss:+.3f} %  {cell}",
                  flush=True)
    if not rows:
        ap.error("no SPARC density file matched")
    worst = max(rows, key=lambda r: abs(r["miss_percent"]))
    summary = {"cells": len(rows), "largest_miss_percent": worst["miss_percent"], "largest_miss_cell": worst["cell"],
               "warning_above_percent": 100 * RAW_ELECTRONS_WARNING_FRACTION, "samples": args.samples}
    print(f"{len(rows)} cells: largest miss {worst['miss_percent']:+.3f} % ({worst['cell']}); "
          f"the warning fires above {100 * RAW_ELECTRONS_WARNING_FRACTION:g} %")
    atomic_write(args.json, lambda f: json.dump({"summary": summary, "cells": rows}, f, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
