"""What the sigma's surface term (ase_mlrho.surface) costs: finding the vacuum of a structure (once per
prediction, in the driver) on bulk cells of growing size and on a slab, and a slab's prediction with and
without the term (the depth of every grid point is one more nearest-neighbour query).

    python benchmarks/surface_term.py [--sizes 1 2 4 8]

Prints one markdown table. Bulk: Si0.5Ge0.5 diamond supercells of 8 n^3 atoms (no vacuum: the term finds none and
the prediction is untouched); the slab: 64 atoms with 10 A of vacuum, predicted with the shipped sige-pbe.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from ase.build import bulk
from ase.units import Bohr


def _sige(n: int):
    atoms = bulk("Si", "diamond", a=5.54, cubic=True).repeat(n)
    atoms.symbols[np.random.default_rng(0).permutation(len(atoms))[: len(atoms) // 2]] = "Ge"
    atoms.rattle(0.1, seed=1)
    return atoms


def main(argv=None) -> int:
    from ase_mlrho.inference import InferenceSettings, run_prediction
    from ase_mlrho.model_files import load_model
    from ase_mlrho.surface import SurfaceDepth

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16], help="bulk supercells n x n x n")
    args = p.parse_args(argv)
    model = load_model("sige-pbe")
    cal = model.surface_calibration
    print("| structure | atoms | coarse nodes | vacuum boundary nodes | finding the vacuum (s) | per atom (us) |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        atoms = _sige(n)
        cell = np.asarray(atoms.cell) / Bohr
        t0 = time.perf_counter()
        term = SurfaceDepth.for_structure(cal, atoms.get_positions() / Bohr, cell, (True,) * 3)
        dt = time.perf_counter() - t0
        nodes = int(np.prod(np.ceil(np.linalg.norm(cell, axis=1) / cal.coarse_spacing_bohr)))
        print(f"| SiGe bulk {n}x{n}x{n} | {len(atoms)} | {nodes:,} | {0 if term is None else len(term.boundary_bohr)} | "
              f"{dt:.2f} | {1e6 * dt / len(atoms):.0f} |")
    slab = _sige(2)
    slab.center(vacuum=10.0, axis=2)
    t0 = time.perf_counter()
    term = SurfaceDepth.for_structure(cal, slab.get_positions() / Bohr, np.asarray(slab.cell) / Bohr, (True,) * 3)
    dt = time.perf_counter() - t0
    print(f"| SiGe slab, 10 A vacuum | {len(slab)} | | {len(term.boundary_bohr)} | {dt:.2f} | {1e6 * dt / len(slab):.0f} |")
    times = {}
    for on in (False, True, False, True):  # twice each, the second of each counts (numba compiled, caches warm)
        t0 = time.perf_counter()
        run = run_prediction(model, slab, None, InferenceSettings(surface_term=on))
        times[on] = (time.perf_counter() - t0, run.summary.n_points)
    print(f"\nslab prediction ({times[True][1]:,} points): {times[False][0]:.2f} s without the term, "
          f"{times[True][0]:.2f} s with it ({100 * (times[True][0] / times[False][0] - 1):+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
