"""`mlrho learn` (sparc_bridge.active_learning) with a fake SPARC that copies the committed Al4 run's outputs."""

import json
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from ase_mlrho.cli import main
from sparc_bridge.active_learning import read_learning_manifest

from .test_datagen import fake_sparc  # noqa: F401  (the fixture: a SPARC that copies the Al4 run's outputs)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, al4_dir_module):
    out = tmp_path_factory.mktemp("al_model") / "toy.safetensors"
    rc = main(["train", str(al4_dir_module), "--val", str(al4_dir_module), "-o", str(out), "--m", "12", "--m-s",
               "2", "--k", "3", "--hidden", "16,16", "--epochs", "2", "--points", "2000", "--seed", "1"])
    assert rc == 0
    return str(out)


@pytest.fixture(scope="module")
def al4_dir_module():
    from .conftest import FIXTURES

    return FIXTURES / "al4"


@pytest.fixture
def fake(fake_sparc, monkeypatch):  # noqa: F811
    command, calls = fake_sparc
    monkeypatch.setenv("ASE_SPARC_COMMAND", command)
    return calls


@pytest.fixture
def candidates(tmp_path):
    files = []
    for i, amp in enumerate((0.02, 0.15, 0.3)):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True)
        atoms.rattle(amp, seed=i)
        path = tmp_path / f"cand{i}.xyz"
        write(path, atoms)
        files.append(str(path))
    return files


def _learn(toy, candidates, al4, workdir, *extra):
    return main(["learn", "-m", toy, "--candidates", *candidates, "--train", str(al4), "--val", str(al4),
                 "--rounds", "2", "--per-round", "1", "--workdir", str(workdir), "--json", *extra])


def test_learn_chooses_the_most_uncertain_computes_refits_and_resumes(toy, candidates, al4_dir_module, fake, tmp_path,
                                                                     capsys):
    work = tmp_path / "al"
    assert _learn(toy, candidates, al4_dir_module, work) == 0
    m = read_learning_manifest(work)
    assert [r["status"] for r in m["rounds"]] == ["fitted", "fitted"]
    chosen = [r["chosen"][0] for r in m["rounds"]]
    for r, c in zip(m["rounds"], chosen):
        best = max(r["scores"], key=lambda s: s["score"])
        assert c["key"] == best["key"] and c["rank"] == 1 and c["why"] == "largest mean epistemic sigma"
        assert (work / r["model_out"]).is_file() and r["validation"]["eps_percent_mean"] > 0
    assert chosen[0]["key"] != chosen[1]["key"]  # a candidate is chosen once
    assert len(m["rounds"][1]["scores"]) == len(candidates) - 1
    assert len(fake()) == 2 and m["rounds"][1]["dft_runs_so_far"] == 2
    assert json.loads(capsys.readouterr().out)["plan"]["per_round"] == 1
    # again: everything is there, nothing is recomputed
    assert _learn(toy, candidates, al4_dir_module, work) == 0
    assert len(fake()) == 2 and read_learning_manifest(work)["rounds"] == m["rounds"]
    # the same plan with more rounds goes on from where it stopped: one more SPARC run, rounds 1-2 untouched
    assert main(["learn", "-m", toy, "--candidates", *candidates, "--train", str(al4_dir_module), "--val",
                 str(al4_dir_module), "--rounds", "3", "--per-round", "1", "--workdir", str(work)]) == 0
    m3 = read_learning_manifest(work)
    assert len(fake()) == 3 and m3["rounds"][:2] == m["rounds"] and m3["plan"]["rounds"] == 3
    assert m3["rounds"][2]["status"] == "fitted" and m3["rounds"][2]["dft_runs_so_far"] == 3
    assert {r["chosen"][0]["key"] for r in m3["rounds"]} == {f"{Path(c).name}@0" for c in candidates}
    # ... but not with fewer rounds than it has run
    capsys.readouterr()
    assert _learn(toy, candidates, al4_dir_module, work) == 2
    assert "would drop some" in capsys.readouterr().err
    # another plan in the same directory is refused
    capsys.readouterr()
    assert main(["learn", "-m", toy, "--candidates", *candidates, "--val", str(al4_dir_module), "--rounds", "3",
                 "--workdir", str(work)]) == 2
    assert "another plan" in capsys.readouterr().err


def test_learn_random_arm_is_seeded(toy, candidates, al4_dir_module, fake, tmp_path):
    picks = []
    for w in ("r1", "r2"):
        assert _learn(toy, candidates, al4_dir_module, tmp_path / w, "--random", "5") == 0
        m = read_learning_manifest(tmp_path / w)
        picks.append([r["chosen"][0]["key"] for r in m["rounds"]])
        assert m["rounds"][0]["chosen"][0]["why"].startswith("random (seed 5")
    assert picks[0] == picks[1] and picks[0][0] != picks[0][1]


def test_arms_sharing_a_dft_cache_compute_each_structure_once(toy, candidates, al4_dir_module, fake, tmp_path):
    """Two arms of a selection study (by uncertainty, at random) choose 2 of the 3 candidates each, so at
    least one structure twice: with a shared --dft-cache SPARC runs once per distinct structure."""
    cache = tmp_path / "cache"
    picks = []
    for w, extra in (("uq", ()), ("rand", ("--random", "3"))):
        assert _learn(toy, candidates, al4_dir_module, tmp_path / w, "--dft-cache", str(cache), *extra) == 0
        picks.append({r["chosen"][0]["key"] for r in read_learning_manifest(tmp_path / w)["rounds"]})
    union = picks[0] | picks[1]
    assert len(fake()) == len(union) < 4 and len(list(cache.iterdir())) == len(union)
    m = read_learning_manifest(tmp_path / "rand")
    for r in m["rounds"]:  # the copied runs are complete SPARC runs the refit trained on
        assert (tmp_path / "rand" / r["runs"][0] / "SPARC.out").is_file()


@pytest.mark.parametrize("bad", ["copper", "duplicate"])
def test_learn_refuses_a_bad_candidate_before_writing_anything(bad, toy, candidates, al4_dir_module, fake, tmp_path,
                                                                capsys):
    """A candidate frame the model cannot predict (an element it does not know; a duplicated atom) is named by
    file and frame in one line, before the work directory or any SPARC run exists."""
    frames = [bulk("Al", "fcc", a=4.05, cubic=True) for _ in range(2)]
    if bad == "copper":
        frames[1][0].symbol = "Cu"
    else:
        frames[1].positions[1] = frames[1].positions[0] + 0.2
    write(tmp_path / "traj.xyz", frames)
    capsys.readouterr()
    assert _learn(toy, [*candidates, str(tmp_path / "traj.xyz")], al4_dir_module, tmp_path / "work") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "traj.xyz frame 1: " in err[0]
    assert ("structure has Cu" if bad == "copper" else "duplicated atom") in err[0]
    assert not (tmp_path / "work").exists() and fake() == []
