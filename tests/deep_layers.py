"""Deep hostile layers for the extractor (tests and bench/deep_layer.py): a directory chain
of any depth, and many files deep.

A tar name is at most 4,096 bytes (PATH_MAX), so a chain deeper than ~2,000 levels is
built in hops: segment k's entries are named through a symlink `sK` that points at the
bottom of segment k-1 (itself reached through `s(K-1)`), as a hostile image can do.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path


def _member(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    ti.linkname = link
    return ti


def chain_members(depth: int, hop: int = 1000) -> Iterator[tarfile.TarInfo]:
    """Directories d/d/…/d `depth` levels deep (hops of `hop` through links), then `bottom`."""
    made = 0
    prefix = ""          # how entries of this segment are named: "" or "sK/"
    while made < depth:
        n = min(hop, depth - made)
        for i in range(1, n + 1):
            yield _member(prefix + "/".join(["d"] * i), tarfile.DIRTYPE)
        made += n
        if made < depth:
            k = made // hop
            yield _member(f"s{k}", tarfile.SYMTYPE, "/" + prefix + "/".join(["d"] * n))
            prefix = f"s{k}/"
    yield _member(prefix + "/".join(["d"] * n) + "/bottom", tarfile.REGTYPE)


def files_members(depth: int, files: int) -> Iterator[tarfile.TarInfo]:
    """A chain `depth` deep, then `files` empty files in its bottom directory."""
    for i in range(1, depth + 1):
        yield _member("/".join(["d"] * i), tarfile.DIRTYPE)
    base = "/".join(["d"] * depth)
    for i in range(files):
        yield _member(f"{base}/f{i}", tarfile.REGTYPE)


def write_tar(members: Iterator[tarfile.TarInfo], path: Path) -> int:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        count = 0
        for ti in members:
            t.addfile(ti, io.BytesIO(b"") if ti.isreg() else None)
            count += 1
    return count
