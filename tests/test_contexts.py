"""Contexts from anywhere: -f -, - (tar or Dockerfile on stdin), git URLs served by a real
`git daemon` and by plain HTTP on loopback, http tarballs; compared with `docker build`."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import Pybuild, store_snapshot
from engines import _stop, docker_engine, free_port
from pybuild.sources import is_git_url, split_git_url

DOCKERFILE = "FROM busybox\nCOPY . /ctx/\nRUN cat /ctx/msg.txt\n"


def _run(pb: Pybuild, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYBUILD_PROGRESS="plain")
    return subprocess.run([sys.executable, "-m", "pybuild", "--root", str(pb.root), *args],
                          input=stdin, capture_output=True, env=env, timeout=300)


def _tarball(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---- root-free ------------------------------------------------------------------------------

def test_git_url_rules_as_docker() -> None:
    for url in ("https://example.com/r.git", "https://example.com/r.git#main:sub",
                "git://h/r", "git@github.com:a/b.git", "github.com/a/b", "ssh://git@h/r.git"):
        assert is_git_url(url), url
    for url in ("https://example.com/ctx.tar.gz", "http://h/r.git.tar", "./dir", "-"):
        assert not is_git_url(url), url
    assert split_git_url("git://h/r.git#v1:sub/dir") == ("git://h/r.git", "v1", "sub/dir")
    assert split_git_url("git://h/r.git#:sub") == ("git://h/r.git", "", "sub")
    assert split_git_url("git://h/r.git") == ("git://h/r.git", "", "")


# ---- stdin ------------------------------------------------------------------------------------

def test_dockerfile_from_stdin_and_tar_context_from_stdin(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "msg.txt").write_text("from the context\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN false\n")  # -f - must win over it
    proc = _run(busybox, "build", "-t", "stdin-df", "-f", "-", str(ctx), stdin=DOCKERFILE.encode())
    assert proc.returncode == 0, proc.stderr
    assert b"from the context" in proc.stderr
    # an error names the Dockerfile, never "-"
    bad = _run(busybox, "build", "-f", "-", str(ctx), stdin=b"FROM busybox\nRUN exit 3\n")
    assert bad.returncode != 0 and b"Dockerfile:2: process" in bad.stderr
    # a gzipped tar on stdin is the context, its Dockerfile inside it
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in (("Dockerfile", DOCKERFILE.encode()), ("msg.txt", b"from a tar\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    proc = _run(busybox, "build", "-", stdin=buf.getvalue())
    assert proc.returncode == 0, proc.stderr
    assert b"from a tar" in proc.stderr
    # -f names a file inside the stdin tar
    buf2 = io.BytesIO()
    with tarfile.open(fileobj=buf2, mode="w") as t:
        for name, data in (("sub/Build.df", b"FROM busybox\nRUN echo picked\n"),):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    proc = _run(busybox, "build", "-f", "sub/Build.df", "-", stdin=buf2.getvalue())
    assert proc.returncode == 0 and b"picked" in proc.stderr
    # plain text on stdin is a Dockerfile with an empty context
    proc = _run(busybox, "build", "-", stdin=b"FROM busybox\nRUN echo no context\n")
    assert proc.returncode == 0 and b"no context" in proc.stderr
    both = _run(busybox, "build", "-f", "-", "-", stdin=b"")
    assert both.returncode == 1
    assert both.stderr.strip().endswith(b"can't use stdin for both build context and dockerfile")


def test_hostile_stdin_tar_stays_in_its_temp_dir(busybox: Pybuild, tmp_path: Path) -> None:
    target = tmp_path / "outside"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        link = tarfile.TarInfo("escape")
        link.type = tarfile.SYMTYPE
        link.linkname = str(target)
        t.addfile(link)
        for name, data in (("escape/pwned", b"x"), ("../pwned2", b"y"),
                           ("Dockerfile", b"FROM busybox\nRUN true\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    target.mkdir()
    before = store_snapshot(busybox.root)
    proc = _run(busybox, "build", "-", stdin=buf.getvalue())
    assert list(target.iterdir()) == []
    assert not (tmp_path / "pwned2").exists()
    if proc.returncode != 0:
        assert b"Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert store_snapshot(busybox.root) == before


# ---- git and http servers on loopback ---------------------------------------------------------

def _git(*args: str, cwd: Path) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e", GIT_CONFIG_NOSYSTEM="1", HOME=str(cwd))
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare repository: main with app/, a v1 tag, a branch `other` with different files."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed (apt-get install git)")
    base = tmp_path_factory.mktemp("git")
    work = base / "work"
    work.mkdir()
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "msg.txt").write_text("root of main\n")
    (work / "app").mkdir()
    (work / "app" / "msg.txt").write_text("app at v1\n")
    (work / "app" / "Dockerfile").write_text(DOCKERFILE)
    (work / "Dockerfile").write_text(DOCKERFILE)
    (work / "app" / "up").symlink_to("/etc")
    _git("add", "-A", cwd=work)
    _git("commit", "-qm", "v1", cwd=work)
    _git("tag", "v1", cwd=work)
    (work / "app" / "msg.txt").write_text("app at main\n")
    _git("commit", "-qam", "main", cwd=work)
    _git("checkout", "-qb", "other", cwd=work)
    (work / "msg.txt").write_text("on branch other\n")
    _git("commit", "-qam", "other", cwd=work)
    _git("checkout", "-q", "main", cwd=work)
    bare = base / "srv" / "repo.git"
    bare.parent.mkdir()
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=base)
    _git("update-server-info", cwd=bare)  # for the plain ("dumb") HTTP server
    return bare.parent


@pytest.fixture(scope="module")
def git_daemon(repos: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
                             f"--port={port}", f"--base-path={repos}", str(repos)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket
        import time

        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        yield f"git://127.0.0.1:{port}"
    finally:
        _stop(proc)


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _build_out(pb: Pybuild, context: str, out: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return _run(pb, "build", *extra, "-o", f"type=local,dest={out}", context)


def test_git_contexts_with_ref_and_subdir(busybox: Pybuild, git_daemon: str, repos: Path,
                                          tmp_path: Path) -> None:
    url = f"{git_daemon}/repo.git"
    cases = [("", {"msg.txt": b"root of main\n"}), ("#v1:app", {"msg.txt": b"app at v1\n"}),
             ("#main:app", {"msg.txt": b"app at main\n"}), ("#other", {"msg.txt": b"on branch other\n"})]
    for n, (fragment, want) in enumerate(cases):
        out = tmp_path / f"out{n}"
        proc = _build_out(busybox, url + fragment, out)
        assert proc.returncode == 0, (fragment, proc.stderr)
        got = {k.removeprefix("ctx/"): v for k, v in _files(out).items() if k.startswith("ctx/")}
        for k, v in want.items():
            assert got[k] == v, fragment
        assert not any(k.startswith(".git/") for k in got), "the .git dir is not part of the context"
    # a commit id (not advertised): the shallow fetch falls back to a full one
    work = repos.parent / "work"
    commit = _git("rev-parse", "v1", cwd=work)
    proc = _build_out(busybox, f"{url}#{commit}:app", tmp_path / "bycommit")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "bycommit" / "ctx" / "msg.txt").read_text() == "app at v1\n"
    # plain HTTP (git's dumb protocol: no shallow fetch either), an https-style .git URL
    with http_server(repos) as http:
        proc = _build_out(busybox, f"{http}/repo.git#other", tmp_path / "http")
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "http" / "ctx" / "msg.txt").read_text() == "on branch other\n"
    # errors: one line, the store unchanged
    before = store_snapshot(busybox.root)
    for bad, message in ((f"{url}#nope", b"has no branch, tag or commit 'nope'"),
                         (f"{url}#main:missing", b"is not a directory"),
                         (f"{url}#main:app/up", b"is not a directory")):
        proc = _run(busybox, "build", bad)
        assert proc.returncode == 1 and message in proc.stderr, (bad, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert store_snapshot(busybox.root) == before


def test_http_tarball_and_plain_dockerfile_urls(busybox: Pybuild, tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    srv.mkdir()
    _tarball(srv / "ctx.tar.gz", {"Dockerfile": DOCKERFILE.encode(), "msg.txt": b"from http\n"})
    (srv / "Dockerfile.txt").write_text("FROM busybox\nRUN echo plain dockerfile url\n")
    with http_server(srv) as http:
        proc = _build_out(busybox, f"{http}/ctx.tar.gz", tmp_path / "o1")
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "o1" / "ctx" / "msg.txt").read_text() == "from http\n"
        proc = _run(busybox, "build", f"{http}/Dockerfile.txt")
        assert proc.returncode == 0 and b"plain dockerfile url" in proc.stderr
        proc = _run(busybox, "build", f"{http}/missing.tar")
        assert proc.returncode == 1
        assert b"failed to GET" in proc.stderr and b"404" in proc.stderr


@pytest.fixture(scope="module")
def docker() -> Iterator:
    with docker_engine() as d:
        yield d


def test_same_contexts_as_docker_build(docker, busybox: Pybuild, git_daemon: str,
                                       tmp_path: Path) -> None:
    """docker build (BuildKit) of the same git and http contexts writes the same files.
    (Docker 20.10's BuildKit refuses a git subdir, "subdir not supported yet": the ref only.)"""
    saved = tmp_path / "bb.tar"
    busybox("save", "-o", str(saved), "busybox")
    docker("load", "-i", str(saved))
    srv = tmp_path / "srv"
    srv.mkdir()
    _tarball(srv / "ctx.tar.gz", {"Dockerfile": DOCKERFILE.encode(), "msg.txt": b"from http\n"})
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    with http_server(srv) as http:
        for n, context in enumerate([f"{git_daemon}/repo.git#v1", f"{http}/ctx.tar.gz"]):
            theirs, ours = tmp_path / f"docker{n}", tmp_path / f"ours{n}"
            proc = subprocess.run(["/usr/bin/docker", "-H", docker.host, "build", "--network=host",
                                   "-o", f"type=local,dest={theirs}", context], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            assert _build_out(busybox, context, ours).returncode == 0
            mine = {k: v for k, v in _files(ours).items() if k.startswith("ctx/")}
            assert mine and mine == {k: v for k, v in _files(theirs).items() if k.startswith("ctx/")}
        # -f - and a Dockerfile on stdin with no context
        for n, args in enumerate([["-f", "-", str(srv)], ["-"]]):
            theirs, ours = tmp_path / f"sd{n}", tmp_path / f"so{n}"
            df = b"FROM busybox\nRUN echo stdin > /made\n"
            proc = subprocess.run(["/usr/bin/docker", "-H", docker.host, "build", "--network=host",
                                   "-o", f"type=local,dest={theirs}", *args], env=env, input=df,
                                  capture_output=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            assert _run(busybox, "build", "-o", f"type=local,dest={ours}", *args,
                        stdin=df).returncode == 0
            assert (ours / "made").read_bytes() == (theirs / "made").read_bytes() == b"stdin\n"
