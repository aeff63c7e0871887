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


def test_the_ml_core_never_imports_the_sparc_bridge():
    """Dependencies point one way: ``ase_mlrho`` (the ML core) knows nothing of SPARC; only the command layer
    (``ase_mlrho/commands``) may use both packages. Checked on the source (every import statement, at any
    depth) and at run time (importing every core module loads no ``sparc_bridge`` module)."""
    import ast
    import importlib
    import subprocess
    import sys

    core = [p for p in (ROOT / "ase_mlrho").rglob("*.py") if "commands" not in p.relative_to(ROOT).parts]
    offenders = []
    for path in core:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] == "sparc_bridge"]
    assert not offenders, "\n".join(offenders)
    modules = sorted("ase_mlrho." + ".".join(p.relative_to(ROOT / "ase_mlrho").with_suffix("").parts)
                     for p in core if p.name != "__init__.py")
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sparc_bridge'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    assert importlib.util.find_spec("sparc_bridge") is not None  # the bridge exists; the core just does not need it


def test_no_script_shadows_a_standard_library_module():
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path, so a script named like a standard module
    replaces it for everything imported after (benchmarks/profile.py broke torch's `import cProfile` when a
    study trained a model: renamed profile_stages.py)."""
    import sys

    for folder in ("benchmarks", "examples"):
        names = {p.stem for p in (ROOT / folder).glob("*.py")}
        assert not names & set(sys.stdlib_module_names), folder
