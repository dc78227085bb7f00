"""Is its owner still alive? Probes the store, snapshots, runtime and doctor share.

pybuild never trusts a pid alone (pids are reused): a process is identified by its pid
and its start time, and work in progress is marked by an flock its owner holds, which
the kernel drops the moment the owner dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the `with` block."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool:
    """True if a live process holds an flock on `path` (a missing file is not held)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def process_start(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/PID/stat); None if it is gone.

    A pid plus this identifies a process across pid reuse.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _walk(path: Path | str, dir_fd: int | None, on_file: Callable[[int, str, os.stat_result], None],
          on_dir_done: Callable[[int, str], None] | None) -> None:
    """Visit every non-directory below `path` and, children first, every directory.

    Iterative and fd-relative: any depth, any path length, one open directory at a time
    (the way back up is `..` of a directory entered with O_NOFOLLOW). Symlinks are never
    followed and no other filesystem is entered (a mount below is left alone). Errors on
    single entries are skipped: this serves cleanup, which must finish whatever it finds.
    """
    try:
        fd = os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return
    dev = os.fstat(fd).st_dev

    def scan(dfd: int) -> list[str]:
        subdirs = []
        try:
            names = os.listdir(dfd)
        except OSError:
            return []
        for name in names:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev == dev:
                    subdirs.append(name)
            else:
                on_file(dfd, name, st)
        return subdirs

    try:
        stack = [scan(fd)]
        names: list[str] = []
        while stack:
            pending = stack[-1]
            if pending:
                name = pending.pop()
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                os.close(fd)
                fd = child
                names.append(name)
                stack.append(scan(fd))
                continue
            stack.pop()
            if not names:
                break
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = parent
            done = names.pop()
            if on_dir_done is not None:
                on_dir_done(fd, done)
    finally:
        os.close(fd)


def tree_size(path: Path) -> int:
    """Bytes of the regular files below `path` (what deleting it frees, roughly)."""
    total = 0

    def add(_dfd: int, _name: str, st: os.stat_result) -> None:
        nonlocal total
        if stat.S_ISREG(st.st_mode):
            total += st.st_size

    _walk(path, None, add, None)
    return total


def remove_tree(path: Path | str, *, dir_fd: int | None = None) -> None:
    """Delete `path` and everything below it, like `shutil.rmtree(ignore_errors=True)`,
    but at any depth (no recursion), without following symlinks or entering mounts.
    A missing path is fine; a non-directory is unlinked."""
    def unlink(dfd: int, name: str, _st: os.stat_result) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dfd)

    def rmdir(dfd: int, name: str) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=dfd)

    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path, dir_fd=dir_fd)
        return
    _walk(path, dir_fd, unlink, rmdir)
    with contextlib.suppress(OSError):
        os.rmdir(path, dir_fd=dir_fd)
