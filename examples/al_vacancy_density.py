"""The density of Al with a vacancy, with its uncertainty: the calculator, two plots and a cube file.

    python examples/al_vacancy_density.py                  # shipped model al-pbe
    python examples/al_vacancy_density.py -m my_model.safetensors -o out/

Reads ``examples/al_vacancy_108.xyz`` (3 x 3 x 3 fcc Al, one vacancy, slightly rattled; rebuild it
with ``make_al_vacancy_108.py``), attaches :class:`MLRhoCalculator` and writes to the output
directory:

* ``vacancy_line.png`` -- the density along the x line of grid nodes through the vacancy, with
  its +/- 3 sigma band (total sigma) and the epistemic part alone;
* ``vacancy_maps.png`` -- the density and the total-sigma map on the z plane of the vacancy;
* ``al_vacancy_density.cube`` -- the density in a Gaussian cube file (electrons/Bohr^3, the cube
  format's atomic units, as ``ase.io.cube`` expects) that VESTA, Ovito or ASE's GUI opens.

Units: the calculator returns electrons/Angstrom^3 (ASE units); plots use the same.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.units import Bohr  # noqa: E402

from ase_mlrho.calculator import MLRhoCalculator  # noqa: E402

HERE = Path(__file__).resolve().parent


def nearest_node(grid, position_ang) -> tuple[int, int, int]:
    """Indices of the grid node nearest to a Cartesian position (Angstrom), periodic."""
    frac = np.linalg.solve(grid.cell_bohr.T, np.asarray(position_ang) / Bohr)
    return tuple(int(round(f * n)) % s for f, n, s in zip(frac, grid.intervals, grid.shape))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default="al-pbe", help="shipped model name or model file")
    p.add_argument("-s", "--structure", default=str(HERE / "al_vacancy_108.xyz"))
    p.add_argument("-o", "--out", default=".", help="output directory")
    p.add_argument("--samples", type=int, default=None, help="weight samples (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    atoms = read(args.structure)
    vacancy = atoms.info.get("vacancy_ang")
    atoms.calc = MLRhoCalculator(model=args.model, n_samples=args.samples, seed=args.seed)
    rho = atoms.calc.get_pseudo_density(atoms)  # electrons/Angstrom^3
    sig = atoms.calc.get_density_uncertainty(atoms, "total")
    epi = atoms.calc.get_density_uncertainty(atoms, "epistemic")
    grid = atoms.calc.grid
    n_e = atoms.calc.get_property("n_electrons", atoms)
    raw = atoms.calc.get_property("electrons_raw", atoms)
    print(f"{len(atoms)} atoms, grid {grid.shape}, {n_e:g} electrons (rho.mean() * V = "
          f"{rho.mean() * atoms.get_volume():.6f}); the raw prediction integrated to {raw:.4f}")
    print(f"sigma total: mean {sig.mean():.2e}, max {sig.max():.2e} e/A^3; epistemic max {epi.max():.2e} e/A^3")

    i0, j0, k0 = nearest_node(grid, vacancy if vacancy is not None else atoms.cell.sum(axis=0) / 2)
    x_ang = np.arange(grid.shape[0]) * grid.spacing_bohr[0] * Bohr

    fig, ax = plt.subplots(figsize=(7, 4))
    line, band, line_epi = rho[:, j0, k0], sig[:, j0, k0], epi[:, j0, k0]
    ax.fill_between(x_ang, line - 3 * band, line + 3 * band, color="tab:blue", alpha=0.25, label="±3σ (total)")
    ax.fill_between(x_ang, line - 3 * line_epi, line + 3 * line_epi, color="tab:red", alpha=0.4,
                    label="±3σ (epistemic)")
    ax.plot(x_ang, line, color="tab:blue", lw=1.2, label="predicted density")
    if vacancy is not None:
        ax.axvline(vacancy[0], color="k", ls=":", lw=1, label="vacancy")
    ax.set_xlabel("x (Å), line through the vacancy")
    ax.set_ylabel("ρ (electrons/Å³)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "vacancy_line.png", dpi=150)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    extent = [0, grid.shape[1] * grid.spacing_bohr[1] * Bohr, 0, grid.shape[0] * grid.spacing_bohr[0] * Bohr]
    for ax, data, title, cmap in ((axes[0], rho[:, :, k0], "density (e/Å³)", "viridis"),
                                  (axes[1], sig[:, :, k0], "total σ (e/Å³)", "magma")):
        im = ax.imshow(data, origin="lower", extent=extent, cmap=cmap)
        ax.set_title(f"{title}, plane k = {k0} through the vacancy")
        ax.set_xlabel("y (Å)")
        ax.set_ylabel("x (Å)")
        fig.colorbar(im, ax=ax, shrink=0.85)
        if vacancy is not None:
            ax.plot(vacancy[1], vacancy[0], "w+", ms=10)
    fig.tight_layout()
    fig.savefig(out / "vacancy_maps.png", dpi=150)
    plt.close(fig)

    # cube files carry atomic units: electrons/Bohr^3 (ase.io.cube writes the numbers as given)
    write(out / "al_vacancy_density.cube", atoms, data=rho * Bohr ** 3)
    print(f"wrote {out / 'vacancy_line.png'}, {out / 'vacancy_maps.png'}, {out / 'al_vacancy_density.cube'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
