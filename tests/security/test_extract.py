"""Hostile tars against the one extractor: every attack is contained in the root or refused.

Each test puts a victim file outside the root (in the test's tmp dir) and asserts it is
untouched afterwards. The tarsafe tests record where that library is right and wrong.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path
from collections.abc import Callable

import pytest
import tarsafe
import zstandard

from pybuild import layer
from pybuild.errors import PybuildError

ROOT = os.geteuid() == 0
ORIGINAL = b"original host content"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    host.mkdir()
    (host / "victim").write_bytes(ORIGINAL)
    return host / "victim"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def _untouched(victim: Path) -> None:
    assert victim.read_bytes() == ORIGINAL
    assert os.stat(victim).st_nlink == 1
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]


def _tar(*members: tuple[str, str, object], fmt: int = tarfile.PAX_FORMAT,
         pax: dict[str, str] | None = None) -> bytes:
    """A tar from (name, kind, payload): kind is file/dir/sym/link/chr/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o644
            data = b""
            if kind == "file":
                data = payload if isinstance(payload, bytes) else b""
                ti.size = len(data)
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "chr":
                ti.type, (ti.devmajor, ti.devminor) = tarfile.CHRTYPE, payload  # type: ignore[misc]
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            if pax:
                ti.pax_headers = dict(pax)
            t.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _apply(blob: bytes, root: Path, mode: str = "flatten", **kw: int) -> str:
    return layer.apply_layer(io.BytesIO(blob), root, mode=mode, **kw)


def test_dotdot_name_is_refused(root: Path, victim: Path) -> None:
    blob = _tar(("ok", "file", b"1"), ("../host/victim", "file", b"pwned"))
    with pytest.raises(PybuildError, match=r"layer entry '\.\./host/victim': path climbs out"):
        _apply(blob, root)
    blob = _tar(("a/b/../../../host/victim", "file", b"pwned"))
    with pytest.raises(PybuildError, match="climbs out"):
        _apply(blob, root)
    _untouched(victim)


def test_absolute_name_is_contained(root: Path, victim: Path) -> None:
    _apply(_tar((str(victim), "file", b"pwned"), ("/../../x", "file", b"x")), root)
    _untouched(victim)
    assert (root / str(victim).lstrip("/")).read_bytes() == b"pwned"
    assert (root / "x").read_bytes() == b"x"


@pytest.mark.parametrize("target", ["ABS_HOST", "../../../../../../../../HOST"])
def test_symlink_then_write_through_it_is_contained(root: Path, victim: Path, target: str) -> None:
    host = str(victim.parent)
    link = target.replace("ABS_HOST", host).replace("HOST", host.lstrip("/"))
    _apply(_tar(("link", "sym", link), ("link/victim", "file", b"pwned")), root)
    _untouched(victim)
    assert (root / host.lstrip("/") / "victim").read_bytes() == b"pwned"


def test_write_over_a_symlink_replaces_the_link(root: Path, victim: Path) -> None:
    _apply(_tar(("f", "sym", str(victim)), ("f", "file", b"pwned")), root)
    _untouched(victim)
    assert not (root / "f").is_symlink() and (root / "f").read_bytes() == b"pwned"


def test_symlink_loop_is_refused(root: Path, victim: Path) -> None:
    blob = _tar(("a", "sym", "b"), ("b", "sym", "a"), ("a/x", "file", b"x"))
    with pytest.raises(PybuildError, match="too many levels of symbolic links"):
        _apply(blob, root)
    _untouched(victim)


def test_hardlink_outside_is_refused(root: Path, victim: Path) -> None:
    with pytest.raises(PybuildError, match=r"layer entry 'h': hardlink target '\.\./host/victim' is outside"):
        _apply(_tar(("h", "link", "../host/victim")), root)
    # absolute and through-a-symlink targets are looked up inside the root, where they are missing
    with pytest.raises(PybuildError, match="does not exist"):
        _apply(_tar(("h", "link", str(victim))), root)
    with pytest.raises(PybuildError, match="does not exist"):
        _apply(_tar(("s", "sym", str(victim.parent)), ("h", "link", "s/victim")), root)
    _untouched(victim)


def test_hardlink_to_missing_target_is_refused(root: Path, victim: Path) -> None:
    with pytest.raises(PybuildError, match=r"layer entry 'h': hardlink target 'nope' does not exist"):
        _apply(_tar(("h", "link", "nope")), root)
    with pytest.raises(PybuildError, match="is a directory"):
        _apply(_tar(("d", "dir", None), ("h", "link", "d")), root)
    _untouched(victim)


def test_directory_replaced_by_symlink_between_entries(root: Path, victim: Path) -> None:
    blob = _tar(("d", "dir", None), ("d/a", "file", b"a"), ("d", "sym", str(victim.parent)),
                ("d/victim", "file", b"pwned"))
    _apply(blob, root)
    _untouched(victim)
    assert (root / "d").is_symlink()
    assert (root / str(victim).lstrip("/")).read_bytes() == b"pwned"


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
def test_device_nodes_are_created_only_inside_root(root: Path, victim: Path) -> None:
    _apply(_tar(("dev/null", "chr", (1, 3)), (f"{victim.parent}/sda", "chr", (8, 0)),
                ("link", "sym", str(victim.parent)), ("link/tty", "chr", (5, 0))), root)
    _untouched(victim)
    assert os.lstat(root / "dev" / "null").st_rdev == os.makedev(1, 3)
    inside = root / str(victim.parent).lstrip("/")
    assert stat.S_ISCHR(os.lstat(inside / "sda").st_mode) and stat.S_ISCHR(os.lstat(inside / "tty").st_mode)
    with pytest.raises(PybuildError, match="climbs out"):
        _apply(_tar(("../host/sda", "chr", (8, 0))), root)
    _untouched(victim)


def test_duplicate_entries_later_wins(root: Path, victim: Path) -> None:
    _apply(_tar(("f", "file", b"first"), ("f", "file", b"second"), ("d", "file", b"file"),
                ("d", "dir", None), ("d/x", "file", b"x"), ("d", "dir", None)), root)
    assert (root / "f").read_bytes() == b"second"
    assert (root / "d" / "x").read_bytes() == b"x"
    _untouched(victim)


def _raw_entry(name: bytes, pax: bytes | None = None, size: int = 0, flag: bytes = b"0") -> bytes:
    """A hand-made header (tarfile refuses to write some of these)."""
    out = b""
    if pax is not None:
        out = _raw_header(b"pax", b"x", len(pax)) + pax + b"\0" * (-len(pax) % 512)
    return out + _raw_header(name, flag, size)


def _raw_header(name: bytes, flag: bytes, size: int) -> bytes:
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:124] = b"0000000\0" * 2
    h[124:136] = b"%011o\0" % size if size < 8 ** 11 else b"\x80" + size.to_bytes(11, "big")
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = flag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def test_nul_in_name_is_refused(root: Path, victim: Path) -> None:
    rec = b"path=ok\0/../../host/victim\n"
    rec = str(len(rec) + 3).encode() + b" " + rec
    blob = _raw_entry(b"x", pax=rec) + bytes(1024)
    with pytest.raises(PybuildError, match=r"layer entry 'ok': name contains a NUL byte"):
        _apply(blob, root)
    _untouched(victim)


def test_overlong_names_are_refused(root: Path, victim: Path) -> None:
    with pytest.raises(PybuildError, match="File name too long"):
        _apply(_tar(("a" * 300, "file", b"x")), root)
    deep = "/".join(["d" * 200] * 30)
    with pytest.raises(PybuildError, match="name longer than 4096 bytes"):
        _apply(_tar((deep, "file", b"x")), root)
    _untouched(victim)


def test_huge_pax_header_is_refused_without_reading_it(root: Path, victim: Path) -> None:
    blob = _raw_header(b"pax", b"x", 8 << 30)  # claims 8 GiB, holds nothing
    with pytest.raises(PybuildError, match="tar extension header of 8589934592 bytes"):
        _apply(blob, root)
    bad = b"99999999999 path=x\n"
    with pytest.raises(PybuildError, match="layer is corrupt: bad PAX record"):
        _apply(_raw_entry(b"x", pax=bad) + bytes(1024), root)
    with pytest.raises(PybuildError, match="PAX uid .* out of range"):
        _apply(_tar(("f", "file", b"x"), pax={"uid": "99999999999999"}), root)
    _untouched(victim)


def test_layer_cannot_set_overlay_xattrs(root: Path) -> None:
    if not ROOT:
        pytest.skip("trusted xattrs need root")
    blob = _tar(("d", "dir", None), pax={"SCHILY.xattr.trusted.overlay.redirect": "/etc"})
    _apply(blob, root, mode="overlay")
    with pytest.raises(OSError):
        os.getxattr(root / "d", "trusted.overlay.redirect")


def _bomb_tar() -> bytes:
    return _tar(("zeros", "file", bytes(32 << 20)))


@pytest.mark.parametrize("compress", [lambda b: gzip.compress(b, 9),
                                      lambda b: zstandard.ZstdCompressor(level=19).compress(b)],
                         ids=["gzip", "zstd"])
def test_decompression_bomb_stops_at_max_size(root: Path, compress: Callable[[bytes], bytes],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    blob = compress(_bomb_tar())
    assert len(blob) < 100_000
    with pytest.raises(PybuildError, match="layer is larger than the limit of 1048576 bytes"):
        _apply(blob, root, max_size=1 << 20)
    assert os.path.getsize(root / "zeros") <= 1 << 20
    monkeypatch.setenv("PYBUILD_MAX_LAYER_SIZE", str(2 << 20))
    with pytest.raises(PybuildError, match="limit of 2097152 bytes"):
        _apply(blob, root)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_truncated_or_corrupt_stream(tmp_path: Path, root: Path, compression: str,
                                     damage: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(os.urandom(200_000))
    out = io.BytesIO()
    layer.write_layer(tmp_path / "src", out, compression=compression)
    blob = out.getvalue()
    if damage == "truncate":
        blob = blob[:-20]
    else:
        pos = len(blob) // 2
        blob = blob[:pos] + bytes([blob[pos] ^ 0xFF]) + blob[pos + 1:]
    with pytest.raises(PybuildError, match="layer is corrupt"):
        _apply(blob, root)


def test_truncated_zstd_without_checksum_is_noticed(root: Path) -> None:
    """Other tools' zstd layers may carry no checksum: the frame walk still sees the cut."""
    blob = zstandard.ZstdCompressor(write_checksum=False).compress(_tar(("f", "file", os.urandom(300_000))))
    for cut in (len(blob) - 3, len(blob) // 2, 8):
        with pytest.raises(PybuildError, match="layer is corrupt: zstd stream ends in the middle"):
            _apply(blob[:cut], root)


def test_extract_archive_contains_everything_in_root(root: Path, victim: Path) -> None:
    with pytest.raises(PybuildError, match=r"archive entry '\.\./\.\./host/victim': path climbs out"):
        layer.extract_archive(io.BytesIO(_tar(("../../host/victim", "file", b"x"))), root, "/app")
    blob = _tar(("l", "sym", str(victim.parent)), ("l/victim", "file", b"pwned"))
    layer.extract_archive(io.BytesIO(blob), root, "/app")
    os.symlink(str(victim.parent), root / "out")
    layer.extract_archive(io.BytesIO(_tar(("victim", "file", b"pwned"))), root, "/out")
    _untouched(victim)
    assert (root / str(victim).lstrip("/")).read_bytes() == b"pwned"


# --------------------------------------------------------------------------- tarsafe


def _tarsafe_extract(blob: bytes, dest: Path) -> None:
    with tarsafe.open(fileobj=io.BytesIO(blob)) as t:
        t.extractall(dest)


def test_tarsafe_right_about_dotdot_names(root: Path, victim: Path) -> None:
    with pytest.raises(tarsafe.TarSafeException):
        _tarsafe_extract(_tar(("../host/victim", "file", b"x")), root)
    _untouched(victim)


def test_tarsafe_wrong_rejects_valid_layer_content(root: Path, tmp_path: Path) -> None:
    valid = {
        "absolute symlink": _tar(("bin", "dir", None), ("bin/sh", "sym", "/bin/busybox")),
        "relative symlink in a subdir": _tar(("a/b", "dir", None), ("a/b/l", "sym", "../../c")),
        "device node": _tar(("dev/null", "chr", (1, 3))),
    }
    for what, blob in valid.items():
        with pytest.raises(tarsafe.TarSafeException):
            _tarsafe_extract(blob, root)
        _apply(blob, tmp_path / what.replace(" ", "-"))  # what docker accepts, we accept


def test_tarsafe_wrong_extracts_whiteouts_as_plain_files(root: Path) -> None:
    _tarsafe_extract(_tar((".wh.gone", "file", b"")), root)
    assert (root / ".wh.gone").is_file()  # not rejected, not applied: a stray file in the image


def test_tarsafe_wrong_misses_a_symlink_chain_escape(tmp_path: Path, victim: Path) -> None:
    """`p -> .` and `q -> p/..` look contained one by one; together q is root's parent."""
    blob = _tar(("p", "sym", "."), ("q", "sym", "p/.."), ("q/host/victim", "file", b"pwned"))
    ours = tmp_path / "ours"
    _apply(blob, ours)
    _untouched(victim)
    assert (ours / "host" / "victim").read_bytes() == b"pwned"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    _tarsafe_extract(blob, theirs)
    assert victim.read_bytes() == b"pwned"  # tarsafe let the layer write outside its root
