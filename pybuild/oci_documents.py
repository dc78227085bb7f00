"""OCI and Docker image documents checked once, into typed values: index, manifest, config.

Everything pybuild reads from a registry, an archive or its own store passes through here
before any field is used, so a hostile or broken document ("platform": "linux", "rootfs":
"x", "Env": 5, a negative size, a digest "sha256:../../etc") is one clear error naming the
field, never a traceback deep inside a pull or a build. The checks follow the image spec
(image-spec descriptor.md, manifest.md, image-index.md, config.md) and what containerd
enforces: digests of a known algorithm with the right length, sizes that are non-negative
integers, manifests of at most 4 MiB.

Digests: sha256 and sha512 are understood (the two algorithms image-spec registers);
`hasher()` gives the streaming hash a digest is checked with. Anything else is refused by
name.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pybuild.errors import PybuildError
from pybuild.layer import MEDIA_TYPES
from pybuild.store import (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, INDEX_TYPES, MANIFEST_TYPES,
                           OCI_INDEX, OCI_MANIFEST, Descriptor)

# containerd's limit on a manifest or index it will read (remotes/docker: 4 MiB).
MAX_MANIFEST = 4 << 20
# An image config is read whole into memory: real ones are a few KiB, a 10,000-step
# history a few MiB.
MAX_CONFIG = 16 << 20
# No real layer comes near 1 TiB; a size beyond it is a lie that would only be found
# after filling the disk.
MAX_BLOB = 1 << 40

ALGORITHMS = {"sha256": 64, "sha512": 128}

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset({
    *MEDIA_TYPES.values(),  # the OCI tar, tar+gzip and tar+zstd types pybuild writes
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
})
# RFC 6838 type/subtype, as image-spec's descriptor grammar.
_MEDIA_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/"
                            r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_PLATFORM_WORD_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class DocumentError(PybuildError):
    """A document (manifest, index, config) that does not follow the image spec."""


def check_digest(value: object, what: str = "digest") -> str:
    """`value` if it is a digest of a supported algorithm, else DocumentError naming it."""
    if not isinstance(value, str):
        raise DocumentError(f"{what} must be a string, not {_kind(value)}")
    m = _DIGEST_RE.match(value)
    if m is None:
        raise DocumentError(f"{what} {_show(value)} is not a digest (algorithm:hex)")
    algorithm, encoded = m.groups()
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise DocumentError(f"{what} {_show(value)} uses the unsupported digest algorithm "
                            f"{algorithm!r} (supported: sha256, sha512)")
    if len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise DocumentError(f"{what} {_show(value)} is not a {algorithm} digest "
                            f"({length} lowercase hex digits)")
    return value


def hasher(digest: str) -> Any:
    """A fresh hashlib object of `digest`'s algorithm (sha256 or sha512)."""
    return hashlib.new(check_digest(digest).split(":", 1)[0])


def digest_of(data: bytes, like: str = "sha256:") -> str:
    """The digest of `data` in the algorithm of `like` ("sha512:…" → sha512)."""
    algorithm = like.split(":", 1)[0]
    if algorithm not in ALGORITHMS:
        raise DocumentError(f"unsupported digest algorithm {algorithm!r} (supported: sha256, "
                            f"sha512)")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _str(doc: dict[str, Any], key: str, what: str, *, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise DocumentError(f"{what}: {key} is missing")
        return None
    if not isinstance(value, str):
        raise DocumentError(f"{what}: {key} must be a string, not {_kind(value)}")
    return value


def _size(value: object, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DocumentError(f"{what}: size must be an integer, not {_kind(value)}")
    if value < 0:
        raise DocumentError(f"{what}: size {value} is negative")
    if value > limit:
        raise DocumentError(f"{what}: size {value} is larger than the limit of {limit} bytes")
    return value


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    """`body` as a JSON object; DocumentError if it is not JSON or not an object."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DocumentError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise DocumentError(f"{what} is not a JSON object (it is {_kind(doc)})")
    return doc


def parse_platform(value: object, what: str) -> dict[str, str] | None:
    """An index entry's platform: an object with string os and architecture."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DocumentError(f"{what}: platform must be an object, not {_kind(value)}")
    out: dict[str, str] = {}
    for key in ("architecture", "os", "variant", "os.version"):
        v = _str(value, key, f"{what}: platform", required=key in ("architecture", "os"))
        if v is not None:
            if key != "os.version" and not _PLATFORM_WORD_RE.match(v):
                raise DocumentError(f"{what}: platform {key} {_show(v)} is not a platform name")
            out[key] = v
    features = value.get("os.features")
    if features is not None and (not isinstance(features, list)
                                 or not all(isinstance(f, str) for f in features)):
        raise DocumentError(f"{what}: platform os.features must be a list of strings")
    return out


def parse_descriptor(value: object, what: str, *, media_types: frozenset[str] | None = None,
                     limit: int = MAX_BLOB) -> Descriptor:
    """A content descriptor; `media_types` (when given) are the ones allowed here."""
    if not isinstance(value, dict):
        raise DocumentError(f"{what} must be an object, not {_kind(value)}")
    media_type = _str(value, "mediaType", what, required=True)
    assert media_type is not None
    if not _MEDIA_TYPE_RE.match(media_type):
        raise DocumentError(f"{what}: mediaType {_show(media_type)} is not a media type")
    if media_types is not None and media_type not in media_types:
        raise DocumentError(f"{what}: unexpected mediaType {media_type!r} (expected "
                            f"{' or '.join(sorted(media_types))})")
    if "digest" not in value:
        raise DocumentError(f"{what}: digest is missing")
    digest = check_digest(value["digest"], f"{what}: digest")
    if "size" not in value:
        raise DocumentError(f"{what}: size is missing")
    size = _size(value["size"], what, limit)
    annotations = value.get("annotations")
    if annotations is not None and (not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())):
        raise DocumentError(f"{what}: annotations must be an object of strings")
    platform = parse_platform(value.get("platform"), what)
    return Descriptor(media_type, digest, size, annotations or None, platform or None)


@dataclass(frozen=True)
class Index:
    """An OCI image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Manifest:
    """An OCI image manifest or Docker schema 2 manifest: a config and its layers."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    """An image config whose fields pybuild reads have the types the spec gives them.

    `doc` is the document itself (pybuild copies it into the images it builds);
    everything in it that pybuild uses has been checked.
    """

    doc: dict[str, Any]
    os: str | None
    architecture: str | None
    variant: str | None
    diff_ids: tuple[str, ...]

    @property
    def platform(self) -> dict[str, str] | None:
        if not self.os or not self.architecture:
            return None
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


def _schema(doc: dict[str, Any], what: str) -> None:
    version = doc.get("schemaVersion")
    if version == 1:
        raise DocumentError(f"{what}: Docker image manifest schema 1 is not supported "
                            f"(deprecated by docker since 2017): push the image again with a "
                            f"current client")
    if version != 2:
        raise DocumentError(f"{what}: schemaVersion must be 2, not {version!r}")


def _list(doc: dict[str, Any], key: str, what: str) -> list[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DocumentError(f"{what}: {key} must be a list, not {_kind(value)}")
    return value


def kind_of(doc: dict[str, Any], declared: str | None = None) -> str:
    """The media type a document is: its own mediaType, else the declared one, else sniffed."""
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if declared in INDEX_TYPES | MANIFEST_TYPES:
        return declared
    if "manifests" in doc and "config" not in doc:
        return OCI_INDEX
    return OCI_MANIFEST


def parse_index_doc(doc: dict[str, Any], what: str) -> Index:
    _schema(doc, what)
    media_type = kind_of(doc, OCI_INDEX)
    if media_type not in INDEX_TYPES:
        raise DocumentError(f"{what}: unexpected mediaType {media_type!r} for an index")
    entries = tuple(parse_descriptor(m, f"{what}: manifests[{i}]", limit=MAX_MANIFEST)
                    for i, m in enumerate(_list(doc, "manifests", what)))
    return Index(media_type, entries)


def parse_manifest_doc(doc: dict[str, Any], what: str, *, artifact: bool = False) -> Manifest:
    """An image manifest; `artifact` allows any config and layer media types (the cache)."""
    _schema(doc, what)
    media_type = kind_of(doc, OCI_MANIFEST)
    if media_type not in MANIFEST_TYPES:
        raise DocumentError(f"{what}: unexpected mediaType {media_type!r} for an image manifest")
    if "config" not in doc:
        raise DocumentError(f"{what}: config is missing")
    config = parse_descriptor(doc["config"], f"{what}: config", limit=MAX_CONFIG,
                              media_types=None if artifact else CONFIG_TYPES)
    layers = tuple(parse_descriptor(d, f"{what}: layers[{i}]",
                                    media_types=None if artifact else LAYER_TYPES)
                   for i, d in enumerate(_list(doc, "layers", what)))
    return Manifest(media_type, config, layers)


def parse_document(body: bytes, what: str, declared: str | None = None, *,
                   artifact: bool = False) -> Index | Manifest:
    """A manifest or an index, whichever `body` is."""
    if len(body) > MAX_MANIFEST:
        raise DocumentError(f"{what} is larger than {MAX_MANIFEST} bytes")
    doc = parse_json(body, what)
    if doc.get("schemaVersion") == 1:
        _schema(doc, what)
    if kind_of(doc, declared) in INDEX_TYPES:
        return parse_index_doc(doc, what)
    return parse_manifest_doc(doc, what, artifact=artifact)


def parse_manifest(body: bytes, what: str, *, artifact: bool = False) -> Manifest:
    if len(body) > MAX_MANIFEST:
        raise DocumentError(f"{what} is larger than {MAX_MANIFEST} bytes")
    return parse_manifest_doc(parse_json(body, what), what, artifact=artifact)


def parse_index(body: bytes, what: str) -> Index:
    if len(body) > MAX_MANIFEST:
        raise DocumentError(f"{what} is larger than {MAX_MANIFEST} bytes")
    return parse_index_doc(parse_json(body, what), what)


_CONFIG_LISTS = ("Env", "Cmd", "Entrypoint", "OnBuild", "Shell")
_CONFIG_STRINGS = ("User", "WorkingDir", "StopSignal", "Hostname", "Domainname")
_CONFIG_OBJECTS = ("ExposedPorts", "Volumes", "Healthcheck")


def parse_config_doc(doc: dict[str, Any], what: str) -> ImageConfig:
    os_ = _str(doc, "os", what)
    arch = _str(doc, "architecture", what)
    variant = _str(doc, "variant", what)
    for key in ("created", "author", "os.version"):
        _str(doc, key, what)
    run = doc.get("config")
    if run is not None:
        if not isinstance(run, dict):
            raise DocumentError(f"{what}: config must be an object, not {_kind(run)}")
        for key in _CONFIG_LISTS:
            value = run.get(key)
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(v, str) for v in value)):
                raise DocumentError(f"{what}: config.{key} must be a list of strings, "
                                    f"not {_kind(value)}")
        for key in _CONFIG_STRINGS:
            _str(run, key, f"{what}: config")
        for key in _CONFIG_OBJECTS:
            value = run.get(key)
            if value is not None and not isinstance(value, dict):
                raise DocumentError(f"{what}: config.{key} must be an object, not {_kind(value)}")
        labels = run.get("Labels")
        if labels is not None and (not isinstance(labels, dict) or not all(
                isinstance(v, str) for v in labels.values())):
            raise DocumentError(f"{what}: config.Labels must be an object of strings")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise DocumentError(f"{what}: rootfs must be an object, not {_kind(rootfs)}")
    if rootfs.get("type") != "layers":
        raise DocumentError(f"{what}: rootfs.type must be \"layers\", not {rootfs.get('type')!r}")
    raw_ids = rootfs.get("diff_ids")
    if not isinstance(raw_ids, list):
        raise DocumentError(f"{what}: rootfs.diff_ids must be a list, not {_kind(raw_ids)}")
    diff_ids = tuple(check_digest(d, f"{what}: rootfs.diff_ids[{i}]")
                     for i, d in enumerate(raw_ids))
    for i, d in enumerate(diff_ids):
        if not d.startswith("sha256:"):
            raise DocumentError(f"{what}: rootfs.diff_ids[{i}] {d[:20]}...: layer diff_ids "
                                f"must be sha256 (snapshots are named by them)")
    history = _list(doc, "history", what)
    for i, h in enumerate(history):
        if not isinstance(h, dict):
            raise DocumentError(f"{what}: history[{i}] must be an object, not {_kind(h)}")
        for key in ("created", "created_by", "author", "comment"):
            _str(h, key, f"{what}: history[{i}]")
        empty = h.get("empty_layer")
        if empty is not None and not isinstance(empty, bool):
            raise DocumentError(f"{what}: history[{i}].empty_layer must be a boolean")
    return ImageConfig(doc, os_, arch, variant, diff_ids)


def parse_config(body: bytes, what: str) -> ImageConfig:
    if len(body) > MAX_CONFIG:
        raise DocumentError(f"{what} is larger than {MAX_CONFIG} bytes")
    return parse_config_doc(parse_json(body, what), what)


def check_image(manifest: Manifest, config: ImageConfig, what: str) -> None:
    """A manifest and its config agree: one diff_id per layer."""
    if len(config.diff_ids) != len(manifest.layers):
        raise DocumentError(f"{what}: the config lists {len(config.diff_ids)} diff_ids for "
                            f"{len(manifest.layers)} layers")


__all__ = ["ALGORITHMS", "CONFIG_TYPES", "DOCKER_CONFIG", "DOCKER_MANIFEST",
           "DOCKER_MANIFEST_LIST", "DocumentError", "ImageConfig", "Index", "LAYER_TYPES",
           "MAX_BLOB", "MAX_CONFIG", "MAX_MANIFEST", "Manifest", "OCI_CONFIG", "OCI_INDEX",
           "OCI_MANIFEST", "check_digest", "check_image", "digest_of", "hasher", "kind_of",
           "parse_config", "parse_config_doc", "parse_descriptor", "parse_document",
           "parse_index", "parse_index_doc", "parse_json", "parse_manifest",
           "parse_manifest_doc", "parse_platform"]
