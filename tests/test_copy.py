"""COPY/ADD semantics on a plain directory used as the rootfs."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from pybuild.solver.copy import CopyRequest, add_urls, copy_into, fetch_urls, write_heredoc_files
from pybuild.context import BuildContext
from pybuild.errors import DockerfileError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="COPY sets file owners: needs root")


@pytest.fixture()
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    return root


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "dir/sub").mkdir(parents=True)
    (root / "a.txt").write_text("A")
    (root / "b.txt").write_text("B")
    (root / "dir/f1").write_text("one")
    (root / "dir/sub/f2").write_text("two")
    os.chmod(root / "dir/f1", 0o751)
    os.utime(root / "dir/f1", (1_000_000, 1_000_000))
    os.chown(root / "dir/f1", 1234, 4321)
    return root


def req(src_root: Path, names: list[str], dest: str, **kw: object) -> CopyRequest:
    return CopyRequest([src_root / n for n in names], src_root, dest, **kw)  # type: ignore[arg-type]


def test_file_to_new_name_and_into_dir(rootfs: Path, src: Path) -> None:
    copy_into(rootfs, req(src, ["a.txt"], "/opt/renamed"))
    assert (rootfs / "opt/renamed").read_text() == "A"
    copy_into(rootfs, req(src, ["a.txt"], "/srv/"))
    assert (rootfs / "srv/a.txt").read_text() == "A"
    copy_into(rootfs, req(src, ["b.txt"], "/etc"))  # an existing directory
    assert (rootfs / "etc/b.txt").read_text() == "B"


def test_relative_dest_uses_workdir(rootfs: Path, src: Path) -> None:
    copy_into(rootfs, req(src, ["a.txt"], "conf/", workdir="/app"))
    copy_into(rootfs, req(src, ["b.txt"], ".", workdir="/app"))
    assert (rootfs / "app/conf/a.txt").exists() and (rootfs / "app/b.txt").exists()


def test_directory_copies_contents_and_keeps_metadata(rootfs: Path, src: Path) -> None:
    copy_into(rootfs, req(src, ["dir"], "/data"))
    assert sorted(os.listdir(rootfs / "data")) == ["f1", "sub"]
    st = os.stat(rootfs / "data/f1")
    assert stat.S_IMODE(st.st_mode) == 0o751
    assert st.st_mtime == 1_000_000
    assert (st.st_uid, st.st_gid) == (0, 0), "context files are owned by root"
    created = os.stat(rootfs / "data")
    assert stat.S_IMODE(created.st_mode) == 0o755 and created.st_uid == 0


def test_missing_parents_created_with_chown_owner(rootfs: Path, src: Path) -> None:
    copy_into(rootfs, req(src, ["a.txt"], "/x/y/z/", chown=(1000, 1001)))
    for d in ["x", "x/y", "x/y/z"]:
        st = os.stat(rootfs / d)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o755)
    st = os.stat(rootfs / "x/y/z/a.txt")
    assert (st.st_uid, st.st_gid) == (1000, 1001)


def test_chmod_and_keep_owner(rootfs: Path, src: Path) -> None:
    copy_into(rootfs, req(src, ["dir"], "/m/", chmod=0o640))
    assert stat.S_IMODE(os.stat(rootfs / "m/f1").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(rootfs / "m/sub").st_mode) == 0o640
    copy_into(rootfs, req(src, ["dir"], "/k/", keep_owner=True))
    st = os.stat(rootfs / "k/f1")
    assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_multiple_sources_need_directory(rootfs: Path, src: Path) -> None:
    with pytest.raises(DockerfileError, match="must be a directory and end with a /") as err:
        copy_into(rootfs, req(src, ["a.txt", "b.txt"], "/nodir", line=9))
    assert err.value.line == 9
    copy_into(rootfs, req(src, ["a.txt", "b.txt"], "/etc"))
    copy_into(rootfs, req(src, ["a.txt", "b.txt"], "/both/"))
    assert sorted(os.listdir(rootfs / "both")) == ["a.txt", "b.txt"]


def test_symlinks_and_hardlinks_kept(rootfs: Path, src: Path) -> None:
    (src / "dir/link").symlink_to("/etc/passwd")
    os.link(src / "dir/f1", src / "dir/hard")
    copy_into(rootfs, req(src, ["dir"], "/l/"))
    assert os.readlink(rootfs / "l/link") == "/etc/passwd"
    assert os.stat(rootfs / "l/f1").st_ino == os.stat(rootfs / "l/hard").st_ino


def test_top_level_symlink_source_is_followed(rootfs: Path, src: Path) -> None:
    (src / "alias").symlink_to("a.txt")
    copy_into(rootfs, req(src, ["alias"], "/t/"))
    assert not (rootfs / "t/alias").is_symlink() and (rootfs / "t/alias").read_text() == "A"


def test_hostile_symlinks_in_rootfs_stay_inside(rootfs: Path, src: Path, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep").write_text("host file")
    (rootfs / "escape").symlink_to(host)  # absolute: the container sees /<host path>
    (rootfs / "up").symlink_to("../../../../../../" + str(host).lstrip("/"))
    (rootfs / "etc/a.txt").symlink_to(host / "keep")
    copy_into(rootfs, req(src, ["a.txt"], "/escape/"))
    copy_into(rootfs, req(src, ["dir"], "/up/"))
    copy_into(rootfs, req(src, ["a.txt"], "/etc/"))  # replaces the link, never writes through it
    assert sorted(os.listdir(host)) == ["keep"] and (host / "keep").read_text() == "host file"
    assert (rootfs / str(host).lstrip("/") / "a.txt").read_text() == "A"
    assert (rootfs / str(host).lstrip("/") / "f1").read_text() == "one"
    assert not (rootfs / "etc/a.txt").is_symlink()


def test_exclude_and_parents(rootfs: Path, src: Path) -> None:
    copy_into(rootfs, req(src, ["dir"], "/e/", exclude=["sub"]))
    assert sorted(os.listdir(rootfs / "e")) == ["f1"]
    copy_into(rootfs, req(src, ["a.txt", "b.txt"], "/e2/", exclude=["b.*"]))
    assert os.listdir(rootfs / "e2") == ["a.txt"]
    copy_into(rootfs, req(src, ["dir/sub/f2", "dir/sub"], "/p/", parents=True))
    assert (rootfs / "p/dir/sub/f2").read_text() == "two"
    assert sorted(os.listdir(rootfs / "p/dir")) == ["sub"]


def test_dockerignore_applies_inside_copied_dirs(rootfs: Path, src: Path) -> None:
    (src / ".dockerignore").write_text("dir/sub\n!dir/sub/f2\ndir/f1\n")
    ctx = BuildContext(src, src / "Dockerfile")
    copy_into(rootfs, CopyRequest(ctx.resolve_sources(["."], 1), src, "/ctx/", ignore=ctx.matcher))
    assert sorted(os.listdir(rootfs / "ctx/dir")) == ["sub"]
    assert os.listdir(rootfs / "ctx/dir/sub") == ["f2"]


def test_fifo_in_source_is_skipped(rootfs: Path, src: Path) -> None:
    os.mkfifo(src / "dir/pipe")
    copy_into(rootfs, req(src, ["dir"], "/f/"))
    assert not os.path.lexists(rootfs / "f/pipe")


def test_add_extracts_local_archives(rootfs: Path, src: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("pkg/hello.txt")
        data = b"hello"
        info.size, info.mode, info.uid = len(data), 0o640, 7
        tar.addfile(info, io.BytesIO(data))
    (src / "plain.tar").write_bytes(buf.getvalue())
    (src / "gz.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    (src / "z.tzst").write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    (src / "notatar.gz").write_bytes(gzip.compress(b"just text"))
    for name, dest in [("plain.tar", "/x1"), ("gz.tar.gz", "/x2/"), ("z.tzst", "/x3")]:
        copy_into(rootfs, req(src, [name], dest, is_add=True))
        out = rootfs / dest.strip("/") / "pkg/hello.txt"
        assert out.read_bytes() == b"hello" and os.stat(out).st_uid == 7
    copy_into(rootfs, req(src, ["notatar.gz"], "/y/", is_add=True))
    assert (rootfs / "y/notatar.gz").is_file()
    copy_into(rootfs, req(src, ["plain.tar"], "/c/"))  # COPY never extracts
    assert (rootfs / "c/plain.tar").is_file()


def test_heredoc_files(rootfs: Path) -> None:
    write_heredoc_files(rootfs, [("EOF", "echo hi\n")], "/run.sh", "/", None, 0o755)
    assert (rootfs / "run.sh").read_text() == "echo hi\n"
    assert stat.S_IMODE(os.stat(rootfs / "run.sh").st_mode) == 0o755
    write_heredoc_files(rootfs, [("a", "1"), ("b", "2")], "d/", "/w", (5, 6), None)
    st = os.stat(rootfs / "w/d/b")
    assert (rootfs / "w/d/a").read_text() == "1" and (st.st_uid, stat.S_IMODE(st.st_mode)) == (5, 0o644)


# --------------------------------------------------------------------- ADD <url>

PAYLOAD = b"payload bytes\n" * 100


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.send_header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_add_url(rootfs: Path, server: str, tmp_path: Path) -> None:
    cache = tmp_path / "http-cache"
    good = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    url = f"{server}/files/tool.tar.gz?x=1"
    add_urls(rootfs, fetch_urls(cache, [url], good, 3), "/dl/", "/", None, None, 3)
    out = rootfs / "dl/tool.tar.gz"
    st = os.stat(out)
    assert out.read_bytes() == PAYLOAD, "URLs are never extracted"
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime == 1445412480
    add_urls(rootfs, fetch_urls(cache, [f"{server}/x"], None, 3), "/named", "/", (9, 9), 0o644, 3)
    assert stat.S_IMODE(os.stat(rootfs / "named").st_mode) == 0o644 and os.stat(rootfs / "named").st_uid == 9


def test_add_url_errors(rootfs: Path, server: str, tmp_path: Path) -> None:
    cache = tmp_path / "http-cache"
    bad = "sha256:" + "0" * 64
    with pytest.raises(DockerfileError, match="checksum mismatch") as err:
        fetch_urls(cache, [f"{server}/f"], bad, 4)
    assert err.value.line == 4 and not (rootfs / "dl").exists()
    with pytest.raises(DockerfileError, match="invalid response status 404"):
        fetch_urls(cache, [f"{server}/missing"], None, 4)
    # go-digest's Parse, as BuildKit reports it (dockerfile_addchecksum tests)
    with pytest.raises(DockerfileError, match="unsupported digest algorithm"):
        fetch_urls(cache, [f"{server}/f"], "md5:abc", 4)
    with pytest.raises(DockerfileError, match="invalid checksum digest format"):
        fetch_urls(cache, [f"{server}/f"], "sha256:abc", 4)
    with pytest.raises(DockerfileError, match="unsupported URL scheme"):
        fetch_urls(cache, ["file:///etc/passwd"], None, 4)


def test_copy_from_rootfs_follows_links_inside_that_rootfs(rootfs: Path, tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    (stage / "opt/real").mkdir(parents=True)
    (stage / "opt/real/tool").write_text("stage tool")
    (stage / "bin").mkdir()
    (stage / "bin/tool").symlink_to("/opt/real/tool")  # absolute: means the stage's /opt
    view = BuildContext.for_rootfs(stage)
    copy_into(rootfs, CopyRequest(view.resolve_sources(["/bin/tool"], 1), stage, "/usr/local/bin/", keep_owner=True))
    out = rootfs / "usr/local/bin/tool"
    assert not out.is_symlink() and out.read_text() == "stage tool"
