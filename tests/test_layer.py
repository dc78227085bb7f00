"""pybuild.layer: deterministic layer writing and the extractor, with real overlay mounts."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from pybuild import layer
from pybuild.errors import PybuildError

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (mknod, chown, trusted xattrs)")
CAP = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def _write(src: Path, compression: str = "gzip", epoch: int | None = None) -> tuple[bytes, layer.LayerInfo]:
    out = io.BytesIO()
    info = layer.write_layer(src, out, compression=compression, source_date_epoch=epoch)
    return out.getvalue(), info


def _members(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        return {m.name: m for m in t}


def _names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        return [m.name + ("/" if m.isdir() else "") for m in t]


def _make_tree(root: Path, reverse: bool) -> None:
    """The same content created in a different order (so different inodes and times)."""
    names = [f"f{i:02d}" for i in range(20)]
    root.mkdir()
    for n in reversed(names) if reverse else names:
        (root / n).write_bytes(n.encode() * 100)
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "x").write_bytes(b"x")
    os.symlink("/f01", root / "dir" / "abs")
    os.link(root / "f03", root / "dir" / "hard")
    (root / "dir" / "sub" / "x").chmod(0o4755)
    os.setxattr(root / "f05", "user.note", b"hello")


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_same_tree_same_digest_regardless_of_creation(tmp_path: Path, compression: str) -> None:
    _make_tree(tmp_path / "a", reverse=False)
    _make_tree(tmp_path / "b", reverse=True)
    for p in (tmp_path / "b").rglob("*"):
        os.utime(p, (2_000_000_000, 2_000_000_000), follow_symlinks=False)
    _, a = _write(tmp_path / "a", compression, epoch=1_000_000)
    _, b = _write(tmp_path / "b", compression, epoch=1_000_000)
    assert a == b
    assert a.media_type == layer.MEDIA_TYPES[compression]
    (tmp_path / "b" / "f00").write_bytes(b"changed")
    assert _write(tmp_path / "b", compression, epoch=1_000_000)[1].diff_id != a.diff_id


def test_entries_sorted_relative_with_dir_slash(tmp_path: Path) -> None:
    _make_tree(tmp_path / "t", reverse=True)
    blob, _ = _write(tmp_path / "t", "none")
    raw = [m.split(b"\0", 1)[0] for m in _raw_names(blob)]
    assert raw == [b"dir/", b"dir/abs", b"dir/hard", b"dir/sub/", b"dir/sub/x"] + \
        [f"f{i:02d}".encode() for i in range(20)]


def _raw_names(blob: bytes) -> list[bytes]:
    """Entry names exactly as stored in ustar headers (tarfile strips the trailing slash)."""
    names, pos = [], 0
    while pos + 512 <= len(blob) and blob[pos:pos + 512] != bytes(512):
        header = blob[pos:pos + 512]
        if header[156:157] != b"x":
            names.append(header[:100])
        size = int(header[124:136].split(b"\0")[0] or b"0", 8)
        pos += 512 + size + (-size % 512)
    return names


def test_hardlinks_point_at_first_path(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "b").write_text("data")
    os.link(src / "b", src / "a")
    os.link(src / "b", src / "c")
    blob, _ = _write(src, "none")
    m = _members(blob)
    assert m["a"].isreg() and m["a"].size == 4
    assert m["b"].islnk() and m["b"].linkname == "a"
    assert m["c"].islnk() and m["c"].linkname == "a"
    out = tmp_path / "out"
    layer.apply_layer(io.BytesIO(blob), out, mode="flatten")
    assert os.stat(out / "a").st_ino == os.stat(out / "c").st_ino
    assert os.stat(out / "a").st_nlink == 3


@needs_root
def test_xattrs_kept_overlay_ones_never(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "ping").write_bytes(b"p")
    os.setxattr(src / "ping", "security.capability", CAP)
    os.setxattr(src / "ping", "user.x", b"\xff\x00bin")
    os.setxattr(src / "d", "trusted.overlay.opaque", b"y")
    os.setxattr(src / "d", "trusted.overlay.origin", b"\x00\xfb")
    blob, _ = _write(src, "none")
    m = _members(blob)
    assert m["ping"].pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAP
    assert not any("overlay" in k for v in m.values() for k in v.pax_headers)
    assert "d/.wh..wh..opq" in m
    out = tmp_path / "out"
    layer.apply_layer(io.BytesIO(blob), out, mode="overlay")
    assert os.getxattr(out / "ping", "security.capability") == CAP
    assert os.getxattr(out / "ping", "user.x") == b"\xff\x00bin"
    assert os.getxattr(out / "d", "trusted.overlay.opaque") == b"y"
    with pytest.raises(OSError):
        os.getxattr(out / "d", "trusted.overlay.origin")


@needs_root
def test_redirected_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src" / "d").mkdir(parents=True)
    os.setxattr(tmp_path / "src" / "d", "trusted.overlay.redirect", b"/old")
    with pytest.raises(PybuildError, match="redirect"):
        _write(tmp_path / "src")


def test_source_date_epoch_clamps_only_newer(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "old").write_text("o")
    (src / "new").write_text("n")
    os.utime(src / "old", (2000, 2000))
    os.utime(src / "new", (5000.9, 5000.9))
    m = _members(_write(src, "none", epoch=3000)[0])
    assert (m["old"].mtime, m["new"].mtime) == (2000, 3000)
    m = _members(_write(src, "none")[0])
    assert (m["old"].mtime, m["new"].mtime) == (2000, 5000)
    assert all(v.uname == "" and v.gname == "" for v in m.values())


def test_gzip_header_has_no_time_or_name(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(os.urandom(3 << 20))
    out = tmp_path / "named-layer.tar.gz"
    with open(out, "wb") as f:
        info = layer.write_layer(tmp_path / "src", f)
    blob = out.read_bytes()
    assert blob[:3] == b"\x1f\x8b\x08"
    assert blob[3] & 0x08 == 0, "FNAME flag set"
    assert blob[4:8] == b"\0\0\0\0", "mtime not zero"
    assert info.size == len(blob)
    assert info.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert info.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    assert subprocess.run(["gzip", "-t", str(out)]).returncode == 0


def test_zstd_readable_by_cli_and_independent_of_threads(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if not shutil.which("zstd"):
        pytest.skip("zstd CLI not installed")
    _make_tree(tmp_path / "src", reverse=False)
    (tmp_path / "src" / "big").write_bytes(os.urandom(1 << 20) * 6)
    blob, info = _write(tmp_path / "src", "zstd")
    plain = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    assert info.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    monkeypatch.setattr(layer, "ZSTD_THREADS", 1)
    assert _write(tmp_path / "src", "zstd")[1] == info


def test_unknown_compression_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(PybuildError, match="unknown layer compression"):
        _write(tmp_path / "src", "lz4")


def _snapshot(root: Path) -> dict[str, tuple]:
    """Everything a layer carries about each path under root."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        extra: object = None
        if stat.S_ISREG(st.st_mode):
            extra = p.read_bytes()
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            extra = st.st_rdev
        xattrs = {} if stat.S_ISLNK(st.st_mode) else {k: os.getxattr(p, k) for k in os.listxattr(p)}
        mtime = None if stat.S_ISDIR(st.st_mode) and p == root else int(st.st_mtime)
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, mtime, extra, xattrs)
    return out


@needs_root
@pytest.mark.parametrize("mode", ["overlay", "flatten"])
def test_round_trip_keeps_everything(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "src"
    _make_tree(src, reverse=False)
    (src / "dev").mkdir()
    os.mknod(src / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "dev" / "loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    os.mkfifo(src / "dev" / "fifo", 0o640)
    (src / "tmp").mkdir(mode=0o1777)
    (src / "tmp").chmod(0o1777)
    (src / "sgid").mkdir()
    (src / "sgid").chmod(0o2775)
    os.chown(src / "f07", 1234, 4321)
    os.chown(src / "dir" / "abs", 55, 66, follow_symlinks=False)
    os.chown(src / "sgid", 3000000, 3000001)  # beyond ustar's octal: needs PAX records
    long = src / ("l" * 120) / ("ü" * 80)
    long.mkdir(parents=True)
    (long / "file").write_text("deep")
    os.setxattr(src / "f09", "security.capability", CAP)
    blob, info = _write(src, "gzip")
    out = tmp_path / "out"
    assert layer.apply_layer(io.BytesIO(blob), out, mode=mode) == info.diff_id
    assert _snapshot(out) == _snapshot(src)
    assert _write(out, "gzip")[1] == info


def test_read_back_by_tarfile_and_gnu_tar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_tree(src, reverse=False)
    longname = "n" * 150
    (src / longname).write_text("long")
    os.symlink("t" * 130, src / "longlink")
    (src / "unicodé").write_text("u")
    blob, _ = _write(src, "none")
    m = _members(blob)
    assert m[longname].size == 4 and m["longlink"].linkname == "t" * 130
    assert m["unicodé"].isreg() and m["f03"].linkname == "dir/hard"
    assert m["dir/sub/x"].mode == 0o4755 and m["dir/abs"].linkname == "/f01"
    tar = tmp_path / "l.tar"
    tar.write_bytes(blob)
    listing = subprocess.run(["tar", "--numeric-owner", "-tvf", str(tar)], capture_output=True,
                             text=True, check=True).stdout
    assert f"{longname}\n" in listing and "longlink -> " + "t" * 130 in listing
    assert "f03 link to dir/hard" in listing and "-rwsr-xr-x" in listing
    ext = tmp_path / "gnu"
    ext.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(ext)], check=True)
    assert (ext / longname).read_text() == "long" and (ext / "unicodé").read_text() == "u"


@pytest.mark.skipif(not ROOT or not shutil.which("mount"), reason="needs root and mount(8)")
def test_overlay_whiteouts_and_opaque_from_a_real_mount(tmp_path: Path) -> None:
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    (lower / "olddir" / "inner").mkdir(parents=True)
    (lower / "olddir" / "inner" / "f").write_text("old")
    (lower / "redo").mkdir()
    (lower / "redo" / "stale").write_text("stale")
    (lower / "gone").write_text("bye")
    (lower / "keep").write_text("keep")
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"overlay mount failed: {r.stderr.strip()}")
    try:
        (merged / "gone").unlink()
        shutil.rmtree(merged / "olddir")
        shutil.rmtree(merged / "redo")
        (merged / "redo").mkdir()
        (merged / "redo" / "new").write_text("new")
        (merged / "added").write_text("added")
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    blob, info = _write(upper, "gzip", epoch=0)
    m = _members(blob)
    assert sorted(m) == [".wh.gone", ".wh.olddir", "added", "redo", "redo/.wh..wh..opq", "redo/new"]
    assert m[".wh.gone"].isreg() and m[".wh.gone"].size == 0
    assert not any(k.startswith("SCHILY.xattr.trusted.overlay") for v in m.values() for k in v.pax_headers)
    # flatten onto a copy of the lower: the result is what the merged view showed
    flat = tmp_path / "flat"
    shutil.copytree(lower, flat, symlinks=True)
    assert layer.apply_layer(io.BytesIO(blob), flat, mode="flatten") == info.diff_id
    assert sorted(str(p.relative_to(flat)) for p in flat.rglob("*")) == \
        ["added", "keep", "redo", "redo/new"]
    # overlay form: a fresh lowerdir that overlayfs itself reads as whiteouts again
    ovl = tmp_path / "ovl"
    layer.apply_layer(io.BytesIO(blob), ovl, mode="overlay")
    assert stat.S_ISCHR(os.lstat(ovl / "gone").st_mode) and os.lstat(ovl / "gone").st_rdev == 0
    assert os.getxattr(ovl / "redo", "trusted.overlay.opaque") == b"y"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={ovl}:{lower}",
                    str(merged)], check=True)
    try:
        assert sorted(str(p.relative_to(merged)) for p in merged.rglob("*")) == \
            ["added", "keep", "redo", "redo/new"]
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_flatten_opaque_keeps_this_layers_children_in_any_order(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d" / "old").mkdir(parents=True)
    (root / "d" / "old" / "x").write_text("x")
    (root / "d" / "zz").write_text("zz")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in (("d/a", b"a"), ("d/old/y", b"y"), ("d/.wh..wh..opq", b"")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    layer.apply_layer(io.BytesIO(buf.getvalue()), root, mode="flatten")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["d", "d/a", "d/old", "d/old/y"]


@pytest.mark.parametrize("kind", ["gzip-multi", "bzip2", "xz", "plain"])
def test_apply_detects_compression(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    _make_tree(src, reverse=False)
    tar, _ = _write(src, "none")
    blob = {"gzip-multi": lambda: gzip.compress(tar[:1024]) + gzip.compress(tar[1024:]),
            "bzip2": lambda: bz2.compress(tar), "xz": lambda: lzma.compress(tar),
            "plain": lambda: tar}[kind]()
    diff = layer.apply_layer(io.BytesIO(blob), tmp_path / "out", mode="flatten")
    assert diff == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert (tmp_path / "out" / "dir" / "sub" / "x").read_bytes() == b"x"
    f = tmp_path / "blob"
    f.write_bytes(blob)
    assert layer.is_archive(f)


def test_is_archive_like_docker(tmp_path: Path) -> None:
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"not a tar at all" * 100))
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "zeros.tar").write_bytes(bytes(1024))
    (tmp_path / "cut.gz").write_bytes(gzip.compress(bytes(512))[:12])
    zst = zstandard.ZstdCompressor().compress(_write(tmp_path, "none")[0])
    (tmp_path / "layer.tar.zst").write_bytes(zst)
    assert not layer.is_archive(tmp_path / "text.gz")
    assert not layer.is_archive(tmp_path / "empty")
    assert not layer.is_archive(tmp_path / "zeros.tar")
    assert not layer.is_archive(tmp_path / "cut.gz")
    assert not layer.is_archive(tmp_path / "missing")
    assert layer.is_archive(tmp_path / "layer.tar.zst")


def test_extract_archive_into_dest_resolved_in_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "srv").mkdir(parents=True)
    os.symlink("/srv", root / "app")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in (("pkg/a.txt", b"a"), (".wh.b", b"plain file")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    layer.extract_archive(buf, root, "/app/sub/")
    assert (root / "srv" / "sub" / "pkg" / "a.txt").read_bytes() == b"a"
    assert (root / "srv" / "sub" / ".wh.b").read_bytes() == b"plain file"


@needs_root
@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_applies_archives_written_by_gnu_tar(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    _make_tree(src, reverse=False)
    if fmt != "ustar":  # ustar cannot hold these names
        deep = src / ("x" * 90) / ("y" * 90)
        deep.mkdir(parents=True)
        (deep / ("z" * 120)).write_text("long")
        os.symlink("q" * 150, src / "ll")
    for p in src.rglob("*"):
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    tar = tmp_path / "a.tar.gz"
    subprocess.run(["tar", f"--format={fmt}", "--xattrs", "--xattrs-include=user.*", "-czf",
                    str(tar), "-C", str(src), "."], check=True, capture_output=True)
    out = tmp_path / "out"
    with open(tar, "rb") as f:
        layer.apply_layer(f, out, mode="flatten")
    assert _snapshot(out) == _snapshot(src)  # GNU tar adds PAX xattr records in every format


def test_non_utf8_names_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    raw = os.fsencode(src) + b"/caf\xe9-latin1"
    with open(raw, "wb") as f:
        f.write(b"bytes")
    os.symlink(b"caf\xe9-latin1", os.fsencode(src) + b"/lnk")
    blob, info = _write(src, "none")
    out = tmp_path / "out"
    assert layer.apply_layer(io.BytesIO(blob), out, mode="flatten") == info.diff_id
    assert open(os.fsencode(out) + b"/caf\xe9-latin1", "rb").read() == b"bytes"
    assert os.readlink(os.fsencode(out) + b"/lnk") == b"caf\xe9-latin1"


def test_members_noted_while_writing_are_what_the_blob_lists(tmp_path: Path) -> None:
    """`write_layer(members=...)` notes each entry as `list_members` reads it back (what
    `advise` uses instead of decompressing a layer this store built): files, directories,
    symlinks, hard links, a name past ustar's 100 bytes, a name that is not UTF-8, and
    (as root, from a real overlay) whiteouts and an opaque directory."""
    src = tmp_path / "src"
    (src / "d" / ("long" * 40)).mkdir(parents=True)
    (src / "d" / ("long" * 40) / "f.txt").write_text("x" * 5000)
    (src / "a").write_bytes(b"a")
    os.link(src / "a", src / "hard")
    (src / "link").symlink_to("a")
    (src / os.fsdecode(b"bad-\xff-name")).write_bytes(b"b" * 7)
    if ROOT:
        os.mknod(src / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
        os.setxattr(src / "d", "trusted.overlay.opaque", b"y")
    stream = io.BytesIO()
    out = io.BytesIO()
    layer.write_layer(src, out, members=stream)
    listed = list(layer.list_members(io.BytesIO(out.getvalue())))
    noted = layer.read_member_records(stream.getvalue())
    assert noted == listed
    names = [n for n, _, _ in noted]
    assert "d/" + "long" * 40 + "/f.txt" in names and os.fsdecode(b"bad-\xff-name") in names
    if ROOT:
        assert ".wh.gone" in names and "d/.wh..wh..opq" in names


def test_a_damaged_member_list_is_no_list() -> None:
    good = layer.member_record(b"a/b", b"0", 12) + layer.member_record(b"a/", b"5", 0)
    assert layer.read_member_records(good) == [("a/b", b"0", 12), ("a/", b"5", 0)]
    for bad in (good[:-1], good + b"07\0", b"0x\0name\0", b"0\0name\0", b"012\0\0"):
        assert layer.read_member_records(bad) is None, bad
