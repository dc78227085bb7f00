"""`pybuild doctor [--repair]`: check the store after a crash, and optionally fix it."""

from __future__ import annotations

import argparse
from typing import Any

from pybuild.cli.common import open_store


def cmd_doctor(args: argparse.Namespace) -> int:
    """One line per problem, then a summary; exit 1 while problems remain."""
    from pybuild import doctor, rootless

    if rootless.active():
        missing = [] if rootless.inside() else rootless.problems()
        for m in missing:
            print(f"rootless: {m}")
        if missing:
            print("rootless mode unavailable: the store was not checked")
            return 1
        print(f"rootless: {rootless.describe()}")
        from pybuild import network

        print("rootless: container network: "
              + (network.slirp_available() or "slirp4netns (published ports forwarded by it)"))
    store = open_store(args)
    report = doctor.repair(store) if args.repair else doctor.check(store)
    for p in report.problems:
        print(p)
    for a in report.actions:
        print(f"repaired: {a}")
    found, left = len(report.problems), len(report.remaining)
    print(f"{report.blobs_checked} blobs checked, {found} problem(s) found"
          + (f", {found - left} repaired, {left} remaining" if args.repair else ""))
    if left and not args.repair:
        print("run `pybuild doctor --repair` to fix them")
    return 1 if left else 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("doctor", parents=[common], help="check the store for damage",
                       description="Check every blob against its digest, that every tag "
                                   "resolves, cache records, snapshots, and what killed builds "
                                   "left behind (mounts, runc containers, cache mounts).")
    d.add_argument("--repair", action="store_true",
                   help="remove corrupt blobs (and the tags and records needing them), "
                        "incomplete snapshots, stale mounts and containers")
    d.set_defaults(func=cmd_doctor)
