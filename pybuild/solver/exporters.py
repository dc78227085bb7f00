"""Build outputs (`-o` / `--output`): where the result of a build goes, as buildx names them.

    type=image[,name=N[,push=true]]   the store (the default without -o), tags N or -t
    type=registry,name=N               the same, pushed
    type=docker[,dest=FILE][,name=N]   a docker-archive for `docker load` (no dest: the store)
    type=oci,dest=FILE[,name=N]        an OCI image layout in a tar
    type=local,dest=DIR                the final stage's filesystem, written into DIR
    type=tar,dest=FILE                 the same as one tar (dest=- is stdout)
    DIR / -                            short for type=local,dest=DIR / type=tar,dest=-

Local and tar outputs are the "extract a wheel or a binary" path, so they are made for
speed: nothing is compressed and no layer is unpacked; the final stage's snapshots are
mounted as one read-only overlay and its merged view streams, as an uncompressed tar, into
the destination (through the one safe extractor for DIR, so nothing in the image can
reach outside DIR). The exporters take plain arguments: the store, the final image
(manifest, config, layers), the outputs, the names; they know nothing of the build.
A build with only local/tar outputs stores no image, as BuildKit's local and tar exporters:
`discard_image` takes the image it wrote out of the store again (its layers stay, as the
cache's).
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pybuild import image as imagemod
from pybuild import layer
from pybuild.errors import PybuildError
from pybuild.reference import parse_reference
from pybuild.store import Descriptor, Store

TYPES = ("image", "registry", "docker", "oci", "local", "tar")
_OPTIONS = {
    "image": {"name", "push"},
    "registry": {"name", "push"},
    "docker": {"dest", "name"},
    "oci": {"dest", "name"},
    "local": {"dest"},
    "tar": {"dest"},
}


@dataclass
class OutputSpec:
    """One parsed `-o` value."""

    type: str
    dest: str | None = None
    names: list[str] = field(default_factory=list)
    push: bool = False

    @property
    def to_store(self) -> bool:
        """Whether this output tags the image in the store."""
        return self.type in ("image", "registry") or (self.type == "docker" and not self.dest)

    @property
    def to_stdout(self) -> bool:
        return self.dest == "-"


def parse_output(value: str) -> OutputSpec:
    """`-o` as buildx reads it: CSV key=value pairs, or a bare DIR or `-`."""
    if value == "-":
        return OutputSpec("tar", "-")
    if "=" not in value:
        if not value:
            raise PybuildError("invalid --output '': expected type=TYPE[,dest=PATH] or a directory")
        return OutputSpec("local", value)
    try:
        fields = next(csv.reader([value]))
    except (csv.Error, StopIteration):
        raise PybuildError(f"invalid --output {value!r}: not a comma-separated list") from None
    pairs: dict[str, str] = {}
    for f in fields:
        k, sep, v = f.partition("=")
        k = k.strip().lower()
        if not sep:
            raise PybuildError(f"invalid --output {value!r}: {f!r} is not KEY=VALUE")
        if k == "name" and "name" in pairs:
            pairs["name"] += "," + v
        else:
            pairs[k] = v
    typ = pairs.pop("type", None)
    if typ is None:
        if "dest" in pairs:
            typ = "local"
        else:
            raise PybuildError(f"invalid --output {value!r}: type= is missing "
                               f"({', '.join(TYPES)})")
    if typ not in TYPES:
        raise PybuildError(f"invalid --output {value!r}: unknown type {typ!r} "
                           f"({', '.join(TYPES)})")
    unknown = set(pairs) - _OPTIONS[typ]
    if unknown:
        raise PybuildError(f"invalid --output {value!r}: type={typ} has no option "
                           f"{sorted(unknown)[0]!r} ({', '.join(sorted(_OPTIONS[typ]))})")
    spec = OutputSpec(typ, pairs.get("dest") or None,
                      [n.strip() for n in pairs.get("name", "").split(",") if n.strip()])
    push = pairs.get("push", "true" if typ == "registry" else "false").lower()
    if push not in ("true", "false", "1", "0"):
        raise PybuildError(f"invalid --output {value!r}: push must be true or false")
    spec.push = push in ("true", "1")
    if typ in ("local", "tar", "oci") and not spec.dest:
        raise PybuildError(f"invalid --output {value!r}: type={typ} needs dest=PATH")
    if typ == "local" and spec.dest and os.path.realpath(spec.dest) == "/":
        raise PybuildError(f"invalid --output {value!r}: refusing to write over /")
    if typ in ("tar", "oci", "docker") and spec.dest and spec.dest != "-" and \
            os.path.isdir(spec.dest):
        raise PybuildError(f"invalid --output {value!r}: {spec.dest} is a directory "
                           f"(type={typ} writes a file; type=local writes a directory)")
    for n in spec.names:
        parse_reference(n)  # a bad name fails before the build
    return spec


def check_outputs(outputs: list[OutputSpec], tags: list[str]) -> None:
    """What no single output can see: two outputs on stdout, a push without a name."""
    if sum(1 for o in outputs if o.to_stdout) > 1:
        raise PybuildError("only one output can be written to stdout (-)")
    for o in outputs:
        if o.push and not (o.names or tags):
            raise PybuildError(f"type={o.type} with push needs name=NAME or -t NAME")
        if o.to_stdout and o.type not in ("tar", "oci", "docker"):
            raise PybuildError(f"type={o.type} cannot be written to stdout")
        if o.to_stdout and sys.stdout.isatty():
            raise PybuildError("refusing to write a tar archive to a terminal: redirect "
                               "stdout, or give dest=FILE")


def store_tags(outputs: list[OutputSpec], tags: list[str]) -> list[str]:
    """The names the build tags in the store: -t without -o, else the image outputs'."""
    if not outputs:
        return list(tags)
    out: list[str] = []
    for o in outputs:
        if o.to_store:
            for n in o.names or tags:
                if n not in out:
                    out.append(n)
    return out


Reporter = Callable[[str], Callable[[], None]]


def export(store: Store, img: imagemod.Image, outputs: list[OutputSpec], tags: list[str], *,
           push: Callable[[str], str] | None = None, report: Reporter | None = None,
           stdout: BinaryIO | None = None) -> list[str]:
    """Write the image `img` (already in `store`) to every output; returns messages.

    `push(name)` pushes the image (tagged `name` in the store) and returns its digest;
    `report(title)` opens a progress vertex and returns its closer.
    """
    messages: list[str] = []
    for o in outputs:
        done = report(_title(o)) if report else (lambda: None)
        if o.type in ("local", "tar"):
            export_filesystem(store, img, o, stdout)
        elif o.type in ("oci", "docker") and o.dest:
            names = [parse_reference(n).familiar for n in o.names or tags]
            entries = [imagemod._Entry(img, names)]
            write = imagemod.write_oci_archive if o.type == "oci" else imagemod.write_docker_archive
            if o.to_stdout:
                write(store, entries, stdout or sys.stdout.buffer)
            else:
                with imagemod._atomic_output(Path(o.dest)) as f:
                    write(store, entries, f)
        if o.push:
            if push is None:
                raise PybuildError("push=true needs a registry client")
            for n in o.names or tags:
                digest = push(parse_reference(n).familiar)
                messages.append(f"pushed {parse_reference(n).familiar}: {digest}")
        done()
    return messages


def stores_no_image(outputs: list[OutputSpec]) -> bool:
    """Whether the outputs are only local/tar ones: BuildKit's local and tar exporters
    write files and store no image (its build cache stays)."""
    return bool(outputs) and all(o.type in ("local", "tar") for o in outputs)


def discard_image(store: Store, manifest: Descriptor) -> bool:
    """Take a just-built image out of the store again: its manifest and config blobs, unless
    a tag (of this or another build) or a container holds them. Its layers stay, as the
    cache records' layers (prune reclaims them). True when something was removed.

    Only when no other build of this store is running or exporting (they hold the gc lock
    shared, and one may be about to read this very image): else the image is left, as a
    dangling one `pybuild image prune` removes."""
    from pybuild.containers import list_containers

    try:
        with store.gc_lock(shared=False, blocking=False):
            return _discard(store, manifest, list_containers)
    except BlockingIOError:
        return False


def _discard(store: Store, manifest: Descriptor, list_containers: Callable[[Store], Any]) -> bool:
    with store.lock():
        if not store.has_blob(manifest.digest):
            return False
        config = store.read_json(manifest.digest).get("config") or {}
        config_digest = config.get("digest") if isinstance(config, dict) else None
        live = store.reachable()
        if manifest.digest in live or config_digest in live or \
                any(c.image_id == config_digest for c in list_containers(store)):
            return False
        for digest in (manifest.digest, config_digest):
            if isinstance(digest, str):
                with contextlib.suppress(FileNotFoundError):
                    store.blob_path(digest).unlink()
    return True


def _title(o: OutputSpec) -> str:
    """BuildKit's vertex names for each exporter."""
    return {"local": "exporting to client directory", "tar": "exporting to client tarball",
            "oci": "exporting to oci image format", "docker": "exporting to docker image format",
            }.get(o.type, "exporting to image" + (" and pushing" if o.push else ""))


class _PipeSink:
    """A BlobSink writing into a file descriptor (one end of a pipe, or a file)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, data: bytes, /) -> int:
        self._f.write(data)
        return len(data)


def export_filesystem(store: Store, img: imagemod.Image, o: OutputSpec,
                      stdout: BinaryIO | None = None) -> None:
    """type=local / type=tar: the image's merged filesystem, uncompressed, straight from
    its snapshots (mounted read-only; layers already extracted are never re-read)."""
    from pybuild.snapshot import Snapshotter

    snaps = Snapshotter(store)
    lowers = snaps.ensure(img.layers, img.diff_ids)
    with snaps.mount(lowers, readonly=True) as active:
        if o.type == "tar":
            if o.to_stdout:
                out = stdout or sys.stdout.buffer
                layer.write_layer(active.rootfs, _PipeSink(out), compression="none")
                out.flush()
            else:
                assert o.dest is not None
                with imagemod._atomic_output(Path(o.dest)) as f:
                    layer.write_layer(active.rootfs, _PipeSink(f), compression="none")
            return
        assert o.dest is not None
        dest = Path(o.dest)
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PybuildError(f"cannot create output directory {dest}: {e.strerror}") from None
        if not dest.is_dir() or dest.is_symlink() and not dest.resolve().is_dir():
            raise PybuildError(f"output destination {dest} is not a directory")
        if any(dest.iterdir()):
            _stream_into(active.rootfs, dest)  # merging: the extractor replaces what is there
        else:
            _copy_tree(active.rootfs, dest)


def _stream_into(src: Path, dest: Path) -> None:
    """Tar `src` in one thread, unpack it into `dest` with the safe extractor in this one."""
    r, w = os.pipe()
    error: list[BaseException] = []

    def produce() -> None:
        try:
            with open(w, "wb", buffering=layer.CHUNK) as f:
                layer.write_layer(src, _PipeSink(f), compression="none")
        except BrokenPipeError:
            pass  # the extractor failed first: its error is the one to show
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=produce, name="pybuild-export", daemon=True)
    t.start()
    try:
        with open(r, "rb", buffering=layer.CHUNK) as f:
            layer.extract_archive(f, dest, "/")
            while f.read(layer.CHUNK):  # let the writer finish its trailer
                pass
    finally:
        t.join()
    if error:
        raise error[0]


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy a tree into an empty directory at `cp -a` speed (copy_file_range/sendfile).

    Safe without the extractor's fd walk because every directory written into was made
    by this function a moment before: nothing in `dest` can be a symlink we did not create
    from the image, and no write ever goes through one (children of a link are never read).
    """
    links: dict[tuple[int, int], str] = {}
    root = os.geteuid() == 0
    dirs: list[tuple[str, os.stat_result]] = []

    def attrs(path: str, st: os.stat_result, is_link: bool = False) -> None:
        if root:
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        for name in os.listxattr(path, follow_symlinks=False) if not is_link else []:
            if name.startswith("trusted.overlay."):
                continue
            with contextlib.suppress(OSError):
                os.setxattr(os.fspath(path), name, os.getxattr(_src_of[path], name,
                                                               follow_symlinks=False),
                            follow_symlinks=False)
        if not is_link:
            os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)

    _src_of: dict[str, str] = {}

    def walk(s: str, d: str) -> None:
        with os.scandir(s) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            st = e.stat(follow_symlinks=False)
            target = os.path.join(d, e.name)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(target, 0o700)
                walk(e.path, target)
                dirs.append((target, st))
                _src_of[target] = e.path
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(mode):
                first = links.setdefault((st.st_dev, st.st_ino), target)
                if first != target:
                    os.link(first, target, follow_symlinks=False)
                    continue
            _src_of[target] = e.path
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(e.path), target)
                attrs(target, st, is_link=True)
            elif stat.S_ISREG(mode):
                shutil.copyfile(e.path, target, follow_symlinks=False)
                attrs(target, st)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                os.mknod(target, stat.S_IFMT(mode) | 0o600, st.st_rdev)
                attrs(target, st)
            # sockets cannot be exported (tar cannot hold them either)

    try:
        walk(str(src), str(dest))
        for path, st in dirs:  # deepest first: children no longer touch their mtimes
            attrs(path, st)
    except OSError as e:
        raise PybuildError(f"cannot write {e.filename or dest}: {e.strerror}") from None


def describe(o: OutputSpec) -> dict[str, Any]:
    """The output as --metadata-file records it."""
    return {"type": o.type, "dest": o.dest, "names": o.names, "push": o.push}
