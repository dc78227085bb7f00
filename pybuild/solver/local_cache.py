"""`--cache-to type=local,dest=DIR` / `--cache-from type=local,src=DIR`: the build cache as
an OCI image layout in a directory, as BuildKit's local cache is laid out.

DIR holds `oci-layout`, `index.json` and `blobs/sha256/`: index.json names one manifest per
tag (annotation org.opencontainers.image.ref.name, default tag `latest`); the manifest's
config is pybuild's cache document (the same one type=registry pushes, see docs/cache.md)
and its layers are the records' layer blobs. skopeo and umoci read it as any OCI layout.
Reading it back checks every blob against its digest; names in it are only ever resolved
inside DIR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pybuild import fs
from pybuild.errors import PybuildError
from pybuild.image import _atomic_output
from pybuild.store import OCI_INDEX, OCI_MANIFEST, REF_NAME, Descriptor, Store, canonical_json, check_digest

_MAX_JSON = 16 << 20


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


def export(store: Store, dest: str, tag: str, config: Descriptor, layers: list[Descriptor]) -> str:
    """Write the cache manifest (config + layers) into the layout at `dest` under `tag`."""
    root = Path(dest)
    blobs = root / "blobs" / "sha256"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        for d in [config, *layers]:
            _copy_blob(store, d.digest, blobs)
        manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": config.to_dict(),
                                   "layers": [d.to_dict() for d in layers]})
        desc = store.put_bytes(manifest, OCI_MANIFEST)
        _copy_blob(store, desc.digest, blobs)
        index = _read_index(root, must=False)
        index["manifests"] = [m for m in index["manifests"] if not isinstance(m, dict)
                              or (m.get("annotations") or {}).get(REF_NAME) != tag]
        index["manifests"].append(Descriptor(OCI_MANIFEST, desc.digest, desc.size,
                                             {REF_NAME: tag}).to_dict())
        _atomic(root / "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        _atomic(root / "index.json", json.dumps(index, indent=2).encode() + b"\n")
    except OSError as e:
        raise PybuildError(f"--cache-to type=local,dest={dest}: {e.strerror}: "
                           f"{e.filename}") from None
    return desc.digest


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
        index = json.loads(_read(root, "index.json", what or str(root)))
    except (ValueError, UnicodeDecodeError) as e:
        raise PybuildError(f"{what or root}: index.json is not valid JSON: {e}") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise PybuildError(f"{what or root}: index.json has no manifests list")
    return index


def _blob_json(root: Path, digest: str, what: str) -> dict[str, Any]:
    import hashlib

    data = _read(root, "blobs/sha256/" + check_digest(digest).split(":", 1)[1], what)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise PybuildError(f"{what}: blob {digest} does not match its digest")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise PybuildError(f"{what}: blob {digest} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PybuildError(f"{what}: blob {digest} is not a JSON object")
    return doc


def load(src: str, tag: str) -> dict[str, Any] | None:
    """The cache document tagged `tag` in the layout at `src` (None when there is none)."""
    root = Path(src)
    what = f"--cache-from type=local,src={src}"
    if not (root / "index.json").exists():
        return None
    index = _read_index(root, what=what)
    entry = next((m for m in index["manifests"] if isinstance(m, dict)
                  and (m.get("annotations") or {}).get(REF_NAME) == tag), None)
    if entry is None:
        return None
    manifest = _blob_json(root, Descriptor.from_dict(entry).digest, what)
    if not isinstance(manifest.get("config"), dict):
        raise PybuildError(f"{what}: the manifest tagged {tag} has no config")
    return _blob_json(root, Descriptor.from_dict(manifest["config"]).digest, what)


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
