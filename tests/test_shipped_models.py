"""The shipped models load, refuse what they do not know, and still predict real SPARC densities
as well as they did when they were shipped (regression guards at the measured figures)."""

import numpy as np
import pytest
from ase.build import bulk

from ase_mlrho.data import load_snapshot
from ase_mlrho.descriptors import UnknownSpeciesError
from ase_mlrho.evaluation import evaluate_snapshots
from ase_mlrho.models import load_model, shipped_models
from tests.conftest import ROOT, SHARED_SPARC


def test_shipped_models_load_with_their_metadata():
    assert {"al-pbe", "sige-pbe"} <= set(shipped_models())
    al = load_model("al-pbe")
    assert al.species == ("Al",) and al.valence_electrons == {"Al": 3.0} and al.mesh_spacing_bohr == 0.25
    assert al.spec.has_angular and al.metadata["training"]["validation_snapshots"][0]["name"] == "al_n=2_T=945_seed=8"
    test_names = {"al_n=2_T=630_seed=4", "al_n=2_T=1575_seed=9"}
    assert not test_names & {s["name"] for s in al.metadata["training"]["train_snapshots"]}
    sige = load_model("sige-pbe")
    assert sige.species == ("Si", "Ge") and sige.valence_electrons == {"Si": 4.0, "Ge": 14.0}
    assert sige.mesh_spacing_bohr == 0.4


def test_a_sige_model_refuses_carbon():
    atoms = bulk("Si", "diamond", a=5.43)
    atoms[0].symbol = "C"
    with pytest.raises(UnknownSpeciesError, match="model 'sige-pbe' knows Si, Ge; structure has C"):
        load_model("sige-pbe").check_species(atoms.numbers)


def test_al_pbe_on_the_held_out_vacancy_cell():
    """Al31 with a vacancy at 630 K (SPARC, committed in data/sparc): eps 2.59 %, 3-sigma coverage
    0.974 when shipped."""
    snap = load_snapshot(ROOT / "data" / "sparc" / "al_n=2_T=630_a=4.05_seed=35_vacancy")
    (m,), _, (pred,) = evaluate_snapshots(load_model("al-pbe"), [snap])
    assert m.eps_rho_percent < 2.65
    assert m.coverage_3sigma > 0.97
    assert abs(pred.density.sum() * snap.grid.dv_bohr3 - 93.0) < 1e-9


@pytest.mark.skipif(not (SHARED_SPARC / "sige_T=1200_seed=6").is_dir(), reason="shared SiGe data not found")
def test_sige_pbe_on_a_held_out_cell():
    """Si32Ge32 at 1200 K (never trained on): eps 0.73 %, 3-sigma coverage 1.000 when shipped."""
    snap = load_snapshot(SHARED_SPARC / "sige_T=1200_seed=6")
    (m,), _, _ = evaluate_snapshots(load_model("sige-pbe"), [snap])
    assert m.eps_rho_percent < 0.8
    assert m.coverage_3sigma > 0.99
    assert np.isclose(snap.n_electrons, 576.0)
