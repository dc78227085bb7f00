"""Rootless container networking: slirp4netns, as rootless podman's default.

A rootless container gets a network namespace of its own (`_netns`, owned by the user's
user namespace) with a tap device that slirp4netns, running in the host's namespace,
turns into ordinary sockets of this user: user-mode NAT, no root, no bridge, no
iptables. Published ports are slirp4netns "host forwards" (`add_hostfwd` on its API
socket): slirp4netns binds HOST_IP:HOST_PORT in the host's namespace and connects each
accepted connection to the container's address.

slirp4netns runs with `--disable-host-loopback` (the container cannot reach services
bound to the host's 127.0.0.1 through the gateway 10.0.2.2; the forwards from the host's
loopback into the container are unaffected), `--enable-sandbox` and `--enable-seccomp`
(its own mount namespace with only /etc and /run, and a syscall filter), as podman does.
Its built-in DNS forwarder (10.0.2.3) is the container's nameserver unless --dns is given.

Why slirp4netns and not pasta: docs/dependencies.md (measured on this machine).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from pybuild.errors import PybuildError
from pybuild.liveness import process_start
from pybuild.network._ports import PortMapping

NETWORK = "slirp4netns"
ADDRESS = "10.0.2.100"  # slirp4netns --configure: network address + 100
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
PREFIX_LEN = 24
MTU = 65520  # podman's choice: fewer, bigger packets through the user-mode stack
TUN = "/dev/net/tun"
_READY_TIMEOUT = 10.0


def available() -> str:
    """Why rootless container networking cannot work here, or "" when it can."""
    if shutil.which("slirp4netns") is None:
        return ("slirp4netns not found: install the slirp4netns package (rootless "
                "containers need it for their network), or use --network host or none")
    if not os.access(TUN, os.R_OK | os.W_OK):
        return (f"{TUN} is not readable and writable by this user (slirp4netns needs it "
                "for a rootless container's network; Debian's udev makes it mode 0666): "
                "use --network host or none")
    return ""


def _paths(netns: Path) -> tuple[Path, Path]:
    return netns.with_name(netns.name + ".sock"), netns.with_name(netns.name + ".log")


def start(netns: Path, ports: list[PortMapping]) -> tuple[str, list[PortMapping]]:
    """slirp4netns for the namespace at `netns`, then one host forward per port.

    Returns the helper's identity ("PID STARTTIME", for `stop`) and the ports with their
    real host ports. On any failure nothing keeps running.
    """
    sock, log = _paths(netns)
    sock.unlink(missing_ok=True)
    ready_r, ready_w = os.pipe()
    # An ignored signal stays ignored across exec: the container monitor ignores SIGTERM
    # and SIGHUP, which `stop` sends the helper. A handler (any) is reset by exec instead.
    saved = {s: signal.signal(s, _noop) for s in _RESET
             if signal.getsignal(s) == signal.SIG_IGN}
    try:
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                ["slirp4netns", "--configure", f"--mtu={MTU}", "--disable-host-loopback",
                 "--enable-sandbox", "--enable-seccomp", "--api-socket", str(sock),
                 "--ready-fd", str(ready_w), "--netns-type=path", str(netns), "tap0"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, pass_fds=(ready_w,),
                start_new_session=True, cwd="/")
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        saved = {}
        os.close(ready_w)
        ready_w = -1
        helper = f"{proc.pid} {process_start(proc.pid)}"
        try:
            got, _, _ = select.select([ready_r], [], [], _READY_TIMEOUT)
            if not got or os.read(ready_r, 1) != b"1":
                raise PybuildError("slirp4netns failed to start: " + _last_line(log))
            fixed = [_forward(sock, m) for m in ports]
        except BaseException:
            proc.kill()
            proc.wait()
            for p in (sock, log):
                p.unlink(missing_ok=True)
            raise
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    return helper, fixed


_RESET = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _noop(_signum: int, _frame: object) -> None:
    pass


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    return lines[-1] if lines else "no output"


def _request(sock: Path, request: dict[str, object]) -> dict[str, object]:
    """One API call: slirp4netns reads until our SHUT_WR, answers, closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(_READY_TIMEOUT)
        s.connect(str(sock))
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    reply = json.loads(data or b"{}")
    if not isinstance(reply, dict):
        raise PybuildError(f"slirp4netns: unexpected reply {data[:200]!r}")
    return reply


def _probe(m: PortMapping, port: int) -> int:
    """Bind HOST_IP:port (0: any) ourselves and let go: docker's message for a port in
    use, and a free port where none was asked. slirp4netns binds it right after."""
    addr = m.host_ip or "0.0.0.0"
    kind = socket.SOCK_STREAM if m.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:  # as slirp4netns's own bind: TIME_WAIT is no owner
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as e:
            if e.errno == 98:  # EADDRINUSE
                raise PybuildError(f"Bind for {addr}:{port} failed: port is already "
                                   "allocated") from None
            raise PybuildError(f"cannot publish {addr}:{port}/{m.protocol}: {e.strerror}") \
                from None
        return int(s.getsockname()[1])


def _forward(sock: Path, m: PortMapping) -> PortMapping:
    tries = 1 if m.host_port else 3  # a free port picked by us may be taken meanwhile
    for attempt in range(tries):
        port = _probe(m, m.host_port)
        reply = _request(sock, {"execute": "add_hostfwd", "arguments": {
            "proto": m.protocol, "host_addr": m.host_ip or "0.0.0.0", "host_port": port,
            "guest_addr": ADDRESS, "guest_port": m.container_port}})
        if "return" in reply:
            return PortMapping(m.container_port, m.protocol, m.host_ip, port)
        if attempt == tries - 1:
            _probe(m, port)  # taken since our probe (another container starting): say so
            err = reply.get("error")
            desc = err.get("desc") if isinstance(err, dict) else err
            raise PybuildError(f"cannot publish {m.host_ip or '0.0.0.0'}:{port}/{m.protocol}: "
                               f"slirp4netns: {desc}")
    raise AssertionError("unreachable")


def forwards(netns: Path) -> list[dict[str, object]]:
    """slirp4netns's own list of host forwards (list_hostfwd)."""
    sock, _ = _paths(netns)
    entries = _request(sock, {"execute": "list_hostfwd"}).get("return")
    found = entries.get("entries") if isinstance(entries, dict) else None
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def stop(helper: str, netns: Path) -> None:
    """End the helper recorded by `start` (if it is still that process) and its files."""
    pid_s, _, started = helper.partition(" ")
    if pid_s.isdigit() and process_start(int(pid_s)) == started:
        pid = int(pid_s)
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 2
            while process_start(pid) == started and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.02)
            if process_start(pid) == started:
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        except ProcessLookupError:
            pass
    for p in _paths(netns):
        p.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    """Collect the helper if it is our child (the owner stopping its own container)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
