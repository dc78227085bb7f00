"""Helpers every command module shares: the store, KEY=VALUE flags, tables, sizes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pybuild import rootless
from pybuild.errors import PybuildError

DEFAULT_ROOT = rootless.default_root()


def open_store(args: argparse.Namespace) -> Any:
    from pybuild.store import Store

    return Store(Path(args.root))


def key_values(values: list[str] | None, what: str) -> dict[str, str]:
    """`KEY=VALUE` flags; a bare `KEY` takes its value from the environment (docker's rule)."""
    out: dict[str, str] = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not k:
            raise PybuildError(f"invalid {what} {v!r}: expected KEY=VALUE")
        if not sep:
            if k in os.environ:
                out[k] = os.environ[k]
            continue
        out[k] = val
    return out


def table(headers: list[str], rows: Sequence[Sequence[Any]]) -> None:
    """Left-aligned columns separated by three spaces, like docker's tables."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
