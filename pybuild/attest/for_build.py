"""Attestations of a finished build (`pybuild build --sbom / --provenance`).

The image manifest is left as it is (its digest and the image ID do not change); the tags
move to an index holding it and its attestation manifest, as BuildKit does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pybuild.errors import PybuildError
from pybuild.store import Descriptor, Store

if TYPE_CHECKING:
    from pybuild.attest import provenance

# The attestation modules are imported by what makes attestations: a build that asks for
# none (most builds, every warm one) only parses the flags here.


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
    from pybuild.attest import provenance
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


def now() -> str:
    """The current time as provenance records it (RFC 3339, UTC, whole seconds)."""
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_purl(ref: str, plat: dict[str, str]) -> str:
    """BuildKit's material name for a base image: pkg:docker/busybox@latest?platform=…"""
    from pybuild.attest import manifest
    from pybuild.reference import parse_reference

    r = parse_reference(ref)
    version = r.tag or r.digest or "latest"
    return f"pkg:docker/{r.familiar_name}@{version}?platform={manifest.platform_query(plat)}"


def build_facts(opts: Any, result: Any, img: Any, platform: dict[str, str], started: str
                ) -> provenance.BuildFacts:
    """What provenance says about one platform's image of a finished build (`opts` its
    BuildOptions, `result` that platform's BuildResult, `img` its loaded image)."""
    from pybuild.attest import provenance

    from pybuild.platforms import host_platform

    host = host_platform()
    made = [h.get("created_by", "") for h in img.config.get("history") or []
            if not h.get("empty_layer")]
    layers = [provenance.LayerStep(step, 0, d.digest, d.media_type, d.size)
              for step, d in zip(made, img.layers, strict=False)]
    return provenance.BuildFacts(
        dockerfile_path=opts.dockerfile_name, dockerfile_bytes=opts.dockerfile.read_bytes(),
        platform=f"{host['os']}/{host['architecture']}", started=started, finished=now(),
        target=opts.target, build_args=dict(opts.build_args), secret_ids=sorted(opts.secrets),
        materials=[provenance.Material(image_purl(ref, platform), digest)
                   for ref, digest in result.materials],
        layers=layers, no_cache=opts.no_cache)


def attest_build(store: Store, opts: Any, result: Any, options: AttestOptions, started: str
                 ) -> Descriptor:
    """--sbom / --provenance for a finished build: statements about each platform's image,
    one attestation manifest per image, all in an index every tag then points at.

    The image manifests are left as they are (same digests, same image IDs)."""
    from pybuild import image as imagemod
    from pybuild.attest import manifest, provenance, sbom

    per_platform = list(result.platforms) or [result]
    attested: list[tuple[Descriptor, list[dict[str, Any]]]] = []
    name = result.tags[0] if result.tags else None
    for r in per_platform:
        img = imagemod.load(store, r.manifest.digest)
        platform = r.manifest.platform or {"architecture": img.config.get("architecture", ""),
                                           "os": img.config.get("os", "")}
        desc = Descriptor(r.manifest.media_type, r.manifest.digest, r.manifest.size, None,
                          platform)
        subject = manifest.subject_name(name or desc.digest, platform)
        statements: list[dict[str, Any]] = []
        if options.sbom:
            doc = sbom.for_image(store, img, name or desc.digest)
            statements.append(manifest.statement(sbom.PREDICATE_TYPE, doc, subject, desc.digest))
        if options.provenance is not None:
            pred = provenance.predicate(build_facts(opts, r, img, platform, started),
                                        options.provenance)
            statements.append(manifest.statement(provenance.PREDICATE_TYPE, pred, subject,
                                                 desc.digest))
        attested.append((desc, statements))
    index = manifest.attach_all(store, attested)
    with store.lock():
        for t in result.tags:
            store.set_tag(t, index)
    return index
