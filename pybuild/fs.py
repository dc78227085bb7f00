"""Paths inside a root: the one resolver every join of an outside path goes through.

A path from a Dockerfile, an image, a layer or a cache record names a file *as the root
sees it*: symlinks are followed as `chroot(root)` would follow them (an absolute link
restarts at the root, `..` stops at the root), so the result never leaves the root.
Resolution walks directory fds (`openat` with `O_NOFOLLOW`), so no component is ever
looked up through a host path, and paths deeper than PATH_MAX resolve too. `mkdir_p`
creates missing directories through the resolved components only, each opened with
`O_NOFOLLOW`: a component swapped for a symlink after resolution fails the call instead of
redirecting it.

Nothing here knows about Dockerfiles; callers turn `PathError` into their own message.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pybuild.errors import PybuildError

MAX_SYMLINKS = 40  # as the kernel's ELOOP limit for one lookup
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathError(PybuildError):
    """A path cannot be resolved or created inside its root; `reason` says why."""

    def __init__(self, message: str, path: str, reason: str, code: int = 0) -> None:
        self.path = path
        self.reason = reason
        self.errno = code
        super().__init__(message)


def _unresolvable(root: Path | str, path: str, reason: str, code: int,
                  cls: type[PathError] = PathError) -> PathError:
    return cls(f"cannot resolve {path!r} in {root}: {reason}", path, reason, code)


class NotADirectory(PathError):
    """A component that must be a directory (it has more components below it) is not one."""


def clean(path: str) -> list[str] | None:
    """Lexical clean of a relative name (an archive member); None when it climbs above its
    root, as Go's filepath.Clean plus a check. An absolute name is clamped at `/`."""
    parts = [c for c in path.split("/") if c and c != "."]
    if ".." not in parts:
        return parts  # the common case, without a Python step per component
    parts = []
    absolute = path.startswith("/")
    for c in path.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if parts:
                parts.pop()
            elif not absolute:
                return None
            continue
        parts.append(c)
    return parts


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _walk_existing(root_fd: int, parts: list[str]) -> int | None:
    """An O_PATH fd for root/parts, or None when a component is missing."""
    fd = os.dup(root_fd)
    try:
        for c in parts:
            try:
                nfd = os.open(c, _PATH_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def components(root: Path | str, path: str, *, follow_last: bool = True) -> list[str]:
    """Canonical components of `path` inside `root`, symlinks followed as chroot(root) would.

    Missing components are kept literally (so the result also says where a new file would
    go). A non-directory with components below it raises NotADirectory; more than
    MAX_SYMLINKS links, or a root that changes under the walk, raise PathError.
    With follow_last=False a final symlink is not followed (lstat semantics).
    """
    try:
        root_fd = os.open(root, _PATH_FLAGS)
    except OSError as e:
        raise _unresolvable(root, path, f"cannot open the root: {e.strerror}", e.errno or 0) from None
    todo = path.split("/")[::-1]
    done: list[str] = []
    fd: int | None = os.dup(root_fd)   # the directory `done` names; None once it is missing
    not_dir = False                    # done[-1] exists and is not a directory
    links = 0
    try:
        while todo:
            c = todo.pop()
            if c in ("", "."):
                continue
            if not_dir:
                raise _unresolvable(root, path, f"{container_path(done)} is not a directory",
                                    errno.ENOTDIR, NotADirectory)
            if c == "..":
                if done:
                    done.pop()
                    _close(fd)
                    fd = _walk_existing(root_fd, done)
                continue
            if fd is None:
                done.append(c)
                continue
            try:
                st = os.lstat(c, dir_fd=fd)
            except FileNotFoundError:
                done.append(c)
                _close(fd)
                fd = None
                continue
            if stat.S_ISLNK(st.st_mode) and (todo or follow_last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise _unresolvable(root, path, "too many levels of symbolic links", errno.ELOOP)
                target = os.readlink(c, dir_fd=fd)
                if target.startswith("/"):
                    done = []
                    _close(fd)
                    fd = os.dup(root_fd)
                todo.extend(target.split("/")[::-1])
                continue
            done.append(c)
            if stat.S_ISDIR(st.st_mode):
                try:
                    nfd = os.open(c, _PATH_FLAGS, dir_fd=fd)
                except OSError as e:
                    raise _unresolvable(root, path, f"changed while being resolved: {e.strerror}",
                                        e.errno or 0) from None
                os.close(fd)
                fd = nfd
            else:
                not_dir = True
        return done
    except OSError as e:
        raise _unresolvable(root, path, e.strerror or str(e), e.errno or 0) from None
    finally:
        _close(fd)
        os.close(root_fd)


def resolve_in_root(root: Path | str, path: str, *, follow_last: bool = True) -> Path:
    """The host path of `path` as the root sees it; never outside root."""
    return Path(root).joinpath(*components(root, path, follow_last=follow_last))


def container_path(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def open_dir(root_fd: int, parts: list[str], *, create: bool = False, mode: int = 0o755,
             uid: int | None = None, gid: int | None = None) -> int:
    """A read fd for root/parts, every component opened with O_NOFOLLOW (a symlink fails
    with ELOOP, never redirects). With create, missing directories are made with exactly
    `mode` (not masked) and, when uid is given, owned by uid:gid."""
    fd = os.dup(root_fd)
    try:
        for c in parts:
            made = False
            try:
                nfd = os.open(c, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(c, mode, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass  # made by someone else meanwhile: opened (and checked) below
                nfd = os.open(c, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if made:
                os.fchmod(fd, mode)
                if uid is not None:
                    os.fchown(fd, uid, uid if gid is None else gid)
        return fd
    except BaseException:
        os.close(fd)
        raise


def mkdir_p(root: Path | str, path: str, *, mode: int = 0o755, uid: int | None = None,
            gid: int | None = None) -> Path:
    """`mkdir -p path` inside root: the host path of the (now existing) directory.

    Links on the way are followed inside root; new directories get `mode` and uid:gid.
    A file in the way raises NotADirectory naming it.
    """
    try:
        parts = components(root, path)
    except PathError as e:
        raise type(e)(f"cannot create directory {path}: {e.reason}", path, e.reason, e.errno) from None
    root_fd = os.open(root, DIR_FLAGS)
    try:
        os.close(open_dir(root_fd, parts, create=True, mode=mode, uid=uid, gid=gid))
    except OSError as e:
        cls: type[PathError]
        if e.errno in (errno.ENOTDIR, errno.EEXIST):
            reason, code, cls = "a file is in the way", errno.ENOTDIR, NotADirectory
        elif e.errno == errno.ELOOP:
            reason, code, cls = "it changed while being created", errno.ELOOP, PathError
        else:
            reason, code, cls = e.strerror or str(e), e.errno or 0, PathError
        raise cls(f"cannot create directory {path}: {reason}", path, reason, code) from None
    finally:
        os.close(root_fd)
    return Path(root).joinpath(*parts)


def open_in_root(root: Path | str, path: str, flags: int = os.O_RDONLY) -> int:
    """Open the file `path` names inside root (links followed inside root); an fd.

    The walk is by fds with O_NOFOLLOW, so a swap after resolution cannot redirect it.
    Raises FileNotFoundError when it does not exist, PathError when it cannot resolve.
    """
    parts = components(root, path)
    if not parts:
        return os.open(root, DIR_FLAGS)
    root_fd = os.open(root, DIR_FLAGS)
    try:
        dfd = open_dir(root_fd, parts[:-1])
    finally:
        os.close(root_fd)
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)
