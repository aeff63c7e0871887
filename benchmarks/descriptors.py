"""Descriptor throughput: grid points per second for Al cells of 32, 500 and 4000 atoms at 0.25 Bohr
with the default spec (M=32, M_s=4, k=4), peak memory, and the scaling exponent between sizes.

Each size runs in a fresh subprocess so that its peak RSS is its own. Every point of the grid is
described (in chunks of --chunk points), so the time is the real cost of a whole cell.

    python benchmarks/descriptors.py [--sizes 32 500 4000] [--chunk 200000] [--workers 2]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def al_cell(n_atoms_target: int, seed: int = 0):
    """A thermally rattled fcc Al supercell with about n_atoms_target atoms (4 per cubic cell)."""
    from ase.build import bulk

    reps = max(1, round((n_atoms_target / 4) ** (1 / 3)))
    shape = [reps, reps, reps]
    while 4 * np.prod(shape) < n_atoms_target * 0.9:
        shape[np.argmin(shape)] += 1
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * tuple(shape)
    atoms.rattle(0.08, seed=seed)
    return atoms


def one_size(n_atoms: int, chunk: int, workers: int, max_points: int | None = None, spec_json: str = "{}") -> dict:
    from ase_mlrho.descriptors import Descriptors, DescriptorSpec
    from ase_mlrho.grid import Grid

    atoms = al_cell(n_atoms)
    grid = Grid.from_atoms(atoms, 0.25)
    spec = DescriptorSpec.from_dict({**DescriptorSpec().to_dict(), **json.loads(spec_json)})
    n_points = grid.n_points if max_points is None else min(grid.n_points, max_points)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    desc = Descriptors.from_atoms(spec, atoms)
    checksum = 0.0
    for start, stop in grid.chunks(chunk):
        if start >= n_points:
            break
        checksum += float(desc.compute_grid(grid, start, stop, workers=workers)[:, 0].sum())
        n_done = stop
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    full = grid.n_points / n_done * seconds
    return {"natoms": len(atoms), "grid_points": grid.n_points, "points_described": n_done,
            "seconds_full_grid": full, "seconds": seconds, "cpu_seconds": cpu,
            "points_per_second": n_done / seconds, "points_per_cpu_second": n_done / cpu,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "checksum": checksum}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 500, 4000])
    ap.add_argument("--chunk", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2, help="k-d tree query threads")
    ap.add_argument("--max-points", type=int, default=None,
                    help="describe only the first N points of each grid and extrapolate (the work per point "
                         "is the same everywhere in a homogeneous cell)")
    ap.add_argument("--spec", default="{}", help='descriptor spec overrides as JSON, e.g. \'{"angular_l_max": 4, ...}\'')
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.chunk, args.workers, args.max_points, args.spec)))
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--chunk", str(args.chunk), "--workers", str(args.workers),
               "--spec", args.spec]
        if args.max_points:
            cmd += ["--max-points", str(args.max_points)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['natoms']:6d} atoms  {r['grid_points']:11,d} points ({r['points_described']:,d} described)  "
              f"{r['seconds_full_grid']:8.1f} s (full grid)  {r['points_per_second'] / 1e6:6.3f} M points/s  "
              f"{r['points_per_cpu_second'] / 1e6:6.3f} M points/CPU-s  peak RSS {r['peak_rss_mib']:7.0f} MiB", flush=True)
    if len(rows) > 1:
        n = np.log([r["natoms"] for r in rows])
        t = np.log([r["seconds_full_grid"] for r in rows])
        slope = np.polyfit(n, t, 1)[0]
        print(f"scaling exponent (time vs atoms, least squares over {len(rows)} sizes): {slope:.3f}")


if __name__ == "__main__":
    main()
