"""Today's BuildKit (Dockerfile frontend 1.1x) where it differs from the Docker 20.10 engine,
and the bugs BuildKit's own test Dockerfiles found: real builds with pybuild (runc, overlayfs).

Each test names the upstream test or reference section (moby/buildkit
frontend/dockerfile/...) it follows. A check inside the image is a `RUN` that fails the
build, so a wrong behaviour fails the test with the build's output.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from conftest import Pybuild, store_snapshot

pytestmark = pytest.mark.root


def _context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None,
             modes: dict[str, int] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(textwrap.dedent(dockerfile).lstrip())
    for name, content in (files or {}).items():
        p = ctx / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    for name, mode in (modes or {}).items():
        os.chmod(ctx / name, mode)
    return ctx


def _config(pb: Pybuild, tag: str) -> dict:
    import json

    out = pb("inspect", tag)
    data = json.loads(out.stdout)
    return data[0] if isinstance(data, list) else data


def test_add_wildcard_matching_several_into_a_plain_destination(busybox: Pybuild, tmp_path: Path) -> None:
    # dockerfile_add_test.go testDockerfileAddArchiveWildcard (`ADD *.tar /dest`): the
    # "destination must end with /" rule counts source arguments, not wildcard matches.
    ctx = _context(tmp_path, """
        FROM busybox
        ADD dir* /dest
        COPY dir* /cdest
        RUN [ "$(cat /dest/a)" = one ] && [ "$(cat /dest/c)" = two ] && [ -f /cdest/a ] && [ -f /cdest/c ]
        """, {"dir1/a": "one", "dir2/c": "two"})
    busybox("build", "-q", "-t", "wild", str(ctx))


def test_add_of_two_arguments_still_needs_a_directory_destination(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nADD a b /nodir\n", {"a": "1", "b": "2"})
    out = busybox("build", "-q", str(ctx), check=False)
    assert out.returncode != 0
    assert "Dockerfile:2: When using ADD with more than one source file" in out.stderr
    assert "Traceback" not in out.stderr


def test_proxy_build_args_reach_run_in_both_spellings(busybox: Pybuild, tmp_path: Path) -> None:
    # dockerfile2llb/convert.go proxyEnvFromBuildArgs + solver/llbsolver/ops/exec.go
    # proxyEnvList: each proxy arg is set as HTTP_PROXY and http_proxy; never in the image.
    ctx = _context(tmp_path, """
        FROM busybox
        RUN [ "$HTTP_PROXY" = http://127.0.0.1:3128 ] && [ "$http_proxy" = http://127.0.0.1:3128 ] \\
            && [ "$NO_PROXY" = localhost ] && [ "$no_proxy" = localhost ]
        """)
    busybox("build", "-q", "-t", "px", "--build-arg", "http_proxy=http://127.0.0.1:3128",
            "--build-arg", "NO_PROXY=localhost", str(ctx))
    env = "\n".join(_config(busybox, "px").get("Config", {}).get("Env") or [])
    assert "proxy" not in env.lower()
    # the key does not include them: another proxy reuses the step
    again = busybox("build", "-t", "px", "--build-arg", "http_proxy=http://127.0.0.1:9999",
                    "--build-arg", "NO_PROXY=localhost", str(ctx))
    assert "CACHED" in again.stdout + again.stderr


def test_cache_mounts_with_other_owner_or_mode_are_other_directories(busybox: Pybuild, tmp_path: Path) -> None:
    # solver/llbsolver/mounts/mount.go getRefCacheDir keys a cache by id and its base, which
    # convert_runmount.go setCacheUIDGID makes from uid/gid/mode (an explicit Mkdir).
    ctx = _context(tmp_path, """
        FROM busybox
        RUN --mount=type=cache,target=/c,uid=1000,gid=1000,mode=0700 [ "$(stat -c '%u %g %a' /c)" = "1000 1000 700" ] && touch /c/first
        RUN --mount=type=cache,target=/c,uid=2000,gid=2000,mode=0750 [ "$(stat -c '%u %g %a' /c)" = "2000 2000 750" ] && [ ! -e /c/first ]
        RUN --mount=type=cache,target=/c,mode=0700,gid=1000,uid=1000 [ -e /c/first ]
        """)
    busybox("build", "-q", str(ctx))


@pytest.mark.parametrize("mode, source_mode, expected, is_dir", [
    # dockerfile_copy_test.go testChmodNonOctal; reference.md "COPY --chmod" (symbolic, 1.14)
    ("go-w", 0o666, "644", False),
    ("u=rw,g=r,o=r", 0o700, "644", False),
    ("a+X", 0o744, "755", False),
    ("a+X", 0o644, "644", False),
    ("u=rwX,go=rX", 0o700, "755", True),
    ("go-w", 0o777, "755", True),
    ("g=u", 0o640, "660", False),
])
def test_copy_chmod_symbolic(busybox: Pybuild, tmp_path: Path, mode: str, source_mode: int,
                             expected: str, is_dir: bool) -> None:
    src = "d/f" if is_dir else "f"
    ctx = _context(tmp_path, f"""
        FROM busybox
        COPY --chmod={mode} {'d' if is_dir else 'f'} /out
        RUN [ "$(stat -c %a /out)" = {expected} ]
        """, {src: "x"}, {"d" if is_dir else "f": source_mode})
    busybox("build", "-q", str(ctx))


def test_copy_chmod_invalid_is_one_line(busybox: Pybuild, tmp_path: Path) -> None:
    # dockerfile_copy_test.go testCopyInvalidChmod
    ctx = _context(tmp_path, "FROM busybox\nCOPY --chmod=64a f /\n", {"f": "x"})
    before = store_snapshot(busybox.root)
    out = busybox("build", "-q", str(ctx), check=False)
    assert out.returncode != 0
    assert "Dockerfile:2: invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777" in out.stderr
    assert "Traceback" not in out.stderr
    assert {k for k in store_snapshot(busybox.root) if "blobs" in k} == {k for k in before if "blobs" in k}


def test_copy_chmod_gives_created_parents_that_mode(busybox: Pybuild, tmp_path: Path) -> None:
    # dockerfile_copy_test.go testCopyChmod: /parent 0777, /parent/sub 0770
    ctx = _context(tmp_path, """
        FROM busybox
        COPY --chmod=777 foo /parent/foo
        COPY --chmod=770 foo /parent/sub/foo
        COPY foo /plain/foo
        RUN [ "$(stat -c %a /parent)" = 777 ] && [ "$(stat -c %a /parent/sub)" = 770 ] \\
            && [ "$(stat -c %a /plain)" = 755 ]
        """, {"foo": "x"})
    busybox("build", "-q", str(ctx))


def test_copy_parents_pivot_and_empty_wildcard(busybox: Pybuild, tmp_path: Path) -> None:
    # reference.md "COPY --parents"; dockerfile_parents_test.go testCopyRelativeParents and
    # testCopyParentsMissingDirectory
    ctx = _context(tmp_path, """
        FROM busybox AS base
        RUN mkdir -p /test/a/b/c/d/e /test/a/b2/c/d/e && touch /test/a/b/c/d/foo /test/a/b2/c/d/e/bar
        FROM busybox
        COPY --parents ./x/./y/*.txt /p1/
        COPY --parents x/y/a.txt z/./w/c.txt /p2/
        COPY --parents nothing*/here /p3/
        COPY --from=base --parents /test/a/b/./c/d /middle/
        COPY --from=base --parents /test/a/./b/./c /double/
        COPY --from=base --parents /test/a/./*/c /wild/
        COPY --from=base --parents /test/a/b/c/d/. /end/
        COPY --from=base --parents /test/a/b*/./c/**/e /doublewild/
        COPY --parents ./src/**/*.txt /stars/
        RUN [ -f /p1/y/a.txt ] && [ -f /p1/y/b.txt ] && [ ! -e /p1/x ] \\
            && [ -f /p2/x/y/a.txt ] && [ -f /p2/w/c.txt ] && [ ! -e /p2/z ] \\
            && [ -d /p3 ] \\
            && [ -f /middle/c/d/foo ] && [ ! -e /middle/test ] \\
            && [ -f /double/b/c/d/foo ] \\
            && [ -f /wild/b/c/d/foo ] && [ -f /wild/b2/c/d/e/bar ] \\
            && [ -f /end/test/a/b/c/d/foo ] \
            && [ -d /doublewild/c/d/e ] && [ -f /doublewild/c/d/e/bar ] && [ ! -e /doublewild/c/d/foo ] \
            && [ -f /stars/src/a.txt ] && [ -f /stars/src/x/b.txt ] && [ -f /stars/src/x/y/c.txt ] \
            && [ ! -e /stars/src/x/n.md ]
        """, {"x/y/a.txt": "a", "x/y/b.txt": "b", "z/w/c.txt": "c", "src/a.txt": "1",
              "src/x/b.txt": "2", "src/x/y/c.txt": "3", "src/x/n.md": "4"})
    busybox("build", "-q", str(ctx))


def test_onbuild_copy_from_a_stage_in_an_inherited_stage(busybox: Pybuild, tmp_path: Path) -> None:
    # dockerfile_onbuild_test.go testOnBuildInheritedStageWithFrom
    ctx = _context(tmp_path, """
        FROM busybox AS src
        RUN mkdir -p /in && echo -n 12 > /in/file
        FROM busybox AS base
        ONBUILD COPY --from=src /in/file /out/foo
        FROM base AS mid
        RUN cp /out/foo /out/bar && [ "$(cat /out/bar)" = 12 ]
        """)
    busybox("build", "-q", str(ctx))


def test_mount_values_are_expanded_type_included(busybox: Pybuild, tmp_path: Path) -> None:
    # instructions/commands_runmount.go parseMount: with an expander every value is
    # expanded; only `from` is refused a variable (define an alias stage instead)
    ctx = _context(tmp_path, """
        FROM busybox
        ARG T=cache TGT=/cache UID=1234 MODE=0710
        RUN --mount=type=$T,target=$TGT,uid=$UID,mode=$MODE [ "$(stat -c '%u %a' /cache)" = "1234 710" ]
        """)
    busybox("build", "-q", str(ctx))
    (tmp_path / "b").mkdir()
    bad = _context(tmp_path / "b", "FROM busybox AS s\nFROM busybox\nARG S=s\nRUN --mount=from=$S,target=/x true\n")
    out = busybox("build", "-q", str(bad), check=False)
    assert out.returncode != 0 and "doesn't support variable expansion, define alias stage instead" in out.stderr


def test_targetstage_build_arg(busybox: Pybuild, tmp_path: Path) -> None:
    # dockerfile_args_test.go testTargetStageNameArg
    ctx = _context(tmp_path, """
        FROM busybox AS base
        RUN [ "value:$TARGETSTAGE" = "value:" ]
        ARG TARGETSTAGE
        RUN echo -n "$TARGETSTAGE" > /stage
        FROM base AS foo
        RUN [ "$(cat /stage)" = foo ]
        FROM base
        RUN [ "$(cat /stage)" = default ]
        """)
    busybox("build", "-q", "--target", "foo", str(ctx))
    busybox("build", "-q", str(ctx))


def test_sandbox_hostname_build_arg(busybox: Pybuild, tmp_path: Path) -> None:
    # reference.md "BuildKit built-in build args": BUILDKIT_SANDBOX_HOSTNAME (default buildkitsandbox)
    ctx = _context(tmp_path, """
        FROM busybox
        ARG EXPECT
        RUN [ "$(hostname)" = "${EXPECT}" ] && grep -q "${EXPECT}" /etc/hosts
        """)
    busybox("build", "-q", "--build-arg", "EXPECT=buildkitsandbox", str(ctx))
    out = busybox("build", "-q", "--build-arg", "EXPECT=myhost", "--build-arg",
                  "BUILDKIT_SANDBOX_HOSTNAME=myhost", str(ctx))
    assert "not consumed" not in out.stderr


def test_root_without_user_gets_its_supplementary_groups(busybox: Pybuild, tmp_path: Path) -> None:
    # executor/oci/user.go GetUser: no USER is "0" looked up in /etc/passwd and /etc/group
    # (the CVE-2023-25173 fix); a numeric USER as well
    ctx = _context(tmp_path, """
        FROM busybox
        RUN echo "wheel:x:10:root,app" >> /etc/group
        RUN [ "$(id -G)" = "0 10" ]
        USER 1000
        RUN [ "$(id -G)" = "1000 10 2000" ]
        USER 1000:1000
        RUN [ "$(id -G)" = "1000" ]
        """)
    busybox("build", "-q", str(ctx))


# --- ADD of git repositories, served on loopback by `git http-backend` ---------------------

def _git(cwd: Path, *args: str) -> str:
    import subprocess

    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def git_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A bare repository `repo.git` (tags v0.0.1..v0.0.3, a `sub/` dir, branch `main`) served
    over smart HTTP by git http-backend behind a small threaded HTTP server on 127.0.0.1."""
    import shutil
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    backend = Path("/usr/lib/git-core/git-http-backend")
    if shutil.which("git") is None or not backend.exists():
        pytest.skip("git is not installed (apt-get install git)")
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    commits = {}
    for tag in ("v0.0.1", "v0.0.2", "v0.0.3"):
        (work / "foo").write_text(f"foo of {tag}\n")
        (work / "sub").mkdir(exist_ok=True)
        (work / "sub" / "in-sub").write_text(tag)
        (work / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(work / "run.sh", 0o755)
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", tag)
        _git(work, "tag", tag)
        commits[tag] = _git(work, "rev-parse", "HEAD")
    root = tmp_path / "served"
    root.mkdir()
    _git(tmp_path, "clone", "-q", "--bare", str(work), str(root / "repo.git"))

    class CGI(BaseHTTPRequestHandler):
        def _run(self) -> None:
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {"GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
                   "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                   "CONTENT_TYPE": self.headers.get("Content-Type", ""), "REMOTE_ADDR": "127.0.0.1",
                   "CONTENT_LENGTH": str(len(body)), "GIT_CONFIG_NOSYSTEM": "1",
                   "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                   "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            out = subprocess.run([str(backend)], input=body, env=env, capture_output=True,
                                 check=False).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for row in head.decode().split("\r\n"):
                k, _, v = row.partition(":")
                if k.lower() == "status":
                    status = int(v.split()[0])
                elif k:
                    headers.append((k, v.strip()))
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _run

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), CGI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/repo.git", commits, work
    finally:
        server.shutdown()
        server.server_close()


def test_add_git_ref_subdir_chown_and_keep_git_dir(busybox: Pybuild, tmp_path: Path, git_server) -> None:  # type: ignore[no-untyped-def]
    # dockerfile_addgit_test.go testAddGit; reference.md "Adding private Git repositories"
    url, commits, _ = git_server
    ctx = _context(tmp_path, f"""
        FROM busybox
        ADD {url}#v0.0.1 /x
        RUN [ "$(cat /x/foo)" = "foo of v0.0.1" ] && [ ! -e /x/.git ] && [ "$(stat -c %a /x/run.sh)" = 755 ]
        ARG REPO={url}
        ARG TAG=v0.0.2
        ADD --keep-git-dir=true --chown=4242:8484 --checksum={commits['v0.0.2']} ${{REPO}}#${{TAG}} /kept
        RUN [ "$(cat /kept/foo)" = "foo of v0.0.2" ] && [ "$(stat -c '%u %g' /kept/foo)" = "4242 8484" ] \\
            && [ -d /kept/.git ] && [ -f /kept/.git/HEAD ]
        ADD {url}#v0.0.3:sub /onlysub
        RUN [ "$(cat /onlysub/in-sub)" = v0.0.3 ] && [ ! -e /onlysub/foo ]
        ADD {url}?ref=v0.0.2&subdir=sub /query/
        RUN [ "$(cat /query/in-sub)" = v0.0.2 ]
        ADD --checksum={commits['v0.0.3'][:7]} {url}#{commits['v0.0.3']} /bycommit
        RUN [ "$(cat /bycommit/foo)" = "foo of v0.0.3" ]
        ADD {url} /head
        RUN [ "$(cat /head/foo)" = "foo of v0.0.3" ]
        """)
    busybox("build", "-q", "-t", "gitadd", str(ctx))
    again = busybox("build", "-t", "gitadd", str(ctx))
    assert again.stdout.count("CACHED") + again.stderr.count("CACHED") >= 6  # refs unchanged: hits


def test_add_git_checksum_mismatch_and_bad_forms(busybox: Pybuild, tmp_path: Path, git_server) -> None:  # type: ignore[no-untyped-def]
    # dockerfile_addgit_test.go testAddGit ("expected checksum to match", "invalid checksum");
    # convert_copy.go: checksum only for HTTP(S) and git, COPY takes neither
    url, commits, _ = git_server
    cases = [
        (f"ADD --checksum={commits['v0.0.1']} {url}#v0.0.2 /x", "expected checksum to match"),
        (f"ADD --checksum=foobar {url}#v0.0.2 /x", "expected hex commit hash"),
        (f"COPY {url}#v0.0.2 /x", "source can't be a git ref for COPY"),
        ("ADD --checksum=sha256:" + "0" * 64 + " f /x", "checksum requires HTTP(S) or Git sources"),
        (f"ADD --keep-git-dir=false {url}?keep-git-dir=true /x", "inconsistent keep-git-dir configuration"),
        (f"ADD {url}#nope /x", "git ref 'nope' not found"),
    ]
    for i, (line, message) in enumerate(cases):
        d = tmp_path / str(i)
        d.mkdir()
        ctx = _context(d, f"FROM busybox\n{line}\n", {"f": "x"})
        out = busybox("build", "-q", str(ctx), check=False)
        assert out.returncode != 0, line
        assert message in out.stderr and "Dockerfile:2:" in out.stderr, (line, out.stderr)
        assert "Traceback" not in out.stderr


def test_add_git_moved_branch_is_a_new_key(busybox: Pybuild, tmp_path: Path, git_server) -> None:  # type: ignore[no-untyped-def]
    # the ref is resolved to a commit for the cache key (BuildKit's git source resolves it
    # before the cache lookup): a new commit on `main` is seen by the next build
    url, _, work = git_server
    ctx = _context(tmp_path, f"FROM busybox\nADD {url}#main /m\nRUN cat /m/foo\n")
    busybox("build", "-q", "-t", "m", str(ctx))
    (work / "foo").write_text("moved\n")
    _git(work, "commit", "-q", "-am", "moved")
    _git(work, "push", "-q", str(tmp_path / "served" / "repo.git"), "main")
    out = busybox("build", "-t", "m", str(ctx))
    assert "moved" in out.stdout + out.stderr


def test_add_unpack_flag(busybox: Pybuild, tmp_path: Path) -> None:
    # reference.md "ADD --unpack": local archives unpacked by default, --unpack=false keeps
    # the file; an http archive is unpacked only with --unpack=true
    import io
    import tarfile
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ti = tarfile.TarInfo("inside.txt")
        ti.size = 2
        tar.addfile(ti, io.BytesIO(b"in"))
    (ctx / "a.tar.gz").write_bytes(buf.getvalue())
    handler = partial(SimpleHTTPRequestHandler, directory=str(ctx))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/a.tar.gz"
    try:
        (ctx / "Dockerfile").write_text(textwrap.dedent(f"""\
            FROM busybox
            ADD a.tar.gz /default/
            ADD --unpack=false a.tar.gz /kept/
            ADD {url} /remote/
            ADD --unpack=true {url} /remote-unpacked/
            RUN [ -f /default/inside.txt ] && [ -f /kept/a.tar.gz ] && [ ! -e /kept/inside.txt ] \\
                && [ -f /remote/a.tar.gz ] && [ "$(cat /remote-unpacked/inside.txt)" = in ]
            """))
        busybox("build", "-q", str(ctx))
        # dockerfile_add_test.go (was dockerfile_addchecksum_test.go) testAddChecksum
        import hashlib

        good = "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()
        for i, (checksum, message) in enumerate([
                (good, None), ("sha256:" + "0" * 64, "checksum mismatch"),
                ("md5:7e55db001d319a94b0b713529a756623", "unsupported digest algorithm"),
                ("sha256:abc", "invalid checksum digest format")]):
            d = tmp_path / f"c{i}"
            d.mkdir()
            (d / "Dockerfile").write_text(f"FROM busybox\nADD --checksum={checksum} {url} /tmp/foo\n")
            out = busybox("build", "-q", str(d), check=message is None)
            if message is not None:
                assert out.returncode != 0 and message in out.stderr and "Dockerfile:2:" in out.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_copy_parents_doublestar_key_covers_every_match(busybox: Pybuild, tmp_path: Path) -> None:
    # a `**` source matches at any depth: an edit to any matched file is a new key
    ctx = _context(tmp_path, """
        FROM busybox
        COPY --parents ./src/**/*.txt /stars/
        RUN cat /stars/src/a.txt
        """, {"src/a.txt": "first", "src/x/b.txt": "2"})
    busybox("build", "-q", "-t", "stars", str(ctx))
    (ctx / "src" / "a.txt").write_text("second")
    out = busybox("build", "-t", "stars", str(ctx))
    assert "second" in out.stdout + out.stderr


def test_run_security_insecure_needs_the_entitlement(busybox: Pybuild, tmp_path: Path) -> None:
    # dockerfile_runsecurity_test.go testRunSecurityInsecure / testRunSecurityDefault: the
    # default set is docker's; insecure gets every capability (upstream: 0x3fffffffff and up;
    # here: all that this host's bounding set holds, which may lack a few)
    host = next(ln.split()[1] for ln in Path("/proc/self/status").read_text().splitlines()
                if ln.startswith("CapBnd:"))
    ctx = _context(tmp_path, f"""
        FROM busybox
        RUN [ "$(grep CapBnd /proc/self/status)" = "$(printf 'CapBnd:\\t00000000a80425fb')" ]
        RUN --security=insecure [ "$(grep CapBnd /proc/self/status | cut -f 2)" = {host} ]
        RUN --security=sandbox [ "$(grep CapBnd /proc/self/status)" = "$(printf 'CapBnd:\\t00000000a80425fb')" ]
        """)
    assert int(host, 16) & 0xa80425fb == 0xa80425fb and int(host, 16) > 0xa80425fb
    out = busybox("build", "-q", str(ctx), check=False)
    assert out.returncode != 0
    assert "Dockerfile:3: RUN --security=insecure needs the security.insecure entitlement" in out.stderr
    busybox("build", "-q", "--allow", "security.insecure", str(ctx))
