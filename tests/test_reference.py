"""Reference normalisation must agree with docker's, or tags and pulls disagree with users."""

from __future__ import annotations

import pytest

from pybuild.errors import PybuildError
from pybuild.reference import parse_reference

D64 = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest, familiar", [
    ("busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "busybox:1.36"),
    ("library/busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("docker.io/library/busybox:x", "docker.io", "library/busybox", "x", None, "busybox:x"),
    ("index.docker.io/foo/bar", "docker.io", "foo/bar", "latest", None, "foo/bar:latest"),
    ("foo/bar", "docker.io", "foo/bar", "latest", None, "foo/bar:latest"),
    ("localhost/x", "localhost", "x", "latest", None, "localhost/x:latest"),
    ("localhost:5000/app:1.0", "localhost:5000", "app", "1.0", None, "localhost:5000/app:1.0"),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000", "a/b/c", "latest", None, "127.0.0.1:5000/a/b/c:latest"),
    ("ghcr.io/o/r@" + D64, "ghcr.io", "o/r", None, D64, "ghcr.io/o/r@" + D64),
    ("busybox:1@" + D64, "docker.io", "library/busybox", "1", D64, "busybox:1@" + D64),
    ("Registry/app", "Registry", "app", "latest", None, "Registry/app:latest"),
    # no slash: "localhost:5000" is the repository localhost with tag 5000, as in docker
    ("localhost:5000", "docker.io", "library/localhost", "5000", None, "localhost:5000"),
    ("a__b/c-d---e_f.g", "docker.io", "a__b/c-d---e_f.g", "latest", None, "a__b/c-d---e_f.g:latest"),
])
def test_normalises_like_docker(text: str, registry: str, repository: str, tag: str | None,
                                digest: str | None, familiar: str) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.familiar == familiar
    assert ref.name == repository
    assert parse_reference(ref.canonical) == ref  # the canonical form round-trips


def test_api_fields() -> None:
    hub = parse_reference("busybox")
    assert hub.canonical == "docker.io/library/busybox:latest"
    assert hub.api_host == "registry-1.docker.io"
    assert hub.ref == "latest"
    local = parse_reference("127.0.0.1:5000/app@" + D64)
    assert local.api_host == "127.0.0.1:5000"
    assert local.ref == D64


@pytest.mark.parametrize("text, message", [
    ("", "invalid reference format"),
    ("Busybox", "must be lowercase"),
    ("docker.io/Library/busybox", "must be lowercase"),
    ("ab" * 32, "cannot specify 64-byte hexadecimal strings"),
    ("busybox:", "invalid reference format"),
    ("a::b", "invalid reference format"),
    ("-x", "invalid reference format"),
    ("a/b/", "invalid reference format"),
    ("x:tag with space", "invalid reference format"),
    ("x:" + "t" * 129, "invalid reference format"),
    ("busybox@sha256:abc", "invalid reference format"),
    ("busybox@sha256:" + "AB" * 32, "invalid reference format"),
    ("a/" + "b" * 260, "must not be more than 255 characters"),
])
def test_invalid_references(text: str, message: str) -> None:
    with pytest.raises(PybuildError, match=message):
        parse_reference(text)
