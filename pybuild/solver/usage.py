"""What the build cache holds, who uses it, and how to free it (`pybuild cache du|ls|prune`).

Three kinds of things take space: layer blobs (content-addressed, shared by records and
tagged images), extracted snapshots (one per chain id) and `RUN --mount=type=cache`
directories. Pruning removes cache records least recently used first, then the blobs and
snapshots nothing needs any more, and the `ADD <url>` downloads in `http-cache/` that no
kept record names. Whatever a tagged image needs is never removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from pybuild import image as imagemod
from pybuild.solver.cache import Cache, Record
from pybuild.errors import PybuildError
from pybuild.liveness import remove_tree, tree_size
from pybuild.snapshot import Snapshotter, chain_ids
from pybuild.store import Store
from pybuild.units import parse_filter_duration


@dataclass
class CacheMount:
    id: str
    path: Path
    size: int
    last_used: float


@dataclass
class Usage:
    records: list[Record]
    used_by: dict[str, list[str]]  # record key → tags whose image contains its layer
    cache_mounts: list[CacheMount]
    total: int = 0
    shared: int = 0
    reclaimable: int = 0
    mounts_size: int = 0


@dataclass
class PruneReport:
    records: list[Record] = field(default_factory=list)
    mounts: list[CacheMount] = field(default_factory=list)
    blobs_freed: int = 0
    snapshots_freed: int = 0
    mounts_freed: int = 0
    downloads: list[str] = field(default_factory=list)  # URLs whose download was removed
    downloads_freed: int = 0

    @property
    def total(self) -> int:
        return self.blobs_freed + self.snapshots_freed + self.mounts_freed + self.downloads_freed


def tagged_layers(store: Store) -> tuple[dict[str, list[str]], set[str]]:
    """Layer digest → tags using it, and every chain id a tagged image needs."""
    users: dict[str, list[str]] = {}
    chains: set[str] = set()
    # index.json read once: loading each tag by name would re-read it per tag (quadratic;
    # `cache ls` took 51 s with 1,000 images).
    for name, desc in store.list_tags().items():
        try:  # an image that cannot be read has no snapshots to keep (gc keeps its blobs)
            img = imagemod.load_descriptor(store, desc, name)
            layers, image_chains = img.layers, chain_ids(img.diff_ids)
        except PybuildError:
            continue
        for d in layers:
            users.setdefault(d.digest, []).append(name)
        chains.update(image_chains)
    return users, chains


def cache_mounts(store: Store) -> list[CacheMount]:
    root = store.root / "cache-mounts"
    out = []
    for d in sorted(root.iterdir()) if root.exists() else []:
        if not (d / "data").is_dir():
            continue
        cid = (d / "id").read_text() if (d / "id").exists() else d.name
        st = (d / "data").stat()
        out.append(CacheMount(cid, d, tree_size(d / "data"), st.st_mtime))
    return out


def usage(store: Store) -> Usage:
    cache = Cache(store)
    records = cache.all()
    users, _ = tagged_layers(store)
    u = Usage(records, {r.key: sorted(users.get(r.layer.digest, [])) for r in records},
              cache_mounts(store))
    seen: set[str] = set()
    for r in records:
        if r.layer.digest in seen:
            continue
        seen.add(r.layer.digest)
        u.total += r.layer.size
        if users.get(r.layer.digest):
            u.shared += r.layer.size
        else:
            u.reclaimable += r.layer.size
    u.mounts_size = sum(m.size for m in u.cache_mounts)
    return u


def parse_duration(text: str) -> float:
    """`24h`, `30m`, `90s`, `7d`, or combinations like `1h30m` (Go-style) → seconds."""
    try:
        return parse_filter_duration(text)
    except ValueError:
        raise PybuildError(f"invalid duration {text!r} (examples: 24h, 30m, 1h30m, 7d)") from None


def parse_size(text: str) -> int:
    """`2GB`, `500MB`, `1.5G`, `1024` (bytes) → bytes, decimal units as docker's."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        raise PybuildError(f"invalid size {text!r} (examples: 2GB, 500MB)") from None


def prune(store: Store, *, all: bool = False, until: float | None = None,
          types: set[str] | None = None, keep_storage: int | None = None,
          dry_run: bool = False) -> PruneReport:
    """Remove cache records (LRU first), cache mounts, and what nothing needs any more."""
    types = types or {"regular", "exec.cachemount"}
    unknown = types - {"regular", "exec.cachemount"}
    if unknown:
        raise PybuildError(f"unknown cache type {sorted(unknown)[0]!r} (regular, exec.cachemount)")
    cache = Cache(store)
    now = time.time()
    report = PruneReport()
    with store.gc_lock(shared=False), store.lock():
        users, tagged_chains = tagged_layers(store)
        records = sorted(cache.all(), key=lambda r: r.last_used)
        candidates = [r for r in records if "regular" in types
                      and (until is None or now - r.last_used >= until)
                      and (all or not users.get(r.layer.digest))]
        mounts = [m for m in cache_mounts(store) if "exec.cachemount" in types
                  and (until is None or now - m.last_used >= until)] if all or types == {
                      "exec.cachemount"} else []
        if keep_storage is not None:
            size = sum(r.layer.size for r in records) + sum(m.size for m in cache_mounts(store))
            chosen = []
            for r in candidates:
                if size <= keep_storage:
                    break
                chosen.append(r)
                size -= r.layer.size
            candidates = chosen
            kept_mounts = []
            for m in mounts:
                if size <= keep_storage:
                    break
                kept_mounts.append(m)
                size -= m.size
            mounts = kept_mounts
        report.records = candidates
        report.mounts = mounts
        removed = {r.key for r in candidates}
        remaining = [r for r in records if r.key not in removed]
        # A dropped snapshot is only a cache of its blob: Snapshotter.ensure re-extracts it.
        from pybuild.containers import chain_ids_in_use

        keep_chains = tagged_chains | {r.chain_id for r in remaining} | chain_ids_in_use(store)
        if "regular" in types:
            urls = {u for r in remaining for u in r.inputs.get("urls") or [] if isinstance(u, str)}
            report.downloads, report.downloads_freed = prune_http_cache(store, urls, dry_run)
        if dry_run:
            live = store.reachable({r.layer.digest for r in remaining})
            report.blobs_freed = sum(store.blob_path(d).stat().st_size
                                     for d in store.iter_blobs() if d not in live)
            report.snapshots_freed = Snapshotter(store).prune(keep_chains, dry_run=True)
            report.mounts_freed = sum(m.size for m in mounts)
            return report
        cache.remove(sorted(removed))
        result = store.gc(keep={r.layer.digest for r in remaining})
        report.blobs_freed = result.bytes_freed
        report.snapshots_freed = Snapshotter(store).prune(keep_chains)
        for m in mounts:
            report.mounts_freed += m.size
            remove_tree(m.path)
    return report


def prune_http_cache(store: Store, keep_urls: set[str], dry_run: bool = False) -> tuple[list[str], int]:
    """Remove `http-cache/` entries (ADD <url> downloads) whose URL is not in `keep_urls`;
    (their URLs, bytes freed). An entry being fetched (its lock held) is left alone."""
    from pybuild.solver.copy import http_cache_entry

    root = store.root / "http-cache"
    if root.is_symlink() or not root.is_dir():
        return [], 0
    keep = {http_cache_entry(root, u).name for u in keep_urls}
    removed: list[str] = []
    freed = 0
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name in keep or not re.fullmatch(r"[0-9a-f]{64}", entry.name) \
                or not entry.is_dir(follow_symlinks=False):
            continue  # only our own entries, by their hashed names
        path = Path(entry.path)
        try:
            lock = os.open(path / "lock", os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a build is downloading it right now
            try:
                meta = json.loads((path / "meta.json").read_text())
                url = meta["url"] if isinstance(meta, dict) and isinstance(meta.get("url"), str) else ""
            except (OSError, ValueError):
                url = ""
            size = tree_size(path)
            if not dry_run:
                remove_tree(path)
            removed.append(url or f"(unfinished download {entry.name[:12]})")
            freed += size
        finally:
            os.close(lock)
    return removed, freed
