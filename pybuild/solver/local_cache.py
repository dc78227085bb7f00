"""`--cache-to type=local,dest=DIR` / `--cache-from type=local,src=DIR` in BuildKit's format.

DIR is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`), as BuildKit's
local cache exporter writes it: index.json names the cache manifest under the annotation
`org.opencontainers.image.ref.name` = the tag (default `latest`); the cache manifest is an
OCI image manifest (BuildKit's `image-manifest=true`, its default for type=local) whose
config is the cache config (media type `application/vnd.buildkit.cacheconfig.v0`) and whose
layers are the records' layer blobs, each annotated with its diff_id
(`containerd.io/uncompressed`) and creation time (`buildkit/createdat`). The cache config is
BuildKit's v0 document (moby/buildkit cache/remotecache/v1/types/spec.go):

    {"layers":  [{"blob": "sha256:…", "parent": -1}, {"blob": "sha256:…"}, …],
     "records": [{"digest": "sha256:…"},
                 {"digest": "sha256:…", "inputs": [[{"link": 0}]],
                  "layers": [{"layer": 1, "createdAt": "2026-…Z"}]}, …]}

`layers` are chains (a blob and the index of the layer under it, -1 for none; Go's
`omitempty` leaves out a parent of 0); a record is a cache key (`digest`), the records it
was computed from (`inputs`: per input a list of links to other records) and its results
(`layers`: an index into the chains, the top of the record's filesystem). pybuild writes a
record per step (its digest is pybuild's key; BuildKit's digests hash LLB, so neither tool
hits the other's records) linked to its parent step's record, and a result-less record for
a stage's base. Reading accepts BuildKit's other shape too (an OCI image index listing the
layers and the config, `image-manifest=false`), refuses a document whose indices point
outside it or loop, reads every blob only as `blobs/sha256/<hex>` inside DIR and checks it
against its digest; a layer is copied into the store only when a step hits its record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pybuild import fs
from pybuild.errors import PybuildError
from pybuild.image import _atomic_output
from pybuild.oci_documents import LAYER_TYPES
from pybuild.solver.cache import Record
from pybuild.store import (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
                           REF_NAME, Descriptor, Store, canonical_json, check_digest)

CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
UNCOMPRESSED = "containerd.io/uncompressed"
CREATED_AT = "buildkit/createdat"
DESCRIPTION = "buildkit/description"
IMAGE_NAME = "io.containerd.image.name"
_MAX_JSON = 16 << 20


# ---- writing ---------------------------------------------------------------------------

def rfc3339(t: float) -> str:
    """A time as Go's time.Time marshals it (UTC, fraction without trailing zeros)."""
    dt = datetime.fromtimestamp(t, UTC)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None  # absent, or Go's zero time
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Go writes up to 9 fraction digits; Python reads 6
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = head + "." + (rest[:min(digits, 6)] or "0") + rest[digits:]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _is_digest(value: str) -> bool:
    try:
        check_digest(value)
    except PybuildError:
        return False
    return True


def cache_config(records: list[Record]) -> tuple[dict[str, Any], list[Descriptor]]:
    """BuildKit's cache config for `records` and the annotated layer descriptors it names."""
    by_key = {r.key: r for r in records}
    parents = {r.parent for r in records if _is_digest(r.parent)}
    keys = sorted(by_key.keys() | parents)  # as BuildKit sorts them
    index = {k: i for i, k in enumerate(keys)}
    layers: list[dict[str, Any]] = []
    chain_at: dict[tuple[str, int], int] = {}
    descs: dict[str, Descriptor] = {}
    done: dict[str, int] = {}  # record key -> its chain's index

    def chain(key: str) -> int:
        """The index of the layer chain that is record `key`'s filesystem: its parent
        steps' layers up to the first one not exported, then its own."""
        steps: list[Record] = []
        seen: set[str] = set()
        while key in by_key and key not in seen and key not in done:
            seen.add(key)
            steps.append(by_key[key])
            key = by_key[key].parent
        at = done.get(key, -1)
        for rec in reversed(steps):
            parent = at
            at = chain_at.setdefault((rec.layer.digest, parent), len(layers))
            if at == len(layers):
                layers.append({"blob": rec.layer.digest} | ({"parent": parent} if parent else {}))
            if rec.layer.digest not in descs:
                notes = {UNCOMPRESSED: rec.diff_id, CREATED_AT: rfc3339(rec.created)}
                if rec.description:
                    notes[DESCRIPTION] = rec.description
                descs[rec.layer.digest] = Descriptor(rec.layer.media_type, rec.layer.digest,
                                                     rec.layer.size, notes)
            done[rec.key] = at
        return at

    out: list[dict[str, Any]] = []
    for k in keys:  # fields in spec.go's order: layers (results), digest, inputs
        rec = by_key.get(k)
        if rec is None:
            out.append({"digest": k})
            continue
        item: dict[str, Any] = {
            "layers": [{"layer": chain(k), "createdAt": rfc3339(rec.created)}],
            "digest": k}
        if rec.parent in index:
            item["inputs"] = [[{"link": index[rec.parent]}]]
        out.append(item)
    return {"layers": layers, "records": out}, list(descs.values())


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _atomic(path: Path, data: bytes) -> None:
    with _atomic_output(path) as f:
        f.write(data)


def _copy_blob(store: Store, digest: str, blobs: Path) -> None:
    target = blobs / digest.split(":", 1)[1]
    if target.is_file() and not target.is_symlink():
        return
    with _atomic_output(target) as out, store.open_blob(digest) as src:
        while chunk := src.read(1 << 20):
            out.write(chunk)


@contextlib.contextmanager
def _index_lock(path: Path) -> Iterator[None]:
    """An flock on `path`, removed afterwards as BuildKit's client removes index.json.lock
    (so the layout keeps only its own files). A waiter that locked a file already unlinked
    by the holder before it tries again on the new one."""
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                try:
                    yield
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                return
        finally:
            os.close(fd)


def export(store: Store, dest: str, tag: str, records: list[Record], *,
           image_manifest: bool = True, reset: bool = False) -> str:
    """Write `records` as a BuildKit cache into the layout at `dest` under `tag`; returns
    the cache manifest's digest. `image_manifest=False` writes BuildKit's older shape: an
    OCI image index listing the layers and then the config. `reset` then removes the blobs
    no tag of index.json reaches any more (BuildKit's reset=true)."""
    root = Path(dest)
    blobs = root / "blobs" / "sha256"
    config_doc, layers = cache_config(records)
    config_bytes = json.dumps(config_doc, separators=(",", ":")).encode()
    config = Descriptor(CACHE_CONFIG, _sha256(config_bytes), len(config_bytes))
    if image_manifest:
        media_type = OCI_MANIFEST
        manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": config.to_dict(),
                                   "layers": [d.to_dict() for d in layers]})
    else:
        media_type = OCI_INDEX
        manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            d.to_dict() for d in [*layers, config]]})
    desc = Descriptor(media_type, _sha256(manifest), len(manifest))
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        for d in layers:
            _copy_blob(store, d.digest, blobs)
        for d, data in ((config, config_bytes), (desc, manifest)):  # never in the store
            target = blobs / d.digest.split(":", 1)[1]
            if not target.is_file() or target.is_symlink():
                _atomic(target, data)
        # two builds exporting into one DIR at once: the index is read and replaced under a
        # lock, as BuildKit's client does (index.json.lock); each keeps its own tag
        with _index_lock(root / "index.json.lock"):
            index = _read_index(root, must=False, what=f"--cache-to type=local,dest={dest}")
            index["manifests"] = [m for m in index["manifests"] if not isinstance(m, dict)
                                  or (m.get("annotations") or {}).get(REF_NAME) != tag
                                  or (m.get("annotations") or {}).get(IMAGE_NAME)]
            index["manifests"].append(Descriptor(media_type, desc.digest, desc.size,
                                                 {REF_NAME: tag}).to_dict())
            index.setdefault("schemaVersion", 2)
            index.setdefault("mediaType", OCI_INDEX)
            _atomic(root / "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
            _atomic(root / "index.json", json.dumps(index, indent=2).encode() + b"\n")
            if reset:
                _reset(root, index, f"--cache-to type=local,dest={dest},reset=true")
    except OSError as e:
        raise PybuildError(f"--cache-to type=local,dest={dest}: {e.strerror}: "
                           f"{e.filename}") from None
    return desc.digest


def _reset(root: Path, index: dict[str, Any], what: str) -> None:
    """Remove the blobs of `root` that no entry of `index` reaches (through a manifest's
    config and layers, or an index's manifests). Nothing is removed when a document it
    names cannot be read: what it would have kept is unknown."""
    keep: set[str] = set()
    todo = [m for m in index["manifests"] if isinstance(m, dict)]
    while todo:
        desc = _descriptor(todo.pop(), what)
        if desc.digest in keep:
            continue
        keep.add(desc.digest)
        if desc.media_type in (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST):
            try:
                doc = _blob_json(root, desc, what)
            except PybuildError:
                return
            children = doc.get("manifests") if "manifests" in doc else \
                [doc.get("config"), *(doc.get("layers") or [])]
            todo += [c for c in children or [] if isinstance(c, dict)]
    blobs = root / "blobs" / "sha256"
    for entry in os.scandir(blobs):
        if len(entry.name) == 64 and "sha256:" + entry.name not in keep and \
                entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


# ---- reading ---------------------------------------------------------------------------

def _read(root: Path, name: str, what: str, limit: int = _MAX_JSON) -> bytes:
    try:
        fd = fs.open_in_root(root, name)
    except (OSError, PybuildError):
        raise PybuildError(f"{what}: {name} is missing") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PybuildError(f"{what}: {name} is too large")
    return data


def _read_index(root: Path, must: bool = True, what: str = "") -> dict[str, Any]:
    if not (root / "index.json").exists() and not must:
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    try:
        index = json.loads(_read(root, "index.json", what))
    except (ValueError, UnicodeDecodeError) as e:
        raise PybuildError(f"{what}: index.json is not valid JSON: {e}") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise PybuildError(f"{what}: index.json has no manifests list")
    return index


def _blob_json(root: Path, desc: Descriptor, what: str) -> dict[str, Any]:
    data = _read(root, "blobs/sha256/" + desc.digest.split(":", 1)[1], what)
    if _sha256(data) != desc.digest:
        raise PybuildError(f"{what}: blob {desc.digest} does not match its digest")
    if desc.size != len(data):
        raise PybuildError(f"{what}: blob {desc.digest} is {len(data)} bytes, its "
                           f"descriptor says {desc.size}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise PybuildError(f"{what}: blob {desc.digest} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PybuildError(f"{what}: blob {desc.digest} is not a JSON object")
    return doc


def _descriptor(d: Any, what: str) -> Descriptor:
    if not isinstance(d, dict):
        raise PybuildError(f"{what}: a descriptor is not an object: {str(d)[:80]}")
    try:
        desc = Descriptor.from_dict(d)
    except PybuildError as e:
        raise PybuildError(f"{what}: {e}") from None
    notes = desc.annotations or {}
    if not isinstance(notes, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in notes.items()):
        raise PybuildError(f"{what}: blob {desc.digest}: annotations are not strings")
    return desc


def _find(index: dict[str, Any], tag: str, what: str) -> Descriptor | None:
    """The index entry tagged `tag`, as BuildKit looks it up (image name, then ref name)."""
    entries = [m for m in index["manifests"] if isinstance(m, dict)]
    for key in (IMAGE_NAME, REF_NAME):
        for m in entries:
            if isinstance(m.get("annotations"), dict) and m["annotations"].get(key) == tag:
                return _descriptor(m, what)
    return None


def _int(v: Any, what: str, field: str, low: int, high: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v < high:
        raise PybuildError(f"{what}: cache config: {field} {str(v)[:40]} points outside "
                           f"the document ({low}..{high - 1})")
    return v


def _digests_of(items: list[Any], kind: str, key: str, what: str) -> list[str]:
    """The checked digest under `key` of each object in `items` (cache config layers or
    records); the first that is no object or no digest is one error naming it."""
    out: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise PybuildError(f"{what}: cache config: {kind} {i} is not an object")
        try:
            out.append(check_digest(item.get(key)))  # type: ignore[arg-type]
        except PybuildError as e:
            raise PybuildError(f"{what}: cache config: {kind} {i}: {e}") from None
    return out


def parse_config(doc: dict[str, Any], layer_descs: dict[str, Descriptor],
                 what: str) -> dict[str, Record]:
    """pybuild's records from a BuildKit cache config, every index checked.

    A record's layer is the top of its result's chain; a result whose blob has no
    descriptor, or whose descriptor has no diff_id, gives no record (BuildKit skips such
    results too). Loops and indices out of range are refused."""
    layers, records = doc.get("layers") or [], doc.get("records") or []
    if not isinstance(layers, list) or not isinstance(records, list):
        raise PybuildError(f"{what}: cache config: layers and records must be lists")
    blobs = _digests_of(layers, "layer", "blob", what)
    parents = [_int(la.get("parent", 0), what, f"layer {i} parent", -1, len(layers))
               for i, la in enumerate(layers)]
    ends: set[int] = {-1}  # layers whose chain is known to end at -1
    for i in range(len(layers)):  # each layer is walked once: linear in the document
        path, seen, j = [], set(), i
        while j not in ends:
            if j in seen:
                raise PybuildError(f"{what}: cache config: layer {i}: its chain loops")
            seen.add(j)
            path.append(j)
            j = parents[j]
        ends.update(path)
    digests = _digests_of(records, "record", "digest", what)
    links: list[list[int]] = []
    for i, r in enumerate(records):
        mine: list[int] = []
        inputs = r.get("inputs") or []
        if not isinstance(inputs, list):
            raise PybuildError(f"{what}: cache config: record {i}: inputs is not a list")
        for group in inputs:
            if not isinstance(group, list) or not group:
                raise PybuildError(f"{what}: cache config: record {i}: an input is empty")
            for link in group:
                if not isinstance(link, dict) or not isinstance(link.get("selector", ""), str):
                    raise PybuildError(f"{what}: cache config: record {i}: a malformed link")
                mine.append(_int(link.get("link"), what, f"record {i} link", 0, len(records)))
        links.append(mine)
    state: dict[int, int] = {}  # 1 visiting, 2 done: links must not loop

    def visit(i: int) -> None:
        stack = [(i, iter(links[i]))]
        state[i] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise PybuildError(f"{what}: cache config: record {node}: its inputs loop")
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(links[nxt])))

    for i in range(len(records)):
        if i not in state:
            visit(i)
    out: dict[str, Record] = {}
    for i, r in enumerate(records):
        results = r.get("layers") or []
        if not isinstance(results, list):
            raise PybuildError(f"{what}: cache config: record {i}: layers is not a list")
        for res in results:
            if not isinstance(res, dict):
                raise PybuildError(f"{what}: cache config: record {i}: a malformed result")
            top = _int(res.get("layer"), what, f"record {i} layer", 0, len(layers))
            desc = layer_descs.get(blobs[top])
            notes = (desc.annotations or {}) if desc else {}
            if desc is None or UNCOMPRESSED not in notes or digests[i] in out:
                continue
            try:
                diff_id = check_digest(notes[UNCOMPRESSED])
            except PybuildError as e:
                raise PybuildError(f"{what}: layer {desc.digest}: {e}") from None
            created = _parse_time(res.get("createdAt")) or _parse_time(notes.get(CREATED_AT)) \
                or time.time()
            parent = digests[links[i][0]] if links[i] else ""
            out[digests[i]] = Record(
                digests[i], parent, "", notes.get(DESCRIPTION, ""),
                Descriptor(desc.media_type, desc.digest, desc.size), diff_id, "", {},
                created, created)
    return out


def load(src: str, tag: str, digest: str = "") -> dict[str, Record]:
    """The records of the cache tagged `tag` in the layout at `src` (none if it is absent),
    or of the cache manifest `digest` (BuildKit's `digest=`: index.json is not read)."""
    root = Path(src)
    what = f"--cache-from type=local,src={src}"
    if digest:
        name = "blobs/sha256/" + check_digest(digest).split(":", 1)[1]
        entry: Descriptor | None = Descriptor("", digest, len(_read(root, name, what)))
    elif not (root / "index.json").exists():
        return {}
    else:
        entry = _find(_read_index(root, what=what), tag, what)
    if entry is None:
        return {}
    manifest = _blob_json(root, entry, what)
    media_type = manifest.get("mediaType") or entry.media_type or (  # inferred, as BuildKit
        OCI_MANIFEST if "config" in manifest else OCI_INDEX if "manifests" in manifest else "")
    layer_descs: dict[str, Descriptor] = {}
    config: Descriptor | None = None
    if media_type in (OCI_MANIFEST, DOCKER_MANIFEST):
        listed = manifest.get("layers") or []
        if isinstance(manifest.get("config"), dict):
            config = _descriptor(manifest["config"], what)
    elif media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST):
        listed = []
        for m in manifest.get("manifests") or []:
            if isinstance(m, dict) and m.get("mediaType") == CACHE_CONFIG:
                config = _descriptor(m, what)
            else:
                listed.append(m)
    else:
        raise PybuildError(f"{what}: the manifest tagged {tag} has media type "
                           f"{str(media_type)[:80]!r}, not a cache manifest")
    if not isinstance(listed, list):
        raise PybuildError(f"{what}: the cache manifest's layers are not a list")
    if config is None or config.media_type != CACHE_CONFIG:
        found = config.media_type if config else "none"
        raise PybuildError(f"{what}: the manifest tagged {tag} is not a BuildKit cache (config "
                           f"media type {found[:80]!r}, want {CACHE_CONFIG})")
    for m in listed:
        d = _descriptor(m, what)
        if d.media_type not in LAYER_TYPES:
            raise PybuildError(f"{what}: blob {d.digest} has media type {d.media_type[:80]!r}, "
                               f"not a layer")
        layer_descs.setdefault(d.digest, d)
    return parse_config(_blob_json(root, config, what), layer_descs, what)


def fetch_layer(store: Store, src: str, layer: Descriptor) -> None:
    """Copy one layer blob from the layout into the store, its digest verified."""
    if store.has_blob(layer.digest):
        return
    name = "blobs/sha256/" + check_digest(layer.digest).split(":", 1)[1]
    try:
        fd = fs.open_in_root(Path(src), name)
    except (OSError, PybuildError):
        raise PybuildError(f"--cache-from type=local,src={src}: {name} is missing") from None
    with os.fdopen(fd, "rb") as f, store.writer(expected_digest=layer.digest) as w:
        while chunk := f.read(1 << 20):
            w.write(chunk)
        try:
            w.commit(layer.media_type)
        except PybuildError as e:
            raise PybuildError(f"--cache-from type=local,src={src}: {e}") from None
