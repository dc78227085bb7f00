"""COPY and ADD onto a mounted rootfs, following BuildKit's copier (tonistiigi/fsutil).

Every destination is resolved inside the rootfs as the container would see it
(`resolve_in_root`), and a file is always written after unlinking whatever was at its
name, never through it: a hostile symlink in an image cannot redirect a write outside.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pybuild import fs
from pybuild.context import PatternMatcher, go_clean, walk_visible
from pybuild.errors import DockerfileError, PybuildError
from pybuild.fs import resolve_in_root
from pybuild.layer import extract_archive, is_archive

if TYPE_CHECKING:
    from pybuild.solver.git import GitRef
    from pybuild.solver.incremental import IncrementalCopy

_CHECKSUM_ALGOS = ("sha256", "sha384", "sha512")
_CHUNK = 1 << 20


_CHMOD_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_CHMOD_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")
_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o0007}
_SHIFT = {"u": 6, "g": 3, "o": 0}


@dataclass(frozen=True)
class Chmod:
    """`--chmod`: octal (`755`) or, since Dockerfile 1.14, symbolic as chmod(1) (`go-w`,
    `u=rwX,go=rX`, `+x`, `g=u`); reference.md "COPY --chmod". A symbolic mode applies to each
    entry's own mode; `X` adds execute for directories and already-executable files."""

    text: str
    octal: int | None = None

    def mode(self, current: int, is_dir: bool) -> int:
        if self.octal is not None:
            return self.octal
        original = current & 0o7777
        mode = original
        for clause in self.text.split(","):
            m = _CHMOD_CLAUSE.fullmatch(clause)
            assert m is not None  # checked by parse_chmod
            who = m.group(1).replace("a", "ugo") or "ugo"
            mask = 0
            for w in set(who):
                mask |= _WHO[w]
            if set(who) == {"u", "g", "o"}:
                mask |= 0o1000
            for op, perm in _CHMOD_ACTION.findall(m.group(2)):
                bits = 0
                if perm in _SHIFT:  # copy another class's bits: g=u
                    rwx = (mode >> _SHIFT[perm]) & 7
                    bits = rwx << 6 | rwx << 3 | rwx
                for ch in perm if perm not in _SHIFT else "":
                    bits |= {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000,
                             "X": 0o111 if is_dir or original & 0o111 else 0}[ch]
                bits &= mask
                if op == "+":
                    mode |= bits
                elif op == "-":
                    mode &= ~bits
                else:
                    mode = (mode & ~mask) | bits
        return mode


def parse_chmod(text: str, line: int | None) -> Chmod:
    """A --chmod value checked as BuildKit's convert_copy.go does, before anything runs."""
    octal_error = DockerfileError(
        f"invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777", line)
    if text[:1].isdigit():
        if not all(c in "01234567" for c in text) or int(text, 8) > 0o7777:
            raise octal_error
        return Chmod(text, int(text, 8))
    if not text or not all(_CHMOD_CLAUSE.fullmatch(c) for c in text.split(",")):
        raise DockerfileError(f"invalid chmod parameter: '{text}': not an octal or a symbolic mode "
                              "(like u=rwX,go=rX)", line)
    return Chmod(text)


def _chmod_of(value: int | Chmod | None) -> Chmod | None:
    return Chmod(oct(value), value) if isinstance(value, int) else value


@dataclass
class CopyRequest:
    """One COPY/ADD of local paths; `dest` is as written (after expansion).

    `ignore` is the build context's `.dockerignore` matcher (paths relative to
    `source_root`): pass `BuildContext.matcher` when the sources come from the context so
    ignored files inside a copied directory stay invisible. `keep_owner` keeps the
    sources' uid/gid, as BuildKit does for `COPY --from`; the context's files are 0:0.
    """

    sources: list[Path]
    source_root: Path
    dest: str
    workdir: str = "/"
    chown: tuple[int, int] | None = None
    chmod: int | Chmod | None = None
    exclude: list[str] = field(default_factory=list)
    parents: bool = False
    is_add: bool = False
    line: int | None = None
    ignore: PatternMatcher | None = None
    keep_owner: bool = False
    # How many source arguments were written (0: one per source). The "destination must be a
    # directory" rule counts arguments, not wildcard matches (BuildKit's dispatchCopy).
    source_args: int = 0
    # --parents: the sources as written and how to resolve one of them (wildcards and all)
    # into paths below `source_root`, so each keeps the part after its own `/./` pivot.
    patterns: list[str] = field(default_factory=list)
    resolve: Callable[[str], list[Path]] | None = None
    # ADD --unpack=<bool>: None is ADD's default (local archives are unpacked)
    unpack: bool | None = None
    # a COPY of one context directory that may build on its step's previous result
    # (solver/incremental.py): it walks the source, says what the upper already holds
    incremental: IncrementalCopy | None = None


def _dest_path(dest: str, workdir: str) -> tuple[str, bool]:
    """The destination as an absolute container path, and whether it must be a directory."""
    forced_dir = dest in ("", ".") or dest.endswith("/")
    full = dest if dest.startswith("/") else posixpath.join("/", workdir or "/", dest)
    return go_clean(full), forced_dir


def _container_path(rootfs: Path, host: Path | str) -> str:
    rel = os.path.relpath(host, rootfs)
    return "/" if rel == "." else "/" + rel


class _Copier:
    """Copies sources for one request; remembers hardlinks and directories to finish."""

    def __init__(self, rootfs: Path, req: CopyRequest, unpack: bool) -> None:
        self.rootfs = rootfs
        self.req = req
        self.unpack = unpack
        self.exclude = PatternMatcher(req.exclude)
        self.links: dict[tuple[int, int], Path | str] = {}
        self.dirs: list[tuple[str, str, os.stat_result]] = []
        self.chmod = _chmod_of(req.chmod)
        # Directories COPY creates take an octal --chmod too (today's BuildKit:
        # dockerfile_copy_test.go testCopyChmod, `COPY --chmod=770 foo /parent/sub/foo` makes
        # /parent/sub 0770); with a symbolic mode they are 0755 (fsutil copy.Copy's MkdirAll
        # takes only CopyInfo.Mode, which a symbolic mode leaves unset).
        self.dir_mode = self.chmod.octal if self.chmod and self.chmod.octal is not None else 0o755

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        if self.req.chown is not None:
            return self.req.chown
        if self.req.keep_owner:
            return st.st_uid, st.st_gid
        return 0, 0

    def mkdir_p(self, path: str) -> Path:
        """Create missing directories of a container path: 0755 (or --chmod), owned by
        --chown or root."""
        uid, gid = self.req.chown or (0, 0)
        try:
            return fs.mkdir_p(self.rootfs, path, mode=self.dir_mode, uid=uid, gid=gid)
        except fs.PathError as e:
            raise DockerfileError(str(e), self.req.line) from None

    def copy_source(self, src: Path, dest: str, forced_dir: bool) -> None:
        rel = os.path.relpath(src, self.req.source_root)
        followed = resolve_in_root(self.req.source_root, rel)
        try:
            st = os.lstat(followed)
        except FileNotFoundError:
            raise DockerfileError(f'"/{go_clean(rel)}": not found', self.req.line) from None
        if rel != "." and self.exclude and self.exclude.matches(src.name):
            return
        if stat.S_ISREG(st.st_mode) and self.unpack and is_archive(followed):
            # The destination and its missing parents take --chown; members keep their own
            # owners (Docker 20.10's BuildKit).
            self.mkdir_p(dest)
            with open(followed, "rb") as f:
                extract_archive(f, self.rootfs, dest)
            return
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            return
        if forced_dir:
            self.mkdir_p(dest)
        else:
            self.mkdir_p(posixpath.dirname(dest))
        target = resolve_in_root(self.rootfs, dest)
        if stat.S_ISDIR(st.st_mode):
            if not os.path.lexists(target):
                self.mkdir_p(dest)
            elif not target.is_dir():
                raise DockerfileError(f"cannot copy to non-directory: {dest}", self.req.line)
            real_rel = os.path.relpath(followed, self.req.source_root)
            prefix = "" if real_rel == "." else real_rel + "/"
            inc = self.req.incremental
            if inc is not None:
                where = os.path.relpath(target, self.rootfs)
                if inc.active and where != inc.target:
                    raise PybuildError(f"incremental copy: the destination moved to {where}")
                inc.target = where
            self.copy_tree(followed, target, prefix)
        else:
            final = target / src.name if target.is_dir() else target
            self.copy_entry(followed, st, final)

    def copy_tree(self, src_dir: Path, dst_dir: Path, ignore_prefix: str) -> None:
        """Copy a directory's contents; directory metadata is set once their contents are in.

        An incremental copy walks once (`IncrementalCopy.walk`) and leaves out the entries
        its seeded upper already holds; directories are all visited (metadata re-applied)."""
        inc = self.req.incremental
        # Strings, not Paths, on this loop (it runs once per file of the context). A
        # directory this copy created is empty, so its files need no replace check.
        made: dict[str, str] = {"": os.fspath(dst_dir)}
        fresh: set[str] = set()
        src_base = os.fspath(src_dir) + "/"
        skip = inc.unchanged if inc is not None and inc.active else set()
        entries = inc.walk() if inc is not None else walk_visible(
            src_dir, tree_filters(self.exclude, self.req.ignore, ignore_prefix))
        for rel, st in entries:
            if rel in skip:
                continue
            parent, _, name = rel.rpartition("/")
            dst = made[parent] + "/" + name
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                made[rel], created = self.make_dir(src_base + rel, dst, st)
                if created:
                    fresh.add(rel)
            elif parent in fresh and stat.S_ISREG(mode) and st.st_nlink == 1:
                self.new_file(src_base + rel, st, dst)
            else:
                self.copy_entry(src_base + rel, st, dst)
        for dst, src, st in reversed(self.dirs):
            self.apply_meta(src, dst, st)
        self.dirs.clear()

    def make_dir(self, src: str, dst: str, st: os.stat_result) -> tuple[str, bool]:
        """The directory to copy into at `dst` and whether this call created it."""
        try:
            existing = os.lstat(dst)
        except FileNotFoundError:
            os.mkdir(dst, 0o700)
            self.dirs.append((dst, src, st))
            return dst, True
        if stat.S_ISDIR(existing.st_mode):
            self.dirs.append((dst, src, st))
            return dst, False
        if stat.S_ISLNK(existing.st_mode):
            resolved = resolve_in_root(self.rootfs, _container_path(self.rootfs, dst))
            if resolved.is_dir():
                if self.req.incremental is not None:
                    self.req.incremental.clean = False  # not the plain dest/rel layout
                return os.fspath(resolved), False
        raise DockerfileError(f"cannot copy to non-directory: {_container_path(self.rootfs, dst)}", self.req.line)

    def new_file(self, src: str, st: os.stat_result, dst: str) -> None:
        """copy_entry for a regular file whose name is free: one open of each side, and
        owner, mode, xattrs and times set through the descriptor (no path lookups)."""
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(sfd).st_mode):
                raise PybuildError(f"{src} changed while it was copied")
            dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                _copy_fd(sfd, dfd, st.st_size)
                uid, gid = self.owner(st)
                os.fchown(dfd, uid, gid)
                mode = self.chmod.mode(st.st_mode, False) if self.chmod else stat.S_IMODE(st.st_mode)
                os.fchmod(dfd, mode & 0o7777)
                _copy_xattrs(sfd, dfd)
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def copy_entry(self, src: Path | str, st: os.stat_result, dst: Path | str) -> None:
        """Copy one file or symlink to `dst`, replacing (never following) what is there."""
        try:
            existing = os.lstat(dst)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(existing.st_mode):
                where = _container_path(self.rootfs, dst)
                raise DockerfileError(f"cannot replace directory {where} with a file", self.req.line)
            os.unlink(dst)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        else:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                os.link(self.links[key], dst)
                return
            _copy_bytes(src, dst)
            if st.st_nlink > 1:
                self.links[key] = dst
        self.apply_meta(src, dst, st)

    def apply_meta(self, src: Path | str, dst: Path | str, st: os.stat_result) -> None:
        """Owner, mode (or --chmod), xattrs and times, in that order: chown clears setuid."""
        uid, gid = self.owner(st)
        os.chown(dst, uid, gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            mode = self.chmod.mode(st.st_mode, stat.S_ISDIR(st.st_mode)) if self.chmod \
                else stat.S_IMODE(st.st_mode)
            os.chmod(dst, mode & 0o7777)
            _copy_xattrs(src, dst)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def tree_filters(exclude: PatternMatcher, ignore: PatternMatcher | None,
                 ignore_prefix: str) -> list[tuple[PatternMatcher, str]]:
    """What a directory copy's walk hides: --exclude patterns, and `.dockerignore` (whose
    paths are relative to the context root, so they see `ignore_prefix` + the entry)."""
    filters: list[tuple[PatternMatcher, str]] = [(exclude, "")]
    if ignore is not None:
        filters.append((ignore, ignore_prefix))
    return filters


def _copy_bytes(src: Path | str, dst: Path | str) -> None:
    """Copy a regular file's bytes without following a link or blocking on a FIFO."""
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(sfd)
        if not stat.S_ISREG(st.st_mode):
            raise PybuildError(f"{src} changed while it was copied")
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _copy_fd(sfd, dfd, st.st_size)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


# Whether copy_file_range(2) may work: the context (ext4) and an overlay rootfs are two
# filesystems, so it fails with EXDEV for every file; after the first failure of that
# kind a copy goes straight to read/write (one syscall less per file).
_IN_KERNEL = {"ok": True}


def _copy_fd(sfd: int, dfd: int, size: int) -> None:
    """Copy everything `sfd` still has (in the kernel when it can); `size` is a hint.

    A small file is read and written from here: copy_file_range(2) costs ~0.5-1 ms per
    call into an overlay upper on this ext4 (measured), read + write ~10 us."""
    if size >= _CHUNK and _IN_KERNEL["ok"]:
        done = 0
        while True:
            try:
                n = os.copy_file_range(sfd, dfd, max(_CHUNK * 64, size - done))
            except OSError as e:
                if e.errno == errno.EXDEV:
                    _IN_KERNEL["ok"] = False
                break
            if n == 0:
                return
            done += n
    if size < _CHUNK:
        data = os.read(sfd, size + 1)  # one read of a small file; the extra byte sees it grew
        os.write(dfd, data)
        if len(data) == size:
            return
    while chunk := os.read(sfd, _CHUNK):
        os.write(dfd, chunk)


def _copy_xattrs(src: Path | str | int, dst: Path | str | int) -> None:
    """Keep extended attributes (file capabilities live there); skip what cannot be set.
    Paths are not followed when they are symlinks; descriptors are used as they are."""
    follow = isinstance(src, int)
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=follow), follow_symlinks=follow)
        except OSError:
            continue


def _multi_error(is_add: bool, line: int | None) -> DockerfileError:
    cmd = "ADD" if is_add else "COPY"
    return DockerfileError(
        f"When using {cmd} with more than one source file, the destination must be a directory and end with a /", line
    )


def copy_into(rootfs: Path, req: CopyRequest) -> None:
    """Apply one COPY/ADD of local paths to `rootfs` (Docker's destination rules)."""
    _apply(Path(rootfs), req, unpack=req.is_add if req.unpack is None else req.unpack)


def _apply(rootfs: Path, req: CopyRequest, unpack: bool) -> None:
    """copy_into, with ADD's archive extraction only for local files (never for URLs)."""
    dest, forced_dir = _dest_path(req.dest, req.workdir)
    copier = _Copier(rootfs, req, unpack)
    try:
        if req.parents:
            _copy_parents(copier, req, dest)
            return
        args = req.source_args or len(req.sources)
        if args > 1 and not forced_dir and not resolve_in_root(rootfs, dest).is_dir():
            raise _multi_error(req.is_add, req.line)
        for src in req.sources:
            copier.copy_source(src, dest, forced_dir)
    except OSError as exc:
        cmd = "ADD" if req.is_add else "COPY"
        raise DockerfileError(f"{cmd} failed: {exc.strerror}: {exc.filename}", req.line) from None


def parents_pivot(written: str) -> int:
    """How many leading path components `COPY --parents` drops from the matches of a source:
    those before its first `/./` (rsync's --relative pivot), none without one. A trailing
    `/.` is no pivot (dockerfile_parents_test.go testCopyRelativeParents: `/test/a/./b/./c`
    gives /out/b/c)."""
    at = written.find("/./")
    if at < 0:
        return 0
    prefix = go_clean(written[:at]).strip("/")
    return 0 if prefix in ("", ".") else len(prefix.split("/"))


def _copy_parents(copier: _Copier, req: CopyRequest, dest: str) -> None:
    """Each match keeps its path (after its source's pivot) below the destination, which
    exists afterwards even when a wildcard matched nothing (testCopyParentsMissingDirectory)."""
    copier.mkdir_p(dest)
    if req.resolve is not None and req.patterns:
        groups = []
        for p in req.patterns:
            if "**" in p:
                groups += _doublestar_matches(req, p)
            else:
                groups.append((parents_pivot(p), req.resolve(p)))
    else:
        groups = [(0, req.sources)]
    for drop, sources in groups:
        for src in sources:
            rel = go_clean(os.path.relpath(src, req.source_root)).strip("/")
            kept = "/".join(rel.split("/")[drop:]) if rel != "." else ""
            is_dir = resolve_in_root(req.source_root, rel).is_dir()
            keep = kept if is_dir else posixpath.dirname(kept)
            target = go_clean(posixpath.join(dest, keep)) if keep not in ("", ".") else dest
            copier.copy_source(src, target, True)


def _doublestar_matches(req: CopyRequest, written: str) -> list[tuple[int, list[Path]]]:
    """`--parents` sources with `**`: BuildKit copies the pivot's parent with the rest as an
    include pattern (convert_copy.go, patternmatcher semantics: `**` spans any number of
    directories, none included). For each parent the wildcard matches: (components to drop,
    the top-most matching entries)."""
    parent, sep, pattern = written.partition("/./")
    if not sep:
        parent, pattern = "/", written
    base = go_clean("/" + parent).strip("/")
    assert req.resolve is not None
    tops = req.resolve(base) if base else [req.source_root]
    include = PatternMatcher([go_clean("/" + pattern).lstrip("/")])
    out = []
    for top in tops:
        if not top.is_dir():
            continue
        rel_top = go_clean(os.path.relpath(top, req.source_root)).strip("/")
        rel_top = "" if rel_top == "." else rel_top
        filters: list[tuple[PatternMatcher, str]] = []
        if req.ignore is not None:
            filters.append((req.ignore, rel_top + "/" if rel_top else ""))
        found: list[Path] = []
        taken: list[str] = []
        for rel, _st in walk_visible(top, filters):
            if any(rel.startswith(t + "/") for t in taken) or not include.matches(rel):
                continue
            taken.append(rel)
            found.append(top / rel)
        out.append((len(rel_top.split("/")) if rel_top and sep else 0, found))
    return out


def key_sources(patterns: list[str]) -> list[str]:
    """What a COPY's cache key must cover beyond its resolved sources: for a `--parents`
    source with `**`, the directory before its first wildcard (a superset of the matches)."""
    out = []
    for p in patterns:
        if "**" in p:
            comps = go_clean("/" + p.replace("/./", "/")).strip("/").split("/")
            literal = []
            for c in comps:
                if any(ch in c for ch in "*?[\\"):
                    break
                literal.append(c)
            out.append("/".join(literal) or ".")
    return out


def _parse_checksum(checksum: str, line: int | None) -> tuple[str, str]:
    algo, sep, hexdigest = checksum.partition(":")
    if not sep or not algo or not hexdigest:
        raise DockerfileError(f"invalid checksum digest format: {checksum}", line)
    if algo not in _CHECKSUM_ALGOS:  # go-digest's Parse (dockerfile_addchecksum tests)
        raise DockerfileError(f"unsupported digest algorithm: {checksum}", line)
    if len(hexdigest) != hashlib.new(algo).digest_size * 2 or any(c not in "0123456789abcdef" for c in hexdigest):
        raise DockerfileError(f"invalid checksum digest format: {checksum}", line)
    return algo, hexdigest


@dataclass(frozen=True)
class Fetched:
    """One `ADD <url>` source as downloaded (or revalidated): what its key holds."""

    url: str
    name: str            # the file name in the image: the URL path's last component
    path: Path           # the bytes, in the store's HTTP cache
    digest: str          # sha256 of the bytes
    last_modified: str   # the server's Last-Modified ("" when none): the file's mtime

    def key(self) -> dict[str, str]:
        return {"url": self.url, "name": self.name, "digest": self.digest,
                "last_modified": self.last_modified}


def _url_name(url: str, line: int | None) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise DockerfileError(f"unsupported URL scheme in {url}", line)
    name = posixpath.basename(parsed.path)
    return "__unnamed__" if name in ("", ".", "/", "..") else name


def http_cache_entry(cache_root: Path, url: str) -> Path:
    """The directory of `url`'s download in the store's HTTP cache (named by its hash)."""
    return cache_root / hashlib.sha256(url.encode()).hexdigest()


def fetch_url(cache_root: Path, url: str, line: int | None) -> Fetched:
    """The current content of `url`, as BuildKit's HTTP source gets it: the last download
    is revalidated (If-None-Match with its ETag, If-Modified-Since with its Last-Modified);
    a 304 reuses it, anything else is downloaded again. Entries are named by the URL's
    hash (never by the URL), written to a temporary name and renamed, under a lock."""
    import requests  # only ADD <url> needs it: keep it off every build's start-up

    name = _url_name(url, line)
    entry = http_cache_entry(cache_root, url)
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta = _read_meta(entry / "meta.json", url)
        headers = {}
        if meta is not None:
            if meta.get("etag"):
                headers["If-None-Match"] = meta["etag"]
            if meta.get("last_modified"):
                headers["If-Modified-Since"] = meta["last_modified"]
        h = hashlib.sha256()
        tmp = entry / f"data.{os.getpid()}.tmp"
        try:
            with requests.get(url, stream=True, timeout=(30, 300), headers=headers) as resp:
                if resp.status_code == 304 and meta is not None:
                    return Fetched(url, name, entry / "data", meta["digest"], meta.get("last_modified", ""))
                if not 200 <= resp.status_code < 300:
                    raise DockerfileError(f"failed to load {url}: invalid response status {resp.status_code}", line)
                with open(tmp, "wb") as f:
                    for chunk in resp.iter_content(_CHUNK):
                        h.update(chunk)
                        f.write(chunk)
                etag = resp.headers.get("ETag", "")
                modified = resp.headers.get("Last-Modified", "")
        except requests.RequestException as exc:
            _unlink(tmp)
            raise DockerfileError(f"failed to load {url}: {exc}", line) from None
        except BaseException:
            _unlink(tmp)
            raise
        os.replace(tmp, entry / "data")
        digest = "sha256:" + h.hexdigest()
        meta_tmp = entry / f"meta.{os.getpid()}.tmp"
        meta_tmp.write_text(json.dumps({"url": url, "etag": etag, "last_modified": modified,
                                        "digest": digest}))
        os.replace(meta_tmp, entry / "meta.json")
        return Fetched(url, name, entry / "data", digest, modified)


def _read_meta(path: Path, url: str) -> dict[str, str] | None:
    """The last download's record, if it is whole and for this URL (else: download again)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(meta, dict) and meta.get("url") == url and isinstance(meta.get("digest"), str) \
        and all(isinstance(meta.get(k, ""), str) for k in ("etag", "last_modified")) \
        and (path.parent / "data").is_file()
    return meta if ok else None


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fetch_urls(cache_root: Path, urls: list[str], checksum: str | None, line: int | None) -> list[Fetched]:
    """Every URL of one ADD, fetched or revalidated, and checked against `--checksum`."""
    expected = _parse_checksum(checksum, line) if checksum else None
    if expected and len(urls) > 1:
        raise DockerfileError("checksum can't be specified for multiple sources", line)
    out = [fetch_url(cache_root, url, line) for url in urls]
    if expected:
        algo, want = expected
        got = out[0].digest.split(":", 1)[1] if algo == "sha256" else _file_digest(out[0].path, algo)
        if got != want:
            raise DockerfileError(f"checksum mismatch for {urls[0]}: expected {algo}:{want}, "
                                  f"got {algo}:{got}", line)
    return out


def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def add_urls(rootfs: Path, fetched: list[Fetched], dest: str, workdir: str,
             chown: tuple[int, int] | None, chmod: int | Chmod | None, line: int | None,
             unpack: bool = False) -> None:
    """ADD of remote files: named after the URL path, mode 0600 and the server's
    Last-Modified as mtime (BuildKit's rules); extracted only with --unpack=true
    (reference.md "ADD --unpack")."""
    with tempfile.TemporaryDirectory(prefix="pybuild-add-") as tmp:
        sources: list[Path] = []
        for i, f in enumerate(fetched):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            out = folder / f.name
            shutil.copyfile(f.path, out)
            mtime = time.time()
            if f.last_modified:
                import email.utils  # only ADD of a URL needs it

                try:
                    mtime = email.utils.parsedate_to_datetime(f.last_modified).timestamp()
                except (TypeError, ValueError):
                    pass
            os.chmod(out, 0o600)
            os.utime(out, (mtime, mtime))
            sources.append(out)
        req = CopyRequest(sources, Path(tmp), dest, workdir, chown, chmod, is_add=True, line=line,
                          source_args=len(fetched))
        _apply(Path(rootfs), req, unpack=unpack)


def add_git(rootfs: Path, ref: GitRef, commit: str, keep_git_dir: bool, dest: str, workdir: str,
            chown: tuple[int, int] | None, chmod: int | Chmod | None, line: int | None) -> None:
    """ADD of a git repository: the checkout's contents (or its subdir) into `dest`, owned
    by root or --chown, `.git` only with --keep-git-dir (dockerfile_addgit_test.go testAddGit)."""
    from pybuild.solver import git

    with git.checkout(ref, commit, keep_git_dir, line) as src:
        req = CopyRequest([src], src, dest, workdir, chown, chmod, is_add=True, line=line)
        _apply(Path(rootfs), req, unpack=False)


def check_add_sources(is_add: bool, sources: list[str], checksum: str | None,
                      line: int | None) -> list[tuple[str, GitRef | None]]:
    """Each source with its git repository (None for URLs and paths), checked as BuildKit's
    convert_copy.go does before anything runs."""
    from pybuild.solver import git

    out: list[tuple[str, GitRef | None]] = []
    for src in sources:
        ref = git.parse_git_ref(src, line)
        if ref is not None and not is_add:
            raise DockerfileError("source can't be a git ref for COPY", line)
        if ref is None and not is_add and src.startswith(("http://", "https://")):
            raise DockerfileError("source can't be a URL for COPY", line)
        out.append((src, ref))
    if checksum:
        if len(sources) != 1:
            raise DockerfileError("checksum can't be specified for multiple sources", line)
        if out[0][1] is None and not sources[0].startswith(("http://", "https://")):
            raise DockerfileError("checksum requires HTTP(S) or Git sources", line)
        if out[0][1] is None:
            _parse_checksum(checksum, line)  # a bad digest fails before anything runs
    return out


def write_heredoc_files(rootfs: Path, files: list[tuple[str, str]], dest: str, workdir: str,
                        chown: tuple[int, int] | None, chmod: int | Chmod | None,
                        line: int | None = None) -> None:
    """COPY <<EOF: each here-document becomes a file named after its delimiter (mode 0644)."""
    with tempfile.TemporaryDirectory(prefix="pybuild-heredoc-") as tmp:
        sources: list[Path] = []
        for i, (name, content) in enumerate(files):
            if "/" in name or name in ("", ".", ".."):
                raise DockerfileError(f"invalid here-document name {name!r}", line)
            folder = Path(tmp) / str(i)
            folder.mkdir()
            path = folder / name
            path.write_bytes(content.encode("utf-8", "surrogateescape"))
            os.chmod(path, 0o644)
            sources.append(path)
        copy_into(rootfs, CopyRequest(sources, Path(tmp), dest, workdir, chown, chmod, line=line))
