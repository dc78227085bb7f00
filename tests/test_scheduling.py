"""Concurrent builds for real (overlayfs, runc): the same image whatever the schedule, and
Ctrl-C stopping every running step at once.

tests/test_solver.py covers the same logic root-free on a fake worker.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, Pybuild, overlay_mounts

# Six stages: one root, two branches of two, a final stage reading both ends.
DIAMOND = """\
FROM busybox AS root
RUN echo root > /root.txt
FROM root AS left
RUN echo left > /left.txt && sleep 0.3
FROM root AS right
RUN echo right > /right.txt
FROM left AS left2
RUN echo left2 > /left2.txt
FROM right AS right2
RUN sleep 0.3 && echo right2 > /right2.txt
FROM busybox
COPY --from=left2 /left.txt /left2.txt /l/
COPY --from=right2 /right.txt /right2.txt /r/
RUN cat /l/* /r/* > /all.txt
"""


def _digest(pb: Pybuild, ctx: Path, *args: str) -> str:
    meta = ctx.parent / f"meta-{time.monotonic_ns()}.json"
    pb("build", "--metadata-file", str(meta), *args, str(ctx),
       env={"SOURCE_DATE_EPOCH": "1700000000"})
    return str(json.loads(meta.read_text())["containerimage.digest"])


def test_diamond_is_the_same_image_with_any_jobs(busybox: Pybuild, tmp_path: Path,
                                                no_leaks: None) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DIAMOND)
    digests = {jobs: [_digest(busybox, ctx, "--no-cache", "--jobs", jobs) for _ in range(3)]
               for jobs in ("1", "4")}
    cached = [_digest(busybox, ctx, "--jobs", jobs) for jobs in ("4", "1")]
    every = digests["1"] + digests["4"] + cached
    assert len(set(every)) == 1, digests


TWO_SLEEPS = """\
FROM busybox AS a
RUN echo a > /a && sleep 60
FROM busybox AS b
RUN echo b > /b && sleep 60
FROM busybox
COPY --from=a /a /a
COPY --from=b /b /b
"""


def _bundles_of(pid: int) -> list[Path]:
    bundles = Path("/run/pybuild/bundles")
    out = []
    for b in bundles.iterdir() if bundles.is_dir() else []:
        try:
            if int((b / "owner").read_text().split()[0]) == pid:
                out.append(b)
        except (OSError, ValueError, IndexError):
            continue
    return out


def _running(binary_root: str, bundles: list[Path]) -> int:
    proc = subprocess.run(["runc", "--root", binary_root, "list", "-f", "json"],
                          capture_output=True, text=True, check=False)
    listed = json.loads(proc.stdout or "null") or []
    names = {b.name for b in bundles}
    return sum(1 for c in listed if c["id"] in names and c["status"] == "running")


def test_sigint_stops_two_running_steps_at_once(busybox: Pybuild, tmp_path: Path,
                                               no_leaks: None) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(TWO_SLEEPS)
    env = dict(os.environ, PYBUILD_PROGRESS="plain")
    proc = subprocess.Popen([sys.executable, "-m", "pybuild", "--root", str(busybox.root),
                             "build", "--jobs", "2", str(ctx)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runc_root = "/run/pybuild/runc"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _running(runc_root, _bundles_of(proc.pid)) == 2:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"two steps never ran at once: {proc.communicate()[0][-2000:]}")
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 130, out
    assert took < 2.0, f"took {took:.2f}s to stop"
    assert _bundles_of(proc.pid) == []
    assert [m for m in overlay_mounts() if str(busybox.root) in m] == []
    assert list((busybox.root / "mounts").iterdir()) == []
    for name in ("gc.lock", "lock"):  # nobody holds the store's locks any more
        fd = os.open(busybox.root / name, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    # and the next build works (shorter sleeps, same shape)
    (ctx / "Dockerfile").write_text(TWO_SLEEPS.replace("sleep 60", "true"))
    busybox("build", "-t", "after", str(ctx))
