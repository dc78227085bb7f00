"""Images in the store: OCI config and manifest, lookup by tag or ID, import and archives.

An image is the pair docker users know: a config (its digest is the image ID) and a
manifest listing the compressed layers. Archives are written in the formats the real tools
load: docker-archive (`docker load`, `podman load`) and an OCI layout in a tar.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import IO, Any, BinaryIO, cast


from pybuild import layer, oci_documents
from pybuild.errors import PybuildError
from pybuild.oci_documents import OCI_CONFIG
from pybuild.snapshot import check_layers
from pybuild.platforms import choose, choose_host, host_platform, matches, platform_string
from pybuild.reference import parse_reference
from pybuild.store import (INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST, REF_NAME,
                           Descriptor, Store, canonical_json)

OCI_LAYER = layer.MEDIA_TYPES["none"]
OCI_LAYER_GZIP = layer.MEDIA_TYPES["gzip"]
OCI_LAYER_ZSTD = layer.MEDIA_TYPES["zstd"]
CONTAINERD_NAME = "io.containerd.image.name"
# docker's default PATH for Linux images (system.DefaultPathEnv).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHUNK = 1 << 20
_HEX_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{1,64})$")


@dataclass
class Image:
    """A loaded image: manifest and config with their descriptors."""

    manifest_desc: Descriptor
    manifest: dict[str, Any]
    config_desc: Descriptor
    config: dict[str, Any]

    @property
    def id(self) -> str:
        """The image ID as docker shows it: the config digest."""
        return self.config_desc.digest

    @property
    def layers(self) -> list[Descriptor]:
        """Layer descriptors, base first."""
        return [Descriptor.from_dict(d) for d in self.manifest.get("layers") or []]

    @property
    def diff_ids(self) -> list[str]:
        """Digests of the uncompressed layers, base first (as claimed: Snapshotter verifies).

        PybuildError if the config's rootfs is not an object or diff_ids not a list."""
        rootfs = self.config.get("rootfs")
        if rootfs is None:
            return []
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if diff_ids is None and isinstance(rootfs, dict):
            return []
        if not isinstance(diff_ids, list):
            raise PybuildError(f"image config {self.config_desc.digest}: rootfs.diff_ids is "
                               f"not a list")
        return list(diff_ids)


def created_timestamp() -> str:
    """RFC 3339 UTC time as docker writes it; SOURCE_DATE_EPOCH makes it reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def empty_config(platform: dict[str, str] | None = None) -> dict[str, Any]:
    """The config of `FROM scratch` as BuildKit starts it: platform, default PATH, no layers."""
    plat = platform or host_platform()
    config: dict[str, Any] = {"architecture": plat["architecture"], "os": plat["os"],
                    "config": {"Env": [f"PATH={DEFAULT_PATH}"]},
                    "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    if plat.get("variant"):
        config["variant"] = plat["variant"]
    return config


def _platform_of(config: dict[str, Any]) -> dict[str, str] | None:
    if not config.get("architecture") or not config.get("os"):
        return None
    plat = {"architecture": config["architecture"], "os": config["os"]}
    if config.get("variant"):
        plat["variant"] = config["variant"]
    return plat


def write(store: Store, config: dict[str, Any], layers: list[Descriptor]) -> Descriptor:
    """Store the config and an OCI manifest for `layers`; returns the manifest descriptor.

    The config's rootfs.diff_ids must list one diff_id per layer, in order.
    """
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise ValueError(f"config lists {len(diff_ids or [])} diff_ids for {len(layers)} layers")
    config_desc = store.put_json(config, OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_dict(),
        "layers": [Descriptor(d.media_type, d.digest, d.size, d.annotations).to_dict()
                   for d in layers],
    }
    desc = store.put_json(manifest, OCI_MANIFEST)
    return Descriptor(desc.media_type, desc.digest, desc.size, None, _platform_of(config))


# ---- lookup ---------------------------------------------------------------------------

def _select_platform(store: Store, index: oci_documents.Index, what: str) -> Descriptor:
    """The host's manifest from an index (docker's choice when pulling a multi-arch tag)."""
    host = host_platform()
    entries = [e for e in index.manifests if e.media_type in MANIFEST_TYPES]
    chosen = choose_host(entries)
    if chosen is not None:
        return chosen
    if len(entries) == 1 and not entries[0].platform:
        return entries[0]
    raise PybuildError(f"{what}: no matching manifest for {host['os']}/{host['architecture']} "
                       f"in the manifest list entries")


def load_descriptor(store: Store, desc: Descriptor, what: str) -> Image:
    """The image `desc` names (a manifest or an index, e.g. a tag's entry in index.json),
    without looking the name up again; `what` is how errors name it."""
    return _from_descriptor(store, desc, what)


def _from_descriptor(store: Store, desc: Descriptor, what: str) -> Image:
    """Read an image from a manifest or index descriptor."""
    if not store.has_blob(desc.digest):
        raise PybuildError(f"{what}: manifest {desc.digest} is missing from the store")
    # Checked as documents first (pybuild/oci_documents.py): a store written by another
    # tool, or damaged, gives one clear error, not a traceback in a later build.
    body = store.read_bytes(desc.digest)
    parsed = oci_documents.parse_document(body, f"{what}: manifest {desc.digest}", desc.media_type)
    if isinstance(parsed, oci_documents.Index):
        return _from_descriptor(store, _select_platform(store, parsed, what), what)
    config_desc = parsed.config
    if not store.has_blob(config_desc.digest):
        raise PybuildError(f"{what}: config {config_desc.digest} is missing from the store")
    config = oci_documents.parse_config(store.read_bytes(config_desc.digest),
                                        f"{what}: config {config_desc.digest}")
    oci_documents.check_image(parsed, config, f"{what}")
    return Image(desc, oci_documents.parse_json(body, what), config_desc, config.doc)


def _manifests_in_store(store: Store) -> Iterator[Descriptor]:
    """Every image manifest: tagged ones first, then untagged ones found among the blobs."""
    seen: set[str] = set()
    for desc in store.list_tags().values():
        if desc.media_type in MANIFEST_TYPES:
            seen.add(desc.digest)
            yield desc
        elif desc.media_type in INDEX_TYPES and store.has_blob(desc.digest):
            try:
                index = oci_documents.parse_index(store.read_bytes(desc.digest), desc.digest)
            except PybuildError:
                continue  # a bad index hides only itself from an ID lookup
            for d in index.manifests:
                if d.media_type in MANIFEST_TYPES and d.digest not in seen:
                    seen.add(d.digest)
                    yield d
    for digest in store.iter_blobs():
        if digest in seen:
            continue
        path = store.blob_path(digest)
        try:
            if path.stat().st_size > 4 * _CHUNK:
                continue
            with open(path, "rb") as f:
                if f.read(1) != b"{":
                    continue
            doc = store.read_json(digest)
        except (OSError, PybuildError):
            continue
        if doc.get("mediaType") in MANIFEST_TYPES and isinstance(doc.get("config"), dict):
            yield Descriptor(doc["mediaType"], digest, path.stat().st_size)


def _find_by_id(store: Store, prefix: str, what: str) -> Image | None:
    """An image whose ID (config digest) or manifest digest starts with `prefix` hex."""
    matches: dict[str, Descriptor] = {}
    for desc in _manifests_in_store(store):
        try:
            config_digest = Descriptor.from_dict(store.read_json(desc.digest)["config"]).digest
        except (PybuildError, KeyError, TypeError):
            continue
        for digest in (config_digest, desc.digest):
            if digest[len("sha256:"):].startswith(prefix):
                matches.setdefault(config_digest, desc)
    if len(matches) > 1:
        raise PybuildError(f"{what}: ambiguous image ID prefix, matches {len(matches)} images")
    if not matches:
        return None
    return _from_descriptor(store, next(iter(matches.values())), what)


def load(store: Store, name_or_id: str, platform: dict[str, str] | None = None) -> Image:
    """Find an image by tag, image ID (or unique prefix), manifest digest or name@digest.

    As docker does, a tag wins over an ID prefix that happens to look like a name. With
    `platform`, an index gives its entry for that platform, and an image of another
    platform is an error (the host's entry and any image when None).
    """
    if platform is None:
        return _load(store, name_or_id)
    img = _from_index(store, name_or_id, platform) or _load(store, name_or_id)
    have = img.manifest_desc.platform or _platform_of(img.config)
    if have is not None and not matches(have, platform):
        raise PybuildError(f"image {name_or_id} is {platform_string(have)}, not "
                           f"{platform_string(platform)}")
    return img


def _from_index(store: Store, name: str, platform: dict[str, str]) -> Image | None:
    """The `platform` entry of the index a tag (or name@digest) names; None when it names
    no index."""
    try:
        ref = parse_reference(name)
    except PybuildError:
        return None
    top = store.resolve_tag(ref.familiar)
    if top is None or not is_index(store, top):
        return None
    entries = index_entries(store, top)
    chosen = choose(entries, platform)
    if chosen is None:
        have = ", ".join(platform_string(e.platform) for e in entries) or "none"
        raise PybuildError(f"{name}: no manifest for {platform_string(platform)} in its "
                           f"index (available: {have})")
    return _from_descriptor(store, chosen, name)


def is_index(store: Store, desc: Descriptor) -> bool:
    """Whether a stored descriptor is an image index (a multi-platform tag)."""
    return desc.media_type in INDEX_TYPES


def index_entries(store: Store, desc: Descriptor) -> list[Descriptor]:
    """The image manifests of a stored index, each with its platform."""
    doc = oci_documents.parse_index(store.read_bytes(desc.digest), f"index {desc.digest}")
    return [d for d in doc.manifests if d.media_type in MANIFEST_TYPES]


def write_index(store: Store, manifests: list[Descriptor]) -> Descriptor:
    """An OCI image index of single-platform manifests (each descriptor with its
    platform), as BuildKit exports a multi-platform build."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [d.to_dict() for d in manifests]}
    return store.put_json(index, OCI_INDEX)


def _load(store: Store, name_or_id: str) -> Image:
    what = name_or_id
    hex_match = _HEX_RE.match(name_or_id)
    if hex_match and len(hex_match.group(1)) == 64:
        found = _find_by_id(store, hex_match.group(1), what)
        if found is None:
            raise PybuildError(f"No such image: {name_or_id}")
        return found
    ref = None
    if not name_or_id.startswith("sha256:"):
        try:
            ref = parse_reference(name_or_id)
        except PybuildError:
            if not hex_match:
                raise
    if ref is not None:
        if ref.digest:
            pinned = store.resolve_tag(ref.familiar)  # a pull by name@digest tags it so
            if pinned is not None and not ref.digest.startswith("sha256:"):
                return _from_descriptor(store, pinned, what)  # sha512: the store is sha256
            if ref.digest.startswith("sha256:") and store.has_blob(ref.digest):
                doc = store.read_json(ref.digest)
                size = store.blob_path(ref.digest).stat().st_size
                media_type = doc.get("mediaType") or OCI_MANIFEST
                return _from_descriptor(store, Descriptor(media_type, ref.digest, size), what)
            raise PybuildError(f"No such image: {ref.familiar}")
        desc = store.resolve_tag(ref.familiar)
        if desc is not None:
            return _from_descriptor(store, desc, what)
    if hex_match:
        found = _find_by_id(store, hex_match.group(1), what)
        if found is not None:
            return found
    raise PybuildError(f"No such image: {ref.familiar if ref else name_or_id}")


# ---- layers as plain tar streams ------------------------------------------------------

def _clean_member_name(name: str, what: str) -> str:
    """A tar path relative to the root, without ./ or /; PybuildError for `..` escapes."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PybuildError(f"{what}: unsafe path {name!r} in archive")
    return "/".join(parts)


def _normalise_tar(src: BinaryIO, sink: layer.LayerSink, what: str) -> None:
    """Copy a tar stream, normalising headers: relative names, numeric owners, int mtimes.

    Entry order is kept (the input is streamed, not buffered); xattrs are kept.
    """
    try:
        tin = tarfile.open(fileobj=src, mode="r|")
    except (tarfile.TarError, OSError, EOFError, PybuildError) as e:
        raise PybuildError(f"{what}: not a tar archive ({e})") from None
    tout = tarfile.open(fileobj=cast(IO[bytes], sink), mode="w|", format=tarfile.PAX_FORMAT)
    try:
        for member in tin:
            name = _clean_member_name(member.name, what)
            if not name:
                continue  # the root directory itself: its metadata is the snapshot's
            info = tarfile.TarInfo(name + ("/" if member.isdir() else ""))
            info.type = member.type
            info.mode = member.mode
            info.uid, info.gid = member.uid, member.gid
            info.uname = info.gname = ""
            info.mtime = int(member.mtime)
            info.size = member.size if member.isreg() else 0
            if member.islnk():
                info.linkname = _clean_member_name(member.linkname, what)
            elif member.issym():
                info.linkname = member.linkname
            info.devmajor, info.devminor = member.devmajor, member.devminor
            info.pax_headers = {k: v for k, v in member.pax_headers.items()
                                if k.startswith("SCHILY.xattr.")}
            tout.addfile(info, tin.extractfile(member) if member.isreg() else None)
        tout.close()
    except (tarfile.TarError, OSError, EOFError, PybuildError) as e:
        if isinstance(e, PybuildError) and str(e).startswith(what):
            raise  # already names the archive (an unsafe path)
        raise PybuildError(f"{what}: cannot read archive ({e})") from None


def import_rootfs(store: Store, tar_path: Path, tag: str, *, compression: str = "gzip",
                  platform: dict[str, str] | None = None) -> Descriptor:
    """`pybuild import ROOTFS.tar TAG`: a rootfs tarball becomes a one-layer image, tagged.

    The tarball may be plain, gzip, xz, bzip2 or zstd; its headers are normalised and it is
    re-compressed, so importing the same bytes twice gives the same layer digest.
    """
    tar_path = Path(tar_path)
    tag_name = store.tag_name(tag)  # reject a bad tag before doing any work
    what = f"import {tar_path}"
    media_type = layer.MEDIA_TYPES.get(compression)
    if media_type is None:
        raise PybuildError(f"unknown compression {compression!r} (use gzip, zstd or none)")
    try:
        raw = open(tar_path, "rb")
    except OSError as e:
        raise PybuildError(f"{what}: {e.strerror}") from None
    with raw, store.writer() as w:
        # the writer of built layers: an imported layer is compressed like a built one
        sink = layer.LayerSink(w, compression)
        try:
            _normalise_tar(layer.open_decompressed(raw), sink, what)
        except BaseException:
            sink.abort()
            raise
        diff_id = sink.close().diff_id
        layer_desc = w.commit(media_type)
    created = created_timestamp()
    config = empty_config(platform)  # the host's unless the rootfs is another platform's
    config["created"] = created
    config["rootfs"]["diff_ids"] = [diff_id]
    config["history"] = [{"created": created, "created_by": "pybuild import",
                          "comment": f"imported from {tar_path.name}"}]
    desc = write(store, config, [layer_desc])
    store.set_tag(tag_name, desc)
    return desc


# ---- archives ---------------------------------------------------------------------------

@dataclass
class _Entry:
    """One image to save and the names it is saved under."""

    image: Image
    tags: list[str]


def _collect(store: Store, names: list[str], platform: dict[str, str] | None = None
             ) -> list[_Entry]:
    """Images for `names`, grouped by image ID in first-seen order (as `docker save`);
    from a multi-platform tag, `platform`'s image (the host's when None)."""
    if not names:
        raise PybuildError("save: no image names given")
    entries: dict[str, _Entry] = {}
    for name in names:
        img = load(store, name, platform)
        entry = entries.setdefault(img.id, _Entry(img, []))
        try:
            ref = parse_reference(name)
        except PybuildError:
            continue  # an image ID: saved without a name
        # load() prefers a tag, so a name that resolves as a tag was loaded as one.
        tag = ref.familiar if not ref.digest and store.resolve_tag(ref.familiar) else None
        if tag and tag not in entry.tags:
            entry.tags.append(tag)
    return list(entries.values())


@contextlib.contextmanager
def _atomic_output(out: Path) -> Iterator[BinaryIO]:
    """A temp file beside `out`, renamed onto it only when the block succeeds."""
    out = Path(out)
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent or Path("."), prefix=f".{out.name}.")
    except OSError as e:
        raise PybuildError(f"cannot write {out}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _tar_info(name: str, size: int = 0, directory: bool = False, mtime: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))


def _damaged(digest: str, why: str) -> PybuildError:
    return PybuildError(f"blob {digest} {why}: the store is damaged (run `pybuild doctor`)")


def _add_blob(tar: tarfile.TarFile, store: Store, name: str, desc: Descriptor) -> None:
    """Copy a blob into the archive, verified: its size and digest must be what it is named."""
    with store.open_blob(desc.digest) as f:
        size = os.fstat(f.fileno()).st_size
        if size != desc.size:
            raise _damaged(desc.digest, f"has {size} bytes, its descriptor says {desc.size}")
        algorithm = desc.digest.split(":", 1)[0]
        h = hashlib.new(algorithm)
        try:
            tar.addfile(_tar_info(name, size), layer._Tee(f, h.update))
        except OSError as e:
            raise _damaged(desc.digest, f"cannot be read ({e})") from None
        if f"{algorithm}:{h.hexdigest()}" != desc.digest:
            raise _damaged(desc.digest, f"hashes to {algorithm}:{h.hexdigest()}")


def _add_uncompressed_layer(tar: tarfile.TarFile, store: Store, name: str,
                            layer_desc: Descriptor, diff_id: str) -> None:
    """Add a layer as a plain tar, verifying the blob's digest and the config's diff_id."""
    with tempfile.TemporaryFile(dir=store.tmp_dir) as tmp, store.open_blob(layer_desc.digest) as blob:
        h = hashlib.sha256()
        packed = hashlib.sha256()
        tee = layer._Tee(blob, packed.update)
        try:
            src = layer.open_decompressed(tee)  # type: ignore[arg-type]
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                tmp.write(chunk)
            while tee.read(_CHUNK):
                pass  # bytes after the compressed stream count for the blob's digest
        except (OSError, EOFError, PybuildError) as e:
            raise _damaged(layer_desc.digest, f"cannot be read ({e})") from None
        if "sha256:" + h.hexdigest() != diff_id:
            raise PybuildError(f"layer {layer_desc.digest} does not match its diff_id {diff_id}: "
                               f"the image is damaged (run `pybuild doctor`)")
        if "sha256:" + packed.hexdigest() != layer_desc.digest:
            raise _damaged(layer_desc.digest, f"hashes to sha256:{packed.hexdigest()}")
        size = tmp.tell()
        tmp.seek(0)
        tar.addfile(_tar_info(name, size), tmp)


def save_docker_archive(store: Store, names: list[str], out: Path,
                        platform: dict[str, str] | None = None) -> None:
    """Write `docker save`'s format (manifest.json, repositories, config, layer.tar files):
    one platform per image, `platform`'s (the host's when None) from a multi-platform tag."""
    entries = _collect(store, names, platform)
    with _atomic_output(Path(out)) as f:
        write_docker_archive(store, entries, f)


def write_docker_archive(store: Store, entries: list[_Entry], f: BinaryIO) -> None:
    """The docker-archive of `entries` (image + names), streamed to `f`."""
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            img = entry.image
            try:
                check_layers(img.layers, img.diff_ids)
            except PybuildError as e:
                raise PybuildError(f"image {img.id}: {e}") from None
            config_name = img.id.split(":", 1)[1] + ".json"
            if config_name not in written:
                _add_blob(tar, store, config_name, img.config_desc)
                written.add(config_name)
            layer_names = []
            for layer_desc, diff_id in zip(img.layers, img.diff_ids):
                dirname = diff_id.split(":", 1)[1]
                if dirname not in written:
                    tar.addfile(_tar_info(dirname, directory=True))
                    _add_bytes(tar, f"{dirname}/VERSION", b"1.0")
                    _add_uncompressed_layer(tar, store, f"{dirname}/layer.tar", layer_desc, diff_id)
                    written.add(dirname)
                layer_names.append(f"{dirname}/layer.tar")
            manifest.append({"Config": config_name, "RepoTags": entry.tags or None,
                             "Layers": layer_names})
            for tag in entry.tags:
                repo, _, t = tag.rpartition(":")
                if layer_names:
                    repositories.setdefault(repo, {})[t] = layer_names[-1].split("/", 1)[0]
        _add_bytes(tar, "manifest.json", canonical_json(manifest))
        if repositories:
            _add_bytes(tar, "repositories", canonical_json(repositories))


def save_oci_archive(store: Store, names: list[str], out: Path,
                     platform: dict[str, str] | None = None) -> None:
    """Write an OCI image layout as a tar; each name is an index.json entry.

    Entries carry org.opencontainers.image.ref.name (the familiar tag, as in the store) and
    io.containerd.image.name (the fully qualified name containerd-based tools import by).
    A multi-platform tag is saved whole (its index and every platform's image), unless
    `platform` picks one.
    """
    multi, entries = _split_multi_platform(store, names, platform)
    with _atomic_output(Path(out)) as f:
        write_oci_archive(store, entries, f, multi)


def _split_multi_platform(store: Store, names: list[str], platform: dict[str, str] | None
                          ) -> tuple[list[tuple[str, Descriptor]], list[_Entry]]:
    """The multi-platform tags among `names` (saved whole unless `platform` picks one), and
    the images of the others."""
    multi: list[tuple[str, Descriptor]] = []
    rest: list[str] = []
    for name in names:
        top = None
        if platform is None and not name.startswith("sha256:"):
            try:
                top = store.resolve_tag(parse_reference(name).familiar)
            except PybuildError:
                top = None
        if top is not None and is_index(store, top):
            multi.append((parse_reference(name).familiar, top))
        else:
            rest.append(name)
    if not names:
        raise PybuildError("save: no image names given")
    return multi, (_collect(store, rest, platform) if rest else [])


def write_oci_archive(store: Store, entries: list[_Entry], f: BinaryIO,
                      multi: list[tuple[str, Descriptor]] | None = None) -> None:
    """The OCI archive of `entries` (image + names) and of whole multi-platform tags
    (`multi`: name, index descriptor), streamed to `f`."""
    multi = multi or []
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    blobs: list[Descriptor] = []
    from pybuild.attest.manifest import blobs_of, is_attestation

    for name, top in multi:
        for e in index_entries(store, top):
            if is_attestation(e):  # statements, not an image: kept with the index
                parts = blobs_of(store, e, name)
            else:
                img = load_descriptor(store, e, name)
                parts = [img.manifest_desc, img.config_desc, *img.layers]
            for d in parts:
                if all(b.digest != d.digest for b in blobs):
                    blobs.append(d)
        if all(b.digest != top.digest for b in blobs):
            blobs.append(top)
        index["manifests"].append(Descriptor(
            OCI_INDEX, top.digest, store.blob_path(top.digest).stat().st_size,
            {REF_NAME: name, CONTAINERD_NAME: parse_reference(name).canonical}).to_dict())
    for entry in entries:
        img = entry.image
        for d in [img.manifest_desc, img.config_desc, *img.layers]:
            if all(b.digest != d.digest for b in blobs):
                blobs.append(d)
        size = store.blob_path(img.manifest_desc.digest).stat().st_size
        plat = img.manifest_desc.platform or _platform_of(img.config)
        tags: list[str | None] = list(entry.tags) or [None]
        for tag in tags:
            annotations = ({REF_NAME: tag, CONTAINERD_NAME: parse_reference(tag).canonical}
                           if tag else None)
            index["manifests"].append(
                Descriptor(OCI_MANIFEST, img.manifest_desc.digest, size, annotations, plat).to_dict())
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        tar.addfile(_tar_info("blobs", directory=True))
        for algorithm in sorted({"sha256"} | {d.digest.split(":", 1)[0] for d in blobs}):
            tar.addfile(_tar_info(f"blobs/{algorithm}", directory=True))
        for d in blobs:
            _add_blob(tar, store, "blobs/" + d.digest.replace(":", "/", 1), d)
        _add_bytes(tar, "index.json", canonical_json(index))
