"""/etc/hosts, /etc/hostname and /etc/resolv.conf of a container, as docker writes them.

hosts: docker's fixed IPv4/IPv6 lines, then --add-host entries, then the container's own
address and hostname (no address line without a network of its own). resolv.conf: on a
network with DNS, its resolver (aardvark-dns on the gateway) answers names of the other
containers and forwards the rest to --dns or the host's servers; elsewhere the host's
file with local-only servers dropped (they mean nothing in another namespace), and
docker's fallback 8.8.8.8/8.8.4.4 when none are left; --dns replaces them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pybuild.errors import PybuildError

_HOSTS_HEAD = ("127.0.0.1\tlocalhost\n"
               "::1\tlocalhost ip6-localhost ip6-loopback\n"
               "fe00::0\tip6-localnet\n"
               "ff00::0\tip6-mcastprefix\n"
               "ff02::1\tip6-allnodes\n"
               "ff02::2\tip6-allrouters\n")
_FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")


def parse_add_host(spec: str) -> tuple[str, str]:
    """`--add-host NAME:IP` (or NAME=IP) → (name, ip)."""
    sep = "=" if "=" in spec else ":"
    name, _, ip = spec.partition(sep)
    if not name or not ip:
        raise PybuildError(f"invalid argument {spec!r} for \"--add-host\" flag: bad format "
                           "for add-host: expected NAME:IP")
    if ip == "host-gateway":
        raise PybuildError(f"invalid argument {spec!r} for \"--add-host\" flag: "
                           "host-gateway is not supported")
    try:
        ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        raise PybuildError(f"invalid argument {spec!r} for \"--add-host\" flag: "
                           f"invalid IP address in add-host: {ip!r}") from None
    return name, ip.strip("[]")


def validate_dns(server: str) -> str:
    try:
        ipaddress.ip_address(server)
    except ValueError:
        raise PybuildError(f"invalid argument {server!r} for \"--dns\" flag: "
                           f"{server} is not an ip address") from None
    return server


def hosts(hostname: str, ip: str, extra: list[tuple[str, str]],
          aliases: list[str] | None = None) -> str:
    text = _HOSTS_HEAD + "".join(f"{addr}\t{name}\n" for name, addr in extra)
    if ip:
        text += f"{ip}\t{' '.join([hostname] + (aliases or []))}\n"
    return text


def host_hosts(extra: list[tuple[str, str]]) -> str:
    """--network host: the host's own file, with --add-host entries appended."""
    try:
        base = Path("/etc/hosts").read_text()
    except FileNotFoundError:
        base = _HOSTS_HEAD
    if base and not base.endswith("\n"):
        base += "\n"
    return base + "".join(f"{addr}\t{name}\n" for name, addr in extra)


def _host_resolv() -> list[str]:
    try:
        return Path("/etc/resolv.conf").read_text().splitlines()
    except FileNotFoundError:
        return []


def resolv_conf(*, resolver: str, dns: list[str], keep_local: bool) -> str:
    """`resolver`: the network's own DNS server ("" for none). `keep_local`: host network."""
    lines = _host_resolv()
    other = [ln for ln in lines if ln.split()[:1] in (["search"], ["options"], ["domain"])]
    if resolver:
        servers = [resolver]
    elif dns:
        servers = list(dns)
    else:
        servers = [ln.split()[1] for ln in lines
                   if ln.split()[:1] == ["nameserver"] and len(ln.split()) > 1]
        if not keep_local:
            servers = [s for s in servers if not ipaddress.ip_address(s.split("%")[0]).is_loopback]
            servers = servers or list(_FALLBACK_DNS)
    return "".join(f"nameserver {s}\n" for s in servers) + "".join(f"{ln}\n" for ln in other)
