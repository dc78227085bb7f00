"""The store under damage, concurrency and misuse: it keeps tagged images, touches only
its own files, keeps other users out, and says in one line what is wrong.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, Pybuild, require_build_tools
from pybuild import layer
from pybuild.errors import PybuildError
from pybuild.store import Store
from security.hostile import HostileRegistry, one_line_error, tar_bytes



def _image_blobs(pb: Pybuild, name: str) -> list[Path]:
    info = json.loads(pb("inspect", name).stdout)[0]
    digests = [info["ManifestDigest"], info["Id"]] + [d["digest"] for d in info["Manifest"]["layers"]]
    return [pb.root / "blobs" / "sha256" / d.split(":")[1] for d in digests]


# ---- garbage collection fails safe -------------------------------------------------------

def test_prune_refuses_when_a_tagged_manifest_is_unreadable(pybuild: Pybuild,
                                                            busybox_tar: Path) -> None:
    """On main an unreadable manifest counted as "refers to nothing": `cache prune --all`
    deleted the config and layers of a tagged image."""
    pybuild("import", str(busybox_tar), "busybox")
    manifest, *rest = _image_blobs(pybuild, "busybox")
    kept = {p: p.read_bytes() for p in rest}
    manifest.write_bytes(manifest.read_bytes()[:40])  # a torn manifest: not JSON any more
    line = one_line_error(pybuild("cache", "prune", "--all", check=False))
    assert "cannot be read" in line and "pybuild doctor" in line
    assert {p: p.read_bytes() for p in rest if p.exists()} == kept
    # the way out is the one the line names: doctor --repair drops the broken tag, then
    # prune may free what nothing needs any more
    assert pybuild("doctor", "--repair", check=False).returncode == 0
    pybuild("cache", "prune", "--all")


def test_gc_keeps_children_of_a_manifest_with_wrong_types(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer_desc = store.put_bytes(b"layer bytes", "application/vnd.oci.image.layer.v1.tar")
    bad = store.put_json({"schemaVersion": 2, "config": {"digest": layer_desc.digest},
                          "layers": {"digest": layer_desc.digest}},
                         "application/vnd.oci.image.manifest.v1+json")
    store.set_tag("x", bad)
    with pytest.raises(PybuildError, match="layers is not a list"):
        store.gc()
    assert store.has_blob(layer_desc.digest)


def _gated_image(registry: HostileRegistry) -> str:
    big = os.urandom(256 * 1024)
    registry.image("lib/slow", "1", [tar_bytes(("big", "file", big))])
    body = registry.manifests[("lib/slow", "1")][0]
    layer_digest = json.loads(body)["layers"][0]["digest"]
    registry.gates[layer_digest] = threading.Event()
    return layer_digest


def test_prune_during_a_pull_keeps_the_pulled_image(pybuild: Pybuild) -> None:
    """The pull has stored the config but not yet the layer (the registry holds it back).
    On main a concurrent `cache prune --all` deleted the config: the pull failed or left a
    broken tag. Every writer now holds the gc lock until its tag is set."""
    pybuild("images")  # create the store
    with HostileRegistry() as registry:
        layer_digest = _gated_image(registry)
        env = dict(os.environ, PYBUILD_PROGRESS="plain")
        pull = subprocess.Popen([sys.executable, "-m", "pybuild", "--root", str(pybuild.root),
                                 "pull", f"{registry.addr}/lib/slow:1"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            registry.requested.setdefault(layer_digest, threading.Event())
            assert registry.requested[layer_digest].wait(timeout=60), "pull never asked"
            prune = subprocess.Popen([sys.executable, "-m", "pybuild", "--root",
                                      str(pybuild.root), "cache", "prune", "--all"], cwd=REPO,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
            try:
                prune.wait(timeout=5)  # on main it finishes here, deleting the config
            except subprocess.TimeoutExpired:
                pass  # waiting on the gc lock, as it should
            registry.gates[layer_digest].set()
            out, err = pull.communicate(timeout=120)
            assert pull.returncode == 0, err
            prune.communicate(timeout=120)
            assert prune.returncode == 0
        finally:
            if pull.poll() is None:
                pull.kill()
    pybuild("inspect", f"{registry.addr}/lib/slow:1")
    doctor = pybuild("doctor", check=False)
    assert doctor.returncode == 0, doctor.stdout


def _bad_rootfs(path: Path) -> Path:
    """A rootfs that imports (its headers are fine) but cannot be unpacked: a hardlink to
    a file the archive does not have."""
    with tarfile.open(path, "w") as t:
        ti = tarfile.TarInfo("etc")
        ti.type = tarfile.DIRTYPE
        t.addfile(ti)
        ti = tarfile.TarInfo("etc/link")
        ti.type, ti.linkname = tarfile.LNKTYPE, "etc/missing"
        t.addfile(ti)
    return path


def test_import_that_fails_unpacking_leaves_tags_as_they_were(pybuild: Pybuild,
                                                              busybox_tar: Path,
                                                              tmp_path: Path) -> None:
    require_build_tools()
    pybuild("import", str(busybox_tar), "base")
    before = pybuild("inspect", "base").stdout
    bad = _bad_rootfs(tmp_path / "bad.tar")
    line = one_line_error(pybuild("import", str(bad), "base", check=False))
    assert "hardlink" in line
    assert pybuild("inspect", "base").stdout == before  # the old image is still "base"
    one_line_error(pybuild("import", str(bad), "fresh", check=False))
    assert "fresh" not in pybuild("images").stdout


# ---- --root on a directory that is not a store ------------------------------------------

@pytest.mark.parametrize("what", ["dir", "with-oci-layout"])
def test_root_that_is_not_a_store_is_refused_and_untouched(tmp_path: Path, what: str) -> None:
    """On main, `--root DIR` deleted files older than an hour in DIR/tmp (so `--root /`
    would clean the host's /tmp) and filled DIR with a store."""
    host = tmp_path / "host"
    (host / "tmp").mkdir(parents=True)
    old = host / "tmp" / "blob-precious.tmp"
    old.write_text("precious")
    scratch = host / "tmp" / "scratch"
    scratch.mkdir()
    (scratch / "f").write_text("x")
    for p in (old, scratch):
        os.utime(p, (time.time() - 86400, time.time() - 86400))
    if what == "with-oci-layout":
        (host / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    before = sorted(str(p.relative_to(host)) for p in host.rglob("*"))
    pb = Pybuild(host)
    for args in (["images"], ["doctor"], ["cache", "ls"]):
        line = one_line_error(pb(*args, check=False))
        assert "is not a pybuild store" in line
    assert sorted(str(p.relative_to(host)) for p in host.rglob("*")) == before
    assert old.read_text() == "precious"


def test_empty_and_new_directories_become_stores(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    Pybuild(empty)("images")
    Pybuild(tmp_path / "new" / "store")("images")
    assert (empty / "gc.lock").is_file() and (tmp_path / "new" / "store" / "oci-layout").is_file()
    Pybuild(empty)("images")  # and open again as stores


# ---- permissions -------------------------------------------------------------------------

@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="pybuild-perm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    # through a shell: setpriv itself finds its program before the ids change
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                           "/bin/sh", "-c", 'exec "$@"', "sh", *cmd], capture_output=True,
                          text=True, timeout=60)


def test_other_users_cannot_reach_unpacked_images(open_dir: Path, busybox_tar: Path) -> None:
    """Docker keeps its data root 0710 and image data 0700. On main the store root and
    snapshots/ were 0755: any local user could run a setuid-root binary from an image."""
    require_build_tools()
    pb = Pybuild(open_dir / "store")
    pb("import", str(busybox_tar), "busybox")
    root = pb.root
    assert (root.stat().st_mode & 0o777, (root / "snapshots").stat().st_mode & 0o777) == (0o710, 0o700)
    [snap] = [p for p in (root / "snapshots").iterdir() if p.name != "empty"]
    binary = snap / "fs" / "bin" / "busybox"
    binary.chmod(0o4755)  # as a setuid-root binary from an image would be
    proc = _as_nobody(str(binary), "true")
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc
    # an older store (0755) is tightened the next time it is opened
    root.chmod(0o755)
    (root / "snapshots").chmod(0o755)
    pb("images")
    assert (root.stat().st_mode & 0o777, (root / "snapshots").stat().st_mode & 0o777) == (0o710, 0o700)
    assert _as_nobody(str(binary), "true").returncode != 0


# ---- a database that is not one -----------------------------------------------------------

def _damage(db: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if how == "garbage":
        db.write_bytes(os.urandom(8192))
    elif how == "truncated":
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    elif how == "directory":
        db.unlink()
        db.mkdir()
        (db / "x").write_text("x")


@pytest.mark.parametrize("how", ["garbage", "truncated", "directory"])
def test_damaged_database_is_one_line_and_doctor_rebuilds_it(busybox: Pybuild, tmp_path: Path,
                                                             how: str) -> None:
    """On main: tracebacks in doctor, cache ls and build."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    lines = "".join(f"RUN echo {i} > /f{i}\n" for i in range(12))
    (ctx / "Dockerfile").write_text(f"FROM busybox\n{lines}")
    busybox("build", "-t", "app", str(ctx))
    # checkpoint the WAL so the database file itself holds the records
    import sqlite3
    conn = sqlite3.connect(busybox.root / "pybuild.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    _damage(busybox.root / "pybuild.db", how)
    for args in (["cache", "ls"], ["build", "-t", "app", str(ctx)], ["cache", "prune", "--all"]):
        line = one_line_error(busybox(*args, check=False))
        assert "pybuild.db" in line and "pybuild doctor --repair" in line, line
    doctor = busybox("doctor", check=False)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    assert "corrupt-database: pybuild.db:" in doctor.stdout
    repaired = busybox("doctor", "--repair", check=False)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "app" in busybox("images").stdout  # tags and blobs are kept
    busybox("cache", "ls")
    busybox("build", "-t", "app", str(ctx))
    assert busybox("doctor").returncode == 0


# ---- save verifies what it copies ------------------------------------------------------

@pytest.mark.parametrize("fmt", ["oci", "docker"])
@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_save_refuses_a_damaged_blob(pybuild: Pybuild, busybox_tar: Path, tmp_path: Path,
                                     fmt: str, damage: str) -> None:
    """On main `save --format oci` copied a truncated or corrupt layer into the archive."""
    pybuild("import", str(busybox_tar), "busybox")
    _manifest, _config, layer_path = _image_blobs(pybuild, "busybox")
    data = layer_path.read_bytes()
    if damage == "truncated":
        layer_path.write_bytes(data[: len(data) // 2])
    else:
        layer_path.write_bytes(data[:-20] + bytes(b ^ 0xFF for b in data[-20:]))
    out = tmp_path / "out"
    out.mkdir()
    line = one_line_error(pybuild("save", "--format", fmt, "-o", str(out / "a.tar"), "busybox",
                                   check=False))
    assert layer_path.name in line and "pybuild doctor" in line
    assert list(out.iterdir()) == []


# ---- small: messages name real commands, errors name real causes -------------------------

def test_every_run_hint_names_a_real_command() -> None:
    """Messages said "run verify" but there is no such command."""
    from pybuild.cli import build_parser

    parser = build_parser()
    commands = set(next(a for a in parser._actions if hasattr(a, "choices") and a.choices
                        and "build" in a.choices).choices)
    hints = []
    for path in (REPO / "pybuild").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"run verify\b", text), path
        hints += re.findall(r"run `pybuild ([a-z-]+)", text)
    assert hints and set(hints) <= commands


def test_disk_full_names_the_cause_not_none(tmp_path: Path) -> None:
    """On main a full disk ended the line in ': None' (an OSError without a file name)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(4 << 20))
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(PybuildError) as e:
        layer.write_layer(src, full, compression="none")  # type: ignore[arg-type]
    assert "No space left on device" in str(e.value) and not str(e.value).endswith("None")


def test_unreadable_manifest_does_not_stop_images_listing(pybuild: Pybuild, busybox_tar: Path) -> None:
    """doctor still works on a store whose tag points at a torn manifest."""
    pybuild("import", str(busybox_tar), "busybox")
    manifest = _image_blobs(pybuild, "busybox")[0]
    manifest.write_bytes(b"{")
    doctor = pybuild("doctor", check=False)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr
    assert "broken-tag: busybox:latest" in doctor.stdout



@pytest.mark.parametrize("text", ['[1]', '{"manifests": "x"}', '{"manifests": ["x"]}', '\xff'])
def test_index_json_of_the_wrong_shape_is_one_line(pybuild: Pybuild, text: str) -> None:
    pybuild("images")
    (pybuild.root / "index.json").write_bytes(text.encode("latin-1"))
    line = one_line_error(pybuild("images", check=False))
    assert "index.json is corrupt" in line
    doctor = pybuild("doctor", check=False)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr
    assert "corrupt-index: index.json" in doctor.stdout
