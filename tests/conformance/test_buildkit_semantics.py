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
        RUN [ -f /p1/y/a.txt ] && [ -f /p1/y/b.txt ] && [ ! -e /p1/x ] \\
            && [ -f /p2/x/y/a.txt ] && [ -f /p2/w/c.txt ] && [ ! -e /p2/z ] \\
            && [ -d /p3 ] \\
            && [ -f /middle/c/d/foo ] && [ ! -e /middle/test ] \\
            && [ -f /double/b/c/d/foo ] \\
            && [ -f /wild/b/c/d/foo ] && [ -f /wild/b2/c/d/e/bar ] \\
            && [ -f /end/test/a/b/c/d/foo ]
        """, {"x/y/a.txt": "a", "x/y/b.txt": "b", "z/w/c.txt": "c"})
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
