"""`--build-context NAME=VALUE`: named contexts that replace `FROM NAME`, `COPY --from=NAME`
and `RUN --mount=from=NAME` (buildx's semantics: a named context wins over a stage or an
image of that name).

    NAME=DIR                          a local directory
    NAME=docker-image://REF           an image (from the store, else pulled)
    NAME=oci-layout://PATH[:TAG|@DIGEST]   an image in an OCI layout directory
    NAME=URL                          a git URL or an http(s) tarball, fetched like a context

The solver asks one question per use through `NamedContexts`: `image(name)` for FROM
(a directory becomes a one-layer image, as BuildKit makes `FROM name` of a local context),
`directory(name)` and `image(name)` for COPY --from and --mount from, `source(name)` for
the cache key. URL values are fetched once, before the build, by `prepare`.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pybuild.errors import PybuildError
from pybuild.store import Store

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$")


@dataclass(frozen=True)
class NamedContext:
    name: str
    kind: str          # "dir", "image", "oci-layout", "url"
    value: str


def parse_build_context(flag: str) -> NamedContext:
    """One `--build-context NAME=VALUE`."""
    name, sep, value = flag.partition("=")
    name = name.strip()
    if not sep or not name or not value:
        raise PybuildError(f"invalid --build-context {flag!r}: expected NAME=VALUE")
    if not _NAME.match(name):
        raise PybuildError(f"invalid --build-context {flag!r}: invalid name {name!r}")
    from pybuild.sources import is_git_url, is_url

    if value.startswith("docker-image://"):
        ref = value[len("docker-image://"):]
        from pybuild.reference import parse_reference

        parse_reference(ref)
        return NamedContext(name, "image", ref)
    if value.startswith("oci-layout://"):
        return NamedContext(name, "oci-layout", value[len("oci-layout://"):])
    if is_git_url(value) or is_url(value):
        return NamedContext(name, "url", value)
    if "://" in value:
        raise PybuildError(f"invalid --build-context {flag!r}: unsupported scheme "
                           f"(DIR, docker-image://, oci-layout://, a git or http(s) URL)")
    return NamedContext(name, "dir", value)


def prepare(specs: list[NamedContext], stack: contextlib.ExitStack) -> dict[str, NamedContext]:
    """Fetch URL contexts into temp dirs (removed by `stack`); check directories exist."""
    from pybuild import sources

    out: dict[str, NamedContext] = {}
    for c in specs:
        if c.name in out:
            raise PybuildError(f"--build-context {c.name} is given twice")
        if c.kind == "url":
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pybuild-named-")))
            if sources.is_git_url(c.value):
                root = sources.fetch_git(c.value, tmp)
            else:
                root, inline = sources.fetch_http(c.value, tmp)
                if inline is not None:
                    raise PybuildError(f"--build-context {c.name}: {c.value} is not a tarball")
            c = NamedContext(c.name, "dir", str(root))
        elif c.kind == "dir" and not Path(c.value).is_dir():
            raise PybuildError(f"--build-context {c.name}: {c.value!r} is not a directory")
        out[c.name] = c
    return out


def _split_layout(value: str) -> tuple[str, str | None, str | None]:
    """PATH[:TAG][@sha256:...] → (path, tag, digest)."""
    path, digest = value, None
    if "@" in value.rsplit("/", 1)[-1]:
        path, _, digest = value.rpartition("@")
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
    return path, tag, digest


class NamedContexts:
    """The named contexts of one build, resolved on first use."""

    def __init__(self, contexts: dict[str, NamedContext], store: Store,
                 resolve_image: Callable[[str], Any]) -> None:
        self.contexts = contexts
        self.store = store
        self._resolve_image = resolve_image   # REF → image.Image (store, else pulled)
        self._images: dict[str, Any] = {}
        self._sources: dict[str, Any] = {}

    def has(self, name: str) -> bool:
        return name in self.contexts

    def directory(self, name: str) -> Path | None:
        """The host directory of a DIR (or fetched URL) context."""
        c = self.contexts.get(name)
        return Path(c.value).absolute() if c is not None and c.kind == "dir" else None

    def image(self, name: str) -> Any:
        """The image a context stands for (None when `name` is not a named context)."""
        c = self.contexts.get(name)
        if c is None:
            return None
        if name not in self._images:
            from pybuild import image as imagemod

            if c.kind == "image":
                img = self._resolve_image(c.value)
            elif c.kind == "oci-layout":
                from pybuild.load import load_layout

                path, tag, digest = _split_layout(c.value)
                desc = load_layout(self.store, Path(path), tag, digest,
                                   f"--build-context {name}=oci-layout://{c.value}")
                img = imagemod._from_descriptor(self.store, desc, name)
            else:
                img = self._dir_image(c)
            self._images[name] = img
        return self._images[name]

    def _dir_image(self, c: NamedContext) -> Any:
        """`FROM name` of a directory: the directory as the only layer of a scratch image."""
        from pybuild import image as imagemod
        from pybuild import layer

        with self.store.writer() as w:
            info = layer.write_layer(Path(c.value), w, compression="gzip")
            desc = w.commit(info.media_type)
        config = imagemod.empty_config()
        config["rootfs"]["diff_ids"] = [info.diff_id]
        manifest = imagemod.write(self.store, config, [desc])
        return imagemod._from_descriptor(self.store, manifest, c.name)

    def source(self, name: str) -> Any:
        """The typed source (pybuild.solver.ops) a key records for the context: a directory
        as a ContextSource of its files' signatures, an image by its manifest digest."""
        c = self.contexts.get(name)
        if c is None:
            return None
        if name not in self._sources:
            from pybuild.solver import ops

            d = self.directory(name)
            if d is not None:
                from pybuild.context import BuildContext

                ctx = BuildContext.for_rootfs(d)
                self._sources[name] = ops.ContextSource(ctx.manifest([ctx.root]))
            else:
                self._sources[name] = ops.ImageSource(
                    name, str(self.image(name).manifest_desc.digest))
        return self._sources[name]
