"""A 100,000-atom Al cell with a void: its density and uncertainty to zarr in one resumable run, checked and pictured.

Usage::

    python benchmarks/large_cell.py run --store al_void_100k.zarr       # resumable: run it again after a stop
    python benchmarks/large_cell.py report --store al_void_100k.zarr    # checksums, electrons, picture, figures

The structure (:func:`al_void`): fcc Al, a = 4.05 A, 29 x 29 x 30 conventional cells (100,920 sites), the
sites within 10 A of the cell centre removed (a spherical void), rattled 0.05 A with seed 7: about 100,660
atoms, a grid of about 7.2e8 points at al-pbe's 0.25 Bohr. ``run`` calls ``mlrho predict`` on it with 2
worker processes (the store is resumed block by block after an interruption); ``report`` verifies every
block's sha256, reads the electron count before renormalisation from the store, draws a slice through the
void (density, total sigma, epistemic sigma) into ``benchmarks/results/large_cell/al_void_100k.png`` and
writes the figures to ``benchmarks/results/large_cell/al_void_100k.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "large_cell"
VOID_RADIUS_ANG = 10.0


def al_void(repeat=(29, 29, 30), radius_ang: float = VOID_RADIUS_ANG, seed: int = 7, rattle_ang: float = 0.05):
    """The 100,000-atom cell: fcc Al with a spherical void at the centre, rattled."""
    from ase.build import bulk

    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat(repeat)
    centre = atoms.cell.sum(axis=0) / 2
    del atoms[np.linalg.norm(atoms.positions - centre, axis=1) < radius_ang]
    atoms.rattle(rattle_ang, seed=seed)
    atoms.info["void_centre_ang"] = centre
    atoms.info["void_radius_ang"] = radius_ang
    return atoms


def run(store: Path, workers: int, executor: str) -> int:
    structure = store.with_suffix(".xyz")
    if not structure.exists():
        from ase.io import write

        write(structure, al_void(), format="extxyz")
    cmd = [sys.executable, "-m", "ase_mlrho.cli", "predict", str(structure), "-o", str(store), "--executor",
           executor, "--workers", str(workers), "--json"]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    print(out.stderr[-2000:], file=sys.stderr)
    if out.returncode != 0:
        return out.returncode
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    summary["wall_s_this_session"] = time.perf_counter() - t
    (store.parent / (store.stem + ".summary.json")).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def report(store: Path) -> int:
    import zarr
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ase_mlrho.sinks import verify_prediction

    t = time.perf_counter()
    n_blocks = verify_prediction(store)
    verify_s = time.perf_counter() - t
    group = zarr.open_group(str(store), mode="r")
    attrs = dict(group.attrs)
    shape = tuple(attrs["grid"]["shape"])
    summary_file = store.parent / (store.stem + ".summary.json")
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    k = shape[2] // 2  # the plane through the void centre
    names = [n for n in ("density", "sigma_total", "sigma_epistemic") if n in group]
    planes = {n: np.asarray(group[n][:, :, k], dtype=np.float64) for n in names}
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.4))
    for ax, n in zip(np.atleast_1d(axes), names):
        im = ax.imshow(planes[n].T, origin="lower", cmap="viridis" if n == "density" else "magma")
        ax.set_title(f"{n} (e/Bohr$^3$), plane k = {k}")
        ax.set_xlabel("i (grid node)")
        ax.set_ylabel("j (grid node)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"al-pbe, fcc Al with a {VOID_RADIUS_ANG:.0f} A void: {summary.get('natoms', '?')} atoms, "
                 f"grid {shape[0]}x{shape[1]}x{shape[2]}")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "al_void_100k.png", dpi=90)
    n_e = summary.get("n_electrons")
    raw = summary.get("electrons_raw")
    figures = {
        "natoms": summary.get("natoms"), "grid_shape": list(shape), "n_points": int(np.prod(shape)),
        "blocks_verified": n_blocks, "verify_seconds": verify_s,
        "n_electrons": n_e, "electrons_raw": raw,
        "electron_count_error_percent": None if not n_e else 100 * (raw - n_e) / n_e,
        "points_per_second": summary.get("points_per_second"), "seconds": summary.get("seconds"),
        "ood_fraction": summary.get("ood_fraction"), "chunks_resumed": summary.get("chunks_resumed"),
        "density_max_in_plane": float(planes["density"].max()) if "density" in planes else None,
    }
    (RESULTS / "al_void_100k.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("run", "report"))
    p.add_argument("--store", type=Path, default=Path("al_void_100k.zarr"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--executor", default="processes", choices=("serial", "processes", "dask"))
    args = p.parse_args(argv)
    return run(args.store, args.workers, args.executor) if args.what == "run" else report(args.store)


if __name__ == "__main__":
    raise SystemExit(main())
