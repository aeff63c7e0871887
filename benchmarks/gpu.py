"""Throughput of the device path on a GPU: points/s and peak GPU memory for Al cells, and agreement with the CPU.

Usage (where a CUDA GPU is present; nothing here runs in CI)::

    python benchmarks/gpu.py                       # al-pbe, 4 n^3-atom cells, n = 4, 8, 14, 20
    python benchmarks/gpu.py --device cuda:1 --sizes 8,20 --batch-points 131072 --json gpu.json

For each cell (fcc Al, a = 4.05 A, rattled 0.05 A, seeded) the whole grid is predicted with the
model's uncertainty (``InferenceSettings(device=...)``, serial executor, fields kept in memory for
cells up to ``--full-points``; larger cells time ``--sample-blocks`` blocks after one warm-up block and
extrapolate linearly, every block of a crystal costing the same). Printed: atoms, points, seconds,
points/s, peak GPU memory (``torch.cuda.max_memory_allocated``), and the fraction of points the
dense route handed to the float64 CPU fallback. First, on a 32-atom cell, the device field is
compared with the default CPU path: max relative difference of the density (the bar: 1e-5), and of
the sigmas. The last line extrapolates the time of 4.1 million atoms (the paper's largest cell) from
the largest cell's rate. The issue's bar: >= 20 M points/s with the default uncertainty on one GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def al_cell(n: int, seed: int = 0):
    from ase.build import bulk

    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((n, n, n))
    atoms.rattle(0.05, seed=seed)
    return atoms


def agreement(model, device: str) -> dict:
    from ase_mlrho.inference import InferenceSettings, run_prediction

    atoms = al_cell(2)
    cpu = run_prediction(model, atoms, None, InferenceSettings(seed=1)).field
    dev = run_prediction(model, atoms, None, InferenceSettings(seed=1, device=device)).field
    rel = lambda a, b: float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))
    return {"density_max_rel": rel(dev.density, cpu.density),
            "sigma_aleatoric_max_rel": rel(dev.sigma_aleatoric, cpu.sigma_aleatoric),
            "sigma_epistemic_max_rel": rel(dev.sigma_epistemic, cpu.sigma_epistemic)}


def time_cell(model, n: int, device: str, batch_points: int, full_points: int, sample_blocks: int) -> dict:
    import torch

    from ase_mlrho.blocks import build_context, make_job, predict_block
    from ase_mlrho.grid import Grid
    from ase_mlrho.inference import InferenceSettings, run_prediction, validate_structure

    atoms = al_cell(n)
    grid = Grid.from_atoms(atoms, model.mesh_spacing_bohr)
    settings = InferenceSettings(device=device, batch_points=batch_points)
    torch.cuda.reset_peak_memory_stats(device)
    row = {"natoms": len(atoms), "n_points": grid.n_points}
    job = make_job(model, validate_structure(model, atoms), grid, settings)
    if grid.n_points <= full_points or job.plan.n_chunks < 3:
        t = time.perf_counter()
        run_prediction(model, atoms, None, settings)
        torch.cuda.synchronize(device)
        row.update(mode="full", seconds=time.perf_counter() - t)
        row["points_per_second"] = grid.n_points / row["seconds"]
    else:
        t0 = time.perf_counter()
        ctx = build_context(job)
        predict_block(ctx, 0)  # warm-up
        torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        k = min(job.plan.n_chunks, 1 + sample_blocks)
        done = sum(int(predict_block(ctx, i).stats[0]) for i in range(1, k))
        torch.cuda.synchronize(device)
        rate = done / (time.perf_counter() - t1)
        row.update(mode=f"sampled ({k - 1} of {job.plan.n_chunks} blocks)", points_per_second=rate,
                   setup_seconds=t1 - t0, seconds=(t1 - t0) + grid.n_points / rate)
        row["fallback_fraction"] = ctx.dense.fallback_points / max(1, ctx.dense.points) if ctx.dense else None
    row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="al-pbe")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="4,8,14,20", help="n of the n^3 conventional cells (4 n^3 atoms)")
    p.add_argument("--batch-points", type=int, default=None, help="points per device call (default 65536)")
    p.add_argument("--full-points", type=int, default=20_000_000)
    p.add_argument("--sample-blocks", type=int, default=20)
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device visible to torch {torch.__version__}: nothing to measure")
        return 2
    from ase_mlrho.blocks import DEFAULT_DEVICE_BATCH_POINTS
    from ase_mlrho.model_files import load_model

    model = load_model(args.model)
    batch = args.batch_points or DEFAULT_DEVICE_BATCH_POINTS
    print(f"{args.model} on {torch.cuda.get_device_name(args.device)}; {model.n_samples} weight samples; "
          f"batch {batch} points")
    agree = agreement(model, args.device)
    print("device vs CPU path, 32 atoms: " + ", ".join(f"{k} {v:.1e}" for k, v in agree.items()))
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        r = time_cell(model, n, args.device, batch, args.full_points, args.sample_blocks)
        rows.append(r)
        print(f"{r['natoms']:>9,} atoms {r['n_points']:>14,} points {r['seconds']:>9.1f} s "
              f"{r['points_per_second']:>13,.0f} points/s  peak {r['peak_gpu_mib']:>8.0f} MiB  {r['mode']}", flush=True)
    rate = rows[-1]["points_per_second"]
    points_4m = 4.1e6 * rows[-1]["n_points"] / rows[-1]["natoms"]
    print(f"4.1 M atoms ({points_4m:.2e} points) at the largest cell's rate: {points_4m / rate / 60:.1f} minutes")
    if args.json:
        Path(args.json).write_text(json.dumps({"agreement": agree, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
