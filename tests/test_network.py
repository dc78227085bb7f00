"""Container networks: bridges through netavark, DNS by name, published ports, cleanup.

Every test runs pybuild inside a network namespace of its own (the `cli` fixture of
container_fixtures), and checks the kernel's state there: links, addresses, iptables
rules, the namespaces in /run/netns. The fixture's teardown also proves that nothing
is left: no veth, bridge, namespace or rule naming a container.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from container_fixtures import Cli, container_rules, ps_rows, pybuild_netns, wait_for
from pybuild import network
from pybuild.errors import PybuildError
from pybuild.network import _etc, _records

HTTPD = "echo hello from web > /tmp/index.html; exec httpd -f -p 80 -h /tmp"


# ----------------------------------------------------------------------------- pure rules
def test_publish_specs_follow_docker() -> None:
    P = network.PortMapping
    assert network.parse_publish("8000") == P(8000)
    assert network.parse_publish("8080:80") == P(80, "tcp", "", 8080)
    assert network.parse_publish("127.0.0.1:8000:8000/udp") == P(8000, "udp", "127.0.0.1", 8000)
    assert network.parse_publish("127.0.0.1::80") == P(80, "tcp", "127.0.0.1", 0)
    assert network.parse_publish("0.0.0.0:81:80") == P(80, "tcp", "", 81)
    for bad, msg in [("80/sctp", "invalid proto: sctp"), ("x:80", "invalid port"),
                     ("1.2.3:80:80", "invalid IP address"), ("70000", "invalid port"),
                     ("8000-8001:80", "ranges"), ("a:b:c:d", "invalid port")]:
        with pytest.raises(PybuildError, match=msg):
            network.parse_publish(bad)
    exposed = network.exposed_ports({"ExposedPorts": {"80/tcp": {}, "53/udp": {}}})
    assert network.merge([P(80, "tcp", "127.0.0.1", 8080)], exposed) == [
        P(80, "tcp", "127.0.0.1", 8080), P(53, "udp")]
    with pytest.raises(PybuildError, match="port is already allocated"):
        network.check_free([P(80, "tcp", "", 8080)], [P(81, "tcp", "127.0.0.1", 8080)])
    network.check_free([P(80, "tcp", "127.0.0.2", 8080)], [P(81, "tcp", "127.0.0.1", 8080)])
    network.check_free([P(80, "udp", "", 8080)], [P(81, "tcp", "", 8080)])


def test_etc_files_follow_docker() -> None:
    text = _etc.hosts("web", "10.89.0.2", [("db", "10.0.0.9")])
    assert text.splitlines()[0] == "127.0.0.1\tlocalhost"
    assert text.splitlines()[-2:] == ["10.0.0.9\tdb", "10.89.0.2\tweb"]
    assert "10.89" not in _etc.hosts("web", "", [])
    assert _etc.parse_add_host("db:10.0.0.9") == ("db", "10.0.0.9")
    assert _etc.parse_add_host("v6=[::1]") == ("v6", "::1")
    for bad in ("nocolon", "db:notanip", "db:host-gateway"):
        with pytest.raises(PybuildError, match="--add-host"):
            _etc.parse_add_host(bad)
    assert _etc.resolv_conf(resolver="10.89.0.1", dns=["9.9.9.9"], keep_local=False) \
        .startswith("nameserver 10.89.0.1\n")
    assert _etc.resolv_conf(resolver="", dns=["9.9.9.9"], keep_local=False) \
        .startswith("nameserver 9.9.9.9\n")
    with pytest.raises(PybuildError, match="is not an ip address"):
        _etc.validate_dns("dns.example")


def test_network_records_and_leases(tmp_path: Path) -> None:
    net = network.create_network(tmp_path, "appnet")
    assert (net.subnet, net.gateway, net.dns_enabled) == ("10.89.0.0/24", "10.89.0.1", True)
    assert net.bridge == "pb-" + net.id[:12] and len(net.bridge) <= 15
    second = network.create_network(tmp_path, "other")
    assert second.subnet == "10.89.1.0/24"
    names = [n.name for n in network.list_networks(tmp_path)]
    assert names == ["appnet", "other", "pybuild"]
    default = network.find_network(tmp_path, "pybuild")
    assert (default.subnet, default.bridge, default.dns_enabled) == ("10.88.0.0/16", "pybuild0", False)
    assert network.find_network(tmp_path, net.id[:6]).name == "appnet"
    with _records.locked(tmp_path):
        assert _records.lease(tmp_path, net, "a" * 64) == "10.89.0.2"
        assert _records.lease(tmp_path, net, "b" * 64) == "10.89.0.3"
        assert _records.lease(tmp_path, net, "a" * 64) == "10.89.0.2"  # one per container
    with pytest.raises(PybuildError, match="has active endpoints"):
        network.remove_network(tmp_path, "appnet")
    with _records.locked(tmp_path):
        _records.release(tmp_path, "appnet", "a" * 64)
        assert _records.lease(tmp_path, net, "c" * 64) == "10.89.0.2"  # given back, reused
        _records.release(tmp_path, "appnet", "b" * 64)
        _records.release(tmp_path, "appnet", "c" * 64)
    network.remove_network(tmp_path, "appnet")
    for args, msg in [(("appnet2",), None), (("other",), "already exists"),
                      (("bad name",), "invalid network name"), (("host",), "pre-defined"),
                      (("x1",), "Pool overlaps")]:
        kwargs = {"subnet": "10.89.1.128/25"} if args == ("x1",) else {}
        if msg is None:
            network.create_network(tmp_path, *args)
            continue
        with pytest.raises(PybuildError, match=msg):
            network.create_network(tmp_path, *args, **kwargs)
    with pytest.raises(PybuildError, match="pre-defined"):
        network.remove_network(tmp_path, "pybuild")
    with pytest.raises(PybuildError, match="network ghost not found"):
        network.find_network(tmp_path, "ghost")


# ----------------------------------------------------------------------------- the bridge
def test_containers_resolve_by_name_and_alias_and_the_host_reaches_a_published_port(cli: Cli) -> None:
    ns = cli.netns
    nid = cli("network", "create", "appnet").stdout.strip()
    bridge = "pb-" + nid[:12]
    cid = cli("run", "-d", "--name", "web", "--network", "appnet", "--network-alias", "www",
              "-p", "127.0.0.1:18000:80", "busybox", "sh", "-c", HTTPD).stdout.strip()
    # the kernel: a bridge with the gateway address, the container's veth on it, its own
    # namespace with the leased address, the NAT rule of the published port
    assert bridge in ns.link_names()
    veths = [link for link in ns.links() if link.get("master") == bridge]
    assert len(veths) == 1
    assert "10.89.0.1/24" in ns.addresses()
    netns_name = "pybuild-" + cid[:12]
    assert netns_name in pybuild_netns()
    inside = subprocess.run(["ip", "-n", netns_name, "-4", "-o", "addr"], capture_output=True,
                            text=True, check=True).stdout
    assert "eth0    inet 10.89.0.2/24" in inside
    rules = ns.iptables()
    assert "--dport 18000 -j DNAT --to-destination 10.89.0.2:80" in rules
    assert "-s 10.89.0.0/24" in rules and "MASQUERADE" in rules
    wait_for(lambda: ns.fetch("http://127.0.0.1:18000/") == "hello from web\n",
             "the published port to answer from the host")
    out = cli("run", "--rm", "--network", "appnet", "busybox", "sh", "-c",
              "wget -qO- http://web/ && wget -qO- http://www/ && wget -qO- http://" + cid[:12]
              + "/ && cat /etc/resolv.conf && cat /etc/hosts && hostname").stdout
    lines = out.splitlines()
    assert lines[:3] == ["hello from web"] * 3
    assert lines[3] == "nameserver 10.89.0.1"  # aardvark-dns on the gateway
    own = next(line for line in lines if line.startswith("10.89.0."))
    assert own.split("\t") == ["10.89.0.3", lines[-1]]  # own address and hostname (short id)
    assert "127.0.0.1\tlocalhost" in lines
    rows = ps_rows(cli)
    assert [(r[5], r[6]) for r in rows] == [("127.0.0.1:18000->80/tcp", "web")]
    doc = cli.inspect("web")
    settings = doc["NetworkSettings"]["Networks"]["appnet"]
    assert (settings["IPAddress"], settings["Gateway"], settings["NetworkID"]) == \
        ("10.89.0.2", "10.89.0.1", nid)
    assert doc["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18000"}]}
    net = json.loads(cli("network", "inspect", "appnet").stdout)[0]
    assert net["Containers"][cid]["IPv4Address"] == "10.89.0.2/24"
    res = cli("network", "rm", "appnet", check=False)
    assert (res.returncode, res.stderr) == (1, f"error: error while removing network: network "
                                               f"appnet id {nid} has active endpoints\n")
    # removing the container removes its veth, namespace, rules; the last one, the bridge
    cli("rm", "-f", "web")
    assert ns.link_names() == ["lo"]
    assert container_rules(ns) == []
    assert netns_name not in pybuild_netns()
    assert "10.89.0.1/24" not in ns.addresses()
    assert json.loads(cli("network", "inspect", "appnet").stdout)[0]["Containers"] == {}
    assert cli("network", "rm", "appnet").stdout == "appnet\n"
    assert [r.split()[1] for r in cli("network", "ls").stdout.splitlines()[1:]] == ["pybuild"]


def test_default_bridge_modes_and_etc_files(cli: Cli, tmp_path: Path) -> None:
    cli.build(tmp_path, "exposer", "FROM busybox\nEXPOSE 80 53/udp\n")
    out = cli("run", "--rm", "--hostname", "box", "--add-host", "db:10.0.0.9", "--dns", "9.9.9.9",
              "busybox", "sh", "-c", "hostname; cat /etc/hostname; tail -n 2 /etc/hosts; "
              "cat /etc/resolv.conf; ip -4 -o addr show eth0").stdout.splitlines()
    assert out[:5] == ["box", "box", "10.0.0.9\tdb", out[3], "nameserver 9.9.9.9"]
    assert out[3].startswith("10.88.0.") and out[3].endswith("\tbox")  # the default bridge
    assert " inet 10.88.0." in out[-1]
    res = cli("run", "--rm", "--network", "appnet", "busybox", "true", check=False)
    assert (res.returncode, res.stderr) == (1, "error: network appnet not found\n")
    res = cli("run", "--rm", "--network-alias", "x", "busybox", "true", check=False)
    assert res.stderr == "error: network-scoped alias is supported only for containers in user " \
                         "defined networks\n"
    # -P: every EXPOSEd port on a free host port, shown in ps and inspect
    cli("run", "-d", "--name", "pub", "-P", "exposer", "sleep", "300")
    ports = cli.inspect("pub")["NetworkSettings"]["Ports"]
    assert sorted(ports) == ["53/udp", "80/tcp"]
    host_port = int(ports["80/tcp"][0]["HostPort"])
    assert host_port > 0 and f"--dport {host_port} -j DNAT" in cli.netns.iptables()
    # container:NAME shares the namespace (same address); host and none get no veth
    ip = cli.inspect("pub")["NetworkSettings"]["Networks"]["pybuild"]["IPAddress"]
    shared = cli("run", "--rm", "--network", "container:pub", "busybox", "ip", "-4", "-o", "addr",
                 "show", "eth0").stdout
    assert f"inet {ip}/16" in shared
    res = cli("run", "--rm", "--network", "container:pub", "-p", "1:1", "busybox", "true",
              check=False)
    assert res.returncode == 1 and "conflicting options: port publishing" in res.stderr
    host = cli("run", "--rm", "--network", "host", "-p", "9:9", "busybox", "ip", "-o", "link")
    assert "WARNING: Published ports are discarded when using host network mode" in host.stderr
    assert "pybuild0" in host.stdout  # the host's (here: the test namespace's) links
    none = cli("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in none.splitlines()] == ["lo"]


def test_a_taken_port_is_refused_and_a_killed_monitor_leaves_nothing(cli: Cli) -> None:
    ns = cli.netns
    cid = cli("run", "-d", "--name", "first", "-p", "127.0.0.1:18001:80", "busybox", "sh", "-c",
              HTTPD).stdout.strip()
    links = ns.link_names()
    res = cli("run", "-d", "--name", "second", "-p", "127.0.0.1:18001:80", "busybox", "true",
              check=False)
    assert (res.returncode, res.stderr) == (
        1, "error: Bind for 127.0.0.1:18001 failed: port is already allocated\n")
    assert [r[6] for r in ps_rows(cli, "-a")] == ["first"]  # nothing half-created
    assert ns.link_names() == links
    # something that is not a container holds a port: refused too, before any rule
    holder = subprocess.Popen([*ns.prefix, "python3", "-c",
                               "import socket,time; s=socket.socket(); "
                               "s.bind(('127.0.0.1', 18002)); s.listen(); print(1, flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "1\n"
        res = cli("run", "--rm", "-p", "127.0.0.1:18002:80", "busybox", "true", check=False)
        assert res.stderr == "error: Bind for 127.0.0.1:18002 failed: port is already allocated\n"
    finally:
        holder.kill()
        holder.wait()
    assert "18002" not in ns.iptables()
    # SIGKILL the monitor: the container runs on, its rules stay and its port stays taken
    monitor = next(int(p) for p in os.listdir("/proc") if p.isdigit()
                   and cid.encode() in _cmdline(int(p)) and b"pybuild.containers" in _cmdline(int(p)))
    os.kill(monitor, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{monitor}").exists(), "the monitor to die")
    wait_for(lambda: ns.fetch("http://127.0.0.1:18001/") == "hello from web\n", "web to answer")
    res = cli("run", "--rm", "-p", "127.0.0.1:18001:80", "busybox", "true", check=False)
    assert "port is already allocated" in res.stderr
    cli("rm", "-f", "first")
    assert ns.link_names() == ["lo"]
    assert container_rules(ns) == []
    assert pybuild_netns() == []
    store_leases = [json.loads(p.read_text()) for p in (cli.root / "networks").glob("*.leases")]
    assert all(leases == {} for leases in store_leases)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
