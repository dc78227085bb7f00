"""Container commands: run, ps, logs, stop, rm — docker's flags and output, no daemon."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, UTC
from typing import Any

from pybuild.cli.common import key_values, open_store, table
from pybuild.errors import PybuildError


def cmd_run(args: argparse.Namespace) -> int:
    from pybuild import containers

    env = [f"{k}={v}" for k, v in key_values(args.env, "environment variable").items()]
    opts = containers.RunOptions(
        image=args.image, command=list(args.command), name=args.name, env=env,
        volumes=list(args.volume or []), network=args.network, entrypoint=args.entrypoint,
        workdir=args.workdir, user=args.user, remove=args.rm)
    store = open_store(args)
    c = containers.create(store, opts)
    if args.detach:
        containers.start_detached(store, c)
        print(c.id)
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    return containers.run_foreground(store, c, sys.stdout.buffer, sys.stderr.buffer)


def cmd_ps(args: argparse.Namespace) -> int:
    from pybuild import containers

    store = open_store(args)
    found = [c for c in containers.list_containers(store) if args.all or c.status == "running"]
    if args.quiet:
        for c in found:
            print(c.id if args.no_trunc else c.short_id)
        return 0
    now = datetime.now(UTC)
    rows = [(c.id if args.no_trunc else c.short_id, c.image,
             containers.command_text(c, trunc=not args.no_trunc),
             containers.human_duration((now - containers.parse_time(c.created)).total_seconds())
             + " ago", containers.status_text(c, now), c.name) for c in found]
    table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], rows)
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
            action(store, containers.find(store, ref))
        except PybuildError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        print(ref)
    return status


def cmd_stop(args: argparse.Namespace) -> int:
    from pybuild import containers

    if args.time < 0:
        raise PybuildError("the stop timeout cannot be negative")
    return _each(args, lambda store, c: containers.stop(store, c, args.time))


def cmd_rm(args: argparse.Namespace) -> int:
    from pybuild import containers

    return _each(args, lambda store, c: containers.remove(store, c, force=args.force))


# ----- parser --------------------------------------------------------------------------
def register(sub: Any, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("run", parents=[common], help="run a command in a new container",
                       description="Create a container from IMAGE and run it with runc: "
                                   "attached (output here, exit status propagated) or with "
                                   "-d in the background (output in `pybuild logs`).")
    r.add_argument("--rm", action="store_true", help="remove the container when it exits")
    r.add_argument("-d", "--detach", action="store_true",
                   help="run in the background and print the container ID")
    r.add_argument("--name", help="assign a name to the container")
    r.add_argument("-e", "--env", action="append", metavar="KEY=VALUE",
                   help="set an environment variable (KEY alone: take it from here)")
    r.add_argument("-v", "--volume", action="append", metavar="HOST:CTR[:ro]",
                   help="bind mount a host directory (CTR alone: an anonymous volume)")
    r.add_argument("--network", choices=["host", "none"], default="host",
                   help="host's network (default) or an isolated one with only loopback")
    r.add_argument("--entrypoint", help="override the image's ENTRYPOINT (drops its CMD)")
    r.add_argument("-w", "--workdir", help="working directory inside the container")
    r.add_argument("-u", "--user", help="user[:group] or uid[:gid]")
    r.add_argument("image", metavar="IMAGE", help="tag or image ID to run")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD",
                   help="command and arguments (replace the image's CMD)")
    r.set_defaults(func=cmd_run)

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

    s = sub.add_parser("stop", parents=[common], help="stop running containers",
                       description="Send the image's STOPSIGNAL (default SIGTERM), then "
                                   "SIGKILL after the grace period.")
    s.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS",
                   help="seconds to wait before killing (default 10)")
    s.add_argument("containers", nargs="+", metavar="CONTAINER", help="names or IDs")
    s.set_defaults(func=cmd_stop)

    rm = sub.add_parser("rm", parents=[common], help="remove containers",
                        description="Remove stopped containers (running ones with -f).")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    rm.add_argument("containers", nargs="+", metavar="CONTAINER", help="names or IDs")
    rm.set_defaults(func=cmd_rm)
