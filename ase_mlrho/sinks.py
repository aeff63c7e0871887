"""Where a predicted field goes: the zarr store (written block by block, resumable) and the file sinks
written once the whole field is known (cube and npz here; SPARC's ``.dens`` comes from the bridge).

Every file is written atomically (:mod:`ase_mlrho.files`); a zarr store is built as ``NAME.zarr.partial``
and renamed when complete, with a per-block state array and per-block sha256 (:func:`verify_prediction`).
Units: electrons/Bohr^3 in every output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .blocks import STAT_COLUMNS, Block, ChunkPlan, Job, Structure
from .grid import Grid

__all__ = ["OutputError", "FileSink", "SinkInput", "CORE_SINKS", "CUBE_SINK", "NPZ_SINK", "SIGMA_FIELDS", "ZARR_FORMAT",
           "ZARR_FORMAT_VERSION", "ARRAY_NAMES", "output_sink", "check_output", "open_prediction", "verify_prediction",
           "largest_epistemic_plane",
           "open_zarr_store", "partial_path", "model_info", "Accumulator", "write_block_zarr", "rescale_block_zarr",
           "block_digest"]

#: in-memory fields larger than this many bytes are backed by temporary files (np.memmap)
MEMMAP_THRESHOLD_BYTES = 1 << 30
ZARR_FORMAT = "ase-mlrho-density"
ZARR_FORMAT_VERSION = 1
ARRAY_NAMES = ("density", "sigma_total", "sigma_aleatoric", "sigma_epistemic")


class OutputError(ValueError):
    """An output path that cannot be written (unknown format, missing directory, not writable, ...)."""


# ====================================================================== zarr store
def zarr_arrays(path: str) -> dict:
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    return {name: group[name] for name in ARRAY_NAMES}


_ZARR_HANDLES: dict[str, dict] = {}  # per-process memo of opened arrays (metadata reads are not free)


def zarr_handles(path: str) -> dict:
    if path not in _ZARR_HANDLES:
        if len(_ZARR_HANDLES) > 4:
            _ZARR_HANDLES.clear()
        _ZARR_HANDLES[path] = zarr_arrays(path)
    return _ZARR_HANDLES[path]


def write_block_zarr(path: str, plan: ChunkPlan, block: Block) -> None:
    """Write a block's clipped raw prediction into the store (float32)."""
    arrays = zarr_handles(path)
    sl = plan.slices(block.index)
    arrays["sigma_aleatoric"][sl] = block.sigma_aleatoric.astype(np.float32)
    arrays["sigma_epistemic"][sl] = block.sigma_epistemic.astype(np.float32)
    total = np.sqrt(block.sigma_aleatoric ** 2 + block.sigma_epistemic ** 2)
    arrays["sigma_total"][sl] = total.astype(np.float32)
    arrays["density"][sl] = np.clip(block.mean_raw, 0.0, None).astype(np.float32)


def rescale_block_zarr(path: str, plan: ChunkPlan, index: int, factor: float) -> tuple[int, bytes]:
    """Second pass: multiply the block of every array by the renormalisation factor, in place.
    Returns the block index and the sha256 of its final bytes (for :func:`verify_prediction`)."""
    arrays = zarr_handles(path)
    sl = plan.slices(index)
    blocks = {}
    for name in ARRAY_NAMES:
        a = arrays[name]
        blocks[name] = (a[sl].astype(np.float64) * factor).astype(np.float32)
        a[sl] = blocks[name]
    return index, block_digest(blocks)


def block_digest(blocks: dict) -> bytes:
    h = hashlib.sha256()
    for name in ARRAY_NAMES:
        h.update(np.ascontiguousarray(blocks[name], dtype="<f4").tobytes())
    return h.digest()


# ====================================================================== outputs
@dataclass(frozen=True)
class FileSink:
    """An output format written in one piece once the whole field is known (the zarr store, written block by
    block while the prediction runs, is the other kind of output).

    ``suffixes``: file names it takes; ``fields``: the arrays it needs (``density`` alone, or with the two
    sigmas); ``write(path, output)``: writes the file atomically from a :class:`SinkInput`.
    The core provides cube and npz (:data:`CORE_SINKS`); a DFT code's own format comes from its bridge
    (SPARC's ``.dens``: :data:`sparc_bridge.density_file.DENS_SINK`) and is passed to :func:`run_prediction`.
    """

    name: str
    suffixes: tuple[str, ...]
    fields: tuple[str, ...]
    write: Callable[[Path, "SinkInput"], Path]


@dataclass(frozen=True, eq=False)
class SinkInput:
    """What a :class:`FileSink` writes from: the model, the structure (ase.Atoms and its :class:`Structure`),
    the grid, the renormalised arrays it asked for (e/Bohr^3) and the run's attributes."""

    model: object
    atoms: object
    structure: "Structure"
    grid: Grid
    arrays: dict
    renormalisation_factor: float
    electrons_raw: float
    attrs: dict


ZARR_SUFFIX = ".zarr"
SIGMA_FIELDS = ("density", "sigma_aleatoric", "sigma_epistemic")


def output_sink(path, sinks: tuple[FileSink, ...] | None = None) -> FileSink | str:
    """The output for a path, from its suffix: ``"zarr"`` (the chunked store) or one of ``sinks``
    (default :data:`CORE_SINKS`); :class:`OutputError` naming the formats there are."""
    sinks = CORE_SINKS if sinks is None else sinks
    name = str(path).rstrip("/")
    if name.endswith(ZARR_SUFFIX):
        return "zarr"
    for sink in sinks:
        if name.endswith(sink.suffixes):
            return sink
    known = ", ".join([ZARR_SUFFIX] + [x for sink in sinks for x in sink.suffixes])
    raise OutputError(f"output {path}: unknown format; use a name ending in {known}")


def check_output(path, overwrite: bool = False, sinks: tuple[FileSink, ...] | None = None) -> tuple[FileSink | str, Path]:
    """Refuse an output early (before any work): unknown format, missing or read-only directory,
    or an existing output of any format (unless ``overwrite``). Returns (sink, path), the sink as in
    :func:`output_sink`."""
    kind = output_sink(path, sinks)
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"cannot write {path}: directory {parent} {why}")
    try:  # probe by writing: os.access says yes to root even on read-only mounts
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: directory {parent} is not writable ({exc.strerror})") from None
    if path.is_dir() and kind != "zarr":
        raise OutputError(f"cannot write {path}: it is a directory")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; remove it, choose another name, or pass --overwrite")
    if path.exists() and kind != "zarr" and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {path}: the file is not writable")
    return kind, path


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def model_info(model) -> dict:
    meta = model.metadata
    return {"name": model.name, "weights_sha256": meta.get("weights_sha256"),
            "package_version": meta.get("package_version"), "descriptor_spec": model.spec.to_dict(),
            "species": list(model.species), "valence_electrons": model.valence_electrons,
            "mesh_spacing_bohr": model.mesh_spacing_bohr,
            "epistemic_sigma_validation_p999_e_per_bohr3": model.epistemic_sigma_validation_max}


def open_zarr_store(path: Path, job: Job, attrs: dict):
    """Create ``path.partial`` or reopen it to resume the same job. Returns (group, state array)."""
    import zarr

    partial = partial_path(path)
    if partial.exists():
        try:
            group = zarr.open_group(str(partial), mode="r+")
            token = group.attrs.get("job_token")
        except Exception:  # noqa: BLE001 - an unreadable leftover is reported below
            token = None
        if token != job.token:
            raise OutputError(
                f"{partial} holds an interrupted run of a different prediction (other structure, model, seed, "
                "samples or chunking); remove it to start afresh, or rerun the same command to resume it")
        return group, group["chunk_state"]
    plan = job.plan
    group = zarr.open_group(str(partial), mode="w")
    for name in ARRAY_NAMES:
        a = group.create_array(name, shape=plan.shape, chunks=plan.block, dtype="float32", fill_value=0.0)
        a.attrs.update({"units": "electrons/Bohr^3", "long_name": name.replace("_", " ")})
    n = plan.n_chunks
    state = group.create_array("chunk_state", shape=(n,), chunks=(min(n, 65536),), dtype="uint8", fill_value=0)
    state.attrs["meaning"] = "per block: 0 pending, 1 raw prediction written, 2 renormalised"
    stats = group.create_array("chunk_stats", shape=(n, len(STAT_COLUMNS)), chunks=(min(n, 16384), len(STAT_COLUMNS)),
                               dtype="float64", fill_value=0.0)
    stats.attrs["columns"] = list(STAT_COLUMNS)
    sha = group.create_array("chunk_sha256", shape=(n, 32), chunks=(min(n, 16384), 32), dtype="uint8", fill_value=0)
    sha.attrs["meaning"] = ("per block: sha256 of the final float32 little-endian bytes of density, sigma_total, "
                            "sigma_aleatoric, sigma_epistemic (C order), concatenated")
    pos = group.create_array("positions_bohr", shape=(job.structure.natoms, 3), dtype="float64")
    pos[:] = job.structure.positions_bohr
    num = group.create_array("numbers", shape=(job.structure.natoms,), dtype="int64")
    num[:] = job.structure.numbers
    group.attrs.update({**attrs, "job_token": job.token, "complete": False})
    return group, state


def _open_complete(path):
    """(zarr group, its attributes) of a complete prediction store, read-only; OutputError otherwise."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if attrs.get("format") != ZARR_FORMAT or not attrs.get("complete"):
        raise OutputError(f"{path} is not a complete {ZARR_FORMAT} store")
    return group, attrs


def open_prediction(path) -> dict:
    """Read a zarr prediction store into memory (small stores; big ones: open with ``zarr`` and
    slice). Returns a dict of float32 arrays (e/Bohr^3) and ``attrs``. Refuses incomplete stores."""
    group, attrs = _open_complete(path)
    out = {name: group[name][...] for name in ARRAY_NAMES}
    out["attrs"] = attrs
    return out


def largest_epistemic_plane(path) -> dict:
    """The plane of a complete zarr prediction store through its node of largest epistemic sigma, for
    :func:`ase_mlrho.uncertainty.plot_uncertainty_plane`, read without loading the store: the argmax is
    found slab by slab along the first axis (one chunk row at a time), then one k-plane and one line are
    read. Returns ``grid``, ``node`` (i, j, k), ``plane`` and ``line`` (float64 density, sigma_aleatoric,
    sigma_epistemic, e/Bohr^3 as stored) and ``renormalisation_factor``."""
    group, attrs = _open_complete(path)
    g = attrs["grid"]
    grid = Grid(np.asarray(g["cell_bohr"], dtype=np.float64), tuple(g["shape"]), tuple(g["pbc"]))
    epi = group["sigma_epistemic"]
    step = int(epi.chunks[0])
    best, node = -np.inf, (0, 0, 0)
    for i0 in range(0, grid.shape[0], step):
        slab = epi[i0:i0 + step]
        flat = int(np.argmax(slab))
        if slab.flat[flat] > best:
            i, j, k = np.unravel_index(flat, slab.shape)
            best, node = float(slab.flat[flat]), (int(i0 + i), int(j), int(k))
    i, j, k = node
    return {"grid": grid, "node": node,
            "plane": {n: np.asarray(group[n][:, :, k], dtype=np.float64) for n in SIGMA_FIELDS},
            "line": {n: np.asarray(group[n][:, j, k], dtype=np.float64) for n in SIGMA_FIELDS},
            "renormalisation_factor": float(attrs.get("renormalisation_factor", 1.0))}


def verify_prediction(path) -> int:
    """Recompute every block's sha256 of a complete zarr store and compare it with the one recorded
    when the block was written. Returns the number of blocks checked; raises :class:`OutputError`
    naming the first corrupt block."""
    group, attrs = _open_complete(path)
    plan = ChunkPlan(tuple(attrs["grid"]["shape"]), tuple(attrs["block_shape"]))
    recorded = group["chunk_sha256"][...]
    arrays = {name: group[name] for name in ARRAY_NAMES}
    for i in range(plan.n_chunks):
        sl = plan.slices(i)
        if block_digest({n: a[sl] for n, a in arrays.items()}) != recorded[i].tobytes():
            raise OutputError(f"{path}: block {i} ({sl}) does not match its recorded sha256: the store is corrupt")
    return plan.n_chunks


class Accumulator:
    """In-memory field being assembled block by block (float64; memmap-backed when large)."""

    def __init__(self, shape, names, scratch_dir: Path | None):
        self.shape = shape
        n_bytes = 8 * int(np.prod(shape)) * len(names)
        self._tmp = None
        if n_bytes > MEMMAP_THRESHOLD_BYTES and scratch_dir is not None:
            self._tmp = tempfile.mkdtemp(prefix=".mlrho-", dir=scratch_dir)
            self.arrays = {n: np.lib.format.open_memmap(os.path.join(self._tmp, n + ".npy"), "w+", np.float64, shape)
                           for n in names}
        else:
            self.arrays = {n: np.empty(shape) for n in names}

    def add(self, plan: ChunkPlan, block: Block) -> None:
        sl = plan.slices(block.index)
        a = self.arrays
        if "density" in a:
            a["density"][sl] = np.clip(block.mean_raw, 0.0, None)
        if "sigma_aleatoric" in a:
            a["sigma_aleatoric"][sl] = block.sigma_aleatoric
        if "sigma_epistemic" in a:
            a["sigma_epistemic"][sl] = block.sigma_epistemic

    def scale(self, factor: float) -> None:
        for a in self.arrays.values():
            for i in range(a.shape[0]):  # plane by plane: no temporary of the whole field
                a[i] *= factor

    @property
    def on_disk(self) -> bool:
        """Whether the arrays are memmaps in a scratch directory (they go when :meth:`close` is called)."""
        return self._tmp is not None

    def close(self) -> None:
        if self._tmp is not None:
            self.arrays = {}
            shutil.rmtree(self._tmp, ignore_errors=True)


# ---------------------------------------------------------------- file writers (atomic)
def _write_cube(path: Path, out: SinkInput) -> Path:
    """Gaussian cube, ``ase.io.cube`` layout; values in electrons/Bohr^3 (the cube format's atomic
    units -- ``ase.io.cube`` writes and reads the numbers unconverted). Along a non-periodic
    direction the last node sits on the box face, so the voxel there is L / (N - 1)."""
    from ase.io.cube import write_cube
    from ase.units import Bohr

    from .files import atomic_write

    grid = out.grid
    cube_atoms = out.atoms.copy()
    if any(grid.pbc):
        cube_atoms.wrap(pbc=grid.pbc)
    cell = grid.cell_bohr * Bohr
    for d, (p, n) in enumerate(zip(grid.pbc, grid.shape)):
        if not p:
            cell[d] *= n / (n - 1)
    cube_atoms.set_cell(cell, scale_atoms=False)
    return atomic_write(path, lambda f: write_cube(f, cube_atoms, data=out.arrays["density"],
                                                   comment="ase-mlrho density, electrons/Bohr^3"))


def _write_npz(path: Path, out: SinkInput) -> Path:
    from .files import atomic_write

    a = out.arrays
    meta = {**out.attrs, "renormalisation_factor": out.renormalisation_factor, "electrons_raw": out.electrons_raw}
    arrays = {
        "density_e_per_bohr3": a["density"],
        "sigma_total_e_per_bohr3": np.sqrt(a["sigma_aleatoric"] ** 2 + a["sigma_epistemic"] ** 2),
        "sigma_aleatoric_e_per_bohr3": a["sigma_aleatoric"], "sigma_epistemic_e_per_bohr3": a["sigma_epistemic"],
        "cell_bohr": out.grid.cell_bohr, "pbc": np.array(out.grid.pbc), "numbers": out.structure.numbers,
        "positions_bohr": out.structure.positions_bohr, "metadata_json": np.array(json.dumps(meta)),
    }
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays), binary=True)


CUBE_SINK = FileSink("cube", (".cube",), ("density",), _write_cube)
NPZ_SINK = FileSink("npz", (".npz",), SIGMA_FIELDS, _write_npz)
#: the outputs the core writes itself (besides the zarr store)
CORE_SINKS = (CUBE_SINK, NPZ_SINK)
