"""Is its owner still alive? Probes the store, snapshots, runtime and doctor share.

pybuild never trusts a pid alone (pids are reused): a process is identified by its pid
and its start time, and work in progress is marked by an flock its owner holds, which
the kernel drops the moment the owner dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
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


def tree_size(path: Path) -> int:
    """Bytes of the regular files below `path` (what deleting it frees, roughly)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
