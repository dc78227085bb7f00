"""Network namespaces that outlive their processes: `ip netns add`, bind-mounted files.

A container's namespace is made before the container and kept until its network is torn
down, so a container whose monitor was SIGKILLed can still be detached cleanly.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pybuild.errors import PybuildError

NETNS_DIR = Path("/run/netns")  # where iproute2 keeps named namespaces
PREFIX = "pybuild-"


def name_for(cid: str) -> str:
    return PREFIX + cid[:12]


def path_for(cid: str) -> Path:
    return NETNS_DIR / name_for(cid)


def create(cid: str) -> Path:
    """A new, empty network namespace for the container (lo comes up with netavark)."""
    path = path_for(cid)
    if path.exists():
        return path
    res = subprocess.run(["ip", "netns", "add", name_for(cid)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise PybuildError(f"cannot create a network namespace: {res.stderr.strip()}")
    return path


def delete(cid: str) -> None:
    if path_for(cid).exists():
        subprocess.run(["ip", "netns", "delete", name_for(cid)], capture_output=True, check=False)
