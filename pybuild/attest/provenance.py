"""SLSA v1 build provenance for a pybuild image (the predicate of an in-toto statement).

What goes in follows BuildKit's modes (docs.docker.com, "Provenance attestations"):
`min` has the build type, the Dockerfile's path and digest, the frontend, the resolved base
images with their digests, the platform and the times — never build-arg values. `max` adds
the build-arg values, the Dockerfile itself (base64) and which step made which layer.
Secrets never appear in either: only their ids are known here, and only `max` lists them.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from pybuild import __version__

PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:pybuild:buildtype:dockerfile:v1"
MODES = ("min", "max")


@dataclass(frozen=True)
class Material:
    """Something the build consumed with an immutable digest: a base image, a download."""

    uri: str       # "pkg:docker/busybox@latest?platform=linux%2Famd64", "https://…"
    digest: str    # "sha256:…"


@dataclass(frozen=True)
class LayerStep:
    """Which Dockerfile step produced a layer (max mode)."""

    step: str          # "[2/4] RUN make"
    line: int
    layer_digest: str
    media_type: str
    size: int


@dataclass
class BuildFacts:
    """What the solver knows about a finished build, for provenance."""

    dockerfile_path: str
    dockerfile_bytes: bytes
    platform: str                       # "linux/amd64"
    started: str                        # RFC 3339
    finished: str
    target: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    secret_ids: list[str] = field(default_factory=list)
    materials: list[Material] = field(default_factory=list)
    layers: list[LayerStep] = field(default_factory=list)
    no_cache: bool = False


def _digest_map(digest: str) -> dict[str, str]:
    algo, _, hexdigest = digest.partition(":")
    return {algo: hexdigest}


def predicate(facts: BuildFacts, mode: str = "min") -> dict[str, Any]:
    """The SLSA v1 provenance predicate for one build."""
    if mode not in MODES:
        raise ValueError(f"provenance mode must be min or max, not {mode!r}")
    args: dict[str, str] = {}
    if facts.target:
        args["target"] = facts.target
    if facts.no_cache:
        args["no-cache"] = ""
    if mode == "max":
        args.update({f"build-arg:{k}": v for k, v in sorted(facts.build_args.items())})
    request: dict[str, Any] = {
        "frontend": "dockerfile.v0",
        "args": args,
        "locals": [{"name": "context"}, {"name": "dockerfile"}],
    }
    if mode == "max" and facts.secret_ids:
        request["secrets"] = [{"id": s} for s in sorted(facts.secret_ids)]
    dockerfile_digest = "sha256:" + hashlib.sha256(facts.dockerfile_bytes).hexdigest()
    build_definition: dict[str, Any] = {
        "buildType": BUILD_TYPE,
        "externalParameters": {
            "configSource": {"path": facts.dockerfile_path,
                             "digest": _digest_map(dockerfile_digest)},
            "request": request,
        },
        "internalParameters": {"builderPlatform": facts.platform},
        "resolvedDependencies": [
            {"uri": m.uri, "digest": _digest_map(m.digest)}
            for m in sorted(set(facts.materials), key=lambda m: (m.uri, m.digest))],
    }
    # one id per build, reproducible from what the build was (not a random number)
    invocation = uuid.uuid5(uuid.NAMESPACE_URL, f"{dockerfile_digest} {facts.started} {facts.platform}")
    run_details: dict[str, Any] = {
        "builder": {"id": f"urn:pybuild:builder:{__version__}",
                    "version": {"pybuild": __version__}},
        "metadata": {"invocationId": str(invocation), "startedOn": facts.started,
                     "finishedOn": facts.finished},
    }
    if mode == "max":
        run_details["byproducts"] = [
            {"name": facts.dockerfile_path, "mediaType": "text/plain",
             "content": base64.b64encode(facts.dockerfile_bytes).decode(),
             "digest": _digest_map(dockerfile_digest)},
            *({"name": f"layer {i} from line {ls.line}: {ls.step}", "mediaType": ls.media_type,
               "digest": _digest_map(ls.layer_digest),
               "annotations": {"size": str(ls.size)}}
              for i, ls in enumerate(facts.layers)),
        ]
    return {"buildDefinition": build_definition, "runDetails": run_details}
