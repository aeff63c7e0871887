"""Every ``mlrho`` option says what it does: no argument of any subcommand without help text, and no
help text that points to a folder outside the repository."""

import argparse

from ase_mlrho.cli import build_parser


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_option_of_every_command_has_help():
    missing = []
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"mlrho {name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "options without help text: " + ", ".join(missing)


def test_help_names_no_folder_outside_the_repository():
    for name, sub in _subparsers(build_parser()).items():
        text = sub.format_help()
        assert "../" not in text, f"mlrho {name} --help refers to a folder outside the repository"


def test_help_and_the_cheap_checks_import_no_torch():
    """torch takes 2-4 s to import: ``mlrho --help``, the parser, the inference driver's checks (a missing
    structure file, a refused output) and SPARC's .dens reader must not pay for it; the workers import it
    when they build their context. Measured in a fresh interpreter (this one has torch loaded already)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from ase_mlrho.cli import build_parser\n"
            "build_parser().format_help()\n"
            "import ase_mlrho.inference, ase_mlrho.calculator, sparc_bridge.density_file\n"
            "sparc_bridge.density_file.DENS_SINK\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
