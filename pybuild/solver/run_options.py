"""`--add-host`, `--ulimit` and `--shm-size` of `docker build`: parsed and checked here, put
into each RUN step's runtime spec by pybuild.runtime (RunSpec.extra_hosts, .ulimits,
.shm_size) and into its cache key (BuildKit keeps them in the exec op's metadata)."""

from __future__ import annotations

import os
import re

from pybuild.errors import PybuildError

# docker's ulimit names (go-units ulimit.go) → the OCI rlimit type
ULIMITS = {name: f"RLIMIT_{name.upper()}" for name in (
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
    "rss", "rtprio", "rttime", "sigpending", "stack")}
ULIMITS["as"] = "RLIMIT_AS"
HOST_GATEWAY = "host-gateway"
_UNLIMITED = 2**64 - 1
_RAM = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?$", re.IGNORECASE)


def host_gateway_ip() -> str:
    """What `host-gateway` means here: build steps share the host's network (or none), so
    the host is its loopback address; PYBUILD_HOST_GATEWAY_IP overrides it (dockerd's
    --host-gateway-ip)."""
    return os.environ.get("PYBUILD_HOST_GATEWAY_IP") or "127.0.0.1"


def parse_add_host(value: str) -> tuple[str, str]:
    """`HOST:IP` (or docker 26's `HOST=IP`); IP may be `host-gateway` for builds. The
    format checks are pybuild run's (pybuild.network)."""
    from pybuild.network._etc import parse_add_host as parse

    sep = "=" if "=" in value else ":"
    host, found, ip = value.partition(sep)
    if found and host and ip.strip() == HOST_GATEWAY:
        value = f"{host}={host_gateway_ip()}"
    return parse(value)


def parse_ulimit(value: str) -> tuple[str, int, int]:
    """`NAME=SOFT[:HARD]` → (OCI rlimit type, soft, hard); -1 is unlimited."""
    name, sep, limits = value.partition("=")
    if not sep or not limits:
        raise PybuildError(f'invalid argument "{value}" for "--ulimit" flag: '
                           f"invalid ulimit argument: {value}")
    if name not in ULIMITS:
        raise PybuildError(f'invalid argument "{value}" for "--ulimit" flag: '
                           f"invalid ulimit type: {name}")
    soft_s, _, hard_s = limits.partition(":")
    try:
        soft = int(soft_s)
        hard = int(hard_s) if hard_s else soft
    except ValueError:
        raise PybuildError(f'invalid argument "{value}" for "--ulimit" flag: '
                           f"invalid ulimit value: {limits}") from None
    soft = _UNLIMITED if soft == -1 else soft
    hard = _UNLIMITED if hard == -1 else hard
    if soft < 0 or hard < 0:
        raise PybuildError(f'invalid argument "{value}" for "--ulimit" flag: '
                           f"negative ulimit: {limits}")
    if soft > hard:
        raise PybuildError(f'invalid argument "{value}" for "--ulimit" flag: ulimit soft limit '
                           f"must be less than or equal to hard limit: {soft} > {hard}")
    return ULIMITS[name], soft, hard


def parse_shm_size(value: str) -> int:
    """docker's RAMInBytes: `64m`, `1g`, `512k`, `1048576` (binary units)."""
    m = _RAM.match(value.strip())
    if not m:
        raise PybuildError(f'invalid argument "{value}" for "--shm-size" flag: invalid size: '
                           f"'{value}'")
    mult = 1024 ** "bkmgtp".index((m.group(2) or "b").lower())
    size = int(float(m.group(1)) * mult)
    if size <= 0:
        raise PybuildError(f'invalid argument "{value}" for "--shm-size" flag: must be positive')
    return size


def key_of(extra_hosts: list[tuple[str, str]], ulimits: list[tuple[str, int, int]],
           shm_size: int | None) -> tuple[tuple[str, object], ...]:
    """What a RUN's cache key records of these flags: nothing when none is given, so keys
    of builds without them never move."""
    out: list[tuple[str, object]] = []
    if extra_hosts:
        out.append(("extra_hosts", tuple(tuple(h) for h in extra_hosts)))
    if ulimits:
        out.append(("ulimits", tuple(tuple(u) for u in ulimits)))
    if shm_size:
        out.append(("shm_size", shm_size))
    return tuple(out)
