"""The ``mlrho`` command line. Each subcommand lives in its own function; figures go to stdout
(``--json`` where a subcommand reports numbers), progress and warnings to stderr."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlrho",
        description="Machine-learned electron densities with uncertainty, for periodic materials (SPARC-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"ase-mlrho {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    from .commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(f"ase_mlrho.commands.{name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    import time

    t_start = time.perf_counter()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as given, recorded by commands that write provenance
    args.t_start = t_start  # commands that print a time count the whole command
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mlrho: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
