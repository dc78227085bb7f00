"""The worker seam: what the solver asks of the machine, and the real implementation.

The solver decides *what* runs (keys, order, explain, image config); a worker does it:
snapshots (lower chains mounted with a fresh upper, read-only views, upper → layer) and
an executor (one process in a mounted rootfs). `RealWorker` is overlayfs + runc + the
layer writer; tests pass a fake one (tests/fake_worker.py) to run the solver without root.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pybuild import runtime
from pybuild.store import Descriptor, Store

if TYPE_CHECKING:
    from pybuild.snapshot import Snapshotter


class Snapshot(Protocol):
    """A mounted filesystem: `rootfs` is what a step sees and writes."""

    @property
    def rootfs(self) -> Path: ...


class Worker(Protocol):
    """Snapshotter + executor, as the solver calls them."""

    store: Store

    def prepare(self, layers: list[Descriptor], diff_ids: list[str], *,
                readonly: bool = False,
                seed: Callable[[Path], None] | None = None) -> AbstractContextManager[Snapshot]:
        """Mount `layers` (bottom first) with a fresh upper (or read-only); unmounted on exit.
        `seed` is given the upper directory before the mount (solver/incremental.py)."""
        ...

    def own_layer(self, chain_id: str) -> Path | None:
        """The directory holding the top layer's own files of snapshot `chain_id` (what
        its step wrote), or None when this worker has no such snapshot."""
        ...

    def commit(self, snap: Snapshot, parent_diff_ids: list[str], *, compression: str,
               source_date_epoch: int | None) -> tuple[Descriptor, str]:
        """Turn what the step wrote into a layer blob: (descriptor, diff_id)."""
        ...

    def execute(self, spec: runtime.RunSpec, on_output: Callable[[bytes], None],
                cancel: threading.Event) -> int:
        """Run one process in `spec.rootfs`; its exit status. Raises Cancelled on cancel."""
        ...

    def cleanup_stale(self) -> None:
        """Remove what killed builds left (containers, mounts, secret files)."""
        ...


class RealWorker:
    """overlayfs snapshots (snapshot.py), runc (runtime.py), the layer writer (layer.py)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._snaps: Snapshotter | None = None

    @property
    def snaps(self) -> Snapshotter:
        """Made on first use: a build that only hits the cache never loads ctypes for mount(2)."""
        if self._snaps is None:
            from pybuild.snapshot import Snapshotter

            self._snaps = Snapshotter(self.store)
        return self._snaps

    def prepare(self, layers: list[Descriptor], diff_ids: list[str], *,
                readonly: bool = False,
                seed: Callable[[Path], None] | None = None) -> AbstractContextManager[Snapshot]:
        lowers = self.snaps.ensure(layers, diff_ids)
        return self.snaps.mount(lowers, readonly=readonly, seed=seed)

    def own_layer(self, chain_id: str) -> Path | None:
        return self.snaps.path(chain_id) if self.snaps.has(chain_id) else None

    def commit(self, snap: Snapshot, parent_diff_ids: list[str], *, compression: str,
               source_date_epoch: int | None) -> tuple[Descriptor, str]:
        from pybuild.snapshot import Active

        assert isinstance(snap, Active)
        return self.snaps.commit(snap, parent_diff_ids, compression=compression,
                                 source_date_epoch=source_date_epoch)

    def execute(self, spec: runtime.RunSpec, on_output: Callable[[bytes], None],
                cancel: threading.Event) -> int:
        host, _stubs = runtime.host_mounts(spec.rootfs, hostname=spec.hostname,
                                           extra_hosts=spec.extra_hosts)
        spec.mounts = host + spec.mounts
        return runtime.run(spec, on_output, cancel=cancel)

    def cleanup_stale(self) -> None:
        from pybuild.solver.mounts import cleanup_stale_secrets

        runtime.cleanup_stale()  # kill orphaned containers first, then unmount their rootfs
        self.snaps.cleanup_stale()
        cleanup_stale_secrets()
