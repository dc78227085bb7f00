"""pybuild.fs: the one in-root resolver and mkdir -p (root-free)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from pybuild import fs
from pybuild.liveness import remove_tree


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "usr" / "lib").mkdir(parents=True)
    (r / "etc").mkdir()
    (r / "etc" / "passwd").write_text("inside\n")
    return r


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host directory next to the root, that no resolution may reach."""
    h = tmp_path / "host"
    h.mkdir()
    (h / "secret").write_text("host secret\n")
    return h


def test_links_followed_as_the_root_sees_them(root: Path) -> None:
    os.symlink("usr/lib", root / "lib")
    os.symlink("/usr/../../../lib", root / "abs")
    os.symlink("../../../../etc", root / "usr" / "up")
    assert fs.resolve_in_root(root, "/lib/x") == root / "usr" / "lib" / "x"
    assert fs.resolve_in_root(root, "abs/y") == root / "usr" / "lib" / "y"
    assert fs.resolve_in_root(root, "/usr/up/passwd") == root / "etc" / "passwd"
    assert fs.resolve_in_root(root, "../../lib", follow_last=False) == root / "lib"
    assert fs.resolve_in_root(root, "/lib", follow_last=False) == root / "lib"
    assert fs.resolve_in_root(root, "/lib/", follow_last=False) == root / "usr" / "lib"


def test_absolute_links_and_dotdot_never_leave_the_root(root: Path, host: Path) -> None:
    os.symlink(str(host), root / "hostlink")            # an absolute host path
    os.symlink("../../../../../../" + host.name, root / "up")
    assert fs.resolve_in_root(root, "/hostlink/secret") == root.joinpath(*host.parts[1:], "secret")
    assert fs.resolve_in_root(root, "/up/secret") == root / host.name / "secret"
    assert fs.resolve_in_root(root, "../../../" + host.name + "/secret") == root / host.name / "secret"
    for p in ("/hostlink/secret", "/up/secret", "/../../x"):
        assert root in fs.resolve_in_root(root, p).parents


def test_missing_components_are_kept_literally(root: Path) -> None:
    os.symlink("/nowhere/deep", root / "dangling")
    assert fs.components(root, "/dangling/x") == ["nowhere", "deep", "x"]
    assert fs.components(root, "/a/b/../c") == ["a", "c"]
    assert fs.components(root, "/a/../usr/lib") == ["usr", "lib"]


def test_symlink_loops_fail_cleanly(root: Path) -> None:
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    os.symlink("self", root / "self")
    for p in ("/a", "/self/x", "/b/c"):
        with pytest.raises(fs.PathError, match="too many levels of symbolic links"):
            fs.components(root, p)
    assert fs.components(root, "/self", follow_last=False) == ["self"]


def test_long_chains_up_to_the_kernel_limit(root: Path) -> None:
    for i in range(fs.MAX_SYMLINKS):
        os.symlink(f"l{i + 1}", root / f"l{i}")
    os.symlink("/usr", root / f"l{fs.MAX_SYMLINKS}")
    assert fs.components(root, "/l1/lib") == ["usr", "lib"]    # 40 links: fine
    with pytest.raises(fs.PathError, match="too many levels"):
        fs.components(root, "/l0/lib")                          # 41 links: ELOOP


def test_a_component_that_is_a_file(root: Path) -> None:
    with pytest.raises(fs.NotADirectory, match="/etc/passwd is not a directory"):
        fs.components(root, "/etc/passwd/x")
    with pytest.raises(fs.NotADirectory):
        fs.components(root, "/etc/passwd/../x")
    assert fs.components(root, "/etc/passwd") == ["etc", "passwd"]
    with pytest.raises(fs.NotADirectory, match="cannot create directory /etc/passwd/sub"):
        fs.mkdir_p(root, "/etc/passwd/sub")
    with pytest.raises(fs.NotADirectory, match="a file is in the way"):
        fs.mkdir_p(root, "/etc/passwd")


def test_paths_deeper_than_path_max(root: Path) -> None:
    deep = "/" + "/".join(["d" * 50] * 200)      # 10,200 characters
    made = fs.mkdir_p(root, deep)
    assert len(str(made)) > os.pathconf("/", "PC_PATH_MAX")
    fd = fs.open_in_root(root, deep)
    os.close(fd)
    assert fs.components(root, deep + "/../x")[-1] == "x"


def test_mkdir_p_creates_through_resolved_components_only(root: Path, host: Path) -> None:
    os.symlink(str(host), root / "out")               # absolute: re-rooted
    os.symlink("/var/new/place", root / "dangling")
    before = sorted(os.listdir(host))
    made = fs.mkdir_p(root, "/out/planted")
    assert made == root.joinpath(*host.parts[1:], "planted") and made.is_dir()
    assert fs.mkdir_p(root, "/dangling/sub") == root / "var" / "new" / "place" / "sub"
    assert sorted(os.listdir(host)) == before          # the host path aimed at: untouched


def test_mkdir_p_mode_and_owner_are_exact(root: Path) -> None:
    old = os.umask(0o077)
    try:
        made = fs.mkdir_p(root, "/a/b", mode=0o751, uid=os.getuid(), gid=os.getgid())
    finally:
        os.umask(old)
    for p in (root / "a", made):
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(root / "usr").st_mode) != 0o751   # existing ones unchanged


def test_open_dir_never_follows_a_swapped_component(root: Path, host: Path) -> None:
    """A component that became a symlink after resolution fails; it never redirects."""
    parts = fs.components(root, "/usr/lib")
    os.rename(root / "usr" / "lib", root / "usr" / "lib.old")
    os.symlink(str(host), root / "usr" / "lib")
    root_fd = os.open(root, fs.DIR_FLAGS)
    try:
        with pytest.raises(OSError) as err:
            fs.open_dir(root_fd, parts, create=True)
        assert err.value.errno in (errno.ELOOP, errno.ENOTDIR)
    finally:
        os.close(root_fd)
    assert sorted(os.listdir(host)) == ["secret"]


def test_open_in_root_reads_the_roots_file(root: Path, host: Path) -> None:
    os.symlink(str(host / "secret"), root / "etc" / "link")
    os.symlink("/etc/passwd", root / "etc" / "ok")
    with pytest.raises(FileNotFoundError):
        fs.open_in_root(root, "/etc/link")               # /host/secret re-rooted: missing
    with os.fdopen(fs.open_in_root(root, "/etc/ok")) as f:
        assert f.read() == "inside\n"


def test_clean_is_lexical() -> None:
    assert fs.clean("a/./b//c/") == ["a", "b", "c"]
    assert fs.clean("a/../../b") is None
    assert fs.clean("/../b") == ["b"]


def _make_deep(top: Path, depth: int) -> None:
    fd = os.open(top, os.O_RDONLY)
    try:
        for i in range(depth):
            if i % 1000 == 0:
                os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def test_remove_tree_any_depth_never_follows_links(tmp_path: Path, host: Path) -> None:
    top = tmp_path / "tree"
    top.mkdir()
    _make_deep(top, 3000)                     # deeper than PATH_MAX and the recursion limit
    (top / "wide").mkdir()
    for i in range(300):
        (top / "wide" / f"x{i}").mkdir()
    os.symlink(str(host), top / "wide" / "x7" / "out")       # a link to a host directory
    os.symlink(str(host / "secret"), top / "file-link")
    remove_tree(top)
    assert not os.path.lexists(top)
    assert (host / "secret").read_text() == "host secret\n"
    remove_tree(top)                       # already gone: nothing to do
    (tmp_path / "plain").write_text("x")
    remove_tree(tmp_path / "plain")
    assert not (tmp_path / "plain").exists()
