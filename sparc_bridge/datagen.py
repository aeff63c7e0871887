"""Training-data generation: thermalised snapshots of a structure, one SPARC SCF each.

The recipe (the one that made the reference data under ``data/sparc``):

1. **sample** -- for every (temperature, seed) pair, molecular dynamics with an ASE calculator
   (ASE's EMT by default): Maxwell-Boltzmann velocities and a Langevin thermostat, both driven by
   ``numpy.random.default_rng(seed)``, 2 fs x 600 steps, friction 0.02 (inverse ASE time units).
   The first frame is taken after the equilibration steps; further frames of the same trajectory are
   spaced by ``decorrelation_fs`` (a stated time, so that successive snapshots are decorrelated).
   T = 0 K gives the perfect crystal. Each sampled structure is stored (``samples/NAME.traj``,
   exact float64) before any SCF, so a resumed run computes exactly the structure the first run drew.
2. **compute** -- one SPARC SCF per snapshot (input set from :mod:`sparc_bridge.inputs`, run and
   failure detection from :mod:`sparc_bridge.run`): PBE, psp8 from sparc-x-api, Fermi-Dirac at
   631.554 K, mesh 0.25 Bohr (0.4 Bohr when Si or Ge is present) unless told otherwise, density printed.
3. **finish** -- the density is gzipped, SPARC's scratch (psp8 copies, eigenvalues, log) removed and
   ``meta.json`` written with the keys of the shared data plus the SPARC version, settings and
   convergence flag; the work directory ``NAME.partial`` is renamed to ``NAME`` only then.

Resumability: a directory ``NAME`` exists only when complete (it is made by renaming); a left-over
``NAME.partial`` (a killed run) is deleted and redone, never reused. ``manifest.json`` (written
atomically after every change) holds the recipe and the provenance and status of every snapshot:
``sampled`` -> ``running`` -> ``done`` | ``unconverged`` | ``failed``. Failed runs keep their files
in ``NAME.failed`` with SPARC's message in the manifest and are retried only on request;
unconverged ones are complete directories flagged ``"converged": false`` and are excluded from
training by :func:`training_directories` / :func:`load_training_snapshots` unless asked for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence


from ase_mlrho.files import atomic_write, file_sha256, jsonable
from .inputs import DEFAULT_LABEL, SparcSettings, write_scf_input
from .run import SparcRunError, describe_command, resolve_command, run_sparc
from .sampling import BulkSpec, MDSettings, make_calculator, positions_sha256, sample_trajectory

__all__ = [
    "BulkSpec",
    "MDSettings",
    "DatagenPlan",
    "PlannedSnapshot",
    "DatagenReport",
    "DatagenError",
    "default_mesh_spacing_bohr",
    "make_calculator",
    "plan_snapshots",
    "sample_trajectory",
    "run_datagen",
    "read_manifest",
    "scf_converged",
    "training_directories",
    "load_training_snapshots",
    "MANIFEST_NAME",
    "PAPER_ELEC_TEMP_K",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mlrho-datagen-manifest"
MANIFEST_VERSION = 1
SAMPLES_DIR = "samples"
PARTIAL_SUFFIX = ".partial"
FAILED_SUFFIX = ".failed"
#: Fermi-Dirac electronic temperature of the paper and the shared data (K)
PAPER_ELEC_TEMP_K = 631.554
#: SPARC outputs not kept in a finished snapshot directory (scratch; the density is kept gzipped)
_SCRATCH_SUFFIXES = (".psp8", ".eigen", ".log")


class DatagenError(RuntimeError):
    """A data-generation run that cannot proceed; the message says what to do."""


# ----------------------------------------------------------------------------- settings
def default_mesh_spacing_bohr(symbols: Sequence[str]) -> float:
    """The paper's mesh: 0.4 Bohr when Si or Ge is present, else 0.25 Bohr (Al)."""
    return 0.4 if {"Si", "Ge"} & set(symbols) else 0.25


@dataclass(frozen=True)
class DatagenPlan:
    """Everything that defines a data set: the structure, the temperatures and seeds, the MD and
    the SPARC settings. ``seeds`` pairs with ``temperatures_k`` (default: 0, 1, 2, ...); a
    temperature may repeat with different seeds. Either ``bulk`` or ``structure_file`` is given.
    ``sparc`` None means the paper's settings for these elements (:func:`default_sparc_settings`).
    """

    temperatures_k: tuple[float, ...]
    seeds: tuple[int, ...] | None = None
    bulk: BulkSpec | None = None
    structure_file: str | None = None
    md: MDSettings = MDSettings()
    sparc: SparcSettings | None = None
    name_prefix: str | None = None

    def __post_init__(self):
        if (self.bulk is None) == (self.structure_file is None):
            raise ValueError("give exactly one of a bulk spec and a structure file")
        if not self.temperatures_k:
            raise ValueError("give at least one temperature")
        if any(t < 0 for t in self.temperatures_k):
            raise ValueError(f"temperatures must be >= 0 K, got {self.temperatures_k}")
        seeds = self.resolved_seeds()
        if len(seeds) != len(self.temperatures_k):
            raise ValueError(f"{len(seeds)} seeds for {len(self.temperatures_k)} temperatures; give one seed each")
        pairs = list(zip(self.temperatures_k, seeds))
        if len(set(pairs)) != len(pairs):
            raise ValueError("repeated (temperature, seed) pair: each trajectory needs its own seed")

    def resolved_seeds(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.seeds) if self.seeds is not None else tuple(range(len(self.temperatures_k)))

    def build_structure(self):
        if self.bulk is not None:
            return self.bulk.build()
        from ase.io import read

        atoms = read(self.structure_file)
        if not all(atoms.pbc):
            raise ValueError(f"{self.structure_file}: datagen needs a periodic cell (pbc True on all axes)")
        return atoms

    @property
    def prefix(self) -> str:
        if self.name_prefix:
            return self.name_prefix
        prefix = self.bulk.prefix if self.bulk is not None else Path(self.structure_file).stem
        kpts = tuple(self.sparc.kpts) if self.sparc is not None else (1, 1, 1)
        return prefix if kpts == (1, 1, 1) else f"{prefix}_k={'x'.join(map(str, kpts))}"

    def sparc_settings(self, symbols) -> SparcSettings:
        return self.sparc if self.sparc is not None else default_sparc_settings(symbols)

    def recipe(self, symbols) -> dict:
        """The part that must not change when a run is resumed or extended (JSON-ready)."""
        if self.bulk is not None:
            # fields added after the first data sets were made are left out while unused, so that
            # those data sets can still be resumed and extended
            structure = {k: v for k, v in asdict(self.bulk).items()
                         if k not in ("alloy_element", "alloy_fraction", "vacancies") or v}
        else:
            structure = {"file": Path(self.structure_file).name, "sha256": file_sha256(self.structure_file)}  # name + checksum: portable
        md = asdict(self.md)
        if self.md.calculator != "rattle":
            md.pop("rattle_ang_per_sqrt_k")
        return {"structure": structure, "md": md, "sparc": jsonable(asdict(self.sparc_settings(symbols)))}

    def species(self, structure=None) -> list[str]:
        """Every element the snapshots can contain (host and alloying element); ``structure``:
        the one :meth:`build_structure` gives, when the caller has it already."""
        structure = self.build_structure() if structure is None else structure
        symbols = sorted(set(structure.get_chemical_symbols()))
        if self.bulk is not None and self.bulk.alloy_element and self.bulk.alloy_element not in symbols:
            symbols.append(self.bulk.alloy_element)
        return symbols


def default_sparc_settings(symbols) -> SparcSettings:
    """The paper's SCF settings: PBE, Fermi-Dirac 631.554 K, Gamma point, TOL_SCF 1e-6, its mesh."""
    return SparcSettings(xc="pbe", elec_temp_type="Fermi-Dirac", elec_temp_k=PAPER_ELEC_TEMP_K,
                         mesh_spacing_bohr=default_mesh_spacing_bohr(symbols))


@dataclass(frozen=True)
class PlannedSnapshot:
    """One snapshot to make: a frame of the trajectory (temperature_k, seed)."""

    name: str
    temperature_k: float
    seed: int
    frame: int
    time_fs: float


def plan_snapshots(plan: DatagenPlan) -> list[PlannedSnapshot]:
    """Names and times of every snapshot of ``plan``, in run order. Names follow the shared data
    (``al_n=2_T=630_seed=4``), with ``_frame=k`` appended when a trajectory gives several frames."""
    out = []
    times = plan.md.frame_times_fs()
    for t_k, seed in zip(plan.temperatures_k, plan.resolved_seeds()):
        t_text = f"{t_k:g}" if t_k != int(t_k) else str(int(t_k))
        frames = [0] if t_k == 0 else range(plan.md.frames_per_trajectory)
        for k in frames:
            name = f"{plan.prefix}_T={t_text}_seed={seed}"
            if len(frames) > 1:
                name += f"_frame={k}"
            out.append(PlannedSnapshot(name, float(t_k), int(seed), int(k), 0.0 if t_k == 0 else times[k]))
    return out


# ----------------------------------------------------------------------------- manifest
def read_manifest(out_dir) -> dict:
    """The manifest of a data-generation directory (raises :class:`DatagenError` when absent)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DatagenError(f"{path}: no datagen manifest here; was this directory made by `mlrho datagen`?")
    data = json.loads(path.read_text())
    if data.get("format") != MANIFEST_FORMAT:
        raise DatagenError(f"{path}: not a datagen manifest (format {data.get('format')!r})")
    return data


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write(out_dir / MANIFEST_NAME, lambda f: json.dump(manifest, f, indent=1, sort_keys=False))


def scf_converged(directory, label: str = DEFAULT_LABEL) -> bool:
    """Whether the SCF in a SPARC run directory converged: ``meta.json``'s ``converged`` flag when
    present, else the absence of SPARC's 'did not converge' warning in its ``.out``."""
    directory = Path(directory)
    meta = directory / "meta.json"
    if meta.is_file():
        flag = json.loads(meta.read_text()).get("converged")
        if flag is not None:
            return bool(flag)
    out = directory / f"{label}.out"
    return out.is_file() and "did not converge" not in out.read_text(errors="replace")


def training_directories(out_dir, include_unconverged: bool = False) -> list[Path]:
    """Snapshot directories of a datagen run usable for training, in plan order: status ``done``
    (and ``unconverged`` when asked). Failed, pending and running snapshots are never returned."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    ok = {"done", "unconverged"} if include_unconverged else {"done"}
    return [out_dir / name for name, e in manifest["snapshots"].items()
            if e["status"] in ok and (out_dir / name).is_dir()]


def load_training_snapshots(out_dir, include_unconverged: bool = False) -> list:
    """:func:`training_directories` loaded as :class:`ase_mlrho.data.Snapshot` objects."""
    from .snapshots import load_snapshot

    return [load_snapshot(d) for d in training_directories(out_dir, include_unconverged)]


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True)
class DatagenReport:
    """Outcome of a data-generation run: snapshot names by status, and why each failure failed."""

    out_dir: str
    done: tuple[str, ...]
    unconverged: tuple[str, ...]
    failed: tuple[str, ...]
    pending: tuple[str, ...]
    errors: dict = field(default_factory=dict)
    ran_now: tuple[str, ...] = ()
    dft_wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.failed or self.unconverged or self.pending)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{self.out_dir}: {len(self.done)} done, {len(self.unconverged)} unconverged, "
                 f"{len(self.failed)} failed, {len(self.pending)} pending; computed now: {len(self.ran_now)}; "
                 f"SPARC wall time of all snapshots {self.dft_wall_s:.0f} s"]
        for name in self.unconverged:
            lines.append(f"  UNCONVERGED {name}: SCF did not reach TOL_SCF; flagged in the manifest and excluded "
                         "from training by default")
        for name in self.failed:
            lines.append(f"  FAILED {name}: {self.errors.get(name, '?')}")
        if self.failed:
            lines.append("  (files of failed runs are kept in NAME.failed; rerun with --retry-failed to try again)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the run
def _sparc_version(out_path: Path) -> str | None:
    m = re.search(r"SPARC \(version ([^)]*)\)", out_path.read_text(errors="replace")[:2000])
    return m.group(1).strip() if m else None


def _save_sample(path: Path, atoms) -> None:
    from ase.io import write

    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, atoms, format="traj")
    os.replace(tmp, path)


def _load_sample(path: Path):
    from ase.io import read

    return read(path, format="traj")


def _finish_directory(work: Path, label: str) -> None:
    """Gzip the density (atomically) and remove SPARC's scratch, as in the shared data."""
    dens = work / f"{label}.dens"
    if not dens.is_file():
        raise SparcRunError(f"SPARC wrote no {dens.name} in {work}; PRINT_DENSITY must be 1")
    data = dens.read_bytes()
    atomic_write(work / f"{label}.dens.gz", lambda f: f.write(data), binary=True)
    dens.unlink()
    for path in work.iterdir():
        if path.suffix in _SCRATCH_SUFFIXES or path.name.startswith(f"{label}.eigen"):
            path.unlink()


def run_datagen(plan: DatagenPlan, out_dir, command: str | None = None, timeout_s: float | None = None,
                retry_failed: bool = False, progress: bool = True, calculator_factory=None,
                label: str = DEFAULT_LABEL, log=None) -> DatagenReport:
    """Sample and compute every snapshot of ``plan`` into ``out_dir``, resuming what is there.

    Raises :class:`DatagenError` when ``out_dir`` holds a data set made with another recipe (a new
    recipe needs a new directory; new temperatures or seeds may be added to an existing one), and
    :class:`~sparc_bridge.run.SparcNotFoundError` when snapshots remain but no SPARC is configured.
    A failed or unconverged SCF does not stop the run: it is flagged, and the report lists it.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if calculator_factory is None and any(t > 0 for t in plan.temperatures_k):
        calculator_factory = make_calculator(plan.md.calculator)  # fail before touching the disk
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SAMPLES_DIR).mkdir(exist_ok=True)
    structure = plan.build_structure()
    symbols = plan.species(structure)
    settings = plan.sparc_settings(symbols)
    recipe = plan.recipe(symbols)
    planned = plan_snapshots(plan)

    manifest = _open_manifest(out_dir, recipe)
    entries = manifest["snapshots"]
    _reconcile(out_dir, planned, entries, plan, retry_failed, log)
    _write_manifest(out_dir, manifest)

    # 1. sampling: one trajectory per (T, seed), its frames stored before any SCF
    by_traj: dict[tuple[float, int], list[PlannedSnapshot]] = {}
    for snap in planned:
        by_traj.setdefault((snap.temperature_k, snap.seed), []).append(snap)
    for (t_k, seed), snaps in by_traj.items():
        if not any(entries[s.name]["status"] == "pending" for s in snaps):
            continue
        start = plan.bulk.decorate(structure, seed) if plan.bulk is not None else structure
        frames = sample_trajectory(start, t_k, seed, plan.md, calculator_factory)
        for s in snaps:
            if entries[s.name]["status"] != "pending":
                continue
            atoms = frames[s.frame]
            _save_sample(out_dir / SAMPLES_DIR / f"{s.name}.traj", atoms)
            entries[s.name].update(status="sampled", positions_sha256=positions_sha256(atoms))
        _write_manifest(out_dir, manifest)

    # 2. SCF, one snapshot at a time
    todo = [s for s in planned if entries[s.name]["status"] == "sampled"]
    cmd = resolve_command(command) if todo else None
    ran = []
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="SPARC SCF", unit="snapshot", file=sys.stderr)
    try:
        for snap in todo:
            if bar is not None:
                bar.set_postfix_str(snap.name)
            _compute_snapshot(out_dir, snap, plan, settings, structure, entries[snap.name], manifest, cmd,
                              timeout_s, label, log)
            ran.append(snap.name)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return _report(out_dir, planned, entries, ran)


def _open_manifest(out_dir: Path, recipe: dict) -> dict:
    path = out_dir / MANIFEST_NAME
    if path.is_file():
        manifest = read_manifest(out_dir)
        if manifest["recipe"] != recipe:
            diff = sorted(k for k in set(recipe) | set(manifest["recipe"])
                          if recipe.get(k) != manifest["recipe"].get(k))
            raise DatagenError(
                f"{out_dir} was made with a different recipe ({', '.join(diff)} differ); write to a new "
                "directory, or repeat the original structure/MD/SPARC settings to resume or extend it"
            )
        return manifest
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "recipe": recipe, "snapshots": {}}


def _reconcile(out_dir, planned, entries, plan, retry_failed, log) -> None:
    """Bring the manifest in line with the disk: complete directories are the truth; a left-over
    ``.partial`` (a killed run) is deleted; failed entries stay failed unless ``retry_failed``."""
    for snap in planned:
        e = entries.setdefault(snap.name, {})
        e.update(name=snap.name, T_K=snap.temperature_k, seed=snap.seed, frame=snap.frame, md_time_fs=snap.time_fs,
                 sampler="perfect crystal" if snap.temperature_k == 0 else plan.md.describe())
        final, partial = out_dir / snap.name, out_dir / (snap.name + PARTIAL_SUFFIX)
        if partial.exists():
            log(f"{snap.name}: removing the unfinished {partial.name} of an interrupted run; it will be redone")
            shutil.rmtree(partial)
        if final.is_dir() and (final / "meta.json").is_file():
            meta = json.loads((final / "meta.json").read_text())
            e.update(status="done" if meta.get("converged", True) else "unconverged", directory=snap.name)
            continue
        if final.exists():
            raise DatagenError(f"{final} exists but has no meta.json: it was not made by datagen; move it away")
        if e.get("status") == "failed" and not retry_failed:
            continue
        sample = out_dir / SAMPLES_DIR / f"{snap.name}.traj"
        if sample.is_file() and "positions_sha256" not in e:  # manifest lost: the stored sample is the truth
            e["positions_sha256"] = positions_sha256(_load_sample(sample))
        e["status"] = "sampled" if sample.is_file() else "pending"
        e.pop("error", None)


def _compute_snapshot(out_dir, snap, plan, settings, structure, entry, manifest, cmd, timeout_s, label, log):
    work = out_dir / (snap.name + PARTIAL_SUFFIX)
    final = out_dir / snap.name
    failed = out_dir / (snap.name + FAILED_SUFFIX)
    atoms = _load_sample(out_dir / SAMPLES_DIR / f"{snap.name}.traj")
    if positions_sha256(atoms) != entry.get("positions_sha256"):
        raise DatagenError(f"{snap.name}: the stored sample does not match the manifest checksum; "
                           f"delete {SAMPLES_DIR}/{snap.name}.traj to resample it")
    work.mkdir()
    entry.update(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 attempts=int(entry.get("attempts", 0)) + 1)
    _write_manifest(out_dir, manifest)
    try:
        write_scf_input(atoms, work, settings, label=label, print_density=True)
        result = run_sparc(work, label=label, command=cmd, timeout_s=timeout_s)
        _finish_directory(work, label)
    except SparcRunError as exc:
        if failed.exists():
            shutil.rmtree(failed)
        os.replace(work, failed)
        entry.update(status="failed", error=str(exc).splitlines()[0], directory=failed.name)
        _write_manifest(out_dir, manifest)
        log(f"FAILED {snap.name}: {str(exc).splitlines()[0]}")
        return
    sparc_version = _sparc_version(work / f"{label}.out")
    meta = {
        "name": snap.name,
        "seed": snap.seed,
        "T_K": snap.temperature_k,
        "sampler": entry["sampler"],
        "a_ang": plan.bulk.a_ang if plan.bulk is not None else None,
        "supercell": plan.bulk.supercell if plan.bulk is not None else None,
        "alloy_element": plan.bulk.alloy_element if plan.bulk is not None else None,
        "alloy_fraction": plan.bulk.alloy_fraction if plan.bulk is not None else None,
        "vacancies": plan.bulk.vacancies if plan.bulk is not None else 0,
        "mesh_spacing_bohr": settings.mesh_spacing_bohr,
        "wall_s": round(float(result.wall_time_s), 1),
        "natoms": len(atoms),
        "symbols": atoms.get_chemical_formula(),
        "sparc_command": describe_command(cmd),
        "sparc_version": sparc_version,
        "converged": bool(result.scf_converged),
        "n_scf_iterations": result.n_scf_iterations,
        "free_energy_ha": result.free_energy_ha,
        "frame": snap.frame,
        "md_time_fs": snap.time_fs,
        "structure_file": plan.structure_file,
        "positions_sha256": entry["positions_sha256"],
        "sparc_settings": jsonable(asdict(settings)),
        "fd_grid": list(result.fd_grid) if result.fd_grid else None,
    }
    atomic_write(work / "meta.json", lambda f: json.dump(meta, f, indent=1))
    os.replace(work, final)
    if failed.exists():
        shutil.rmtree(failed)
    entry.update(status="done" if result.scf_converged else "unconverged", directory=snap.name,
                 wall_s=meta["wall_s"], sparc_version=sparc_version, converged=meta["converged"],
                 n_scf_iterations=result.n_scf_iterations, free_energy_ha=result.free_energy_ha,
                 sparc_command=describe_command(cmd), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    entry.pop("error", None)
    _write_manifest(out_dir, manifest)
    if not result.scf_converged:
        log(f"UNCONVERGED {snap.name}: SCF did not converge in {result.n_scf_iterations} iterations (flagged)")


def _report(out_dir, planned, entries, ran) -> DatagenReport:
    by = {k: [] for k in ("done", "unconverged", "failed", "pending")}
    for snap in planned:
        status = entries[snap.name]["status"]
        by["pending" if status in ("pending", "sampled", "running") else status].append(snap.name)
    wall = sum(float(entries[s.name].get("wall_s") or 0.0) for s in planned
               if entries[s.name]["status"] in ("done", "unconverged"))
    return DatagenReport(str(out_dir), *(tuple(by[k]) for k in ("done", "unconverged", "failed", "pending")),
                         errors={n: entries[n].get("error") for n in by["failed"]}, ran_now=tuple(ran),
                         dft_wall_s=wall)
