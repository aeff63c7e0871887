"""``mlrho select``: candidates ranked by the model's epistemic uncertainty, checked against fields predicted
directly (the score is the mean epistemic sigma of the whole field) and against what the model has seen (the
toy model was trained on the perfect 4-atom crystal at a = 4.05 A only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

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
    expected = {}
    for name, frame, atoms in (("seen.xyz", 0, seen), ("traj.xyz", 0, stretched), ("traj.xyz", 1, squeezed)):
        field = run_prediction(model, atoms, None, InferenceSettings(seed=3)).field
        expected[(name, frame)] = float(field.sigma_epistemic.mean())
    got = {(c["source"].split("/")[-1], c["frame"]): c["score"] for c in report["candidates"]}
    assert got == pytest.approx(expected, rel=1e-12)
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


@pytest.mark.parametrize("case", ["missing", "top", "species"])
def test_select_refuses_bad_input_with_one_line(case, toy_model_path, tmp_path, capsys):  # noqa: F811
    good = tmp_path / "al.xyz"
    write(good, bulk("Al", "fcc", a=4.05, cubic=True))
    args = ["select", "-m", toy_model_path, str(good)]
    if case == "missing":
        args[-1] = str(tmp_path / "nope.xyz")
    elif case == "top":
        args += ["--top", "0"]
    else:
        cu = bulk("Cu", "fcc", a=3.6, cubic=True)
        write(tmp_path / "cu.xyz", cu)
        args.append(str(tmp_path / "cu.xyz"))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlrho select: error:")
