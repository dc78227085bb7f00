"""Network definitions and IP leases, kept as JSON files under `<store>/networks/`.

`<name>.json` is the network (what `network inspect` shows); `<name>.leases` maps each
address handed out to the container holding it. netavark does no address management
(podman keeps its own), so pybuild does: one lease per attached container, released on
detach. Every change happens under one flock, so two `pybuild run` never get one address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from pybuild.errors import PybuildError
from pybuild.liveness import exclusive

DEFAULT_NETWORK = "pybuild"
DEFAULT_SUBNET = "10.88.0.0/16"
DEFAULT_BRIDGE = "pybuild0"
# user networks get the first free /24 here, as docker walks its default address pools
_USER_POOL = ipaddress.IPv4Network("10.89.0.0/16")
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
RESERVED_MODES = ("host", "none", "bridge", "default")


@dataclass
class Network:
    """One bridge network: its bridge device, subnet and whether names resolve on it."""

    name: str
    id: str
    subnet: str
    gateway: str
    bridge: str
    created: str
    dns_enabled: bool = True
    internal: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    driver: str = "bridge"


def networks_dir(root: Path) -> Path:
    return root / "networks"


def _record(root: Path, name: str) -> Path:
    return networks_dir(root) / f"{name}.json"


def _leases(root: Path, name: str) -> Path:
    return networks_dir(root) / f"{name}.leases"


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """The one lock for network records and leases of a store."""
    d = networks_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    with exclusive(d / ".lock"):
        yield


def _atomic_write(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _load(path: Path) -> Network | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    known = {f.name for f in fields(Network)}
    return Network(**{k: v for k, v in data.items() if k in known})


def _default(root: Path) -> Network:
    """The default bridge, made on first use; like docker's `bridge`, no DNS by name."""
    net = ipaddress.ip_network(DEFAULT_SUBNET)
    return Network(name=DEFAULT_NETWORK, id=secrets.token_hex(32), subnet=DEFAULT_SUBNET,
                   gateway=str(net.network_address + 1), bridge=DEFAULT_BRIDGE,
                   created=_now(), dns_enabled=False)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def all_networks(root: Path) -> list[Network]:
    """Every network of the store (the default one included), sorted by name. Lock held."""
    d = networks_dir(root)
    if not _record(root, DEFAULT_NETWORK).exists():
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write(_record(root, DEFAULT_NETWORK), asdict(_default(root)))
    found = [_load(p) for p in sorted(d.glob("*.json"))]
    return sorted((n for n in found if n is not None), key=lambda n: n.name)


def lookup(root: Path, ref: str) -> Network:
    """A network by name, full id or unique id prefix. Lock held."""
    every = all_networks(root)
    for n in every:
        if n.name == ref or n.id == ref:
            return n
    matches = [n for n in every if len(ref) >= 3 and n.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    raise PybuildError(f"network {ref} not found")


def _pick_subnet(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for candidate in _USER_POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise PybuildError("could not find an available, non-overlapping IPv4 address pool "
                       "among the defaults to assign to the network")


def add(root: Path, name: str, *, subnet: str | None, gateway: str | None, internal: bool,
        labels: dict[str, str]) -> Network:
    """Define a new network; nothing is made in the kernel until a container attaches."""
    if not _NAME_RE.match(name):
        raise PybuildError(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                           "are allowed")
    if name in RESERVED_MODES:
        raise PybuildError(f"{name} is a pre-defined network and cannot be created")
    with locked(root):
        every = all_networks(root)
        if any(n.name == name for n in every):
            raise PybuildError(f"network with name {name} already exists")
        taken = [ipaddress.ip_network(n.subnet) for n in every]
        if subnet:
            try:
                net = ipaddress.ip_network(subnet, strict=True)
            except ValueError as e:
                raise PybuildError(f"invalid subnet {subnet}: {e}") from None
            if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 30:
                raise PybuildError(f"invalid subnet {subnet}: an IPv4 subnet of /30 or larger is needed")
            clash = next((n for n in every if ipaddress.ip_network(n.subnet).overlaps(net)), None)
            if clash is not None:
                raise PybuildError(f"invalid pool request: Pool overlaps with other one on this "
                                   f"address space (network {clash.name}, {clash.subnet})")
        else:
            net = _pick_subnet([t for t in taken if isinstance(t, ipaddress.IPv4Network)])
        gw = ipaddress.ip_address(gateway) if gateway else net.network_address + 1
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise PybuildError(f"no matching subnet for gateway {gateway}")
        nid = secrets.token_hex(32)
        record = Network(name=name, id=nid, subnet=str(net), gateway=str(gw),
                         bridge=f"pb-{nid[:12]}", created=_now(), internal=internal,
                         labels=dict(labels))
        _atomic_write(_record(root, name), asdict(record))
        return record


def delete(root: Path, network: Network) -> None:
    """Forget a network with no leases left. Lock held by the caller."""
    if network.name == DEFAULT_NETWORK:
        raise PybuildError(f"{DEFAULT_NETWORK} is a pre-defined network and cannot be removed")
    _record(root, network.name).unlink(missing_ok=True)
    _leases(root, network.name).unlink(missing_ok=True)


def leases(root: Path, name: str) -> dict[str, str]:
    """address → container id. Lock held."""
    try:
        data = json.loads(_leases(root, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def lease(root: Path, network: Network, cid: str) -> str:
    """Hand out the lowest free address (gateway excluded) to `cid`. Lock held."""
    held = leases(root, network.name)
    for ip, owner in held.items():
        if owner == cid:
            return ip
    net = ipaddress.ip_network(network.subnet)
    for host in net.hosts():
        ip = str(host)
        if ip != network.gateway and ip not in held:
            held[ip] = cid
            _atomic_write(_leases(root, network.name), held)
            return ip
    raise PybuildError(f"no available IPv4 addresses on network {network.name} ({network.subnet})")


def release(root: Path, network_name: str, cid: str) -> None:
    """Give back every address `cid` holds on the network. Lock held."""
    held = leases(root, network_name)
    kept = {ip: owner for ip, owner in held.items() if owner != cid}
    if kept != held:
        _atomic_write(_leases(root, network_name), kept)
