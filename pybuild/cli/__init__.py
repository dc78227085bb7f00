"""Command line: argument parsing, output mode, exit codes. Knows nothing of how images are built.

Each command group lives in its own module with a `register(sub, common)` function.
`pybuild -t myapp .` is `pybuild build -t myapp .`: that is how docker users type it.
User mistakes print one line and exit non-zero; only `--debug` shows a traceback.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sqlite3
import sys
import traceback
from pathlib import Path
from typing import Any

from pybuild import __version__, rootless
from pybuild.cli import advise, attest, build, cache, containers, doctor, images, registry, system
from pybuild.cli.common import DEFAULT_ROOT
from pybuild.errors import DockerfileError, PybuildError

MODULES = [build, images, registry, cache, containers, doctor, system, advise, attest]


class _Names:
    """Stands in for argparse while a module registers: keeps the command names only
    (building every subcommand's parser costs more than a warm build's own work)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add_parser(self, name: str, *args: Any, **kw: Any) -> Any:
        self.names += [name, *kw.get("aliases", [])]
        return _Names()

    def __getattr__(self, attr: str) -> Any:
        return lambda *args, **kw: _Names()


def _owners() -> dict[str, Any]:
    """command name → the module that registers it."""
    out: dict[str, Any] = {}
    for module in MODULES:
        names = _Names()
        module.register(names, None)
        out.update(dict.fromkeys(names.names, module))
    return out


def _command(argv: list[str], commands: set[str]) -> str | None:
    """The subcommand argv names, or None when top-level help or --version comes first."""
    skip_next = False
    for a in argv:
        if skip_next:
            skip_next = False
        elif a == "--root":
            skip_next = True
        elif a in commands:
            return a
        elif not (a.startswith("--root=") or a == "--debug"):
            return None
    return None


def build_parser(only: Any = None) -> argparse.ArgumentParser:
    """The whole command line; with `only` (a module), just that module's commands."""
    def globals_(root: Any, debug: Any) -> argparse.ArgumentParser:
        g = argparse.ArgumentParser(add_help=False)
        g.add_argument("--root", default=root,
                       help=f"store directory (env PYBUILD_ROOT; default {DEFAULT_ROOT}; "
                            "/var/lib/pybuild as root, $XDG_DATA_HOME/pybuild rootless)")
        g.add_argument("--debug", action="store_true", default=debug,
                       help="show tracebacks on errors")
        return g

    # Subcommands accept the global options too; SUPPRESS keeps them from overriding
    # a value given before the subcommand.
    common = globals_(argparse.SUPPRESS, argparse.SUPPRESS)
    p = argparse.ArgumentParser(
        prog="pybuild", parents=[globals_(os.environ.get("PYBUILD_ROOT", DEFAULT_ROOT), False)],
        description="A daemonless container image builder: Dockerfile in, OCI image out. "
                    "`pybuild -t NAME DIR` is short for `pybuild build -t NAME DIR`.")
    p.add_argument("--version", action="version", version=f"pybuild {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    for module in MODULES:
        if only is None or module is only:
            module.register(sub, common)
    return p




def _normalise(argv: list[str], commands: set[str]) -> list[str]:
    """Insert `build` when no subcommand is named (`pybuild -t x .`)."""
    skip_next = False
    for a in argv:
        if skip_next:
            skip_next = False
            continue
        if a == "--root":
            skip_next = True
            continue
        if a.startswith("--root=") or a == "--debug":
            continue
        if a in commands or a in ("-h", "--help", "--version"):
            return argv
        return ["build"] + argv
    return argv


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _take_interrupts() -> None:
    """Ctrl-C and SIGTERM stop a command cleanly even when pybuild was started with them
    ignored or blocked (a background job of a script, some CI runners), as docker's
    signal.Notify does: otherwise a build could not be interrupted at all."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)


def _keep_startup_objects() -> None:
    """A command is one short process: what start-up made (modules, classes, the parser)
    lives until it exits, so the collector need not look at it again, and young objects
    are collected every 10,000 allocations, not 700. A walk of a 50,000-file context makes
    ~100,000 objects that all live; without this the collections over them and over
    start-up's objects cost 0.03-0.1 s of a 0.45 s warm build (measured, docs/performance.md)."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def main(argv: list[str] | None = None) -> int:
    owners = _owners()
    argv = _normalise(list(sys.argv[1:] if argv is None else argv), set(owners))
    command = _command(argv, set(owners))
    parser = build_parser(owners[command] if command else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if os.geteuid() != 0 and not rootless.inside() \
            and not (command == "doctor" and rootless.problems()):
        # rootless: run this same command again inside a user + mount namespace (doctor
        # reports what is missing from outside when it cannot get in)
        try:
            return rootless.reexec(argv)
        except PybuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    _take_interrupts()
    _keep_startup_objects()
    try:
        return int(args.func(args))
    except DockerfileError as e:
        if args.debug:
            traceback.print_exc()
        name = getattr(args, "file", None) or "Dockerfile"
        print(str(e.with_file(name) if e.filename == "Dockerfile" else e), file=sys.stderr)
        return e.exit_code
    except PybuildError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except sqlite3.DatabaseError as e:  # damaged pages found after the database opened
        if args.debug:
            traceback.print_exc()
        from pybuild.store import damaged_db_error

        path = os.path.join(os.path.abspath(args.root), "pybuild.db")
        print(f"error: {damaged_db_error(Path(path), f'is damaged ({e})')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
