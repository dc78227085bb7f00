"""`--add-host`, `--ulimit`, `--shm-size`: parsed as docker does, seen by RUN steps, part of
their cache key, and compared with `docker build` of the real Docker 20.10 engine."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Pybuild
from engines import docker_engine
from pybuild import runtime
from pybuild.errors import PybuildError
from pybuild.solver.run_options import parse_add_host, parse_shm_size, parse_ulimit

DOCKERFILE = """\
FROM busybox
RUN mkdir /o && grep -v localhost /etc/hosts > /o/hosts; ulimit -Sn > /o/nofile \\
 && ulimit -Hn >> /o/nofile && ulimit -Sc > /o/core && df -k /dev/shm | tail -1 | awk '{print $2}' > /o/shm
FROM scratch
COPY --from=0 /o/ /
"""
FLAGS = ["--add-host", "db.internal:10.1.2.3", "--add-host", "v6.internal:fd00::1",
         "--ulimit", "nofile=1024:2048", "--ulimit", "core=0", "--shm-size", "128m"]


def test_flags_parse_as_docker() -> None:
    assert parse_add_host("db:10.0.0.1") == ("db", "10.0.0.1")
    assert parse_add_host("db=10.0.0.1") == ("db", "10.0.0.1")
    assert parse_add_host("v6:fd00::1") == ("v6", "fd00::1")
    assert parse_add_host("gw:host-gateway") == ("gw", "127.0.0.1")
    assert parse_ulimit("nofile=1024:2048") == ("RLIMIT_NOFILE", 1024, 2048)
    assert parse_ulimit("nproc=512") == ("RLIMIT_NPROC", 512, 512)
    assert parse_ulimit("core=-1") == ("RLIMIT_CORE", 2**64 - 1, 2**64 - 1)
    assert parse_shm_size("128m") == 128 << 20 and parse_shm_size("1g") == 1 << 30
    assert parse_shm_size("4096") == 4096 and parse_shm_size("64MiB") == 64 << 20
    for f, bad, message in [(parse_add_host, "nocolon", "bad format for add-host"),
                            (parse_add_host, "db:999.1.1.1", "invalid IP address"),
                            (parse_ulimit, "nofiles=1", "invalid ulimit type: nofiles"),
                            (parse_ulimit, "nofile=2048:1024", "soft limit must be less"),
                            (parse_ulimit, "nofile=x", "invalid ulimit value"),
                            (parse_shm_size, "lots", "invalid size")]:
        with pytest.raises(PybuildError, match=message):
            f(bad)


def test_runtime_spec_gets_limits_and_shm_size(tmp_path: Path) -> None:
    spec = runtime.build_spec(runtime.RunSpec(rootfs=tmp_path, args=["true"], env=[],
                                              ulimits=[("RLIMIT_NOFILE", 10, 20),
                                                       ("RLIMIT_NPROC", 5, 6)],
                                              shm_size=1 << 27))
    rl = {r["type"]: (r["soft"], r["hard"]) for r in spec["process"]["rlimits"]}
    assert rl == {"RLIMIT_NOFILE": (10, 20), "RLIMIT_NPROC": (5, 6)}
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert f"size={1 << 27}" in shm["options"] and "size=65536k" not in shm["options"]


def _read(d: Path) -> dict[str, str]:
    return {n: (d / n).read_text() for n in ("hosts", "nofile", "core", "shm")}


def test_run_steps_see_the_flags_and_the_cache_key_has_them(busybox: Pybuild,
                                                            tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    out = tmp_path / "out"
    busybox("build", *FLAGS, "-o", str(out), str(ctx))
    got = _read(out)
    assert "10.1.2.3\tdb.internal\n" in got["hosts"] and "fd00::1\tv6.internal\n" in got["hosts"]
    assert got["nofile"] == "1024\n2048\n" and got["core"] == "0\n"
    assert got["shm"] == f"{128 * 1024}\n"
    again = busybox("build", *FLAGS, "-o", str(out), str(ctx))
    assert "steps:  0 run" in again.stderr
    other = busybox("build", *FLAGS[:-1], "64m", "-o", str(tmp_path / "o2"), str(ctx))
    assert "steps:  0 run" not in other.stderr
    assert (tmp_path / "o2" / "shm").read_text() == f"{64 * 1024}\n"
    bad = busybox("build", "--ulimit", "bogus=1", str(ctx), check=False)
    assert bad.returncode == 1 and "invalid ulimit type: bogus" in bad.stderr


@pytest.fixture(scope="module")
def docker() -> Iterator:
    with docker_engine() as d:
        yield d


def test_same_as_docker_build(docker, busybox: Pybuild, tmp_path: Path) -> None:
    saved = tmp_path / "bb.tar"
    busybox("save", "-o", str(saved), "busybox")
    docker("load", "-i", str(saved))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    theirs = tmp_path / "docker"
    proc = subprocess.run(["/usr/bin/docker", "-H", docker.host, "build", "--network=host",
                           *FLAGS, "-o", f"type=local,dest={theirs}", str(ctx)],
                          env=dict(os.environ, DOCKER_BUILDKIT="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours = tmp_path / "ours"
    busybox("build", *FLAGS, "-o", str(ours), str(ctx))
    mine, docker_out = _read(ours), _read(theirs)
    assert mine["hosts"] == docker_out["hosts"]
    # Docker 20.10's BuildKit applies --add-host but ignores --ulimit and --shm-size (BuildKit
    # gained them later); its classic builder applies both: compare what its RUN step saw.
    (ctx / "Dockerfile.classic").write_text(DOCKERFILE.split("FROM scratch")[0])
    proc = subprocess.run(["/usr/bin/docker", "-H", docker.host, "build", "--network=host",
                           *FLAGS, "-t", "classic:1", "-f", str(ctx / "Dockerfile.classic"),
                           str(ctx)], env=dict(os.environ, DOCKER_BUILDKIT="0"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("nofile", "core", "shm"):
        seen = docker("run", "--rm", "--network=host", "classic:1", "cat", f"/o/{name}").stdout
        assert mine[name] == seen, name
