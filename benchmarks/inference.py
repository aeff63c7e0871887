"""Inference throughput, scaling and memory for Al cells from 32 to 20,000+ atoms at 0.25 Bohr.

Usage::

    python benchmarks/inference.py                          # sweep: 32 ... 23,328 atoms, 2 processes
    python benchmarks/inference.py --sizes 2,3,4 --executor serial
    python benchmarks/inference.py --compare-dask 4         # dask LocalCluster vs processes, 2 workers, 256 atoms
    python benchmarks/inference.py --one 18 --zarr /scratch/al23k.zarr   # one cell, all of it, to zarr

Each cell (fcc Al, a = 4.05 A, n x n x n conventional cells, 4 n^3 atoms, rattled 0.05 A with a
fixed seed) runs in a fresh Python process, which reports its wall time, points/s and peak RSS
(its own and its worker processes', from ``getrusage``). Cells with at most ``--full-points`` grid
points are predicted completely, to a zarr store (bounded memory; the store is deleted
afterwards). Larger cells run one warm-up block per worker (start-up and tables, counted as set-up),
then ``--sample-blocks`` blocks per worker of the same prediction, timed, and extrapolate
the time linearly in the number of blocks (every block of a homogeneous crystal costs the same;
the table marks these rows). The scaling exponent is the slope of log(seconds) against
log(atoms) between 100 and 10,000 atoms.

The model: ``--model`` (default: the shipped al-pbe if present, else a toy model with the
default architecture -- descriptor M=32, M_s=4, k=4; network 3 x 64; 8 weight samples -- trained
for two epochs on the committed 4-atom fixture; speed depends on the architecture, not on the
accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (2, 3, 4, 5, 6, 8, 10, 14, 18)
SCRATCH = Path(tempfile.gettempdir()) / "mlrho-bench"  # zarr stores of the full runs (deleted after each cell) and the toy model


def al_supercell(n: int, seed: int = 0):
    from ase.build import bulk

    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((n, n, n))
    atoms.rattle(0.05, seed=seed)
    return atoms


def toy_model(path: Path) -> Path:
    """A model with the default architecture, trained for two epochs on the 4-atom fixture."""
    if path.is_file():
        return path
    from sparc_bridge.snapshots import load_snapshot
    from ase_mlrho.descriptors import DescriptorSpec
    from ase_mlrho.model_files import save_model
    from ase_mlrho.training import TrainingConfig, train_model

    snap = load_snapshot(ROOT / "tests" / "fixtures" / "al4")
    cfg = TrainingConfig(points_per_snapshot=3000, val_points_per_snapshot=2000, epochs=2, batch_size=512)
    model = train_model([snap], [snap], DescriptorSpec(), config=cfg, name="toy-default-architecture",
                        progress=False, log=lambda m: None)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path)
    return path


def resolve_model(arg: str | None) -> str:
    from ase_mlrho.model_files import shipped_models

    if arg:
        return arg
    if "al-pbe" in shipped_models():
        return "al-pbe"
    return str(toy_model(SCRATCH / "toy-default.safetensors"))


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its waited-for children (the workers)."""
    own, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + ch.ru_utime + ch.ru_stime


def peak_rss_mib() -> tuple[float, float]:
    """(this process, largest waited-for child) peak resident set size, MiB (Linux: ru_maxrss in kB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


# ------------------------------------------------------------------ one cell (in its own process)
def run_one(n: int, model_path: str, executor: str, workers: int, chunk_points: int, zarr_path: str | None,
            sample_blocks: int | None, full_points: int, neighbour_tables: str = "auto") -> dict:
    from ase_mlrho import inference as inf
    from ase_mlrho.blocks import make_job
    from ase_mlrho.executors import Executor
    from ase_mlrho.grid import Grid
    from ase_mlrho.model_files import load_model

    model = load_model(model_path)
    atoms = al_supercell(n)
    grid = Grid.from_atoms(atoms, model.mesh_spacing_bohr)
    settings = inf.InferenceSettings(chunk_points=chunk_points, neighbour_tables=neighbour_tables)
    ex = inf.ExecutorSettings(executor, workers)
    row = {"n": n, "natoms": len(atoms), "grid_shape": list(grid.shape), "n_points": grid.n_points,
           "executor": executor, "workers": workers, "chunk_points": chunk_points, "model": model.name,
           "n_samples": model.n_samples, "hidden": list(model.network.config.hidden),
           "neighbour_tables": neighbour_tables}
    if grid.n_points <= full_points or sample_blocks is None:
        target = zarr_path or str(SCRATCH / f"al{len(atoms)}-{executor}.zarr")
        for p in (target, target + ".partial"):
            shutil.rmtree(p, ignore_errors=True)
        t0, c0 = time.perf_counter(), cpu_seconds()
        summary = inf.run_prediction(model, atoms, target, settings, ex, progress=zarr_path is not None).summary
        seconds = time.perf_counter() - t0
        row.update(mode="full", seconds=seconds, points_per_second=grid.n_points / seconds,
                   points_per_cpu_second=grid.n_points / (cpu_seconds() - c0),
                   electrons_raw=summary.electrons_raw, output=target,
                   output_mib=sum(f.stat().st_size for f in Path(target).rglob("*") if f.is_file()) / 2 ** 20)
        if zarr_path is None:
            shutil.rmtree(target, ignore_errors=True)
    else:
        # the same blocks a full run would compute, only the first `sample_blocks` * workers of them
        t0 = time.perf_counter()
        structure = inf.validate_structure(model, atoms)
        job = make_job(model, structure, grid, settings)
        n_workers = max(1, workers if executor != "serial" else 1)
        k = min(job.plan.n_chunks, (sample_blocks + 1) * n_workers)
        with Executor(ex, job) as pool:
            t1 = time.perf_counter()
            # warm-up, one block per worker: every worker starts and builds its context before the clock runs
            list(pool.predict(list(range(n_workers)), None))
            t2, c2 = time.perf_counter(), time.process_time()
            done = sum(int(b.stats[0]) for b in pool.predict(list(range(n_workers, k)), None))
            t3, c3 = time.perf_counter(), time.process_time()
        if executor == "serial":  # all the work is in this process: an exact, load-independent figure
            row["points_per_cpu_second"] = done / (c3 - c2)
        rate = done / (t3 - t2)
        setup = t2 - t0
        first = sum(int(np.prod(job.plan.block_shape(i))) for i in range(n_workers))
        seconds = setup + (grid.n_points - first) / rate  # setup includes the warm-up blocks
        row.update(mode=f"sampled ({k} of {job.plan.n_chunks} blocks)", seconds=seconds, points_per_second=rate,
                   setup_seconds=setup, start_seconds=t1 - t0)
    row["peak_rss_mib_driver"], row["peak_rss_mib_worker"] = peak_rss_mib()
    row["load_average_1min"] = os.getloadavg()[0]
    return row


def spawn_one(n: int, args, executor: str, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--one", str(n), "--model", args.model, "--executor", executor,
           "--workers", str(workers), "--chunk-points", str(args.chunk_points), "--full-points", str(args.full_points),
           "--sample-blocks", str(args.sample_blocks), "--neighbour-tables", args.neighbour_tables]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cell n={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_exponent(rows, lo=100, hi=10_000, cpu: bool = False) -> float:
    """Slope of log(time) against log(atoms) for lo <= atoms <= hi. ``cpu``: the time is
    points / (points per CPU-second), which does not depend on how busy a shared machine is."""
    sel = [r for r in rows if lo <= r["natoms"] <= hi and (not cpu or "points_per_cpu_second" in r)]
    if len(sel) < 2:
        return float("nan")
    x = np.log([r["natoms"] for r in sel])
    y = np.log([r["n_points"] / r["points_per_cpu_second"] if cpu else r["seconds"] for r in sel])
    return float(np.polyfit(x, y, 1)[0])


def print_table(rows) -> None:
    print(f"{'atoms':>7} {'grid':>15} {'points':>12} {'seconds':>9} {'points/s':>10} {'pts/cpu-s':>10} "
          f"{'RSS drv':>8} {'RSS wkr':>8} {'load':>5}  mode")
    for r in rows:
        g = "x".join(str(v) for v in r["grid_shape"])
        print(f"{r['natoms']:>7} {g:>15} {r['n_points']:>12,} {r['seconds']:>9.1f} {r['points_per_second']:>10,.0f} "
              f"{r.get('points_per_cpu_second', float('nan')):>10,.0f} "
              f"{r['peak_rss_mib_driver']:>7.0f}M {r['peak_rss_mib_worker']:>7.0f}M {r['load_average_1min']:>5.1f}  "
              f"{r['mode']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="n of the n^3 conventional cells")
    p.add_argument("--model", default=None)
    p.add_argument("--executor", default="processes", choices=("serial", "processes", "dask"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk-points", type=int, default=2 ** 18)
    p.add_argument("--full-points", type=int, default=16_000_000, help="cells up to this many points run in full")
    p.add_argument("--sample-blocks", type=int, default=6, help="blocks per worker timed for larger cells")
    p.add_argument("--compare-dask", type=int, metavar="N", help="time n=N with processes and dask, 2 workers each")
    p.add_argument("--neighbour-tables", default="auto", choices=("auto", "structure", "block"),
                   help="neighbour tables of the whole structure or per block (InferenceSettings)")
    p.add_argument("--one", type=int, metavar="N", help="(internal, or one full run) run one cell and print JSON")
    p.add_argument("--zarr", help="with --one: write the whole prediction to this zarr store and keep it")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    args.model = resolve_model(args.model)
    SCRATCH.mkdir(parents=True, exist_ok=True)

    if args.one is not None:
        row = run_one(args.one, args.model, args.executor, args.workers, args.chunk_points, args.zarr,
                      None if args.zarr else args.sample_blocks, args.full_points, args.neighbour_tables)
        print(json.dumps(row))
        return 0

    rows = []
    if args.compare_dask:
        for executor in ("processes", "dask", "processes", "dask"):  # interleaved: load drifts on a shared machine
            rows.append(spawn_one(args.compare_dask, args, executor, 2))
            print_table(rows[-1:])
        t = {e: min(r["seconds"] for r in rows if r["executor"] == e) for e in ("processes", "dask")}
        print(f"dask overhead over processes (2 workers, best of 2): {100 * (t['dask'] / t['processes'] - 1):+.1f} %")
    else:
        print(f"model {args.model}; executor {args.executor} x {args.workers}; chunk {args.chunk_points} points; "
              f"{os.cpu_count()} CPUs")
        for n in (int(s) for s in args.sizes.split(",")):
            rows.append(spawn_one(n, args, args.executor, args.workers))
            print_table(rows[-1:])
            sys.stdout.flush()
        print()
        print_table(rows)
        print(f"scaling exponent, 100-10,000 atoms: wall time {fit_exponent(rows):.3f}, "
              f"CPU time {fit_exponent(rows, cpu=True):.3f}")
        print(f"largest peak RSS: driver {max(r['peak_rss_mib_driver'] for r in rows):.0f} MiB, "
              f"worker {max(r['peak_rss_mib_worker'] for r in rows):.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
