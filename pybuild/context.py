"""The build context: `.dockerignore`, COPY/ADD source wildcards, path safety, content digests.

BuildKit never sees ignored files: the client filters them out before sending the context.
pybuild reads the context in place, so every consumer (source resolution, the cache digest,
the copier) asks the same `PatternMatcher` and an ignored file stays invisible everywhere.
"""

from __future__ import annotations

import hashlib
import os
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


def go_clean(path: str) -> str:
    """Go's filepath.Clean: Docker cleans patterns and paths this way, not like normpath."""
    if not path:
        return "."
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
    and on strings (`os.scandir`): no Path object per entry.
    """
    filters = [(m, p) for m, p in filters if m]
    exclusions = any(m.exclusions for m, _ in filters)
    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = [("", iter(_entries(os.fspath(top))))]
    # per stack level: a hidden directory's entry, yielded only once something inside is
    pending: list[tuple[str, os.stat_result] | None] = [None]
    waiting = 0
    while stack:
        rel, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            if pending.pop() is not None:
                waiting -= 1
            continue
        child = rel + entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PybuildError(f"cannot read {_short(entry.path)}: {exc.strerror}") from None
        hidden = bool(filters) and _hidden(child, filters)
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and hidden and not exclusions:
            continue
        if not is_dir and (hidden or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode))):
            continue
        if is_dir and hidden:
            stack.append((child + "/", iter(_entries(entry.path))))
            pending.append((child, st))
            waiting += 1
            continue
        if waiting:
            for i, held in enumerate(pending):
                if held is not None:
                    yield held
                    pending[i] = None
            waiting = 0
        yield child, st
        if is_dir:
            stack.append((child + "/", iter(_entries(entry.path))))
            pending.append(None)


def _entries(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise PybuildError(f"cannot read {_short(directory)}: {exc.strerror}") from None


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

# size, mtime_ns, ctime_ns, hashed_ns, sha256, path (where the file was when it was read)
_MemoRow = tuple[int, int, int, int, str, str]


def _memo_table(db: sqlite3.Connection) -> None:
    """The memo's table, made or brought up to date (rows of a version without `path`
    cannot be dropped when their file goes away: they are forgotten, it is only a cache)."""
    db.execute(_MEMO_SCHEMA)
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
        self._rows: dict[int, dict[int, _MemoRow]] = {}
        self._dirty: dict[tuple[int, int], _MemoRow] = {}
        self._seen: dict[int, set[int]] = {}
        self._gone: set[tuple[int, int]] = set()

    def _device(self, dev: int) -> dict[int, _MemoRow]:
        rows = self._rows.get(dev)
        if rows is None:
            rows = {}
            if self._connect is not None:
                db = self._connect()
                _memo_table(db)
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
                    stored = dict(self._connect().execute(
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
        db = self._connect()
        with db:
            db.executemany("DELETE FROM context_digests WHERE dev = ? AND ino = ?", sorted(gone))
            db.executemany("INSERT OR REPLACE INTO context_digests"
                           " (dev, ino, size, mtime_ns, ctime_ns, hashed_ns, sha256, path)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(dev, ino, *row) for (dev, ino), row in dirty.items()])

    @staticmethod
    def forget_all(db: sqlite3.Connection) -> int:
        """Drop every entry (the next build re-reads every file); returns how many."""
        _memo_table(db)
        with db:
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

    def manifest(self, paths: list[Path]) -> dict[str, str]:
        """What the cache key covers, per path relative to the root: "type mode uid:gid
        sha-or-link-target" for every visible entry below each source (never mtimes).

        A symlink given as a source appears both as the link and as what it points to,
        since COPY copies the target's content under the link's name.
        """
        out: dict[str, str] = {}
        record = self._record
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
                record(out, rel, os.fspath(path), top_st)
                path = resolve_in_root(self.root, rel)
                rel = os.path.relpath(path, self.root).replace(os.sep, "/")
                try:
                    top_st = os.lstat(path)
                except FileNotFoundError:
                    continue
            record(out, rel, os.fspath(path), top_st)
            if stat.S_ISDIR(top_st.st_mode):
                prefix = "" if rel == "." else rel + "/"
                base = os.fspath(path) + "/"
                started = time.time_ns()
                entries = list(walk_visible(path, [(self.matcher, prefix)]))
                for child, st in entries:
                    record(out, prefix + child, base + child, st)
                self.walks[os.fspath(path)] = (started, entries)
                if self.memo is not None:  # the whole directory was walked
                    self.memo.forget_unseen_below(base)
        if self.memo is not None:
            self.memo.flush()
        return out

    def digest(self, paths: list[Path]) -> str:
        """Content digest of sources for the cache key: sha256 over `manifest(paths)`."""
        h = hashlib.sha256()
        for rel, signature in sorted(self.manifest(paths).items()):
            h.update(os.fsencode(rel) + b"\0" + os.fsencode(signature) + b"\n")
        return "sha256:" + h.hexdigest()

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
