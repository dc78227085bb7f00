"""Network namespaces that outlive their processes: `ip netns add`, bind-mounted files.

A container's namespace is made before the container and kept until its network is torn
down, so a container whose monitor was SIGKILLed can still be detached cleanly.

Rootless (rootless.py), /run/netns is root's: the namespace is bind-mounted on a file in
the runtime state dir instead (`unshare --net=FILE`, as rootless podman keeps its under
$XDG_RUNTIME_DIR/netns), inside the user's mount namespace that the pause process holds,
so every later command sees it. It belongs to the user's user namespace, which is what
lets slirp4netns (started from that namespace) join it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pybuild import rootless
from pybuild.errors import PybuildError

NETNS_DIR = Path("/run/netns")  # where iproute2 keeps named namespaces
PREFIX = "pybuild-"


def name_for(cid: str) -> str:
    return PREFIX + cid[:12]


def _dir() -> Path:
    return rootless.state_dir() / "netns" if rootless.inside() else NETNS_DIR


def path_for(cid: str) -> Path:
    return _dir() / name_for(cid)


def create(cid: str) -> Path:
    """A new, empty network namespace for the container (lo comes up with netavark)."""
    path = path_for(cid)
    if path.exists():
        return path
    if rootless.inside():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.touch(mode=0o600)
        argv = ["unshare", f"--net={path}", "true"]
    else:
        argv = ["ip", "netns", "add", name_for(cid)]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        if rootless.inside():
            path.unlink(missing_ok=True)
        raise PybuildError(f"cannot create a network namespace: {res.stderr.strip()}")
    return path


def delete(cid: str) -> None:
    path = path_for(cid)
    if not rootless.inside():
        if path.exists():
            subprocess.run(["ip", "netns", "delete", name_for(cid)], capture_output=True,
                           check=False)
        return
    if os.path.ismount(path):  # (Path.is_mount is False for any non-directory)
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
    path.unlink(missing_ok=True)
