"""`pybuild doctor`: find (and with repair, fix) what a crash or a bad disk left in a store.

The store is built so that a SIGKILL never leaves a half-written blob or tag behind, but it
can leave work in progress: mounted overlays, runc containers whose pybuild died, snapshot
extractions never renamed into place, cache-mount directories never completed. A disk or a
hand can also corrupt a blob. Doctor looks at every one of these. Repair only ever deletes
what is provably broken or abandoned: a blob is removed only when its bytes do not hash to
its name, so a valid blob a tag needs is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pybuild import fs, layer, runtime
from pybuild.solver.cache import Cache
from pybuild.liveness import lock_held
from pybuild.errors import PybuildError
from pybuild.snapshot import Snapshotter
from pybuild.liveness import remove_tree
from pybuild.store import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Store, db_problem

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")  # cache-mounts/<sha256(id)[:32]>
_CHUNK = 1 << 20
# A cache-mount scratch directory of a build that is still running but between mounts
# is never this old; older ones are abandoned even if some other build is live.
_ORPHAN_AGE = 3600.0


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the store; `kind` groups them for the summary and for tests."""

    kind: str  # corrupt-blob, broken-tag, corrupt-index, corrupt-database, dangling-record,
    #            incomplete-snapshot,
    #            snapshot-leftover, stale-mount, stale-container, orphaned-cache-mount
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


@dataclass
class Report:
    """What a check found and, after a repair, what was done about it."""

    problems: list[Problem] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    remaining: list[Problem] = field(default_factory=list)
    blobs_checked: int = 0

    def of_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]


def _hash_file(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def _corrupt_blobs(store: Store, report: Report) -> set[str]:
    corrupt: set[str] = set()
    for digest in sorted(store.iter_blobs()):
        report.blobs_checked += 1
        try:
            actual = _hash_file(store.blob_path(digest), digest.split(":", 1)[0])
        except FileNotFoundError:
            continue  # removed by a concurrent gc while we looked
        except OSError as e:
            actual = f"unreadable ({e.strerror})"
        if actual != digest:
            corrupt.add(digest)
            report.problems.append(Problem("corrupt-blob", digest, f"content hashes to {actual}"))
    return corrupt


def _children(store: Store, desc: Descriptor) -> tuple[list[Descriptor], str | None]:
    """Descriptors an index or manifest refers to, or an explanation why it is unusable."""
    if desc.media_type not in INDEX_TYPES | MANIFEST_TYPES:
        return [], None
    try:
        obj = json.loads(store.read_bytes(desc.digest))
    except (ValueError, UnicodeDecodeError):
        return [], f"{desc.digest} is not valid JSON"
    if not isinstance(obj, dict):
        return [], f"{desc.digest} is not a JSON object"
    raw: list[object] = []
    if desc.media_type in INDEX_TYPES:
        raw = list(obj.get("manifests") or [])
    else:
        if not isinstance(obj.get("config"), dict):
            return [], f"manifest {desc.digest} has no config"
        raw = [obj["config"], *list(obj.get("layers") or [])]
    out: list[Descriptor] = []
    for d in raw:
        try:
            out.append(Descriptor.from_dict(d))  # type: ignore[arg-type]
        except PybuildError as e:
            return [], f"{desc.digest}: {e}"
    return out, None


def _tag_problem(store: Store, desc: Descriptor, corrupt: set[str]) -> tuple[str | None, set[str]]:
    """Why a tag does not resolve (None if it does) and every digest it needs."""
    todo = [desc]
    needed: set[str] = set()
    problem: str | None = None
    while todo:
        d = todo.pop()
        if d.digest in needed:
            continue
        needed.add(d.digest)
        if d.digest in corrupt:
            problem = problem or f"needs corrupt blob {d.digest}"
            continue
        if not store.has_blob(d.digest):
            problem = problem or f"blob {d.digest} ({d.media_type}) is missing"
            continue
        kids, why = _children(store, d)
        if why:
            problem = problem or why
        todo += kids
    return problem, needed


def _stale_mounts(store: Store) -> tuple[list[Path], bool]:
    """Mount directories of dead builds, and whether a live build holds one right now."""
    mounts = store.root / "mounts"
    stale: list[Path] = []
    live = False
    for d in sorted(mounts.iterdir()) if mounts.is_dir() else []:
        if lock_held(d / "lock"):
            live = True
        else:
            stale.append(d)
    return stale, live


def _bundle_root(bundle: Path) -> str:
    try:
        return str(json.loads((bundle / "config.json").read_text())["root"]["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _stale_containers(store: Store) -> list[str]:
    """runc containers and bundles whose pybuild process died while running on this store."""
    if os.geteuid() != 0 or not runtime.BUNDLES_DIR.is_dir():
        return []
    prefix = str(store.root) + os.sep
    out = []
    for bundle in sorted(runtime.BUNDLES_DIR.iterdir()):
        name = bundle.name.removeprefix(".tmp-")
        if not name.startswith(runtime.ID_PREFIX) or not (bundle / "owner").exists():
            continue
        if runtime.is_stale(bundle.name) and _bundle_root(bundle).startswith(prefix):
            out.append(bundle.name)
    return out


def _expected_type(member: tarfile.TarInfo) -> tuple[str, int | None]:
    """Where a layer entry lands in an overlay-form snapshot and the file type it has there."""
    name = os.path.normpath(member.name.lstrip("/"))
    base = os.path.basename(name)
    if base == layer.WH_OPAQUE:
        return os.path.dirname(name), stat.S_IFDIR
    if base.startswith(layer.WH_PREFIX):
        return os.path.join(os.path.dirname(name), base[len(layer.WH_PREFIX):]), stat.S_IFCHR
    if member.isdir():
        return name, stat.S_IFDIR
    if member.issym():
        return name, stat.S_IFLNK
    if member.isreg() or member.islnk():
        return name, stat.S_IFREG
    return name, None


_SKIP = object()


def _lstat_in(root: Path, root_fd: int, rel: str) -> os.stat_result | object | None:
    """lstat of `rel` where the extractor put it: resolved inside the snapshot's fs root
    (its own symlinks followed as that root sees them, never onto the host), then each
    directory opened with O_NOFOLLOW. None if the entry is missing; _SKIP if the path
    cannot be resolved at all (a symlink loop): that says nothing against the snapshot.
    """
    try:
        parts = fs.components(root, rel, follow_last=False)
    except fs.NotADirectory:
        return None
    except fs.PathError:
        return _SKIP
    if not parts:
        return _SKIP
    try:
        dfd = fs.open_dir(root_fd, parts[:-1])
    except FileNotFoundError:
        return None
    except OSError:
        return _SKIP  # swapped for a symlink meanwhile: nothing to follow
    try:
        return os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError:
        return _SKIP
    finally:
        os.close(dfd)


def _snapshot_gap(fs_root: Path, blob: Path) -> str | None:
    """Why a snapshot does not hold its layer (say, a prune killed mid-delete), else None.

    Only names, types and file sizes are compared: enough to see a partial extraction or
    deletion, at the cost of one decompression of the layer.
    """
    missing = 0
    first = ""
    try:
        fs_fd = os.open(fs_root, fs.DIR_FLAGS)
    except OSError as e:
        return f"its fs directory cannot be opened ({e.strerror})"
    try:
        with open(blob, "rb") as f, tarfile.open(fileobj=layer.open_decompressed(f), mode="r|") as t:
            for member in t:
                rel, kind = _expected_type(member)
                if rel in (".", "") or rel.startswith("../"):
                    continue
                found = _lstat_in(fs_root, fs_fd, rel)
                if found is _SKIP:
                    continue  # unresolvable in the snapshot (a symlink loop)
                st = found if isinstance(found, os.stat_result) else None
                size_ok = kind != stat.S_IFREG or not member.isreg() or st is None \
                    or st.st_size == member.size
                if st is not None and (kind is None or stat.S_IFMT(st.st_mode) == kind) and size_ok:
                    continue
                missing += 1
                first = first or rel
    except (OSError, tarfile.TarError, PybuildError, EOFError) as e:
        return f"its layer blob cannot be read ({e})"
    finally:
        os.close(fs_fd)
    return f"{missing} entries of its layer differ or are missing (first: /{first})" if missing else None


def _snapshot_problems(store: Store, corrupt: set[str]) -> list[Problem]:
    out = []
    for d in sorted(store.snapshots_dir.iterdir()):
        if d.name == "empty":
            continue
        if d.name.startswith("tmp-"):
            if not lock_held(d / ".lock"):  # a live pull or build is still writing it
                out.append(Problem("snapshot-leftover", d.name, "unfinished extraction or commit"))
            continue
        if not _HEX64.match(d.name) or not (d / "done").is_file() or not (d / "fs").is_dir():
            out.append(Problem("incomplete-snapshot", d.name, "no done marker or no fs directory"))
            continue
        try:
            digest = (d / "done").read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            out.append(Problem("incomplete-snapshot", d.name, f"done marker unreadable ({e})"))
            continue
        try:
            blob = store.blob_path(digest)
        except PybuildError:
            out.append(Problem("incomplete-snapshot", d.name, f"done marker names {digest!r}"))
            continue
        if digest in corrupt or not blob.is_file():
            continue  # nothing to compare with; the snapshot is only a cache of that blob
        gap = _snapshot_gap(d / "fs", blob)
        if gap:
            out.append(Problem("incomplete-snapshot", d.name, gap))
    return out


def _orphaned_cache_mounts(store: Store, live_build: bool) -> list[Path]:
    """cache-mounts entries that are not a complete `<hash>/{id,data}` and nobody uses.

    Scratch directories (tempfile names) exist only while a RUN holds a mount, so they are
    orphaned when no build of this store is live, or when they are very old.
    """
    root = store.root / "cache-mounts"
    out = []
    now = time.time()
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if _HEX32.match(d.name) and (d / "data").is_dir():
            continue
        try:
            age = now - d.lstat().st_mtime
        except FileNotFoundError:
            continue
        if not live_build or age > _ORPHAN_AGE:
            out.append(d)
    return out


def check(store: Store) -> Report:
    """Look at everything; change nothing (Store() itself drops dead temp blobs on open)."""
    report = Report()
    _inspect(store, report)
    report.remaining = list(report.problems)
    return report


def _inspect(store: Store, report: Report) -> tuple[set[str], dict[str, set[str]]]:
    """Fill `report` with problems; return the corrupt digests and what each tag needs."""
    corrupt = _corrupt_blobs(store, report)
    needs: dict[str, set[str]] = {}
    try:
        tags = store.list_tags()
    except PybuildError as e:
        report.problems.append(Problem("corrupt-index", "index.json", str(e)))
        tags = {}
    for name, desc in sorted(tags.items()):
        why, needed = _tag_problem(store, desc, corrupt)
        needs[name] = needed
        if why:
            report.problems.append(Problem("broken-tag", name, why))
    db_why = db_problem(store.root / "pybuild.db")
    if db_why:
        report.problems.append(Problem("corrupt-database", "pybuild.db", db_why))
    for rec in [] if db_why else Cache(store).all():
        if rec.layer.digest in corrupt:
            report.problems.append(Problem("dangling-record", rec.key, f"layer {rec.layer.digest} is corrupt"))
        elif not store.has_blob(rec.layer.digest):
            report.problems.append(Problem("dangling-record", rec.key, f"layer {rec.layer.digest} is missing"))
    report.problems += _snapshot_problems(store, corrupt)
    stale, live = _stale_mounts(store)
    for d in stale:
        report.problems.append(Problem("stale-mount", str(d), "left by a pybuild process that is gone"))
    for cid in _stale_containers(store):
        report.problems.append(Problem("stale-container", cid, "its pybuild process is gone"))
    for d in _orphaned_cache_mounts(store, live):
        report.problems.append(Problem("orphaned-cache-mount", str(d), "not a complete cache mount"))
    return corrupt, needs


def _rebuild_db(store: Store) -> str:
    """Move a damaged pybuild.db aside (with its WAL) and start an empty one.

    The database is a cache (build records, where blobs came from): blobs, tags and
    snapshots do not depend on it, so an empty schema is a working store again.
    """
    store.close()
    path = store.root / "pybuild.db"
    aside = store.root / f"pybuild.db.damaged-{int(time.time())}"
    os.rename(path, aside)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    Cache(store)  # creates the schema
    return f"moved the damaged database to {aside.name} and created an empty one " \
           f"(cache records are gone; images and tags are kept)"


def repair(store: Store) -> Report:
    """Fix what check() finds; `remaining` lists what a second check still sees."""
    report = Report()
    with store.lock():
        corrupt, needs = _inspect(store, report)
        _repair_locked(store, report, corrupt, needs)
    after = check(store)
    report.remaining = after.problems
    return report


def _repair_locked(store: Store, report: Report, corrupt: set[str],
                   needs: dict[str, set[str]]) -> None:
    for p in report.problems:
        if p.kind == "broken-tag":
            store.remove_tag(p.subject)
            report.actions.append(f"removed tag {p.subject} ({p.detail})")
    for digest in sorted(corrupt):
        users = sorted(n for n, need in needs.items() if digest in need)
        store.blob_path(digest).unlink(missing_ok=True)
        report.actions.append(f"removed corrupt blob {digest}"
                              + (f" (needed by {', '.join(users)})" if users else ""))
    if any(p.kind == "corrupt-database" for p in report.problems):
        report.actions.append(_rebuild_db(store))
    dangling = [p.subject for p in report.problems if p.kind == "dangling-record"]
    if dangling:
        Cache(store).remove(dangling)
        report.actions += [f"removed cache record {k}" for k in dangling]
    if any(p.kind in ("stale-container",) for p in report.problems):
        runtime.cleanup_stale()
        report.actions.append("deleted stale runc containers and bundles")
    snaps = Snapshotter(store)
    if any(p.kind in ("stale-mount", "snapshot-leftover") for p in report.problems):
        n = snaps.cleanup_stale()
        report.actions.append(f"unmounted and removed {n} stale mount(s) and unfinished snapshots")
    for p in report.problems:
        if p.kind == "incomplete-snapshot":
            remove_tree(store.snapshots_dir / p.subject)
            report.actions.append(f"removed incomplete snapshot {p.subject}")
        elif p.kind == "orphaned-cache-mount":
            remove_tree(p.subject)
            report.actions.append(f"removed orphaned cache mount {p.subject}")
