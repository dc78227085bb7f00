"""A worker without root: plain directories for snapshots, a tiny interpreter for RUN.

It implements the solver's worker seam (pybuild/solver/worker.py) so the solver, its keys,
its scheduling and --explain are tested without overlayfs or runc. A layer is what a step
added or changed, kept in memory by its digest (and written to the store as a real tar
layer, so the image is a real OCI image); a snapshot is a temporary directory with the
chain's files written out. Deletions are not modelled.

RUN understands `sleep N`, `echo WORDS > /path`, `exit N` and `true`, joined by `&&`
or `;`; anything else just runs (is recorded). `sleep` wakes up on cancel.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pybuild import layer
from pybuild.errors import Cancelled
from pybuild.runtime import RunSpec
from pybuild.store import Descriptor, Store


@dataclass
class FakeSnapshot:
    rootfs: Path
    before: dict[str, tuple[int, bytes]] = field(default_factory=dict)


def _listing(root: Path) -> dict[str, tuple[int, bytes]]:
    """path → (mode, content) for files, symlinks (content: target) and directories."""
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = (st.st_mode, os.readlink(p).encode())
            elif p.is_dir():
                out[rel] = (st.st_mode, b"")
            else:
                out[rel] = (st.st_mode, p.read_bytes())
    return out


class FakeWorker:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.contents: dict[str, dict[str, tuple[int, bytes]]] = {}
        self.runs: list[RunSpec] = []
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    # ----- snapshots -------------------------------------------------------------
    @contextmanager
    def prepare(self, layers: list[Descriptor], diff_ids: list[str], *,
                readonly: bool = False, seed: Any = None) -> Iterator[FakeSnapshot]:
        assert seed is None  # own_layer has nothing to seed from
        root = Path(tempfile.mkdtemp(prefix="fake-snap-"))
        try:
            for d in layers:
                for rel, (mode, data) in sorted(self.contents.get(d.digest, {}).items()):
                    p = root / rel
                    p.parent.mkdir(parents=True, exist_ok=True)
                    if os.path.islink(p) or (p.exists() and not p.is_dir()):
                        p.unlink()
                    if mode & 0o170000 == 0o040000:
                        p.mkdir(exist_ok=True)
                    elif mode & 0o170000 == 0o120000:
                        os.symlink(data.decode(), p)
                    else:
                        p.write_bytes(data)
                    if not p.is_symlink():
                        os.chmod(p, mode & 0o7777)
            yield FakeSnapshot(root, _listing(root))
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def own_layer(self, chain_id: str) -> Path | None:
        return None  # no snapshots: an incremental COPY is a full one here

    def commit(self, snap: FakeSnapshot, parent_diff_ids: list[str], *, compression: str,
               source_date_epoch: int | None) -> tuple[Descriptor, str]:
        after = _listing(snap.rootfs)
        changed = {k: v for k, v in after.items() if snap.before.get(k) != v}
        upper = Path(tempfile.mkdtemp(prefix="fake-upper-"))
        try:
            for rel in sorted(changed):
                src, dst = snap.rootfs / rel, upper / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.is_symlink():
                    os.symlink(os.readlink(src), dst)
                elif src.is_dir():
                    dst.mkdir(exist_ok=True)
                    shutil.copystat(src, dst)
                else:
                    shutil.copy2(src, dst)
            with self.store.writer() as w:
                info = layer.write_layer(upper, w, compression=compression,  # type: ignore[arg-type]
                                         source_date_epoch=source_date_epoch)
                desc = w.commit(info.media_type)
        finally:
            shutil.rmtree(upper, ignore_errors=True)
        self.contents[desc.digest] = changed
        return desc, info.diff_id

    # ----- executor --------------------------------------------------------------
    def execute(self, spec: RunSpec, on_output: Callable[[bytes], None],
                cancel: threading.Event) -> int:
        with self._lock:
            self.runs.append(spec)
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            script = spec.args[-1]
            for part in script.replace("&&", ";").split(";"):
                words = shlex.split(part)
                if not words:
                    continue
                if words[0] == "sleep":
                    if cancel.wait(float(words[1])):
                        raise Cancelled("cancelled")
                elif words[0] == "exit":
                    return int(words[1])
                elif words[0] == "echo" and ">" in words:
                    at = words.index(">")
                    target = spec.rootfs / words[at + 1].lstrip("/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(" ".join(words[1:at]) + "\n")
                elif words[0] == "echo":
                    on_output((" ".join(words[1:]) + "\n").encode())
            return 0
        finally:
            with self._lock:
                self.running -= 1

    def cleanup_stale(self) -> None:
        pass


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()
