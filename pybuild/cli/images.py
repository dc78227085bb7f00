"""Image commands: import, images, inspect, tag, rmi, save."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from pybuild.cli.common import open_store, table, unpack_for_builds, writing_image
from pybuild.errors import PybuildError
from pybuild.units import human_size


def cmd_import(args: argparse.Namespace) -> int:
    from pybuild import image
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

    from pybuild.platforms import normal_string

    store = open_store(args)
    rows = []
    multi = False
    for name in sorted(store.list_tags()):
        img = image.load(store, name)
        repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
        size = sum(d.size for d in img.layers)
        image_id = img.config_desc.digest
        top = store.resolve_tag(name)
        plats = normal_string(img.manifest_desc.platform or {
            k: img.config[k] for k in ("os", "architecture", "variant") if img.config.get(k)})
        if top is not None and image.is_index(store, top):
            # a multi-platform tag: its ID is the index digest (as docker's containerd store
            # shows it), every platform listed; the size is this machine's image
            multi = True
            image_id = top.digest
            plats = ",".join(normal_string(e.platform or {})
                             for e in image.index_entries(store, top))
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
    from pybuild import image

    from pybuild.platforms import parse_platform

    store = open_store(args)
    plat = parse_platform(args.platform) if args.platform else None
    for n in args.names:
        image.load(store, n, plat)  # a clear error before anything is written
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    try:
        if args.format == "oci":
            image.save_oci_archive(store, args.names, tmp, plat)
        else:
            image.save_docker_archive(store, args.names, tmp, plat)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
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
