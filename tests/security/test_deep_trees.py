"""One hostile RUN must not break a store: deep trees in uppers, mounts and snapshots.

On main a RUN that made a deep directory tree ended in a RecursionError in the tar
writer, and the mount directory it left made every later build in that store end in a
traceback (the stale-mount cleanup recursed too). Walks are iterative now and cleanup
cannot fail on what it finds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Pybuild, overlay_mounts
from pybuild.liveness import remove_tree, tree_size

DEEP = 10_000


def _deep_run(depth: int) -> str:
    return (f"RUN i=0; while [ $i -lt {depth} ]; do mkdir d && cd -P d || exit 1; "
            "i=$((i+1)); done; echo bottom > f\n")


def _make_deep(base: Path, depth: int) -> None:
    """A tree `depth` directories deep below `base` (far past PATH_MAX), a file at the bottom."""
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.fixture(autouse=True)
def _remove_deep_trees(tmp_path: Path) -> Iterator[None]:
    """pytest's own cleanup of old tmp dirs recurses and cannot remove these trees."""
    yield
    remove_tree(tmp_path)


def test_tree_helpers_handle_any_depth(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("host")
    tree = tmp_path / "tree"
    _make_deep(tree, DEEP)
    os.symlink(victim, tree / "link")  # never followed
    (tree / "file").write_bytes(b"x" * 100)
    assert tree_size(tree) == 100
    remove_tree(tree)
    assert not tree.exists()
    assert (victim / "keep").read_text() == "host"
    remove_tree(tmp_path / "missing")  # nothing to do is fine


def test_run_making_a_very_deep_tree_fails_in_one_line_and_the_store_stays_usable(
        busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    # 2,100 levels: past PATH_MAX (4,096 bytes of path), so the writer must refuse it in one
    # line; deeper RUN trees only cost time in the kernel (quadratic in depth)
    (ctx / "Dockerfile").write_text("FROM busybox\n" + _deep_run(2100))
    proc = busybox("build", "-t", "deep", str(ctx), check=False, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("Dockerfile:2:")]
    assert "File name too long" in line and len(line) < 600
    assert [m for m in overlay_mounts() if str(tmp_path) in m] == []
    assert list((busybox.root / "mounts").iterdir()) == []
    # every later build works, and doctor finds nothing left behind
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo after > /after\n")
    busybox("build", "-t", "after", str(ctx))
    doctor = busybox("doctor", check=False)
    assert doctor.returncode == 0, doctor.stdout


def test_run_making_a_deep_tree_within_path_max_is_committed(busybox: Pybuild,
                                                             tmp_path: Path) -> None:
    """1,500 levels (3,000 bytes of path): the recursive writer of main died at ~500."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n" + _deep_run(1500)
        + "RUN cd /" + "/d" * 1500 + " && test \"$(cat f)\" = bottom\n")
    busybox("build", "-t", "deep", str(ctx), timeout=600)
    busybox("cache", "prune", "--all")
    assert busybox("doctor", check=False).returncode == 0


@pytest.mark.parametrize("where", ["mount", "snapshot-work-dir"])
def test_stale_state_holding_a_deep_tree_is_cleaned(busybox: Pybuild, tmp_path: Path,
                                                    where: str) -> None:
    """What a killed build left (a mount dir, a snapshot work dir) holding a deep tree: the
    next build removes it and succeeds."""
    if where == "mount":
        stale = busybox.root / "mounts" / "0123456789abcdef"
        for sub in ("work", "merged"):
            (stale / sub).mkdir(parents=True)
        (stale / "lock").write_text("")
        _make_deep(stale / "upper", DEEP)
    else:
        stale = busybox.root / "snapshots" / ("tmp-" + "a" * 32)
        (stale / ".lock").parent.mkdir(parents=True)
        (stale / ".lock").write_text("")
        _make_deep(stale / "fs", DEEP)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo ok > /ok\n")
    proc = busybox("build", "-t", "next", str(ctx), check=False, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not stale.exists()
    assert busybox("doctor", check=False).returncode == 0
