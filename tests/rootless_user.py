"""A real unprivileged user with subuid/subgid ranges that can run this worktree's
pybuild: made by useradd + usermod, removed afterwards. Used by tests/test_rootless.py and
bench/rootless.py (run as root)."""

from __future__ import annotations

import fcntl
import importlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH = "1700000000"
DEPS = ["certifi", "charset_normalizer", "idna", "isal", "markdown_it", "mdurl", "pygments",
        "requests", "rich", "urllib3", "zstandard"]


@dataclass
class User:
    name: str
    uid: int
    home: Path
    runtime_dir: Path
    code: Path
    python: str

    def env(self, **extra: str) -> list[str]:
        base = {"HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.runtime_dir),
                "PYTHONPATH": str(self.code), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "SOURCE_DATE_EPOCH": EPOCH, "LANG": "C.UTF-8"}
        base.update(extra)
        return [f"{k}={v}" for k, v in base.items()]

    def run(self, argv: list[str], *, timeout: int = 300, cwd: str = "/",
            **extra: str) -> subprocess.CompletedProcess[str]:
        """argv as the user, with a clean environment (HOME, XDG_RUNTIME_DIR, PYTHONPATH)."""
        return subprocess.run(["runuser", "-u", self.name, "--", "env", "-i",
                               *self.env(**extra), *argv], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)

    def pybuild(self, *args: str, check: bool = True, timeout: int = 300,
                **extra: str) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", self.name, "--", "env", "-i", *self.env(**extra),
               self.python, "-m", "pybuild", *args]
        res = subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({res.returncode}):\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res


def _system_python() -> str | None:
    """A python3 the new user can execute, with this interpreter's ABI (for isal/zstandard)."""
    for p in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(p):
            continue
        ver = subprocess.run([p, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
        if ver == str(tuple(sys.version_info[:2])):
            return p
    return None


def missing() -> str | None:
    """Why a rootless user cannot be made here, or None."""
    if os.geteuid() != 0:
        return "creating a test user needs root"
    for tool in ("useradd", "usermod", "userdel", "runuser", "newuidmap", "newgidmap", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if Path("/proc/sys/user/max_user_namespaces").read_text().strip() == "0":
        return "user namespaces are disabled on this machine"
    if _system_python() is None:
        return "no system python3 of this interpreter's version for the test user"
    return None


def worker_slot() -> int:
    """0 for a plain pytest run, N+1 for pytest-xdist's worker gwN: a user name and a subid
    range of its own for each worker (two workers never share, or userdel, one user)."""
    w = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(w[2:]) + 1 if w.startswith("gw") and w[2:].isdigit() else 0


DEVICES = ("/dev/net/tun", "/dev/fuse")
_DEVICE_SETUP = Path("/tmp/pybuild-test-devices.setup.lock")  # held while changing modes
_DEVICE_USERS = Path("/tmp/pybuild-test-devices.users.lock")  # shared by every user session
_DEVICE_MODES = Path("/tmp/pybuild-test-devices.modes")


def _lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextmanager
def user_devices() -> Iterator[None]:
    """/dev/net/tun and /dev/fuse mode 0666 while any test session needs them, as Debian's
    udev rules make them (slirp4netns and fuse-overlayfs of a rootless user open them);
    this machine has no udev and leaves them 0600. The first session records the modes, the
    last one (which alone gets the users' lock exclusively) puts them back."""
    setup, users = _lock(_DEVICE_SETUP), _lock(_DEVICE_USERS)
    try:
        fcntl.flock(setup, fcntl.LOCK_EX)
        fcntl.flock(users, fcntl.LOCK_SH)
        if not _DEVICE_MODES.exists():
            modes = {d: os.stat(d).st_mode & 0o7777 for d in DEVICES if os.path.exists(d)}
            _DEVICE_MODES.write_text("".join(f"{d} {m:o}\n" for d, m in modes.items()))
        for d in DEVICES:
            if os.path.exists(d):
                os.chmod(d, 0o666)
        fcntl.flock(setup, fcntl.LOCK_UN)
        yield
    finally:
        fcntl.flock(setup, fcntl.LOCK_EX)
        fcntl.flock(users, fcntl.LOCK_UN)
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another session still uses them: it restores them
        else:
            if _DEVICE_MODES.exists():
                for line in _DEVICE_MODES.read_text().splitlines():
                    dev, mode = line.split()
                    os.chmod(dev, int(mode, 8))
                _DEVICE_MODES.unlink()
        os.close(users)
        os.close(setup)


@contextmanager
def rootless_user(name: str, subids: str) -> Iterator[User]:
    """useradd `name` with only the subuid/subgid range `subids` (START-END); removed after."""
    python = _system_python()
    assert python is not None
    # Not below pytest's own temp root (0700, and pruned by other pytest sessions).
    base = Path(tempfile.mkdtemp(prefix="pybuild-rootless-", dir="/tmp"))
    base.chmod(0o755)
    subprocess.run(["userdel", "-r", name], capture_output=True)
    home = base / "home"
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-K", "SUB_UID_COUNT=0",
                    "-K", "SUB_GID_COUNT=0", name], check=True)  # only the range given below
    try:
        subprocess.run(["usermod", "--add-subuids", subids, "--add-subgids", subids, name],
                       check=True)
        pw = pwd.getpwnam(name)
        home.mkdir()
        os.chown(home, pw.pw_uid, pw.pw_gid)
        run_dir = base / "run"
        run_dir.mkdir(mode=0o700)
        os.chown(run_dir, pw.pw_uid, pw.pw_gid)
        code = base / "code"
        code.mkdir()
        shutil.copytree(ROOT / "pybuild", code / "pybuild",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for dep in DEPS:
            mod = importlib.import_module(dep)
            assert mod.__file__ is not None
            shutil.copytree(Path(mod.__file__).parent, code / dep,
                            ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "o+rX", str(code)], check=True)
        yield User(name, pw.pw_uid, home, run_dir, code, python)
    finally:
        state = base / "run" / "pybuild" / "pause.pid"
        if state.exists():  # the namespace holder this session started
            try:
                os.kill(int(state.read_text().split()[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["userdel", name], capture_output=True)
        for line_file in ("/etc/subuid", "/etc/subgid"):
            text = Path(line_file).read_text()
            kept = [ln for ln in text.splitlines() if not ln.startswith(f"{name}:")]
            Path(line_file).write_text("".join(ln + "\n" for ln in kept))
        _remove_as_user_tree(base)


def _remove_as_user_tree(base: Path) -> None:
    """The user's store holds subuid-owned, read-only files: root removes it all."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(base)], capture_output=True)


