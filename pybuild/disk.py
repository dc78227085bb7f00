"""What images, containers, volumes and the build cache take on disk; dangling images and
their pruning (`pybuild history`, `pybuild system df`, `pybuild image prune`).

Sizes are docker's: a layer's size is the size of its content once extracted (regular
files and symlinks, each hardlinked file once), not its compressed blob. It is read once
from the layer's tar stream and remembered in the store's database (table layer_sizes).
"""

from __future__ import annotations

import os
import sqlite3
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pybuild import image as imagemod
from pybuild import layer
from pybuild.errors import PybuildError
from pybuild.liveness import tree_size
from pybuild.store import MANIFEST_TYPES, Descriptor, Store


def _cached(store: Store, diff_id: str) -> int | None:
    try:
        store.db.execute("CREATE TABLE IF NOT EXISTS layer_sizes "
                         "(diff_id TEXT PRIMARY KEY, size INTEGER NOT NULL)")
        row = store.db.execute("SELECT size FROM layer_sizes WHERE diff_id = ?",
                               (diff_id,)).fetchone()
    except sqlite3.Error:
        return None  # a store we may only read: sizes are computed each time
    return None if row is None else int(row[0])


def content_size(store: Store, desc: Descriptor, diff_id: str) -> int:
    """The extracted size of one layer (docker's SIZE), from the cache or its tar stream."""
    cached = _cached(store, diff_id)
    if cached is not None:
        return cached
    total = 0
    try:
        with store.open_blob(desc.digest) as blob, \
                tarfile.open(fileobj=layer.open_decompressed(blob), mode="r|") as tar:
            for m in tar:
                if m.isreg():
                    total += m.size
                elif m.issym():
                    total += len(m.linkname.encode())
    except (tarfile.TarError, OSError, EOFError, PybuildError) as e:
        raise PybuildError(f"cannot read layer {desc.digest}: {e} (run `pybuild doctor`)") from None
    try:
        with store.db:
            store.db.execute("INSERT OR REPLACE INTO layer_sizes VALUES (?, ?)", (diff_id, total))
    except sqlite3.Error:
        pass
    return total


def layer_sizes(store: Store, img: imagemod.Image) -> list[int]:
    """Extracted size of each layer of `img`, base first (0 for a layer whose blob is absent)."""
    out = []
    for d, diff_id in zip(img.layers, img.diff_ids):
        out.append(content_size(store, d, diff_id) if store.has_blob(d.digest) else 0)
    return out


@dataclass
class HistoryRow:
    """One line of `pybuild history`, newest first."""

    id: str            # the image ID on the top line, "<missing>" below (as BuildKit images)
    created: str
    created_by: str
    size: int
    comment: str


def history(store: Store, name: str) -> list[HistoryRow]:
    """An image's history with each layer's size, newest first (as `docker history`)."""
    img = imagemod.load(store, name)
    sizes = iter(layer_sizes(store, img))
    rows: list[HistoryRow] = []
    for h in img.config.get("history") or []:
        if not isinstance(h, dict):
            continue
        size = 0 if h.get("empty_layer") else next(sizes, 0)
        rows.append(HistoryRow("<missing>", str(h.get("created") or ""),
                               str(h.get("created_by") or ""), size, str(h.get("comment") or "")))
    if not rows:  # an image without history: one line per layer, as docker shows it
        rows = [HistoryRow("<missing>", str(img.config.get("created") or ""), "", s, "")
                for s in sizes]
    rows.reverse()
    if rows:
        rows[0].id = img.id
    return rows


# ---- images in the store -----------------------------------------------------------------

@dataclass
class ImageInfo:
    image: imagemod.Image
    tags: list[str]
    containers: int = 0
    sizes: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(self.sizes)


def all_images(store: Store) -> list[ImageInfo]:
    """Every image (tagged ones and dangling ones), one entry per image ID."""
    from pybuild.containers import list_containers

    by_id: dict[str, ImageInfo] = {}
    tags_of: dict[str, list[str]] = {}
    for tag, desc in store.list_tags().items():
        tags_of.setdefault(desc.digest, []).append(tag)
    for desc in imagemod._manifests_in_store(store):
        try:
            img = imagemod.load(store, desc.digest)
        except PybuildError:
            continue
        if not all(store.has_blob(d.digest) for d in img.layers):
            continue  # a manifest whose layers are gone is no image any more
        info = by_id.setdefault(img.id, ImageInfo(img, []))
        for t in tags_of.get(desc.digest, []):
            if t not in info.tags:
                info.tags.append(t)
    # an index tag: its tags belong to the platform image load() picks
    for tag, desc in store.list_tags().items():
        if desc.media_type not in MANIFEST_TYPES:
            try:
                img = imagemod.load(store, tag)
            except PybuildError:
                continue
            info = by_id.setdefault(img.id, ImageInfo(img, []))
            if tag not in info.tags:
                info.tags.append(tag)
    for c in list_containers(store):
        if c.image_id in by_id:
            by_id[c.image_id].containers += 1
    for info in by_id.values():
        info.sizes = layer_sizes(store, info.image)
    return list(by_id.values())


@dataclass
class PruneResult:
    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    reclaimed: int = 0


def prune_images(store: Store, *, all: bool = False) -> PruneResult:
    """Remove dangling images (no tag), or with `all` every image no container uses.

    Blobs a cache record or a container still needs stay; snapshots no remaining image,
    record or container needs are removed too.
    """
    from pybuild.containers import chain_ids_in_use, list_containers
    from pybuild.snapshot import Snapshotter, chain_ids
    from pybuild.solver.cache import Cache

    result = PruneResult()
    with store.gc_lock(shared=False), store.lock():
        infos = all_images(store)
        used = {c.image_id for c in list_containers(store)}
        doomed = [i for i in infos if i.image.id not in used and (all or not i.tags)]
        for info in doomed:
            for tag in sorted(info.tags):
                store.remove_tag(tag)
                result.untagged.append(tag)
            result.deleted.append(info.image.id)
        records = Cache(store).all()
        keep = {r.layer.digest for r in records}
        kept_images = [i for i in infos if i not in doomed]
        for info in kept_images:  # untagged but used by a container: kept whole
            keep.add(info.image.manifest_desc.digest)
        freed = store.gc(keep=keep)
        result.reclaimed = freed.bytes_freed
        chains = {r.chain_id for r in records} | chain_ids_in_use(store)
        for info in kept_images:
            chains.update(chain_ids(info.image.diff_ids))
        result.reclaimed += Snapshotter(store).prune(chains)
    return result


# ---- system df ------------------------------------------------------------------------------

@dataclass
class ContainerUsage:
    container: Any
    size: int
    volumes: int


@dataclass
class VolumeUsage:
    name: str
    links: int
    size: int


@dataclass
class DiskUsage:
    images: list[ImageInfo]
    images_size: int
    images_reclaimable: int
    containers: list[ContainerUsage]
    volumes: list[VolumeUsage]
    cache_records: list[Any]
    cache_size: int
    cache_reclaimable: int
    cache_mounts: list[Any]


def disk_usage(store: Store) -> DiskUsage:
    """`system df`: each layer counted once; reclaimable = what no container holds."""
    from pybuild.containers import container_dir, list_containers
    from pybuild.solver import usage

    images = all_images(store)
    layer_size: dict[str, int] = {}
    active_layers: set[str] = set()
    for info in images:
        for d, s in zip(info.image.layers, info.sizes):
            layer_size[d.digest] = s
            if info.containers:
                active_layers.add(d.digest)
    images_size = sum(layer_size.values())
    reclaimable = sum(s for d, s in layer_size.items() if d not in active_layers)
    conts: list[ContainerUsage] = []
    vols: list[VolumeUsage] = []
    for c in list_containers(store):
        cdir = container_dir(store, c.id)
        vdir = cdir / "volumes"
        names = sorted(os.listdir(vdir)) if vdir.is_dir() else []
        for n in names:
            vols.append(VolumeUsage(f"{c.short_id}-{n}", 1, tree_size(vdir / n)))
        conts.append(ContainerUsage(c, tree_size(Path(cdir) / "upper"), len(names)))
    u = usage.usage(store)
    return DiskUsage(images, images_size, reclaimable, conts, vols, u.records,
                     u.total + u.mounts_size, u.reclaimable + u.mounts_size, u.cache_mounts)
