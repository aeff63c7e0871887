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
