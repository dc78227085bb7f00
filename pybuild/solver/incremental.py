"""Incremental COPY of a context directory: build on the previous result of the same step.

A one-file edit in a large context should cost about that file. When a `COPY <dir> <dest>`
from the context misses the cache but its step's previous record was made on the same
parent with the same op (only the files differ), the new upper directory starts as that
record's own layer, hard-linked from its snapshot (directories made anew with their
owner, mode, xattrs and times), and only what changed is copied again:

- every entry the previous copy wrote is described in a state file kept beside that
  snapshot (`copy-<slot>.json`): its source's (device, inode, mode, size, mtime_ns,
  ctime_ns, nlink), and when the copy read them;
- an entry is unchanged when all of those are the same now and its last change is safely
  older than that read (the racily-clean rule of the context memo, RACY_MARGIN_NS);
  any write, chmod, chown, xattr change, rename over it, new or dropped hard link moves
  ctime, so it is seen;
- entries gone from the source, or changed (files, links, type changes), are removed
  from the upper before it is mounted, so whatever the lower has there shows through
  again exactly as for a fresh copy; then the copier writes the changed and new entries
  through the mounted view with its usual rules, and re-applies every directory's
  metadata (their children changed).

The layer is then written from the upper as always, so it is byte for byte the layer a
full copy makes (tests/test_incremental_copy.py compares the digests). Anything unusual
(no state, another parent, a destination that went through a link of the lower, a
snapshot that cannot be hard-linked) is a full copy.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pybuild import context, fs
from pybuild.context import PatternMatcher, walk_visible
from pybuild.liveness import remove_tree

if TYPE_CHECKING:
    from pybuild.solver.cache import Record

STATE_VERSION = 1
_Sig = tuple[int, int, int, int, int, int, int]  # dev, ino, mode, size, mtime, ctime, nlink


def _sig(st: os.stat_result) -> _Sig:
    return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            st.st_nlink)


def state_path(snapshot_fs: Path, slot: str) -> Path:
    """Where the state of step `slot`'s copy lives: beside the snapshot it made."""
    return snapshot_fs.parent / f"copy-{slot}.json"


class IncrementalCopy:
    """One `COPY <dir>` of the context: plans the reuse before the mount, guides the
    copier (`skip`, `walk`) and files the state after the commit."""

    def __init__(self, source: Path, filters: list[tuple[PatternMatcher, str]],
                 walked: tuple[int, list[tuple[str, os.stat_result]]] | None = None) -> None:
        self.source = source
        self.filters = filters
        # the key's own walk of `source` with the same filters (BuildContext.walks): what
        # the copy copies is then what the key covers, and the tree is walked once
        self.prewalked = walked
        self.walked: list[tuple[str, os.stat_result]] | None = None  # what the copy walked
        self.unchanged: set[str] = set()   # entries the seeded upper already holds
        self.active = False                # the upper was seeded from the previous layer
        self.target: str | None = None     # the copy's directory, relative to the rootfs
        self.clean = True                  # no destination went through a link of the lower
        self.copied_at = 0
        self.reused = 0                    # entries taken from the previous layer

    # ----- before the mount ------------------------------------------------------------
    def seed_for(self, prev: Record | None, parent: str, inputs: dict[str, Any], slot: str,
                 own_layer: Callable[[str], Path | None]) -> Callable[[Path], None] | None:
        """The upper's seed when the previous record `prev` of this step (`slot`) can be
        built on: same parent, same op but for the source files, its snapshot and state here."""
        if prev is None or prev.parent != parent:
            return None
        if _without_source(prev.inputs) != _without_source(inputs):
            return None
        snapshot = own_layer(prev.chain_id)
        if snapshot is None:
            return None
        state = _read_state(state_path(snapshot, slot), prev.key)
        if state is None:
            return None

        def seed(upper: Path) -> None:
            self._seed(upper, snapshot, state)

        return seed

    def _seed(self, upper: Path, snapshot: Path, state: dict[str, Any]) -> None:
        walked = self.walk()
        old: dict[str, _Sig] = {rel: tuple(sig) for rel, *sig in state["entries"]}
        trusted_before = int(state["copied_at"]) - context.RACY_MARGIN_NS
        new = {rel: st for rel, st in walked}
        unchanged: set[str] = set()
        doomed: list[str] = []
        for rel, sig in old.items():
            st = new.get(rel)
            if st is not None:
                now = _sig(st)
                if stat.S_ISDIR(sig[2]) and stat.S_ISDIR(now[2]):
                    continue  # kept; its changed children are handled one by one
                if now == sig and max(now[4], now[5]) < trusted_before:
                    unchanged.add(rel)
                    continue
            doomed.append(rel)
        if len(unchanged) < len(doomed):
            return  # mostly new (or racily clean) files: a plain full copy is cheaper
        try:
            clone_tree(os.fspath(snapshot), os.fspath(upper))
            _remove_all(upper, state["target"], doomed)
        except OSError:
            _empty(upper)  # e.g. snapshots on another filesystem: a full copy
            return
        self.unchanged = unchanged
        self.reused = len(unchanged)
        self.target = state["target"]
        self.active = True

    # ----- during the copy ---------------------------------------------------------------
    def walk(self) -> list[tuple[str, os.stat_result]]:
        """The entries to copy: the planning walk when seeded, else a walk now (recorded)."""
        if self.walked is None and self.prewalked is not None:
            self.copied_at, self.walked = self.prewalked
        elif self.walked is None:
            self.copied_at = time.time_ns()
            self.walked = list(walk_visible(self.source, self.filters))
        return self.walked

    # ----- after the commit ----------------------------------------------------------------
    def remember(self, key: str, chain_id: str, slot: str,
                 own_layer: Callable[[str], Path | None]) -> None:
        """File what this copy read beside the snapshot of `chain_id` (record `key` of
        step `slot`), for the next build of the step to start from."""
        snapshot = own_layer(chain_id)
        if snapshot is None or self.walked is None or self.target is None or not self.clean:
            return
        state = {"v": STATE_VERSION, "key": key, "target": self.target,
                 "copied_at": self.copied_at,
                 "entries": [[rel, *_sig(st)] for rel, st in self.walked]}
        path = state_path(snapshot, slot)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(state, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)


def _without_source(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k != "files"}


def _read_state(path: Path, key: str) -> dict[str, Any] | None:
    """The state file, if it is whole, of this version and of record `key`."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(state, dict) and state.get("v") == STATE_VERSION and state.get("key") == key \
        and isinstance(state.get("target"), str) and isinstance(state.get("copied_at"), int) \
        and isinstance(state.get("entries"), list) \
        and all(isinstance(e, list) and len(e) == 8 and _safe_rel(e[0])
                and all(isinstance(x, int) for x in e[1:]) for e in state["entries"])
    return state if ok and (state["target"] == "." or _safe_rel(state["target"])) else None


def _remove_all(upper: Path, target: str, rels: list[str]) -> None:
    """Remove each entry `target/rel` of the seeded upper, whatever it is (a directory with
    all below it). Every component is opened with O_NOFOLLOW (fs.open_dir): a link in
    the way is never followed out of the upper; a parent already gone means nothing is
    left to remove."""
    root = os.open(upper, fs.DIR_FLAGS)
    try:
        base = fs.open_dir(root, _parts(target))
    finally:
        os.close(root)
    try:
        for rel in rels:
            *parents, name = rel.split("/")
            try:
                dfd = fs.open_dir(base, parents)
            except OSError:
                continue
            try:
                remove_tree(name, dir_fd=dfd)
            finally:
                os.close(dfd)
    finally:
        os.close(base)


def _parts(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


def _safe_rel(rel: object) -> bool:
    """A relative path of plain components (no "", ".", "..", NUL): what a walk yields."""
    return isinstance(rel, str) and "\0" not in rel and \
        all(c not in ("", ".", "..") for c in rel.split("/"))


def _empty(directory: Path) -> None:
    for entry in os.listdir(directory):
        remove_tree(directory / entry)


def clone_tree(src: str, dst: str) -> None:
    """Make the empty directory `dst` a copy of `src` that costs one link(2) per file:
    directories are made anew (owner, mode, xattrs, times as in `src`), everything else
    (files, links, whiteouts) is hard-linked, never followed."""
    dirs: list[tuple[str, str]] = []
    stack = [(src, dst)]
    while stack:
        s, d = stack.pop()
        with os.scandir(s) as it:
            for e in it:
                target = d + "/" + e.name
                if e.is_dir(follow_symlinks=False):
                    os.mkdir(target, 0o700)
                    stack.append((e.path, target))
                    dirs.append((e.path, target))
                else:
                    os.link(e.path, target, follow_symlinks=False)
    for s, d in reversed(dirs):  # children first: their times are set before the parent's
        st = os.lstat(s)
        os.chown(d, st.st_uid, st.st_gid)
        os.chmod(d, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(s, follow_symlinks=False):
            os.setxattr(d, name, os.getxattr(s, name, follow_symlinks=False),
                        follow_symlinks=False)
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
