"""Streaming inference: chunking, executors, sinks, resume, symmetry, and ``mlrho predict``.

Everything runs on a toy model trained for two epochs on the committed 4-atom Al fixture (the
shipped model is not needed): the numbers it predicts are poor, but the properties tested here --
conservation, equivariance, reproducibility, bookkeeping -- hold for any model.
"""

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from ase.build import bulk
from ase.io import write
from ase.units import Bohr

from ase_mlrho.cli import main
from ase_mlrho.grid import Grid
from sparc_bridge.density_file import DENS_SINK
from ase_mlrho.inference import (CORE_SINKS, ARRAY_NAMES, ChunkPlan, ExecutorSettings, InferenceSettings, OutputError,
                                 open_prediction, run_prediction, verify_prediction)
from ase_mlrho.model_files import load_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@functools.lru_cache(maxsize=None)
def train_toy_model(directory: str) -> str:
    """Train (once per test session) a small model on the al4 fixture, save it, return its path."""
    from sparc_bridge.snapshots import load_snapshot
    from ase_mlrho.descriptors import DescriptorSpec
    from ase_mlrho.model import NetworkConfig
    from ase_mlrho.model_files import save_model
    from ase_mlrho.training import TrainingConfig, train_model

    snap = load_snapshot(FIXTURES / "al4")
    cfg = TrainingConfig(points_per_snapshot=3000, val_points_per_snapshot=2000, epochs=2, batch_size=512, seed=0)
    model = train_model([snap], [snap], DescriptorSpec(m=12, m_s=2, k=3, species=("Al",)),
                        NetworkConfig(hidden=(16, 16)), cfg, name="toy-al", progress=False, log=lambda m: None)
    path = Path(directory) / "toy-al.safetensors"
    save_model(model, path)
    return str(path)


@pytest.fixture(scope="session")
def toy_model_path(tmp_path_factory):
    return train_toy_model(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def toy_model(toy_model_path):
    return load_model(toy_model_path)


def al_cell(repeat=(1, 1, 1), rattle=0.05, seed=1):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat(repeat)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def field_arrays(field):
    return {"density": field.density, "sigma_aleatoric": field.sigma_aleatoric, "sigma_epistemic": field.sigma_epistemic}


def store_checksum(path) -> str:
    data = open_prediction(path)
    h = hashlib.sha256()
    for name in ARRAY_NAMES:
        h.update(np.ascontiguousarray(data[name]).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- chunking
def test_chunk_plan_covers_every_node_once():
    for shape, chunk in (((7, 5, 3), 1), ((7, 5, 3), 4), ((7, 5, 3), 16), ((7, 5, 3), 40), ((7, 5, 3), 10 ** 6),
                         ((31, 31, 31), 2 ** 18)):
        plan = ChunkPlan.for_grid(shape, chunk)
        seen = np.concatenate([plan.flat_indices(i) for i in range(plan.n_chunks)])
        assert np.array_equal(np.sort(seen), np.arange(np.prod(shape)))
        assert max(plan.flat_indices(i).size for i in range(plan.n_chunks)) <= max(chunk, 1)
        # blocks are numbered in file order: the first block starts at node 0, the last ends at the last node
        assert plan.flat_indices(0)[0] == 0 and plan.flat_indices(plan.n_chunks - 1)[-1] == np.prod(shape) - 1
    assert ChunkPlan.for_grid((92, 92, 92), 2 ** 18).block == (23, 92, 92)  # 4 equal slabs, not 30+30+30+2
    assert ChunkPlan.for_grid((552, 552, 552), 2 ** 18).block == (1, 276, 552)


def test_any_chunk_size_gives_the_same_field_and_the_exact_electron_count(toy_model):
    atoms = al_cell((2, 1, 1))
    whole = run_prediction(toy_model, atoms, settings=InferenceSettings(chunk_points=10 ** 7)).field
    odd = run_prediction(toy_model, atoms, settings=InferenceSettings(chunk_points=7777, batch_points=1000)).field
    assert whole.density.shape == Grid.from_atoms(atoms, 0.25).shape == (62, 31, 31)
    for name, a in field_arrays(whole).items():
        b = field_arrays(odd)[name]
        assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(a)), name
    # clipped at zero and renormalised to 8 atoms x 3 valence electrons, to round-off
    assert whole.density.min() >= 0
    assert abs(whole.density.sum() * whole.grid.dv_bohr3 - 24.0) < 1e-10
    assert abs(whole.renormalisation_factor - 24.0 / whole.electrons_raw) < 0.01
    # sigmas scaled by the same factor, total = quadrature sum
    assert np.allclose(whole.sigma_total ** 2, whole.sigma_aleatoric ** 2 + whole.sigma_epistemic ** 2)
    assert whole.sigma_epistemic.max() > 0


@pytest.mark.parametrize("n_electrons", [0.5, 1.2, 3.0])
def test_posterior_renormalisation_is_the_constrained_optimum(n_electrons):
    """max(0, mu + lambda var) against the optimality (KKT) conditions of the convex problem it solves (they
    prove it optimal), and against a root search on its multiplier."""
    from ase_mlrho.inference import renormalise_posterior

    rng = np.random.default_rng(0)
    mu, var, dv = rng.normal(0.05, 0.05, 40), rng.uniform(1e-4, 4e-3, 40) ** 2, 0.3
    rho, lam = renormalise_posterior(mu, var, dv, n_electrons)
    m0 = np.clip(mu, 0, None)
    assert rho.sum() * dv == pytest.approx(n_electrons, rel=1e-13) and rho.min() >= 0
    pos = rho > 0
    assert np.allclose((rho[pos] - m0[pos]) / var[pos], lam, rtol=1e-9)  # one multiplier on the free points
    assert np.all(m0[~pos] + lam * var[~pos] <= 1e-15)  # the clipped ones would go negative
    assert (~pos).any() == (n_electrons < m0.sum() * dv)  # only removing charge clips
    # an independent solution: the root of the monotone integral of max(0, m0 + t var) in t
    from scipy.optimize import brentq

    mult = brentq(lambda t: np.maximum(m0 + t * var, 0).sum() * dv - n_electrons, -1e9, 1e9, xtol=1e-12,
                  rtol=1e-15)
    assert lam == pytest.approx(mult, rel=1e-9) and np.allclose(rho, np.maximum(m0 + mult * var, 0), rtol=1e-9)
    # equal variances: a uniform shift, not a scaling
    flat, _ = renormalise_posterior(np.full(10, 0.2), np.full(10, 1e-4), 1.0, 3.0)
    assert np.allclose(flat, 0.3)
    with pytest.raises(ValueError, match="sigma is zero"):
        renormalise_posterior(mu, np.zeros(40), dv, 1.0)


def test_posterior_renormalisation_in_the_pipeline(toy_model, tmp_path):
    """The in-memory run with renormalisation='posterior' is the pure function applied to the scale run's
    clipped field and sigmas (undone by its factor), with the exact count; the sigmas are not scaled; a zarr
    store is refused before any work."""
    from ase_mlrho.inference import renormalise_posterior

    atoms = al_cell((1, 1, 1))
    scale = run_prediction(toy_model, atoms).field
    post = run_prediction(toy_model, atoms, settings=InferenceSettings(renormalisation="posterior")).field
    f = scale.renormalisation_factor
    expected, _ = renormalise_posterior(scale.density / f, (scale.sigma_total / f) ** 2, scale.grid.dv_bohr3, 12.0)
    assert np.allclose(post.density, expected, rtol=1e-9, atol=1e-12)
    assert post.density.sum() * post.grid.dv_bohr3 == pytest.approx(12.0, rel=1e-12)
    assert np.allclose(post.sigma_epistemic, scale.sigma_epistemic / f, rtol=1e-12)
    assert post.renormalisation_factor == 1.0
    with pytest.raises(ValueError, match="posterior"):
        run_prediction(toy_model, atoms, tmp_path / "x.zarr", InferenceSettings(renormalisation="posterior"))
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="renormalisation"):
        InferenceSettings(renormalisation="uniform")


def test_translation_by_a_grid_vector_shifts_the_field_by_that_many_nodes(toy_model):
    atoms = al_cell((1, 1, 1), rattle=0.1, seed=3)
    base = run_prediction(toy_model, atoms).field
    shift = (5, -3, 2)
    moved = atoms.copy()
    moved.translate(np.asarray(shift) @ (base.grid.step_vectors_bohr * Bohr))
    field = run_prediction(toy_model, moved).field
    for name, a in field_arrays(base).items():
        expected = np.roll(a, shift, axis=(0, 1, 2))
        assert np.max(np.abs(field_arrays(field)[name] - expected)) <= 1e-5 * np.max(np.abs(a)), name


def test_a_2x2x2_supercell_predicts_the_tiled_field(toy_model):
    atoms = al_cell((1, 1, 1), rattle=0.08, seed=4)
    unit = run_prediction(toy_model, atoms).field
    big = run_prediction(toy_model, atoms.repeat(2), settings=InferenceSettings(chunk_points=65536)).field
    assert big.density.shape == tuple(2 * n for n in unit.density.shape)
    for name, a in field_arrays(unit).items():
        tiled = np.tile(a, (2, 2, 2))
        # float32 network: agreement to float32 round-off of the largest value
        assert np.max(np.abs(field_arrays(big)[name] - tiled)) <= 2e-6 * np.max(np.abs(a)), name


# ---------------------------------------------------------------- executors and zarr
def test_processes_and_dask_give_bit_identical_fields_and_stores(toy_model, tmp_path):
    atoms = al_cell((2, 1, 1))
    settings = InferenceSettings(chunk_points=20000)
    serial = run_prediction(toy_model, atoms, settings=settings).field
    procs = run_prediction(toy_model, atoms, settings=settings, executor=ExecutorSettings("processes", 2)).field
    for name, a in field_arrays(serial).items():
        assert np.array_equal(a, field_arrays(procs)[name]), name
    run_prediction(toy_model, atoms, tmp_path / "serial.zarr", settings=settings)
    run = run_prediction(toy_model, atoms, tmp_path / "dask.zarr", settings=settings,
                         executor=ExecutorSettings("dask", 2))
    assert run.summary.executor == "dask" and run.summary.chunks == 4
    assert store_checksum(tmp_path / "dask.zarr") == store_checksum(tmp_path / "serial.zarr")


def test_zarr_store_round_trips_with_units_grid_model_and_checksums(toy_model, tmp_path):
    atoms = al_cell((2, 1, 1))
    settings = InferenceSettings(chunk_points=20000)
    field = run_prediction(toy_model, atoms, settings=settings).field
    out = tmp_path / "rho.zarr"
    summary = run_prediction(toy_model, atoms, out, settings=settings).summary
    assert summary.output == str(out) and not (tmp_path / "rho.zarr.partial").exists()
    data = open_prediction(out)
    attrs = data["attrs"]
    assert attrs["units"] == "electrons/Bohr^3" and attrs["complete"] is True
    assert attrs["grid"]["shape"] == [62, 31, 31] and np.allclose(attrs["grid"]["cell_bohr"], field.grid.cell_bohr)
    assert attrs["model"]["name"] == "toy-al" and attrs["n_samples"] == 8 and attrs["seed"] == 0
    assert attrs["renormalisation_factor"] == pytest.approx(field.renormalisation_factor, rel=1e-14)
    assert data["density"].dtype == np.float32 and data["density"].shape == (62, 31, 31)
    # the store holds the in-memory field to float32 precision, and still the exact electron count
    for name in ("density", "sigma_aleatoric", "sigma_epistemic", "sigma_total"):
        ref = getattr(field, name)
        assert np.max(np.abs(data[name] - ref)) <= 3e-7 * np.max(ref), name
    assert abs(data["density"].sum(dtype=np.float64) * field.grid.dv_bohr3 - 24.0) < 1e-4
    # every block matches the sha256 recorded when it was written; a flipped value is caught
    assert verify_prediction(out) == 4
    import zarr

    zarr.open_group(str(out), mode="r+")["sigma_epistemic"][40, 3, 7] = 1.0
    with pytest.raises(OutputError, match="block 2 .*sha256"):
        verify_prediction(out)


def test_an_interrupted_run_resumes_to_the_same_store(toy_model, tmp_path):
    atoms = al_cell((2, 1, 1))
    settings = InferenceSettings(chunk_points=8192)
    run_prediction(toy_model, atoms, tmp_path / "fresh.zarr", settings=settings)

    class Interrupted(Exception):
        pass

    def stop_after_three(index):
        if index == 2:
            raise Interrupted

    out = tmp_path / "resumed.zarr"
    with pytest.raises(Interrupted):
        run_prediction(toy_model, atoms, out, settings=settings, on_block=stop_after_three)
    assert not out.exists() and (tmp_path / "resumed.zarr.partial").is_dir()
    # a different job (other seed) must not be mixed into the partial store
    with pytest.raises(OutputError, match="different prediction"):
        run_prediction(toy_model, atoms, out, settings=InferenceSettings(chunk_points=8192, seed=1))
    summary = run_prediction(toy_model, atoms, out, settings=settings).summary
    assert summary.chunks_resumed == 3 and summary.chunks == 8
    assert store_checksum(out) == store_checksum(tmp_path / "fresh.zarr")
    assert verify_prediction(out) == 8


def test_a_killed_cli_run_resumes_to_the_same_store(toy_model_path, tmp_path):
    """SIGKILL a real `mlrho predict` once a few blocks are on disk; the rerun finishes the store."""
    import zarr

    xyz = tmp_path / "al32.xyz"
    write(xyz, al_cell((2, 2, 2)))
    out = tmp_path / "al32.zarr"
    partial = tmp_path / "al32.zarr.partial"
    cmd = [sys.executable, "-m", "ase_mlrho.cli", "predict", str(xyz), "-m", toy_model_path, "-o", str(out),
           "--chunk-points", "3844", "--quiet", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = int(np.count_nonzero(zarr.open_group(str(partial), mode="r")["chunk_state"][:]))
        except Exception:  # noqa: BLE001 - the store is still being created
            done = 0
        if done >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert done >= 3 and not out.exists(), "the run should have been killed part-way"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["chunks_resumed"] >= 3 and report["grid_shape"] == [62, 62, 62]
    model = load_model(toy_model_path)
    from ase.io import read

    run_prediction(model, read(xyz), tmp_path / "fresh.zarr", settings=InferenceSettings(chunk_points=3844))
    assert store_checksum(out) == store_checksum(tmp_path / "fresh.zarr")


def test_cube_dens_and_npz_outputs_hold_the_field_in_e_per_bohr3(toy_model, tmp_path):
    from ase.io.cube import read_cube_data

    from sparc_bridge.density_file import read_density

    atoms = al_cell((1, 1, 1))
    field = run_prediction(toy_model, atoms).field
    run_prediction(toy_model, atoms, tmp_path / "rho.cube")
    run_prediction(toy_model, atoms, tmp_path / "rho.dens", sinks=(*CORE_SINKS, DENS_SINK))
    run_prediction(toy_model, atoms, tmp_path / "rho.npz")
    cube, cube_atoms = read_cube_data(str(tmp_path / "rho.cube"))
    assert cube.shape == field.density.shape and len(cube_atoms) == 4
    assert np.allclose(cube, field.density, rtol=1e-5, atol=1e-9)  # ase writes %e: 6 digits
    dens = read_density(tmp_path / "rho.dens")
    assert np.allclose(dens.density_e_per_bohr3, field.density, rtol=1e-10, atol=0)
    assert np.allclose(dens.cell_bohr, field.grid.cell_bohr, atol=1e-10)
    npz = np.load(tmp_path / "rho.npz")
    assert np.array_equal(npz["density_e_per_bohr3"], field.density)
    assert np.array_equal(npz["sigma_epistemic_e_per_bohr3"], field.sigma_epistemic)
    assert json.loads(str(npz["metadata_json"]))["units"] == "electrons/Bohr^3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rho.cube", "rho.dens", "rho.npz"]  # no temporaries


# ---------------------------------------------------------------- the command line
def test_predict_json_prints_one_object_with_the_documented_keys(toy_model_path, tmp_path, capsys):
    xyz = tmp_path / "al.xyz"
    write(xyz, al_cell((1, 1, 1)))
    capsys.readouterr()
    assert main(["predict", str(xyz), "-m", toy_model_path, "-o", str(tmp_path / "al.npz"), "--json",
                 "--quiet", "--samples", "4", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert out.strip().count("\n") == 0
    for key in ("natoms", "grid_shape", "n_electrons", "electrons_raw", "seconds", "points_per_second",
                "sigma_total_max_e_per_bohr3", "sigma_total_mean_e_per_bohr3", "ood_fraction", "output"):
        assert key in report, key
    assert report["natoms"] == 4 and report["grid_shape"] == [31, 31, 31] and report["n_electrons"] == 12.0
    npz = np.load(tmp_path / "al.npz")
    sig = npz["sigma_total_e_per_bohr3"]
    assert report["sigma_total_max_e_per_bohr3"] == pytest.approx(sig.max(), rel=1e-12)
    assert report["sigma_total_mean_e_per_bohr3"] == pytest.approx(sig.mean(), rel=1e-9)
    thr = load_model(toy_model_path).epistemic_sigma_validation_max
    expected_ood = np.mean(npz["sigma_epistemic_e_per_bohr3"] / report["renormalisation_factor"] > thr)
    assert report["ood_fraction"] == pytest.approx(expected_ood, abs=1e-6)
    # the eps the sigma predicts: sqrt(2/pi) * integral sigma dV / N_e, from the written field
    volume_bohr3 = al_cell((1, 1, 1)).get_volume() / 0.529177210903 ** 3
    brute = 100 * np.sqrt(2 / np.pi) * sig.astype(np.float64).mean() * volume_bohr3 / 12.0
    assert report["expected_eps_percent"] == pytest.approx(brute, rel=1e-6)


def test_predict_renormalise_posterior_writes_the_posterior_field(toy_model, toy_model_path, tmp_path, capsys):
    write(tmp_path / "al.xyz", al_cell((1, 1, 1)))
    out = tmp_path / "rho.npz"
    assert main(["predict", str(tmp_path / "al.xyz"), "-m", toy_model_path, "-o", str(out), "--renormalise",
                 "posterior", "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["renormalisation_factor"] == 1.0
    field = run_prediction(toy_model, al_cell((1, 1, 1)), settings=InferenceSettings(renormalisation="posterior")).field
    written = np.load(out)["density_e_per_bohr3"]  # the structure went through an xyz file: float32-level rounding
    assert np.max(np.abs(written - field.density)) <= 1e-6 * field.density.max()
    assert written.sum() * field.grid.dv_bohr3 == pytest.approx(12.0, rel=1e-12)
    assert main(["predict", str(tmp_path / "al.xyz"), "-m", toy_model_path, "-o", str(tmp_path / "r.zarr"),
                 "--renormalise", "posterior", "--quiet"]) == 2
    assert "posterior" in capsys.readouterr().err and not (tmp_path / "r.zarr").exists()


def test_predict_warns_when_the_structure_looks_out_of_distribution(toy_model_path, tmp_path, capsys):
    # the toy model saw only the perfect crystal at a = 4.05 A: that is in distribution, 6 % compression is not
    for a_ang, warned in ((4.05, False), (3.8, True)):
        write(tmp_path / "al.xyz", bulk("Al", "fcc", a=a_ang, cubic=True))
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "al.xyz"), "-m", toy_model_path, "--json", "--quiet"]) == 0
        captured = capsys.readouterr()
        assert (json.loads(captured.out)["ood_fraction"] > 0.01) is warned
        assert ("out of distribution" in captured.err) is warned


def test_predict_json_from_a_sparc_ion_file_is_pure_json(toy_model_path, tmp_path, capsys):
    """sparc-x-api prints a line per pseudopotential when it reads a .ion file: none of it reaches stdout."""
    from sparc_bridge.inputs import SparcSettings, write_scf_input

    write_scf_input(al_cell((1, 1, 1)), tmp_path, SparcSettings())
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "SPARC.ion"), "-m", toy_model_path, "--json", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["natoms"] == 4 and out.strip().count("\n") == 0


def test_predict_plot_draws_the_plane_of_the_largest_epistemic_sigma(toy_model_path, tmp_path, capsys):
    """--plot writes a PNG of the grid plane through the node of largest epistemic sigma; that node, found here
    from the written .npz, is the one the JSON report names; from a .zarr store, read slab by slab, the same node.
    Refused before any work: a non-PNG name, .cube or .dens output (they keep no sigmas), an existing figure
    without --overwrite."""
    atoms = al_cell((1, 1, 1))
    del atoms[3]  # a vacancy: the largest sigma sits somewhere in particular
    write(tmp_path / "vac.xyz", atoms)
    fig, npz = tmp_path / "vac.png", tmp_path / "vac.npz"
    args = ["predict", str(tmp_path / "vac.xyz"), "-m", toy_model_path, "--quiet", "--samples", "4"]
    capsys.readouterr()
    assert main(args + ["-o", str(npz), "--plot", str(fig), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    epi = np.load(npz)["sigma_epistemic_e_per_bohr3"]
    assert report["plot"]["largest_epistemic_sigma_node"] == list(np.unravel_index(np.argmax(epi), epi.shape))
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 20_000
    # from a zarr store, read slab by slab (chunks of 3,000 points: 11 slabs along the first axis)
    store, zfig = tmp_path / "vac.zarr", tmp_path / "vac_zarr.png"
    assert main(args + ["-o", str(store), "--chunk-points", "3000", "--plot", str(zfig), "--json"]) == 0
    zreport = json.loads(capsys.readouterr().out)
    zepi = zarr.open_group(str(store), mode="r")["sigma_epistemic"]
    assert zepi.chunks[0] < zepi.shape[0] // 4
    zepi = zepi[...]
    assert zreport["plot"]["largest_epistemic_sigma_node"] == list(np.unravel_index(np.argmax(zepi), zepi.shape))
    assert zreport["plot"]["largest_epistemic_sigma_node"] == report["plot"]["largest_epistemic_sigma_node"]
    assert zfig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for extra, message in ((["--plot", str(tmp_path / "v.pdf")], "PNG"),
                           (["-o", str(tmp_path / "v.cube"), "--plot", str(tmp_path / "v.png")], "does not keep"),
                           (["-o", str(tmp_path / "v.dens"), "--plot", str(tmp_path / "v.png")], "does not keep"),
                           (["--plot", str(fig)], "already exists")):
        before = sorted(os.listdir(tmp_path))
        assert main(args + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("ext", ["cube", "npz", "zarr"])
def test_every_output_is_refused_when_it_exists_unless_overwrite(ext, toy_model_path, tmp_path, capsys):
    xyz = tmp_path / "al.xyz"
    write(xyz, al_cell((1, 1, 1)))
    out = tmp_path / f"al.{ext}"
    args = ["predict", str(xyz), "-m", toy_model_path, "-o", str(out), "--quiet", "--samples", "2"]
    assert main(args) == 0
    stamp = out.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err and out.stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0


@pytest.mark.parametrize("case", ["missing", "unreadable", "unknown_species", "no_directory", "not_writable",
                                  "unknown_format", "empty"])
def test_predict_bad_input_fails_with_one_line_and_no_output(case, toy_model_path, tmp_path, capsys):
    good = tmp_path / "al.xyz"
    write(good, al_cell((1, 1, 1)))
    structure, output = str(good), str(tmp_path / "out.zarr")
    if case == "missing":
        structure = str(tmp_path / "nope.xyz")
    elif case == "unreadable":
        structure = str(tmp_path / "junk.xyz")
        Path(structure).write_bytes(b"this is not\x00 a structure\n")
    elif case == "unknown_species":
        cu = al_cell((1, 1, 1))
        cu[0].symbol = "Cu"
        structure = str(tmp_path / "cu.xyz")
        write(structure, cu)
    elif case == "no_directory":
        output = str(tmp_path / "missing_dir" / "out.zarr")
    elif case == "not_writable":
        output = "/proc/out.cube"  # not writable even for root
    elif case == "unknown_format":
        output = str(tmp_path / "out.vasp")
    elif case == "empty":
        structure = str(tmp_path / "empty.xyz")
        Path(structure).write_text("0\n\n")
    before = sorted(os.listdir(tmp_path))
    capsys.readouterr()
    rc = main(["predict", structure, "-m", toy_model_path, "-o", output, "--quiet"])
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlrho predict: error: "), captured.err
    assert captured.out == ""
    assert sorted(os.listdir(tmp_path)) == before  # no partial output of any kind
    expected = {"missing": "does not exist", "unreadable": "cannot read", "unknown_species": "knows Al; structure has Cu",
                "no_directory": "does not exist", "not_writable": "not writable", "unknown_format": "unknown format",
                "empty": "no atoms"}[case]
    assert expected in lines[0]
