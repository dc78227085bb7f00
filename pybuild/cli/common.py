"""Helpers every command module shares: the store, KEY=VALUE flags, tables, sizes."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence
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


def unpack_for_builds(store: Any, name: str, label: str | None = None) -> None:
    """Check an image's layers against its config and extract them into snapshots now, as
    `docker pull`/`import` do, so the first build FROM it does not pay for it.

    Every layer must hash to its config's diff_id (one per layer): a mismatch is refused
    here, with one line. Extracting needs root (whiteouts are device nodes); without it
    the layers are only hashed.
    """
    from pybuild import image
    from pybuild.snapshot import Snapshotter, check_layers, verify_layer

    try:
        img = image.load(store, name)
        check_layers(img.layers, img.diff_ids)
        if os.geteuid() != 0:
            for desc, diff_id in zip(img.layers, img.diff_ids):
                verify_layer(store, desc, diff_id)
            return
        snaps = Snapshotter(store)
        snaps.cleanup_work_dirs()  # what a killed pull or import left behind
        snaps.ensure(img.layers, img.diff_ids)
    except PybuildError as e:
        if label is None:
            raise
        raise PybuildError(f"{label}: {e}") from None


@contextlib.contextmanager
def writing_image(store: Any, tag: str) -> Iterator[None]:
    """Around a pull or import: hold the gc lock (shared) from the first blob written until
    the tag is set and the image unpacked, so a concurrent prune cannot take its blobs; if
    the block fails, `tag` is put back to what it was (or removed if it is new)."""
    before = store.resolve_tag(tag)
    with store.gc_lock(shared=True):
        try:
            yield
        except BaseException:
            now = store.resolve_tag(tag)
            if now != before:
                if before is None:
                    store.remove_tag(tag)
                else:
                    store.set_tag(tag, before)
            raise
