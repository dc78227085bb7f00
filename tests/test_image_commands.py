"""`pybuild load`, `history`, `image prune`, `system df`: docker's image commands on real
archives, hostile ones included, and compared with the real Docker 20.10 engine."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Pybuild, require_build_tools, store_snapshot
from engines import docker_engine


def _docker_build_env() -> dict[str, str]:
    return dict(os.environ, DOCKER_BUILDKIT="1")


@pytest.fixture
def imported(pybuild: Pybuild, busybox_tar: Path) -> Pybuild:
    """A store with busybox:latest imported (no root needed)."""
    pybuild("import", str(busybox_tar), "busybox")
    return pybuild


def _image_id(pb: Pybuild, name: str) -> str:
    return str(json.loads(pb("inspect", name).stdout)[0]["Id"])


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as t:
        out = {}
        for m in t.getmembers():
            f = t.extractfile(m) if m.isreg() else None
            if f is not None:
                out[m.name] = f.read()
        return out


# ---- load -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_save_then_load_into_another_store_keeps_the_image_id(imported: Pybuild, tmp_path: Path,
                                                              fmt: str) -> None:
    imported("tag", "busybox", "example.com/team/bb:v1")
    archive = tmp_path / "a.tar"
    imported("save", "--format", fmt, "-o", str(archive), "busybox", "example.com/team/bb:v1")
    other = Pybuild(tmp_path / "other")
    out = other("load", "-i", str(archive)).stdout.splitlines()
    assert out == ["Loaded image: busybox:latest", "Loaded image: example.com/team/bb:v1"]
    assert _image_id(other, "busybox") == _image_id(imported, "busybox")
    assert _image_id(other, "example.com/team/bb:v1") == _image_id(imported, "busybox")
    assert other("doctor").returncode == 0
    # loading the same archive again changes nothing and says the same
    assert other("load", "-i", str(archive)).stdout.splitlines() == out


def test_load_reads_stdin_and_compressed_archives(imported: Pybuild, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    imported("save", "-o", str(archive), "busybox")
    gz = tmp_path / "a.tar.gz"
    gz.write_bytes(gzip.compress(archive.read_bytes()))
    other = Pybuild(tmp_path / "other")
    with open(gz, "rb") as f:
        proc = subprocess.run([*_cli(other), "load"], stdin=f, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Loaded image: busybox:latest\n"
    assert _image_id(other, "busybox") == _image_id(imported, "busybox")


def _cli(pb: Pybuild) -> list[str]:
    import sys

    return [sys.executable, "-m", "pybuild", "--root", str(pb.root)]


def test_untagged_image_prints_its_id_and_a_replaced_tag_is_reported(imported: Pybuild,
                                                                     tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    image_id = _image_id(imported, "busybox")
    imported("save", "-o", str(archive), image_id)
    other = Pybuild(tmp_path / "other")
    assert other("load", "-i", str(archive)).stdout == f"Loaded image ID: {image_id}\n"
    # a different image already tagged busybox:latest in the target store
    (tmp_path / "ctx").mkdir()
    root = tmp_path / "rootfs.tar"
    with tarfile.open(root, "w") as t:
        _add(t, "hello", b"other image\n")
    other("import", str(root), "busybox")
    old = _image_id(other, "busybox")
    named = tmp_path / "named.tar"
    imported("save", "-o", str(named), "busybox")
    out = other("load", "-i", str(named)).stdout.splitlines()
    assert out == [f"The image busybox:latest already exists, renaming the old one with ID "
                   f"{old} to empty string", "Loaded image: busybox:latest"]


def test_docker_archive_with_symlinked_layers_and_gzip_layer(imported: Pybuild,
                                                             tmp_path: Path) -> None:
    """Older docker saves repeat a layer as a symlink to another dir's layer.tar; docker
    load also takes compressed layer.tar files."""
    archive = tmp_path / "a.tar"
    imported("save", "-o", str(archive), "busybox")
    m = _members(archive)
    manifest = json.loads(m["manifest.json"])
    layer_path = manifest[0]["Layers"][0]
    out = tmp_path / "crafted.tar"
    with tarfile.open(out, "w") as t:
        for name, data in m.items():
            if name == layer_path:
                _add(t, "real/layer.tar", gzip.compress(data))
                link = tarfile.TarInfo(name)
                link.type = tarfile.SYMTYPE
                link.linkname = "../real/layer.tar"
                t.addfile(link)
            elif name != "manifest.json":
                _add(t, name, data)
        _add(t, "manifest.json", m["manifest.json"])
    other = Pybuild(tmp_path / "other")
    other("load", "-i", str(out))
    assert _image_id(other, "busybox") == _image_id(imported, "busybox")
    layers = json.loads(other("inspect", "busybox").stdout)[0]["Manifest"]["layers"]
    assert layers[0]["mediaType"].endswith("tar+gzip")


def _hostile_cases(archive: Path) -> Iterator[tuple[str, bytes, str]]:
    """(case, archive bytes, expected message part)."""
    m = _members(archive)
    manifest = json.loads(m["manifest.json"])
    layer_path = manifest[0]["Layers"][0]

    def build(entries: list[tuple[str, bytes]], links: list[tuple[str, str]] = ()) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in entries:
                _add(t, name, data)
            for name, target in links:
                info = tarfile.TarInfo(name)
                info.type = tarfile.SYMTYPE
                info.linkname = target
                t.addfile(info)
        return buf.getvalue()

    tampered = dict(m)
    tampered[layer_path] = m[layer_path][:-1024] + b"\x01" + m[layer_path][-1023:]
    yield "tampered layer", build(list(tampered.items())), "does not match its diff_id"
    yield "dot-dot member", build([("../../etc/evil", b"x")] + list(m.items())), "unsafe path"
    escaped = dict(manifest[0], Layers=["../../../../etc/passwd"])
    yield "dot-dot reference", build([(k, v) for k, v in m.items() if k != "manifest.json"]
                                     + [("manifest.json", json.dumps([escaped]).encode())]), \
        "unsafe path"
    # a symlink to a host path resolves inside the archive only: the layer is "missing"
    yield "symlink to host file", build(
        [(k, v) for k, v in m.items() if k != layer_path],
        [(layer_path, "/etc/passwd")]), "not in the archive"
    yield "not json", build([("manifest.json", b"{nope")]), "not valid JSON"
    yield "no index", build([("hello.txt", b"hi")]), "neither a docker-archive"
    yield "not a tar", b"plain text, not an archive" * 40, "not a tar archive"
    yield "bad tag", build([(k, v) for k, v in m.items() if k != "manifest.json"] + [(
        "manifest.json", json.dumps([dict(manifest[0], RepoTags=["Bad Name!"])]).encode())]), \
        "invalid image name"


def test_hostile_archives_fail_with_one_line_and_leave_the_store_alone(imported: Pybuild,
                                                                       tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    imported("save", "-o", str(archive), "busybox")
    other = Pybuild(tmp_path / "other")
    other("images")  # create the store
    before = store_snapshot(other.root)
    for case, data, message in _hostile_cases(archive):
        bad = tmp_path / "bad.tar"
        bad.write_bytes(data)
        proc = other("load", "-i", str(bad), check=False)
        assert proc.returncode == 1, case
        assert message in proc.stderr, (case, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, case
        assert store_snapshot(other.root) == before, case
    assert not Path("/etc/evil").exists()


def test_oci_archive_blob_digest_is_checked(imported: Pybuild, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    imported("save", "--format", "oci", "-o", str(archive), "busybox")
    m = _members(archive)
    index = json.loads(m["index.json"])
    manifest_name = "blobs/" + index["manifests"][0]["digest"].replace(":", "/")
    manifest = json.loads(m[manifest_name])
    config_name = "blobs/" + manifest["config"]["digest"].replace(":", "/")
    cfg = json.loads(m[config_name])
    cfg["config"]["Env"] = ["EVIL=1"]
    m[config_name] = json.dumps(cfg).encode()  # same name, other content
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as t:
        for name, data in m.items():
            _add(t, name, data)
    other = Pybuild(tmp_path / "other")
    proc = other("load", "-i", str(bad), check=False)
    assert proc.returncode == 1 and f"blob {manifest['config']['digest']} hashes to" in proc.stderr
    assert other("images", "-q").stdout == ""


def test_load_from_an_empty_terminal_stdin_is_refused(pybuild: Pybuild) -> None:
    proc = pybuild("load", "-i", "/nonexistent/x.tar", check=False)
    assert proc.returncode == 1 and "open /nonexistent/x.tar" in proc.stderr


# ---- history, df, prune ------------------------------------------------------------------

def test_history_columns_flags_and_format(imported: Pybuild, busybox_tar: Path) -> None:
    out = imported("history", "busybox").stdout.splitlines()
    assert re.split(r"\s{2,}", out[0]) == ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    image_id = _image_id(imported, "busybox")
    assert out[1].startswith(image_id.split(":")[1][:12] + " ")
    assert "pybuild import" in out[1] and "imported from busybox.tar" in out[1]
    full = imported("history", "--no-trunc", "busybox").stdout.splitlines()
    assert full[1].startswith(image_id + " ")
    assert imported("history", "-q", "busybox").stdout.split() == [image_id.split(":")[1][:12]]
    rows = [json.loads(line) for line in
            imported("history", "--format", "{{json .}}", "busybox").stdout.splitlines()]
    assert list(rows[0]) == sorted(rows[0]) and rows[0]["CreatedBy"] == "pybuild import"
    raw = imported("history", "-H=false", "--format", "{{.Size}}", "busybox").stdout.split()
    # the extracted size: every regular file and symlink target of the rootfs
    with tarfile.open(busybox_tar) as t:
        want = sum(m.size if m.isreg() else len(m.linkname) for m in t.getmembers()
                   if m.isreg() or m.issym())
    assert raw == [str(want)]
    bad = imported("history", "--format", "{{.Bogus}}", "busybox", check=False)
    assert bad.returncode == 1 and "unknown field" in bad.stderr
    missing = imported("history", "nothere", check=False)
    assert missing.returncode == 1 and "No such image: nothere" in missing.stderr


def test_system_df_counts_each_layer_once(imported: Pybuild) -> None:
    imported("tag", "busybox", "second:tag")  # same image, two names
    out = imported("system", "df").stdout.splitlines()
    rows = {r[0]: r[1:] for r in (re.split(r"\s{2,}", line) for line in out[1:])}
    assert rows["Images"][0:2] == ["1", "0"]
    size = rows["Images"][2]
    assert rows["Images"][3] == f"{size} (100%)"
    assert rows["Build Cache"] == ["0", "0", "0B", "0B"]
    verbose = imported("system", "df", "-v").stdout
    assert "Images space usage:" in verbose and "Build cache usage: 0B" in verbose
    assert len([line for line in verbose.splitlines() if line.startswith(("busybox", "second"))]) == 2


def test_image_prune_removes_only_dangling_images_and_all_with_a(imported: Pybuild,
                                                                 tmp_path: Path) -> None:
    root = tmp_path / "r.tar"
    with tarfile.open(root, "w") as t:
        _add(t, "file", os.urandom(50000))
    imported("import", str(root), "temp:1")
    dangling = _image_id(imported, "temp:1")
    imported("rmi", "temp:1")
    out = imported("image", "prune", "-f").stdout
    assert f"deleted: {dangling}" in out and "untagged" not in out
    assert re.search(r"Total reclaimed space: [0-9.]+kB", out)
    assert imported("inspect", dangling, check=False).returncode == 1
    assert imported("images", "-q").stdout.strip() != ""  # busybox stays
    again = imported("image", "prune", "-f").stdout
    assert again == "Total reclaimed space: 0B\n"
    # without -f the prompt decides
    proc = subprocess.run([*_cli(imported), "image", "prune", "-a"], input="n\n",
                          capture_output=True, text=True)
    assert "WARNING! This will remove all images without at least one container" in proc.stdout
    assert imported("images", "-q").stdout.strip() != ""
    out = imported("image", "prune", "-a", "-f").stdout
    assert "untagged: busybox:latest" in out
    assert imported("images", "-q").stdout == ""
    assert imported("doctor").returncode == 0


def test_image_prune_keeps_an_image_a_container_uses(busybox: Pybuild) -> None:
    require_build_tools()
    c = busybox("run", "--network", "none", "--name", "keeper", "busybox", "true")
    assert c.returncode == 0
    out = busybox("image", "prune", "-a", "-f").stdout
    assert "busybox" not in out
    assert busybox("images", "-q").stdout.strip() != ""
    df = busybox("system", "df").stdout.splitlines()
    rows = {r[0]: r[1:] for r in (re.split(r"\s{2,}", line) for line in df[1:])}
    assert rows["Images"][:2] == ["1", "1"] and rows["Containers"][:2] == ["1", "0"]
    busybox("rm", "keeper")


# ---- against the real engine ---------------------------------------------------------------

@pytest.fixture(scope="module")
def docker() -> Iterator:
    with docker_engine() as d:
        yield d


def test_docker_save_loads_and_history_matches_docker(docker, busybox: Pybuild,
                                                      tmp_path: Path) -> None:
    saved = tmp_path / "bb.tar"
    busybox("save", "-o", str(saved), "busybox")
    docker("load", "-i", str(saved))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nRUN echo hi > /hi && ln -s /hi /lnk && mkdir /d && "
        "dd if=/dev/zero of=/d/big bs=1k count=300 2>/dev/null && ln /d/big /d/big2\n"
        "ENV A=b\nCMD [\"sh\"]\n")
    proc = subprocess.run(["/usr/bin/docker", "-H", docker.host, "build", "--network=host",
                           "-t", "dk/built:1", str(ctx)], env=_docker_build_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "dk.tar"
    docker("save", "-o", str(out), "dk/built:1")
    other = Pybuild(tmp_path / "other")
    assert other("load", "-i", str(out)).stdout == "Loaded image: dk/built:1\n"
    want_id = docker("image", "inspect", "-f", "{{.Id}}", "dk/built:1").stdout.strip()
    assert _image_id(other, "dk/built:1") == want_id
    fmt = "{{.ID}}|{{.CreatedBy}}|{{.Size}}|{{.Comment}}"
    ours = other("history", "--no-trunc", "--format", fmt, "dk/built:1").stdout
    theirs = docker("history", "--no-trunc", "--format", fmt, "dk/built:1").stdout
    assert ours == theirs
    short = "{{.ID}}|{{.CreatedBy}}"
    assert other("history", "--format", short, "dk/built:1").stdout == \
        docker("history", "--format", short, "dk/built:1").stdout
    # an image docker loaded from pybuild and saved again: a round trip through the engine
    docker("save", "-o", str(tmp_path / "bb2.tar"), "busybox")
    third = Pybuild(tmp_path / "third")
    third("load", "-i", str(tmp_path / "bb2.tar"))
    assert _image_id(third, "busybox") == _image_id(busybox, "busybox")
    # the image runs here too: the layers went through the snapshotter's extractor
    run = third("run", "--rm", "--network", "none", "busybox", "cat", "/etc/passwd")
    assert run.stdout.startswith("root:x:0:0")
    # system df sizes as docker counts them (the busybox layer shared by both images)
    df = other("system", "df").stdout.splitlines()[1]
    docker_df = [line for line in docker("system", "df").stdout.splitlines()
                 if line.startswith("Images")][0]
    assert re.split(r"\s{2,}", df)[3] == re.split(r"\s{2,}", docker_df)[3]
