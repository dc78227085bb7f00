"""Hostile images and cache records: digests are checked, never trusted, never joined to paths.

Each image is crafted byte by byte and served by a registry the test runs on loopback
(tests/security/hostile.py). Host directories the attack aims at are planted by the test
and asserted untouched; the store keeps no tag and no snapshot of a refused image.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Pybuild, require_build_tools
from pybuild.digest import Digest
from pybuild.errors import PybuildError
from pybuild.snapshot import chain_ids, check_layers
from pybuild.solver import remote_cache
from pybuild.solver.cache import Cache
from pybuild.store import Descriptor, Store
from security.hostile import (OCI_CONFIG, OCI_LAYER_GZIP, HostileRegistry, one_line_error, sha256,
                              tar_bytes)

BACKDOOR = b"#!/bin/sh\necho owned\n"


@pytest.fixture
def registry() -> Iterator[HostileRegistry]:
    with HostileRegistry() as r:
        yield r


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("host content")
    return victim


def _assert_untouched(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["keep"]
    assert (victim / "keep").read_text() == "host content"



def _snapshot_names(root: Path) -> list[str]:
    snaps = root / "snapshots"
    return sorted(p.name for p in snaps.iterdir() if p.name != "empty") if snaps.exists() else []


# ---- digests that are paths ------------------------------------------------------------

def test_digest_type_refuses_anything_but_algorithm_and_hex() -> None:
    good = "sha256:" + "a" * 64
    assert str(Digest.parse(good)) == good
    assert Digest.parse("sha512:" + "b" * 128).algorithm == "sha512"
    for bad in ["sha256:/tmp/x", "sha256:../../..", "sha256:" + "A" * 64, "sha256:" + "a" * 63,
                "sha512:" + "a" * 64, "md5:" + "a" * 32, "sha256:" + "a" * 64 + "/x", "",
                None, 42, ["sha256:" + "a" * 64]]:
        with pytest.raises(PybuildError, match="invalid"):
            Digest.parse(bad)
    with pytest.raises(PybuildError, match="invalid"):
        Digest.sha256("sha512:" + "b" * 128)
    # the first chain id is the first diff_id: it is validated like every other
    with pytest.raises(PybuildError, match=r"invalid diff_id #1 .*'sha256:/tmp/x'"):
        chain_ids(["sha256:/tmp/x"])
    with pytest.raises(PybuildError, match=r"invalid diff_id #2"):
        chain_ids([good, "sha256:../../.."])


@pytest.mark.parametrize("shape", ["absolute", "climbing"])
def test_diff_id_naming_a_host_directory_is_refused(registry: HostileRegistry, tmp_path: Path,
                                                    pybuild: Pybuild, shape: str) -> None:
    """`sha256:/abs/victim` or `sha256:../../victim` as a diff_id: on main, pull renamed its
    extraction onto that path, deleting the host directory first."""
    require_build_tools()
    victim = _victim(tmp_path)
    target = str(victim) if shape == "absolute" else os.path.relpath(victim, pybuild.root / "snapshots")
    registry.image("evil/paths", "1", [tar_bytes(("planted", "file", b"x"))],
                   diff_ids=[f"sha256:{target}"])
    line = one_line_error(pybuild("pull", f"{registry.addr}/evil/paths:1", check=False))
    # refused at the registry door or at unpack; a long hostile value is quoted cut short
    assert "diff_id" in line and f"sha256:{target}"[:48] in line
    _assert_untouched(victim)
    assert pybuild("images", "-q").stdout.strip() == ""  # no tag of the refused image
    assert _snapshot_names(pybuild.root) == []


def test_claimed_diff_id_is_verified_before_a_snapshot_is_filed(registry: HostileRegistry,
                                                                tmp_path: Path, pybuild: Pybuild,
                                                                busybox_tar: Path) -> None:
    """An image claims busybox's real diff_id for a layer holding a backdoor. On main its
    snapshot was filed under busybox's chain id and every later `FROM busybox` saw it."""
    require_build_tools()
    scratch = Pybuild(tmp_path / "scratch")
    scratch("import", str(busybox_tar), "busybox")
    busybox_diff_id = json.loads(scratch("inspect", "busybox").stdout)[0]["Config"][
        "rootfs"]["diff_ids"][0]
    registry.image("evil/backdoor", "1", [tar_bytes(("bin", "dir", None),
                                                    ("bin/backdoor", "file", BACKDOOR))],
                   diff_ids=[busybox_diff_id])
    line = one_line_error(pybuild("pull", f"{registry.addr}/evil/backdoor:1", check=False))
    assert "does not match the image config" in line and busybox_diff_id in line
    assert _snapshot_names(pybuild.root) == []
    assert pybuild("images", "-q").stdout.strip() == ""
    # busybox imported afterwards is its own content, and a build FROM it sees no backdoor
    pybuild("import", str(busybox_tar), "busybox")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN test ! -e /bin/backdoor\n")
    pybuild("build", "-t", "clean", str(ctx))
    # and with busybox already there, the same hostile image is still refused
    line = one_line_error(pybuild("pull", f"{registry.addr}/evil/backdoor:1", check=False))
    assert "does not match the image config" in line
    assert "evil" not in pybuild("images").stdout
    assert pybuild("doctor").returncode == 0


@pytest.mark.parametrize("layers,diff_ids", [(1, 2), (2, 1), (1, 0)])
def test_layer_and_diff_id_counts_must_agree(registry: HostileRegistry, pybuild: Pybuild,
                                             layers: int, diff_ids: int) -> None:
    """On main the longer list was cut to the shorter one without a word."""
    tars = [tar_bytes((f"f{i}", "file", b"x")) for i in range(layers)]
    claimed = [sha256(t) for t in tars] + ["sha256:" + "0" * 64] * 2
    registry.image("evil/count", "1", tars, diff_ids=claimed[:diff_ids])
    line = one_line_error(pybuild("pull", f"{registry.addr}/evil/count:1", check=False))
    assert f"{layers} layers" in line and f"{diff_ids} diff_ids" in line
    assert pybuild("images", "-q").stdout.strip() == ""
    # the store's own check, behind the registry's: one diff_id per layer, or one line
    with pytest.raises(PybuildError, match=f"image has {layers} layers but its config "
                                           f"lists {diff_ids} diff_ids"):
        check_layers([Descriptor(OCI_LAYER_GZIP, sha256(t), len(t)) for t in tars],
                     claimed[:diff_ids])


# ---- remote cache records ----------------------------------------------------------------

def _cache_manifest(registry: HostileRegistry, records: list[dict[str, object]],
                    layers: list[dict[str, object]]) -> None:
    config = registry.blob(json.dumps({"version": 1, "records": records}).encode(),
                           remote_cache.CONFIG_MEDIA_TYPE)
    registry.manifest("evil/cache", "latest", config, layers)


def test_cache_record_digests_are_validated() -> None:
    base = {"key": "sha256:" + "1" * 64, "parent": "", "description": "RUN x",
            "layer": {"mediaType": OCI_LAYER_GZIP, "digest": "sha256:" + "2" * 64, "size": 1},
            "diff_id": "sha256:" + "3" * 64, "chain_id": "sha256:" + "4" * 64, "inputs": {},
            "created": 1.0}
    assert remote_cache._from_json(base).diff_id == base["diff_id"]
    for field, bad in [("diff_id", "sha256:../../x"), ("chain_id", "sha256:/tmp/x"),
                       ("key", "../k"), ("inputs", "x")]:
        with pytest.raises(PybuildError):
            remote_cache._from_json({**base, field: bad})


def test_cache_from_record_with_a_false_diff_id_is_refused(registry: HostileRegistry,
                                                           busybox: Pybuild, tmp_path: Path) -> None:
    """A --cache-from record offers a backdoored layer under the diff_id of the real step's
    layer. On main the next RUN ran on the backdoor (its snapshot filed under a chain id
    the record chose)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo hi > /hi\nRUN test ! -e /bin/backdoor\n")
    busybox("build", "-t", "app", str(ctx))
    store = Store(busybox.root)
    [rec] = [r for r in Cache(store).all() if "echo hi" in r.description]
    store.close()
    busybox("cache", "prune", "--all")
    evil_tar = tar_bytes(("hi", "file", b"hi\n"), ("bin", "dir", None),
                         ("bin/backdoor", "file", BACKDOOR))
    layer = registry.blob(gzip.compress(evil_tar, mtime=0), OCI_LAYER_GZIP)
    _cache_manifest(registry, [{
        "key": rec.key, "parent": rec.parent, "description": rec.description, "layer": layer,
        "diff_id": rec.diff_id, "chain_id": "sha256:" + "e" * 64, "inputs": rec.inputs,
        "created": rec.created}], [layer])
    proc = busybox("build", "--cache-from", f"type=registry,ref={registry.addr}/evil/cache",
                   "-t", "app2", str(ctx), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "does not match the image config" in proc.stderr
    assert "e" * 64 not in _snapshot_names(busybox.root)
    for snap in (busybox.root / "snapshots").iterdir():
        assert not (snap / "fs" / "bin" / "backdoor").exists()


def test_cache_from_record_with_a_path_as_diff_id_is_refused(registry: HostileRegistry,
                                                             busybox: Pybuild, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    layer = registry.blob(gzip.compress(tar_bytes(("x", "file", b"x")), mtime=0), OCI_LAYER_GZIP)
    _cache_manifest(registry, [{
        "key": "sha256:" + "1" * 64, "parent": "", "description": "RUN x", "layer": layer,
        "diff_id": f"sha256:{victim}", "chain_id": f"sha256:{victim}", "inputs": {},
        "created": 1.0}], [layer])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    proc = busybox("build", "--cache-from", f"type=registry,ref={registry.addr}/evil/cache",
                   str(ctx), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "malformed record" in proc.stderr and "invalid record diff_id" in proc.stderr
    _assert_untouched(victim)


def test_config_blob_named_by_a_path_is_refused(registry: HostileRegistry, pybuild: Pybuild,
                                                tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    registry.manifest("evil/cfg", "1", {"mediaType": OCI_CONFIG, "digest": f"sha256:{victim}",
                                         "size": 2}, [])
    line = one_line_error(pybuild("pull", f"{registry.addr}/evil/cfg:1", check=False))
    assert f"sha256:{victim}"[:48] in line and "digest" in line  # quoted cut short
    _assert_untouched(victim)



@pytest.mark.parametrize("rootfs", ["layers", {"type": "layers", "diff_ids": "sha256:x"}])
def test_rootfs_of_the_wrong_type_is_one_line(registry: HostileRegistry, pybuild: Pybuild,
                                              rootfs: object) -> None:
    registry.image("evil/rootfs", "1", [tar_bytes(("f", "file", b"x"))], config={"rootfs": rootfs})
    line = one_line_error(pybuild("pull", f"{registry.addr}/evil/rootfs:1", check=False))
    assert "rootfs" in line
    assert pybuild("images", "-q").stdout.strip() == ""
