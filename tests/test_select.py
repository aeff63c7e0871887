"""``mlrho select``: candidates ranked by the model's epistemic uncertainty, checked against fields predicted
directly (the score is the mean epistemic sigma of the whole field) and against what the model has seen (the
toy model was trained on the perfect 4-atom crystal at a = 4.05 A only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from ase_mlrho.domain import largest_hole
from ase_mlrho.cli import main
from ase_mlrho.inference import InferenceSettings, run_prediction
from ase_mlrho.model_files import load_model
from tests.test_inference import toy_model_path  # noqa: F401  (the session's toy model)


def _cells():
    seen = bulk("Al", "fcc", a=4.05, cubic=True)
    squeezed = bulk("Al", "fcc", a=3.75, cubic=True)  # 7 % compressed: far from the training data
    stretched = bulk("Al", "fcc", a=4.25, cubic=True)
    return seen, squeezed, stretched


def test_select_ranks_by_mean_epistemic_sigma(toy_model_path, tmp_path, capsys):  # noqa: F811
    seen, squeezed, stretched = _cells()
    write(tmp_path / "seen.xyz", seen)
    write(tmp_path / "traj.xyz", [stretched, squeezed])  # a trajectory: two frames, two candidates
    manifest = tmp_path / "round1.json"
    capsys.readouterr()
    assert main(["select", "-m", toy_model_path, str(tmp_path / "seen.xyz"), str(tmp_path / "traj.xyz"),
                 "--top", "2", "--seed", "3", "--json", "--manifest", str(manifest)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(manifest.read_text()) == report
    model = load_model(toy_model_path)
    expected, holes = {}, {}
    for name, frame, atoms in (("seen.xyz", 0, seen), ("traj.xyz", 0, stretched), ("traj.xyz", 1, squeezed)):
        field = run_prediction(model, atoms, None, InferenceSettings(seed=3)).field
        expected[(name, frame)] = float(field.sigma_epistemic.mean())
        holes[(name, frame)] = largest_hole(atoms, field.grid)[0]  # a k-d tree over the atoms
    got = {(c["source"].split("/")[-1], c["frame"]): c["score"] for c in report["candidates"]}
    assert got == pytest.approx(expected, rel=1e-12)
    got = {(c["source"].split("/")[-1], c["frame"]): c["largest_hole_bohr"] for c in report["candidates"]}
    assert got == pytest.approx(holes, rel=1e-6)
    scores = [c["score"] for c in report["candidates"]]
    assert scores == sorted(scores, reverse=True)  # most uncertain first
    order = sorted(expected, key=lambda k: -expected[k])
    assert [(c["file"].split("/")[-1], c["frame"]) for c in report["chosen"]] == order[:2]
    assert order[0] == ("traj.xyz", 1)  # the 7 % compressed cell, far from the training data, comes first
    assert expected[("traj.xyz", 1)] > 2 * expected[("seen.xyz", 0)]
    # plain output: K lines "FILE FRAME score", most uncertain first
    assert main(["select", "-m", toy_model_path, str(tmp_path / "seen.xyz"), str(tmp_path / "traj.xyz"),
                 "--top", "2", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [(ln.split()[0].split("/")[-1], int(ln.split()[1])) for ln in lines] == order[:2]
    assert np.isclose(float(lines[0].split()[2]), expected[order[0]], rtol=1e-4)


def test_select_by_electron_ranks_by_epistemic_sigma_per_electron(toy_model_path, tmp_path, capsys):  # noqa: F811
    """--by electron: the score is sqrt(2/pi) * integral sigma_epi dV / N_e in %, computed here from each
    candidate's field (mean sigma times the cell volume: the stretched cell's larger volume counts)."""
    seen, squeezed, stretched = _cells()
    write(tmp_path / "traj.xyz", [seen, stretched, squeezed])
    capsys.readouterr()
    assert main(["select", "-m", toy_model_path, str(tmp_path / "traj.xyz"), "--top", "3", "--by", "electron",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by"] == "electron" and report["score"].endswith("(%)")
    model = load_model(toy_model_path)
    expected = {}
    for frame, atoms in enumerate((seen, stretched, squeezed)):
        field = run_prediction(model, atoms, None, InferenceSettings()).field
        volume_bohr3 = atoms.get_volume() / 0.529177210903 ** 3
        expected[frame] = 100 * np.sqrt(2 / np.pi) * float(field.sigma_epistemic.mean()) * volume_bohr3 / 12.0
    got = {c["frame"]: c["score"] for c in report["candidates"]}
    assert got == pytest.approx(expected, rel=1e-6)
    assert [c["frame"] for c in report["chosen"]] == sorted(expected, key=lambda k: -expected[k])
    assert all(c["epistemic_eps_percent"] == c["score"] for c in report["candidates"])


@pytest.mark.parametrize("case", ["missing", "top", "species", "duplicate"])
def test_select_refuses_bad_input_with_one_line(case, toy_model_path, tmp_path, capsys):  # noqa: F811
    good = tmp_path / "al.xyz"
    write(good, bulk("Al", "fcc", a=4.05, cubic=True))
    args = ["select", "-m", toy_model_path, str(good)]
    if case == "missing":
        args[-1] = str(tmp_path / "nope.xyz")
    elif case == "top":
        args += ["--top", "0"]
    elif case == "species":
        cu = bulk("Cu", "fcc", a=3.6, cubic=True)
        write(tmp_path / "cu.xyz", cu)
        args.append(str(tmp_path / "cu.xyz"))
    else:  # the second frame of a trajectory holds a duplicated atom: named by file and frame, before any scoring
        frames = [bulk("Al", "fcc", a=4.05, cubic=True) for _ in range(2)]
        frames[1].positions[3] = frames[1].positions[2] + 0.1
        write(tmp_path / "traj.xyz", frames)
        args.append(str(tmp_path / "traj.xyz"))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlrho select: error:")
    if case == "duplicate":
        assert err[0].startswith("mlrho select: error: ") and "traj.xyz frame 1: atom 2 is 0.173 Angstrom from atom 3" in err[0]


def test_typicality_weights_are_a_kernel_density_written_out():
    """1-D data: the weight of a point is the Gaussian kernel density of the *other* candidates' points at it
    (Scott's bandwidth: n^(-1/5) times the standard deviation of all points), over its mean; summed by
    hand here."""
    from ase_mlrho.selection import typicality_weights

    rng = np.random.default_rng(0)
    parts = [rng.normal(0.0, 1.0, (200, 1)), rng.normal(0.2, 1.0, (150, 1)), rng.normal(5.0, 0.5, (40, 1))]
    w = typicality_weights(parts, components=3)
    x = np.concatenate(parts)[:, 0]
    z = (x - x.mean()) / x.std()
    h = len(z) ** (-1 / 5) * z.std(ddof=1)
    owner = np.repeat([0, 1, 2], [len(p) for p in parts])
    kern = np.exp(-0.5 * ((z[:, None] - z[None, :]) / h) ** 2)
    other = np.array([kern[i, owner != owner[i]].mean() for i in range(len(z))])
    assert np.concatenate(w) == pytest.approx(other / other.mean(), rel=1e-9)
    assert w[2].mean() < 0.1 * min(w[0].mean(), w[1].mean())  # the small, far cluster is atypical of the pool
    # constant features carry no information and are dropped; a second copy of a feature changes nothing
    w2 = typicality_weights([np.hstack([p, np.ones_like(p), p]) for p in parts], components=1)
    assert np.concatenate(w2) == pytest.approx(np.concatenate(w), rel=1e-9)
    assert [list(v) for v in typicality_weights(parts[:1])] == [[1.0] * 200]  # one candidate: nothing to compare


def test_density_sampling_shrinks_with_many_candidates():
    from ase_mlrho.selection import DensitySettings

    s = DensitySettings()
    assert [s.points_for(n) for n in (1, 18, 50, 1000, 10_000)] == [1000, 1000, 1000, 50, 20]
    with pytest.raises(ValueError, match="points_per_candidate"):
        DensitySettings(points_per_candidate=5)


def test_select_by_density_weights_sigma_by_typicality(toy_model_path, tmp_path, capsys):  # noqa: F811
    """Three copies of a slightly rattled cell and one 7 % compressed cell: by sigma the compressed one comes
    first; weighted by typicality its score falls against its mean sigma more than the common cells' do, and
    every score is the mean of sigma times weight over the sampled points (recomputed here)."""
    from ase_mlrho.descriptors import Descriptors
    from ase_mlrho.selection import DensitySettings, typicality_weights

    seen, squeezed, _ = _cells()
    frames = []
    for i in range(3):
        a = seen.copy()
        a.rattle(0.05, seed=i)
        frames.append(a)
    frames.append(squeezed)
    write(tmp_path / "pool.xyz", frames)
    capsys.readouterr()
    assert main(["select", "-m", toy_model_path, str(tmp_path / "pool.xyz"), "--by", "density", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by"] == "density"
    by_frame = {c["frame"]: c for c in report["candidates"]}
    ratio = {f: c["score"] / c["sigma_epistemic_mean_e_per_bohr3"] for f, c in by_frame.items()}
    assert ratio[3] < min(ratio[f] for f in range(3))
    model = load_model(toy_model_path)
    settings = DensitySettings()
    sig, desc = [], []
    for i, atoms in enumerate(frames):
        field = run_prediction(model, atoms, None, InferenceSettings()).field
        idx = np.random.default_rng([settings.seed, i]).choice(field.sigma_epistemic.size,
                                                               size=min(1000, field.sigma_epistemic.size),
                                                               replace=False)
        sig.append(field.sigma_epistemic.ravel()[idx])
        desc.append(Descriptors.from_atoms(model.spec, atoms).compute(field.grid.points_bohr_at(idx)))
    w = typicality_weights(desc)
    for i in range(4):
        assert by_frame[i]["score"] == pytest.approx(float(np.mean(sig[i] * w[i])), rel=1e-6)  # float32 fields
