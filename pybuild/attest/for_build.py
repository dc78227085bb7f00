"""Attestations of a finished build (`pybuild build --sbom / --provenance`).

The image manifest is left as it is (its digest and the image ID do not change); the tags
move to an index holding it and its attestation manifest, as BuildKit does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pybuild.attest import manifest, provenance, sbom
from pybuild.errors import PybuildError
from pybuild.store import Descriptor, Store


@dataclass(frozen=True)
class AttestOptions:
    """What --sbom and --provenance asked for."""

    sbom: bool = False
    provenance: str | None = None  # None, "min" or "max"

    @property
    def wanted(self) -> bool:
        return self.sbom or self.provenance is not None


def parse_sbom(value: str | None) -> bool:
    """`--sbom=true|false` (buildx's shorthand; `--sbom` alone means true)."""
    if value is None:
        return False
    v = value.strip().lower()
    if v in ("", "true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise PybuildError(f"invalid --sbom value {value!r}: expected true or false")


def parse_provenance(value: str | None) -> str | None:
    """`--provenance=true|false|mode=min|mode=max` (buildx's spellings) → None, min or max."""
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("", "true", "1"):
        return "min"
    if v in ("false", "0"):
        return None
    mode = "min"
    for part in v.split(","):
        key, _, val = part.partition("=")
        if key == "mode" and val in provenance.MODES:
            mode = val
        elif key == "version" and val == "v1":
            continue
        else:
            raise PybuildError(f"invalid --provenance value {value!r}: expected true, false, "
                               "mode=min or mode=max (version=v1)")
    return mode


def attest(store: Store, image_manifest: Descriptor, tags: list[str], options: AttestOptions,
           facts: provenance.BuildFacts) -> Descriptor:
    """Write the wanted statements and an index; point every tag at it; return the index."""
    from pybuild import image as imagemod

    img = imagemod.load(store, image_manifest.digest)
    platform = image_manifest.platform or {"architecture": img.config.get("architecture", ""),
                                           "os": img.config.get("os", "")}
    desc = Descriptor(image_manifest.media_type, image_manifest.digest, image_manifest.size,
                      None, platform)
    name = tags[0] if tags else image_manifest.digest
    subject = manifest.subject_name(name, platform)
    statements: list[dict[str, Any]] = []
    if options.sbom:
        doc = sbom.for_image(store, img, name)
        statements.append(manifest.statement(sbom.PREDICATE_TYPE, doc, subject, desc.digest))
    if options.provenance is not None:
        pred = provenance.predicate(facts, options.provenance)
        statements.append(manifest.statement(provenance.PREDICATE_TYPE, pred, subject, desc.digest))
    index = manifest.attach(store, desc, statements)
    with store.lock():
        for t in tags:
            store.set_tag(t, index)
    return index
