"""`--ssh` for `RUN --mount=type=ssh`: a real ssh-agent reached through pybuild's proxy
socket (never the host's socket itself), with key files loaded into an agent pybuild runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Pybuild
from pybuild.errors import PybuildError
from pybuild.solver.ssh import parse_ssh_flag, wait_listening


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install openssh-client)")
    return path


def test_ssh_flag_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "s"
    sock.write_text("")
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    assert parse_ssh_flag("default").paths == [str(sock)]
    assert parse_ssh_flag(f"gh={sock}").id == "gh"
    monkeypatch.delenv("SSH_AUTH_SOCK")
    with pytest.raises(PybuildError, match="SSH_AUTH_SOCK is not set"):
        parse_ssh_flag("default")
    with pytest.raises(PybuildError, match="does not exist"):
        parse_ssh_flag(f"x={tmp_path}/nope")


def _ssh_add_tree(dest: Path) -> None:
    """/usr/bin/ssh-add and the shared libraries it needs, at their host paths, under dest."""
    _tool_tree(dest, ["ssh-add"], {})


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """A real ssh-agent holding one ed25519 key: (socket, key file, fingerprint)."""
    _need("ssh-agent")
    key = tmp_path / "id_ed25519"
    subprocess.run([_need("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "pybuild-test",
                    "-f", str(key)], check=True)
    fp = subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    sock = str(Path("/tmp") / f"pb-agent-{os.getpid()}-{tmp_path.name[-8:]}.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_listening(sock, proc)
        subprocess.run(["ssh-add", "-q", str(key)], env=dict(os.environ, SSH_AUTH_SOCK=sock),
                       check=True, capture_output=True)
        yield sock, key, fp
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        Path(sock).unlink(missing_ok=True)


DOCKERFILE = """\
FROM busybox
COPY tools/ /
RUN mkdir /o
RUN --mount=type=ssh sh -c 'echo "$SSH_AUTH_SOCK" > /o/sock; ssh-add -l > /o/keys; \\
    ls -l "$SSH_AUTH_SOCK" | cut -c1-10 > /o/mode'
RUN --mount=type=ssh,id=other,target=/tmp/agent.sock,uid=1000,mode=0600 \\
    su app -s /bin/sh -c 'SSH_AUTH_SOCK=/tmp/agent.sock ssh-add -l > /tmp/app-keys' && \\
    cp /tmp/app-keys /o/app-keys
FROM scratch
COPY --from=0 /o/ /
"""


def test_agent_and_key_files_reach_run_steps(busybox: Pybuild, tmp_path: Path,
                                             agent: tuple[str, Path, str]) -> None:
    sock, key, fp = agent
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    _ssh_add_tree(ctx / "tools")
    out = tmp_path / "out"
    env = {"SSH_AUTH_SOCK": sock}
    busybox("build", "--ssh", "default", "--ssh", f"other={key}", "-o", str(out), str(ctx),
            env=env)
    assert (out / "sock").read_text() == "/run/buildkit/ssh_agent.0\n"
    assert fp in (out / "keys").read_text()           # through the agent's socket
    assert fp in (out / "app-keys").read_text()       # through an agent pybuild started
    assert (out / "mode").read_text().startswith("srw-------")
    # the proxy sockets are gone after the build; the host agent is untouched
    assert not list(Path("/run/pybuild/ssh").glob("*/agent.sock"))
    assert subprocess.run(["ssh-add", "-l"], env=dict(os.environ, SSH_AUTH_SOCK=sock),
                          capture_output=True).returncode == 0
    # not required and not given: the step runs without an agent
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=ssh test -z \"$SSH_AUTH_SOCK\"\n")
    busybox("build", str(ctx))
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=ssh,required=true true\n")
    proc = busybox("build", str(ctx), check=False)
    assert proc.returncode == 1 and "no SSH key 'default' forwarded" in proc.stderr


def _tool_tree(dest: Path, binaries: list[str], also: dict[str, str]) -> None:
    """Host binaries with the shared libraries they load, at their host paths under dest."""
    for b in binaries:
        binary = Path(_need(b)).resolve()
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                             check=True).stdout
        files = [binary]
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/"):
                files.append(Path(path))
        for f in files:
            target = dest / str(f).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f.resolve(), target)
    for src, dst in also.items():
        target = dest / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(src).resolve(), target)


@pytest.fixture
def sshd(tmp_path: Path, agent: tuple[str, Path, str]) -> Iterator[int]:
    """A real sshd on a loopback port, letting the agent's key in as root."""
    binary = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if binary is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("sshd needs root")
    from engines import free_port

    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")],
                   check=True)
    (d / "authorized_keys").write_text(Path(str(agent[1]) + ".pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation dir
    port = free_port()
    proc = subprocess.Popen([binary, "-D", "-e", "-f", "/dev/null", "-p", str(port),
                             "-o", "ListenAddress=127.0.0.1", "-o", f"HostKey={d / 'host_key'}",
                             "-o", f"AuthorizedKeysFile={d / 'authorized_keys'}",
                             "-o", "StrictModes=no", "-o", "UsePAM=no",
                             "-o", "PasswordAuthentication=no", "-o", f"PidFile={d / 'pid'}",
                             "-o", "PermitRootLogin=prohibit-password"],
                            stdout=subprocess.DEVNULL, stderr=open(d / "log", "wb"))
    try:
        import socket
        import time

        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_git_clone_over_ssh_through_the_forwarded_agent(busybox: Pybuild, tmp_path: Path,
                                                       agent: tuple[str, Path, str],
                                                       sshd: int) -> None:
    """The real use: a private repository cloned in a RUN step with the user's agent."""
    sock = agent[0]
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e", HOME=str(tmp_path))
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "secret"]):
        if cmd[0] == "add":
            (work / "private.txt").write_text("only with the key\n")
        subprocess.run(["git", *cmd], cwd=work, env=env, check=True)
    bare = tmp_path / "private.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], env=env, check=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _tool_tree(ctx / "tools", ["git", "ssh"], {shutil.which("git") or "/usr/bin/git":
                                               "/usr/lib/git-core/git"})
    ssh_cmd = (f"ssh -p {sshd} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
               f"-o BatchMode=yes")
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nCOPY tools/ /\n"
        f"RUN --mount=type=ssh GIT_SSH_COMMAND='{ssh_cmd}' "
        f"git clone -q ssh://root@127.0.0.1:{sshd}{bare} /src\n"
        "FROM scratch\nCOPY --from=0 /src/private.txt /\n")
    out = tmp_path / "out"
    busybox("build", "--ssh", "default", "-o", str(out), str(ctx), env={"SSH_AUTH_SOCK": sock})
    assert (out / "private.txt").read_text() == "only with the key\n"
    # without the agent the same step cannot get in
    proc = busybox("build", "--no-cache", str(ctx), check=False)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
