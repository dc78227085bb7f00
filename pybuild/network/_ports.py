"""Published ports: docker's `-p [IP:][HOST:]CTR[/tcp|udp]` and `-P`, and holding them.

Traffic to a published port never reaches a socket of ours: netavark's DNAT rules send it
to the container. The owner of a running container still binds every host port it
publishes and holds it open (as podman's conmon and docker's proxy do), so a port already
in use, by a container or by anything else, is refused before any rule is made.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pybuild.errors import PybuildError


@dataclass(frozen=True)
class PortMapping:
    """One published port; host_port 0 means "any free port", fixed when it is held."""

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int = 0

    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"


def _port(text: str, spec: str) -> int:
    if "-" in text:
        raise PybuildError(f"invalid port specification {spec!r}: port ranges are not supported")
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise PybuildError(f"invalid port specification: {spec!r}")
    return int(text)


def parse_publish(spec: str) -> PortMapping:
    """`8000`, `8080:8000`, `127.0.0.1:8080:8000`, `127.0.0.1::8000`, each with /udp."""
    rest, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise PybuildError(f"invalid proto: {proto}")
    ip = ""
    if rest.startswith("["):
        raise PybuildError(f"invalid port specification {spec!r}: IPv6 is not supported")
    parts = rest.split(":")
    if len(parts) == 1:
        host, ctr = "", parts[0]
    elif len(parts) == 2:
        host, ctr = parts
    elif len(parts) == 3:
        ip, host, ctr = parts
    else:
        raise PybuildError(f"invalid port specification: {spec!r}")
    if ip:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise PybuildError(f"invalid IP address: {ip}") from None
        if addr.version != 4:
            raise PybuildError(f"invalid port specification {spec!r}: IPv6 is not supported")
        ip = "" if ip == "0.0.0.0" else ip
    return PortMapping(container_port=_port(ctr, spec), protocol=proto, host_ip=ip,
                       host_port=_port(host, spec) if host else 0)


def exposed_ports(config: dict[str, Any]) -> list[PortMapping]:
    """`-P`: every EXPOSEd port of the image on a free host port of every address."""
    out = []
    for key in sorted(config.get("ExposedPorts") or {}):
        port, _, proto = str(key).partition("/")
        out.append(PortMapping(container_port=int(port), protocol=proto or "tcp"))
    return out


def merge(explicit: list[PortMapping], exposed: list[PortMapping]) -> list[PortMapping]:
    """-p wins over -P for the same container port; duplicates go."""
    seen = {p.key() for p in explicit}
    out = list(dict.fromkeys(explicit))
    out += [p for p in exposed if p.key() not in seen]
    return out


def check_free(wanted: list[PortMapping], in_use: list[PortMapping]) -> None:
    """Refuse a host port another container publishes: its rules stay in place while it
    runs, even when its owner (who held the socket) was killed."""
    for w in wanted:
        for u in in_use:
            same_ip = not w.host_ip or not u.host_ip or w.host_ip == u.host_ip
            if w.host_port and same_ip and (w.host_port, w.protocol) == (u.host_port, u.protocol):
                raise PybuildError(f"Bind for {w.host_ip or '0.0.0.0'}:{w.host_port} failed: "
                                   "port is already allocated")


def hold(mappings: list[PortMapping]) -> tuple[list[PortMapping], list[socket.socket]]:
    """Bind every host port (a free one where none was asked); the sockets reserve them.

    On a refusal nothing stays bound. Returns the mappings with their real host ports.
    """
    held: list[socket.socket] = []
    fixed: list[PortMapping] = []
    try:
        for m in mappings:
            kind = socket.SOCK_STREAM if m.protocol == "tcp" else socket.SOCK_DGRAM
            s = socket.socket(socket.AF_INET, kind)
            held.append(s)
            addr = m.host_ip or "0.0.0.0"
            try:
                s.bind((addr, m.host_port))
            except OSError as e:
                where = f"{addr}:{m.host_port}"
                if e.errno == 98:  # EADDRINUSE
                    raise PybuildError(f"Bind for {where} failed: port is already allocated") from None
                raise PybuildError(f"cannot publish {where}/{m.protocol}: {e.strerror}") from None
            s.set_inheritable(False)
            fixed.append(PortMapping(m.container_port, m.protocol, m.host_ip, s.getsockname()[1]))
    except BaseException:
        for s in held:
            s.close()
        raise
    return fixed, held


def describe(mappings: list[PortMapping]) -> str:
    """PORTS as docker ps shows it: 127.0.0.1:8000->8000/tcp, 0.0.0.0:49153->80/tcp."""
    return ", ".join(f"{m.host_ip or '0.0.0.0'}:{m.host_port}->{m.container_port}/{m.protocol}"
                     for m in mappings)
