"""What a clone of the repository holds: no file names a folder of the machine it was made on
(a user has none of them). Every tracked file is read as bytes, so model files' JSON headers count too."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_committed_file_names_a_folder_of_this_machine():
    needles = {str(ROOT.parent) + "/", tempfile.gettempdir().rstrip("/") + "/"}
    home = str(Path.home())
    if home not in ("/", ""):
        needles.add(home.rstrip("/") + "/")
    needles = [n.encode() for n in needles if n not in ("/", "//")]
    found = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        found += [f"{path.relative_to(ROOT)}: {n.decode()}" for n in needles if n in data]
    assert not found, "absolute paths of this machine in committed files:\n" + "\n".join(found)
