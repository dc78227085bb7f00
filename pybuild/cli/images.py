"""Image commands: import, images, inspect, tag, rmi, save, load, history."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

from pybuild.cli.common import open_store, table
from pybuild.errors import PybuildError
from pybuild.units import human_size


def cmd_import(args: argparse.Namespace) -> int:
    from pybuild import image
    from pybuild.api import unpack_for_builds, writing_image
    from pybuild.reference import parse_reference

    src = Path(args.tarball)
    if not src.is_file():
        raise PybuildError(f"{args.tarball}: no such file")
    from pybuild.platforms import parse_platform

    plat = parse_platform(args.platform) if args.platform else None
    store = open_store(args)
    tag = parse_reference(args.tag).familiar
    with writing_image(store, tag):
        desc = image.import_rootfs(store, src, tag, platform=plat)
        unpack_for_builds(store, desc.digest, f"import {args.tarball}")
    print(store.read_json(desc.digest)["config"]["digest"])
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from pybuild import image
    from pybuild.disk import layer_sizes

    from pybuild.platforms import normal_string

    store = open_store(args)
    rows = []
    multi = False
    for name in sorted(store.list_tags()):
        img = image.load(store, name)
        repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
        size = sum(layer_sizes(store, img))  # extracted sizes, as docker images shows
        image_id = img.config_desc.digest
        top = store.resolve_tag(name)
        plats = normal_string(img.manifest_desc.platform or {
            k: img.config[k] for k in ("os", "architecture", "variant") if img.config.get(k)})
        runnable = [e for e in image.index_entries(store, top)
                    if (e.platform or {}).get("os") != "unknown"] \
            if top is not None and image.is_index(store, top) else []
        if len(runnable) > 1:
            # a multi-platform tag: its ID is the index digest (as docker's containerd store
            # shows it), every platform listed (attestation manifests are not platforms);
            # the size is this machine's image
            multi = True
            image_id = top.digest if top is not None else image_id
            plats = ",".join(normal_string(e.platform or {}) for e in runnable)
        rows.append((repo, tag, image_id.split(":")[1][:12],
                     img.config.get("created", "")[:19].replace("T", " "), human_size(size),
                     plats))
    if args.quiet:
        for r in rows:
            print(r[2])
        return 0
    if multi:  # the PLATFORMS column appears once a tag holds several
        table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "PLATFORMS"], rows)
    else:
        table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], [r[:5] for r in rows])
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pybuild import image
    from pybuild.cli.containers import inspect_container

    store = open_store(args)
    out = []
    for name in args.names:
        found = inspect_container(args, name)  # docker inspect: containers, then images
        if found is not None:
            out.append(found)
            continue
        img = image.load(store, name)
        out.append({"Id": img.config_desc.digest, "RepoTags": [
            t for t, d in store.list_tags().items() if d.digest == img.manifest_desc.digest],
            "ManifestDigest": img.manifest_desc.digest, "Manifest": img.manifest,
            "Config": img.config})
    print(json.dumps(out, indent=2))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from pybuild import image
    from pybuild.reference import parse_reference

    store = open_store(args)
    img = image.load(store, args.source)
    with store.lock():
        store.set_tag(parse_reference(args.target).familiar, img.manifest_desc)
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    from pybuild.reference import parse_reference

    store = open_store(args)
    status = 0
    for name in args.names:
        with store.lock():
            desc = store.remove_tag(parse_reference(name).familiar)
        if desc is None:
            print(f"error: no such image: {name}", file=sys.stderr)
            status = 1
        else:
            print(f"Untagged: {parse_reference(name).familiar}")
    return status


def cmd_save(args: argparse.Namespace) -> int:
    from pybuild import api

    api.save(args.names, args.output, store=open_store(args), format=args.format,
             platform=args.platform)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from pybuild.api import load_report

    src: str | BinaryIO
    if args.input and args.input != "-":
        src = args.input
    else:
        if sys.stdin.isatty():
            raise PybuildError("requested load from stdin, but stdin is empty")
        src = sys.stdin.buffer
    loaded = load_report(src, open_store(args))
    for line in loaded.lines():
        print(line)
    return 0


HISTORY_FIELDS = ["ID", "CreatedSince", "CreatedAt", "CreatedBy", "Size", "Comment"]


def _ellipsis(text: str, width: int) -> str:
    """docker's Ellipsis: cut to `width` characters, the last one an ellipsis."""
    return text if len(text) <= width else text[:width - 1] + "…"


def cmd_history(args: argparse.Namespace) -> int:
    from datetime import datetime, UTC

    from pybuild.cli.format import render
    from pybuild.containers import human_duration, parse_time
    from pybuild.disk import history

    rows = history(open_store(args), args.image)
    now = datetime.now(UTC)
    out = []
    for r in rows:
        image_id = r.id if args.no_trunc or r.id == "<missing>" else r.id.split(":", 1)[-1][:12]
        created_by = r.created_by.replace("\t", " ")
        try:
            created = parse_time(r.created)
            since = human_duration((now - created).total_seconds()) + " ago"
            at = created.astimezone().isoformat(timespec="seconds")
        except ValueError:
            since = at = "N/A"
        out.append({"ID": image_id, "CreatedSince": since if args.human else at,
                    "CreatedAt": at, "CreatedBy": created_by if args.no_trunc
                    else _ellipsis(created_by, 45),
                    "Size": human_size(r.size) if args.human else str(r.size), "Comment": r.comment})
    if args.quiet:
        for row in out:
            print(row["ID"])
        return 0
    template = args.format or "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
    for line in render(template, out, HISTORY_FIELDS,
                       {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                        "CreatedBy": "CREATED BY"}):
        print(line)
    return 0


# ----- parser --------------------------------------------------------------------------
def register(sub: Any, common: argparse.ArgumentParser) -> None:
    i = sub.add_parser("import", parents=[common], help="import a rootfs tarball as a one-layer image",
                       description="Make a one-layer image from a root filesystem tarball "
                                   "(plain, gzip, xz or zstd), e.g. from mmdebstrap.")
    i.add_argument("tarball", metavar="TARBALL",
                   help="root filesystem tarball (plain, .gz, .xz or .zst)")
    i.add_argument("tag", metavar="NAME[:TAG]", help="name for the image (default tag latest)")
    i.add_argument("--platform", metavar="PLATFORM",
                   help="the platform the rootfs is for (linux/arm64); default the host's")
    i.set_defaults(func=cmd_import)

    im = sub.add_parser("images", parents=[common], help="list tagged images",
                        description="List the tagged images in the store.")
    im.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    im.set_defaults(func=cmd_images)

    ins = sub.add_parser("inspect", parents=[common], help="show an image or a container as JSON",
                         description="Print a container's state and settings (by name or ID), "
                                     "or the manifest and config of an image (by tag or ID).")
    ins.add_argument("names", nargs="+", metavar="NAME",
                     help="container name or ID; image tag, ID (or a unique prefix), or "
                          "manifest digest")
    ins.set_defaults(func=cmd_inspect)

    t = sub.add_parser("tag", parents=[common], help="add a name to an image",
                       description="Create the tag TARGET that refers to SOURCE.")
    t.add_argument("source", metavar="SOURCE", help="existing tag or image ID")
    t.add_argument("target", metavar="TARGET", help="new name[:tag]")
    t.set_defaults(func=cmd_tag)

    r = sub.add_parser("rmi", parents=[common], help="remove image tags",
                       description="Remove tags; blobs are freed by `pybuild cache prune`.")
    r.add_argument("names", nargs="+", metavar="IMAGE", help="tags to remove")
    r.set_defaults(func=cmd_rmi)

    s = sub.add_parser("save", parents=[common], help="write images to an archive",
                       description="Save images as a docker-archive (for `docker load` / "
                                   "`podman load`) or an OCI archive.")
    s.add_argument("names", nargs="+", metavar="IMAGE", help="tags or image IDs to save")
    s.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="archive to write (replaced atomically)")
    s.add_argument("--format", choices=["docker", "oci"], default="docker",
                   help="docker-archive for docker/podman load (default) or an OCI archive")
    s.add_argument("--platform", metavar="PLATFORM",
                   help="from a multi-platform tag, save this platform's image only "
                        "(linux/arm64); without it an OCI archive holds every platform and a "
                        "docker-archive the host's")
    s.set_defaults(func=cmd_save)

    ld = sub.add_parser("load", parents=[common], help="load images from a docker or OCI archive",
                        description="Load images from a docker-archive (`docker save`, "
                                    "`pybuild save`) or an OCI archive, read from a file or "
                                    "stdin, plain or compressed, as `docker load` does. Every "
                                    "blob is checked against its digest before anything is "
                                    "stored.")
    ld.add_argument("-i", "--input", metavar="FILE",
                    help="read from FILE instead of stdin")
    ld.set_defaults(func=cmd_load)

    h = sub.add_parser("history", parents=[common], help="show the history of an image",
                       description="Show each step that made an image, newest first, with the "
                                   "size of its layer (as `docker history`).")
    h.add_argument("image", metavar="IMAGE", help="tag or image ID")
    h.add_argument("--no-trunc", action="store_true", help="do not truncate IDs and commands")
    h.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    h.add_argument("-H", "--human", default=True, type=lambda v: v.lower() in ("1", "true", "yes"),
                   metavar="BOOL", help="sizes and dates in human readable form (default true)")
    h.add_argument("--format", metavar="TEMPLATE",
                   help="Go-template-like format: table, {{.ID}}, {{.CreatedSince}}, "
                        "{{.CreatedAt}}, {{.CreatedBy}}, {{.Size}}, {{.Comment}}, {{json .}}")
    h.set_defaults(func=cmd_history)
