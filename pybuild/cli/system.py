"""`pybuild image prune` and `pybuild system df`: docker's disk commands for this store."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, UTC
from typing import Any

from pybuild.cli.common import open_store, table
from pybuild.units import decimal_size, human_size


def _confirm(warning: str) -> bool:
    print(warning)
    print("Are you sure you want to continue? [y/N] ", end="", flush=True)
    answer = sys.stdin.readline() if not sys.stdin.closed else ""
    return answer.strip().lower() in ("y", "yes")


def cmd_image_prune(args: argparse.Namespace) -> int:
    from pybuild.disk import prune_images

    warning = ("WARNING! This will remove all images without at least one container "
               "associated to them." if args.all else
               "WARNING! This will remove all dangling images.")
    if not args.force and not _confirm(warning):
        return 0
    result = prune_images(open_store(args), all=args.all)
    if result.untagged or result.deleted:
        print("Deleted Images:")
        for t in result.untagged:
            print(f"untagged: {t}")
        for d in result.deleted:
            print(f"deleted: {d}")
        print()
    print(f"Total reclaimed space: {human_size(result.reclaimed)}")
    return 0


def _ago(stamp: str | float) -> str:
    from pybuild.containers import human_duration, parse_time

    try:
        t = parse_time(stamp) if isinstance(stamp, str) else datetime.fromtimestamp(stamp, UTC)
    except ValueError:
        return "N/A"
    return human_duration((datetime.now(UTC) - t).total_seconds()) + " ago"


def _size4(n: float) -> str:
    """`system df` sizes: docker's HumanSize with 4 significant digits (16.43MB)."""
    return decimal_size(n, ".4g")


def _reclaim(reclaimable: int, total: int) -> str:
    """docker's RECLAIMABLE cell: the size and, when anything is there, its percentage."""
    if total > 0:
        return f"{_size4(reclaimable)} ({reclaimable * 100 // total}%)"
    return _size4(reclaimable)


def cmd_system_df(args: argparse.Namespace) -> int:
    from pybuild.disk import disk_usage

    u = disk_usage(open_store(args))
    running = [c for c in u.containers if c.container.status == "running"]
    c_size = sum(c.size for c in u.containers)
    c_reclaim = sum(c.size for c in u.containers if c.container.status != "running")
    v_size = sum(v.size for v in u.volumes)
    v_reclaim = sum(v.size for v in u.volumes if v.links == 0)
    if not args.verbose:
        table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], [
            ("Images", len(u.images), sum(1 for i in u.images if i.containers),
             _size4(u.images_size), _reclaim(u.images_reclaimable, u.images_size)),
            ("Containers", len(u.containers), len(running), _size4(c_size),
             _reclaim(c_reclaim, c_size)),
            ("Local Volumes", len(u.volumes), sum(1 for v in u.volumes if v.links),
             _size4(v_size), _reclaim(v_reclaim, v_size)),
            ("Build Cache", len(u.cache_records) + len(u.cache_mounts), 0,
             _size4(u.cache_size), _size4(u.cache_reclaimable)),
        ])
        return 0
    owners: dict[str, int] = {}
    for info in u.images:
        for d in info.image.layers:
            owners[d.digest] = owners.get(d.digest, 0) + 1
    rows: list[tuple[Any, ...]] = []
    for info in sorted(u.images, key=lambda i: str(i.image.config.get("created") or ""),
                       reverse=True):
        shared = sum(s for d, s in zip(info.image.layers, info.sizes) if owners[d.digest] > 1)
        names = sorted(info.tags) or ["<none>:<none>"]
        for name in names:
            repo, _, tag = name.rpartition(":")
            rows.append((repo, tag, info.image.id.split(":", 1)[1][:12],
                         _ago(str(info.image.config.get("created") or "")),
                         _size4(info.size), _size4(shared), _size4(info.size - shared),
                         info.containers))
    print("Images space usage:\n")
    table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE",
           "CONTAINERS"], rows)
    from pybuild.containers import command_text, status_text

    print("\nContainers space usage:\n")
    table(["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE", "CREATED", "STATUS",
           "NAMES"],
          [(c.container.short_id, c.container.image, command_text(c.container), c.volumes,
            _size4(c.size), _ago(c.container.created), status_text(c.container),
            c.container.name) for c in u.containers])
    print("\nLocal Volumes space usage:\n")
    table(["VOLUME NAME", "LINKS", "SIZE"], [(v.name, v.links, _size4(v.size)) for v in u.volumes])
    print(f"\nBuild cache usage: {_size4(u.cache_size)}\n")
    used = {d for info in u.images for d in (x.digest for x in info.image.layers)}
    table(["CACHE ID", "CACHE TYPE", "SIZE", "CREATED", "LAST USED", "USAGE", "SHARED"],
          [(r.key.split(":", 1)[1][:12], "regular", _size4(r.layer.size), _ago(r.created),
            _ago(r.last_used), r.hits + 1, "true" if r.layer.digest in used else "false")
           for r in u.cache_records]
          + [(m.id[:12], "exec.cachemount", _size4(m.size), "N/A", _ago(m.last_used), "N/A",
              "false") for m in u.cache_mounts])
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    img = sub.add_parser("image", parents=[common], help="manage images (prune)",
                         description="Image management commands docker has under `docker image`.")
    isub = img.add_subparsers(dest="image_command", metavar="COMMAND")
    p = isub.add_parser("prune", parents=[common], help="remove unused images",
                        description="Remove dangling images (those without a tag); with -a, "
                                    "every image no container uses. Layers the build cache "
                                    "still records are kept.")
    p.add_argument("-a", "--all", action="store_true",
                   help="remove all images without a container, not only dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.set_defaults(func=cmd_image_prune)

    system = sub.add_parser("system", parents=[common], help="store-wide information (df)",
                            description="Commands about the whole store, as `docker system`.")
    ssub = system.add_subparsers(dest="system_command", metavar="COMMAND")
    df = ssub.add_parser("df", parents=[common], help="show disk usage",
                         description="Show the space images, containers, volumes and the build "
                                     "cache take, and how much of it can be reclaimed.")
    df.add_argument("-v", "--verbose", action="store_true", help="show every item, not only totals")
    df.set_defaults(func=cmd_system_df)

