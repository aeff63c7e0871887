"""The device path (dense torch descriptors + stacked network), run on the CPU, against float64 references.

References: the k-d tree descriptors in float64 (:meth:`Descriptors.compute_float64`, themselves
checked against brute force in test_neighbors_descriptors.py) and an explicit float64 forward pass of
every member and weight set, written out here. The bar (issue "Throughput"): the CPU path and the
device path agree with the float64 reference to 1e-5 relative at every point of a test cell.
"""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.units import Bohr

from ase_mlrho.blocks import box_flat_indices
from ase_mlrho.dense_descriptors import DenseDescriptors, compact_sub_blocks
from ase_mlrho.descriptors import Descriptors
from ase_mlrho.domain import largest_hole
from ase_mlrho.grid import Grid
from ase_mlrho.inference import InferenceSettings, run_prediction
from ase_mlrho.model import DensityEnsemble
from ase_mlrho.model_files import load_model
from ase_mlrho.predictor import Predictor


def _al_vacancy_cell():
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.08, seed=4)
    del atoms[3]
    return atoms


def _sige_cell():
    atoms = bulk("Si", "diamond", a=5.54, cubic=True)
    atoms.rattle(0.05, seed=2)
    atoms.numbers[[1, 2, 6]] = 32
    return atoms


def _compact_points(grid, corner, edge):
    box = tuple(slice(c, min(c + edge, n)) for c, n in zip(corner, grid.shape))
    return grid.points_bohr_at(box_flat_indices(grid.shape, box))


@pytest.mark.parametrize("name, make, corner", [
    ("al-pbe", _al_vacancy_cell, (20, 3, 9)),
    ("sige-pbe", _sige_cell, (2, 5, 0)),
    ("al-pbe", lambda: bulk("Al", "fcc", a=4.05, cubic=True), (0, 0, 0)),  # perfect crystal: ties everywhere
])
def test_dense_descriptors_equal_the_kd_tree_ones(name, make, corner):
    spec = load_model(name).spec
    atoms = make()
    ref = Descriptors.from_atoms(spec, atoms)
    grid = Grid.from_atoms(atoms, 0.4 if name == "sige-pbe" else 0.25)
    pts = _compact_points(grid, corner, 12)
    expected = ref.compute_float64(pts)
    got64 = DenseDescriptors(ref, dtype=torch.float64).compute(pts).numpy()
    np.testing.assert_allclose(got64, expected, rtol=0, atol=1e-10)
    dense32 = DenseDescriptors(ref)
    got32 = dense32.compute(pts).numpy()
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, expected, rtol=2e-6, atol=2e-5)
    assert dense32.fallback_points < len(pts)  # the dense route did the work, not the fallback
    # the compiled kernel (the default CPU path): float64 throughout, rounded once to float32
    fast = DenseDescriptors(ref, engine="numba")
    got = fast.compute(pts).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1.2e-7, atol=1e-30)
    assert fast.fallback_points < len(pts)


def test_perfect_crystal_ties_go_to_the_reference():
    """On a perfect crystal many points have tied nearest atoms; those must take the float64 route."""
    spec = load_model("al-pbe").spec
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    ref = Descriptors.from_atoms(spec, atoms)
    grid = Grid.from_atoms(atoms, 0.25)
    pts = _compact_points(grid, (0, 0, 0), 8)
    expected = ref.compute_float64(pts)
    for engine in ("torch", "numba"):
        dense = DenseDescriptors(ref, engine=engine)
        got = dense.compute(pts).numpy()
        assert dense.fallback_points > 0
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-5)


def test_numba_engine_with_wide_selections_and_uneven_centres():
    """Blocks far larger than a sub-block (hundreds of images, the early stop doing the work) and
    Set III centres that are not equally spaced (the direct Gaussians instead of the recursion)."""
    import dataclasses

    spec = dataclasses.replace(load_model("al-pbe").spec, angular_centers_bohr=(0.0, 1.0, 2.5, 5.0, 7.0))
    atoms = _al_vacancy_cell().repeat((1, 2, 2))
    ref = Descriptors.from_atoms(spec, atoms)
    grid = Grid.from_atoms(atoms, 0.3)
    pts = _compact_points(grid, (5, 11, 2), 20)
    got = DenseDescriptors(ref, engine="numba").compute(pts).numpy()
    np.testing.assert_allclose(got, ref.compute_float64(pts), rtol=1.2e-7, atol=1e-30)


def test_sub_blocks_tile_the_box_once():
    shape = (13, 7, 30)
    seen = np.zeros(shape, dtype=int)
    for sub in compact_sub_blocks(shape, 100):
        assert np.prod([s.stop - s.start for s in sub]) <= 100
        seen[sub] += 1
    assert np.all(seen == 1)


def _float64_forward(network, desc64, weight_sets):
    """Mean and sigmas of one member, every layer written out in float64."""
    x = (desc64 - network.x_mean.double()) / network.x_std.double()
    mus, sig2 = [], []
    n_sets = weight_sets[0][0].shape[0]
    for s in range(n_sets):
        h = x
        for i, (w, b) in enumerate(weight_sets):
            h = h @ w[s].double().T + b[s].double()
            if i < len(weight_sets) - 1:
                h = h * torch.sigmoid(h)
        mus.append(h[:, 0])
        sig2.append((torch.nn.functional.softplus(h[:, 1]) + 1e-4) ** 2)
    mu, sig2 = torch.stack(mus), torch.stack(sig2)
    scale = network.y_std.double() * network.sigma_scale.double()
    baseline = network.baseline(desc64)
    mean = baseline + network.y_mean.double() + network.y_std.double() * mu.mean(0)
    return mean, scale ** 2 * sig2.mean(0), scale ** 2 * mu.var(0, unbiased=False)


def _float64_field(model, atoms, grid, n_samples, seed):
    """The raw (unrenormalised) mean and sigmas at every grid point, all in float64."""
    desc = torch.as_tensor(Descriptors.from_atoms(model.spec, atoms).compute_float64(grid.points_bohr(0, None)))
    net = model.network
    sets = net.sample_weight_sets(n_samples, seed)
    assert isinstance(net, DensityEnsemble)
    parts = [_float64_forward(m, desc, w) for m, w in zip(net.members, sets)]
    means = torch.stack([p[0] for p in parts])
    ale = torch.stack([p[1] for p in parts]).mean(0)
    epi = torch.stack([p[2] for p in parts]).mean(0) + means.var(0, unbiased=False)
    s = float(net.sigma_scale)
    return means.mean(0).numpy(), s * np.sqrt(ale.numpy()), s * np.sqrt(epi.numpy())


def test_cpu_and_device_paths_match_the_float64_reference():
    model = load_model("al-pbe")
    atoms = _al_vacancy_cell()
    grid = Grid.from_atoms(atoms, model.mesh_spacing_bohr)
    # 8 weight sets (2 per member), whatever the model's default: with one set per member the epistemic sigma
    # is the spread of 4 outputs, which at some points nearly coincide, and float32 rounding then leaves it
    # ~1e-4 relative (4.6e-5 here and 5.7e-5 on the dense path with the shipped weights, 8.8e-5 and 1.2e-4 with
    # session 7's); the density and aleatoric sigma do not depend on that choice
    ref_mean, ref_ale, ref_epi = _float64_field(model, atoms, grid, 8, seed=5)
    hole, flat = largest_hole(atoms, grid)  # the vacancy's hole, from a k-d tree over the atoms
    for device, tables in ((None, "structure"), (None, "block"), ("cpu", "structure")):
        run = run_prediction(model, atoms, None, InferenceSettings(n_samples=8, seed=5, device=device,
                                                                   chunk_points=20000, neighbour_tables=tables))
        f = run.field
        raw = f.density.reshape(-1) / f.renormalisation_factor  # no point is clipped in bulk Al
        assert np.all(ref_mean > 0)
        np.testing.assert_allclose(raw, ref_mean, rtol=1e-5, atol=0)
        np.testing.assert_allclose(f.sigma_aleatoric.reshape(-1) / f.renormalisation_factor, ref_ale, rtol=1e-5)
        # the epistemic sigma is the spread of 8 float32 outputs that agree to ~1e-2 of their size: float32
        # rounding leaves it ~2e-5 relative (measured 1.7e-5 on the k-d tree path, 2.4e-5 on the dense one)
        epi = f.sigma_epistemic.reshape(-1) / f.renormalisation_factor
        np.testing.assert_allclose(epi, ref_epi, rtol=1e-4)
        # the nearest-atom distance every path reads from its descriptors
        assert run.summary.largest_hole_bohr == pytest.approx(hole, rel=1e-6)
        np.testing.assert_allclose(run.summary.largest_hole_position_ang,
                                   grid.points_bohr_at(np.array([flat]))[0] * Bohr, atol=1e-12)


def _real_descriptors(model, n_points: int = 700) -> np.ndarray:
    """Descriptors of random points in a thermal cell of the model's material (what the networks see; random
    feature vectors would put Set II cosines outside [-1, 1] and push the sigmas into float32's noise)."""
    rng = np.random.default_rng(1)
    if "Ge" in model.species:
        atoms = bulk("Si", "diamond", a=5.54, cubic=True)
        atoms.symbols[rng.choice(len(atoms), 4, replace=False)] = "Ge"
    else:
        atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1)
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    points = rng.random((n_points, 3)) @ (atoms.cell.array / Bohr)
    return Descriptors.from_atoms(model.spec, atoms).compute(points).astype(np.float32)


def test_predictor_equals_the_member_by_member_prediction():
    for name in ("al-pbe", "al-pbe-gamma", "sige-pbe"):
        model = load_model(name)
        net = model.network
        x = _real_descriptors(model)
        sets = net.sample_weight_sets(8, 3)
        ref = net.predict(x, weight_sets=sets)
        mean, ale, epi = Predictor(net, sets).predict(torch.as_tensor(x))
        np.testing.assert_allclose(mean.numpy(), ref.mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(ale.numpy(), ref.sigma_aleatoric, rtol=1e-5, atol=1e-10)
        np.testing.assert_allclose(epi.numpy(), ref.sigma_epistemic, rtol=1e-4, atol=1e-9)


def test_unusable_devices_are_refused_up_front():
    with pytest.raises(ValueError, match="unknown torch device"):
        InferenceSettings(device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            InferenceSettings(device="cuda")


def test_device_path_with_per_block_tables_equals_structure_tables():
    """Very large cells cut a cluster of atoms per block; the dense route over it gives the same field."""
    model = load_model("al-pbe")
    atoms = _al_vacancy_cell()
    fields = [run_prediction(model, atoms, None, InferenceSettings(seed=2, device="cpu", neighbour_tables=t,
                                                                   chunk_points=9000)).field
              for t in ("structure", "block")]
    np.testing.assert_allclose(fields[1].density, fields[0].density, rtol=1e-6)
    np.testing.assert_allclose(fields[1].sigma_epistemic, fields[0].sigma_epistemic, rtol=1e-4)


def test_batched_blocks_of_unequal_size_keep_their_rows():
    spec = load_model("al-pbe").spec
    atoms = _al_vacancy_cell()
    ref = Descriptors.from_atoms(spec, atoms)
    grid = Grid.from_atoms(atoms, 0.25)
    blocks = [_compact_points(grid, c, e) for c, e in (((0, 0, 0), 8), ((60, 28, 28), 5), ((30, 10, 3), 7))]
    got = DenseDescriptors(ref, dtype=torch.float64).compute_blocks(blocks).numpy()
    np.testing.assert_allclose(got, ref.compute_float64(np.concatenate(blocks)), rtol=0, atol=1e-10)


def test_settings_refuse_bad_values_and_pick_the_batch_per_path():
    """Every check of InferenceSettings runs (a non-positive mesh once went unchecked), and the default
    batch is cache-sized on CPUs, large on an accelerator."""
    from ase_mlrho.blocks import DEFAULT_BATCH_POINTS

    for bad in (dict(mesh_spacing_bohr=0.0), dict(mesh_spacing_bohr=-0.25), dict(batch_points=0),
                dict(chunk_points=0), dict(n_samples=-1), dict(neighbour_tables="all")):
        with pytest.raises(ValueError):
            InferenceSettings(**bad)
    assert InferenceSettings().resolved_batch_points == DEFAULT_BATCH_POINTS
    assert InferenceSettings(device="cpu").resolved_batch_points == DEFAULT_BATCH_POINTS
    assert InferenceSettings(batch_points=777, device="cpu").resolved_batch_points == 777
