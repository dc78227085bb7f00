"""`pybuild cache ls|du|inspect|prune`: the build cache as something you can see into."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, UTC
from typing import Any

from pybuild.cli.common import open_store, table
from pybuild.errors import PybuildError
from pybuild.units import human_duration, human_size


def _ago(t: float) -> str:
    return f"{human_duration(max(0.0, time.time() - t))} ago"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _filters(values: list[str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not sep or not val:
            raise PybuildError(f"invalid filter {v!r}: expected KEY=VALUE")
        out.setdefault(k.strip().lower(), []).append(val.strip())
    return out


def cmd_ls(args: argparse.Namespace) -> int:
    from pybuild.solver.usage import parse_duration, usage

    u = usage(open_store(args))
    f = _filters(args.filter)
    unknown = set(f) - {"until", "since", "description", "used", "type"}
    if unknown:
        raise PybuildError(f"unknown filter {sorted(unknown)[0]!r} "
                           f"(until, since, description, used, type)")
    now = time.time()
    rows = []
    for r in u.records:
        used_by = u.used_by.get(r.key, [])
        if "until" in f and not all(now - r.last_used >= parse_duration(x) for x in f["until"]):
            continue
        if "since" in f and not all(now - r.last_used < parse_duration(x) for x in f["since"]):
            continue
        if "description" in f and not all(x.lower() in r.description.lower() for x in f["description"]):
            continue
        if "used" in f and any((x.lower() in ("true", "1")) != bool(used_by) for x in f["used"]):
            continue
        if "type" in f and "regular" not in f["type"]:
            continue
        rows.append((r, used_by))
    mounts = [m for m in u.cache_mounts if "type" not in f or "exec.cachemount" in f["type"]]
    if args.format == "json":
        print(json.dumps([{
            "id": r.key, "type": "regular", "description": r.description, "size": r.layer.size,
            "layer": r.layer.digest, "diff_id": r.diff_id, "created": _iso(r.created),
            "last_used": _iso(r.last_used), "hits": r.hits, "used_by": used_by}
            for r, used_by in rows] + [{
                "id": m.id, "type": "exec.cachemount", "description": f"cache mount {m.id}",
                "size": m.size, "last_used": _iso(m.last_used)} for m in mounts], indent=2))
        return 0
    table(["ID", "DESCRIPTION", "SIZE", "CREATED", "LAST USED", "HITS", "USED BY"],
          [(r.key.split(":")[1][:12], _cut(r.description, 48), human_size(r.layer.size),
            _ago(r.created), _ago(r.last_used), r.hits, ",".join(used_by) or "-")
           for r, used_by in rows]
          + [(m.id[:12], f"cache mount {m.id}", human_size(m.size), "-", _ago(m.last_used), "-", "-")
             for m in mounts])
    return 0


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def cmd_du(args: argparse.Namespace) -> int:
    from pybuild.solver.usage import usage

    u = usage(open_store(args))
    if args.format == "json":
        print(json.dumps({"records": len(u.records), "total": u.total, "shared": u.shared,
                          "reclaimable": u.reclaimable, "cache_mounts": u.mounts_size}, indent=2))
        return 0
    table(["", "SIZE"], [
        (f"Layers in cache records ({len(u.records)})", human_size(u.total)),
        ("  shared with tagged images", human_size(u.shared)),
        ("  reclaimable", human_size(u.reclaimable)),
        (f"Cache mounts ({len(u.cache_mounts)})", human_size(u.mounts_size)),
        ("Total", human_size(u.total + u.mounts_size)),
    ])
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pybuild.solver.cache import Cache

    store = open_store(args)
    cache = Cache(store)
    rec = cache.get(args.id)
    chain = []
    parent = rec.parent
    while True:
        row = cache.lookup(parent)
        if row is None:
            chain.append({"key": parent, "description": "base image or scratch"})
            break
        chain.append({"key": row.key, "description": row.description})
        parent = row.parent
    print(json.dumps({
        "id": rec.key, "description": rec.description, "layer": rec.layer.to_dict(),
        "diff_id": rec.diff_id, "chain_id": rec.chain_id, "created": _iso(rec.created),
        "last_used": _iso(rec.last_used), "hits": rec.hits, "parents": chain,
        "inputs": rec.inputs}, indent=2))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from pybuild.solver.usage import parse_duration, parse_size, prune

    f = _filters(args.filter)
    unknown = set(f) - {"until", "type"}
    if unknown:
        raise PybuildError(f"unknown prune filter {sorted(unknown)[0]!r} (until, type)")
    until = max(parse_duration(x) for x in f["until"]) if "until" in f else None
    types = set(f["type"]) if "type" in f else None
    keep = parse_size(args.keep_storage) if args.keep_storage else None
    report = prune(open_store(args), all=args.all, until=until, types=types, keep_storage=keep,
                   dry_run=args.dry_run)
    verb = "Would remove" if args.dry_run else "Deleted"
    for r in report.records:
        print(f"{verb}: {r.key.split(':')[1][:12]}  {r.description}")
    for m in report.mounts:
        print(f"{verb}: cache mount {m.id}")
    for url in report.downloads:
        print(f"{verb}: download {url}")
    downloads = f", {len(report.downloads)} downloads" if report.downloads else ""
    print(f"Total: {human_size(report.total)} {'reclaimable' if args.dry_run else 'reclaimed'} "
          f"({len(report.records)} records, {len(report.mounts)} cache mounts{downloads})")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("cache", parents=[common], help="see into and prune the build cache",
                       description="List, measure, inspect and prune the build cache.")
    cs = c.add_subparsers(dest="cache_command", metavar="SUBCOMMAND", required=True)

    p = cs.add_parser("ls", parents=[common], help="list cache records",
                      description="One row per cache record (and cache mount): step, size, "
                                  "age, hits, and the tagged images that use its layer.")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="a table (default) or JSON with full ids, digests and ISO times")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="until=DURATION, since=DURATION, description=TEXT, used=true|false, "
                        "type=regular|exec.cachemount (repeatable)")
    p.set_defaults(func=cmd_ls)

    p = cs.add_parser("du", parents=[common], help="disk usage of the cache",
                      description="Total size of cached layers, how much tagged images share, "
                                  "how much a prune could free, and cache mounts.")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="a table (default) or JSON (bytes)")
    p.set_defaults(func=cmd_du)

    p = cs.add_parser("inspect", parents=[common], help="show one cache record",
                      description="A record with its parent chain, layer and the inputs of its "
                                  "key.")
    p.add_argument("id", metavar="ID", help="record id (a unique prefix is enough)")
    p.set_defaults(func=cmd_inspect)

    p = cs.add_parser("prune", parents=[common], help="remove build cache",
                      description="Remove cache records least recently used first, then the "
                                  "layers, snapshots and ADD <url> downloads (http-cache) nothing "
                                  "needs. Never removes what a tagged image needs. Without --all, "
                                  "only records whose layers no tagged image uses; --all also "
                                  "removes the rest, every download and cache mounts.")
    p.add_argument("-a", "--all", action="store_true", help="remove all cache, not just unused")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="until=DURATION (e.g. 24h: not used for that long), "
                        "type=regular|exec.cachemount")
    p.add_argument("--keep-storage", metavar="SIZE", help="keep this much cache (e.g. 2GB)")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed")
    p.set_defaults(func=cmd_prune)
