"""Where the time of a prediction goes: each stage on one core, in points per core-second.

Usage::

    python benchmarks/profile_stages.py                      # the README's main job: examples/al_vacancy_108.xyz
    python benchmarks/profile_stages.py --structure my.xyz --model sige-pbe --json out.json

One torch thread, one process; each stage is timed on the same grid points (``--points``, a compact
box of the grid, the way blocks are cut) after a warm-up call, best of ``--repeat``:

* start-up: importing the package and loading the model (a fresh interpreter, wall seconds);
* descriptors: the compiled kernel over compact sub-blocks (default, numba), the k-d tree path
  (numpy; where numba is missing) and the dense torch path (``--device``), float32;
* network: member by member (``DensityNetwork.predict``, the default path) and stacked
  (:class:`~ase_mlrho.predictor.Predictor`, the device path), with the model's weight samples, with
  one sample per member, and with the posterior means only (no epistemic sigma): what the
  uncertainty costs;
* end to end: ``run_prediction`` of the whole cell, serial, both paths, in memory and written to
  .cube and to a zarr store (the difference is what the sink costs).

Run it on a quiet machine: the figures are CPU-bound and halve when another job shares the core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def best_rate(fn, n_points: int, repeat: int) -> float:
    """Points per second of ``fn()`` (which handles ``n_points``), best of ``repeat`` after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return n_points / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--structure", default=str(ROOT / "examples" / "al_vacancy_108.xyz"))
    p.add_argument("--model", default="al-pbe")
    p.add_argument("--points", type=int, default=4096, help="points per timed call (a compact box)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    import ase.io
    import torch

    torch.set_num_threads(1)
    from ase_mlrho.blocks import box_flat_indices
    from ase_mlrho.dense_descriptors import DenseDescriptors, compact_sub_blocks
    from ase_mlrho.descriptors import Descriptors
    from ase_mlrho.grid import Grid
    from ase_mlrho.inference import InferenceSettings, run_prediction
    from ase_mlrho.model_files import load_model
    from ase_mlrho.predictor import Predictor

    rows = {}
    code = f"import time; t=time.perf_counter(); from ase_mlrho.model_files import load_model; load_model({args.model!r}); print(time.perf_counter()-t)"
    rows["start-up: import + load model (s, wall)"] = float(subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])

    model = load_model(args.model)
    atoms = ase.io.read(args.structure)
    grid = Grid.from_atoms(atoms, model.mesh_spacing_bohr)
    edge = max(1, round(args.points ** (1 / 3)))
    box = tuple(slice(n // 3, n // 3 + min(edge, n)) for n in grid.shape)
    pts = grid.points_bohr_at(box_flat_indices(grid.shape, box))
    n = len(pts)
    tree = Descriptors.from_atoms(model.spec, atoms)
    dense = DenseDescriptors(tree)
    fast = DenseDescriptors(tree, engine="numba")
    shape = tuple(s.stop - s.start for s in box)
    subs = [grid.points_bohr_at(box_flat_indices(grid.shape, tuple(
        slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub)))) for sub in compact_sub_blocks(shape, 512)]
    rows["descriptors, compiled kernel (default)"] = best_rate(lambda: fast.compute_blocks(subs), n, args.repeat)
    rows["descriptors, k-d tree path"] = best_rate(lambda: tree.compute(pts), n, args.repeat)
    rows["descriptors, dense path (CPU)"] = best_rate(lambda: dense.compute_blocks(subs), n, args.repeat)

    desc = tree.compute(pts)
    net = model.network
    for label, samples in ((f"{model.n_samples} samples (default)", model.n_samples),
                           ("1 sample per member", len(getattr(net, "members", [net]))),
                           ("posterior means only", 0)):
        sets = net.sample_weight_sets(samples, 0)
        rows[f"network member by member, {label}"] = best_rate(lambda: net.predict(desc, weight_sets=sets), n, args.repeat)
        stacked = Predictor(net, sets)
        desc_t = torch.as_tensor(desc)
        rows[f"network stacked, {label}"] = best_rate(lambda: stacked.predict(desc_t), n, args.repeat)

    with tempfile.TemporaryDirectory() as tmp:
        for device, output in ((None, None), ("cpu", None), (None, "field.cube"), (None, "field.zarr")):
            target = None if output is None else str(Path(tmp) / output)
            t = time.process_time()
            run_prediction(model, atoms, target, InferenceSettings(device=device))
            label = "default (compiled kernel)" if device is None else "dense torch"
            rows[f"end to end, serial, {label} path, output {output or 'in memory'}"] = \
                grid.n_points / (time.process_time() - t)
    print(f"{args.model} on {Path(args.structure).name}: {len(atoms)} atoms, grid {grid.shape}, "
          f"{n} points per timed call, one core; load average {os.getloadavg()[0]:.1f}")
    for k, v in rows.items():
        print(f"{k:<58} {v:>12,.0f}" if v > 100 else f"{k:<58} {v:>12.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows, structure=Path(args.structure).name, model=args.model,
                                                   n_points=grid.n_points), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
