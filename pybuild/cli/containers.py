"""Container commands: run, create, ps, logs, stop, start, restart, wait, kill, exec, rm,
stats and `network` — docker's flags and output, no daemon."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pybuild.cli.common import key_values, open_store, table
from pybuild.errors import PybuildError


def _duration(text: str | None, flag: str) -> int | None:
    from pybuild.dockerfile.instructions import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise PybuildError(f"invalid argument {text!r} for \"{flag}\" flag: {e}") from None


def _options(args: argparse.Namespace) -> Any:
    """RunOptions from `run`/`create` flags; every value checked before anything is made."""
    from pybuild import containers, limits, network, restart

    env = [f"{k}={v}" for k, v in key_values(args.env, "environment variable").items()]
    lim, warnings = limits.make(memory=args.memory, memory_swap=args.memory_swap, cpus=args.cpus,
                                cpu_shares=args.cpu_shares, pids_limit=args.pids_limit)
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    return containers.RunOptions(
        image=args.image, command=list(args.command), name=args.name, env=env,
        volumes=list(args.volume or []), network=args.network, entrypoint=args.entrypoint,
        workdir=args.workdir, user=args.user, remove=args.rm,
        publish=[network.parse_publish(p) for p in args.publish or []],
        publish_all=args.publish_all, aliases=list(args.network_alias or []),
        hostname=args.hostname, add_hosts=[network.parse_add_host(h) for h in args.add_host or []],
        dns=[network.validate_dns(d) for d in args.dns or []], limits=lim,
        restart=restart.parse(args.restart), health_cmd=args.health_cmd,
        health_interval=_duration(args.health_interval, "--health-interval"),
        health_timeout=_duration(args.health_timeout, "--health-timeout"),
        health_start_period=_duration(args.health_start_period, "--health-start-period"),
        health_retries=args.health_retries, no_healthcheck=args.no_healthcheck,
        platform=args.platform)


def _create(args: argparse.Namespace) -> tuple[Any, Any]:
    from pybuild import containers

    opts = _options(args)
    store = open_store(args)
    warnings: list[str] = []
    c = containers.create(store, opts, warnings=warnings)
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    return store, c


def cmd_run(args: argparse.Namespace) -> int:
    from pybuild import api

    store, c = _create(args)
    if not args.detach:
        sys.stdout.flush()
        sys.stderr.flush()
    code = api.start_container(store, c, detach=args.detach, stdout=sys.stdout.buffer,
                               stderr=sys.stderr.buffer)
    if code is None:
        print(c.id)
        return 0
    return code


def cmd_create(args: argparse.Namespace) -> int:
    _store, c = _create(args)
    print(c.id)
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    from pybuild import containers

    store = open_store(args)
    found = [c for c in containers.list_containers(store)
             if args.all or c.status in ("running", "restarting")]
    if args.quiet:
        for c in found:
            print(c.id if args.no_trunc else c.short_id)
        return 0
    now = datetime.now(UTC)
    rows = [(c.id if args.no_trunc else c.short_id, c.image,
             containers.command_text(c, trunc=not args.no_trunc),
             containers.human_duration((now - containers.parse_time(c.created)).total_seconds())
             + " ago", containers.status_text(c, now), containers.ports_text(c), c.name)
            for c in found]
    table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from pybuild import containers

    store = open_store(args)
    c = containers.find(store, args.container)
    containers.stream_logs(store, c, sys.stdout.buffer, follow=args.follow)
    return 0


def _each(args: argparse.Namespace, action: Any) -> int:
    """Apply `action` to every named container; report failures one line each, go on."""
    from pybuild import containers

    store = open_store(args)
    status = 0
    for ref in args.containers:
        try:
            result = action(store, containers.find(store, ref))
        except PybuildError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        print(ref if result is None else result)
    return status


def _timeout(args: argparse.Namespace) -> float:
    if args.time < 0:
        raise PybuildError("the stop timeout cannot be negative")
    return float(args.time)


def cmd_stop(args: argparse.Namespace) -> int:
    from pybuild import containers

    t = _timeout(args)
    return _each(args, lambda store, c: containers.stop(store, c, t) and None)


def cmd_start(args: argparse.Namespace) -> int:
    from pybuild import containers

    return _each(args, lambda store, c: containers.start(store, c) and None)


def cmd_restart(args: argparse.Namespace) -> int:
    from pybuild import containers

    t = _timeout(args)
    return _each(args, lambda store, c: containers.restart(store, c, t) and None)


def cmd_wait(args: argparse.Namespace) -> int:
    from pybuild import containers

    return _each(args, lambda store, c: str(containers.wait(store, c)))


def cmd_kill(args: argparse.Namespace) -> int:
    from pybuild import containers

    return _each(args, lambda store, c: containers.kill(store, c, args.signal))


def cmd_rm(args: argparse.Namespace) -> int:
    from pybuild import containers

    return _each(args, lambda store, c: containers.remove(store, c, force=args.force))


def cmd_exec(args: argparse.Namespace) -> int:
    from pybuild import containers

    store = open_store(args)
    c = containers.find(store, args.container)
    env = [f"{k}={v}" for k, v in key_values(args.env, "environment variable").items()]
    argv = containers.exec_argv(store, c, list(args.command), tty=args.tty, env=env,
                                user=args.user, workdir=args.workdir)
    if args.tty and args.interactive and not sys.stdin.isatty():
        raise PybuildError("the input device is not a TTY")
    sys.stdout.flush()
    stdin = None if args.interactive else subprocess.DEVNULL
    return subprocess.run(argv, stdin=stdin, check=False).returncode


def cmd_stats(args: argparse.Namespace) -> int:
    from pybuild import containers
    from pybuild.units import binary_size as binary
    from pybuild.units import human_size as human

    store = open_store(args)
    if args.containers:
        chosen = [containers.find(store, ref) for ref in args.containers]
    else:
        chosen = [c for c in containers.list_containers(store) if c.status == "running"]


    before = {c.id: containers.usage(store, c) for c in chosen}
    while True:
        time.sleep(1.0)
        after = {c.id: containers.usage(store, c) for c in chosen}
        rows = []
        for c in chosen:
            a, b = before.get(c.id), after.get(c.id)
            if a is None or b is None:
                rows.append((c.short_id, c.name, "--", "-- / --", "--", "--", "--"))
                continue
            from pybuild.limits import cpu_percent

            mem_pct = b.memory / b.memory_limit * 100 if b.memory_limit else 0.0
            rows.append((c.short_id, c.name, f"{cpu_percent(a, b):.2f}%",
                         f"{binary(b.memory)} / {binary(b.memory_limit)}", f"{mem_pct:.2f}%",
                         f"{human(b.net_rx)} / {human(b.net_tx)}", str(b.pids)))
        if not args.no_stream:
            print("\033[2J\033[H", end="")
        table(["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "PIDS"],
              rows)
        sys.stdout.flush()
        if args.no_stream:
            return 0
        before = after


# ----- network -------------------------------------------------------------------------
def cmd_network_create(args: argparse.Namespace) -> int:
    from pybuild import network

    store = open_store(args)
    net = network.create_network(store.root, args.name, subnet=args.subnet, gateway=args.gateway,
                                 internal=args.internal,
                                 labels=key_values(args.label, "label"))
    print(net.id)
    return 0


def cmd_network_ls(args: argparse.Namespace) -> int:
    from pybuild import network

    store = open_store(args)
    nets = network.list_networks(store.root)
    if args.quiet:
        for n in nets:
            print(n.id if args.no_trunc else n.id[:12])
        return 0
    table(["NETWORK ID", "NAME", "DRIVER", "SUBNET", "DNS"],
          [(n.id if args.no_trunc else n.id[:12], n.name, n.driver, n.subnet,
            "yes" if n.dns_enabled else "no") for n in nets])
    return 0


def cmd_network_inspect(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pybuild import containers, network

    store = open_store(args)
    every = {c.id: c for c in containers.list_containers(store)}  # settles dead owners first
    out = []
    for ref in args.networks:
        net = network.find_network(store.root, ref)
        attached = {}
        for cid, ip in sorted(network.attached_ids(store.root, net.name).items()):
            c = every.get(cid)
            att = network.Attachment(**c.attachment) if c and c.attachment else None
            attached[cid] = {"Name": c.name if c else "", "IPv4Address": f"{ip}/{att.prefix_len}"
                             if att else ip, "MacAddress": att.mac if att else ""}
        d = asdict(net)
        out.append({"Name": net.name, "Id": net.id, "Created": net.created, "Driver": net.driver,
                    "Internal": net.internal, "EnableDNS": net.dns_enabled,
                    "IPAM": {"Config": [{"Subnet": net.subnet, "Gateway": net.gateway}]},
                    "Options": {"bridge": d["bridge"]}, "Labels": net.labels,
                    "Containers": attached})
    print(json.dumps(out, indent=4))
    return 0


def cmd_network_rm(args: argparse.Namespace) -> int:
    from pybuild import containers, network

    store = open_store(args)
    containers.list_containers(store)  # containers whose owner died give back their leases
    status = 0
    for ref in args.networks:
        try:
            network.remove_network(store.root, ref)
        except PybuildError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        print(ref)
    return status


# ----- parser --------------------------------------------------------------------------
def _run_flags(r: argparse.ArgumentParser) -> None:
    """The flags `run` and `create` share."""
    r.add_argument("--rm", action="store_true", help="remove the container when it exits")
    r.add_argument("--name", help="assign a name to the container")
    r.add_argument("--platform", metavar="PLATFORM",
                   help="run this platform's image of a multi-platform tag (linux/arm64); a "
                        "foreign architecture runs under QEMU user emulation")
    r.add_argument("-e", "--env", action="append", metavar="KEY=VALUE",
                   help="set an environment variable (KEY alone: take it from here)")
    r.add_argument("-v", "--volume", action="append", metavar="HOST:CTR[:ro]",
                   help="bind mount a host directory (CTR alone: an anonymous volume)")
    r.add_argument("--network", "--net", default="pybuild", metavar="MODE",
                   help="host, none, container:NAME, or a network's name (default: the "
                        "pybuild bridge; rootless: slirp4netns, the container's own "
                        "namespace with user-mode networking)")
    r.add_argument("--network-alias", action="append", metavar="ALIAS",
                   help="another name the container answers to on its user network")
    r.add_argument("-p", "--publish", action="append", metavar="[IP:]HOST:CTR[/PROTO]",
                   help="publish a container port on the host (HOST empty or missing: a free "
                        "one; rootless: forwarded by slirp4netns)")
    r.add_argument("-P", "--publish-all", action="store_true",
                   help="publish every EXPOSEd port on a free host port")
    r.add_argument("-h", "--hostname", help="the container's host name (default: its short ID)")
    r.add_argument("--add-host", action="append", metavar="NAME:IP",
                   help="add a line to the container's /etc/hosts")
    r.add_argument("--dns", action="append", metavar="IP",
                   help="DNS server (on a user network: where its resolver forwards other names)")
    r.add_argument("-m", "--memory", metavar="BYTES", help="memory limit (e.g. 256m; at least 6m)")
    r.add_argument("--memory-swap", metavar="BYTES",
                   help="memory plus swap limit (-1: unlimited swap; default twice --memory)")
    r.add_argument("--cpus", metavar="N", help="number of CPUs (e.g. 0.5)")
    r.add_argument("-c", "--cpu-shares", type=int, metavar="N", help="relative CPU weight (default 1024)")
    r.add_argument("--pids-limit", type=int, metavar="N", help="maximum processes (0 or -1: unlimited)")
    r.add_argument("--restart", default="no", metavar="POLICY",
                   help="no, on-failure[:max-retries], always or unless-stopped")
    r.add_argument("--health-cmd", metavar="CMD", help="command to check health (run by /bin/sh -c)")
    r.add_argument("--health-interval", metavar="DURATION", help="time between checks (default 30s)")
    r.add_argument("--health-timeout", metavar="DURATION", help="a check longer than this fails (default 30s)")
    r.add_argument("--health-start-period", metavar="DURATION",
                   help="failures in this time after start do not count (default 0s)")
    r.add_argument("--health-retries", type=int, metavar="N",
                   help="consecutive failures that make it unhealthy (default 3)")
    r.add_argument("--no-healthcheck", action="store_true", help="disable the image's HEALTHCHECK")
    r.add_argument("--entrypoint", help="override the image's ENTRYPOINT (drops its CMD)")
    r.add_argument("-w", "--workdir", help="working directory inside the container")
    r.add_argument("-u", "--user", help="user[:group] or uid[:gid]")
    r.add_argument("image", metavar="IMAGE", help="tag or image ID to run")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD",
                   help="command and arguments (replace the image's CMD)")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("run", parents=[common], help="run a command in a new container",
                       add_help=False,
                       description="Create a container from IMAGE and run it with runc: "
                                   "attached (output here, exit status propagated) or with "
                                   "-d in the background (output in `pybuild logs`).")
    r.add_argument("--help", action="help", help="show this help message and exit")
    r.add_argument("-d", "--detach", action="store_true",
                   help="run in the background and print the container ID")
    _run_flags(r)
    r.set_defaults(func=cmd_run)

    cr = sub.add_parser("create", parents=[common], help="create a container without starting it",
                        add_help=False,
                        description="Create a container as `run` would; start it with "
                                    "`pybuild start`.")
    cr.add_argument("--help", action="help", help="show this help message and exit")
    _run_flags(cr)
    cr.set_defaults(func=cmd_create)

    p = sub.add_parser("ps", parents=[common], help="list containers",
                       description="List running containers (all with -a).")
    p.add_argument("-a", "--all", action="store_true", help="show stopped containers too")
    p.add_argument("-q", "--quiet", action="store_true", help="only container IDs")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate IDs and commands")
    p.set_defaults(func=cmd_ps)

    lg = sub.add_parser("logs", parents=[common], help="show a container's output",
                        description="Print what a container wrote to stdout and stderr.")
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the container stops")
    lg.add_argument("container", metavar="CONTAINER", help="name or ID (a unique prefix)")
    lg.set_defaults(func=cmd_logs)

    for name, helptext, desc, func in (
            ("stop", "stop running containers",
             "Send the image's STOPSIGNAL (default SIGTERM), then SIGKILL after the grace "
             "period. A stopped container is not restarted by its policy.", cmd_stop),
            ("restart", "restart containers", "Stop (as `stop`), then start again.", cmd_restart)):
        s = sub.add_parser(name, parents=[common], help=helptext, description=desc)
        s.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS",
                       help="seconds to wait before killing (default 10)")
        s.add_argument("containers", nargs="+", metavar="CONTAINER", help="names or IDs")
        s.set_defaults(func=func)

    st = sub.add_parser("start", parents=[common], help="start stopped containers",
                        description="Start created or stopped containers in the background.")
    st.add_argument("containers", nargs="+", metavar="CONTAINER", help="names or IDs")
    st.set_defaults(func=cmd_start)

    w = sub.add_parser("wait", parents=[common], help="wait for containers to stop",
                       description="Block until each container stops, then print its exit code.")
    w.add_argument("containers", nargs="+", metavar="CONTAINER", help="names or IDs")
    w.set_defaults(func=cmd_wait)

    k = sub.add_parser("kill", parents=[common], help="send a signal to containers",
                       description="Send SIGKILL (or -s SIGNAL) to running containers.")
    k.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    k.add_argument("containers", nargs="+", metavar="CONTAINER", help="names or IDs")
    k.set_defaults(func=cmd_kill)

    rm = sub.add_parser("rm", parents=[common], help="remove containers",
                        description="Remove stopped containers (running ones with -f); their "
                                    "network namespace, address and rules go with them.")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    rm.add_argument("containers", nargs="+", metavar="CONTAINER", help="names or IDs")
    rm.set_defaults(func=cmd_rm)

    ex = sub.add_parser("exec", parents=[common], help="run a command in a running container",
                        description="Run COMMAND in a running container, with its environment, "
                                    "user and working directory unless overridden.")
    ex.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    ex.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    ex.add_argument("-e", "--env", action="append", metavar="KEY=VALUE", help="set a variable")
    ex.add_argument("-u", "--user", help="user[:group] or uid[:gid]")
    ex.add_argument("-w", "--workdir", help="working directory inside the container")
    ex.add_argument("container", metavar="CONTAINER", help="name or ID")
    ex.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND",
                    help="command and arguments")
    ex.set_defaults(func=cmd_exec)

    sa = sub.add_parser("stats", parents=[common], help="show containers' resource use",
                        description="CPU %, memory use and limit, network I/O and process count "
                                    "of running containers, from their cgroups; refreshed every "
                                    "second until Ctrl-C (once with --no-stream).")
    sa.add_argument("--no-stream", action="store_true", help="print one reading and exit")
    sa.add_argument("containers", nargs="*", metavar="CONTAINER", help="names or IDs (default: all running)")
    sa.set_defaults(func=cmd_stats)

    net = sub.add_parser("network", parents=[common], help="manage networks",
                         description="Bridge networks for containers (netavark); `pybuild` is "
                                     "the default one. Containers on a user network resolve "
                                     "each other by name and alias.")
    nsub = net.add_subparsers(dest="network_command", metavar="COMMAND", required=True)
    nc = nsub.add_parser("create", parents=[common], help="create a network",
                         description="Define a bridge network; its bridge appears when the "
                                     "first container attaches.")
    nc.add_argument("--subnet", help="IPv4 subnet in CIDR form (default: a free 10.89.N.0/24)")
    nc.add_argument("--gateway", help="gateway address (default: the subnet's first)")
    nc.add_argument("--internal", action="store_true", help="no NAT to the outside")
    nc.add_argument("--label", action="append", metavar="KEY=VALUE", help="set a label")
    nc.add_argument("name", metavar="NAME", help="network name")
    nc.set_defaults(func=cmd_network_create)
    nl = nsub.add_parser("ls", parents=[common], help="list networks",
                         description="List the networks of the store.")
    nl.add_argument("-q", "--quiet", action="store_true", help="only network IDs")
    nl.add_argument("--no-trunc", action="store_true", help="full IDs")
    nl.set_defaults(func=cmd_network_ls)
    ni = nsub.add_parser("inspect", parents=[common], help="show networks as JSON",
                         description="Print networks with their subnet and attached containers.")
    ni.add_argument("networks", nargs="+", metavar="NETWORK", help="names or IDs")
    ni.set_defaults(func=cmd_network_inspect)
    nr = nsub.add_parser("rm", parents=[common], help="remove networks",
                         description="Remove networks no running container is attached to.")
    nr.add_argument("networks", nargs="+", metavar="NETWORK", help="names or IDs")
    nr.set_defaults(func=cmd_network_rm)


def inspect_container(args: argparse.Namespace, ref: str) -> dict[str, Any] | None:
    """A container's inspect document, or None when `ref` names no container."""
    from pybuild import containers

    store = open_store(args)
    c = containers.find_or_none(store, ref)
    return None if c is None else containers.inspect(store, c)
