"""Private daemons for the benchmarks: a Docker engine and a local distribution registry.

tests/engines.py does the same for the test suite but imports pytest at module level, so
this is the small stdlib-only version. Every path lives under a temp dir; nothing touches
a system daemon.
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
from collections.abc import Callable, Iterator
from pathlib import Path

# The Debian client: the newer `docker` first on PATH wants buildx for `docker build`.
DOCKER_CLIENT = Path("/usr/bin/docker")
DOCKERD = Path("/usr/sbin/dockerd")
CONTAINERD = Path("/usr/bin/containerd")
REGISTRY = Path("/usr/bin/docker-registry")


class Unavailable(Exception):
    """A tool or daemon cannot run here; the benchmark skips it and says why."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(check: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path,
              timeout: float) -> None:
    """Poll `check` until it holds; raise Unavailable with the log tail if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise Unavailable(f"{what} did not start: {tail.strip()}")


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process does not leave in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def unmount_under(base: Path) -> None:
    """Lazily unmount whatever a builder left mounted under `base`, deepest first.

    dockerd and containers/storage keep mounts (overlay merged dirs, a private bind of the
    storage home) that would make rmtree fail or leak.
    """
    prefix = str(base) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    for point in sorted((p for p in points if p.startswith(prefix) or p == str(base)),
                        key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def remove_tree(path: Path) -> None:
    """Unmount, then delete a benchmark directory."""
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def docker_engine() -> Iterator[str]:
    """Yield a Docker host address: $DOCKER_HOST if set, else a private containerd + dockerd.

    The private engine has no bridge and no iptables rules (builds use --network=host),
    exactly as tests/engines.py starts it.
    """
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    if os.geteuid() != 0:
        raise Unavailable("a private Docker engine needs root")
    for tool in (DOCKER_CLIENT, DOCKERD, CONTAINERD):
        if not tool.exists():
            raise Unavailable(f"{tool} not installed (apt-get install docker.io containerd)")
    # Short base path: unix socket paths are limited to 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="pbbd-", dir="/tmp"))
    ctr_sock, ctr_log, ctr_config = base / "ctr.sock", base / "ctr.log", base / "ctr.toml"
    ctr_config.write_text("version = 2\n")  # keeps /etc/containerd/config.toml out
    docker_sock, docker_log, daemon_json = base / "d.sock", base / "dockerd.log", base / "d.json"
    daemon_json.write_text(json.dumps({}))
    procs: list[subprocess.Popen] = []
    try:
        with open(ctr_log, "wb") as log:
            procs.append(subprocess.Popen(
                [str(CONTAINERD), "--config", str(ctr_config), "--address", str(ctr_sock),
                 "--root", str(base / "ctr-root"), "--state", str(base / "ctr-state"),
                 "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for(ctr_sock.exists, procs[-1], "containerd", ctr_log, 30)
        with open(docker_log, "wb") as log:
            procs.append(subprocess.Popen(
                [str(DOCKERD), "--containerd", str(ctr_sock), "--config-file", str(daemon_json),
                 "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
                 "--pidfile", str(base / "docker.pid"), "-H", f"unix://{docker_sock}",
                 "--bridge=none", "--iptables=false", "--ip6tables=false"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        host = f"unix://{docker_sock}"

        def ready() -> bool:
            return docker_sock.exists() and subprocess.run(
                [str(DOCKER_CLIENT), "-H", host, "version"], capture_output=True,
                timeout=10).returncode == 0

        _wait_for(ready, procs[-1], "dockerd", docker_log, 60)
        yield host
    finally:
        for proc in reversed(procs):
            stop(proc)
        remove_tree(base)


@contextlib.contextmanager
def registry_server() -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:<free port>, empty storage; yields HOST:PORT."""
    if not REGISTRY.exists():
        raise Unavailable(f"{REGISTRY} not installed (apt-get install docker-registry)")
    base = Path(tempfile.mkdtemp(prefix="pbbr-"))
    addr = f"127.0.0.1:{free_port()}"
    config = base / "config.yml"
    # JSON is valid YAML: no YAML library needed.
    config.write_text(json.dumps({
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(base / "data")}},
        "http": {"addr": addr},
    }))
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
        _wait_for(ready, proc, "docker-registry", log_path, 30)
        yield addr
    finally:
        stop(proc)
        shutil.rmtree(base, ignore_errors=True)
