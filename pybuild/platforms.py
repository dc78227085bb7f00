"""OCI platforms: this machine's, their spelling, and the host's entry of an index.

pybuild builds and runs for the host platform only; every place that names or picks a
platform (FROM --platform, --platform, the platform ARGs, pulls, image configs, a stored
index) asks this module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

# uname -m → GOARCH, as the OCI image spec spells architectures
ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
        "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
        "i686": "386", "i386": "386"}
_VARIANT = {"arm64": "v8", "arm": "v7"}


def host_arch(machine: str | None = None) -> str:
    """This machine's architecture as OCI spells it (amd64, arm64, ...)."""
    raw = (machine or os.uname().machine).lower()
    return ARCH.get(raw, raw)


def host_platform(machine: str | None = None) -> dict[str, str]:
    """The OCI platform of this machine ({"architecture": "amd64", "os": "linux"})."""
    arch = host_arch(machine)
    plat = {"architecture": arch, "os": "linux"}
    if arch in _VARIANT:
        plat["variant"] = _VARIANT[arch]
    return plat


def platform_string(p: dict[str, Any] | None) -> str:
    """os/arch[/variant], "?" for what is missing."""
    p = p or {}
    out = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return out + (f"/{p['variant']}" if p.get("variant") else "")


def is_host(text: str) -> bool:
    """Whether a `--platform` value names this machine: linux/amd64, amd64, linux/arm64/v8."""
    host = host_platform()
    parts = text.strip().lower().split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    if parts[0] != "linux" or host_arch(parts[1]) != host["architecture"]:
        return False
    return len(parts) == 2 or (len(parts) == 3 and parts[2] == host.get("variant"))


class _HasPlatform(Protocol):
    @property
    def platform(self) -> dict[str, Any] | None: ...


T = TypeVar("T", bound=_HasPlatform)


def choose_host(entries: Sequence[T]) -> T | None:
    """The host's entry of a manifest list: same os and architecture, the host's variant
    first (docker's choice when pulling a multi-arch tag); None when there is none."""
    host = host_platform()
    for want_variant in (True, False):
        for e in entries:
            p = e.platform or {}
            if p.get("os") == host["os"] and p.get("architecture") == host["architecture"] \
                    and (not want_variant or p.get("variant") == host.get("variant")):
                return e
    return None
