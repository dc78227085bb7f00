"""Cache backends beside type=registry: type=local (an OCI layout directory, read back by a
second store and by skopeo) and type=inline (the cache inside the pushed image's config)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Pybuild, require_build_tools, store_snapshot
from engines import registry_server
from pybuild.errors import PybuildError
from pybuild.solver.remote_cache import CacheSpec, parse_cache_spec


def _digest(pb: Pybuild, name: str) -> str:
    return str(json.loads(pb("inspect", name).stdout)[0]["ManifestDigest"])


def test_specs_parse() -> None:
    assert parse_cache_spec("type=local,dest=/c", "--cache-to") == CacheSpec("/c", "min", "local")
    assert parse_cache_spec("type=local,src=/c,tag=v2", "--cache-from") == \
        CacheSpec("/c", "min", "local", "v2")
    assert parse_cache_spec("type=inline", "--cache-to").type == "inline"
    for value, flag, message in [("type=local", "--cache-to", "dest= is required"),
                                 ("type=local,dest=/c", "--cache-from", "src= is required"),
                                 ("type=inline", "--cache-from", "is written by --cache-to"),
                                 ("type=inline,mode=max", "--cache-to", "only supports mode=min"),
                                 ("type=gha", "--cache-to", "unsupported cache type")]:
        with pytest.raises(PybuildError, match=message):
            parse_cache_spec(value, flag)


def _same_base(src: Pybuild, dst: Pybuild, tmp_path: Path) -> None:
    """The very same busybox manifest in `dst` (an OCI archive keeps manifest bytes)."""
    archive = tmp_path / f"base-{dst.root.name}.tar"
    src("save", "--format", "oci", "-o", str(archive), "busybox")
    dst("load", "-i", str(archive))
    assert _digest(dst, "busybox") == _digest(src, "busybox")


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("data\n")
    (ctx / "Dockerfile").write_text(
        "FROM busybox AS build\nRUN echo built > /artifact\n"
        "FROM busybox\nCOPY f /f\nCOPY --from=build /artifact /a\nRUN cat /f /a > /both\n")
    return ctx


def test_local_cache_round_trip_gives_the_same_image(busybox: Pybuild, busybox_tar: Path,
                                                     tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    cache = tmp_path / "cache"
    busybox("build", "-t", "app", "--cache-to", f"type=local,dest={cache},mode=max", str(ctx))
    assert json.loads((cache / "index.json").read_text())["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "latest"}
    if shutil.which("skopeo"):  # an OCI layout any tool reads
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{cache}:latest"],
                             capture_output=True, text=True, check=True).stdout
        assert json.loads(raw)["config"]["mediaType"] == "application/vnd.pybuild.cache.config.v1+json"
    second = Pybuild(tmp_path / "two")
    _same_base(busybox, second, tmp_path)
    proc = second("build", "-t", "app", "--cache-from", f"type=local,src={cache}",
                  "--progress", "plain", str(ctx))
    assert proc.stderr.count("CACHED") == 4, proc.stderr
    assert _digest(second, "app") == _digest(busybox, "app")
    assert second("doctor").returncode == 0
    # an empty or absent cache dir is no error (nothing exported there yet)
    third = Pybuild(tmp_path / "three")
    third("import", str(busybox_tar), "busybox")
    third("build", "--cache-from", f"type=local,src={tmp_path}/nothing", str(ctx))


def test_tampered_local_cache_is_refused(busybox: Pybuild, busybox_tar: Path,
                                         tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    cache = tmp_path / "cache"
    busybox("build", "--cache-to", f"type=local,dest={cache}", str(ctx))
    index = json.loads((cache / "index.json").read_text())
    manifest = json.loads((cache / "blobs" / "sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    layer = manifest["layers"][-1]["digest"].split(":")[1]
    (cache / "blobs" / "sha256" / layer).write_bytes(b"\x1f\x8b not the layer")
    second = Pybuild(tmp_path / "two")
    _same_base(busybox, second, tmp_path)
    proc = second("build", "--cache-from", f"type=local,src={cache}", str(ctx), check=False)
    # the damaged layer is never used: its record fails when fetched, one clear line
    assert proc.returncode == 1 and "digest mismatch" in proc.stderr
    # a symlinked blob pointing out of the layout resolves inside it, so is just missing
    (cache / "blobs" / "sha256" / layer).unlink()
    (cache / "blobs" / "sha256" / layer).symlink_to("/etc/passwd")
    before = store_snapshot(second.root)
    proc = second("build", "--cache-from", f"type=local,src={cache}", str(ctx), check=False)
    assert proc.returncode == 1 and "is missing" in proc.stderr
    assert {k for k in store_snapshot(second.root) if k.startswith("blobs")} >= \
        {k for k in before if k.startswith("blobs")}
    (cache / "index.json").write_text("{nope")
    proc = second("build", "--cache-from", f"type=local,src={cache}", str(ctx), check=False)
    assert proc.returncode == 1 and "index.json is not valid JSON" in proc.stderr


def test_inline_cache_through_a_registry(busybox: Pybuild, busybox_tar: Path,
                                         tmp_path: Path) -> None:
    require_build_tools()
    ctx = _context(tmp_path)
    with registry_server() as reg:
        busybox("build", "--insecure-registry", reg, "-t", f"{reg}/app/inline:1", "--push",
                "--cache-to", "type=inline", str(ctx))
        cfg = json.loads(busybox("inspect", f"{reg}/app/inline:1").stdout)[0]["Config"]
        assert cfg["io.pybuild.cache.v1"]["records"]
        second = Pybuild(tmp_path / "two")
        _same_base(busybox, second, tmp_path)
        proc = second("build", "--insecure-registry", reg, "-t", "again", "--cache-from",
                      f"{reg}/app/inline:1", "--cache-to", "type=inline", "--progress", "plain",
                      str(ctx))
        # mode=min: the final stage's steps come from the image; the build stage reruns
        assert proc.stderr.count("CACHED") == 3, proc.stderr
        assert _digest(second, "again") == _digest(busybox, f"{reg}/app/inline:1")
