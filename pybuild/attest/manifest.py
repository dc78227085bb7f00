"""Attestations stored as BuildKit stores them: an attestation manifest beside the image.

The tag points at an OCI index with two entries: the image manifest (with its platform) and
an attestation manifest (platform `unknown/unknown`, annotated
`vnd.docker.reference.type: attestation-manifest` and `vnd.docker.reference.digest: <image>`)
whose layers are in-toto statements (`application/vnd.in-toto+json`, annotated with their
`in-toto.io/predicate-type`). Registries, `docker buildx imagetools inspect` and clients that
do not know attestations read it as a multi-platform image with one runnable platform.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pybuild.errors import PybuildError
from pybuild.store import OCI_INDEX, OCI_MANIFEST, Descriptor, Store

IN_TOTO = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
REF_TYPE = "vnd.docker.reference.type"
REF_DIGEST = "vnd.docker.reference.digest"
ATTESTATION_MANIFEST = "attestation-manifest"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
UNKNOWN_PLATFORM = {"architecture": "unknown", "os": "unknown"}
_CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclass(frozen=True)
class Attestation:
    """One in-toto statement read back from the store."""

    predicate_type: str
    statement: dict[str, Any]
    digest: str


def platform_query(platform: dict[str, str]) -> str:
    """A platform as BuildKit's purls carry it: `linux%2Farm64` (arm64's implied v8 left out)."""
    from pybuild.platforms import normal_string

    return normal_string(platform).replace("/", "%2F")


def subject_name(ref: str, platform: dict[str, str]) -> str:
    """BuildKit's subject: `pkg:docker/<ref>?platform=linux%2Famd64`."""
    return f"pkg:docker/{ref}?platform={platform_query(platform)}"


def statement(predicate_type: str, predicate: dict[str, Any], subject: str,
              image_digest: str) -> dict[str, Any]:
    algo, _, hexdigest = image_digest.partition(":")
    return {"_type": STATEMENT_TYPE, "subject": [{"name": subject, "digest": {algo: hexdigest}}],
            "predicateType": predicate_type, "predicate": predicate}


def attestation_manifest(store: Store, image: Descriptor, statements: list[dict[str, Any]]
                         ) -> Descriptor:
    """Store the statements about `image` in an attestation manifest; its index entry."""
    layers = []
    diff_ids = []
    for st in statements:
        desc = store.put_json(st, IN_TOTO)
        layers.append(Descriptor(IN_TOTO, desc.digest, desc.size,
                                 {PREDICATE_ANNOTATION: str(st["predicateType"])}).to_dict())
        diff_ids.append(desc.digest)
    config = {"architecture": "unknown", "os": "unknown", "config": {},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_desc = store.put_json(config, _CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc.to_dict(),
                "layers": layers}
    att = store.put_json(manifest, OCI_MANIFEST)
    return Descriptor(OCI_MANIFEST, att.digest, att.size,
                      {REF_DIGEST: image.digest, REF_TYPE: ATTESTATION_MANIFEST}, UNKNOWN_PLATFORM)


def attach_all(store: Store, attested: list[tuple[Descriptor, list[dict[str, Any]]]]
               ) -> Descriptor:
    """An index of every image (with its platform) and, after them, one attestation
    manifest per image in the same order, as BuildKit's image exporter writes it."""
    images, atts = [], []
    for image, statements in attested:
        if image.platform is None:
            raise PybuildError("an attested image needs a platform in its descriptor")
        images.append(Descriptor(image.media_type, image.digest, image.size, None,
                                 image.platform).to_dict())
        atts.append(attestation_manifest(store, image, statements).to_dict())
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": images + atts}
    return store.put_json(index, OCI_INDEX)


def attach(store: Store, image: Descriptor, statements: list[dict[str, Any]]) -> Descriptor:
    """Store the statements and return an index holding the image and its attestations."""
    return attach_all(store, [(image, statements)])


def is_attestation(entry: Descriptor) -> bool:
    """An index entry that is an attestation manifest (statements, not a runnable image)."""
    return (entry.annotations or {}).get(REF_TYPE) == ATTESTATION_MANIFEST


def blobs_of(store: Store, entry: Descriptor, what: str) -> list[Descriptor]:
    """The attestation manifest `entry` and the blobs it names (config, statements), checked
    as an artifact: its layers are in-toto JSON, not filesystem tars. `what` names it in
    errors."""
    from pybuild.oci_documents import parse_manifest

    label = f"{what}: attestation manifest {entry.digest}"
    if not store.has_blob(entry.digest):
        raise PybuildError(f"{label} is missing from the store (run `pybuild doctor`)")
    doc = parse_manifest(store.read_bytes(entry.digest), label, artifact=True)
    out = [entry]
    for d in (doc.config, *doc.layers):
        if not d.digest.startswith("sha256:"):
            raise PybuildError(f"{label}: blob {d.digest[:24]}... is not sha256")
        if all(o.digest != d.digest for o in out):
            out.append(d)
    return out


def read(store: Store, index_digest: str, image_digest: str | None = None) -> list[Attestation]:
    """The statements attached to the images of an index (none for a plain manifest); with
    `image_digest`, only those of that image (its attestation manifest's reference)."""
    doc = store.read_json(index_digest)
    out: list[Attestation] = []
    for entry in doc.get("manifests") or []:
        annotations = (entry.get("annotations") or {}) if isinstance(entry, dict) else {}
        if annotations.get(REF_TYPE) != ATTESTATION_MANIFEST:
            continue
        if image_digest is not None and annotations.get(REF_DIGEST) != image_digest:
            continue
        att = store.read_json(Descriptor.from_dict(entry).digest)
        for layer in att.get("layers") or []:
            d = Descriptor.from_dict(layer)
            if d.media_type != IN_TOTO:
                continue
            with store.open_blob(d.digest) as f:
                data = f.read(64 << 20)
            st = json.loads(data)
            if not isinstance(st, dict):
                raise PybuildError(f"attestation {d.digest} is not a JSON object")
            out.append(Attestation(str(st.get("predicateType", "")), st, d.digest))
    return out
