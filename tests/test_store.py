"""The store: atomic blobs, tags, lock, gc, verify, and other tools reading it as OCI layout."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest

from pybuild import image
from pybuild.errors import PybuildError
from pybuild.store import OCI_MANIFEST, REF_NAME, Descriptor, Store

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip layer made directly with tarfile; returns (blob bytes, diff_id)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    plain = buf.getvalue()
    return gzip.compress(plain, mtime=0), sha(plain)


def write_image(store: Store, files: dict[str, bytes], tag: str | None = None) -> Descriptor:
    blob, diff_id = make_layer(files)
    layer = store.put_bytes(blob, LAYER)
    config = image.empty_config()
    config["rootfs"]["diff_ids"] = [diff_id]
    config["config"]["Cmd"] = ["/bin/sh"]
    config["history"] = [{"created_by": "test layer"}]
    desc = image.write(store, config, [layer])
    if tag:
        store.set_tag(tag, desc)
    return desc


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "root")


def test_layout_created_once(tmp_path: Path) -> None:
    s = Store(tmp_path / "r")
    assert json.loads((s.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((s.root / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []
    for d in ("blobs/sha256", "tmp", "snapshots"):
        assert (s.root / d).is_dir()
    desc = s.put_bytes(b"x", "application/octet-stream")
    s.set_tag("a", desc)
    again = Store(tmp_path / "r")  # reopening keeps what is there
    assert again.resolve_tag("a") == Descriptor(desc.media_type, desc.digest, 1, {REF_NAME: "a:latest"})


def test_writer_commits_verified_blob(store: Store) -> None:
    data = b"hello " * 1000
    with store.writer(expected_digest=sha(data)) as w:
        w.write(data[:10])
        w.write(memoryview(data[10:]))
        assert w.tell() == len(data) and w.digest == sha(data)
        desc = w.commit("application/octet-stream", {"k": "v"})
    assert desc == Descriptor("application/octet-stream", sha(data), len(data), {"k": "v"})
    assert store.read_bytes(desc.digest) == data
    assert oct(store.blob_path(desc.digest).stat().st_mode & 0o777) == "0o644"
    assert list(store.tmp_dir.iterdir()) == []
    # Same content again: same descriptor, still one file.
    assert store.put_bytes(data, "application/octet-stream").digest == desc.digest
    assert len(list(store.iter_blobs())) == 1


def test_digest_mismatch_stores_nothing(store: Store) -> None:
    with pytest.raises(PybuildError, match="digest mismatch"):
        with store.writer(expected_digest=sha(b"expected")) as w:
            w.write(b"something else")
            w.commit("application/octet-stream")
    assert list(store.iter_blobs()) == []
    assert list(store.tmp_dir.iterdir()) == []
    assert not store.has_blob(sha(b"something else"))


def test_aborted_or_uncommitted_writer_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"partial")
        raise RuntimeError("build step failed")
    with store.writer() as w:
        w.write(b"never committed")
    assert list(store.tmp_dir.iterdir()) == [] and list(store.iter_blobs()) == []


def test_bad_digests_and_missing_blobs_are_user_errors(store: Store) -> None:
    with pytest.raises(PybuildError, match="invalid digest"):
        store.has_blob("sha256:../../etc/passwd")
    with pytest.raises(PybuildError, match="not found"):
        store.read_bytes(sha(b"absent"))
    with pytest.raises(PybuildError, match="invalid digest"):
        store.writer(expected_digest="md5:abc")
    with pytest.raises(PybuildError, match="not a JSON object"):
        store.read_json(store.put_bytes(b"[1]", "application/json").digest)


def test_put_json_is_canonical(store: Store) -> None:
    a = store.put_json({"b": 1, "a": [1, 2], "é": "ü"}, "application/json")
    b = store.put_json({"é": "ü", "a": [1, 2], "b": 1}, "application/json")
    assert a == b
    assert store.read_bytes(a.digest) == '{"a":[1,2],"b":1,"é":"ü"}'.encode()


def test_tags(store: Store) -> None:
    one = store.put_json({"n": 1}, OCI_MANIFEST)
    two = store.put_json({"n": 2}, OCI_MANIFEST)
    store.set_tag("myapp", one)
    store.set_tag("localhost:5000/app:1.0", two)
    store.set_tag("docker.io/library/busybox:latest", two)
    assert store.resolve_tag("myapp:latest").digest == one.digest
    assert store.resolve_tag("myapp").digest == one.digest
    assert store.resolve_tag("busybox").digest == two.digest
    assert store.resolve_tag("nope") is None
    store.set_tag("myapp:latest", two)  # replaces, never duplicates
    names = [m["annotations"][REF_NAME]
             for m in json.loads((store.root / "index.json").read_text())["manifests"]]
    assert sorted(names) == ["busybox:latest", "localhost:5000/app:1.0", "myapp:latest"]
    assert store.list_tags()["myapp:latest"].digest == two.digest
    assert store.remove_tag("myapp").digest == two.digest
    assert store.remove_tag("myapp") is None
    assert set(store.list_tags()) == {"busybox:latest", "localhost:5000/app:1.0"}
    with pytest.raises(PybuildError, match="invalid reference format"):
        store.set_tag("Bad Name", one)


def _writer_process(root: str, worker: int, count: int) -> None:
    s = Store(Path(root))
    for i in range(count):
        shared = s.put_bytes(f"shared {i}".encode() * 5000, "application/octet-stream")
        own = s.put_json({"worker": worker, "i": i}, OCI_MANIFEST)
        s.set_tag(f"w{worker}:t{i}", own)
        s.set_tag(f"shared:t{i}", shared)


def test_concurrent_writers_from_two_processes(store: Store) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer_process, args=(str(store.root), w, 25)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    tags = store.list_tags()
    # Under the lock no tag update is lost; blobs written by both stay intact.
    assert {f"w{w}:t{i}" for w in (1, 2) for i in range(25)} <= set(tags)
    assert len(tags) == 75
    assert store.verify() == []
    assert list(store.tmp_dir.iterdir()) == []


def _hold_lock_then_report(root: str, conn: multiprocessing.connection.Connection) -> None:
    fd = os.open(Path(root) / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        conn.send("acquired")
    except BlockingIOError:
        conn.send("blocked")
    os.close(fd)


def test_lock_is_exclusive_across_processes_and_reentrant(store: Store) -> None:
    ctx = multiprocessing.get_context("fork")

    def probe() -> str:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_hold_lock_then_report, args=(str(store.root), child))
        p.start()
        answer = parent.recv()
        p.join(30)
        return answer

    with store.lock():
        with store.lock():  # re-entrant in the same Store
            assert probe() == "blocked"
        assert probe() == "blocked"
    assert probe() == "acquired"


def _die_mid_write(root: str) -> None:
    s = Store(Path(root))
    w = s.writer()
    w.write(b"half a layer")
    w.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def test_sigkilled_writer_leaves_only_temp_files_cleaned_next_time(store: Store) -> None:
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_die_mid_write, args=(str(store.root),))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    leftovers = list(store.tmp_dir.iterdir())
    assert len(leftovers) == 1 and list(store.iter_blobs()) == []
    with store.writer() as live:  # a live writer's temp file must survive the cleaning
        live.write(b"in progress")
        Store(store.root)
        assert [p.name for p in store.tmp_dir.iterdir()] == [live._path.name]
        live.commit("application/octet-stream")
    assert list(store.tmp_dir.iterdir()) == []


def test_database_is_wal_and_per_store(store: Store) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db is store.db
    store.db.execute("CREATE TABLE t (x)")
    store.db.execute("INSERT INTO t VALUES (1)")
    store.db.commit()
    other = Store(store.root)
    assert other.db is not store.db
    assert other.db.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_gc_keeps_tagged_and_kept_images(store: Store) -> None:
    tagged = write_image(store, {"a": b"A" * 100}, tag="keep:me")
    kept = write_image(store, {"b": b"B" * 100})
    dropped = write_image(store, {"c": b"C" * 1000})
    stray = store.put_bytes(b"stray" * 100, "application/octet-stream")
    dropped_img = image.load(store, dropped.digest)
    expected = {dropped.digest, dropped_img.config_desc.digest, dropped_img.layers[0].digest,
                stray.digest}
    sizes = sum(store.blob_path(d).stat().st_size for d in expected)
    assert store.gc(keep={kept.digest}, min_age=3600).removed == []  # all too young
    result = store.gc(keep={kept.digest})
    assert set(result.removed) == expected
    assert result.bytes_freed == sizes
    assert not any(store.has_blob(d) for d in expected)
    for desc in (tagged, kept):
        img = image.load(store, desc.digest)
        assert all(store.has_blob(d.digest) for d in [img.config_desc, *img.layers])
    assert store.gc(keep={kept.digest}).removed == []
    store.remove_tag("keep:me")
    assert len(store.gc().removed) == 6  # both remaining images: manifest, config, layer


def test_verify_reports_corruption_and_missing_blobs(store: Store) -> None:
    desc = write_image(store, {"f": b"data"}, tag="img")
    assert store.verify() == []
    img = image.load(store, "img")
    store.blob_path(img.config_desc.digest).write_bytes(b"{}")
    store.blob_path(img.layers[0].digest).unlink()
    problems = store.verify()
    assert any(img.config_desc.digest in p and "hashes to" in p for p in problems)
    assert f"tag img:latest: blob {img.layers[0].digest} is missing" in problems
    assert desc.digest not in " ".join(problems)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed")
    return path


def test_skopeo_and_umoci_read_the_store(store: Store, tmp_path: Path) -> None:
    skopeo, umoci = _need("skopeo"), _need("umoci")
    desc = write_image(store, {"etc/hello": b"hello from pybuild\n", "bin/tool": b"#!x\n"},
                       tag="localhost:5000/app:1.0")
    write_image(store, {"other": b"x"}, tag="myapp")
    out = subprocess.run([skopeo, "inspect", f"oci:{store.root}:localhost:5000/app:1.0"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    img = image.load(store, "localhost:5000/app:1.0")
    assert info["Digest"] == desc.digest
    assert info["Layers"] == [img.layers[0].digest]
    assert info["Architecture"] == img.config["architecture"] and info["Os"] == "linux"
    assert info["Env"] == [f"PATH={image.DEFAULT_PATH}"]
    raw = subprocess.run([skopeo, "inspect", "--config", "--raw", f"oci:{store.root}:myapp:latest"],
                         capture_output=True, text=True)
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout) == image.load(store, "myapp").config
    if os.geteuid() != 0:
        pytest.skip("umoci unpack needs root to keep file owners")
    bundle = tmp_path / "bundle"
    un = subprocess.run([umoci, "unpack", "--image", f"{store.root}:localhost:5000/app:1.0",
                         str(bundle)], capture_output=True, text=True)
    assert un.returncode == 0, un.stderr
    assert (bundle / "rootfs/etc/hello").read_bytes() == b"hello from pybuild\n"
    assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["/bin/sh"]
    assert store.verify() == []


def test_skopeo_copies_a_store_image_to_a_real_registry(store: Store) -> None:
    from engines import registry_server

    skopeo = _need("skopeo")
    desc = write_image(store, {"etc/x": b"pushed\n"}, tag="app:1")
    with registry_server() as addr:
        push = subprocess.run([skopeo, "copy", "--dest-tls-verify=false",
                               f"oci:{store.root}:app:1", f"docker://{addr}/pb/app:1"],
                              capture_output=True, text=True, timeout=120)
        assert push.returncode == 0, push.stderr
        res = subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{addr}/pb/app:1"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        # Unchanged bytes: the registry serves the very manifest the store holds.
        assert json.loads(res.stdout)["Digest"] == desc.digest


def _inode_flags(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return int.from_bytes(fcntl.ioctl(fd, 0x80086601, bytes(8))[:4], "little")
    except OSError:
        return None
    finally:
        os.close(fd)


def test_tree_dirs_are_flagged_to_spread_new_trees(tmp_path: Path) -> None:
    """On ext2/3/4 the directories builds make and delete trees in carry the top-directory
    flag (chattr +T), other flags kept; elsewhere nothing is flagged and nothing fails."""
    from pybuild.snapshot import Snapshotter
    from pybuild.store import tree_dir

    probe = tmp_path / "probe"
    probe.mkdir()
    before = _inode_flags(probe)
    tree_dir(probe)
    if before is None or _inode_flags(probe) == before:
        pytest.skip(f"{tmp_path} is not on a filesystem with FS_TOPDIR_FL (ext2/3/4)")
    store = Store(tmp_path / "store")
    Snapshotter(store)
    for name in ("tmp", "snapshots", "mounts"):
        flags = _inode_flags(store.root / name)
        assert flags is not None and flags & 0x00020000, name
    noatime = tmp_path / "noatime"
    noatime.mkdir()
    subprocess.run(["chattr", "+A", str(noatime)], check=True)
    tree_dir(noatime)
    tree_dir(noatime)  # idempotent
    flags = _inode_flags(noatime)
    assert flags is not None and flags & 0x80 and flags & 0x00020000  # NOATIME kept
