"""`--build-context`: directories, docker-image://, oci-layout:// and URLs replacing
FROM NAME, COPY --from=NAME and RUN --mount from=NAME, with caching on their content."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from conftest import Pybuild
from pybuild.errors import PybuildError
from pybuild.solver.named_contexts import NamedContext, _split_layout, parse_build_context
from test_contexts import http_server


def test_build_context_values_parse() -> None:
    assert parse_build_context("docs=./docs") == NamedContext("docs", "dir", "./docs")
    assert parse_build_context("alpine=docker-image://busybox:1") == \
        NamedContext("alpine", "image", "busybox:1")
    assert parse_build_context("b=oci-layout:///x/lay:v1").kind == "oci-layout"
    assert parse_build_context("g=https://h/r.git#main").kind == "url"
    assert parse_build_context("t=http://h/ctx.tar.gz").kind == "url"
    assert _split_layout("/x/lay:v1") == ("/x/lay", "v1", None)
    assert _split_layout("/x/la:y/dir") == ("/x/la:y/dir", None, None)
    assert _split_layout("/x/lay@sha256:ab") == ("/x/lay", None, "sha256:ab")
    for bad in ("noequals", "=x", "x=", "x=ftp://h/y", "x=docker-image://Bad Ref"):
        with pytest.raises(PybuildError):
            parse_build_context(bad)


def _ctx(tmp_path: Path, dockerfile: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def test_directory_context_for_copy_mount_and_from(busybox: Pybuild, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# docs v1\n")
    ctx = _ctx(tmp_path, "FROM busybox AS docs\nRUN echo stage > /index.md\n"
               "FROM busybox\nCOPY --from=docs /index.md /copied.md\n"
               "RUN --mount=type=bind,from=docs,target=/d cat /d/index.md > /mounted.md\n"
               "FROM docs AS rootfs\n"
               "FROM scratch\nCOPY --from=1 /copied.md /mounted.md /\n"
               "COPY --from=rootfs /index.md /from-rootfs.md\n")
    out = tmp_path / "out"
    busybox("build", "--build-context", f"docs={docs}", "-o", str(out), str(ctx))
    # the named context wins over the stage called docs, in COPY, --mount and FROM
    for name in ("copied.md", "mounted.md", "from-rootfs.md"):
        assert (out / name).read_text() == "# docs v1\n", name
    # unchanged content: every step cached; changed content: the steps reading it rerun
    again = busybox("build", "--build-context", f"docs={docs}", "-o", str(out), str(ctx))
    assert "steps:  0 run" in again.stderr
    (docs / "index.md").write_text("# docs v2\n")
    busybox("build", "--build-context", f"docs={docs}", "-o", str(out), str(ctx))
    assert (out / "copied.md").read_text() == "# docs v2\n"
    assert (out / "mounted.md").read_text() == "# docs v2\n"
    # a rw bind from a named directory never writes to it
    ctx2 = _ctx(tmp_path, "FROM busybox\n"
                "RUN --mount=type=bind,from=docs,target=/d,rw echo x > /d/index.md\n")
    busybox("build", "--build-context", f"docs={docs}", str(ctx2))
    assert (docs / "index.md").read_text() == "# docs v2\n"


def test_docker_image_context_replaces_a_base_image(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM alpine:3.19\nRUN echo replaced > /r\nFROM alpine:3.19\n"
               "COPY --from=0 /r /r\n")
    missing = busybox("build", str(ctx), check=False)
    assert missing.returncode == 1  # no alpine here
    out = tmp_path / "out"
    busybox("build", "--build-context", "alpine:3.19=docker-image://busybox", "-o", str(out),
            str(ctx))
    assert (out / "r").read_text() == "replaced\n" and (out / "bin" / "busybox").exists()


def test_oci_layout_context_by_tag_and_digest(busybox: Pybuild, tmp_path: Path) -> None:
    busybox("tag", "busybox", "lay/bb:v1")
    archive = tmp_path / "lay.tar"
    busybox("save", "--format", "oci", "-o", str(archive), "lay/bb:v1")
    layout = tmp_path / "layout"
    with tarfile.open(archive) as t:
        t.extractall(layout)
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    ctx = _ctx(tmp_path, "FROM base\nRUN echo on-layout > /x\n")
    other = Pybuild(tmp_path / "other")  # a store without busybox: the layout supplies it
    for value in (f"oci-layout://{layout}:v1", f"oci-layout://{layout}@{digest}",
                  f"oci-layout://{layout}"):
        out = tmp_path / "out"
        other("build", "--build-context", f"base={value}", "-o", str(out), str(ctx))
        assert (out / "x").read_text() == "on-layout\n"
    bad = other("build", "--build-context", f"base=oci-layout://{layout}:nope", str(ctx),
                check=False)
    assert bad.returncode == 1 and "no image nope in the layout" in bad.stderr
    # a tampered blob in the layout is refused
    cfg = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())["config"]
    (layout / "blobs" / "sha256" / cfg["digest"].split(":")[1]).write_text("{}")
    third = Pybuild(tmp_path / "third")
    bad = third("build", "--build-context", f"base=oci-layout://{layout}:v1", str(ctx),
                check=False)
    assert bad.returncode == 1 and "hashes to" in bad.stderr


def test_url_context_and_errors(busybox: Pybuild, tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    srv.mkdir()
    with tarfile.open(srv / "assets.tar.gz", "w:gz") as t:
        data = b"from the web\n"
        info = tarfile.TarInfo("asset.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    ctx = _ctx(tmp_path, "FROM scratch\nCOPY --from=web /asset.txt /\n")
    out = tmp_path / "out"
    with http_server(srv) as http:
        busybox("build", "--build-context", f"web={http}/assets.tar.gz", "-o", str(out), str(ctx))
    assert (out / "asset.txt").read_text() == "from the web\n"
    for value, message in ((f"web={tmp_path}/nope", "is not a directory"),
                           ("web=ftp://x/y", "unsupported scheme")):
        proc = busybox("build", "--build-context", value, str(ctx), check=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_bind_from_a_stage_or_named_dir_never_follows_links_onto_the_host(
        busybox: Pybuild, tmp_path: Path) -> None:
    """A symlink in a stage or a named context resolves inside it: `ln -s /some/host/dir`
    then `--mount=type=bind,from=...,source=link` must not bind the host's directory."""
    host = tmp_path / "h"
    host.mkdir()
    (host / "f").write_text("from the host\n")
    named = tmp_path / "named"
    inside = named / str(host).lstrip("/")
    inside.mkdir(parents=True)
    (inside / "f").write_text("from the named context\n")
    (named / "leak").symlink_to(host)
    ctx = _ctx(tmp_path, f"FROM busybox AS st\nRUN mkdir -p {host} && echo from the stage > "
               f"{host}/f && ln -s {host} /leak\n"
               "FROM busybox\nRUN mkdir /o\n"
               "RUN --mount=type=bind,from=st,source=leak,target=/x cat /x/f > /o/stage\n"
               "RUN --mount=type=bind,from=d,source=leak,target=/y cat /y/f > /o/named\n"
               "FROM scratch\nCOPY --from=1 /o/ /\n")
    out = tmp_path / "out"
    busybox("build", "--build-context", f"d={named}", "-o", str(out), str(ctx))
    assert (out / "stage").read_text() == "from the stage\n"
    assert (out / "named").read_text() == "from the named context\n"
