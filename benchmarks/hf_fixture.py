"""Save the inputs of the second-order Harris-Foulkes correction from finished ``mlrho energy`` runs.

For each work directory of ``mlrho energy STRUCTURE -m MODEL --workdir W`` made with a model that
carries a screening model (so SPARC printed rho_out), this stores the long-wavelength Fourier
components of rho_out - rho_in that :func:`sparc_bridge.screening.second_order_from_fourier` uses,
with the cell volume, the mean xc kernel, the number of atoms and the HF and SCF energies per atom,
under ``<reference run name>/...`` keys of one ``.npz``: the CI fixtures of ``tests/test_screening.py``
(``tests/fixtures/al_hf_second_order.npz`` was made this way from the two held-out Al32 runs).

    python benchmarks/hf_fixture.py W1 W2 -o tests/fixtures/al_hf_second_order.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sparc_bridge.density_file import read_density
from sparc_bridge.inputs import DEFAULT_LABEL, DENSITY_INPUT_NAME
from sparc_bridge.screening import long_wavelength_residual
from sparc_bridge.snapshots import load_snapshot


def fixture_entries(name: str, residual, natoms: int, e_hf: float, e_scf: float) -> dict:
    """The CI fixture arrays of one cell (``tests/test_screening.py``): the long-wavelength residual of
    its Harris-Foulkes run (:class:`sparc_bridge.screening.LongWavelengthResidual`) and the energies per atom."""
    return {f"{name}/q_per_bohr": residual.q_per_bohr, f"{name}/residual_g": residual.residual_g,
            f"{name}/scalars": np.array([residual.volume_bohr3, residual.mean_fxc_ha_bohr3, natoms, e_hf, e_scf])}


def workdir_entries(workdir: Path) -> dict:
    """The fixture arrays of one ``mlrho energy`` work directory (keys prefixed by the reference run's name)."""
    report = json.loads((workdir / "mlrho_report.json").read_text())
    if report.get("second_order") is None or report.get("energy_scf_ha_per_atom") is None:
        raise SystemExit(f"{workdir}: needs a run with a screening model on a SPARC reference directory")
    snap = load_snapshot(report["structure"])
    rho_in = read_density(workdir / "hf" / DENSITY_INPUT_NAME).density_e_per_bohr3
    rho_out = read_density(workdir / "hf" / f"{DEFAULT_LABEL}.dens").density_e_per_bohr3
    residual = long_wavelength_residual(rho_in, rho_out, snap.grid.cell_bohr)
    return fixture_entries(Path(report["structure"]).name, residual, report["natoms"],
                           report["energy_hf_ha_per_atom"], report["energy_scf_ha_per_atom"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdirs", nargs="+", type=Path, help="work directories of `mlrho energy` runs")
    ap.add_argument("-o", "--output", required=True, help="the .npz to write")
    args = ap.parse_args(argv)
    entries = {}
    for w in args.workdirs:
        entries.update(workdir_entries(w))
    np.savez_compressed(args.output, **entries)
    print(f"{args.output}: {len(args.workdirs)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
