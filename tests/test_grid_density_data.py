"""Grid rule, SPARC density files and snapshots against real SPARC output."""

import gzip
import json
import re
import subprocess

import numpy as np
import pytest

from sparc_bridge.snapshots import SnapshotError, load_snapshot, valence_electrons
from ase_mlrho.grid import Grid, InvalidStructureError, grid_intervals
from sparc_bridge.density_file import DensityFileError, read_density, write_density
from tests.conftest import ROOT, shared_runs


def _inpt_value(run, key):
    for line in (run / "SPARC.inpt").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].split()
    raise KeyError(key)


def _printed_fd_grid(run):
    m = re.search(r"^FD_GRID:\s*(\d+)\s+(\d+)\s+(\d+)", (run / "SPARC.out").read_text(), re.M)
    return tuple(int(x) for x in m.groups())


def _latvec(run):
    lines = (run / "SPARC.inpt").read_text().splitlines()
    i = lines.index("LATVEC:")
    return np.array([[float(x) for x in lines[i + j].split()] for j in (1, 2, 3)])


# every SPARC run directory: the shared ones and those committed here (datagen outputs nest them)
# (finished ones only: a datagen run in progress has a *.partial directory)
RUNS = shared_runs() + sorted(p.parent for p in (ROOT / "data" / "sparc").rglob("SPARC.out")
                              if not p.parent.name.endswith((".partial", ".failed")))


@pytest.mark.skipif(not RUNS, reason="shared SPARC data not found next to the repository")
@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_grid_from_mesh_spacing_matches_sparc_and_density_integrates(run):
    try:
        h = float(_inpt_value(run, "MESH_SPACING")[0])
    except KeyError:  # runs made by mlrho datagen fix FD_GRID, computed from the mesh in meta.json
        h = float(json.loads((run / "meta.json").read_text())["mesh_spacing_bohr"])
        assert tuple(int(x) for x in _inpt_value(run, "FD_GRID")) == _printed_fd_grid(run)
    grid = Grid.from_cell(_latvec(run), h)
    assert grid.intervals == _printed_fd_grid(run)
    dens = read_density(run / "SPARC.dens.gz")
    assert dens.shape == grid.shape
    # lattice from the header agrees with LATVEC to SPARC's own tolerance (header voxels have 6 decimals)
    assert np.abs(dens.cell_bohr - grid.cell_bohr).max() < 1e-4
    n_electrons = float(re.search(r"Total number of electrons\s*:\s*(\d+)", (run / "SPARC.out").read_text()).group(1))
    assert abs(grid.integrate(dens.density_e_per_bohr3) / n_electrons - 1) < 1e-6
    assert abs(dens.valence.sum() - n_electrons) < 1e-9


def test_grid_rule_edge_cases():
    # SPARC: max(ceil(L/h), FD_ORDER/2); ceil, not round
    assert grid_intervals([10.0, 10.01, 0.5], 0.5) == (20, 21, 6)
    g = Grid.from_cell(np.diag([10.0, 10.0, 10.0]), 0.5, pbc=(True, True, False))
    assert g.shape == (20, 20, 21) and g.intervals == (20, 20, 20)
    pts = g.points_bohr()
    assert np.isclose(pts[:, 2].max(), 10.0)  # Dirichlet: nodes include both ends
    assert np.isclose(pts[:, 0].max(), 9.5)   # periodic: last node one step before L
    assert np.isclose(g.dv_bohr3, 0.125)
    # file order: z fastest; the flat index of (i, j, k) is (i*Ny + j)*Nz + k
    idx = g.indices(0, g.n_points)
    assert tuple(idx[1]) == (0, 0, 1) and tuple(idx[g.shape[2]]) == (0, 1, 0)
    # chunks cover every point once, in order
    ranges = list(g.chunks(997))
    assert ranges[0][0] == 0 and ranges[-1][1] == g.n_points
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    # triclinic: points run along the lattice vectors
    cell = np.array([[4.0, 0, 0], [1.0, 3.0, 0], [0.5, 0.5, 5.0]])
    tg = Grid(cell, (4, 3, 5))
    np.testing.assert_allclose(tg.points_bohr(1, 2)[0], cell[2] / 5)
    np.testing.assert_allclose(tg.points_bohr(5, 6)[0], cell[1] / 3)
    assert np.isclose(tg.dv_bohr3 * 60, abs(np.linalg.det(cell)))
    with pytest.raises(InvalidStructureError, match="singular"):
        Grid(np.zeros((3, 3)), (2, 2, 2))
    with pytest.raises(ValueError, match="mesh spacing"):
        Grid.from_cell(np.eye(3), 0.0)


def test_density_roundtrip_and_sparc_reader_rules(tmp_path, al4_dir):
    dens = read_density(al4_dir / "SPARC.dens.gz")
    cell = np.diag([7.653390809639560] * 3)
    for name in ("rt.dens", "rt.dens.gz"):
        path = write_density(tmp_path / name, dens.density_e_per_bohr3, cell, dens.numbers, dens.positions_bohr,
                             dens.valence)
        back = read_density(path)
        np.testing.assert_allclose(back.density_e_per_bohr3, dens.density_e_per_bohr3, rtol=1e-10, atol=0)
        np.testing.assert_allclose(back.cell_bohr, cell, atol=1e-12)
        np.testing.assert_array_equal(back.numbers, dens.numbers)
    text = (tmp_path / "rt.dens").read_text().splitlines()
    assert text[0].strip() and len(text[1].split()) >= 3
    # a large triclinic grid: N x voxel reproduces the lattice far inside SPARC's 1e-4 Bohr check
    tri = np.array([[40.1234567891, 0, 0], [3.3, 38.7654321, 0], [1.1, -2.2, 41.99999]])
    rho = np.random.default_rng(0).random((7, 5, 211))
    back = read_density(write_density(tmp_path / "tri.dens", rho, tri))
    assert np.abs(back.cell_bohr - tri).max() < 1e-10
    # SPARC's loop order: value number (i*Ny + j)*Nz + k of the data block is rho[i, j, k]
    values = np.array(" ".join((tmp_path / "tri.dens").read_text().splitlines()[6:]).split(), float)
    assert np.isclose(values[(3 * 5 + 2) * 211 + 17], rho[3, 2, 17], rtol=1e-10)


def test_bad_density_files_raise_clear_errors(tmp_path, al4_dir):
    good = gzip.decompress((al4_dir / "SPARC.dens.gz").read_bytes()).decode()
    lines = good.splitlines()

    def bad(name, text, match):
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(DensityFileError, match=match) as err:
            read_density(p)
        assert name in str(err.value)

    bad("trunc.dens", "\n".join(lines[:-3]) + "\n", "truncated")
    bad("extra.dens", good + " 1.0 2.0\n", "too many values")
    bad("nan.dens", good.replace(lines[20].split()[0], "nan", 1), "NaN")
    bad("neg.dens", good.replace(lines[3], "  -31    0.246884     0.000000     0.000000", 1), "positive")
    bad("header.dens", "\n".join(lines[:3] + ["   31 abc 0 0"] + lines[4:]), "unreadable header")
    bad("empty1.dens", "\n" + "\n".join(lines[1:]), "line 1 is empty")
    bad("short.dens", "a\nb\n", "incomplete")
    with pytest.raises(DensityFileError, match="no such"):
        read_density(tmp_path / "missing.dens")
    (tmp_path / "corrupt.dens.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DensityFileError, match="cannot read"):
        read_density(tmp_path / "corrupt.dens.gz")


def test_write_is_atomic(tmp_path):
    target = tmp_path / "x.dens"
    target.write_text("old content\n")
    with pytest.raises(ValueError, match="NaN"):
        write_density(target, np.full((2, 2, 2), np.nan), np.eye(3))
    assert target.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.dens"]  # no temporary file left behind


def test_load_snapshot_fixture(al4_dir):
    snap = load_snapshot(al4_dir)
    assert snap.natoms == 4 and snap.grid.shape == (31, 31, 31)
    assert snap.n_electrons == 12.0
    assert abs(snap.electrons_integrated - 12.0) < 1e-6 * 12
    assert abs(snap.free_energy_ha / 4 - (-2.2635033471)) < 1e-9
    assert snap.provenance["sparc_version"] and snap.provenance["meta"]["natoms"] == 4
    assert valence_electrons("Al") == 3 and valence_electrons("Ge") == 14


def test_load_snapshot_errors(tmp_path, al4_dir):
    with pytest.raises(SnapshotError, match="not a directory"):
        load_snapshot(tmp_path / "nope")
    for f in al4_dir.iterdir():
        if f.name != "SPARC.dens.gz":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(SnapshotError, match="PRINT_DENSITY"):
        load_snapshot(tmp_path)
    rho = np.full((30, 31, 31), 0.02)
    write_density(tmp_path / "SPARC.dens", rho, np.diag([7.653390809639560] * 3))
    with pytest.raises(SnapshotError, match="differs from SPARC's grid"):
        load_snapshot(tmp_path)


@pytest.mark.sparc
def test_sparc_accepts_a_density_written_by_the_project(tmp_path, al4_dir, sparc_command):
    """SPARC reads our file with READ_INIT_DENS (grid and lattice checks pass) and, fed its own
    converged density, starts at the converged energy."""
    import shutil

    import sparc

    snap = load_snapshot(al4_dir)
    write_density(tmp_path / "guess.dens", snap.density_e_per_bohr3, snap.grid.cell_bohr,
                  snap.atoms.numbers, snap.atoms.positions / 0.52917721067)
    inpt = (al4_dir / "SPARC.inpt").read_text()
    inpt += "READ_INIT_DENS: 1\nINPUT_DENS_FILE: guess.dens\nMAXIT_SCF: 1\nRHO_TRIGGER: 20\nFIX_RAND: 1\n"
    (tmp_path / "SPARC.inpt").write_text(inpt)
    shutil.copy(al4_dir / "SPARC.ion", tmp_path)
    from pathlib import Path
    shutil.copy(Path(sparc.__file__).parent / "psp" / "13_Al_3_1.9_1.9_pbe_n_v1.0.psp8", tmp_path)
    proc = subprocess.run(f"{sparc_command} -name SPARC", shell=True, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    out = (tmp_path / "SPARC.out").read_text()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "inconsistent" not in proc.stdout
    e1 = float(re.search(r"^1\s+(\S+)\s+(\S+)", out, re.M).group(1))
    assert abs(e1 - (-2.2635033471)) < 1e-6
