"""Rigs for the run-side tests: a network namespace per test, and the CLI run inside it.

Every container test runs pybuild inside a network namespace the test creates
(`ip netns add`), so the bridges, veths, addresses, NAT rules and aardvark-dns it makes
live there and vanish with it, and traffic stays on that namespace's loopback and the
containers' own namespaces. pybuild is entered into it with `nsenter --net`, which is
`ip netns exec` without the private mount namespace: `ip netns exec` gives every command
its own mount namespace, so the rootfs a `run -d` mounts would be invisible to the
`rm` that follows.

Checks read the kernel (ip, iptables-save, /run/netns, cgroup files), not pybuild's
records.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import BUSYBOX, Pybuild, overlay_mounts
from pybuild import containers, limits

# Runs the real CLI with the container commands registered.
_MAIN = ("import sys\n"
         "from pybuild import cli\n"
         "from pybuild.cli import containers\n"
         "if containers not in cli.MODULES:\n"
         "    cli.MODULES.append(containers)\n"
         "sys.exit(cli.main())\n")
RUNC_ROOT = "/run/pybuild/containers-runc"
NETNS_DIR = Path("/run/netns")


class Netns:
    """A network namespace of the test's own, with readers of its kernel state."""

    def __init__(self) -> None:
        self.name = f"pbtest-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self.name}"]

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *argv], capture_output=True, text=True,
                              check=check, timeout=timeout)

    def links(self) -> list[dict]:
        return json.loads(self.run("ip", "-j", "link").stdout)

    def link_names(self) -> list[str]:
        return sorted(link["ifname"] for link in self.links())

    def addresses(self) -> list[str]:
        out = json.loads(self.run("ip", "-j", "addr").stdout)
        return sorted(f"{a['local']}/{a['prefixlen']}" for link in out
                      for a in link.get("addr_info", []) if a.get("family") == "inet")

    def iptables(self) -> str:
        return self.run("iptables-save").stdout

    def fetch(self, url: str) -> str | None:
        """GET `url` from inside the namespace (busybox wget); None when it fails."""
        # (busybox 1.35's wget -T crashes on this machine: the subprocess timeout bounds it)
        try:
            res = self.run(str(BUSYBOX), "wget", "-q", "-O", "-", url, check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return None
        return res.stdout if res.returncode == 0 else None

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


def pybuild_netns() -> list[str]:
    """The namespaces pybuild made for containers that still exist."""
    return sorted(p.name for p in NETNS_DIR.glob("pybuild-*")) if NETNS_DIR.is_dir() else []


class Cli:
    """`pybuild` with the container commands, on the store of a `Pybuild` fixture, inside
    the test's network namespace."""

    def __init__(self, pybuild: Pybuild, netns: Netns) -> None:
        self.root = pybuild.root
        self.build_cli = pybuild
        self.netns = netns

    def argv(self, *args: str) -> list[str]:
        return [*self.netns.prefix, sys.executable, "-c", _MAIN, "--root", str(self.root), *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"pybuild {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def build(self, tmp: Path, tag: str, dockerfile: str) -> None:
        ctx = tmp / f"ctx-{tag}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(dockerfile)
        self.build_cli("build", "-t", tag, str(ctx))

    def container_dirs(self) -> list[Path]:
        d = self.root / "containers"
        return [p for p in d.iterdir() if p.is_dir()] if d.exists() else []

    def inspect(self, ref: str) -> dict:
        return json.loads(self("inspect", ref).stdout)[0]


def runc_ids() -> list[str]:
    out = subprocess.run(["runc", "--root", RUNC_ROOT, "list", "-q"], capture_output=True,
                         text=True).stdout
    return out.split()


def require_network_tools() -> None:
    for tool in ("nsenter", "iptables-save", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install util-linux iproute2 iptables)")
    from pybuild import network

    missing = network.available()
    if missing:
        pytest.skip(missing)


@pytest.fixture
def netns() -> Iterator[Netns]:
    require_network_tools()
    ns = Netns()
    yield ns
    ns.delete()


@pytest.fixture
def cli(busybox: Pybuild, tmp_path: Path, netns: Netns) -> Iterator[Cli]:
    """A store with busybox; every container left is force-removed, then nothing may
    remain: no mount, no runc container, no namespace, veth, bridge or NAT rule."""
    c = Cli(busybox, netns)
    before = pybuild_netns()
    yield c
    ids = c("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        c("rm", "-f", *ids, check=False)
    assert [m for m in overlay_mounts() if str(tmp_path) in m] == []
    assert not any(rid.removeprefix(containers.RUNC_ID_PREFIX) in ids for rid in runc_ids())
    assert pybuild_netns() == before
    assert netns.link_names() == ["lo"]
    assert container_rules(netns) == []


def container_rules(netns: Netns) -> list[str]:
    """iptables rules that name a container address, subnet or published port (netavark's
    empty shared chains and their jumps stay, as with podman)."""
    return [line for line in netns.iptables().splitlines()
            if line.startswith("-A") and ("--to-destination" in line or " 10.8" in line
                                          or "--dport" in line)]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ps_rows(cli: Cli, *flags: str) -> list[list[str]]:
    lines = cli("ps", *flags).stdout.splitlines()
    assert lines[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                "PORTS", "NAMES"]
    starts = [lines[0].index(h) for h in ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED",
                                           "STATUS", "PORTS", "NAMES")]
    bounds = list(zip(starts, [*starts[1:], None]))
    return [[line[a:b].strip() for a, b in bounds] for line in lines[1:]]


def cgroup_file(cid: str, controller: str, v1: str, v2: str) -> str:
    """A cgroup file of a container, by its v1 or v2 name, as the kernel shows it."""
    d = limits.cgroup_dir(f"/pybuild/{containers.RUNC_ID_PREFIX}{cid}", controller)
    return (d / (v2 if limits.is_v2() else v1)).read_text().strip()
