"""The build context: `.dockerignore`, COPY/ADD source wildcards, path safety, content digests.

BuildKit never sees ignored files: the client filters them out before sending the context.
pybuild reads the context in place, so every consumer (source resolution, the cache digest,
the copier) asks the same `PatternMatcher` and an ignored file stays invisible everywhere.
"""

from __future__ import annotations

import array
import hashlib
import json
import marshal
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pybuild import fs
from pybuild.errors import DockerfileError, PybuildError
from pybuild.fs import resolve_in_root
from pybuild.patterns import Glob, compile_go_glob, compile_ignore

_COPY_BUFSIZE = 1 << 20


# A path Go's Clean would change: an empty, "." or ".." component, or a trailing "/".
_UNCLEAN = re.compile(r"//|(?:^|/)\.\.?(?:/|$)|./$")


def go_clean(path: str) -> str:
    """Go's filepath.Clean: Docker cleans patterns and paths this way, not like normpath."""
    if not path:
        return "."
    if not _UNCLEAN.search(path):
        return path  # already clean: every path of a context walk
    rooted = path.startswith("/")
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(comp)
    joined = "/".join(parts)
    if rooted:
        return "/" + joined
    return joined or "."


def has_wildcards(path: str) -> bool:
    """BuildKit's containsWildcards: `*`, `?` or `[` not preceded by a backslash."""
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] in "*?[":
            return True
        i += 1
    return False


class _Pattern:
    """One `.dockerignore` pattern, with moby/patternmatcher's exact/prefix/suffix shortcuts.

    The shortcuts are not just speed: `**foo` as a suffix match also matches `xfoo`,
    which the regex form would not, and Docker users get that behaviour. The "regexp"
    kind runs on a linear matcher (pybuild.patterns), never on a backtracking regex.
    """

    def __init__(self, cleaned: str, exclusion: bool) -> None:
        self.cleaned = cleaned
        self.exclusion = exclusion
        self.kind, self.glob = compile_ignore(cleaned)

    def match(self, path: str) -> bool:
        """Whether this pattern matches `path` itself."""
        if self.kind == "exact":
            return path == self.cleaned
        if self.kind == "prefix":
            return path.startswith(self.cleaned[:-2])
        if self.kind == "suffix":
            suffix = self.cleaned[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.glob is not None
        return self.glob.fullmatch(path)

    def match_path_or_parent(self, path: str) -> bool:
        """Whether this pattern matches `path` or a directory above it (each is tested)."""
        if self.kind == "exact":
            return path == self.cleaned or path.startswith(self.cleaned + "/")
        if self.kind == "prefix":   # a parent that has the prefix gives it to the path
            return self.match(path)
        if self.kind == "suffix":
            cut = path.find("/")
            while cut >= 0:
                if self.match(path[:cut]):
                    return True
                cut = path.find("/", cut + 1)
            return self.match(path)
        assert self.glob is not None
        return self.glob.matches_path_or_parent(path)


class PatternMatcher:
    """Docker's `.dockerignore` / `--exclude` matcher (moby/patternmatcher semantics).

    Patterns are evaluated in order and the last match wins; `!` re-includes; a pattern
    that matches a directory also matches everything below it.
    """

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[_Pattern] = []
        self.exclusions = False
        for raw in patterns:
            text = go_clean(raw.strip()) if raw.strip() else ""
            if not text:
                continue
            exclusion = text.startswith("!")
            if exclusion:
                if len(text) == 1:
                    raise PybuildError('illegal exclusion pattern: "!"')
                text = text[1:]
                self.exclusions = True
            for comp in text.split("/"):
                compile_go_glob(comp)  # syntax check, as Docker does with filepath.Match
            self.patterns.append(_Pattern(text, exclusion))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, rel: str) -> bool:
        """True if `rel` (slash-separated, relative) or one of its parents is excluded."""
        path = go_clean(rel)
        if path == ".":
            return False
        matched = False
        for pat in self.patterns:
            if pat.exclusion != matched:
                continue
            if pat.match_path_or_parent(path):
                matched = not pat.exclusion
        return matched


def read_ignore_file(text: str) -> list[str]:
    """Patterns of a `.dockerignore`, normalised like Docker's ignorefile.ReadAll."""
    patterns: list[str] = []
    for number, line in enumerate(text.splitlines()):
        if number == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        if line:
            line = go_clean(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
        patterns.append("!" + line if invert else line)
    return patterns


def walk_visible(top: Path | str, filters: list[tuple[PatternMatcher, str]]) -> Iterator[tuple[str, os.stat_result]]:
    """Entries below `top` that no filter hides: dirs before their contents, names sorted.

    Each filter is (matcher, prefix) and sees `prefix + relative path`. A hidden directory
    is still entered when a `!` pattern could re-include something inside it, and then
    appears only if something inside it does. FIFOs, sockets and devices never appear,
    so nothing here can block on opening them. Symlinks are reported, never followed.
    The walk is iterative (a stack, not recursion), so any depth walks or fails cleanly,
    and on strings: no Path object per entry. Each directory is opened once and its
    entries are stat'ed relative to it (`fstatat`), not by a path looked up again from
    `/` for every file; only one directory is open at a time.
    """
    filters = [(m, p) for m, p in filters if m]
    exclusions = any(m.exclusions for m, _ in filters)
    is_dir_mode, is_reg, is_lnk = stat.S_ISDIR, stat.S_ISREG, stat.S_ISLNK
    base = os.fspath(top).rstrip("/") + "/"
    stack: list[tuple[str, Iterator[tuple[str, os.stat_result]]]] = [
        ("", iter(_entries(base, follow=True)))]
    # per stack level: a hidden directory's entry, yielded only once something inside is
    pending: list[tuple[str, os.stat_result] | None] = [None]
    waiting = 0
    while stack:
        rel, entries = stack[-1]
        for name, st in entries:  # up to the next directory to enter
            child = rel + name
            mode = st.st_mode
            is_dir = is_dir_mode(mode)
            if filters and _hidden(child, filters):
                if not is_dir or not exclusions:
                    continue
                stack.append((child + "/", iter(_entries(base + child + "/"))))
                pending.append((child, st))
                waiting += 1
                break
            if not is_dir and not (is_reg(mode) or is_lnk(mode)):
                continue
            if waiting:
                for i, held in enumerate(pending):
                    if held is not None:
                        yield held
                        pending[i] = None
                waiting = 0
            yield child, st
            if is_dir:
                stack.append((child + "/", iter(_entries(base + child + "/"))))
                pending.append(None)
                break
        else:  # this directory is done
            stack.pop()
            if pending.pop() is not None:
                waiting -= 1


def _entries(directory: str, follow: bool = False) -> list[tuple[str, os.stat_result]]:
    """A directory's entries sorted by name, each with its lstat (an entry gone meanwhile
    is left out). A directory met in the walk is opened without following a symlink (it
    was one when stat'ed); the walk's top, as given, may be reached through one."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = -1
    try:
        fd = os.open(directory, flags)
        with os.scandir(fd) as it:
            listed = sorted(it, key=lambda e: e.name)
        out = []
        for entry in listed:
            try:
                out.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise PybuildError(f"cannot read {_short(directory + entry.name)}: "
                                   f"{exc.strerror}") from None
        return out
    except OSError as exc:
        raise PybuildError(f"cannot read {_short(directory.rstrip('/'))}: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _short(path: Path | str) -> str:
    """A path for a one-line message: a very deep one is cut in the middle."""
    text = str(path)
    return text if len(text) <= 200 else f"{text[:90]}...{text[-90:]}"


def _hidden(rel: str, filters: list[tuple[PatternMatcher, str]]) -> bool:
    return any(m.matches(prefix + rel) for m, prefix in filters)


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return 0


# A memo entry is trusted only when the file's last change is this much older than the
# moment its bytes were read (git's "racily clean" rule): timestamps come from a coarse
# kernel clock (and are 1-2 s on some filesystems), so a write in the same tick as the
# read, or after it, could otherwise leave size, mtime and ctime all as they were.
RACY_MARGIN_NS = 2_000_000_000

_MEMO_SCHEMA = """
CREATE TABLE IF NOT EXISTS context_digests (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, hashed_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL, path TEXT NOT NULL DEFAULT '', PRIMARY KEY (dev, ino)) WITHOUT ROWID
"""

# One row per set of sources (context root, source paths, ignore patterns): the stat
# fingerprint of every entry a manifest covered and that manifest's digest. A walk whose
# entries all stat the same gets the digest without a memo lookup or a line per entry.
_MANIFEST_SCHEMA = """
CREATE TABLE IF NOT EXISTS context_manifests (
    source TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, digest TEXT NOT NULL) WITHOUT ROWID
"""

# size, mtime_ns, ctime_ns, hashed_ns, sha256, path (where the file was when it was read)
_MemoRow = tuple[int, int, int, int, str, str]


def _memo_table(db: sqlite3.Connection) -> None:
    """The memo's table, made or brought up to date (rows of a version without `path`
    cannot be dropped when their file goes away: they are forgotten, it is only a cache)."""
    db.execute(_MEMO_SCHEMA)
    db.execute(_MANIFEST_SCHEMA)
    if "path" not in {r[1] for r in db.execute("PRAGMA table_info(context_digests)")}:
        with db:
            db.execute("DELETE FROM context_digests")
            db.execute("ALTER TABLE context_digests ADD COLUMN path TEXT NOT NULL DEFAULT ''")


class DigestMemo:
    """Content digests of context files, remembered across builds in the store's database.

    An entry is keyed by (device, inode) and holds size, mtime, ctime and when the bytes
    were read; it serves a file only when all of them still match and the file is not
    racily clean (see RACY_MARGIN_NS). Any write, `touch -d`, rename over the name or
    reuse of the inode moves ctime, so it is re-hashed. `connect` gives the calling
    thread's connection, or None for a memo that lives only as long as the process.

    Each entry also keeps its file's path: after a whole directory was walked
    (`forget_unseen_below`), the entries below it whose inode the walk did not meet (the
    file was deleted, renamed away, or is ignored now) are dropped, so the table holds
    what the contexts hold, not every file ever hashed.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection] | None = None) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._manifests: dict[str, tuple[str, str]] = {}  # source -> (fingerprint, digest)
        self._tables_ready = False
        self._rows: dict[int, dict[int, _MemoRow]] = {}
        self._dirty: dict[tuple[int, int], _MemoRow] = {}
        self._seen: dict[int, set[int]] = {}
        self._gone: set[tuple[int, int]] = set()

    def _db(self) -> sqlite3.Connection:
        """The calling thread's connection, the memo's tables made or brought up to date
        once per memo (not on every lookup)."""
        assert self._connect is not None
        db = self._connect()
        if not self._tables_ready:
            _memo_table(db)
            self._tables_ready = True
        return db

    def _device(self, dev: int) -> dict[int, _MemoRow]:
        rows = self._rows.get(dev)
        if rows is None:
            rows = {}
            if self._connect is not None:
                db = self._db()
                # paths are read only when some entry was not seen (forget_unseen_below)
                for ino, size, mtime, ctime, hashed, digest in db.execute(
                        "SELECT ino, size, mtime_ns, ctime_ns, hashed_ns, sha256"
                        " FROM context_digests WHERE dev = ?", (dev,)):
                    rows[ino] = (size, mtime, ctime, hashed, digest, "")
            self._rows[dev] = rows
            self._seen[dev] = set()
        return rows

    def get(self, st: os.stat_result) -> str | None:
        rows = self._rows.get(st.st_dev)
        if rows is None:
            with self._lock:
                rows = self._device(st.st_dev)
        self._seen[st.st_dev].add(st.st_ino)
        row = rows.get(st.st_ino)
        if row is None:
            return None
        size, mtime, ctime, hashed, digest, _path = row
        if size != st.st_size or mtime != st.st_mtime_ns or ctime != st.st_ctime_ns:
            return None
        if (mtime if mtime > ctime else ctime) + RACY_MARGIN_NS >= hashed:
            return None  # racily clean: changed too close to (or after) the read to trust
        return digest

    def put(self, st: os.stat_result, hashed_ns: int, digest: str, path: str = "") -> None:
        row = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, hashed_ns, digest, path)
        with self._lock:
            self._device(st.st_dev)[st.st_ino] = row
            self._seen[st.st_dev].add(st.st_ino)
            self._dirty[(st.st_dev, st.st_ino)] = row

    def forget_unseen_below(self, directory: str) -> int:
        """After a whole walk of `directory` (absolute): drop the entries filed below it
        whose inode the walk did not look up. Returns how many go (written at `flush`).
        A device whose entries were all seen is skipped without a pass over them."""
        prefix = directory.rstrip("/") + "/"
        n = 0
        with self._lock:
            for dev, rows in self._rows.items():
                seen = self._seen[dev]
                if len(rows) <= len(seen):
                    continue
                unseen = [ino for ino in rows if ino not in seen]
                stored: dict[int, str] = {}
                if unseen and self._connect is not None:
                    stored = dict(self._db().execute(
                        "SELECT ino, path FROM context_digests WHERE dev = ?", (dev,)))
                gone = [ino for ino in unseen
                        if (rows[ino][5] or stored.get(ino, "")).startswith(prefix)]
                for ino in gone:
                    del rows[ino]
                    self._dirty.pop((dev, ino), None)
                    self._gone.add((dev, ino))
                n += len(gone)
        return n

    def flush(self) -> None:
        """Write what this process hashed and dropped, in one transaction (nothing when
        nothing changed)."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            gone, self._gone = self._gone, set()
        if (not dirty and not gone) or self._connect is None:
            return
        db = self._db()
        with db:
            db.executemany("DELETE FROM context_digests WHERE dev = ? AND ino = ?", sorted(gone))
            db.executemany("INSERT OR REPLACE INTO context_digests"
                           " (dev, ino, size, mtime_ns, ctime_ns, hashed_ns, sha256, path)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(dev, ino, *row) for (dev, ino), row in dirty.items()])

    def known_manifest(self, source: str, fingerprint: str) -> str | None:
        """The digest of the manifest last made of `source` when its entries had exactly
        this stat `fingerprint`, else None."""
        known = self._manifests.get(source)
        if known is None and self._connect is not None:
            row = self._db().execute("SELECT fingerprint, digest FROM context_manifests WHERE source = ?",
                             (source,)).fetchone()
            known = (row[0], row[1]) if row else None
        return known[1] if known is not None and known[0] == fingerprint else None

    def put_manifest(self, source: str, fingerprint: str, digest: str) -> None:
        """File a manifest's digest under its entries' stat fingerprint; replaces what
        `source` had (one row per set of sources, however often they change)."""
        self._manifests[source] = (fingerprint, digest)
        if self._connect is not None:
            db = self._db()
            with db:
                db.execute("INSERT OR REPLACE INTO context_manifests (source, fingerprint, digest)"
                           " VALUES (?, ?, ?)", (source, fingerprint, digest))

    @staticmethod
    def forget_all(db: sqlite3.Connection) -> int:
        """Drop every entry (the next build re-reads every file); returns how many."""
        _memo_table(db)
        with db:
            db.execute("DELETE FROM context_manifests")
            return db.execute("DELETE FROM context_digests").rowcount


_PROCESS_MEMO = DigestMemo()


def file_sha256(path: Path | str, st: os.stat_result, memo: DigestMemo | None = None) -> str:
    """sha256 of a regular file's bytes, through `memo` (the process-wide one by default)."""
    memo = memo or _PROCESS_MEMO
    cached = memo.get(st)
    if cached is not None:
        return cached
    hashed_ns = time.time_ns()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):
            raise PybuildError(f"{path} changed while it was read")
        h = hashlib.sha256()
        while chunk := os.read(fd, _COPY_BUFSIZE):
            h.update(chunk)
    finally:
        os.close(fd)
    digest = h.hexdigest()
    if (now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns) == (
            st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        memo.put(st, hashed_ns, digest, os.fspath(path))
    return digest


def manifest_digest(entries: dict[str, str]) -> str:
    """The digest of a manifest (path -> signature): sha256 over its sorted lines."""
    h = hashlib.sha256()
    for rel, signature in sorted(entries.items()):
        h.update(os.fsencode(rel) + b"\0" + os.fsencode(signature) + b"\n")
    return "sha256:" + h.hexdigest()


class FileManifest:
    """Context files as a cache key covers them: the digest of their manifest (each path
    with "type mode uid:gid sha-or-link-target"), and the manifest itself, made on first
    use when only the digest was known: a warm build whose files all stat as they did
    when the digest was taken needs no more (see `BuildContext.manifest`). Equal when
    the digests are."""

    __slots__ = ("digest", "_entries", "_make", "_lock")

    def __init__(self, digest: str, entries: dict[str, str] | None = None,
                 make: Callable[[], dict[str, str]] | None = None) -> None:
        if entries is None and make is None:
            raise ValueError("a FileManifest needs its entries or a way to make them")
        self.digest = digest
        self._entries = entries
        self._make = make
        self._lock = threading.Lock()

    @classmethod
    def of(cls, entries: dict[str, str]) -> FileManifest:
        return cls(manifest_digest(entries), entries)

    def entries(self) -> dict[str, str]:
        with self._lock:
            if self._entries is None:
                assert self._make is not None
                self._entries, self._make = self._make(), None
            return self._entries

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileManifest) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"FileManifest({self.digest!r})"


# What a manifest covers, grouped as walked: (rel prefix, host path prefix, entries), each
# entry (name below the prefixes, lstat). A source that is a file is a group of one ("").
_Walked = list[tuple[str, str, list[tuple[str, os.stat_result]]]]


def _fingerprint(found: _Walked) -> tuple[str, int]:
    """sha256 of every entry's path and of what `lstat` says of it (type and mode, inode,
    device, link count, owner, size, mtime, ctime; a symlink cannot be retargeted in
    place), and the latest mtime or ctime among them. Made in bulk, a few thousand
    entries at a time (a list of ints, an array): a tuple per entry cost three times as
    much on a 50,000-file context, and memory stays flat however many entries there are."""
    h = hashlib.sha256()
    latest = 0
    for prefix, _, entries in found:
        h.update(os.fsencode(prefix) + b"\0\0%d\0" % len(entries))
        h.update(os.fsencode("\0".join([name for name, _ in entries])) + b"\0\0")
        for at in range(0, len(entries), _FINGERPRINT_CHUNK):
            ints: list[int] = []
            add = ints.extend
            for _, st in entries[at:at + _FINGERPRINT_CHUNK]:
                add(st[:7])  # mode, ino, dev, nlink, uid, gid, size
                add((st.st_mtime_ns, st.st_ctime_ns))
            try:
                numbers = array.array("q", ints)
            except OverflowError:  # an inode or device number past 2**63: same facts, slower
                h.update(marshal.dumps(ints))
                latest = max(latest, *ints[7::9], *ints[8::9])
                continue
            h.update(numbers.tobytes())
            latest = max(latest, max(numbers[7::9]), max(numbers[8::9]))
    return h.hexdigest(), latest


_FINGERPRINT_CHUNK = 8192


class BuildContext:
    """A directory sent to the build, seen through its `.dockerignore`."""

    def __init__(self, root: Path, dockerfile: Path) -> None:
        self.root = Path(os.path.abspath(root))
        if not self.root.is_dir():
            raise PybuildError(f"unable to prepare context: path {str(root)!r} not found")
        specific = Path(str(dockerfile) + ".dockerignore")
        ignore_file = specific if specific.is_file() else self.root / ".dockerignore"
        patterns: list[str] = []
        if ignore_file.exists():
            try:
                patterns = read_ignore_file(ignore_file.read_text(encoding="utf-8", errors="surrogateescape"))
            except OSError as exc:
                raise PybuildError(f"error reading {ignore_file.name}: {exc.strerror}") from None
        self.matcher = PatternMatcher(patterns)
        self.memo: DigestMemo | None = None
        # per directory `manifest` walked: (when the walk started, its entries), so a COPY
        # of that directory copies what its key covers without a second walk
        self.walks: dict[str, tuple[int, list[tuple[str, os.stat_result]]]] = {}

    @classmethod
    def for_rootfs(cls, root: Path) -> BuildContext:
        """Sources of `COPY --from`: a stage's or image's rootfs, with no `.dockerignore`.

        Its symlinks are resolved inside it as the container sees them (an image is full of
        absolute links such as /etc/alternatives/*), so nothing is refused, nothing escapes.
        """
        ctx = cls.__new__(cls)
        ctx.root = Path(os.path.abspath(root))
        ctx.matcher = PatternMatcher([])
        ctx.memo = None
        ctx.walks = {}
        return ctx

    def is_ignored(self, rel: str) -> bool:
        """True if `.dockerignore` keeps `rel` (relative to the root) out of the context."""
        return self.matcher.matches(go_clean(rel.lstrip("/")) if rel else ".")

    def _visible(self, rel: str) -> bool:
        """Present in the context BuildKit would receive: not ignored, or a re-included parent."""
        if not self.is_ignored(rel):
            return True
        if not self.matcher.exclusions:
            return False
        path = fs.resolve_in_root(self.root, rel, follow_last=False)
        if not stat.S_ISDIR(_lstat_mode(path)):
            return False
        return next(walk_visible(path, [(self.matcher, rel + "/")]), None) is not None

    def _sent(self, rel: str) -> bool:
        """Whether `rel` reaches a file of the context as sent: the path as written and the
        file its links lead to (inside the context) are both visible. A link to an ignored
        file is dangling in the context BuildKit receives."""
        if rel == ".":
            return True
        if not self._visible(rel):
            return False
        real = "/".join(fs.components(self.root, rel)) or "."
        return real == "." or self._visible(real)

    def resolve_mount_source(self, source: str, line: int) -> Path:
        """The host path a `RUN --mount=type=bind` of the context shows at `source`: resolved
        inside the context (links followed as the context root sees them, `..` stopped at
        it), and present in the context as sent, else "not found"."""
        rel = go_clean(source).lstrip("/") or "."
        try:
            path = fs.resolve_in_root(self.root, rel)
            sent = self._sent(rel) and os.path.lexists(path)
        except PybuildError as e:
            raise DockerfileError(f"failed to compute cache key: {e}", line) from None
        if not sent:
            raise DockerfileError(f'failed to compute cache key: "/{rel if rel != "." else ""}": not found', line)
        return path

    def resolve_sources(self, patterns: list[str], line: int) -> list[Path]:
        """COPY/ADD sources as host paths below the root, wildcards expanded and sorted.

        As in BuildKit, a symlink is resolved inside the context (an absolute target is
        relative to the context root, `..` stops at it): nothing outside is ever read.
        Only a source *written* with `..` leaving the context is refused.

        The last component is returned unresolved so the copier names the result after it
        (BuildKit follows that symlink for content but keeps the name).
        """
        try:
            return self._resolve_sources(patterns, line)
        except DockerfileError:
            raise
        except PybuildError as e:  # a symlink loop, a path that cannot be read
            raise DockerfileError(f"failed to compute cache key: {e}", line) from None

    def _resolve_sources(self, patterns: list[str], line: int) -> list[Path]:
        out: list[Path] = []
        for written in patterns:
            # Every source is relative to the context root, where ".." stops: "../x" and
            # "/../../x" are the context's x (reference.md "Copying from the build context":
            # parent navigation is removed; docker 20.10 agrees, tests/parity/copy_parent_navigation).
            cleaned = go_clean("/" + written).lstrip("/") or "."
            if has_wildcards(cleaned):
                matches = self._expand(cleaned, written, line)
            else:
                if cleaned != "." and (not os.path.lexists(resolve_in_root(self.root, cleaned)) or not self._sent(cleaned)):
                    raise DockerfileError(f'failed to compute cache key: "/{cleaned}": not found', line)
                matches = [cleaned]
            for rel in matches:
                out.append(self.root / rel if rel != "." else self.root)
        return out

    def _expand(self, cleaned: str, written: str, line: int) -> list[str]:
        """Matches of a wildcard source; none is fine (BuildKit allows an empty wildcard)."""
        comps = cleaned.split("/")
        first = next(i for i, c in enumerate(comps) if has_wildcards(c))
        base = "/".join(comps[:first])
        globs = [compile_go_glob(c) for c in comps[first:]]
        base_dir = resolve_in_root(self.root, base) if base else self.root
        if not base_dir.is_dir() or (base and not self._visible(base)):
            raise DockerfileError(f'failed to compute cache key: "/{base}": not found', line)
        found: list[str] = []
        self._match_level(base_dir, base, globs, found)
        return found

    def _match_level(self, directory: Path, rel: str, globs: list[Glob], found: list[str]) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        for name in names:
            if not globs[0].fullmatch(name):
                continue
            child = f"{rel}/{name}" if rel else name
            if not self._sent(child):
                continue
            if len(globs) == 1:
                found.append(child)
            elif (directory / name).is_dir() and not (directory / name).is_symlink():
                self._match_level(directory / name, child, globs[1:], found)

    def manifest(self, paths: list[Path]) -> FileManifest:
        """What the cache key covers, per path relative to the root: "type mode uid:gid
        sha-or-link-target" for every visible entry below each source (never mtimes).

        A symlink given as a source appears both as the link and as what it points to,
        since COPY copies the target's content under the link's name.

        With the store's memo, a walk whose entries all stat exactly as when this set of
        sources last had its manifest made (and none changed within `RACY_MARGIN_NS` of
        that walk, git's racily-clean rule again) gets that manifest's digest without
        reading a memo row or making a line per entry: a warm build costs the walk.
        """
        started = time.time_ns()
        found: _Walked = []
        walked: list[str] = []
        for written in paths:
            rel = os.path.relpath(written, self.root).replace(os.sep, "/")
            # the parents resolved inside the root (a link among them is never followed
            # on the host), the last component as it is
            path = self.root if rel == "." else fs.resolve_in_root(self.root, rel, follow_last=False)
            try:
                top_st = os.lstat(path)
            except FileNotFoundError:
                continue
            if path != self.root / rel:
                rel = os.path.relpath(path, self.root).replace(os.sep, "/")
            if stat.S_ISLNK(top_st.st_mode):
                found.append((rel, os.fspath(path), [("", top_st)]))
                path = resolve_in_root(self.root, rel)
                rel = os.path.relpath(path, self.root).replace(os.sep, "/")
                try:
                    top_st = os.lstat(path)
                except FileNotFoundError:
                    continue
            found.append((rel, os.fspath(path), [("", top_st)]))
            if stat.S_ISDIR(top_st.st_mode):
                prefix = "" if rel == "." else rel + "/"
                walk_started = time.time_ns()
                entries = list(walk_visible(path, [(self.matcher, prefix)]))
                found.append((prefix, os.fspath(path) + "/", entries))
                walked.append(os.fspath(path) + "/")
                self.walks[os.fspath(path)] = (walk_started, entries)
        memo = self.memo
        if memo is None:
            return FileManifest.of(self._entries_of(found))
        source = json.dumps([os.fspath(self.root), [os.fspath(p) for p in paths],
                             [("!" if m.exclusion else "") + m.cleaned
                              for m in self.matcher.patterns]])
        fingerprint, latest = _fingerprint(found)
        digest = memo.known_manifest(source, fingerprint)
        if digest is not None:
            return FileManifest(digest, make=lambda: self._entries_of(found, flush=True))
        lines = self._entries_of(found)
        for base in walked:  # each of these directories was walked whole
            memo.forget_unseen_below(base)
        memo.flush()
        made = FileManifest.of(lines)
        if latest + RACY_MARGIN_NS < started:
            memo.put_manifest(source, fingerprint, made.digest)
        return made

    def _entries_of(self, found: _Walked, flush: bool = False) -> dict[str, str]:
        out: dict[str, str] = {}
        record = self._record
        for prefix, base, entries in found:
            for name, st in entries:
                record(out, prefix + name, base + name, st)
        if flush and self.memo is not None:
            self.memo.flush()
        return out

    def digest(self, paths: list[Path]) -> str:
        """Content digest of sources for the cache key: the digest of `manifest(paths)`."""
        return self.manifest(paths).digest

    def _record(self, out: dict[str, str], rel: str, path: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            kind, extra = "f", file_sha256(path, st, self.memo)
        elif stat.S_ISDIR(mode):
            kind, extra = "d", "-"
        elif stat.S_ISLNK(mode):
            kind, extra = "l", os.readlink(path)
        else:
            return
        out[rel] = f"{kind} {stat.S_IMODE(mode):o} {st.st_uid}:{st.st_gid} {extra}"
