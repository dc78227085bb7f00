"""Incremental COPY (solver/incremental.py): a rebuild after a few edits starts from the
previous layer of the same step and copies only what changed, and its image is the very
image a from-scratch (--no-cache) build makes.

SOURCE_DATE_EPOCH makes a full build reproducible (directories a COPY creates, image
times); without it two full builds differ too, so that is what "the same" can mean.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import Pybuild

from pybuild import image
from pybuild import store as store_mod
from pybuild.solver import incremental

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}
OLD = 1_600_000_000  # an mtime below the epoch, kept in the layer


def _image_id(pb: Pybuild, tag: str) -> str:
    return image.load(store_mod.Store(pb.root), tag).id


def _diff_ids(pb: Pybuild, tag: str) -> list[str]:
    return image.load(store_mod.Store(pb.root), tag).diff_ids


def _write(path: Path, data: str, mtime: int = OLD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    os.utime(path, (mtime, mtime))


def _linked_files(pb: Pybuild) -> int:
    """Files of COPY snapshots that share their inode with another snapshot."""
    n = 0
    for state in (pb.root / "snapshots").glob("*/copy-*.json"):
        for dirpath, _dirs, files in os.walk(state.parent / "fs"):
            n += sum(1 for f in files if os.lstat(os.path.join(dirpath, f)).st_nlink > 1)
    return n


@pytest.mark.root
def test_incremental_copy_gives_the_from_scratch_image(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "Dockerfile").parent.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx/\nCOPY etc /etc/\n"
                                    "RUN cat /etc/group /ctx/keep.txt\n")
    (ctx / ".dockerignore").write_text("secret.txt\n")
    for i in range(40):
        _write(ctx / "tree" / f"d{i % 4}" / f"f{i}.txt", f"file {i}\n")
    for name in ("keep.txt", "edit.txt", "gone.txt", "rename.txt", "mode.txt", "touch.txt",
                 "becomes-dir", "secret.txt"):
        _write(ctx / name, name + "\n")
    (ctx / "was-dir").mkdir()
    _write(ctx / "was-dir" / "inner.txt", "inner\n")
    (ctx / "link").symlink_to("keep.txt")
    _write(ctx / "hard-a", "shared\n")
    os.link(ctx / "hard-a", ctx / "hard-b")
    _write(ctx / "etc" / "group", "root:x:0:\nshadowed:x:1:\n")  # hides the base's /etc/group
    _write(ctx / "etc" / "extra.conf", "x=1\n")
    time.sleep(2.1)  # the racily-clean margin: these files are trusted by the next build
    build = ("build", "--progress", "plain", str(ctx))
    busybox(*build, "-t", "first", env=EPOCH)

    # every kind of change at once
    _write(ctx / "edit.txt", "edited, longer than before\n")
    (ctx / "gone.txt").unlink()
    (ctx / "rename.txt").rename(ctx / "renamed.txt")
    (ctx / "mode.txt").chmod(0o751)
    os.utime(ctx / "touch.txt", (OLD + 5, OLD + 5))  # same bytes, another mtime
    (ctx / "becomes-dir").unlink()
    _write(ctx / "becomes-dir" / "child.txt", "child\n")
    for p in (ctx / "was-dir").iterdir():
        p.unlink()
    (ctx / "was-dir").rmdir()
    _write(ctx / "was-dir", "now a file\n")
    (ctx / "link").unlink()
    (ctx / "link").symlink_to("edit.txt")
    _write(ctx / "tree" / "d1" / "f5.txt", "five, edited\n")
    (ctx / "tree" / "d2" / "f6.txt").unlink()
    _write(ctx / "tree" / "d9" / "new.txt", "a new directory\n")
    (ctx / "etc" / "group").unlink()  # the base's /etc/group shows through again
    _write(ctx / "secret.txt", "still ignored\n")
    _write(ctx / "hard-a", "shared, edited\n")  # both names of the pair

    second = busybox(*build, "-t", "second", env=EPOCH)
    assert "shadowed" not in second.stderr and "root:x:0:" in second.stderr
    linked = _linked_files(busybox)
    assert linked >= 30, "the unchanged files were not taken from the previous layer"
    busybox(*build, "--no-cache", "-t", "scratch", env=EPOCH)
    assert _diff_ids(busybox, "second") == _diff_ids(busybox, "scratch")
    assert _image_id(busybox, "second") == _image_id(busybox, "scratch")

    # and once more, on top of the incremental result (its own state file)
    _write(ctx / "tree" / "d0" / "f0.txt", "zero, edited\n")
    (ctx / "renamed.txt").chmod(0o600)
    busybox(*build, "-t", "third", env=EPOCH)
    busybox(*build, "--no-cache", "-t", "scratch3", env=EPOCH)
    assert _image_id(busybox, "third") == _image_id(busybox, "scratch3")
    assert _diff_ids(busybox, "third") != _diff_ids(busybox, "second")


def test_state_file_is_checked_before_use(tmp_path: Path) -> None:
    """A state file of another record, another version, or with a path leaving the copy
    is not used (the step is then a full copy)."""
    good = {"v": incremental.STATE_VERSION, "key": "sha256:k", "target": "ctx",
            "copied_at": 5, "entries": [["a/b", 1, 2, 0o100644, 3, 4, 5, 1]]}
    path = tmp_path / "copy-x.json"

    def read(state: object) -> object:
        path.write_text(json.dumps(state))
        return incremental._read_state(path, "sha256:k")

    assert read(good) == good
    assert read({**good, "key": "sha256:other"}) is None
    assert read({**good, "v": 0}) is None
    assert read({**good, "target": "../x"}) is None
    assert read({**good, "entries": [["../a", 1, 2, 3, 4, 5, 6, 7]]}) is None
    assert read({**good, "entries": [["/a", 1, 2, 3, 4, 5, 6, 7]]}) is None
    assert read({**good, "entries": [["a", 1, 2, 3]]}) is None
    for bad in ("a\0b", "a//b", "./a", "a/", ""):
        assert read({**good, "entries": [[bad, 1, 2, 3, 4, 5, 6, 7]]}) is None, bad
    assert read({**good, "target": "."}) is not None
    path.write_text("{not json")
    assert incremental._read_state(path, "sha256:k") is None


def test_clone_tree_links_files_and_remakes_dirs(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "f").write_text("f")
    (src / "l").symlink_to("missing")
    os.chmod(src / "d", 0o710)
    os.utime(src / "d", (OLD, OLD))
    dst.mkdir()
    incremental.clone_tree(str(src), str(dst))
    assert os.lstat(dst / "d" / "f").st_ino == os.lstat(src / "d" / "f").st_ino
    assert os.readlink(dst / "l") == "missing" and os.path.islink(dst / "l")
    st = os.lstat(dst / "d")
    assert (st.st_mode & 0o7777, st.st_mtime) == (0o710, OLD)
    assert os.lstat(dst / "d").st_ino != os.lstat(src / "d").st_ino
    assert (dst / "d" / "e").is_dir()


def test_removal_never_follows_a_link_out_of_the_upper(tmp_path: Path) -> None:
    """A state naming `link/x` where `link` is a symlink (no walk yields that; a damaged
    state could) removes nothing through the link; plain entries and directories go."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("keep me")
    upper = tmp_path / "upper"
    (upper / "ctx" / "d" / "deep").mkdir(parents=True)
    (upper / "ctx" / "f").write_text("f")
    (upper / "ctx" / "link").symlink_to(outside)
    incremental._remove_all(upper, "ctx", ["link/x", "f", "d", "d/deep", "missing/y"])
    assert (outside / "x").read_text() == "keep me"
    assert sorted(os.listdir(upper / "ctx")) == ["link"]
