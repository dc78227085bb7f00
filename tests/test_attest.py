"""SBOM and provenance generation, root-free: synthetic layers in, validated documents out.

The SPDX document is checked by spdx-tools (the SPDX project's own parser and validator,
SPDX 2.3 rules); the provenance predicate by the in-toto attestation bindings' SLSA v1
protobuf schema (unknown fields and wrong types are errors) and their Statement validator.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable
from typing import BinaryIO

import pytest

from pybuild.attest import image_files, provenance, sbom
from pybuild.attest.manifest import attach, read, statement, subject_name
from pybuild.store import Store

DPKG_STATUS = b"""Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.
Homepage: https://www.gnu.org/software/libc/libc.html

Package: python3.11
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u1
Maintainer: Matthias Klose <doko@debian.org>

Package: removed-pkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: epoch-pkg
Status: install ok installed
Architecture: all
Version: 1:2.0-1
"""

OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'

APK_DB = b"""C:Q1abc=
P:musl
V:1.2.4-r2
A:x86_64
L:MIT
o:musl
m:Timo Teras <timo.teras@iki.fi>

P:busybox-binsh
V:1.36.1-r15
A:x86_64
o:busybox
"""


def metadata(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: x\n\nbody\n".encode()


Entry = tuple[str, bytes | None, str]  # name, data (None: directory), kind ("file", "dir", "link:T", "sym:T")


def layer(entries: list[Entry], compress: bool = True) -> Callable[[], BinaryIO]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in entries:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif kind.startswith("link:"):
                ti.type = tarfile.LNKTYPE
                ti.linkname = kind[5:]
                tar.addfile(ti)
            elif kind.startswith("sym:"):
                ti.type = tarfile.SYMTYPE
                ti.linkname = kind[4:]
                tar.addfile(ti)
            else:
                payload = data or b""
                ti.size = len(payload)
                tar.addfile(ti, io.BytesIO(payload))
    raw = buf.getvalue()
    blob = gzip.compress(raw, mtime=0) if compress else raw
    return lambda: io.BytesIO(blob)


def f(name: str, data: bytes) -> Entry:
    return (name, data, "file")


# ---- reading the flattened filesystem from layers -----------------------------------

def test_later_layers_hide_earlier_files() -> None:
    base = layer([f("etc/os-release", OS_RELEASE), f("var/lib/dpkg/status", b"old"),
                  f("usr/lib/python3/dist-packages/a.dist-info/METADATA", metadata("a", "1")),
                  f("usr/lib/python3/dist-packages/b.dist-info/METADATA", metadata("b", "1")),
                  f("opt/venv/lib/c.dist-info/METADATA", metadata("c", "1"))])
    top = layer([f("var/lib/dpkg/status", DPKG_STATUS),  # replaced
                 (".wh.usr", None, "file") if False else ("usr/lib/python3/dist-packages/.wh.a.dist-info", b"", "file"),
                 ("opt/venv/.wh..wh..opq", b"", "file"),  # opaque: lower venv content gone
                 f("opt/venv/lib/d.dist-info/METADATA", metadata("d", "2"))], compress=False)
    files = image_files.read_files([base, top], sbom.wanted)
    assert files["var/lib/dpkg/status"] == DPKG_STATUS
    assert sorted(p for p in files if "dist-info" in p) == [
        "opt/venv/lib/d.dist-info/METADATA", "usr/lib/python3/dist-packages/b.dist-info/METADATA"]


def test_a_file_replacing_a_directory_hides_its_tree_and_links_resolve() -> None:
    base = layer([f("srv/pkgs/x.dist-info/METADATA", metadata("x", "1")),
                  f("lib/apk/db/installed", APK_DB)])
    top = layer([f("srv/pkgs", b"now a file"),
                 ("lib/y.dist-info/METADATA", None, "link:lib/apk/db/installed"),
                 ("./../../escape/z.dist-info/METADATA", b"Name: z\nVersion: 9\n", "file")])
    files = image_files.read_files([base, top], sbom.wanted)
    assert "srv/pkgs/x.dist-info/METADATA" not in files
    assert files["lib/y.dist-info/METADATA"] == APK_DB
    # a climbing name is data, clamped at the image's root, never a host path
    assert files["escape/z.dist-info/METADATA"].startswith(b"Name: z")


def test_a_non_tar_layer_is_one_clear_error() -> None:
    from pybuild.errors import PybuildError

    with pytest.raises(PybuildError, match="cannot be read as a tar stream"):
        image_files.read_files([lambda: io.BytesIO(gzip.compress(b"x" * 1000))], sbom.wanted)


# ---- SBOM ---------------------------------------------------------------------------

def image_files_for_sbom() -> dict[str, bytes]:
    return {
        "etc/os-release": OS_RELEASE,
        "var/lib/dpkg/status": DPKG_STATUS,
        "lib/apk/db/installed": APK_DB,
        "opt/venv/lib/python3.11/site-packages/Django-5.2.1.dist-info/METADATA":
            metadata("Django", "5.2.1"),
        "opt/venv/lib/python3.11/site-packages/zope_interface-6.0.dist-info/METADATA":
            metadata("zope.interface", "6.0"),
        "usr/lib/python3/dist-packages/old.egg-info/PKG-INFO": metadata("Old_Thing", "0.1"),
    }


def test_packages_with_purls() -> None:
    pkgs = {(p.kind, p.name): p for p in sbom.packages(image_files_for_sbom())}
    assert pkgs["deb", "libc6"].purl == \
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc"
    assert pkgs["deb", "epoch-pkg"].purl == "pkg:deb/debian/epoch-pkg@1%3A2.0-1?arch=all&distro=debian-12"
    assert ("deb", "removed-pkg") not in pkgs  # deinstalled: not in the image's software
    assert pkgs["apk", "busybox-binsh"].purl == \
        "pkg:apk/debian/busybox-binsh@1.36.1-r15?arch=x86_64&distro=debian-12&upstream=busybox"
    assert pkgs["pypi", "Django"].purl == "pkg:pypi/django@5.2.1"
    assert pkgs["pypi", "zope.interface"].purl == "pkg:pypi/zope-interface@6.0"
    assert pkgs["pypi", "Old_Thing"].purl == "pkg:pypi/old-thing@0.1"


def spdx_validate(doc: dict[str, object]) -> list[str]:
    spdx_parser = pytest.importorskip("spdx_tools.spdx.parser.json.json_parser",
                                      reason="spdx-tools is not installed (pip install spdx-tools)")
    from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    assert spdx_parser  # the module exists; parse the dict as the JSON parser would
    document = JsonLikeDictParser().parse(json.loads(json.dumps(doc)))
    return [m.validation_message for m in validate_full_spdx_document(document, "SPDX-2.3")]


def test_sbom_is_valid_spdx_2_3_and_deterministic() -> None:
    files = image_files_for_sbom()
    doc = sbom.document(files, image_name="localhost:5000/app:1", image_digest="sha256:" + "ab" * 32,
                        created="2026-12-01T10:11:12.123456Z")
    assert spdx_validate(doc) == []
    assert doc["creationInfo"]["created"] == "2026-12-01T10:11:12Z"
    names = [p["name"] for p in doc["packages"]]
    assert "Django" in names and "libc6" in names and "python3.11" in names
    contains = [r for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert len(contains) == len(doc["packages"]) - 1
    again = sbom.document(dict(reversed(list(files.items()))), image_name="localhost:5000/app:1",
                          image_digest="sha256:" + "ab" * 32, created="2026-12-01T10:11:12.123456Z")
    assert json.dumps(again, sort_keys=True) == json.dumps(doc, sort_keys=True)


def test_sbom_of_an_image_without_package_databases_is_still_valid() -> None:
    doc = sbom.document({}, image_name="scratchy", image_digest="sha256:" + "cd" * 32,
                        created="2026-12-01T10:11:12Z")
    assert spdx_validate(doc) == []
    assert [p["SPDXID"] for p in doc["packages"]] == ["SPDXRef-Image"]


# ---- provenance -------------------------------------------------------------------

def facts() -> provenance.BuildFacts:
    return provenance.BuildFacts(
        dockerfile_path="Dockerfile", dockerfile_bytes=b"FROM busybox\nARG TOKEN\nRUN true\n",
        platform="linux/amd64", started="2026-12-01T10:00:00Z", finished="2026-12-01T10:00:05Z",
        target="app", build_args={"TOKEN": "s3cr3t-value", "VERSION": "1"}, secret_ids=["pip"],
        materials=[provenance.Material("pkg:docker/busybox@latest?platform=linux%2Famd64",
                                       "sha256:" + "11" * 32)],
        layers=[provenance.LayerStep("[2/2] RUN true", 3, "sha256:" + "22" * 32,
                                     "application/vnd.oci.image.layer.v1.tar+gzip", 99)])


def slsa_validate(pred: dict[str, object]) -> None:
    pb = pytest.importorskip("in_toto_attestation.predicates.provenance.v1.provenance_pb2",
                             reason="in-toto-attestation is not installed")
    from google.protobuf import json_format
    from in_toto_attestation.v1.statement import Statement

    msg = json_format.ParseDict(pred, pb.Provenance())  # unknown fields or wrong types raise
    assert msg.build_definition.build_type and msg.run_details.builder.id
    st = statement(provenance.PREDICATE_TYPE, pred,
                   subject_name("localhost:5000/app:1", {"os": "linux", "architecture": "amd64"}),
                   "sha256:" + "33" * 32)
    from google.protobuf.struct_pb2 import Struct  # noqa: F401  (the statement's predicate type)

    stmt_pb = json_format.ParseDict(st, Statement([], "", {}).pb)
    Statement.copy_from_pb(stmt_pb).validate()


@pytest.mark.parametrize("mode", ["min", "max"])
def test_provenance_is_valid_slsa_v1(mode: str) -> None:
    pred = provenance.predicate(facts(), mode)
    slsa_validate(pred)
    deps = pred["buildDefinition"]["resolvedDependencies"]
    assert deps == [{"uri": "pkg:docker/busybox@latest?platform=linux%2Famd64",
                     "digest": {"sha256": "11" * 32}}]


def test_min_mode_never_holds_build_arg_values_or_secret_ids() -> None:
    text = json.dumps(provenance.predicate(facts(), "min"))
    assert "s3cr3t-value" not in text and "TOKEN" not in text and "pip" not in text
    full = provenance.predicate(facts(), "max")
    req = full["buildDefinition"]["externalParameters"]["request"]
    assert req["args"]["build-arg:TOKEN"] == "s3cr3t-value"  # max: as BuildKit, values shown
    assert req["secrets"] == [{"id": "pip"}]
    assert "FROM busybox" not in json.dumps(full)  # the Dockerfile travels base64-encoded
    assert any(b["name"] == "Dockerfile" for b in full["runDetails"]["byproducts"])


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="min or max"):
        provenance.predicate(facts(), "full")


# ---- attestation manifest in the store ---------------------------------------------

def test_attach_and_read_back(tmp_path: object) -> None:
    from pathlib import Path

    store = Store(Path(str(tmp_path)) / "store")
    config = store.put_json({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                                                                             "diff_ids": []}},
                            "application/vnd.oci.image.config.v1+json")
    from pybuild.store import OCI_MANIFEST, Descriptor

    m = store.put_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_dict(),
                        "layers": []}, OCI_MANIFEST)
    img = Descriptor(m.media_type, m.digest, m.size, None, {"architecture": "amd64", "os": "linux"})
    subj = subject_name("app:1", img.platform or {})
    st1 = statement(sbom.PREDICATE_TYPE, {"spdxVersion": "SPDX-2.3"}, subj, img.digest)
    st2 = statement(provenance.PREDICATE_TYPE, provenance.predicate(facts()), subj, img.digest)
    index = attach(store, img, [st1, st2])
    doc = store.read_json(index.digest)
    assert [e["platform"] for e in doc["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "unknown", "os": "unknown"}]
    assert doc["manifests"][1]["annotations"] == {
        "vnd.docker.reference.digest": img.digest,
        "vnd.docker.reference.type": "attestation-manifest"}
    got = read(store, index.digest)
    assert [a.predicate_type for a in got] == [sbom.PREDICATE_TYPE, provenance.PREDICATE_TYPE]
    assert got[0].statement["subject"][0]["digest"] == {"sha256": img.digest.split(":")[1]}
    # the image loads from the index as before: the attestation entry is not runnable
    from pybuild import image as imagemod

    store.set_tag("app:1", index)
    assert imagemod.load(store, "app:1").manifest_desc.digest == img.digest


def test_attach_all_orders_images_then_their_attestations(tmp_path: object) -> None:
    """Several platforms: images first, then one attestation manifest per image in the
    same order, each referencing its own image; read() filters by that reference; an
    attestation manifest is read as an artifact and its blobs checked (blobs_of)."""
    from pathlib import Path

    from pybuild.attest.manifest import attach_all, blobs_of, is_attestation
    from pybuild.errors import PybuildError
    from pybuild.store import OCI_MANIFEST, Descriptor

    store = Store(Path(str(tmp_path)) / "store")
    images = []
    for arch in ("amd64", "arm64"):
        config = store.put_json({"architecture": arch, "os": "linux",
                                 "rootfs": {"type": "layers", "diff_ids": []}},
                                "application/vnd.oci.image.config.v1+json")
        m = store.put_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                            "config": config.to_dict(), "layers": []}, OCI_MANIFEST)
        images.append(Descriptor(m.media_type, m.digest, m.size, None,
                                 {"architecture": arch, "os": "linux"}))
    pairs = [(img, [statement(sbom.PREDICATE_TYPE, {"arch": img.platform["architecture"]},  # type: ignore[index]
                              subject_name("app", img.platform or {}), img.digest)])
             for img in images]
    index = store.read_json(attach_all(store, pairs).digest)
    entries = [Descriptor.from_dict(e) for e in index["manifests"]]
    assert [e.digest for e in entries[:2]] == [i.digest for i in images]
    assert [is_attestation(e) for e in entries] == [False, False, True, True]
    assert [(e.annotations or {})["vnd.docker.reference.digest"] for e in entries[2:]] == \
        [i.digest for i in images]
    top = attach_all(store, pairs).digest  # the same content: the same index
    assert [a.statement["predicate"] for a in read(store, top, images[1].digest)] == [{"arch": "arm64"}]
    assert [a.statement["subject"][0]["name"] for a in read(store, top)] == [
        "pkg:docker/app?platform=linux%2Famd64", "pkg:docker/app?platform=linux%2Farm64"]
    parts = blobs_of(store, entries[2], "app")
    assert parts[0] == entries[2] and len(parts) == 3  # itself, its config, one statement
    bad = Descriptor(OCI_MANIFEST, "sha256:" + "0" * 64, 2, entries[2].annotations)
    with pytest.raises(PybuildError, match="attestation manifest .* is missing"):
        blobs_of(store, bad, "app")


# ---- `pybuild sbom` on a real built image ---------------------------------------------

def test_sbom_command_reads_a_built_image(busybox: object, tmp_path: object) -> None:
    from pathlib import Path

    ctx = Path(str(tmp_path)) / "ctx"
    (ctx / "status").parent.mkdir(parents=True)
    (ctx / "status").write_bytes(DPKG_STATUS)
    (ctx / "os-release").write_bytes(OS_RELEASE)
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "COPY status /var/lib/dpkg/status\n"
        "COPY os-release /etc/os-release\n"
        "RUN mkdir -p /app/lib/site-packages/gunicorn-23.0.0.dist-info /app/lib/site-packages/gone.dist-info"
        " && printf 'Name: gunicorn\\nVersion: 23.0.0\\n' > /app/lib/site-packages/gunicorn-23.0.0.dist-info/METADATA"
        " && printf 'Name: gone\\nVersion: 1\\n' > /app/lib/site-packages/gone.dist-info/METADATA\n"
        "RUN rm -r /app/lib/site-packages/gone.dist-info\n")
    run = busybox  # type: ignore[assignment]
    run("build", "-t", "sbomtest", str(ctx))  # type: ignore[operator]
    out = run("sbom", "sbomtest").stdout  # type: ignore[operator]
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "TYPE", "PURL"]
    assert any(ln.split()[:3] == ["gunicorn", "23.0.0", "pypi"] for ln in lines)
    assert any(ln.split()[:3] == ["libc6", "2.36-9+deb12u4", "deb"] for ln in lines)
    assert not any(ln.startswith("gone ") for ln in lines)  # deleted in a later layer
    doc = json.loads(run("sbom", "--format", "spdx-json", "sbomtest").stdout)  # type: ignore[operator]
    assert spdx_validate(doc) == []
    missing = run("sbom", "--require-attestation", "sbomtest", check=False)  # type: ignore[operator]
    assert missing.returncode == 1 and "no SBOM attestation" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_build_attaches_sbom_and_provenance(busybox: object, tmp_path: object) -> None:
    """`--sbom --provenance=mode=max`: the tag moves to an index holding the image (same
    manifest, same ID) and an attestation manifest; skopeo reads the layout as it is."""
    import shutil
    import subprocess
    from pathlib import Path

    run = busybox  # type: ignore[assignment]
    ctx = Path(str(tmp_path)) / "actx"
    ctx.mkdir()
    (ctx / "status").write_bytes(DPKG_STATUS)
    (ctx / "Dockerfile").write_text("FROM busybox\nARG TOKEN=dflt\nCOPY status /var/lib/dpkg/status\n"
                                    "RUN echo $TOKEN > /t\n")
    plain = run("build", "-t", "plain", "--build-arg", "TOKEN=s3cr3t", str(ctx)).stdout  # type: ignore[operator]
    run("build", "-t", "att:1", "--sbom", "--provenance=mode=max",  # type: ignore[operator]
        "--build-arg", "TOKEN=s3cr3t", str(ctx))
    inspect_plain = json.loads(run("inspect", "plain").stdout)[0]  # type: ignore[operator]
    inspect_att = json.loads(run("inspect", "att:1").stdout)[0]  # type: ignore[operator]
    assert inspect_att["Id"] == inspect_plain["Id"], plain  # the image itself did not change
    root = run.root  # type: ignore[attr-defined]
    index = json.loads((root / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == "att:1")
    assert desc["mediaType"] == "application/vnd.oci.image.index.v1+json"
    if shutil.which("skopeo"):
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{root}:att:1"], capture_output=True,
                             text=True, check=True).stdout
        entries = json.loads(raw)["manifests"]
        assert entries[1]["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
        assert entries[1]["annotations"]["vnd.docker.reference.digest"] == entries[0]["digest"]
    doc = json.loads(run("sbom", "--require-attestation", "--format", "spdx-json", "att:1").stdout)  # type: ignore[operator]
    assert spdx_validate(doc) == []
    assert any(p["name"] == "libc6" for p in doc["packages"])
    from pybuild.attest.manifest import read

    atts = {a.predicate_type: a.statement for a in read(Store(root), desc["digest"])}
    pred = atts[provenance.PREDICATE_TYPE]["predicate"]
    slsa_validate(pred)
    deps = pred["buildDefinition"]["resolvedDependencies"]
    assert [d["uri"] for d in deps] == ["pkg:docker/busybox@latest?platform=linux%2Famd64"]
    assert pred["buildDefinition"]["externalParameters"]["request"]["args"]["build-arg:TOKEN"] == "s3cr3t"
    # the attested image still runs and lists once
    assert run("run", "--rm", "--network", "none", "att:1", "cat", "/t").stdout == "s3cr3t\n"  # type: ignore[operator]
    bad = run("build", "--provenance=mode=full", str(ctx), check=False)  # type: ignore[operator]
    assert bad.returncode != 0 and "invalid --provenance" in bad.stderr and "Traceback" not in bad.stderr


def _oci_dir_layers(oci: object, manifest_digest: str) -> dict[str, dict[str, object]]:
    """predicate type -> statement, read from an OCI layout skopeo wrote."""
    from pathlib import Path

    def blob(digest: str) -> bytes:
        return (Path(str(oci)) / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    man = json.loads(blob(manifest_digest))
    return {layer["annotations"]["in-toto.io/predicate-type"]: json.loads(blob(layer["digest"]))
            for layer in man["layers"]}


def test_attested_image_pushed_and_read_back_from_a_registry(busybox: object, tmp_path: object) -> None:
    """`build --sbom --provenance --push`: the registry holds the index, the image and the
    attestation manifest; skopeo reads them back by digest and the statements still validate."""
    import shutil
    import subprocess
    from pathlib import Path

    from engines import registry_server

    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    run = busybox  # type: ignore[assignment]
    ctx = Path(str(tmp_path)) / "pctx"
    ctx.mkdir()
    (ctx / "status").write_bytes(DPKG_STATUS)
    (ctx / "os-release").write_bytes(OS_RELEASE)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY status /var/lib/dpkg/status\n"
                                    "COPY os-release /etc/os-release\n")
    with registry_server() as addr:
        ref = f"{addr}/att/app:1"
        run("build", "-t", ref, "--sbom", "--provenance=mode=min", "--push", str(ctx))  # type: ignore[operator]
        skopeo = ["skopeo", "--override-os", "linux", "--override-arch", "amd64"]
        raw = subprocess.run([*skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
                             capture_output=True, text=True, check=True).stdout
        index = json.loads(raw)
        assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
        image, att = index["manifests"]
        assert image["platform"] == {"architecture": "amd64", "os": "linux"}
        assert att["platform"] == {"architecture": "unknown", "os": "unknown"}
        assert att["annotations"] == {"vnd.docker.reference.digest": image["digest"],
                                      "vnd.docker.reference.type": "attestation-manifest"}
        # the same bytes as the local store: nothing rewritten on the way
        local = Store(run.root)  # type: ignore[attr-defined]
        assert raw.encode() == local.read_bytes(local.resolve_tag(ref).digest)  # type: ignore[union-attr]
        oci = Path(str(tmp_path)) / "oci"
        subprocess.run([*skopeo, "copy", "--src-tls-verify=false",
                        f"docker://{addr}/att/app@{att['digest']}", f"oci:{oci}:att"],
                       capture_output=True, text=True, check=True)
        statements = _oci_dir_layers(oci, att["digest"])
        # a statement lost from the store: the push stops with one line, the tag not made
        layer = json.loads(local.read_bytes(att["digest"]))["layers"][0]["digest"]
        local.blob_path(layer).unlink()
        bad = run("push", ref, f"{addr}/att/other:1", check=False)  # type: ignore[operator]
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert f"blob {layer} is missing from the store" in bad.stderr
        gone = subprocess.run([*skopeo, "inspect", "--tls-verify=false", "--raw",
                               f"docker://{addr}/att/other:1"], capture_output=True, text=True)
        assert gone.returncode != 0
    assert set(statements) == {sbom.PREDICATE_TYPE, provenance.PREDICATE_TYPE}
    for st in statements.values():
        assert st["subject"] == [{"name": f"pkg:docker/{ref}?platform=linux%2Famd64",
                                  "digest": {"sha256": image["digest"].split(":")[1]}}]
    doc = statements[sbom.PREDICATE_TYPE]["predicate"]
    assert spdx_validate(doc) == []  # type: ignore[arg-type]
    assert {p["name"] for p in doc["packages"]} >= {"libc6", "python3.11"}  # type: ignore[index, union-attr]
    slsa_validate(statements[provenance.PREDICATE_TYPE]["predicate"])  # type: ignore[arg-type]
