"""Crash safety: SIGKILL pybuild at many moments; the store stays sound and the next run recovers.

Every kill point starts from a copy of the same store, so each one interrupts a different
moment of the same work. After each kill `doctor` must find no corrupt blob and no broken
tag; then a rerun must succeed, reuse exactly the steps that were committed, and leave no
mount, snapshot leftover or runc container of this store behind. Also here: doctor itself,
on damage made by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, make_busybox_tar, require_build_tools
from pybuild import doctor
from pybuild.cli import doctor as cli_doctor
from pybuild.store import Store

pytestmark = pytest.mark.root

POINTS = int(os.environ.get("PYBUILD_CRASH_POINTS", "20"))
AUX_POINTS = max(8, POINTS // 2)
# What a kill may leave for the next run to clean up; everything else is damage.
DAMAGE = {"corrupt-blob", "broken-tag", "corrupt-index", "dangling-record", "incomplete-snapshot"}
DOCKERFILE = """\
FROM busybox
COPY big big.sha256 /data/
RUN mkdir /out && for i in $(seq 1 100); do echo $i > /out/f$i; done
RUN dd if=/dev/urandom of=/out/rand bs=1k count=1024 2>/dev/null
ENV STEP=4
COPY small /data/small
WORKDIR /app
RUN cd /data && sha256sum -c big.sha256 && echo ok > /app/ok && sleep 0.2
RUN test "$(ls /out | wc -l)" -eq 101 && test -s /out/rand && ls /out > /app/list
"""
FS_STEPS = 7


@dataclass
class Fixture:
    template: Path  # store with busybox imported
    built: Path     # store with app:latest built
    ctx: Path


def _cli(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pybuild", "--root", str(root), *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYBUILD_PROGRESS="plain", PYTHONPATH=str(REPO))


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(root, *args), capture_output=True, text=True, env=_env(), timeout=300)


def _copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    require_build_tools()
    base = tmp_path_factory.mktemp("crash")
    ctx = base / "ctx"
    ctx.mkdir()
    big = os.urandom(3 << 20)
    (ctx / "big").write_bytes(big)
    import hashlib
    (ctx / "big.sha256").write_text(f"{hashlib.sha256(big).hexdigest()}  big\n")
    (ctx / "small").write_text("small\n")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    template = base / "template"
    assert _run(template, "import", str(make_busybox_tar(base / "bb.tar")), "busybox").returncode == 0
    built = _copy_store(template, base / "built")
    res = _run(built, "build", "-t", "app", str(ctx))
    assert res.returncode == 0, res.stderr
    return Fixture(template, built, ctx)


def _kill_after(argv: list[str], delay: float) -> bool:
    """Start `argv`, SIGKILL it after `delay` seconds; True if it was still running."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _no_damage(root: Path) -> Store:
    store = Store(root)
    damage = [p for p in doctor.check(store).problems if p.kind in DAMAGE]
    assert damage == [], damage
    for name in store.list_tags():
        from pybuild import image
        img = image.load(store, name)
        assert all(store.has_blob(d.digest) for d in img.layers)
    return store


def _records(root: Path) -> int:
    with contextlib.closing(sqlite3.connect(root / "pybuild.db")) as db:
        try:
            return db.execute("SELECT count(*) FROM cache_records").fetchone()[0]
        except sqlite3.OperationalError:
            return 0  # killed before the table was created


def _nothing_left(root: Path) -> None:
    """No mount, snapshot leftover, overlay or runc container of this store remains."""
    assert list((root / "mounts").iterdir()) == []
    assert list((root / "snapshots").glob("tmp-*")) == []
    assert [m for m in Path("/proc/mounts").read_text().splitlines() if str(root) in m] == []
    bundles = Path("/run/pybuild/bundles")
    for config in bundles.glob("*/config.json") if bundles.exists() else []:
        assert str(root) not in config.read_text(), f"container left behind: {config.parent}"
    assert doctor.check(Store(root)).problems == []


def _rebuild(fx: Fixture, root: Path, tmp: Path) -> dict:
    meta = tmp / "meta.json"
    res = _run(root, "build", "-t", "app", "--metadata-file", str(meta), str(fx.ctx))
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(meta.read_text())


def test_kill_build_at_many_points(fx: Fixture, tmp_path: Path) -> None:
    probe = _copy_store(fx.template, tmp_path / "probe")
    duration = _measure(_cli(probe, "build", "-t", "app", str(fx.ctx)))  # warm, as the kills run
    shutil.rmtree(probe)
    killed = survived = 0
    for i in range(POINTS):
        delay = duration * (i + 0.5) / POINTS
        root = _copy_store(fx.template, tmp_path / f"s{i}")
        was_killed = _kill_after(_cli(root, "build", "-t", "app", str(fx.ctx)), delay)
        killed += was_killed
        _no_damage(root)
        committed = _records(root)
        meta = _rebuild(fx, root, tmp_path)
        assert meta["steps_cached"] == committed, (delay, meta)
        assert meta["steps_run"] + meta["steps_cached"] == FS_STEPS
        _nothing_left(root)
        survived += 1
        shutil.rmtree(root)
    print(f"\ncrash: build of {duration:.2f}s killed at {killed} of {POINTS} points "
          f"(the rest had finished); {survived} survived")
    assert killed > 0  # the spread follows the measured duration: most points interrupt


def _measure(argv: list[str]) -> float:
    start = time.monotonic()
    assert subprocess.run(argv, capture_output=True, env=_env(), timeout=300).returncode == 0
    return time.monotonic() - start


def _aux_kills(fx: Fixture, tmp_path: Path, what: str,
               argv_for: Callable[[Path, Path], list[str]],
               prepare: Callable[[Path], None] = lambda root: None,
               after: Callable[[Path, Path], None] = lambda root, out: None) -> None:
    probe = _copy_store(fx.built, tmp_path / "probe")
    prepare(probe)
    duration = _measure(argv_for(probe, tmp_path / "probe.out"))
    shutil.rmtree(probe)
    killed = 0
    for i in range(AUX_POINTS):
        root = _copy_store(fx.built, tmp_path / f"s{i}")
        prepare(root)
        out = tmp_path / f"out{i}" / "image.tar"
        out.parent.mkdir()
        killed += _kill_after(argv_for(root, out), duration * (i + 0.5) / AUX_POINTS)
        _no_damage(root)
        after(root, out)
        _rebuild(fx, root, tmp_path)
        _nothing_left(root)
        shutil.rmtree(root)
    print(f"\ncrash: {what} of {duration:.2f}s killed at {killed} of {AUX_POINTS} points; "
          f"{AUX_POINTS} survived")


def test_kill_save(fx: Fixture, tmp_path: Path) -> None:
    def after(root: Path, out: Path) -> None:
        if out.exists():  # never a partial archive under the real name
            with tarfile.open(out) as t:
                assert "manifest.json" in t.getnames()

    _aux_kills(fx, tmp_path, "save", lambda root, out: _cli(root, "save", "-o", str(out), "app"),
               after=after)


def test_kill_rmi(fx: Fixture, tmp_path: Path) -> None:
    def after(root: Path, out: Path) -> None:
        json.loads((root / "index.json").read_text())  # valid whatever the moment
        assert "busybox:latest" in Store(root).list_tags()

    _aux_kills(fx, tmp_path, "rmi", lambda root, out: _cli(root, "rmi", "app"), after=after)


def test_kill_cache_prune(fx: Fixture, tmp_path: Path) -> None:
    """Prune with real work to do: the image untagged and its blobs older than GC_MIN_AGE."""
    def prepare(root: Path) -> None:
        store = Store(root)
        store.remove_tag("app")
        old = time.time() - 7200
        for d in store.iter_blobs():
            os.utime(store.blob_path(d), (old, old))

    code = ("import sys; from pybuild.store import Store; from pybuild.solver.usage import prune; "
            "prune(Store(sys.argv[1]), all=True)")
    _aux_kills(fx, tmp_path, "cache prune --all",
               lambda root, out: [sys.executable, "-c", code, str(root)], prepare=prepare)


# ----- doctor on damage made by hand -----------------------------------------------------

def _doctor_cli(root: Path, *argv: str) -> tuple[int, str]:
    """Run `pybuild doctor` through a parser built with the module's own register()."""
    p = argparse.ArgumentParser(prog="pybuild")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root")
    cli_doctor.register(p.add_subparsers(dest="command"), common)
    args = p.parse_args(["doctor", "--root", str(root), *argv])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = args.func(args)
    return rc, buf.getvalue()


def test_doctor_clean_store(fx: Fixture, tmp_path: Path) -> None:
    rc, out = _doctor_cli(_copy_store(fx.built, tmp_path / "s"))
    assert rc == 0, out
    assert out.splitlines()[-1].endswith("0 problem(s) found")


def test_doctor_corrupt_layer_repair_keeps_what_other_tags_need(fx: Fixture, tmp_path: Path) -> None:
    from pybuild import image

    root = _copy_store(fx.built, tmp_path / "s")
    store = Store(root)
    app = image.load(store, "app")
    bb = image.load(store, "busybox")
    victim = app.layers[-1].digest  # the last RUN's layer: only app needs it
    path = store.blob_path(victim)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xff\xff")
    rc, out = _doctor_cli(root)
    assert rc == 1
    kinds = {line.split(":", 1)[0] for line in out.splitlines()}
    assert {"corrupt-blob", "broken-tag", "dangling-record"} <= kinds, out
    assert f"corrupt-blob: {victim}" in out and "broken-tag: app:latest" in out
    needed_by_busybox = {bb.manifest_desc.digest, bb.config_desc.digest} | {d.digest for d in bb.layers}
    rc, out = _doctor_cli(root, "--repair")
    assert rc == 0, out
    assert f"removed corrupt blob {victim} (needed by app:latest)" in out
    assert "removed tag app:latest" in out
    assert all(Store(root).has_blob(d) for d in needed_by_busybox)
    # the other layers of app were valid: still there, only unreferenced now
    assert all(Store(root).has_blob(d.digest) for d in app.layers[:-1])
    assert list(Store(root).list_tags()) == ["busybox:latest"]
    assert _doctor_cli(root)[0] == 0
    meta = _rebuild(fx, root, tmp_path)
    assert meta["steps_cached"] == FS_STEPS - 1  # only the step whose layer was corrupt reruns


def test_doctor_missing_manifest_and_leftovers(fx: Fixture, tmp_path: Path) -> None:
    from pybuild import image

    root = _copy_store(fx.built, tmp_path / "s")
    store = Store(root)
    store.blob_path(image.load(store, "app").manifest_desc.digest).unlink()
    snap = next(d for d in store.snapshots_dir.iterdir() if len(d.name) == 64)
    (snap / "done").unlink()
    (store.snapshots_dir / "tmp-deadbeef" / "fs").mkdir(parents=True)
    (root / "cache-mounts" / "tmpabc123").mkdir(parents=True)
    (root / "cache-mounts" / ("0" * 32)).mkdir()  # id written, data never renamed in
    stale = root / "mounts" / "0123456789abcdef"
    for sub in ("upper", "work", "merged"):
        (stale / sub).mkdir(parents=True)
    (stale / "lock").touch()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(stale / "merged")], check=True)
    try:
        kinds = sorted(p.kind for p in doctor.check(Store(root)).problems)
        assert kinds == ["broken-tag", "incomplete-snapshot", "orphaned-cache-mount",
                         "orphaned-cache-mount", "snapshot-leftover", "stale-mount"], kinds
        report = doctor.repair(Store(root))
        assert report.remaining == []
        assert not os.path.ismount(stale / "merged") and not stale.exists()
        assert not snap.exists() and not (root / "cache-mounts" / "tmpabc123").exists()
        assert "app:latest" not in Store(root).list_tags()
    finally:
        if os.path.ismount(stale / "merged"):
            subprocess.run(["umount", str(stale / "merged")])
    _rebuild(fx, root, tmp_path)  # the snapshot is extracted again from its blob
    _nothing_left(root)


def test_doctor_stale_container_of_killed_build(fx: Fixture, tmp_path: Path) -> None:
    root = _copy_store(fx.template, tmp_path / "s")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN sleep 60\n")
    proc = subprocess.Popen(_cli(root, "build", str(ctx)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    bundles = Path("/run/pybuild/bundles")
    deadline = time.monotonic() + 60
    mine: list[Path] = []
    while not mine and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        mine = [c.parent for c in bundles.glob("pybuild-*/config.json") if str(root) in c.read_text()]
    proc.kill()
    proc.wait()
    try:
        _stale_container_repaired(root, mine)
    finally:
        doctor.repair(Store(root))  # never leave a mount behind, even when failing


def _stale_container_repaired(root: Path, mine: list[Path]) -> None:
    assert mine, "the RUN never started"
    kinds = sorted(p.kind for p in doctor.check(Store(root)).problems)
    # Any pybuild build on this machine (other test runs) also removes dead builds'
    # containers, so the container may already be gone; the mount is ours alone.
    assert kinds in (["stale-container", "stale-mount"], ["stale-mount"]), kinds
    report = doctor.repair(Store(root))
    assert report.remaining == [], report.remaining
    listing = subprocess.run(["runc", "--root", "/run/pybuild/runc", "list", "-q"],
                             capture_output=True, text=True).stdout.split()
    assert mine[0].name not in listing
    _nothing_left(root)


def test_doctor_sees_a_half_deleted_snapshot(fx: Fixture, tmp_path: Path) -> None:
    """What a prune killed inside its rmtree leaves: `done` still there, part of `fs` gone."""
    root = _copy_store(fx.template, tmp_path / "s")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN mkdir -p /w/a /w/b && seq 1 300 | while read i; do echo $i > /w/a/$i; done\n"
        "RUN rm -rf /w/b /bin/vi && rm -rf /var && mkdir /var && echo x > /var/new\n")
    res = _run(root, "build", "-t", "w", str(ctx))
    assert res.returncode == 0, res.stderr
    # whiteouts and an opaque directory are recognised: a fresh store is clean
    assert doctor.check(Store(root)).problems == []
    from pybuild import image
    from pybuild.snapshot import chain_ids

    img = image.load(Store(root), "w")
    chain = chain_ids(img.diff_ids)[1].split(":")[1]
    files = sorted((root / "snapshots" / chain / "fs" / "w" / "a").iterdir())
    for f in files[:150]:
        f.unlink()
    problems = doctor.check(Store(root)).problems
    assert [(p.kind, p.subject) for p in problems] == [("incomplete-snapshot", chain)], problems
    assert "150 entries" in problems[0].detail
    assert doctor.repair(Store(root)).remaining == []
    assert not (root / "snapshots" / chain).exists()
    (ctx / "Dockerfile").write_text(
        "FROM w\nRUN test \"$(ls /w/a | wc -l)\" -eq 300 && test ! -e /w/b && test -f /var/new\n")
    res = _run(root, "build", str(ctx))
    assert res.returncode == 0, res.stdout + res.stderr
