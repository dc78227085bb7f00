"""Registry commands: pull, push, login, logout (and the TLS flags builds share)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from pybuild.cli.common import open_store, unpack_for_builds, writing_image
from pybuild.errors import PybuildError


def add_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure-registry", action="append", metavar="HOST[:PORT]",
                   help="use plain HTTP for this registry (repeatable; localhost, 127.0.0.0/8 "
                        "and ::1 always are)")
    p.add_argument("--tls-ca", metavar="FILE", help="CA bundle to verify registries' TLS with")


def client_from_args(args: argparse.Namespace) -> Any:
    from pybuild.registry import RegistryClient

    return RegistryClient(insecure=set(args.insecure_registry or []),
                          tls_ca=Path(args.tls_ca) if args.tls_ca else None)


def _with_progress(args: argparse.Namespace, title: str, work: Any) -> Any:
    """Run `work(client)` with one progress vertex showing its transfers."""
    import os

    from pybuild.progress import make_progress

    mode = "quiet" if getattr(args, "quiet", False) else (
        os.environ.get("PYBUILD_PROGRESS") or "auto")
    progress = make_progress(mode)
    client = client_from_args(args)
    client.progress = lambda label, cur, total: progress.transfer("v1", label, cur, total)
    progress.vertex_started("v1", title)
    try:
        result = work(client)
        progress.vertex_done("v1")
        return result
    except PybuildError as e:
        progress.vertex_error("v1", str(e))
        raise
    finally:
        progress.close()


def cmd_pull(args: argparse.Namespace) -> int:
    from pybuild import registry
    from pybuild.platforms import parse_platform
    from pybuild.reference import parse_reference

    store = open_store(args)
    ref = parse_reference(args.image)
    plat = parse_platform(args.platform) if args.platform else None
    with writing_image(store, ref.familiar):
        desc = _with_progress(args, f"pull {ref.canonical}",
                              lambda c: registry.pull(store, ref.canonical, client=c,
                                                    platform=plat))
        unpack_for_builds(store, desc.digest, f"pull {ref.familiar}")
    print(f"Digest: {desc.digest}")
    print(f"Status: Downloaded image for {ref.familiar}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from pybuild import image, registry
    from pybuild.reference import parse_reference

    store = open_store(args)
    dest = args.destination or args.image
    image.load(store, args.image)  # a clear error before any network traffic
    ref = parse_reference(dest)
    digest = _with_progress(args, f"push {ref.canonical}", lambda c: registry.push(
        store, args.image, dest, client=c, chunked=args.chunked))
    print(f"{ref.tag or 'latest'}: digest: {digest}")
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
