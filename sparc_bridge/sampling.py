"""Sampling the structures of a data set: bulk crystals (with alloying and vacancies) and thermalised
frames of them (Langevin molecular dynamics with an ASE calculator, or independent Gaussian rattles).

Everything random is driven by ``numpy.random.default_rng(seed)``: the same seed gives the same frames
bit for bit. :mod:`sparc_bridge.datagen` turns the frames into SPARC reference runs.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["BulkSpec", "MDSettings", "make_calculator", "sample_trajectory", "positions_sha256"]


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BulkSpec:
    """A bulk crystal: ``ase.build.bulk(element, lattice, a=a_ang, cubic=True) * supercell``.

    ``supercell`` is the repeat of the cubic cell along each axis (fcc: 4 * n^3 atoms; n = 2 is the
    paper's 32-atom Al cell, n = 3 its 108-atom cell).

    Random alloys and defects (the SiGe cells of the paper): ``alloy_element`` replaces a fraction
    ``alloy_fraction`` of the sites (exactly ``round(x * N)`` of them, chosen at random per snapshot
    seed), and ``vacancies`` random sites are removed afterwards. ``BulkSpec("Si", "diamond", 5.54, 2,
    "Ge", 0.5)`` is the shared data's Si0.5Ge0.5 64-atom cell.
    """

    element: str = "Al"
    lattice: str = "fcc"
    a_ang: float = 4.05
    supercell: int = 1
    alloy_element: str | None = None
    alloy_fraction: float = 0.0
    vacancies: int = 0

    def __post_init__(self):
        if not 0.0 <= float(self.alloy_fraction) <= 1.0:
            raise ValueError(f"alloy_fraction must lie in [0, 1], got {self.alloy_fraction}")
        if self.alloy_fraction and not self.alloy_element:
            raise ValueError("alloy_fraction given without alloy_element")
        if int(self.vacancies) < 0:
            raise ValueError(f"vacancies must be >= 0, got {self.vacancies}")

    def build(self):
        """The ideal crystal of the host element (no alloying, no vacancies: see :meth:`decorate`)."""
        from ase.build import bulk

        n = int(self.supercell)
        if n < 1:
            raise ValueError(f"supercell must be >= 1, got {self.supercell}")
        atoms = bulk(self.element, self.lattice, a=float(self.a_ang), cubic=True) * (n, n, n)
        if self.vacancies >= len(atoms):
            raise ValueError(f"{self.vacancies} vacancies in a {len(atoms)}-atom cell")
        return atoms

    @property
    def is_decorated(self) -> bool:
        return bool(self.alloy_element and self.alloy_fraction) or self.vacancies > 0

    def decorate(self, atoms, seed: int):
        """``atoms`` with the random occupation and vacancies of snapshot ``seed`` (a copy).

        Drawn from ``numpy.random.default_rng([seed, 7])``, a stream separate from the MD's, so the
        same seed gives the same occupation whatever the sampler.
        """
        atoms = atoms.copy()
        if not self.is_decorated:
            return atoms
        rng = np.random.default_rng([int(seed), 7])
        if self.alloy_element and self.alloy_fraction:
            n_alloy = int(round(float(self.alloy_fraction) * len(atoms)))
            sites = rng.choice(len(atoms), size=n_alloy, replace=False)
            symbols = atoms.get_chemical_symbols()
            for i in sites:
                symbols[i] = self.alloy_element
            atoms.set_chemical_symbols(symbols)
        if self.vacancies:
            del atoms[sorted(rng.choice(len(atoms), size=int(self.vacancies), replace=False).tolist())]
        return atoms

    @property
    def prefix(self) -> str:
        """Name prefix of its snapshots, as in the shared data: ``al_n=2``; alloys
        ``sige_x=0.4_n=2``; ``_vac=1`` appended for vacancies."""
        if self.alloy_element and self.alloy_fraction:
            text = f"{self.element.lower()}{self.alloy_element.lower()}_x={float(self.alloy_fraction):g}"
        else:
            text = self.element.lower()
        text += f"_n={int(self.supercell)}"
        if self.vacancies:
            text += f"_vac={int(self.vacancies)}"
        return text


@dataclass(frozen=True)
class MDSettings:
    """Molecular-dynamics sampling of one trajectory per (temperature, seed).

    timestep_fs, equilibration_steps : Langevin steps before the first frame (shared data: 2 fs x 600).
    friction_per_ase_time : Langevin friction in inverse ASE time units (1 ASE time unit = 10.18 fs),
        0.02 as in the shared data.
    frames_per_trajectory : frames kept from each trajectory.
    decorrelation_fs : simulated time between kept frames of one trajectory (a multiple of the timestep).
    calculator : ``"emt"`` (ASE's EMT), ``"package.module:factory"`` (a function returning an ASE
        calculator, e.g. a user's interatomic potential), ``"rattle"`` (no MD: independent Gaussian
        displacements of ``rattle_ang_per_sqrt_k * sqrt(T)`` Angstrom per Cartesian component, the
        shared SiGe data's scheme, for elements EMT does not know), or ``"sparc-aimd"`` (not implemented).
    rattle_ang_per_sqrt_k : amplitude of the ``"rattle"`` sampler (shared SiGe data: 0.0045).
    """

    timestep_fs: float = 2.0
    equilibration_steps: int = 600
    friction_per_ase_time: float = 0.02
    frames_per_trajectory: int = 1
    decorrelation_fs: float = 200.0
    calculator: str = "emt"
    rattle_ang_per_sqrt_k: float = 0.0045

    def __post_init__(self):
        if self.timestep_fs <= 0 or self.equilibration_steps < 0 or self.frames_per_trajectory < 1:
            raise ValueError(f"invalid MD settings: {self}")
        self.decorrelation_steps  # validates the spacing

    @property
    def decorrelation_steps(self) -> int:
        steps = self.decorrelation_fs / self.timestep_fs
        if self.frames_per_trajectory > 1 and (steps < 1 or abs(steps - round(steps)) > 1e-9):
            raise ValueError(f"decorrelation_fs ({self.decorrelation_fs}) must be a positive multiple of "
                             f"timestep_fs ({self.timestep_fs})")
        return max(1, int(round(steps)))

    def frame_times_fs(self) -> list[float]:
        """Simulated time of every kept frame of a trajectory."""
        first = self.equilibration_steps
        return [self.timestep_fs * (first + k * self.decorrelation_steps) for k in range(self.frames_per_trajectory)]

    def describe(self) -> str:
        """The ``sampler`` string of ``meta.json`` (same wording as the shared data)."""
        if self.calculator == "rattle":
            text = (f"Gaussian rattle {self.rattle_ang_per_sqrt_k:g}*sqrt(T) A, numpy default_rng(seed)")
            if self.frames_per_trajectory > 1:
                text += f"; {self.frames_per_trajectory} independent draws"
            return text
        calc = "EMT" if self.calculator == "emt" else self.calculator
        text = (f"ase {calc} Langevin {self.timestep_fs:g} fs x {self.equilibration_steps} steps, "
                f"friction {self.friction_per_ase_time:g}, MaxwellBoltzmann init, numpy default_rng(seed)")
        if self.frames_per_trajectory > 1:
            text += f"; {self.frames_per_trajectory} frames spaced by {self.decorrelation_fs:g} fs"
        return text


# ----------------------------------------------------------------------------- sampling
def make_calculator(name: str) -> Callable[[], object] | None:
    """A factory of the ASE calculator named ``name`` (see :class:`MDSettings`); None for ``"rattle"``,
    which needs no calculator."""
    if name == "rattle":
        return None
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT
    if name == "sparc-aimd":
        raise NotImplementedError(
            "SPARC's own AIMD sampler is not implemented yet: it needs an input set with MD_FLAG/MD_METHOD "
            "(NVT_NH), MD_TIMESTEP, MD_NSTEP and ION_TEMP, and frames read from SPARC.aimd with sparc-x-api. "
            "Sample with EMT or your own potential ('package.module:factory') meanwhile."
        )
    if ":" in name:
        module, attr = name.split(":", 1)
        factory = getattr(importlib.import_module(module), attr)
        if not callable(factory):
            raise ValueError(f"{name}: {attr} is not callable")
        return factory
    raise ValueError(f"unknown MD calculator {name!r}: use 'emt', 'rattle', 'package.module:factory' or 'sparc-aimd'")


def sample_trajectory(atoms, temperature_k: float, seed: int, md: MDSettings = MDSettings(),
                      calculator_factory: Callable[[], object] | None = None) -> list:
    """Frames of one Langevin trajectory at ``temperature_k`` (copies, wrapped, without calculator).

    Velocities and thermostat noise come from ``numpy.random.default_rng(seed)``: the same seed gives
    the same frames bit for bit. At 0 K the (unchanged) input structure is the only frame.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    if temperature_k == 0:
        atoms.wrap()
        return [atoms]
    if md.calculator == "rattle" and calculator_factory is None:
        rng = np.random.default_rng(int(seed))
        sigma_ang = md.rattle_ang_per_sqrt_k * float(np.sqrt(temperature_k))
        frames = []
        for _ in range(md.frames_per_trajectory):
            frame = atoms.copy()
            frame.positions += rng.normal(scale=sigma_ang, size=frame.positions.shape)
            frame.wrap()
            frames.append(frame)
        return frames
    factory = calculator_factory or make_calculator(md.calculator)
    atoms.calc = factory()
    rng = np.random.default_rng(int(seed))
    # The shared data used MaxwellBoltzmannDistribution and Langevin's default fixcm=True; ASE >= 3.28
    # deprecates both, but changing them would change the frames a seed gives, so they stay (quietly).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*thermalize_momenta.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*fixcm.*", category=FutureWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=float(temperature_k), rng=rng)
        dyn = Langevin(atoms, md.timestep_fs * units.fs, temperature_K=float(temperature_k),
                       friction=md.friction_per_ase_time, rng=rng)
    frames = []
    for k in range(md.frames_per_trajectory):
        dyn.run(md.equilibration_steps if k == 0 else md.decorrelation_steps)
        frame = atoms.copy()
        frame.calc = None
        frame.wrap()
        frames.append(frame)
    return frames


def positions_sha256(atoms) -> str:
    """Checksum of a structure (cell, numbers, positions as float64): provenance of a sample."""
    h = hashlib.sha256()
    for arr in (np.asarray(atoms.cell[:], np.float64), np.asarray(atoms.numbers, np.int64),
                np.asarray(atoms.positions, np.float64)):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
