"""A hostile build context, Dockerfile or base image must never read or write a host file.

Every test builds for real (runc, overlayfs) with a victim file outside the context holding
a marker; it asserts the marker is in no blob of the store, the victim is unchanged, and
failures are one clear line (no traceback). Docker resolves absolute COPY sources against
the context root and never follows a context symlink out of it; pybuild must do no less.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import socket
import tarfile
from pathlib import Path

import pytest

from conftest import Pybuild
from pybuild import image, layer
from pybuild.store import Store

pytestmark = pytest.mark.root

MARKER = b"HOST-SECRET-5f1d2c9a"
TIMEOUT = 120  # a FIFO read would hang forever: the build must finish well before this


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    host.mkdir()
    v = host / "victim"
    v.write_bytes(MARKER + b"\n")
    return v


def _ctx(tmp_path: Path, dockerfile: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def _blobs_text(root: Path) -> bytes:
    """Every blob of the store, decompressed when it is a layer."""
    store = Store(root)
    out = []
    for d in store.iter_blobs():
        with store.open_blob(d) as f:
            out.append(layer.open_decompressed(f).read())
    return b"".join(out)


def _clean(pb: Pybuild, victim: Path) -> None:
    assert victim.read_bytes() == MARKER + b"\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]
    assert MARKER not in _blobs_text(pb.root)


def _one_line_error(res: object, *words: str) -> None:
    err = res.stderr.strip()  # type: ignore[attr-defined]
    assert res.returncode != 0, res.stdout  # type: ignore[attr-defined]
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert all(w in last for w in words), last


def _files(pb: Pybuild, name: str, dest: Path) -> Path:
    store = Store(pb.root)
    for desc in image.load(store, name).layers:
        with store.open_blob(desc.digest) as f:
            layer.apply_layer(f, dest, mode="flatten")
    return dest


def test_symlinks_inside_copied_dir_stay_links(busybox: Pybuild, tmp_path: Path, victim: Path) -> None:
    ctx = _ctx(tmp_path, "FROM busybox\nCOPY dir /dir\nCOPY . /all\n")
    (ctx / "dir").mkdir()
    (ctx / "dir" / "abs").symlink_to(victim)
    (ctx / "dir" / "rel").symlink_to(os.path.relpath(victim, ctx / "dir"))
    (ctx / "dir" / "hostdir").symlink_to(victim.parent)
    busybox("build", "-t", "t", str(ctx), timeout=TIMEOUT)
    out = _files(busybox, "t", tmp_path / "out")
    for base in ("dir", "all/dir"):
        assert os.readlink(out / base / "abs") == str(victim)
        assert os.readlink(out / base / "rel") == os.path.relpath(victim, ctx / "dir")
        assert os.readlink(out / base / "hostdir") == str(victim.parent)
    _clean(busybox, victim)


@pytest.mark.parametrize("kind", ["abs-link", "rel-link", "dir-link", "dir-link-child"])
def test_symlink_source_leading_out_is_never_followed(busybox: Pybuild, tmp_path: Path,
                                                      victim: Path, kind: str) -> None:
    src = {"abs-link": "link", "rel-link": "link", "dir-link": "out",
           "dir-link-child": "out/victim"}[kind]
    ctx = _ctx(tmp_path, f"FROM busybox\nCOPY {src} /x\n")
    if kind == "abs-link":
        (ctx / "link").symlink_to(victim)
    elif kind == "rel-link":
        (ctx / "link").symlink_to(os.path.relpath(victim, ctx))
    else:
        (ctx / "out").symlink_to(victim.parent)
    res = busybox("build", "-t", "t", str(ctx), check=False, timeout=TIMEOUT)
    if res.returncode == 0:  # docker's reading: the link resolved inside the context
        out = _files(busybox, "t", tmp_path / "out")
        assert not (out / "x").is_file() or MARKER not in (out / "x").read_bytes()
    else:
        _one_line_error(res, "Dockerfile:2")
    _clean(busybox, victim)


def test_parent_and_absolute_sources(busybox: Pybuild, tmp_path: Path, victim: Path) -> None:
    # `..` stops at the context root (reference.md "Copying from the build context", docker
    # 20.10 agrees: tests/parity/copy_parent_navigation): the context's host/victim, never
    # the host's file
    ctx = _ctx(tmp_path, "FROM busybox\nCOPY ../host/victim /x\n")
    res = busybox("build", str(ctx), check=False, timeout=TIMEOUT)
    _one_line_error(res, "Dockerfile:2", "not found")
    # an absolute source names a file of the context, as in docker
    (ctx / "Dockerfile").write_text(f"FROM busybox\nCOPY {victim} /x\n")
    res = busybox("build", str(ctx), check=False, timeout=TIMEOUT)
    _one_line_error(res, "Dockerfile:2", "not found")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY /etc/passwd /p\n")
    (ctx / "etc").mkdir()
    (ctx / "etc" / "passwd").write_text("from the context\n")
    busybox("build", "-t", "t", str(ctx), timeout=TIMEOUT)
    out = _files(busybox, "t", tmp_path / "out")
    assert (out / "p").read_text() == "from the context\n"
    # a rooted source cannot climb: refused, or the context's file (never the host's)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY /../../etc/passwd /p\n")
    res = busybox("build", "-t", "t2", str(ctx), check=False, timeout=TIMEOUT)
    if res.returncode == 0:
        assert (_files(busybox, "t2", tmp_path / "out2") / "p").read_text() == "from the context\n"
    else:
        _one_line_error(res, "Dockerfile:2", "outside the build context")
    _clean(busybox, victim)


def test_rooted_dotdot_source_is_the_context_file_as_in_buildkit(busybox: Pybuild,
                                                                  tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM busybox\nCOPY /../../etc/group /g\n")
    (ctx / "etc").mkdir()
    (ctx / "etc" / "group").write_text("group from the context\n")
    busybox("build", "-t", "t", str(ctx), timeout=TIMEOUT)
    assert (_files(busybox, "t", tmp_path / "out") / "g").read_text() == "group from the context\n"


def test_fifo_and_socket_in_context_do_not_hang(busybox: Pybuild, tmp_path: Path, victim: Path) -> None:
    ctx = _ctx(tmp_path, "FROM busybox\nCOPY . /all\nCOPY sub /sub\n")
    (ctx / "sub").mkdir()
    os.mkfifo(ctx / "sub" / "fifo")
    os.mkfifo(ctx / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(ctx / "sub" / "sock"))
    (ctx / "sub" / "file").write_text("ok\n")
    try:
        res = busybox("build", "-t", "t", str(ctx), check=False, timeout=TIMEOUT)
    finally:
        sock.close()
    if res.returncode == 0:
        out = _files(busybox, "t", tmp_path / "out")
        assert (out / "sub" / "file").read_text() == "ok\n"
        assert not (out / "sub" / "sock").is_file()
    else:
        _one_line_error(res, "Dockerfile")
    # and COPY of the FIFO itself: never opened for reading
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY fifo /f\n")
    res = busybox("build", str(ctx), check=False, timeout=TIMEOUT)
    assert res.returncode == 0 or "Traceback" not in res.stderr
    _clean(busybox, victim)


def _tar(members: list[tuple[str, str, bytes | str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o644
            data = b""
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                ti.size = len(data)
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, str(payload)
            t.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _hostile_members(victim: Path) -> dict[str, list[tuple[str, str, bytes | str]]]:
    rel = os.path.relpath(victim, "/")
    return {
        "dotdot": [("../../../../../../../../" + rel, "file", b"pwned")],
        "absolute": [(str(victim), "file", b"pwned")],
        "symlink-then-write": [("esc", "sym", str(victim.parent)), ("esc/victim", "file", b"pwned")],
        "symlink-file-then-write": [("lnk", "sym", str(victim)), ("lnk", "file", b"pwned")],
        "hardlink-out": [("hl", "link", str(victim)), ("hl", "file", b"pwned")],
        "dir-symlink-chain": [("a", "sym", "."), ("a/b", "sym", "../../../../../../../../"),
                              ("a/b/" + rel, "file", b"pwned")],
    }


# docker untars chrooted into the ADD destination: symlink-then-write lands inside it.
_ADD_ATTACKS = sorted(_hostile_members(Path("/x/victim")))


@pytest.mark.parametrize("attack", _ADD_ATTACKS)
def test_add_of_hostile_tar(busybox: Pybuild, tmp_path: Path, victim: Path, attack: str) -> None:
    ctx = _ctx(tmp_path, "FROM busybox\nADD evil.tar.gz /unpacked/\nRUN ls -la /unpacked\n")
    (ctx / "evil.tar.gz").write_bytes(gzip.compress(_tar(_hostile_members(victim)[attack])))
    res = busybox("build", "-t", "t", str(ctx), check=False, timeout=TIMEOUT)
    if res.returncode == 0:
        out = _files(busybox, "t", tmp_path / "out")
        pwned = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()
                 and p.read_bytes() == b"pwned"]
        # docker's rule: nothing lands outside the ADD destination
        assert all(str(p).startswith(str(out / "unpacked") + "/") for p in pwned), pwned
    else:
        _one_line_error(res, "Dockerfile:2")
    assert victim.read_bytes() == MARKER + b"\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]


@pytest.mark.parametrize("attack", sorted(_hostile_members(Path("/x/victim"))))
def test_base_image_with_escaping_layer(busybox: Pybuild, tmp_path: Path, victim: Path,
                                        attack: str) -> None:
    store = Store(busybox.root)
    base = image.load(store, "busybox")
    blob = gzip.compress(_tar(_hostile_members(victim)[attack]), mtime=0)
    evil = store.put_bytes(blob, image.OCI_LAYER_GZIP)
    config = json.loads(json.dumps(base.config))
    config["rootfs"]["diff_ids"] = base.diff_ids + ["sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()]
    store.set_tag("evil", image.write(store, config, base.layers + [evil]))
    store.close()
    ctx = _ctx(tmp_path, "FROM evil\nRUN echo built > /built\n")
    res = busybox("build", "-t", "t", str(ctx), check=False, timeout=TIMEOUT)
    if res.returncode != 0:
        _one_line_error(res)
    assert victim.read_bytes() == MARKER + b"\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]
    mounts = Path("/proc/mounts").read_text()
    assert str(busybox.root) not in mounts
    # snapshots of the hostile layer hold nothing outside their fs (a built one also
    # holds its member list, named after its layer)
    for d in (busybox.root / "snapshots").iterdir():
        assert {p.name for p in d.iterdir() if not re.fullmatch(r"members-[0-9a-f]{64}", p.name)} \
            <= {"fs", "done"}
