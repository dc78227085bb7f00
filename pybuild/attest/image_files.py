"""The files of an image's flattened filesystem that a caller wants, read from its layer blobs.

No extraction and no host path: layer entry names are data, normalised and matched against a
predicate; whiteouts and opaque directories apply as overlayfs would. Used to read package
databases for the SBOM without mounting anything (so it works without root).
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable, Iterable
from typing import BinaryIO

from pybuild.errors import PybuildError
from pybuild.layer import open_decompressed

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_FILE = 64 << 20  # a package database larger than this is not read whole


def normalise(name: str) -> str | None:
    """A layer entry name as a clean relative path ("usr/lib/x"), or None for the root."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return None if path in ("", ".") else path


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + "/")


def read_files(blobs: Iterable[Callable[[], BinaryIO]], want: Callable[[str], bool],
               what: str = "image") -> dict[str, bytes]:
    """Path → bytes of every wanted regular file in the flattened image.

    `blobs` opens each layer blob, base layer first. A later layer's entry at a path (or a
    whiteout of it, or an opaque marker above it) hides what lower layers put there.
    """
    files: dict[str, bytes] = {}
    for open_blob in blobs:
        with open_blob() as raw:
            _apply_layer(raw, want, files, what)
    return files


def _apply_layer(raw: BinaryIO, want: Callable[[str], bool], files: dict[str, bytes],
                 what: str) -> None:
    removed: list[str] = []      # whiteouts: the path and everything under it
    opaque: list[str] = []       # directories whose lower content disappears
    replaced: list[tuple[str, bool]] = []  # (path, is_dir) of every entry this layer has
    added: dict[str, bytes] = {}
    links: list[tuple[str, str]] = []
    try:
        with tarfile.open(fileobj=open_decompressed(raw), mode="r|") as tar:
            for member in tar:
                path = normalise(member.name)
                if path is None:
                    continue
                base = posixpath.basename(path)
                parent = posixpath.dirname(path)
                if base == OPAQUE:
                    opaque.append(parent)
                    continue
                if base.startswith(WHITEOUT):
                    removed.append(posixpath.join(parent, base[len(WHITEOUT):]))
                    continue
                replaced.append((path, member.isdir()))
                if member.islnk():
                    target = normalise(member.linkname)
                    if target is not None and want(path):
                        links.append((path, target))
                elif member.isfile() and want(path) and member.size <= MAX_FILE:
                    f = tar.extractfile(member)
                    if f is not None:
                        added[path] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PybuildError(f"{what}: a layer cannot be read as a tar stream ({e})") from None
    for gone in removed:
        for p in [p for p in files if _under(p, gone)]:
            del files[p]
    for d in opaque:
        for p in [p for p in files if p != d and _under(p, d)]:
            del files[p]
    for path, is_dir in replaced:
        if path in files:
            del files[path]
        if not is_dir:  # a file or link where a directory was hides the whole subtree
            for p in [p for p in files if p.startswith(path + "/")]:
                del files[p]
    files.update(added)
    for path, target in links:
        data = added.get(target, files.get(target))
        if data is not None:
            files[path] = data
