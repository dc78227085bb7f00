"""Share the build cache through a registry: `--cache-to` / `--cache-from type=registry`.

(type=local writes BuildKit's own cache format instead: pybuild/solver/local_cache.py.)
The registry cache travels as one OCI manifest: its config blob (media type
`application/vnd.pybuild.cache.config.v1+json`) lists the cache records, and its layers
are the records' layer blobs. Importing reads only the config; a layer is downloaded the
first time a step hits its record. The format is documented in docs/cache.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pybuild.solver.cache import Record
from pybuild.digest import Digest
from pybuild.errors import PybuildError
from pybuild.store import Descriptor, Store

CONFIG_MEDIA_TYPE = "application/vnd.pybuild.cache.config.v1+json"
FORMAT_VERSION = 1
# type=inline: the cache document rides in the image config under this key
INLINE_KEY = "io.pybuild.cache.v1"


@dataclass(frozen=True)
class CacheSpec:
    """A parsed `--cache-to`/`--cache-from` value: `type=registry,ref=R[,mode=min|max]`."""

    ref: str             # registry reference; for type=local the layout directory
    mode: str = "min"
    type: str = "registry"  # registry | local | inline
    tag: str = "latest"     # type=local: the layout's tag
    digest: str = ""        # type=local --cache-from: the cache manifest, instead of the tag
    image_manifest: bool = True  # type=local --cache-to: an image manifest (else an index)
    reset: bool = False     # type=local --cache-to: drop the blobs index.json no longer names


def parse_cache_spec(value: str, flag: str) -> CacheSpec:
    fields: dict[str, str] = {}
    for part in value.split(","):
        k, sep, v = part.partition("=")
        if not sep:
            # docker accepts a bare reference as type=registry,ref=<it>
            fields.setdefault("ref", part.strip())
            continue
        fields[k.strip().lower()] = v.strip()
    kind = fields.get("type", "registry")
    if kind not in ("registry", "local", "inline"):
        raise PybuildError(f"{flag}: unsupported cache type {kind!r} (registry, local, inline)")
    if kind == "inline":
        if flag != "--cache-to":
            raise PybuildError(f"{flag}: type=inline is written by --cache-to; read an inline "
                               f"cache with --cache-from type=registry,ref=IMAGE")
        if fields.get("mode", "min") != "min":
            raise PybuildError(f"{flag}: type=inline only supports mode=min")
        return CacheSpec("", "min", "inline")
    if kind == "local":
        key = "dest" if flag == "--cache-to" else "src"
        if not fields.get(key):
            raise PybuildError(f"{flag}: {key}= is required (type=local,{key}=DIR)")
        # BuildKit's local cache options that pybuild implements; any other is refused,
        # never parsed and ignored
        known = {"type", key, "mode", "tag"} | (
            {"image-manifest", "oci-mediatypes", "reset"} if flag == "--cache-to" else {"digest"})
        unknown = sorted(set(fields) - known)
        if unknown:
            raise PybuildError(f"{flag}: type=local has no option {unknown[0]!r} "
                               f"({', '.join(sorted(known - {'type'}))})")
        mode = fields.get("mode", "min")
        if mode not in ("min", "max"):
            raise PybuildError(f"{flag}: mode must be min or max, not {mode!r}")
        flags = {}
        for name in ("image-manifest", "oci-mediatypes", "reset"):
            v = fields.get(name, "false" if name == "reset" else "true").lower()
            if v not in ("true", "false", "1", "0"):
                raise PybuildError(f"{flag}: {name} must be true or false, not {v!r}")
            flags[name] = v in ("true", "1")
        if not flags["oci-mediatypes"]:
            raise PybuildError(f"{flag}: oci-mediatypes=false is not supported (pybuild writes "
                               f"OCI media types, BuildKit's default)")
        digest = fields.get("digest", "")
        if digest:
            digest = str(Digest.sha256(digest, f"{flag} digest"))
        return CacheSpec(fields[key], mode, "local", fields.get("tag") or "latest", digest,
                         flags["image-manifest"], flags["reset"])
    if not fields.get("ref"):
        raise PybuildError(f"{flag}: ref= is required (type=registry,ref=HOST/REPO:TAG)")
    mode = fields.get("mode", "min")
    if mode not in ("min", "max"):
        raise PybuildError(f"{flag}: mode must be min or max, not {mode!r}")
    return CacheSpec(fields["ref"], mode)


def export(store: Store, spec: CacheSpec, records: list[Record], client: Any) -> str:
    """Push `records` and their layers to `spec.ref`; returns the manifest digest."""
    from pybuild import registry

    seen: dict[str, Record] = {}
    for r in records:
        seen.setdefault(r.key, r)
    if spec.type == "local":  # BuildKit's own cache format (pybuild/solver/local_cache.py)
        from pybuild.solver import local_cache

        return local_cache.export(store, spec.ref, spec.tag, list(seen.values()),
                                  image_manifest=spec.image_manifest, reset=spec.reset)
    doc = document(list(seen.values()))
    config = store.put_json(doc, CONFIG_MEDIA_TYPE)
    layers = list({r.layer.digest: r.layer for r in seen.values()}.values())
    return registry.push_artifact(store, spec.ref, config, layers, client=client)


def document(records: list[Record]) -> dict[str, Any]:
    """The cache document (format: docs/cache.md) listing `records`."""
    return {"version": FORMAT_VERSION, "records": [_to_json(r) for r in records]}


def inline_config(specs: list[CacheSpec], records: list[Record]) -> dict[str, Any]:
    """What --cache-to type=inline adds to the image config (nothing without it)."""
    if not any(s.type == "inline" for s in specs):
        return {}
    return {INLINE_KEY: document(list({r.key: r for r in records}.values()))}


def load(store: Store, spec: CacheSpec, client: Any) -> dict[str, Record]:
    """Records offered by `spec.ref` (empty if nothing was exported there yet)."""
    from pybuild import registry

    if spec.type == "local":
        from pybuild.solver import local_cache

        return local_cache.load(spec.ref, spec.tag, spec.digest)
    found = registry.fetch_artifact(store, spec.ref, client=client)
    if found is None:
        return {}
    doc, _layers = found
    if isinstance(doc.get(INLINE_KEY), dict):  # an image built with --cache-to type=inline
        doc = doc[INLINE_KEY]
    if doc.get("version") != FORMAT_VERSION or not isinstance(doc.get("records"), list):
        raise PybuildError(f"--cache-from {spec.ref}: not a pybuild cache (format "
                           f"{doc.get('version')!r})")
    out = {}
    for item in doc["records"]:
        try:
            rec = _from_json(item)
        except (KeyError, TypeError, ValueError, PybuildError) as e:
            raise PybuildError(f"--cache-from {spec.ref}: malformed record: {e}") from None
        out[rec.key] = rec
    return out


def fetch_layer(store: Store, spec: CacheSpec, rec: Record, client: Any) -> None:
    from pybuild import registry

    if spec.type == "local":
        from pybuild.solver import local_cache

        local_cache.fetch_layer(store, spec.ref, rec.layer)
        return
    registry.fetch_blobs(store, spec.ref, [rec.layer], client=client)


def _to_json(r: Record) -> dict[str, Any]:
    return {"key": r.key, "parent": r.parent, "description": r.description,
            "layer": r.layer.to_dict(), "diff_id": r.diff_id, "chain_id": r.chain_id,
            "inputs": r.inputs, "created": r.created}


def _from_json(d: dict[str, Any]) -> Record:
    """A record as offered: every digest validated; its diff_id is still only a claim,
    checked against the layer when it is used, and its chain id is recomputed then."""
    if not isinstance(d, dict):
        raise PybuildError(f"record is not an object: {str(d)[:80]}")
    if not isinstance(d["description"], str) or not isinstance(d["inputs"], dict) \
            or not isinstance(d["parent"], str):
        raise PybuildError(f"record {str(d.get('key'))[:80]}: wrong field types")
    key = str(Digest.sha256(d["key"], "record key"))
    diff_id = str(Digest.sha256(d["diff_id"], "record diff_id"))
    chain_id = str(Digest.sha256(d["chain_id"], "record chain_id"))
    return Record(key, d["parent"], "", d["description"], Descriptor.from_dict(d["layer"]),
                  diff_id, chain_id, d["inputs"], float(d["created"]), float(d["created"]))
