"""The local image store: an OCI image layout under one root, plus locks and SQLite.

Being a plain OCI layout means skopeo, umoci and friends read the store unchanged. Blobs are
content addressed and only become visible (by rename) once their digest was verified, so a
crash or SIGKILL at any moment leaves nothing half-written except temp files in root/tmp,
which the next Store() removes. Only index.json (the tags) is shared mutable state; it is
rewritten atomically under an exclusive cross-process lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from pybuild.digest import ALGORITHMS, Digest
from pybuild.errors import PybuildError
from pybuild.liveness import lock_held, remove_tree
from pybuild.reference import parse_reference

REF_NAME = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TEMP_PREFIX = "blob-"
# Foreign entries in tmp/ (another module's scratch dirs) are only removed when this old.
_STALE_SECONDS = 3600.0
_CHUNK = 1 << 20


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON: the same object always gets the same digest."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def check_digest(digest: str) -> str:
    """Return `digest` if it is a well-formed sha256 digest, else raise PybuildError."""
    return str(Digest.sha256(digest))


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest, index or tag points at."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The OCI JSON form (camelCase keys, optional fields omitted)."""
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = dict(self.platform)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Descriptor:
        """Parse an OCI descriptor; PybuildError if a required field is missing or wrong."""
        try:
            media_type, digest, size = d["mediaType"], d["digest"], d["size"]
        except (KeyError, TypeError) as e:
            raise PybuildError(f"malformed descriptor (missing {e}): {d!r}") from None
        if not isinstance(size, int) or size < 0 or not isinstance(media_type, str):
            raise PybuildError(f"malformed descriptor: {d!r}")
        return cls(media_type, str(Digest.parse(digest)), size, d.get("annotations") or None,
                   d.get("platform") or None)


@dataclass
class GCResult:
    """What a garbage collection removed."""

    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write `data` to `path` so readers see either the old or the new file, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=_TEMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # alive: Store() must not clean it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class BlobWriter:
    """Streams one blob into the store: hashed while written, visible only after commit().

    A file-like object (write/tell/flush), usable as the `fileobj` of tarfile or a
    compressor. Leaving the `with` block without commit() removes the temp file.
    """

    def __init__(self, store: Store, expected_digest: str | None, algorithm: str = "sha256") -> None:
        self._store = store
        self._expected = str(Digest.parse(expected_digest)) if expected_digest else None
        # hashed in the algorithm its digest names (OCI allows sha512 blobs: blobs/sha512/)
        self._algorithm = self._expected.split(":", 1)[0] if self._expected else algorithm
        if self._algorithm not in ALGORITHMS:
            raise PybuildError(f"unsupported digest algorithm {algorithm!r} "
                               f"(supported: {', '.join(ALGORITHMS)})")
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix=_TEMP_PREFIX, suffix=".tmp")
        self._path = Path(name)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        # The lock tells a concurrent Store() that this temp file is alive.
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        self._hash = hashlib.new(self._algorithm)
        self._size = 0
        self._done = False

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    @property
    def digest(self) -> str:
        """Digest of the bytes written so far (in the writer's algorithm)."""
        return f"{self._algorithm}:{self._hash.hexdigest()}"

    @property
    def closed(self) -> bool:
        return self._file.closed

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes; returns how many were written (file protocol)."""
        if self._done:
            raise ValueError("write to a committed or discarded blob writer")
        self._file.write(data)
        self._hash.update(data)
        n = len(memoryview(data).cast("B"))
        self._size += n
        return n

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        self._file.flush()

    def commit(self, media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
        """Verify, fsync and publish the blob; raise PybuildError on a digest mismatch."""
        if self._done:
            raise ValueError("blob writer already committed or discarded")
        digest = self.digest
        if self._expected and digest != self._expected:
            self.discard()
            raise PybuildError(f"digest mismatch: expected {self._expected}, got {digest} "
                               f"({self._size} bytes)")
        self._file.flush()
        os.fsync(self._file.fileno())
        os.fchmod(self._file.fileno(), 0o644)
        target = self._store.blob_path(digest)
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)  # blobs/sha512/ on first use
        if target.exists():
            # Same content is already there (content addressing): nothing to publish.
            self.discard()
        else:
            os.replace(self._path, target)
            self._file.close()
            self._done = True
            _fsync_dir(target.parent)
        return Descriptor(media_type, digest, self._size, annotations or None)

    def discard(self) -> None:
        """Drop the temp file (idempotent; a no-op after commit)."""
        if self._done:
            return
        self._done = True
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


# Docker keeps its data root 0710 and image data 0700: no other local user may reach an
# unpacked image (a setuid-root binary in a snapshot would otherwise run for anyone).
ROOT_MODE = 0o710
SNAPSHOTS_MODE = 0o700
_MARKER = "gc.lock"


def _check_is_store(root: Path) -> None:
    """Refuse a non-empty directory that is not a pybuild store: only ever touch our own."""
    try:
        st = root.lstat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise PybuildError(f"cannot use store {root}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PybuildError(f"cannot use store {root}: not a directory")
    if (root / _MARKER).is_file():
        return
    try:
        empty = next(os.scandir(root), None) is None
    except OSError as e:
        raise PybuildError(f"cannot use store {root}: {e.strerror}") from None
    if not empty:
        raise PybuildError(f"{root} is not a pybuild store (a non-empty directory without "
                           f"{_MARKER}); pass --root an empty or new directory")


# ext4's "top directory" inode flag (chattr +T, FS_TOPDIR_FL): directories made in one are
# placed like directories of the filesystem root, in block groups with few directories,
# not next to their parent. Without it each build's new upper went where the last build's
# files were just deleted, and on an ext4 without a journal every inode allocation there
# first skips the recently deleted ones: `pip install` of the Django example spent 5-6 s
# in the kernel instead of 0.5 s (perf: recently_deleted / find_inode_bit), and making
# 11,000 files took 5.7-8.8 s instead of 0.23 s (docs/performance.md).
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def tree_dir(path: Path) -> Path:
    """A store directory whose subdirectories hold trees of files that come and go (layer
    snapshots, mount uppers, cache mounts, containers, work dirs): made if missing, and on
    ext2/3/4 flagged so each new tree lands in a fresh block group. Elsewhere the flag does
    not exist and nothing changes."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return path
    try:
        flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4], "little")
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, (flags | _FS_TOPDIR_FL).to_bytes(4, "little") + bytes(4))
    except OSError:  # not ext*, or not ours to flag: placement is only a hint
        pass
    finally:
        os.close(fd)
    return path


def _restrict(path: Path, mode: int) -> None:
    """Give a store directory we own `mode` (new stores, and older ones on open)."""
    st = path.stat()
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


# Connections this process holds, per database file. SQLite's locks are POSIX advisory
# locks, which belong to the process: closing *any* descriptor of the file drops every lock
# its connections hold (sqlite's "how to corrupt your database", 2.2), and another process
# may then reset the WAL under them (a "disk I/O error" two concurrent builds saw). So the
# file is read by hand only while this process has no connection to it.
_OPEN_DBS: dict[str, int] = {}
_OPEN_DBS_LOCK = threading.Lock()


def _db_key(path: Path) -> str:
    return os.path.realpath(path)


def _forget_db(path: Path) -> None:
    """One connection to `path` was closed (or never opened)."""
    with _OPEN_DBS_LOCK:
        key = _db_key(path)
        if _OPEN_DBS.get(key, 0) > 1:
            _OPEN_DBS[key] -= 1
        else:
            _OPEN_DBS.pop(key, None)


def db_problem(path: Path) -> str | None:
    """What is wrong with a store database file (None if it is usable or absent)."""
    with _OPEN_DBS_LOCK:
        if _OPEN_DBS.get(_db_key(path), 0):
            return _db_pages_problem(path)  # sqlite's own reads keep the locks
        return _db_file_problem(path)


def _db_file_problem(path: Path) -> str | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a database"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size == 0:
        return None  # sqlite creates its schema in an empty file
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if head != b"SQLite format 3\0":
        return f"is not a SQLite database ({st.st_size} bytes starting {head[:8]!r})"
    return _db_pages_problem(path)


def _db_pages_problem(path: Path) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return f"is damaged ({e})"
    if rows != [("ok",)]:
        return f"is damaged ({'; '.join(str(r[0]) for r in rows[:3])})"
    return None


def _db_problem_quick(path: Path) -> str | None:
    """db_problem without the page check: what every open can afford. The caller holds
    _OPEN_DBS_LOCK and this process has no connection to `path`."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode) or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return _db_file_problem(path)
    try:
        with open(path, "rb") as f:
            if f.read(16) == b"SQLite format 3\0":
                return None
    except OSError:
        pass
    return _db_file_problem(path)


def damaged_db_error(path: Path, problem: str) -> PybuildError:
    """The one line every command prints for a store database it cannot use."""
    return PybuildError(f"{path} {problem}: run `pybuild doctor --repair` to rebuild it "
                        f"(cache records are lost; images and tags are kept)")


class Store:
    """One store root: OCI layout (oci-layout, index.json, blobs/), tmp/, snapshots/, lock, db."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.tmp_dir = self.root / "tmp"
        self.snapshots_dir = self.root / "snapshots"
        self.index_path = self.root / "index.json"
        self._lock_path = self.root / "lock"
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._thread_lock = threading.RLock()
        _check_is_store(self.root)
        self._local = threading.local()
        self._db_lock = threading.Lock()
        self._dbs: list[sqlite3.Connection] = []
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # The marker first: a directory holding gc.lock is a store (see _check_is_store).
            os.close(os.open(self.root / "gc.lock", os.O_CREAT | os.O_RDONLY, 0o644))
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            for d in (self.tmp_dir, self.snapshots_dir):
                tree_dir(d)
            _restrict(self.root, ROOT_MODE)
            _restrict(self.snapshots_dir, SNAPSHOTS_MODE)
            layout = self.root / "oci-layout"
            if not layout.exists():
                _atomic_write(layout, canonical_json({"imageLayoutVersion": "1.0.0"}), self.tmp_dir)
            if not self.index_path.exists():
                with self.lock():
                    if not self.index_path.exists():
                        self._write_index({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                           "manifests": []})
        except OSError as e:
            raise PybuildError(f"cannot use store {self.root}: {e.strerror} "
                               f"(pass --root or PYBUILD_ROOT to a writable directory)") from None
        self._clean_tmp()

    # ---- blobs ------------------------------------------------------------------------

    def writer(self, expected_digest: str | None = None, *, algorithm: str = "sha256") -> BlobWriter:
        """A BlobWriter for a new blob (use as a context manager), hashed in the algorithm
        of `expected_digest`, else in `algorithm`."""
        return BlobWriter(self, expected_digest, algorithm)

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        """Store `data` as one blob (nothing written when the store has it already: a warm
        build's config and manifest cost no temp file and no fsync)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.blob_path(digest).is_file():
            return Descriptor(media_type, digest, len(data))
        with self.writer() as w:
            w.write(data)
            return w.commit(media_type)

    def put_json(self, obj: dict[str, Any], media_type: str) -> Descriptor:
        """Store `obj` as canonical compact JSON."""
        return self.put_bytes(canonical_json(obj), media_type)

    def put_file(self, path: Path, media_type: str, expected_digest: str | None = None) -> Descriptor:
        """Copy a file into the store, streaming (for blobs too large to hold in memory)."""
        with self.writer(expected_digest) as w, open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                w.write(chunk)
            return w.commit(media_type)

    def blob_path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it exists): blobs/<algorithm>/<hex>."""
        d = Digest.parse(digest)
        return self.root / "blobs" / d.algorithm / d.hex

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        """Open a blob for reading; PybuildError if it is not in the store."""
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise PybuildError(f"blob {digest} not found in store {self.root}") from None

    def read_bytes(self, digest: str) -> bytes:
        with self.open_blob(digest) as f:
            return f.read()

    def read_json(self, digest: str) -> dict[str, Any]:
        """A blob parsed as a JSON object; PybuildError if it is not one."""
        try:
            obj = json.loads(self.read_bytes(digest))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PybuildError(f"blob {digest} is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise PybuildError(f"blob {digest} is not a JSON object")
        return obj

    def iter_blobs(self) -> Iterator[str]:
        """Digests of every blob present (sha256, then sha512), in no particular order."""
        for algorithm, digits in ALGORITHMS.items():
            try:
                entries = list(os.scandir(self.root / "blobs" / algorithm))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.is_file() and re.fullmatch(f"[0-9a-f]{{{digits}}}", entry.name):
                    yield f"{algorithm}:{entry.name}"

    # ---- tags -------------------------------------------------------------------------

    @staticmethod
    def tag_name(name: str) -> str:
        """The familiar form a tag is stored under: "myapp" → "myapp:latest"."""
        return parse_reference(name).familiar

    def _read_index(self) -> dict[str, Any]:
        try:
            index = json.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PybuildError(f"{self.index_path} is corrupt: {e}") from None
        if not isinstance(index, dict):
            raise PybuildError(f"{self.index_path} is corrupt: not a JSON object")
        index.setdefault("manifests", [])
        if not isinstance(index["manifests"], list) or \
                not all(isinstance(m, dict) for m in index["manifests"]):
            raise PybuildError(f"{self.index_path} is corrupt: manifests is not a list of "
                               f"descriptors")
        return dict(index)

    def _write_index(self, index: dict[str, Any]) -> None:
        _atomic_write(self.index_path, json.dumps(index, indent=2).encode() + b"\n", self.tmp_dir)

    def set_tag(self, name: str, desc: Descriptor) -> None:
        """Point tag `name` at `desc`, replacing an existing tag of that name."""
        tag = self.tag_name(name)
        entry = Descriptor(desc.media_type, desc.digest, desc.size,
                           {**(desc.annotations or {}), REF_NAME: tag}, desc.platform)
        with self.lock():
            index = self._read_index()
            if entry.to_dict() in index["manifests"]:
                return  # already so: an unchanged rebuild rewrites nothing
            index["manifests"] = [m for m in index["manifests"]
                                  if (m.get("annotations") or {}).get(REF_NAME) != tag]
            index["manifests"].append(entry.to_dict())
            self._write_index(index)

    def resolve_tag(self, name: str) -> Descriptor | None:
        """The descriptor tagged `name` (normalised: "myapp" finds "myapp:latest"), or None."""
        return self.list_tags().get(self.tag_name(name))

    def remove_tag(self, name: str) -> Descriptor | None:
        """Untag; returns what the tag pointed at (None if there was no such tag)."""
        tag = self.tag_name(name)
        with self.lock():
            index = self._read_index()
            removed: Descriptor | None = None
            kept = []
            for m in index["manifests"]:
                if (m.get("annotations") or {}).get(REF_NAME) == tag:
                    removed = Descriptor.from_dict(m)
                else:
                    kept.append(m)
            if removed is not None:
                index["manifests"] = kept
                self._write_index(index)
            return removed

    def list_tags(self) -> dict[str, Descriptor]:
        """Every tag and the descriptor it points at (untagged index entries are skipped)."""
        tags: dict[str, Descriptor] = {}
        for m in self._read_index()["manifests"]:
            name = (m.get("annotations") or {}).get(REF_NAME)
            if name:
                tags[name] = Descriptor.from_dict(m)
        return tags

    # ---- locking and the database -----------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (flock on root/lock); re-entrant within this object."""
        with self._thread_lock:
            if self._lock_depth == 0:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # closing the last fd releases the flock
                    self._lock_fd = None

    @contextlib.contextmanager
    def gc_lock(self, *, shared: bool, blocking: bool = True) -> Iterator[None]:
        """Builds hold it shared while they write blobs no tag or record names yet;
        garbage collection holds it exclusive, so it never deletes a build's fresh blobs.
        With `blocking=False`, BlockingIOError when it cannot be had at once."""
        fd = os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                        | (0 if blocking else fcntl.LOCK_NB))
            yield
        finally:
            os.close(fd)

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's SQLite connection to root/pybuild.db (WAL); tables belong to their
        users. One connection per thread: the solver's steps run on several threads, and a
        connection shared by them would interleave their transactions. A file that is not a
        usable database is one clear error (`pybuild doctor --repair` rebuilds it)."""
        conn: sqlite3.Connection | None = getattr(self._local, "db", None)
        if conn is None:
            path = self.root / "pybuild.db"
            with _OPEN_DBS_LOCK:
                key = _db_key(path)
                problem = None if _OPEN_DBS.get(key, 0) else _db_problem_quick(path)
                if problem is None:
                    _OPEN_DBS[key] = _OPEN_DBS.get(key, 0) + 1  # before connecting
            if problem is not None:
                raise damaged_db_error(path, problem)
            try:
                conn = sqlite3.connect(path, timeout=60.0, check_same_thread=False)
                try:
                    conn.execute("PRAGMA busy_timeout = 60000")
                    # Switching to WAL needs the database to itself and does not wait on
                    # the busy timeout: two first builds at once would fail. The store
                    # lock serialises it.
                    with self.lock():
                        conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = NORMAL")
                except BaseException:
                    conn.close()
                    raise
            except BaseException as e:
                _forget_db(path)
                if isinstance(e, sqlite3.DatabaseError):
                    raise damaged_db_error(path, f"cannot be used ({e})") from None
                raise
            self._local.db = conn
            with self._db_lock:
                self._dbs.append(conn)
        return conn

    def close(self) -> None:
        """Close every database connection this Store opened (one per thread)."""
        with self._db_lock:
            conns, self._dbs = self._dbs, []
        for conn in conns:
            conn.close()
            _forget_db(self.root / "pybuild.db")
        self._local = threading.local()

    # ---- maintenance ------------------------------------------------------------------

    def _children(self, media_type: str | None, digest: str) -> list[tuple[str | None, str]]:
        """(media type, digest) of what an index or manifest blob refers to.

        A blob typed as an index or manifest (by its tag or its parent) that cannot be read or parsed raises PybuildError: garbage collection
        must never take an unreadable document to mean "refers to nothing". A blob of
        unknown type is sniffed; if it is no readable JSON document it refers to nothing.
        """
        known = media_type in INDEX_TYPES | MANIFEST_TYPES
        if media_type is not None and not known:
            return []  # typed as a config, a layer or some other blob
        strict = known
        path = self.blob_path(digest)

        def unreadable(why: str) -> PybuildError:
            kind = "index" if media_type in INDEX_TYPES else "manifest"
            return PybuildError(f"{kind} {digest} cannot be read ({why}); nothing it may "
                                f"refer to is deleted: run `pybuild doctor`")

        try:
            if not strict and path.stat().st_size > 4 * _CHUNK:
                return []  # too big to be a manifest: a layer
            with open(path, "rb") as f:
                if not strict and f.read(1) != b"{":
                    return []
                f.seek(0)
                obj = json.loads(f.read())
        except FileNotFoundError:
            return []  # gone: nothing of it to protect (doctor reports the broken tag)
        except (OSError, ValueError) as e:
            if strict:
                raise unreadable(str(e)) from None
            return []
        if not isinstance(obj, dict):
            if strict:
                raise unreadable("not a JSON object")
            return []
        refs: list[object] = []
        for key in ("manifests", "layers"):
            value = obj.get(key)
            if isinstance(value, list):
                refs += value
            elif value is not None and strict:
                raise unreadable(f"{key} is not a list")
        for key in ("config", "subject"):
            if isinstance(obj.get(key), dict):
                refs.append(obj[key])
        out: list[tuple[str | None, str]] = []
        for r in refs:
            d = r.get("digest") if isinstance(r, dict) else None
            if isinstance(d, str) and _DIGEST_RE.match(d):
                mt = r.get("mediaType") if isinstance(r, dict) else None
                out.append((mt if isinstance(mt, str) else None, d))
            elif strict:
                raise unreadable(f"malformed descriptor {str(r)[:80]}")
        return out

    def _walk_reachable(self, roots: list[tuple[str | None, str]],
                        on_missing: Any = None) -> set[str]:
        todo = list(roots)
        seen: set[str] = set()
        while todo:
            media_type, digest = todo.pop()
            if digest in seen:
                continue
            seen.add(digest)
            if not self.has_blob(digest):
                if on_missing is not None:
                    on_missing(digest)
                continue
            todo += self._children(media_type, digest)
        return seen

    def reachable(self, keep: Iterable[str] = ()) -> set[str]:
        """Every digest reachable from the tags and from `keep` (manifests are followed).

        PybuildError if a tagged document cannot be read (see _children)."""
        seen: set[str] = set()
        for name, d in sorted(self.list_tags().items()):
            try:
                seen |= self._walk_reachable([(d.media_type, d.digest)])
            except PybuildError as e:
                raise PybuildError(f"tag {name}: {e}") from None
        return seen | self._walk_reachable([(None, str(Digest.parse(k))) for k in keep])

    def gc(self, keep: Iterable[str] = (), *, min_age: float = 0.0) -> GCResult:
        """Delete blobs reachable neither from a tag nor from `keep`; report what was freed.

        `min_age` (seconds) spares blobs written more recently, so a build in another
        process that has written layers but not yet tagged its image keeps them.
        """
        result = GCResult()
        now = time.time()
        with self.lock():
            live = self.reachable(keep)
            for digest in self.iter_blobs():
                if digest in live:
                    continue
                path = self.blob_path(digest)
                try:
                    st = path.stat()
                    if now - st.st_mtime < min_age:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                result.removed.append(digest)
                result.bytes_freed += st.st_size
        return result

    def verify(self) -> list[str]:
        """Problems found: blobs whose bytes do not match their name, tags to missing blobs."""
        problems: list[str] = []
        for digest in sorted(self.iter_blobs()):
            h = Digest.parse(digest).hasher()
            with open(self.blob_path(digest), "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            got = f"{digest.split(':', 1)[0]}:{h.hexdigest()}"
            if got != digest:
                problems.append(f"blob {digest}: content hashes to {got}")
        for name, desc in sorted(self.list_tags().items()):
            try:
                self._walk_reachable([(desc.media_type, desc.digest)], lambda d, name=name:
                                     problems.append(f"tag {name}: blob {d} is missing"))
            except PybuildError as e:
                problems.append(f"tag {name}: {e}")
        return problems

    def _clean_tmp(self) -> None:
        """Remove what killed writers left in tmp/: our unlocked temp files, old foreign entries."""
        if self.tmp_dir.is_symlink() or not self.tmp_dir.is_dir():
            return  # not the directory we made: clean nothing through it
        mounts = _mount_points_under(self.tmp_dir)
        now = time.time()
        for entry in os.scandir(self.tmp_dir):
            path = Path(entry.path)
            if any(m == path or path in m.parents for m in mounts):
                continue  # never delete through a mount somebody left behind
            try:
                ours = entry.name.startswith(_TEMP_PREFIX) and entry.is_file(follow_symlinks=False)
                if ours:
                    if lock_held(path):
                        continue
                    path.unlink()
                elif now - entry.stat(follow_symlinks=False).st_mtime > _STALE_SECONDS \
                        and not lock_held(path):
                    if entry.is_dir(follow_symlinks=False):
                        remove_tree(path)
                    else:
                        path.unlink()
            except FileNotFoundError:
                continue  # another process cleaned it first


def _mount_points_under(base: Path) -> list[Path]:
    """Mount points below `base` (from /proc/self/mountinfo)."""
    out: list[Path] = []
    prefix = str(base) + "/"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefix):
                    out.append(Path(point))
    except OSError:
        pass
    return out
