"""Root-free checks of today's BuildKit frontend rules (the builds are in
test_buildkit_semantics.py). Each names the upstream code or test it follows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pybuild.dockerfile import instructions as ins
from pybuild.dockerfile import parse, stages
from pybuild.errors import DockerfileError
from pybuild.solver.copy import parents_pivot, parse_chmod
from pybuild.solver.git import parse_git_ref
from pybuild.solver.mounts import cache_dir_key


def _plan(text: str, args: dict[str, str] | None = None, target: str | None = None) -> stages.BuildPlan:
    return stages.plan(parse(text), args or {}, target)


def test_targetstage_is_predefined() -> None:
    # platform.go defaultArgs: TARGETSTAGE = the target, or "default"
    assert _plan("FROM a AS x\nFROM a\n").meta_args["TARGETSTAGE"] == "default"
    assert _plan("FROM a AS x\nFROM a\n", target="x").meta_args["TARGETSTAGE"] == "x"
    assert _plan("FROM a\n", {"TARGETSTAGE": "y"}).unused_build_args == []


def test_global_arg_without_value_keeps_the_platform_value() -> None:
    # convert.go buildMetaArgs: a valueless meta ARG changes nothing (20.10 unset it)
    meta = _plan("ARG TARGETPLATFORM\nFROM a\n").meta_args
    assert meta["TARGETPLATFORM"] == stages.platform_args()["TARGETPLATFORM"]


def test_proxy_env_both_spellings() -> None:
    # convert.go proxyEnvFromBuildArgs (sorted keys, case-insensitive) + exec.go proxyEnvList
    assert stages.proxy_env({"http_proxy": "a", "HTTP_PROXY": "b", "no_proxy": "", "X": "1"}) \
        == ["HTTP_PROXY=a", "http_proxy=a"]
    assert stages.proxy_env({"ALL_PROXY": "s"}) == ["ALL_PROXY=s", "all_proxy=s"]


def test_onbuild_copy_from_makes_a_stage_dependency() -> None:
    # dockerfile_onbuild_test.go testOnBuildInheritedStageWithFrom
    p = _plan("FROM a AS src\nFROM a AS base\nONBUILD COPY --from=src /x /y\nFROM base AS mid\n")
    assert [s.name for s in p.stages] == ["src", "base", "mid"]
    assert p.target.deps == {0, 1}


def test_mount_type_from_a_variable() -> None:
    # commands_runmount.go parseMount: only `from` is checked before the step's env is known
    run = ins.from_node(parse("FROM a\nRUN --mount=type=$T,target=/c,sharing=locked true\n").nodes[1])
    assert isinstance(run, ins.Run)
    from pybuild.dockerfile import ShellLex

    m = run.mounts[0].expand(ShellLex(), {"T": "cache"})
    assert (m.type, m.target, m.sharing) == ("cache", "/c", "locked")
    with pytest.raises(DockerfileError, match="define alias stage instead"):
        ins.from_node(parse("FROM a\nRUN --mount=type=$T,from=$S,target=/c true\n").nodes[1])


@pytest.mark.parametrize("written, drop", [
    ("/test/a/b/./c/d", 3), ("/test/a/b/c/d/.", 0), ("./test/a", 0), ("/test/a/./b/./c", 2),
    ("./x/./y/*.txt", 1),
])
def test_parents_pivot(written: str, drop: int) -> None:
    # reference.md "COPY --parents"; dockerfile_parents_test.go testCopyRelativeParents
    assert parents_pivot(written) == drop


@pytest.mark.parametrize("mode, current, is_dir, expected", [
    # dockerfile_copy_test.go testChmodNonOctal; chmod(1) semantics
    ("go-w", 0o666, False, 0o644), ("u=rw,g=r,o=r", 0o700, False, 0o644),
    ("a+X", 0o644, False, 0o644), ("a+X", 0o744, False, 0o755), ("a+X", 0o600, True, 0o711),
    ("u+rw,g+r,o-x,o+w", 0o751, True, 0o752), ("g=u", 0o640, False, 0o660), ("+x", 0o644, False, 0o755),
    ("u+s", 0o755, False, 0o4755), ("755", 0o600, False, 0o755),
])
def test_symbolic_chmod(mode: str, current: int, is_dir: bool, expected: int) -> None:
    assert parse_chmod(mode, 1).mode(current, is_dir) == expected


@pytest.mark.parametrize("bad", ["64a", "9", "77777", "u*x", "go-q", ""])
def test_bad_chmod(bad: str) -> None:
    # dockerfile_copy_test.go testCopyInvalidChmod
    with pytest.raises(DockerfileError, match="invalid chmod parameter"):
        parse_chmod(bad, 2)


@pytest.mark.parametrize("src, remote, ref, subdir", [
    # dfgitutil/git_ref.go ParseGitRef, util/gitutil/git_url.go ParseURL
    ("https://h/r.git#v1:sub/dir", "https://h/r.git", "v1", "sub/dir"),
    ("git@github.com:moby/buildkit.git#main", "git@github.com:moby/buildkit.git", "main", ""),
    ("ssh://git@h/r.git?ref=v1&subdir=/a/../b", "ssh://git@h/r.git", "v1", "b"),
    ("git://127.0.0.1:9/r.git?tag=v2", "git://127.0.0.1:9/r.git", "refs/tags/v2", ""),
    ("https://h/r.git?branch=dev", "https://h/r.git", "refs/heads/dev", ""),
])
def test_git_refs(src: str, remote: str, ref: str, subdir: str) -> None:
    g = parse_git_ref(src)
    assert g is not None and (g.remote, g.ref, g.subdir) == (remote, ref, subdir)


@pytest.mark.parametrize("src", ["http://h/file.tar", "./r.git", "dir/x.git", "ftp://h/r.git",
                                 "github.com/moby/buildkit"])
def test_not_git(src: str) -> None:
    assert parse_git_ref(src) is None


@pytest.mark.parametrize("src, message", [
    ("https://h/r.git?nope=1", 'unexpected query "nope"'),
    ("https://h/r.git?tag=a&branch=b", "branch conflicts with tag"),
    ("https://h/r.git?ref=b#a", "ref conflicts"),
])
def test_bad_git_queries(src: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        parse_git_ref(src, 3)


def test_cache_dir_key_separates_owner_and_mode() -> None:
    # mounts/mount.go getRefCacheDir: `id` alone, or `id:<base ref>` when uid/gid/mode make one
    def m(**kw: object) -> SimpleNamespace:
        return SimpleNamespace(**{"uid": None, "gid": None, "mode": None, "from_": None, "source": None, **kw})

    assert cache_dir_key(m(), "/c") == "/c"
    assert cache_dir_key(m(uid=1), "/c") != cache_dir_key(m(uid=2), "/c")
    assert cache_dir_key(m(uid=0), "/c") == cache_dir_key(m(mode=0o755), "/c")  # same Mkdir
    assert cache_dir_key(m(uid=1), "/c") != cache_dir_key(m(), "/c")


@pytest.mark.parametrize("src", [
    "https://h/r.git#--upload-pack=touch /tmp/pwned",  # would be an option to git fetch
    "https://h/r.git?ref=-x", "https://h/r.git?branch=a..b", "https://h/r.git#a b",
])
def test_hostile_git_refs_are_refused(src: str) -> None:
    with pytest.raises(DockerfileError, match="invalid git ref"):
        parse_git_ref(src, 4)


def test_scp_host_cannot_be_an_ssh_option() -> None:
    assert parse_git_ref("git@-oProxyCommand=touch:x.git") is None  # a local path then
