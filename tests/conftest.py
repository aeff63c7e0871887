"""Shared test fixtures: paths to committed SPARC fixtures and the shared SPARC data, and the
SPARC executable (tests marked ``sparc`` skip with a clear reason when none is configured)."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_SPARC = ROOT.parent / "shared" / "data" / "sparc"


def shared_runs(pattern="*"):
    """SPARC run directories in ../shared/data/sparc (empty when the shared data is absent)."""
    if not SHARED_SPARC.is_dir():
        return []
    return sorted(p for p in SHARED_SPARC.glob(pattern) if p.is_dir())


@pytest.fixture
def al4_dir():
    return FIXTURES / "al4"


@pytest.fixture
def shared_sparc():
    if not SHARED_SPARC.is_dir():
        pytest.skip(f"shared SPARC data not found at {SHARED_SPARC}")
    return SHARED_SPARC


def _sparc_command():
    cmd = os.environ.get("ASE_SPARC_COMMAND")
    if cmd:
        return cmd
    exe = shutil.which("sparc")
    return exe


@pytest.fixture
def sparc_command():
    cmd = _sparc_command()
    if not cmd:
        pytest.skip("no SPARC executable: set ASE_SPARC_COMMAND (e.g. 'mpirun -np 2 /path/to/sparc') "
                    "or put `sparc` on PATH")
    return cmd
