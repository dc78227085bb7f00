"""Overlayfs snapshots: every layer is extracted once, and steps run on a fresh upper.

`snapshots/<chain-id>/fs` holds one layer's own content in overlay form (whiteouts as
0/0 character devices, opaque directories as `trusted.overlay.opaque`), so any chain of
layers mounts as lowerdirs without copying. A committed upper directory already has
that form, so it becomes the snapshot of the new chain id by a rename: no re-extraction.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pybuild import layer, rootless
from pybuild.digest import Digest
from pybuild.errors import NeedsRootError, PybuildError
from pybuild.liveness import lock_held, remove_tree, tree_size
from pybuild.store import Descriptor, Store, tree_dir

# Overlay mount options live in one page.
_MAX_MOUNT_DATA = 4000
_MNT_DETACH = 2
# the process's own symbols include libc's mount(2)/umount2(2)
_libc = ctypes.CDLL(None, use_errno=True)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n)).

    Every diff_id is validated first (sha256:<64 hex>): a chain id names a directory.
    """
    out: list[str] = []
    for i, diff_id in enumerate(diff_ids):
        d = str(Digest.sha256(diff_id, f"diff_id #{i + 1} in the image config"))
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def layer_diff_id(store: Store, desc: Descriptor) -> str:
    """The diff_id a layer blob really has: sha256 of its uncompressed tar."""
    h = hashlib.sha256()
    with store.open_blob(desc.digest) as blob:
        try:
            src = layer.open_decompressed(blob)
            while chunk := src.read(layer.CHUNK):
                h.update(chunk)
        except (OSError, EOFError) as e:
            raise PybuildError(f"layer {desc.digest} cannot be read: {e}") from None
    return "sha256:" + h.hexdigest()


def verify_layer(store: Store, desc: Descriptor, diff_id: str) -> None:
    """PybuildError unless the stored blob `desc` has the diff_id `diff_id`."""
    str(Digest.sha256(diff_id, "diff_id"))
    actual = layer_diff_id(store, desc)
    if actual != diff_id:
        raise _mismatch(desc, diff_id, actual)


def check_layers(layers: list[Descriptor], diff_ids: list[str]) -> None:
    """One diff_id per layer, each a valid digest; else one clear line (as containerd)."""
    if len(layers) != len(diff_ids):
        raise PybuildError(f"image has {len(layers)} layers but its config lists "
                           f"{len(diff_ids)} diff_ids")
    chain_ids(diff_ids)


def _mismatch(desc: Descriptor, diff_id: str, actual: str) -> PybuildError:
    return PybuildError(f"layer {desc.digest} does not match the image config: its content "
                        f"hashes to {actual}, the config says {diff_id}")


@dataclass
class Active:
    """A mounted snapshot: `rootfs` is the merged view, writes land in `upper`."""

    id: str
    dir: Path
    lowers: list[Path]
    readonly: bool

    @property
    def rootfs(self) -> Path:
        return self.dir / "merged"

    @property
    def upper(self) -> Path:
        return self.dir / "upper"


def _snapshot_dir(store: Store, chain_id: str) -> Path:
    return store.snapshots_dir / Digest.sha256(chain_id, "chain id").hex


def _members_name(diff_id: str) -> str:
    """Beside a built layer's snapshot: its tar members (`layer.member_record`s), named
    after the layer's diff_id so a list is only ever read for its own layer."""
    return f"members-{Digest.sha256(diff_id, 'diff_id').hex}"


def built_members(store: Store, chain_id: str, diff_id: str) -> list[tuple[str, bytes, int]] | None:
    """(name, type flag, size) of each entry of the layer a build made for `chain_id`, as
    `layer.list_members` would read them from its blob, noted when the layer was written;
    None when the snapshot was extracted (pulled, imported) or the list is damaged."""
    try:
        data = (_snapshot_dir(store, chain_id) / _members_name(diff_id)).read_bytes()
    except (OSError, PybuildError):
        return None
    return layer.read_member_records(data)


class Snapshotter:
    """Extracts layers into `snapshots/`, mounts chains of them, turns uppers into layers."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.snapshots_dir
        self.mounts_dir = tree_dir(store.root / "mounts")
        self._empty = self.dir / "empty"
        self._empty.mkdir(parents=True, exist_ok=True)

    def _dir(self, chain_id: str) -> Path:
        return _snapshot_dir(self.store, chain_id)

    def path(self, chain_id: str) -> Path:
        return self._dir(chain_id) / "fs"

    def has(self, chain_id: str) -> bool:
        return (self._dir(chain_id) / "done").exists()

    def ensure(self, layers: list[Descriptor], diff_ids: list[str]) -> list[Path]:
        """Extract each layer not yet extracted; return lowerdirs, bottom layer first.

        A snapshot is only ever filed under a chain id its content was verified to have:
        each layer's computed diff_id must be the one the config claims (containerd's
        rule). A layer blob other than the one a snapshot was made from is hashed once.
        """
        check_layers(layers, diff_ids)
        paths = []
        for desc, diff_id, chain_id in zip(layers, diff_ids, chain_ids(diff_ids)):
            if not self.has(chain_id):
                self._extract(desc, diff_id, chain_id)
            else:
                self._check_known(desc, diff_id, chain_id)
            paths.append(self.path(chain_id))
        return paths

    def _check_known(self, desc: Descriptor, diff_id: str, chain_id: str) -> None:
        """An existing snapshot of `chain_id` is used for `desc` only if desc hashes to diff_id."""
        d = self._dir(chain_id)
        try:
            known = set((d / "done").read_text().split()) | set(
                (d / "verified").read_text().split() if (d / "verified").exists() else [])
        except OSError:
            known = set()
        if desc.digest in known or not self.store.has_blob(desc.digest):
            return  # a missing blob is never exported; fetching it verifies it then
        actual = layer_diff_id(self.store, desc)
        if actual != diff_id:
            raise _mismatch(desc, diff_id, actual)
        with contextlib.suppress(OSError), open(d / "verified", "a") as f:
            f.write(desc.digest + "\n")

    def _extract(self, desc: Descriptor, diff_id: str, chain_id: str) -> None:
        final = self._dir(chain_id)
        tmp, lock = self._tmp_dir()
        (tmp / "fs").mkdir()
        try:
            with self.store.open_blob(desc.digest) as blob:
                actual = layer.apply_layer(blob, tmp / "fs", mode="overlay")
            if actual != diff_id:
                raise _mismatch(desc, diff_id, actual)
            (tmp / "done").write_text(desc.digest)
            self._install(tmp, final)
        finally:
            os.close(lock)
            remove_tree(tmp)

    def _tmp_dir(self) -> tuple[Path, int]:
        """A work dir under snapshots/, flock'ed so cleanup_stale spares it while we live."""
        tmp = self.dir / f"tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        fd = os.open(tmp / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return tmp, fd

    def _install(self, tmp: Path, final: Path) -> None:
        """Rename a finished snapshot into place; a concurrent twin wins harmlessly."""
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / "done").exists():
                return
            remove_tree(final)
            os.rename(tmp, final)
        (final / ".lock").unlink(missing_ok=True)  # only work dirs carry one

    @contextmanager
    def mount(self, lowers: list[Path], *, readonly: bool = False,
              seed: Callable[[Path], None] | None = None) -> Iterator[Active]:
        """Mount lowers (bottom first) with a fresh upper; always unmounted on exit.
        `seed` fills the upper before the mount (an incremental COPY's previous layer)."""
        NeedsRootError.require("building")
        sid = uuid.uuid4().hex[:16]
        # Set up under a temporary name with the lock already held, then renamed: a mount
        # dir under its real name always carries a live lock or is stale, never in between.
        tmp = self.mounts_dir / f".new-{sid}"
        tmp.mkdir()
        lock = os.open(tmp / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        for sub in ("upper", "work", "merged"):
            (tmp / sub).mkdir()
        d = self.mounts_dir / sid
        os.rename(tmp, d)
        active = Active(sid, d, list(lowers), readonly)
        try:
            if seed is not None:
                seed(active.upper)
            self.mount_overlay(active)
            try:
                yield active
            finally:
                _umount(active.rootfs)
        finally:
            os.close(lock)
            remove_tree(d)

    def mount_overlay(self, a: Active) -> None:
        """Mount `a` at a.rootfs; the caller owns unmounting (containers outlive pybuild)."""
        lowers = list(reversed(a.lowers)) or [self._empty]
        if a.readonly and len(lowers) == 1:
            lowers.append(self._empty)  # overlay wants two lowers without an upper
        opts = self._overlay_options(a, [os.path.abspath(p) for p in lowers])
        if rootless.fuse_overlay_wanted():
            self._fuse_mount(a, lowers)
            return
        links_fd: int | None = None
        if len(opts) > _MAX_MOUNT_DATA:
            # Absolute snapshot paths are long (and the store's own path may be): short
            # links in the mount's own dir, reached through this process's fd of that dir
            # (`/proc/self/fd/N/1f`, ~20 bytes a layer whatever the store path), keep
            # docker's 127 layers within one page of mount data, with no chdir (other
            # threads resolve relative paths at the same time).
            links = a.dir / "l"
            links.mkdir(exist_ok=True)
            for i, p in enumerate(lowers):
                os.symlink(p.resolve(), links / f"{i:x}")
            links_fd = os.open(links, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            opts = self._overlay_options(a, [f"/proc/self/fd/{links_fd}/{i:x}"
                                             for i in range(len(lowers))])
        try:
            if len(opts) > _MAX_MOUNT_DATA:
                raise PybuildError(f"image has too many layers to mount ({len(lowers)})")
            # mount(2) directly: no mount(8) process per step.
            # In a user namespace (rootless.py) overlay keeps its xattrs as user.overlay.*.
            extra = ",index=off,xino=off" + (",userxattr" if rootless.inside() else "")
            ret = _libc.mount(b"overlay", os.fsencode(a.rootfs), b"overlay", 0,
                              (opts + extra).encode())
            err = ctypes.get_errno()
        finally:
            if links_fd is not None:
                os.close(links_fd)
        if ret != 0 and rootless.fuse_overlay_fallback(err):
            self._fuse_mount(a, lowers)  # a kernel without unprivileged overlayfs
            return
        if ret != 0:
            raise PybuildError(f"overlay mount failed: {os.strerror(err)}")

    @staticmethod
    def _fuse_mount(a: Active, lowers: list[Path]) -> None:
        work = None if a.readonly else str((a.dir / "work").absolute())
        rootless.fuse_overlay_mount([os.path.abspath(p) for p in lowers],
                                    None if a.readonly else str(a.upper.absolute()), work,
                                    str(a.rootfs))

    @staticmethod
    def _overlay_options(a: Active, lowers: list[str]) -> str:
        opts = "lowerdir=" + ":".join(lowers)
        if not a.readonly:
            opts += f",upperdir={a.upper.absolute()},workdir={(a.dir / 'work').absolute()}"
        return opts

    def commit(self, a: Active, parent_diff_ids: list[str], *, compression: str = "gzip",
               source_date_epoch: int | None = None) -> tuple[Descriptor, str]:
        """Unmount, turn the upper into a layer blob, and keep the upper as its snapshot.

        Returns (layer descriptor, diff_id). The mount is unusable afterwards.
        """
        _umount(a.rootfs)
        if rootless.fuse_overlay_wanted():
            rootless.normalize_fuse_upper(a.upper, list(reversed(a.lowers)))
        # what the layer holds, for `advise` without decompressing the blob again
        members = a.dir / "members"
        with self.store.writer() as w, open(members, "wb") as noted:
            info = layer.write_layer(a.upper, w, compression=compression,
                                     source_date_epoch=source_date_epoch, members=noted)
            desc = w.commit(info.media_type)
        chain_id = chain_ids(parent_diff_ids + [info.diff_id])[-1]
        if not self.has(chain_id):
            tmp, lock = self._tmp_dir()
            try:
                os.rename(a.upper, tmp / "fs")
                os.rename(members, tmp / _members_name(info.diff_id))
                (tmp / "done").write_text(desc.digest)
                self._install(tmp, self._dir(chain_id))
            finally:
                os.close(lock)
                remove_tree(tmp)
        return desc, info.diff_id

    def cleanup_stale(self) -> int:
        """Unmount and remove mounts left by killed pybuild processes; returns how many.

        Also removes snapshot work dirs (`tmp-*`) of dead processes. It cannot fail on what
        it finds (any depth, any file type, entries vanishing under it): one hostile RUN
        must not leave a store every later build trips over.
        """
        n = 0
        try:
            entries = sorted(self.mounts_dir.iterdir())
        except OSError:
            entries = []
        for d in entries:
            try:
                if lock_held(d / "lock"):
                    continue  # a live process owns it
                if d.name.startswith(".new-"):
                    # never mounted; only a creator between mkdir and its lock has no lock file
                    if not (d / "lock").exists() and time.time() - d.lstat().st_mtime < 60:
                        continue
                    remove_tree(d)
                    continue
                _umount(d / "merged")
                if os.path.ismount(d / "merged"):
                    continue  # still busy after a lazy unmount: never delete through it
                remove_tree(d)
                n += 1
            except OSError:
                continue
        self.cleanup_work_dirs()
        return n

    def cleanup_work_dirs(self) -> None:
        """Remove `snapshots/tmp-*` dirs whose process died (a killed extraction or commit)."""
        for tmp in self.dir.glob("tmp-*"):
            if not lock_held(tmp / ".lock"):
                remove_tree(tmp)

    def prune(self, keep: set[str], *, dry_run: bool = False) -> int:
        """Remove snapshots whose chain id is not in `keep`; returns bytes freed (approx.)."""
        freed = 0
        for d in self.dir.iterdir():
            if d.name in ("empty",) or d.name.startswith("tmp-"):
                continue
            if f"sha256:{d.name}" not in keep:
                freed += tree_size(d)
                if not dry_run:
                    # Out of sight first: a kill mid-delete must not leave a "done" snapshot
                    # with files missing.
                    doomed = self.dir / f"tmp-{uuid.uuid4().hex}"
                    os.rename(d, doomed)
                    remove_tree(doomed)
        return freed


def _umount(path: Path) -> None:
    """umount(2); lazily (MNT_DETACH) if something still holds it busy."""
    if not os.path.ismount(path):
        return
    if _libc.umount2(os.fsencode(path), 0) != 0 and os.path.ismount(path):
        _libc.umount2(os.fsencode(path), _MNT_DETACH)
