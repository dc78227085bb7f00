"""Container networks: `pybuild network create|ls|inspect|rm` and attaching containers.

Modes, as `docker run --network`: `host` (the host's stack), `none` (loopback only),
`container:NAME` (another container's namespace) or a bridge network by name, the
default being the `pybuild` bridge (docker's `bridge`: no DNS by name). A container on a
bridge gets its own namespace (`ip netns` name `pybuild-<short id>`), one address
leased from the network, a veth pair on the network's bridge, and the NAT rules of its
published ports, all made and removed by netavark (see _netavark). Names of containers
and their `--network-alias`es resolve through aardvark-dns on user networks.

Rootless (rootless.py), the default network is `slirp4netns` instead: the container's
own namespace with user-mode networking, published ports forwarded by slirp4netns from
the host's addresses (see _slirp).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pybuild.errors import PybuildError
from pybuild.network import _netavark, _netns, _records, _slirp
from pybuild.network._etc import (
    host_hosts,
    hosts,
    parse_add_host,
    resolv_conf,
    validate_dns,
)
from pybuild.network._ports import (
    PortMapping,
    check_free,
    describe,
    exposed_ports,
    hold,
    merge,
    parse_publish,
)
from pybuild.network._records import DEFAULT_NETWORK, Network
from pybuild.network._slirp import DNS as SLIRP_DNS
from pybuild.network._slirp import NETWORK as SLIRP

__all__ = [
    "DEFAULT_NETWORK",
    "SLIRP",
    "SLIRP_DNS",
    "Attachment",
    "Network",
    "PortMapping",
    "attach",
    "attach_slirp",
    "available",
    "check_free",
    "create_network",
    "describe",
    "detach",
    "exposed_ports",
    "find_network",
    "hold",
    "host_hosts",
    "hosts",
    "list_networks",
    "merge",
    "netns_path",
    "parse_add_host",
    "parse_mode",
    "parse_publish",
    "remove_network",
    "slirp_available",
    "resolv_conf",
    "validate_dns",
]


@dataclass
class Attachment:
    """A running container's place on a bridge network (kept in its state record)."""

    network: str
    network_id: str
    ip: str
    gateway: str
    prefix_len: int
    mac: str
    bridge: str
    netns: str
    resolver: str  # the network's DNS server, "" when names do not resolve there
    aliases: list[str] = field(default_factory=list)
    ports: list[dict[str, object]] = field(default_factory=list)  # PortMapping fields
    helper: str = ""  # slirp4netns: "PID STARTTIME" of the process serving the namespace

    def port_mappings(self) -> list[PortMapping]:
        return [PortMapping(**p) for p in self.ports]  # type: ignore[arg-type]


def available() -> str:
    return _netavark.available()


def slirp_available() -> str:
    return _slirp.available()


def parse_mode(root: Path, mode: str) -> str:
    """Check a --network value; returns it with `bridge`/`default` meaning `pybuild`."""
    if mode in ("host", "none") or mode.startswith("container:"):
        if mode.startswith("container:") and not mode.removeprefix("container:"):
            raise PybuildError("invalid container format container:<name|id>")
        return mode
    if mode in ("bridge", "default"):
        mode = DEFAULT_NETWORK
    with _records.locked(root):
        return _records.lookup(root, mode).name


def netns_path(cid: str) -> str:
    return str(_netns.path_for(cid))


def list_networks(root: Path) -> list[Network]:
    with _records.locked(root):
        return _records.all_networks(root)


def find_network(root: Path, ref: str) -> Network:
    with _records.locked(root):
        return _records.lookup(root, ref)


def create_network(root: Path, name: str, *, subnet: str | None = None,
                   gateway: str | None = None, internal: bool = False,
                   labels: dict[str, str] | None = None) -> Network:
    return _records.add(root, name, subnet=subnet, gateway=gateway, internal=internal,
                        labels=labels or {})


def remove_network(root: Path, ref: str) -> Network:
    """Forget a network; refused while a container is attached to it."""
    with _records.locked(root):
        net = _records.lookup(root, ref)
        if net.name == DEFAULT_NETWORK:
            raise PybuildError(f"{net.name} is a pre-defined network and cannot be removed")
        if _records.leases(root, net.name):
            raise PybuildError(f"error while removing network: network {net.name} id {net.id} "
                               "has active endpoints")
        _records.delete(root, net)
        return net


def attached_ids(root: Path, ref: str) -> dict[str, str]:
    """container id → address, for the containers on a network now."""
    with _records.locked(root):
        net = _records.lookup(root, ref)
        return {cid: ip for ip, cid in _records.leases(root, net.name).items()}


def attach(root: Path, cid: str, name: str, network_name: str, aliases: list[str],
           ports: list[PortMapping], dns: list[str]) -> Attachment:
    """Namespace, lease, veth, rules, DNS entry. All or nothing: a failure undoes the rest."""
    with _records.locked(root):
        net = _records.lookup(root, network_name)
        ip = _records.lease(root, net, cid)
    path = _netns.path_for(cid)
    names = list(dict.fromkeys(aliases + [cid[:12]])) if net.dns_enabled else []
    opts = _netavark.options(net, cid, name, ip, names, ports, dns)
    att = Attachment(network=net.name, network_id=net.id, ip=ip, gateway=net.gateway,
                     prefix_len=ipaddress.ip_network(net.subnet).prefixlen, mac="",
                     bridge=net.bridge, netns=str(path), resolver="", aliases=names,
                     ports=[asdict(p) for p in ports])
    try:
        _netns.create(cid)
        status = _netavark.setup(root, path, opts)
    except BaseException:
        detach(root, cid, att, name=name, dns=dns)
        raise
    block = status.get(net.name) or {}
    eth0 = (block.get("interfaces") or {}).get("eth0") or {}
    att.mac = str(eth0.get("mac_address") or "")
    servers = [str(s) for s in block.get("dns_server_ips") or []]
    att.resolver = servers[0] if servers and net.dns_enabled else ""
    return att


def attach_slirp(cid: str, ports: list[PortMapping]) -> Attachment:
    """Rootless: the container's namespace with slirp4netns serving it and forwarding
    `ports`. All or nothing, as `attach`."""
    path = _netns.path_for(cid)
    att = Attachment(network=SLIRP, network_id="", ip=_slirp.ADDRESS, gateway=_slirp.GATEWAY,
                     prefix_len=_slirp.PREFIX_LEN, mac="", bridge="", netns=str(path),
                     resolver="")
    try:
        _netns.create(cid)
        att.helper, fixed = _slirp.start(path, ports)
    except BaseException:
        _netns.delete(cid)
        raise
    att.ports = [asdict(p) for p in fixed]
    return att


def detach(root: Path, cid: str, att: Attachment, *, name: str, dns: list[str]) -> list[str]:
    """Undo `attach`, as far as it got; returns what could not be undone (for a warning).

    Works from the record alone, so it also cleans up after a monitor killed with SIGKILL.
    """
    problems: list[str] = []
    path = Path(att.netns)
    if att.network == SLIRP:
        _slirp.stop(att.helper, path)
        _netns.delete(cid)
        return problems
    with _records.locked(root):
        try:
            net: Network | None = _records.lookup(root, att.network)
        except PybuildError:
            net = None
    if net is not None and path.exists():
        opts = _netavark.options(net, cid, name, att.ip, att.aliases, att.port_mappings(), dns)
        problem = _netavark.teardown(root, path, opts)
        if problem and "No such file" not in problem:
            problems.append(problem)
    _netns.delete(cid)
    with _records.locked(root):
        _records.release(root, att.network, cid)
    return problems


def close_all(sockets: list[socket.socket]) -> None:
    for s in sockets:
        s.close()
