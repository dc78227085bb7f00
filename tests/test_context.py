"""Build context: .dockerignore rules, wildcard sources, path safety and content digests."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from pybuild.context import BuildContext, PatternMatcher, go_clean, read_ignore_file
from pybuild.patterns import compile_go_glob
from pybuild.errors import DockerfileError, PybuildError


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def ctx_with(tmp_path: Path, ignore: str, files: dict[str, str]) -> BuildContext:
    root = tmp_path / "ctx"
    root.mkdir()
    make_tree(root, {"Dockerfile": "FROM scratch\n", **files})
    (root / ".dockerignore").write_text(ignore)
    return BuildContext(root, root / "Dockerfile")


# --------------------------------------------------------------------- matcher


@pytest.mark.parametrize(
    ("path", "expected"),
    [("", "."), ("a//b/./c/", "a/b/c"), ("/../a", "/a"), ("../../a", "../../a"), ("a/b/../../..", ".."), ("//", "/")],
)
def test_go_clean(path: str, expected: str) -> None:
    assert go_clean(path) == expected


def test_ignore_file_normalisation() -> None:
    text = "\ufeff# comment\n  \n/abs/path\n!  /keep//me/\n  # not a comment\n./x/../y\n"
    assert read_ignore_file(text) == ["abs/path", "!keep/me", "# not a comment", "y"]


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        (["*.pyc"], "a.pyc", True),
        (["*.pyc"], "sub/a.pyc", False),  # `*` never crosses "/"
        (["**/*.pyc"], "sub/deep/a.pyc", True),
        (["**/*.pyc"], "a.pyc", True),
        (["**/node_modules"], "web/node_modules/x/y.js", True),
        (["node_modules"], "node_modules/x.js", True),  # a matched dir hides its contents
        (["docs/**"], "docs/a/b.md", True),
        (["docs/**"], "docs", False),
        (["**"], "anything/at/all", True),
        (["**foo"], "xfoo", True),  # suffix shortcut, as moby/patternmatcher
        (["a/**/b"], "a/b", True),
        (["a/**/b"], "a/x/y/b", True),
        (["*", "!keep.txt"], "keep.txt", False),
        (["*", "!keep.txt"], "other.txt", True),
        (["!keep.txt", "*"], "keep.txt", True),  # last match wins
        (["logs", "!logs/important.log"], "logs/important.log", False),
        (["logs", "!logs/important.log"], "logs/debug.log", True),
        (["a?c"], "abc", True),
        (["a?c"], "a/c", False),
        (["[a-c]at"], "bat", True),
        (["[^a-c]at"], "bat", False),
        (["file\\*"], "file*", True),
        (["file\\*"], "filex", False),
        (["a.b"], "axb", False),  # "." is literal
        (["./sub/../build/"], "build/out", True),  # cleaned
        (["Dockerfile"], "Dockerfile", True),
    ],
)
def test_pattern_matcher(patterns: list[str], path: str, ignored: bool) -> None:
    assert PatternMatcher(patterns).matches(path) is ignored


def test_bad_patterns_are_user_errors() -> None:
    with pytest.raises(PybuildError, match="illegal exclusion"):
        PatternMatcher(["!"])
    with pytest.raises(PybuildError, match="syntax error"):
        PatternMatcher(["a[b"])


@pytest.mark.parametrize(
    ("pattern", "name", "ok"),
    [("*.txt", ".hidden.txt", True), ("[!a]x", "!x", True), ("[!a]x", "bx", False), ("a\\?", "a?", True),
     ("[]a]", "]", False)],
)
def test_go_glob(pattern: str, name: str, ok: bool) -> None:
    try:
        glob = compile_go_glob(pattern)
    except PybuildError:
        assert not ok  # Go rejects "[]a]": an empty class is malformed
        return
    assert glob.fullmatch(name) is ok


def test_context_ignore_file_choice(tmp_path: Path) -> None:
    root = tmp_path / "ctx"
    make_tree(root, {"build/app.Dockerfile": "FROM scratch\n", "a.log": "", "b.tmp": ""})
    (root / ".dockerignore").write_text("*.log\n")
    assert BuildContext(root, root / "build/app.Dockerfile").is_ignored("a.log")
    (root / "build/app.Dockerfile.dockerignore").write_text("*.tmp\n")
    specific = BuildContext(root, root / "build/app.Dockerfile")
    assert specific.is_ignored("b.tmp") and not specific.is_ignored("a.log")


def test_root_never_ignored(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "*\n**\n", {})
    assert not ctx.is_ignored(".")
    assert ctx.is_ignored("Dockerfile")


# --------------------------------------------------------------------- sources


def rels(ctx: BuildContext, paths: list[Path]) -> list[str]:
    return [os.path.relpath(p, ctx.root) for p in paths]


def test_wildcards_sorted_and_ignored_invisible(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "secret.txt\n", {"b.txt": "", "a.txt": "", "secret.txt": "", "c.md": "", "d/e.txt": ""})
    assert rels(ctx, ctx.resolve_sources(["*.txt"], 3)) == ["a.txt", "b.txt"]
    assert rels(ctx, ctx.resolve_sources(["/?.txt", "*/*.txt"], 3)) == ["a.txt", "b.txt", "d/e.txt"]
    with pytest.raises(DockerfileError, match='"/secret.txt": not found') as err:
        ctx.resolve_sources(["secret.txt"], 7)
    assert err.value.line == 7


def test_missing_source_error(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "", {})
    with pytest.raises(DockerfileError) as err:
        ctx.resolve_sources(["nope/x"], 4)
    assert err.value.message == 'failed to compute cache key: "/nope/x": not found'


def test_empty_wildcard_is_allowed(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "", {"requirements.txt": ""})
    assert ctx.resolve_sources(["poetry.lock*"], 2) == []
    with pytest.raises(DockerfileError, match="not found"):
        ctx.resolve_sources(["missingdir/*.txt"], 2)


def test_reincluded_file_inside_ignored_dir(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "logs\n!logs/keep.log\n", {"logs/keep.log": "k", "logs/drop.log": "d"})
    assert rels(ctx, ctx.resolve_sources(["logs"], 1)) == ["logs"]
    assert rels(ctx, ctx.resolve_sources(["logs/*"], 1)) == ["logs/keep.log"]


def test_absolute_source_is_relative_to_root(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "", {"etc/app.conf": "x"})
    assert rels(ctx, ctx.resolve_sources(["/etc/app.conf"], 1)) == ["etc/app.conf"]
    assert ctx.resolve_sources(["/"], 1) == [ctx.root]
    assert ctx.resolve_sources(["."], 1) == [ctx.root]


def test_sources_escaping_the_root_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_tree(outside, {"secret": "s"})
    ctx = ctx_with(tmp_path, "", {})
    (ctx.root / "up").symlink_to(outside)
    (ctx.root / "abs").symlink_to(outside / "secret")
    # `..` stops at the context root (reference.md "Copying from the build context": parent
    # navigation is removed, as docker 20.10 does: tests/parity/copy_parent_navigation):
    # these name the context's own outside/secret and x, which it does not have.
    for bad in ["../outside/secret", "a/../../x"]:
        with pytest.raises(DockerfileError, match="not found"):
            ctx.resolve_sources([bad], 5)
    (ctx.root / "x").write_text("inside")
    assert rels(ctx, ctx.resolve_sources(["a/../../x"], 5)) == ["x"]
    # Symlinks resolve inside the context, as in BuildKit: the host's outside/secret is
    # never reached; the context has no such path, so the source is not found.
    for missing in ["up/secret", "abs"]:
        with pytest.raises(DockerfileError, match="not found"):
            ctx.resolve_sources([missing], 5)


def test_symlink_inside_context_is_followed(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "", {"real/file": "x"})
    (ctx.root / "alias").symlink_to("real")
    assert rels(ctx, ctx.resolve_sources(["alias/file"], 1)) == ["alias/file"]


# --------------------------------------------------------------------- digest


def test_digest_tracks_content_mode_owner_not_mtime(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "", {"app/main.py": "print(1)\n", "app/lib/util.py": "x = 1\n"})
    src = ctx.resolve_sources(["app"], 1)
    base = ctx.digest(src)
    assert base.startswith("sha256:") and ctx.digest(src) == base
    target = ctx.root / "app/lib/util.py"
    os.utime(target, (1, 1))
    assert ctx.digest(src) == base, "mtime must not change the key"
    os.chmod(target, 0o600)
    changed_mode = ctx.digest(src)
    assert changed_mode != base
    os.chmod(target, 0o644)
    if os.geteuid() == 0:
        os.chown(target, 1234, 1234)
        assert ctx.digest(src) not in (base, changed_mode)
        os.chown(target, 0, 0)
    target.write_text("x = 2\n")
    assert ctx.digest(src) != base


def test_digest_sees_same_size_same_mtime_edit(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "", {"f.txt": "aaaa"})
    path = ctx.root / "f.txt"
    os.utime(path, ns=(10**18, 10**18))
    before_st = os.stat(path)
    before = ctx.digest(ctx.resolve_sources(["f.txt"], 1))
    # The kernel's timestamp clock is coarse: edit until ctime really moves, so the test
    # checks the digest, not the clock.
    for _ in range(10000):
        path.write_text("bbbb")
        os.utime(path, ns=(before_st.st_atime_ns, before_st.st_mtime_ns))
        if os.stat(path).st_ctime_ns != before_st.st_ctime_ns:
            break
    after_st = os.stat(path)
    assert (after_st.st_size, after_st.st_mtime_ns, after_st.st_ino) == (
        before_st.st_size, before_st.st_mtime_ns, before_st.st_ino)
    assert ctx.digest(ctx.resolve_sources(["f.txt"], 1)) != before


def test_digest_excludes_ignored_files(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "**/*.log\n", {"d/a.py": "a", "d/x.log": "1"})
    src = ctx.resolve_sources(["d"], 1)
    base = ctx.digest(src)
    (ctx.root / "d/x.log").write_text("2")
    (ctx.root / "d/y.log").write_text("3")
    assert ctx.digest(src) == base
    (ctx.root / "d/a.py").write_text("b")
    assert ctx.digest(src) != base


def test_symlink_out_is_recorded_as_link_and_fifo_skipped(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_tree(outside, {"big": "secret"})
    ctx = ctx_with(tmp_path, "", {"d/a": "a"})
    (ctx.root / "d/out").symlink_to(outside / "big")
    os.mkfifo(ctx.root / "d/pipe")
    src = ctx.resolve_sources(["d"], 1)
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(ctx.digest(src)), daemon=True)
    worker.start()
    worker.join(30)
    assert result, "digest blocked on a FIFO"
    base = result[0]
    (outside / "big").write_text("changed outside")
    assert ctx.digest(src) == base, "a link out of the context must never be followed"
    (ctx.root / "d/out").unlink()
    (ctx.root / "d/out").symlink_to(outside / "other")
    assert ctx.digest(src) != base, "the link target is part of the key"


def test_manifest_explains_the_digest(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "", {"d/a": "hello"})
    (ctx.root / "d/l").symlink_to("a")
    os.chmod(ctx.root / "d/a", 0o640)
    (ctx.root / "alias").symlink_to("d/a")
    got = ctx.manifest(ctx.resolve_sources(["d", "alias"], 1)).entries()
    uid, gid = os.getuid(), os.getgid()
    sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert got["d/a"] == f"f 640 {uid}:{gid} {sha}"
    assert got["d/l"].startswith("l 777 ") and got["d/l"].endswith(" a")
    assert got["d"].startswith("d ") and got["alias"].endswith(" d/a")
    assert set(got) == {"d", "d/a", "d/l", "alias"}


def test_rootfs_sources_resolve_links_inside(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    make_tree(root, {"etc/alternatives/python": "py", ".dockerignore": "*\n"})
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python").symlink_to("/etc/alternatives/python")
    view = BuildContext.for_rootfs(root)
    assert not view.is_ignored("usr"), "a rootfs has no .dockerignore"
    assert rels(view, view.resolve_sources(["/usr/bin/python"], 1)) == ["usr/bin/python"]
    assert rels(view, view.resolve_sources(["/usr/bin/*"], 1)) == ["usr/bin/python"]


def test_manifest_resolves_parent_links_inside_the_context(tmp_path: Path) -> None:
    """`COPY link/victim` with link -> /HOST: the key hashes the context's file at that
    path, never the host's (whose marker must not decide the key)."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "victim").write_text("HOST\n")
    root = tmp_path / "ctx"
    mirror = root.joinpath(*host.parts[1:])
    mirror.mkdir(parents=True)
    (mirror / "victim").write_text("inside\n")
    (root / "Dockerfile").write_text("FROM scratch\n")
    os.symlink(str(host), root / "link")
    ctx = BuildContext(root, root / "Dockerfile")
    paths = ctx.resolve_sources(["link/victim"], 2)
    manifest = ctx.manifest(paths).entries()
    inside = hashlib.sha256(b"inside\n").hexdigest()
    assert [v.split()[-1] for v in manifest.values()] == [inside]
    assert hashlib.sha256(b"HOST\n").hexdigest() not in str(manifest)
