"""`--help` of every command is complete: a description and help for every argument."""

from __future__ import annotations

import argparse
import subprocess
import sys

from pybuild.cli import build_parser


def _subparsers(p: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((prefix + name, sub))
                out.extend(_subparsers(sub, prefix + name + " "))
    return out


def test_every_command_and_argument_is_described() -> None:
    missing = []
    commands = _subparsers(build_parser())
    assert len(commands) >= 20
    for name, sub in commands:
        if not sub.description:
            missing.append(f"{name}: no description")
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{name}: {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_runs_for_every_command() -> None:
    for name, _sub in _subparsers(build_parser()):
        out = subprocess.run([sys.executable, "-m", "pybuild", *name.split(), "--help"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith("usage: pybuild"), name
