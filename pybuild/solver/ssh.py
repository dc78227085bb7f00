"""`--ssh default|ID=SOCKET|KEY[,...]` for `RUN --mount=type=ssh`.

A step never sees the host's agent socket: for each ssh mount pybuild listens on a fresh
socket (owned by the mount's uid/gid, with its mode, in a private temp dir bind-mounted at
the target) and forwards every connection to the agent, as BuildKit's session proxy does.
Private key files are loaded into a real `ssh-agent` that pybuild starts for the build and
stops after it. The agent's content is not part of the cache key (BuildKit's rule); the
mount's id and target are.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pybuild import rootless
from pybuild.errors import DockerfileError, PybuildError
from pybuild.liveness import remove_tree

DEFAULT_TARGET = "/run/buildkit/ssh_agent.{}"
RUN_DIR = rootless.state_dir() / "ssh"


@dataclass
class SSHSource:
    """One --ssh value: an id and the agent sockets or key files behind it."""

    id: str
    paths: list[str] = field(default_factory=list)


def parse_ssh_flag(value: str) -> SSHSource:
    """`default`, `ID`, `ID=PATH[,PATH...]`; no PATH means $SSH_AUTH_SOCK (docker's rule)."""
    ident, sep, rest = value.partition("=")
    ident = ident.strip()
    if not ident:
        raise PybuildError(f"invalid --ssh {value!r}: expected default or ID[=SOCKET|KEY]")
    paths = [p for p in rest.split(",") if p] if sep else []
    if not paths:
        sock = os.environ.get("SSH_AUTH_SOCK")
        if not sock:
            raise PybuildError(f"invalid --ssh {value!r}: SSH_AUTH_SOCK is not set "
                               f"(start ssh-agent, or give {ident}=SOCKET or {ident}=KEYFILE)")
        paths = [sock]
    for p in paths:
        if not os.path.exists(p):
            raise PybuildError(f"invalid --ssh {value!r}: {p} does not exist")
    return SSHSource(ident, paths)


class Agents:
    """The agent socket of each --ssh id; key files get an ssh-agent of their own."""

    def __init__(self, sources: dict[str, SSHSource]) -> None:
        self.sources = sources
        self._sockets: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        self._stack.close()

    def socket_for(self, ident: str) -> str | None:
        src = self.sources.get(ident)
        if src is None:
            return None
        if ident not in self._sockets:
            socks = [p for p in src.paths if stat.S_ISSOCK(os.stat(p).st_mode)]
            keys = [p for p in src.paths if p not in socks]
            if socks and not keys and len(socks) == 1:
                self._sockets[ident] = socks[0]
            elif socks:
                raise PybuildError(f"--ssh {ident}: give one agent socket or key files, not both")
            else:
                self._sockets[ident] = self._agent_with(ident, keys)
        return self._sockets[ident]

    def _agent_with(self, ident: str, keys: list[str]) -> str:
        if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
            raise PybuildError(f"--ssh {ident}: key files need ssh-agent and ssh-add "
                               f"(apt-get install openssh-client)")
        d = Path(tempfile.mkdtemp(prefix="pybuild-agent-"))
        self._stack.callback(remove_tree, d)
        sock = str(d / "agent.sock")
        agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        self._stack.callback(_stop, agent)
        if not wait_listening(sock, agent):
            raise PybuildError(f"--ssh {ident}: ssh-agent did not start")
        env = dict(os.environ, SSH_AUTH_SOCK=sock, SSH_ASKPASS_REQUIRE="never", DISPLAY="")
        for key in keys:
            proc = subprocess.run(["ssh-add", "-q", key], env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                detail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                raise PybuildError(f"--ssh {ident}: cannot load {key}: {detail}")
        return sock


def wait_listening(path: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    """Whether the process `proc` accepts connections on the unix socket `path` in time
    (the socket file exists a moment before the agent listens on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                return True
            except OSError:
                time.sleep(0.02)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Proxy:
    """A unix socket forwarding each connection to `upstream`, in daemon threads."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.upstream = upstream
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self._closed = False
        threading.Thread(target=self._accept, name="pybuild-ssh", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.upstream)
        except OSError:
            conn.close()
            return

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    b.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(up, conn), daemon=True)
        t.start()
        pump(conn, up)
        t.join(30)
        conn.close()
        up.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@contextlib.contextmanager
def forward(agents: Agents | None, m: Any, target: str | None, index: int,
            line: int) -> Iterator[tuple[str, str] | None]:
    """For one ssh mount: (host socket to bind, target in the container), or None when the
    id is not given and the mount is not required."""
    ident = getattr(m, "id", None) or "default"
    upstream = agents.socket_for(ident) if agents else None
    if upstream is None:
        if getattr(m, "required", False):
            raise DockerfileError(f"no SSH key {ident!r} forwarded from the client "
                                  f"(pass --ssh {ident}=SOCKET|KEY)", line)
        yield None
        return
    RUN_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    d = Path(tempfile.mkdtemp(dir=RUN_DIR))
    path = d / "agent.sock"
    proxy = _Proxy(path, upstream)
    try:
        os.chown(path, int(getattr(m, "uid", None) or 0), int(getattr(m, "gid", None) or 0))
        mode = getattr(m, "mode", None)
        os.chmod(path, 0o600 if mode is None else (int(mode, 8) if isinstance(mode, str) else mode))
        yield str(path), target or DEFAULT_TARGET.format(index)
    finally:
        proxy.close()
        remove_tree(d)
