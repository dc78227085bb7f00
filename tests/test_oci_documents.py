"""Root-free checks of the document layer (pybuild/oci_documents.py) and the transport
limits (pybuild/transport.py); the hostile registry tests drive them end to end."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hostile_registry import make_image, sha256, sha512

from pybuild import image, oci_documents
from pybuild.errors import PybuildError
from pybuild.oci_documents import DocumentError
from pybuild.registry import _ProgressReader, _ShortBlob
from pybuild.store import Store
from pybuild.transport import Limits, Pace, TransferError


def test_documents_pybuild_writes_are_valid(tmp_path: Any) -> None:
    store = Store(tmp_path / "store")
    desc = image.write(store, image.empty_config(), [])
    m = oci_documents.parse_manifest(store.read_bytes(desc.digest), "m")
    assert m.layers == ()
    c = oci_documents.parse_config(store.read_bytes(m.config.digest), "c")
    assert c.platform is not None and c.platform["os"] == "linux"
    img = make_image()
    parsed = oci_documents.parse_document(img.manifest, "m")
    assert isinstance(parsed, oci_documents.Manifest)
    assert parsed.layers[0].digest == sha256(img.layer)


@pytest.mark.parametrize("digest,fragment", [
    ("sha256:" + "a" * 64, None),
    ("sha512:" + "b" * 128, None),
    ("sha256:" + "a" * 63, "is not a sha256 digest"),
    ("sha512:" + "b" * 64, "is not a sha512 digest"),
    ("sha256:" + "A" * 64, "is not a sha256 digest"),
    ("md5:" + "0" * 32, "unsupported digest algorithm 'md5'"),
    ("sha256:/etc/passwd", "is not a digest"),
    ("sha256:../../x", "is not a digest"),
    ("", "is not a digest"),
    (5, "must be a string, not a number"),
])
def test_check_digest(digest: Any, fragment: str | None) -> None:
    if fragment is None:
        assert oci_documents.check_digest(digest) == digest
        assert oci_documents.hasher(digest).name == digest.split(":")[0]
    else:
        with pytest.raises(DocumentError, match=fragment):
            oci_documents.check_digest(digest)


def test_digest_of_uses_the_algorithm_given() -> None:
    assert oci_documents.digest_of(b"x", "sha512:whatever") == sha512(b"x")
    assert oci_documents.digest_of(b"x") == sha256(b"x")


def test_documents_are_errors_not_exceptions_of_python() -> None:
    """Every JSON value in every field is either accepted or a DocumentError."""
    values: list[Any] = [None, True, 0, -1, 1 << 70, 1.5, "", "x", [], [1], {}, {"a": 1},
                         "sha256:" + "0" * 64, ["sha256:" + "0" * 64], {"os": "linux"}]
    img = make_image()
    base_manifest = json.loads(img.manifest)
    base_config = json.loads(img.config)
    for value in values:
        for key in ("schemaVersion", "mediaType", "config", "layers"):
            doc = dict(base_manifest, **{key: value})
            try:
                oci_documents.parse_manifest(json.dumps(doc).encode(), "m")
            except DocumentError:
                pass
        for key in ("mediaType", "digest", "size", "annotations", "platform", "urls"):
            layer = dict(base_manifest["layers"][0], **{key: value})
            try:
                oci_documents.parse_manifest(
                    json.dumps(dict(base_manifest, layers=[layer])).encode(), "m")
            except DocumentError:
                pass
            try:
                oci_documents.parse_index(json.dumps(
                    {"schemaVersion": 2, "manifests": [layer]}).encode(), "i")
            except DocumentError:
                pass
        for key in ("os", "architecture", "variant", "config", "rootfs", "history", "created"):
            try:
                oci_documents.parse_config(json.dumps(dict(base_config, **{key: value})).encode(),
                                           "c")
            except DocumentError:
                pass
        for key in ("Env", "Cmd", "Entrypoint", "User", "WorkingDir", "Labels", "ExposedPorts",
                    "Volumes", "Healthcheck", "OnBuild", "Shell", "StopSignal"):
            try:
                oci_documents.parse_config(json.dumps(dict(
                    base_config, config={key: value})).encode(), "c")
            except DocumentError:
                pass


def test_nesting_bomb_is_a_document_error() -> None:
    with pytest.raises(DocumentError, match="is not valid JSON"):
        oci_documents.parse_manifest(b"[" * 100000 + b"]" * 100000, "m")


def test_limits_from_env() -> None:
    limits = Limits.from_env({"PYBUILD_REGISTRY_MIN_RATE": "0", "PYBUILD_REGISTRY_DEADLINE": "5",
                              "PYBUILD_REGISTRY_TIMEOUT": "7"})
    assert (limits.min_rate, limits.deadline, limits.read_timeout) == (0.0, 5.0, 7.0)
    assert Limits.from_env({}) == Limits()
    for name, raw in [("PYBUILD_REGISTRY_TIMEOUT", "0"), ("PYBUILD_REGISTRY_DEADLINE", "-1"),
                      ("PYBUILD_REGISTRY_MIN_RATE", "nan"), ("PYBUILD_REGISTRY_RATE_WINDOW", "x"),
                      ("PYBUILD_REGISTRY_DEADLINE", "inf")]:
        with pytest.raises(PybuildError, match=f"{name}="):
            Limits.from_env({name: raw})


def test_pace_minimum_rate_and_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("pybuild.transport.time.monotonic", lambda: now[0])
    pace = Pace(Limits(min_rate=100, rate_window=10, deadline=50), "blob x")
    for _ in range(4):
        now[0] += 5
        pace.check(600)  # 120 B/s: fine
    now[0] += 10
    with pytest.raises(TransferError, match=r"blob x arrived at 50 B/s for 10 s, below the "
                                            r"minimum of 100 B/s"):
        pace.check(500)
    pace = Pace(Limits(min_rate=0, deadline=50), "blob y")
    now[0] += 51
    with pytest.raises(TransferError, match="blob y did not finish within 50 s"):
        pace.check(1)


def test_a_body_never_ends_short_of_its_length() -> None:
    """The push body raises instead of ending early (which would leave the registry waiting
    for bytes that never come), and never sends more than its length either."""
    seen: list[int] = []
    reader = _ProgressReader(io.BytesIO(b"x" * 10), 20, seen.append, "blob b")
    assert reader.read(8) == b"x" * 8
    assert reader.read() == b"xx"
    with pytest.raises(_ShortBlob, match="blob b ended after 10 of its 20 bytes"):
        reader.read(8)
    reader = _ProgressReader(io.BytesIO(b"y" * 30), 20, seen.append)
    assert reader.read() == b"y" * 20
    assert reader.read() == b""
