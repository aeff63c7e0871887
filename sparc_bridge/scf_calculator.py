"""A self-consistent SPARC run as an ASE calculator, for reference scans (e.g. EOS ``--with-scf``).

The same input sets and runner as the Harris-Foulkes path (:mod:`sparc_bridge.inputs`,
:func:`sparc_bridge.run.run_sparc`): the grid is written as ``FD_GRID`` from the structure's cell at
``settings.mesh_spacing_bohr``, so the SCF and the ML Harris-Foulkes energies of one structure are
computed on the same grid. Each evaluation runs in a fresh ``directory/scf_NNNN``.
"""

from __future__ import annotations

from pathlib import Path

from ase.calculators.calculator import Calculator, all_changes
from ase.units import Hartree

from .inputs import SparcSettings, write_scf_input
from .run import SparcResult, resolve_command, run_sparc

__all__ = ["SparcSCFCalculator"]


class SparcSCFCalculator(Calculator):
    """ASE calculator: energy = SPARC's self-consistent free energy (eV).

    ``fix_rand`` makes SPARC's random start orbitals repeatable. ``last_result`` holds the last
    :class:`~sparc_bridge.run.SparcResult` (iterations, wall time, SCF table).
    """

    implemented_properties = ["energy", "free_energy"]

    def __init__(self, settings: SparcSettings = SparcSettings(), directory=".", command: str | None = None,
                 timeout_s: float | None = None, fix_rand: int | None = 1, **kwargs):
        super().__init__(directory=str(directory), **kwargs)
        self.settings = settings
        self.command = command
        self.timeout_s = timeout_s
        self.fix_rand = fix_rand
        self.n_runs = 0
        self.last_result: SparcResult | None = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        command = resolve_command(self.command)  # fail before writing anything when SPARC is not configured
        run_dir = Path(self.directory) / f"scf_{self.n_runs:04d}"
        self.n_runs += 1
        write_scf_input(self.atoms, run_dir, self.settings, print_density=False, fix_rand=self.fix_rand)
        result = run_sparc(run_dir, command=command, timeout_s=self.timeout_s)
        self.last_result = result
        energy_ev = result.free_energy_ha * Hartree
        self.results = {"energy": energy_ev, "free_energy": energy_ev}
