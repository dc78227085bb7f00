"""`pybuild load`: docker-archive and OCI archives into the store, as `docker load` reads them.

The archive is read as one stream (a file or stdin, plain or compressed). Nothing in it is
ever extracted to a host path: every regular member is streamed into a store BlobWriter
(a temp file under the store's tmp/) and hashed on the way; member names are only keys of
a table. When the whole stream has been read, the archive's own index (manifest.json for a
docker-archive, index.json for an OCI archive) says which members are configs and layers;
every digest is checked against what the index, the config's diff_ids and the blob names
claim. Only then is anything committed, so a bad archive leaves the store unchanged.
Layer contents reach the filesystem later only through the snapshotter's safe extractor.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any, BinaryIO, cast

from pybuild import fs, layer
from pybuild.errors import PybuildError
from pybuild.oci_documents import OCI_CONFIG
from pybuild.platforms import host_platform
from pybuild.reference import parse_reference
from pybuild.store import (INDEX_TYPES, MANIFEST_TYPES, OCI_MANIFEST, REF_NAME, BlobWriter,
                           Descriptor, Store, canonical_json)

CONTAINERD_NAME = "io.containerd.image.name"
_KEEP_IN_MEMORY = 4 << 20      # members this small are kept for JSON parsing too
_MEMORY_BUDGET = 64 << 20      # at most this much of the archive is held in memory
_MAX_LINKS = 40
_MAX_MEMBERS = 100_000         # docker archives hold a few files per image
_COMPRESSED = {"gzip": layer.MEDIA_TYPES["gzip"], "zstd": layer.MEDIA_TYPES["zstd"]}


@dataclass
class _Member:
    """One regular file of the archive, staged as an uncommitted blob."""

    writer: BlobWriter
    digest: str             # of the bytes as stored in the archive
    size: int
    diff_id: str            # digest of the decompressed bytes (== digest when plain)
    compression: str        # "none", "gzip", "zstd", "bzip2", "xz"
    data: bytes | None      # the bytes, when small enough to parse


@dataclass
class Loaded:
    """What `load_archive` did: the names it tagged and the IDs of untagged images."""

    tags: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (tag, old image ID)
    manifests: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """docker load's output lines."""
        out = [f"The image {t} already exists, renaming the old one with ID {old} "
               f"to empty string" for t, old in self.renamed]
        out += [f"Loaded image: {t}" for t in self.tags]
        out += [f"Loaded image ID: {i}" for i in self.untagged]
        return out


class _Archive:
    """The members of one archive stream, by cleaned name."""

    def __init__(self, store: Store, what: str) -> None:
        self.store = store
        self.what = what
        self.members: dict[str, _Member] = {}
        self.links: dict[str, str] = {}
        self._in_memory = 0
        self.layout: Path | None = None  # an OCI layout directory, read file by file on demand

    def _stage_from_layout(self, name: str) -> bool:
        """Stage `name` of the layout directory; symlinks resolve inside the layout."""
        assert self.layout is not None
        try:
            fd = fs.open_in_root(self.layout, name)
        except (OSError, PybuildError):
            return False
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            self._stage(name, f, os.fstat(fd).st_size)
        return True

    def fail(self, problem: str) -> PybuildError:
        return PybuildError(f"{self.what}: {problem}")

    def clean(self, name: str) -> str:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.fail(f"unsafe path {name!r} in archive")
        return "/".join(parts)

    def read(self, src: BinaryIO) -> None:
        try:
            tin = tarfile.open(fileobj=layer.open_decompressed(src), mode="r|")
        except (tarfile.TarError, OSError, EOFError, PybuildError) as e:
            raise self.fail(f"not a tar archive ({e})") from None
        try:
            for m in tin:
                name = self.clean(m.name)
                if not name:
                    continue
                if m.issym():
                    target = m.linkname if m.linkname.startswith("/") else \
                        posixpath.join(posixpath.dirname(name), m.linkname)
                    self.links[name] = posixpath.normpath("/" + target).lstrip("/")
                elif m.islnk():
                    self.links[name] = self.clean(m.linkname)
                elif m.isreg():
                    if len(self.members) >= _MAX_MEMBERS:
                        raise self.fail(f"more than {_MAX_MEMBERS} files: not an image archive")
                    f = tin.extractfile(m)
                    assert f is not None
                    self._stage(name, f, m.size)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise self.fail(f"cannot read archive ({e})") from None

    def _stage(self, name: str, f: IO[bytes], size: int) -> None:
        old = self.members.pop(name, None)
        if old is not None:  # a later entry replaces an earlier one, as tar extraction does
            old.writer.discard()
        # an OCI layout names a blob by the digest of its bytes: hashed in that algorithm
        w = self.store.writer(algorithm="sha512" if name.startswith("blobs/sha512/") else "sha256")
        keep = size <= _KEEP_IN_MEMORY and self._in_memory + size <= _MEMORY_BUDGET
        head = f.read(6)
        kind = next((k for magic, k in layer._MAGICS if head.startswith(magic)), "none")
        kept = bytearray()

        def sink(data: bytes) -> None:
            w.write(data)
            if keep:
                kept.extend(data)

        src = cast(BinaryIO, _Prefixed(head, f))
        if kind == "none" and w.digest.startswith("sha256:"):
            while chunk := src.read(layer.CHUNK):
                sink(chunk)
            diff_id = w.digest
        elif kind == "none":  # a sha512 blob: its diff_id is still sha256 (snapshots are)
            plain = hashlib.sha256()
            while chunk := src.read(layer.CHUNK):
                sink(chunk)
                plain.update(chunk)
            diff_id = "sha256:" + plain.hexdigest()
        else:
            # every compressed byte read passes through the tee into the blob writer
            plain = hashlib.sha256()
            try:
                dec = layer.open_decompressed(cast(BinaryIO, layer._Tee(src, sink)))
                while chunk := dec.read(layer.CHUNK):
                    plain.update(chunk)
            except (PybuildError, OSError, EOFError) as e:
                w.discard()
                raise self.fail(f"{name}: cannot decompress ({e})") from None
            while chunk := src.read(layer.CHUNK):  # anything after the compressed stream
                sink(chunk)
            diff_id = "sha256:" + plain.hexdigest()
        self._in_memory += len(kept)
        self.members[name] = _Member(w, w.digest, w.size, diff_id, kind, bytes(kept) if keep else None)

    def resolve(self, name: str) -> _Member:
        """The member `name` refers to, through the archive's own links."""
        cur = self.clean(name)
        for _ in range(_MAX_LINKS):
            if cur in self.members:
                return self.members[cur]
            if self.layout is not None and self._stage_from_layout(cur):
                return self.members[cur]
            if cur not in self.links:
                break
            cur = self.links[cur]
        raise self.fail(f"{name!r} is referenced but not in the archive")

    def has(self, name: str) -> bool:
        try:
            self.resolve(name)
            return True
        except PybuildError:
            return False

    def json(self, name: str) -> Any:
        m = self.resolve(name)
        if m.data is None:
            raise self.fail(f"{name} is too large to be a JSON document ({m.size} bytes)")
        try:
            return json.loads(m.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self.fail(f"{name} is not valid JSON: {e}") from None

    def discard(self) -> None:
        for m in self.members.values():
            m.writer.discard()


class _Prefixed:
    """A reader yielding `head` and then the rest of `src`."""

    def __init__(self, head: bytes, src: Any) -> None:
        self._head = head
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = (self._head, b"") if n < 0 or n >= len(self._head) else \
                (self._head[:n], self._head[n:])
            return out
        return bytes(self._src.read(n))

    def readable(self) -> bool:
        return True


@dataclass
class _Image:
    manifest: bytes | None          # an OCI archive's manifest bytes, kept as they are
    manifest_media_type: str
    config: _Member
    layers: list[tuple[_Member, str]]  # member, media type
    names: list[str]


def _docker_images(a: _Archive) -> list[_Image]:
    """manifest.json of a docker-archive (docker save, docker 25's too)."""
    doc = a.json("manifest.json")
    if not isinstance(doc, list):
        raise a.fail("manifest.json is not a list")
    out: list[_Image] = []
    for n, entry in enumerate(doc):
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers") or [], list):
            raise a.fail(f"manifest.json entry {n} is malformed")
        config = a.resolve(entry["Config"])
        cfg = a.json(entry["Config"])
        layers = [a.resolve(str(p)) for p in entry.get("Layers") or []]
        _check_config(a, entry["Config"], cfg, layers)
        media = []
        for m in layers:
            if m.compression == "none":
                media.append(layer.MEDIA_TYPES["none"])
            elif m.compression in _COMPRESSED:
                media.append(_COMPRESSED[m.compression])
            else:
                raise a.fail(f"a {m.compression} layer cannot be stored in an OCI image")
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise a.fail(f"manifest.json entry {n}: RepoTags is not a list of names")
        out.append(_Image(None, OCI_MANIFEST, config, list(zip(layers, media)),
                          [_familiar(a, t) for t in tags]))
    return out


def _check_config(a: _Archive, name: str, cfg: Any, layers: list[_Member]) -> None:
    if not isinstance(cfg, dict):
        raise a.fail(f"{name} is not an image config")
    diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") if isinstance(cfg.get("rootfs"), dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise a.fail(f"{name} lists {len(diff_ids) if isinstance(diff_ids, list) else 'no'} "
                     f"diff_ids for {len(layers)} layers")
    for i, (m, want) in enumerate(zip(layers, diff_ids)):
        if m.diff_id != want:
            raise a.fail(f"layer {i + 1} of {name} does not match its diff_id: "
                         f"expected {want}, got {m.diff_id}")


def _familiar(a: _Archive, name: str) -> str:
    try:
        ref = parse_reference(name)
    except PybuildError as e:
        raise a.fail(f"invalid image name {name!r}: {e}") from None
    if ref.digest:
        raise a.fail(f"cannot tag an image by digest ({name})")
    return ref.familiar


def _blob(a: _Archive, desc: Descriptor) -> _Member:
    """An OCI archive's blob for `desc`, its bytes checked against the digest and size."""
    m = a.resolve("blobs/" + desc.digest.replace(":", "/", 1))
    if m.digest != desc.digest:
        raise a.fail(f"blob {desc.digest} hashes to {m.digest}")
    if m.size != desc.size:
        raise a.fail(f"blob {desc.digest} is {m.size} bytes, its descriptor says {desc.size}")
    return m


def _oci_images(a: _Archive, select: Callable[[list[Descriptor]], list[Descriptor]] | None = None
                ) -> list[_Image]:
    """index.json of an OCI image layout (in a tar, or a directory); `select` picks entries."""
    index = a.json("index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise a.fail("index.json has no manifests list")
    if not all(isinstance(e, dict) for e in index["manifests"]):
        raise a.fail("index.json lists a malformed descriptor")
    entries = [Descriptor.from_dict(e) for e in index["manifests"]]
    out: list[_Image] = []
    for desc in select(entries) if select else entries:
        ann = desc.annotations or {}
        name = ann.get(CONTAINERD_NAME) or ""
        if not name and any(c in ann.get(REF_NAME, "") for c in ":/"):
            name = ann[REF_NAME]  # pybuild's and skopeo's full names; a bare tag names nothing
        desc = _platform_manifest(a, desc)
        doc = a.json("blobs/" + desc.digest.replace(":", "/", 1))
        _blob(a, desc)
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise a.fail(f"{desc.digest} is not an image manifest")
        config_desc = Descriptor.from_dict(doc["config"])
        layer_descs = [Descriptor.from_dict(d) for d in doc.get("layers") or []]
        config = _blob(a, config_desc)
        layers = [_blob(a, d) for d in layer_descs]
        _check_config(a, config_desc.digest, json.loads(config.data or b"null"), layers)
        manifest = a.resolve("blobs/" + desc.digest.replace(":", "/", 1)).data
        out.append(_Image(manifest, desc.media_type, config,
                          [(m, d.media_type) for m, d in zip(layers, layer_descs)],
                          [_familiar(a, name)] if name else []))
    return out


def _platform_manifest(a: _Archive, desc: Descriptor, depth: int = 0) -> Descriptor:
    """An image manifest: `desc` itself, or the host's entry of the index it names."""
    if desc.media_type in MANIFEST_TYPES:
        return desc
    if desc.media_type not in INDEX_TYPES or depth > 4:
        raise a.fail(f"{desc.digest}: unsupported media type {desc.media_type}")
    _blob(a, desc)
    doc = a.json("blobs/" + desc.digest.replace(":", "/", 1))
    host = host_platform()
    entries = [Descriptor.from_dict(m) for m in doc.get("manifests") or [] if isinstance(m, dict)]
    for e in entries:
        p = e.platform or {}
        if e.media_type in MANIFEST_TYPES and p.get("os") == host["os"] \
                and p.get("architecture") == host["architecture"]:
            return e
    nested = [e for e in entries if e.media_type in INDEX_TYPES]
    if len(nested) == 1:
        return _platform_manifest(a, nested[0], depth + 1)
    raise a.fail(f"no image for {host['os']}/{host['architecture']} in index {desc.digest}")


def load_archive(store: Store, src: BinaryIO, what: str = "load") -> Loaded:
    """Read a docker-archive or an OCI archive from `src` into `store`; tag what it names."""
    a = _Archive(store, what)
    try:
        a.read(src)
        if a.has("manifest.json"):
            images = _docker_images(a)
        elif a.has("index.json"):
            images = _oci_images(a)
        else:
            raise a.fail("neither a docker-archive (manifest.json) nor an OCI archive "
                         "(index.json)")
        if not images:
            raise a.fail("the archive holds no image")
        return _commit(store, images)
    finally:
        a.discard()


def _commit(store: Store, images: list[_Image]) -> Loaded:
    """Publish the verified blobs, then the manifests, then the tags."""
    result = Loaded()
    with store.gc_lock(shared=True):
        committed: dict[int, Descriptor] = {}

        def publish(m: _Member, media_type: str) -> Descriptor:
            if id(m) not in committed:
                if store.has_blob(m.digest):
                    m.writer.discard()
                    committed[id(m)] = Descriptor(media_type, m.digest, m.size)
                else:
                    committed[id(m)] = m.writer.commit(media_type)
            d = committed[id(m)]
            return Descriptor(media_type, d.digest, d.size)

        for img in images:
            layer_descs = [publish(m, mt) for m, mt in img.layers]
            config_desc = publish(img.config, OCI_CONFIG)
            if img.manifest is not None:
                manifest_desc = store.put_bytes(img.manifest, img.manifest_media_type)
            else:
                manifest_desc = store.put_bytes(canonical_json({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": config_desc.to_dict(),
                    "layers": [d.to_dict() for d in layer_descs]}), OCI_MANIFEST)
            result.manifests.append(manifest_desc.digest)
            with store.lock():
                for tag in img.names:
                    old = store.resolve_tag(tag)
                    if old is not None and old.digest != manifest_desc.digest:
                        old_id = _config_digest(store, old)
                        if old_id and old_id != config_desc.digest:
                            result.renamed.append((tag, old_id))
                    store.set_tag(tag, manifest_desc)
                    if tag not in result.tags:
                        result.tags.append(tag)
            if not img.names and config_desc.digest not in result.untagged:
                result.untagged.append(config_desc.digest)
    return result


def _config_digest(store: Store, desc: Descriptor) -> str | None:
    from pybuild import image

    try:
        return image.load(store, desc.digest).id
    except PybuildError:
        return None


def load_layout(store: Store, layout: Path, tag: str | None, digest: str | None,
                what: str) -> Descriptor:
    """The image `tag` (or `digest`, or the only one) of an OCI layout directory, copied
    into the store untagged with every digest checked; returns its manifest descriptor."""
    a = _Archive(store, what)
    a.layout = Path(layout)
    if not (a.layout / "index.json").is_file():
        raise a.fail("not an OCI layout (no index.json)")

    def select(entries: list[Descriptor]) -> list[Descriptor]:
        if digest:
            found = [e for e in entries if e.digest == digest]
        elif tag:
            # OCI's ref.name is the tag ("1.0"); pybuild's own layouts write "name:tag"
            found = [e for e in entries if (e.annotations or {}).get(REF_NAME) == tag] or [
                e for e in entries if (e.annotations or {}).get(REF_NAME, "").endswith(":" + tag)]
        else:
            found = entries if len(entries) == 1 else [
                e for e in entries if (e.annotations or {}).get(REF_NAME) == "latest"]
        if not found:
            raise a.fail(f"no image {digest or tag or 'latest'} in the layout")
        return found[:1]

    try:
        images = _oci_images(a, select)
        for img in images:
            img.names = []
        return _commit_one(store, images[0])
    finally:
        a.discard()


def _commit_one(store: Store, img: _Image) -> Descriptor:
    loaded = _commit(store, [img])
    digest = loaded.manifests[0]
    return Descriptor(img.manifest_media_type, digest, store.blob_path(digest).stat().st_size)
