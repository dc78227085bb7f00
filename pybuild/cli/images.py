"""Image commands: import, images, inspect, tag, rmi, save."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pybuild.cli.common import human, open_store, table, unpack_for_builds
from pybuild.errors import PybuildError


def cmd_import(args: argparse.Namespace) -> int:
    from pybuild import image
    from pybuild.reference import parse_reference

    src = Path(args.tarball)
    if not src.is_file():
        raise PybuildError(f"{args.tarball}: no such file")
    store = open_store(args)
    desc = image.import_rootfs(store, src, parse_reference(args.tag).familiar)
    unpack_for_builds(store, desc.digest)
    print(store.read_json(desc.digest)["config"]["digest"])
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from pybuild import image

    store = open_store(args)
    rows = []
    for name in sorted(store.list_tags()):
        img = image.load(store, name)
        repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
        size = sum(d.size for d in img.layers)
        rows.append((repo, tag, img.config_desc.digest.split(":")[1][:12],
                     img.config.get("created", "")[:19].replace("T", " "), human(size)))
    if args.quiet:
        for r in rows:
            print(r[2])
        return 0
    table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pybuild import image

    store = open_store(args)
    out = []
    for name in args.names:
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

    store = open_store(args)
    for n in args.names:
        image.load(store, n)  # a clear error before anything is written
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if args.format == "oci":
            image.save_oci_archive(store, args.names, tmp)
        else:
            image.save_docker_archive(store, args.names, tmp)
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
    i.set_defaults(func=cmd_import)

    im = sub.add_parser("images", parents=[common], help="list tagged images",
                        description="List the tagged images in the store.")
    im.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    im.set_defaults(func=cmd_images)

    ins = sub.add_parser("inspect", parents=[common], help="show an image as JSON",
                         description="Print the manifest and config of images (by tag or ID).")
    ins.add_argument("names", nargs="+", metavar="IMAGE",
                     help="tag, image ID (or a unique prefix), or manifest digest")
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
    s.set_defaults(func=cmd_save)
