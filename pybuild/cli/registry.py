"""Registry commands: pull, push, login, logout (and the TLS flags builds share)."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pybuild.cli.common import open_store


def add_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure-registry", action="append", metavar="HOST[:PORT]",
                   help="use plain HTTP for this registry (repeatable; localhost, 127.0.0.0/8 "
                        "and ::1 always are)")
    p.add_argument("--tls-ca", metavar="FILE", help="CA bundle to verify registries' TLS with")


def client_from_args(args: argparse.Namespace) -> Any:
    from pybuild.api import registry_client

    return registry_client(args.insecure_registry or [], args.tls_ca)


def registry_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """--insecure-registry and --tls-ca as the API's keyword arguments."""
    return {"insecure_registries": list(args.insecure_registry or []), "tls_ca": args.tls_ca}


@contextlib.contextmanager
def drawn_events(args: argparse.Namespace) -> Iterator[Callable[[Any], None]]:
    """A callback for the API's progress events that draws them (quiet with -q)."""
    import os

    from pybuild.progress import make_progress

    mode = "quiet" if getattr(args, "quiet", False) else (
        os.environ.get("PYBUILD_PROGRESS") or "auto")
    progress = make_progress(mode)

    def draw(e: Any) -> None:
        if e.kind == "started":
            progress.vertex_started(e.vertex, e.name)
        elif e.kind == "transfer":
            progress.transfer(e.vertex, e.message, e.current, e.total)
        elif e.kind == "done":
            progress.vertex_done(e.vertex)
        elif e.kind == "error":
            progress.vertex_error(e.vertex, e.message)

    try:
        yield draw
    finally:
        progress.close()


def cmd_pull(args: argparse.Namespace) -> int:
    from pybuild import api
    from pybuild.reference import parse_reference

    with drawn_events(args) as draw:
        img = api.pull(args.image, store=open_store(args), platform=args.platform, progress=draw,
                       **registry_kwargs(args))
    print(f"Digest: {img.digest}")
    print(f"Status: Downloaded image for {parse_reference(args.image).familiar}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from pybuild import api
    from pybuild.reference import parse_reference

    dest = args.destination or args.image
    with drawn_events(args) as draw:
        digest = api.push(args.image, dest, store=open_store(args), chunked=args.chunked,
                          progress=draw, **registry_kwargs(args))
    print(f"{parse_reference(dest).tag or 'latest'}: digest: {digest}")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from pybuild import registry

    username = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\n")
    elif args.password is not None:
        password = args.password
    else:
        password = getpass.getpass("Password: ")
    registry.login(args.server, username, password, client=client_from_args(args))
    print("Login Succeeded")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from pybuild import registry

    if registry.logout(args.server):
        print(f"Removing login credentials for {args.server}")
    else:
        print(f"Not logged in to {args.server}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pull", parents=[common], help="pull an image from a registry",
                       description="Pull an image (the host's platform from a multi-platform "
                                   "list, or --platform's) into the store and tag it.")
    p.add_argument("--platform", metavar="PLATFORM",
                   help="the entry of a multi-platform image to pull (linux/arm64); an image "
                        "of another platform is an error")
    p.add_argument("image", metavar="NAME[:TAG|@DIGEST]",
                   help="reference to pull (docker's normalisation: busybox = "
                        "docker.io/library/busybox:latest)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_tls_flags(p)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", parents=[common], help="push an image to a registry",
                       description="Push IMAGE to its registry, or to DESTINATION when given "
                                   "(`pybuild push myapp localhost:5000/myapp:1.0`). Blobs the "
                                   "registry has are skipped, blobs in another repository of "
                                   "it are mounted.")
    p.add_argument("image", metavar="IMAGE", help="local tag or image ID")
    p.add_argument("destination", nargs="?", metavar="DESTINATION",
                   help="registry reference to push to (default: IMAGE's own name)")
    p.add_argument("--chunked", action="store_true",
                   help="upload layers in chunks (PATCH) instead of one request each")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_tls_flags(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("login", parents=[common], help="log in to a registry",
                       description="Check credentials against a registry and save them in "
                                   "~/.docker/config.json (as docker login does).")
    p.add_argument("server", metavar="SERVER", help="registry host[:port]")
    p.add_argument("-u", "--username", help="user name (asked for when missing)")
    p.add_argument("-p", "--password", help="password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add_tls_flags(p)
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", parents=[common], help="log out from a registry",
                       description="Remove saved credentials for a registry.")
    p.add_argument("server", metavar="SERVER", help="registry host[:port]")
    p.set_defaults(func=cmd_logout)
