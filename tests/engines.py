"""Real engines for tests: a private Docker daemon and a local distribution registry.

Cross-checking pybuild against tools nobody here wrote is the point of these helpers, so
they start the real programs (Debian's docker.io, containerd and docker-registry) with
every path under a temp dir, never touching a system daemon. They are plain context
managers; tests/conftest.py wraps them as fixtures. Each raises `pytest.skip` with the
reason when a tool is missing or the engine cannot start here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# The Debian client: the newer `docker` first on PATH wants buildx for `docker build`.
DOCKER_CLIENT = Path("/usr/bin/docker")
DOCKERD = Path("/usr/sbin/dockerd")
CONTAINERD = Path("/usr/bin/containerd")
REGISTRY = Path("/usr/bin/docker-registry")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(check: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path,
              timeout: float = 60.0) -> None:
    """Poll `check` until it holds; fail with the daemon's log tail if it died or hung."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.skip(f"{what} exited with {proc.returncode} at start-up: {tail}")
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    pytest.fail(f"{what} did not become ready in {timeout:.0f}s: {tail}")


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process does not leave in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@dataclass
class Docker:
    """Runs the Debian docker client against one private daemon: `docker("load", "-i", f)`."""

    host: str
    data_root: Path

    def __call__(self, *args: str, input: bytes | None = None, check: bool = True,
                 timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run `docker -H <host> ARGS...`; text output; raise AssertionError on failure."""
        proc = subprocess.run([str(DOCKER_CLIENT), "-H", self.host, *args], input=input,
                              capture_output=True, timeout=timeout)
        result = subprocess.CompletedProcess(proc.args, proc.returncode,
                                             proc.stdout.decode(errors="replace"),
                                             proc.stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


@contextlib.contextmanager
def docker_engine(extra_args: Sequence[str] = ()) -> Iterator[Docker]:
    """A private containerd + dockerd (no bridge, no iptables); yields a `Docker` caller.

    Containers need `--network=host` (there is no bridge). Everything lives under one
    temp dir, removed after both daemons stopped.
    """
    if os.geteuid() != 0:
        pytest.skip("a Docker engine needs root")
    for tool in (DOCKER_CLIENT, DOCKERD, CONTAINERD):
        if not tool.exists():
            pytest.skip(f"{tool} not installed (apt-get install docker.io containerd)")
    # Short base path: unix socket paths are limited to 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="pbd-", dir="/tmp"))
    ctr_sock = base / "containerd.sock"
    ctr_log = base / "containerd.log"
    ctr_config = base / "containerd.toml"
    # An empty config keeps /etc/containerd/config.toml (if any) out of the picture.
    ctr_config.write_text("version = 2\n")
    docker_sock = base / "docker.sock"
    docker_log = base / "dockerd.log"
    daemon_json = base / "daemon.json"
    daemon_json.write_text(json.dumps({}))
    procs: list[subprocess.Popen] = []
    try:
        with open(ctr_log, "wb") as log:
            ctr = subprocess.Popen(
                [str(CONTAINERD), "--config", str(ctr_config), "--address", str(ctr_sock),
                 "--root", str(base / "containerd-root"), "--state", str(base / "containerd-state"),
                 "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(ctr)
        _wait_for(ctr_sock.exists, ctr, "containerd", ctr_log, timeout=30)
        with open(docker_log, "wb") as log:
            dockerd = subprocess.Popen(
                [str(DOCKERD), "--containerd", str(ctr_sock), "--config-file", str(daemon_json),
                 "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
                 "--pidfile", str(base / "docker.pid"), "-H", f"unix://{docker_sock}",
                 "--bridge=none", "--iptables=false", "--ip6tables=false", *extra_args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(dockerd)
        engine = Docker(host=f"unix://{docker_sock}", data_root=base / "data")

        def ready() -> bool:
            if not docker_sock.exists():
                return False
            return engine("version", check=False, timeout=10).returncode == 0

        _wait_for(ready, dockerd, "dockerd", docker_log, timeout=60)
        yield engine
    finally:
        for proc in reversed(procs):
            _stop(proc)
        _unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _unmount_under(base: Path) -> None:
    """Lazily unmount anything a daemon left mounted under `base` before removing it."""
    prefix = str(base) + "/"
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@contextlib.contextmanager
def registry_server(delete: bool = True) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:<free port>, storage in a temp dir.

    Yields the address ("127.0.0.1:PORT"), plain HTTP. `delete` enables the manifest
    DELETE endpoint.
    """
    if not REGISTRY.exists():
        pytest.skip(f"{REGISTRY} not installed (apt-get install docker-registry)")
    base = Path(tempfile.mkdtemp(prefix="pbreg-"))
    port = free_port()
    addr = f"127.0.0.1:{port}"
    config = base / "config.yml"
    # JSON is valid YAML; no YAML library needed.
    config.write_text(json.dumps({
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(base / "data")},
                    "delete": {"enabled": delete}},
        "http": {"addr": addr},
    }, indent=2))
    log_path = base / "registry.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(REGISTRY), "serve", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://{addr}/v2/", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        _wait_for(ready, proc, "docker-registry", log_path, timeout=30)
        yield addr
    finally:
        _stop(proc)
        shutil.rmtree(base, ignore_errors=True)
