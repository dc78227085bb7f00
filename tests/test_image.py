"""Images: import of a rootfs, lookup, and archives loaded by real docker, podman, skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from engines import docker_engine
from pybuild import image
from pybuild.errors import PybuildError
from pybuild.store import OCI_MANIFEST, Descriptor, Store

BUSYBOX = Path("/bin/busybox")
MESSAGE = b"hello from a pybuild import\n"


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs: bin/busybox, bin/sh and bin/cat → busybox, etc/message."""
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    base = tmp_path_factory.mktemp("rootfs")
    root = base / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in ("sh", "cat", "ls", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/message").write_bytes(MESSAGE)
    os.link(root / "etc/message", root / "etc/message.hardlink")
    out = base / "rootfs.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(root, arcname=".")
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "root")


def members(store: Store, layer: Descriptor) -> dict[str, tarfile.TarInfo]:
    with store.open_blob(layer.digest) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_import_rootfs_makes_a_one_layer_image(store: Store, rootfs_tar: Path) -> None:
    desc = image.import_rootfs(store, rootfs_tar, "busybox")
    assert desc.media_type == OCI_MANIFEST
    img = image.load(store, "busybox:latest")
    assert img.manifest_desc.digest == desc.digest
    assert img.config_desc.media_type == image.OCI_CONFIG
    assert img.config["architecture"] == image.host_platform()["architecture"]
    assert img.config["os"] == "linux"
    assert img.config["config"]["Env"] == [f"PATH={image.DEFAULT_PATH}"]
    assert img.config["rootfs"]["type"] == "layers"
    [history] = img.config["history"]
    assert history["created_by"] == "pybuild import" and "empty_layer" not in history
    assert img.config["created"] == history["created"]
    [layer] = img.layers
    assert layer.media_type == image.OCI_LAYER_GZIP
    with store.open_blob(layer.digest) as f:
        plain = gzip.decompress(f.read())
    assert img.diff_ids == ["sha256:" + hashlib.sha256(plain).hexdigest()]
    entries = members(store, layer)
    # ./ prefixes and the root entry are gone; owners numeric; links kept as links
    assert "bin/busybox" in entries and "." not in entries and "./bin" not in entries
    assert entries["bin/sh"].issym() and entries["bin/sh"].linkname == "busybox"
    assert entries["etc/message.hardlink"].islnk() or entries["etc/message"].islnk()
    assert all(m.uname == "" and m.gname == "" for m in entries.values())
    assert entries["tmp"].mode & 0o7777 == 0o1777


def test_import_is_deterministic_across_compressions(store: Store, rootfs_tar: Path,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    raw = rootfs_tar.read_bytes()
    variants = {
        "plain.tar": raw,
        "rootfs.tar.gz": gzip.compress(raw),
        "rootfs.tar.xz": lzma.compress(raw),
        "rootfs.tar.zst": zstandard.ZstdCompressor().compress(raw),
    }
    digests = set()
    layers = set()
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        desc = image.import_rootfs(store, tmp_path / name, f"imp:{name.split('.')[0]}")
        layers.add(image.load(store, desc.digest).layers[0].digest)
        digests.add(desc.digest)
    assert len(layers) == 1  # same rootfs → same layer, whatever the input compression
    img = image.load(store, "imp:plain")
    assert img.config["created"] == "2023-11-14T22:13:20Z"
    zst = image.import_rootfs(store, tmp_path / "plain.tar", "imp:zstd", compression="zstd")
    assert image.load(store, zst.digest).layers[0].media_type == image.OCI_LAYER_ZSTD
    assert image.load(store, zst.digest).diff_ids == img.diff_ids


def test_import_rejects_bad_input(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "evil.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../escape")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(PybuildError, match="unsafe path"):
        image.import_rootfs(store, bad, "evil")
    (tmp_path / "notatar").write_bytes(b"this is not a tarball" * 100)
    with pytest.raises(PybuildError, match="tar"):
        image.import_rootfs(store, tmp_path / "notatar", "x")
    truncated = tmp_path / "truncated.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("big")
        info.size = 1 << 16
        tar.addfile(info, io.BytesIO(os.urandom(1 << 16)))
    truncated.write_bytes(gzip.compress(buf.getvalue())[:30000])
    with pytest.raises(PybuildError, match="truncated|corrupt|unexpected end"):
        image.import_rootfs(store, truncated, "x")
    with pytest.raises(PybuildError, match="No such file"):
        image.import_rootfs(store, tmp_path / "missing.tar", "x")
    with pytest.raises(PybuildError, match="invalid reference format"):
        image.import_rootfs(store, bad, "UPPER")
    with pytest.raises(PybuildError, match="unknown compression"):
        image.import_rootfs(store, bad, "x", compression="lz4")
    assert store.list_tags() == {} and list(store.iter_blobs()) == []
    assert list(store.tmp_dir.iterdir()) == []


def _tiny(store: Store, n: int) -> Descriptor:
    config = image.empty_config()
    config["config"]["Labels"] = {"n": str(n)}
    return image.write(store, config, [])


def test_load_by_tag_id_prefix_and_digest(store: Store) -> None:
    desc = _tiny(store, 0)
    store.set_tag("localhost:5000/app:1.0", desc)
    img = image.load(store, "localhost:5000/app:1.0")
    hexid = img.id.split(":", 1)[1]
    for name in (img.id, hexid, hexid[:12], "sha256:" + hexid[:12], desc.digest,
                 "localhost:5000/app@" + desc.digest):
        assert image.load(store, name).id == img.id, name
    untagged = _tiny(store, 1)  # found among the blobs, without a tag
    assert image.load(store, untagged.digest).config["config"]["Labels"] == {"n": "1"}
    with pytest.raises(PybuildError, match="No such image: nothere:latest"):
        image.load(store, "nothere")
    with pytest.raises(PybuildError, match="No such image"):
        image.load(store, "sha256:" + "0" * 64)
    with pytest.raises(PybuildError, match="invalid reference format"):
        image.load(store, "Not A Name")


def test_tag_wins_over_id_prefix_and_prefixes_must_be_unique(store: Store) -> None:
    descs = [_tiny(store, n) for n in range(17)]  # 17 IDs: two share a first hex digit
    ids = [image.load(store, d.digest).id for d in descs]
    first = ids[0][7]
    # A tag that looks like an ID prefix still names the tagged image.
    store.set_tag(first, descs[5])
    assert image.load(store, first).id == ids[5]
    clash = next(c for c in "0123456789abcdef" if sum(i[7] == c for i in ids) > 1 and c != first)
    with pytest.raises(PybuildError, match="ambiguous"):
        image.load(store, clash)


def test_write_checks_layer_count(store: Store) -> None:
    with pytest.raises(ValueError):
        image.write(store, image.empty_config(), [Descriptor(image.OCI_LAYER, "sha256:" + "1" * 64, 1)])


def _read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_docker_archive_layout(store: Store, rootfs_tar: Path, tmp_path: Path) -> None:
    desc = image.import_rootfs(store, rootfs_tar, "busybox")
    store.set_tag("localhost:5000/bb:2", desc)
    img = image.load(store, "busybox")
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "bb.tar"
    image.save_docker_archive(store, ["busybox", "localhost:5000/bb:2", img.id], out)
    files = _read_tar(out)
    [entry] = json.loads(files["manifest.json"])
    hexid = img.id.split(":", 1)[1]
    assert entry["Config"] == f"{hexid}.json"
    assert entry["RepoTags"] == ["busybox:latest", "localhost:5000/bb:2"]
    assert json.loads(files[entry["Config"]]) == img.config
    [layer_name] = entry["Layers"]
    layer = files[layer_name]
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == img.diff_ids[0]
    assert json.loads(files["repositories"]) == {"busybox": {"latest": layer_name.split("/")[0]},
                                                 "localhost:5000/bb": {"2": layer_name.split("/")[0]}}
    with pytest.raises(PybuildError, match="No such image"):
        image.save_docker_archive(store, ["busybox", "missing"], outdir / "x.tar")
    # A layer that no longer matches its diff_id fails the save half-way: no file is left.
    store.blob_path(img.layers[0].digest).write_bytes(gzip.compress(b"tampered"))
    with pytest.raises(PybuildError, match="does not match its diff_id"):
        image.save_docker_archive(store, ["busybox"], outdir / "y.tar")
    store.blob_path(img.layers[0].digest).write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(PybuildError, match="cannot be read"):
        image.save_docker_archive(store, ["busybox"], outdir / "y.tar")
    assert sorted(outdir.iterdir()) == [out]


@pytest.fixture(scope="module")
def docker() -> Iterator:
    with docker_engine() as d:
        yield d


def test_docker_loads_and_runs_saved_archive(store: Store, rootfs_tar: Path, tmp_path: Path,
                                             docker) -> None:
    image.import_rootfs(store, rootfs_tar, "pbtest/busybox:v1")
    img = image.load(store, "pbtest/busybox:v1")
    out = tmp_path / "bb.tar"
    image.save_docker_archive(store, ["pbtest/busybox:v1"], out)
    loaded = docker("load", "-i", str(out))
    assert "Loaded image: pbtest/busybox:v1" in loaded.stdout
    assert docker("image", "inspect", "-f", "{{.Id}}", "pbtest/busybox:v1").stdout.strip() == img.id
    run = docker("run", "--rm", "--network=host", "pbtest/busybox:v1", "/bin/busybox", "cat",
                 "/etc/message")
    assert run.stdout.encode() == MESSAGE
    env = docker("run", "--rm", "--network=host", "pbtest/busybox:v1", "sh", "-c", "echo $PATH")
    assert env.stdout.strip() == image.DEFAULT_PATH


def test_podman_loads_saved_archive(store: Store, rootfs_tar: Path, tmp_path: Path) -> None:
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman not installed")
    if os.geteuid() != 0:
        pytest.skip("podman with a private storage root needs root here")
    image.import_rootfs(store, rootfs_tar, "localhost/pbpod:1")
    img = image.load(store, "localhost/pbpod:1")
    out = tmp_path / "pod.tar"
    image.save_docker_archive(store, ["localhost/pbpod:1"], out)
    runroot = Path(tempfile.mkdtemp(prefix="pbp-", dir="/tmp"))  # podman wants < 50 chars
    base = [podman, "--root", str(tmp_path / "proot"), "--runroot", str(runroot),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    try:
        load = subprocess.run([*base, "load", "-i", str(out)], capture_output=True, text=True,
                              timeout=300)
        assert load.returncode == 0, load.stderr
        assert "localhost/pbpod:1" in load.stdout
        inspect = subprocess.run([*base, "image", "inspect", "localhost/pbpod:1"],
                                 capture_output=True, text=True, timeout=60)
        assert inspect.returncode == 0, inspect.stderr
        assert json.loads(inspect.stdout)[0]["Id"] == img.id.split(":", 1)[1]
        # `podman run` cannot work in this sandbox (cgroups in hybrid mode, rlimits), so the
        # unpacked image is read through `podman image mount` instead.
        mount = subprocess.run([*base, "image", "mount", "localhost/pbpod:1"],
                               capture_output=True, text=True, timeout=60)
        assert mount.returncode == 0, mount.stderr
        rootfs = Path(mount.stdout.strip())
        assert (rootfs / "etc/message").read_bytes() == MESSAGE
        assert os.readlink(rootfs / "bin/sh") == "busybox"
        subprocess.run([*base, "image", "unmount", "localhost/pbpod:1"], capture_output=True,
                       timeout=60)
    finally:
        subprocess.run([*base, "system", "reset", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(runroot, ignore_errors=True)


def test_oci_archive_read_by_skopeo(store: Store, rootfs_tar: Path, tmp_path: Path) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo not installed")
    desc = image.import_rootfs(store, rootfs_tar, "busybox:1")
    img = image.load(store, "busybox:1")
    out = tmp_path / "oci.tar"
    image.save_oci_archive(store, ["busybox:1"], out)
    files = _read_tar(out)
    [entry] = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "busybox:1",
                                    "io.containerd.image.name": "docker.io/library/busybox:1"}
    for ref in (f"oci-archive:{out}", f"oci-archive:{out}:busybox:1"):
        res = subprocess.run([skopeo, "inspect", ref], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)
        assert info["Digest"] == desc.digest
        assert info["Layers"] == [img.layers[0].digest]
    # skopeo can copy it back out, verifying every blob digest on the way
    copy = subprocess.run([skopeo, "copy", f"oci-archive:{out}", f"oci:{tmp_path / 'copy'}:x"],
                          capture_output=True, text=True, timeout=120)
    assert copy.returncode == 0, copy.stderr
