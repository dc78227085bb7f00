"""`pybuild sbom`: the software bill of materials of an image."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pybuild.cli.common import open_store, table


def _sbom(args: argparse.Namespace) -> int:
    from pybuild import image
    from pybuild.attest import manifest, sbom

    from pybuild.platforms import parse_platform

    store = open_store(args)
    img = image.load(store, args.image, parse_platform(args.platform) if args.platform else None)
    doc: dict[str, Any] | None = None
    tag = None if args.image.startswith("sha256:") else store.resolve_tag(args.image)
    if tag is not None and tag.digest != img.manifest_desc.digest:
        for att in manifest.read(store, tag.digest, img.manifest_desc.digest):
            if att.predicate_type == sbom.PREDICATE_TYPE and isinstance(att.statement.get("predicate"), dict):
                doc = att.statement["predicate"]
                break
    if doc is None:
        if args.require_attestation:
            print(f"{args.image} has no SBOM attestation (build it with --sbom=true)", file=sys.stderr)
            return 1
        doc = sbom.for_image(store, img, args.image)
    if args.format == "spdx-json":
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        table(["NAME", "VERSION", "TYPE", "PURL"], sbom.table(doc))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "sbom", parents=[common], help="list the software in an image (SPDX 2.3)",
        description="Print the SBOM of an image: its SBOM attestation when it was built with "
                    "--sbom=true, otherwise one read now from the image's package databases "
                    "(dpkg, apk, Python dist-info) in its layers.")
    s.add_argument("image", metavar="IMAGE", help="image name or ID")
    s.add_argument("--format", choices=["table", "spdx-json"], default="table",
                   help="table (default) or the SPDX 2.3 JSON document")
    s.add_argument("--platform", metavar="PLATFORM",
                   help="the image of this platform of a multi-platform tag (default: this "
                        "host's)")
    s.add_argument("--require-attestation", action="store_true",
                   help="fail unless the image carries an SBOM attestation")
    s.set_defaults(func=_sbom)
