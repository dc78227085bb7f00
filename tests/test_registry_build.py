"""Registry through the CLI: FROM pulls, push/--push, and the cache shared between two stores."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Pybuild, require_build_tools
from engines import registry_server

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    with registry_server() as addr:
        yield addr


def skopeo_digest(ref: str) -> str:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["Digest"]


def local_digest(pb: Pybuild, name: str) -> str:
    return json.loads(pb("inspect", name).stdout)[0]["ManifestDigest"]


def test_push_then_pull_into_empty_store_and_build_from_it(busybox: Pybuild, registry: str,
                                                          tmp_path: Path) -> None:
    busybox("push", "busybox", f"{registry}/base/busybox:1")
    assert skopeo_digest(f"{registry}/base/busybox:1") == local_digest(busybox, "busybox")
    fresh = Pybuild(tmp_path / "fresh")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {registry}/base/busybox:1\nRUN echo pulled > /p\n")
    proc = fresh("build", "-t", f"{registry}/app/result:2", "--push", str(ctx))
    assert f"load metadata for {registry}/base/busybox:1" in proc.stderr
    assert skopeo_digest(f"{registry}/app/result:2") == local_digest(fresh, f"{registry}/app/result:2")
    out = tmp_path / "oci"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false",
                    f"docker://{registry}/app/result:2", f"oci:{out}:x"], check=True,
                   capture_output=True)
    assert (out / "index.json").exists()


def test_pull_command_and_clear_errors(busybox: Pybuild, registry: str, tmp_path: Path) -> None:
    busybox("push", "busybox", f"{registry}/lib/bb:latest")
    other = Pybuild(tmp_path / "other")
    proc = other("pull", f"{registry}/lib/bb")
    assert "Digest: sha256:" in proc.stdout
    row = [line.split() for line in other("images").stdout.splitlines()[1:]]
    assert [r[:2] for r in row] == [[f"{registry}/lib/bb", "latest"]]
    missing = other("pull", f"{registry}/lib/bb:nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == f"error: manifest unknown: {registry}/lib/bb:nope"
    down = other("pull", "127.0.0.1:1/x:1", check=False)
    assert down.returncode == 1 and "connection refused" in down.stderr.strip().splitlines()[-1]


def test_cache_round_trip_between_two_stores(busybox: Pybuild, registry: str, tmp_path: Path) -> None:
    require_build_tools()
    busybox("push", "busybox", f"{registry}/base/bbcache:1")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("data\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {registry}/base/bbcache:1 AS build\nRUN echo built > /artifact\n"
        f"FROM {registry}/base/bbcache:1\nCOPY f /f\nCOPY --from=build /artifact /a\n"
        "RUN cat /f /a > /both\n")
    cache = f"type=registry,ref={registry}/cache/app:buildcache,mode=max"
    first = Pybuild(tmp_path / "one")
    first("build", "-t", "app", "--cache-to", cache, str(ctx))
    second = Pybuild(tmp_path / "two")
    proc = second("build", "-t", "app", "--cache-from", cache, "--progress", "plain", str(ctx))
    assert proc.stderr.count("CACHED") == 4, proc.stderr
    # Same layers and, since cached steps keep their times, the very same image.
    assert local_digest(first, "app") == local_digest(second, "app")
    # mode=max offered the build stage's layer too, but nothing needed its bytes
    from pybuild.store import Store
    build_layer = json.loads(first("cache", "ls", "--format", "json").stdout)
    stage_layers = {r["layer"] for r in build_layer if "built > /artifact" in r["description"]}
    assert stage_layers and not any(Store(tmp_path / "two").has_blob(d) for d in stage_layers)
