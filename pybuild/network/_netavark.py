"""netavark: the bridge, veth pair, addresses, firewall/NAT rules and aardvark-dns entries.

pybuild writes no iptables rule itself. netavark (podman's network stack) takes a JSON
description of the container's networks and ports on stdin and sets them up in the
namespace given, from the namespace it runs in; `teardown` with the same input undoes
it, and removes the bridge with its last container. netavark starts aardvark-dns (one
per namespace that has networks) on each DNS-enabled network's gateway address.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pybuild import rootless
from pybuild.errors import PybuildError
from pybuild.network._ports import PortMapping
from pybuild.network._records import Network

_SEARCH = ("/usr/lib/podman", "/usr/libexec/podman", "/usr/local/lib/podman")
_STATE = rootless.state_dir() / "netavark"
_TIMEOUT = 60.0


def _binary(name: str) -> str:
    for d in _SEARCH:
        p = Path(d) / name
        if p.is_file():
            return str(p)
    found = shutil.which(name)
    if found is None:
        raise PybuildError(f"{name} not found: install the {name} package (bridge networks need it)")
    return found


def available() -> str:
    """Why bridge networks cannot work here, or "" when they can."""
    try:
        _binary("netavark")
        _binary("aardvark-dns")
    except PybuildError as e:
        return str(e)
    return ""


def config_dir(store_root: Path) -> Path:
    """aardvark-dns's state, one per store (tmpfs: a reboot leaves nothing stale)."""
    return _STATE / hashlib.sha256(str(store_root.resolve()).encode()).hexdigest()[:16]


def options(network: Network, cid: str, name: str, ip: str, aliases: list[str],
            ports: list[PortMapping], dns: list[str]) -> dict[str, Any]:
    """netavark's NetworkOptions for one container on one network."""
    opts: dict[str, Any] = {
        "container_id": cid,
        "container_name": name,
        "networks": {network.name: {"static_ips": [ip], "aliases": list(aliases),
                                    "interface_name": "eth0"}},
        "network_info": {network.name: {
            "name": network.name, "id": network.id, "driver": "bridge",
            "network_interface": network.bridge,
            "subnets": [{"subnet": network.subnet, "gateway": network.gateway}],
            "ipv6_enabled": False, "internal": network.internal,
            "dns_enabled": network.dns_enabled, "ipam_options": {"driver": "host-local"},
        }},
        "port_mappings": [{"host_ip": p.host_ip, "container_port": p.container_port,
                           "host_port": p.host_port, "range": 1, "protocol": p.protocol}
                          for p in ports],
    }
    if dns:
        opts["dns_servers"] = list(dns)
    return opts


def _call(store_root: Path, action: str, netns: Path, opts: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    cfg = config_dir(store_root)
    cfg.mkdir(parents=True, exist_ok=True)
    argv = [_binary("netavark"), "--config", str(cfg), "--rootless", "false",
            "--aardvark-binary", _binary("aardvark-dns"), action, str(netns)]
    try:
        return subprocess.run(argv, input=json.dumps(opts), capture_output=True, text=True,
                              timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -1, "", "netavark timed out")


def _message(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln and "failed to connect to syslog" not in ln]
    return (lines[-1] if lines else f"exit status {res.returncode}").strip()


def setup(store_root: Path, netns: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Attach; returns netavark's status block (interfaces, MAC, DNS server addresses)."""
    res = _call(store_root, "setup", netns, opts)
    if res.returncode != 0:
        raise PybuildError(f"network setup failed: {_message(res)}")
    try:
        status: dict[str, Any] = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise PybuildError(f"network setup failed: netavark printed {res.stdout[:200]!r}") from None
    return status


def teardown(store_root: Path, netns: Path, opts: dict[str, Any]) -> str:
    """Detach; "" on success, else netavark's complaint (the caller goes on cleaning)."""
    res = _call(store_root, "teardown", netns, opts)
    return "" if res.returncode == 0 else _message(res)
