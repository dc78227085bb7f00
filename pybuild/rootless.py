"""Rootless mode: an ordinary user builds and runs inside a user + mount namespace.

As rootlesskit and `podman unshare` do, pybuild started by a non-root user re-executes
itself in a new user namespace where uid/gid 0 is the user and 1..N are the user's
/etc/subuid and /etc/subgid range (mapped by newuidmap/newgidmap from Debian's uidmap),
plus a private mount namespace. Inside it, every other module runs unchanged "as root":
files of other owners are real uids, overlay mounts use the `userxattr` option (opaque
directories are `user.overlay.opaque`; whiteouts are the same 0/0 character devices, which
the kernel lets a user namespace create), and runc runs in rootless mode without cgroups.
The network namespace stays the host's (as BuildKit rootless does); `--network none`
still gets a fresh one.

Paths: the store defaults to `$XDG_DATA_HOME/pybuild` (`~/.local/share/pybuild`) and the
runtime state to `$XDG_RUNTIME_DIR/pybuild` (or `/tmp/pybuild-$UID`, mode 0700).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pybuild.errors import PybuildError

ENV_INSIDE = "_PYBUILD_USERNS"
"""Set in the re-executed process: its value is the real uid outside the namespace."""

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


class RootlessError(PybuildError):
    """The machine cannot run pybuild rootless: the message names the missing piece."""


def inside() -> bool:
    """True in the re-executed process inside the user namespace (the variable alone is
    not enough: in the initial namespace uid_map is the identity map of every uid)."""
    if not os.environ.get(ENV_INSIDE):
        return False
    try:
        first = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return first[:3] != ["0", "0", "4294967295"]


def active() -> bool:
    """True when pybuild runs for a non-root user (before or after the re-exec)."""
    return inside() or os.geteuid() != 0


def real_uid() -> int:
    v = os.environ.get(ENV_INSIDE)
    return int(v) if v and v.isdigit() else os.getuid()


def default_root() -> str:
    """The store: /var/lib/pybuild for root, `$XDG_DATA_HOME/pybuild` for a user."""
    if not active():
        return "/var/lib/pybuild"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "pybuild")


def state_dir() -> Path:
    """Runtime state (bundles, runc state, secrets): /run/pybuild for root."""
    if not active():
        return Path("/run/pybuild")
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isdir(run):
        return Path(run) / "pybuild"
    return Path(f"/tmp/pybuild-{real_uid()}")


def ensure_state_dir() -> Path:
    """Create the state directory 0700, refusing one another user owns (/tmp is shared)."""
    d = state_dir()
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not os.path.isdir(d) or os.path.islink(d) or (st.st_uid != os.geteuid()):
        raise RootlessError(f"{d}: not a directory this user owns (runtime state)")
    os.chmod(d, 0o700)
    return d


@dataclass(frozen=True)
class IdRange:
    start: int
    count: int


def sub_range(path: str, uid: int, name: str) -> IdRange | None:
    """The first range of `name` (or `uid`) in /etc/subuid or /etc/subgid."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (name, str(uid)):
            continue
        if parts[1].isdigit() and parts[2].isdigit() and int(parts[2]) > 0:
            return IdRange(int(parts[1]), int(parts[2]))
    return None


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def problems(subuid: str = "/etc/subuid", subgid: str = "/etc/subgid",
             max_namespaces: str = "/proc/sys/user/max_user_namespaces") -> list[str]:
    """What this machine lacks for rootless mode, each naming the missing piece."""
    out: list[str] = []
    uid, gid = os.getuid(), os.getgid()
    name = _user_name(uid)
    try:
        max_ns = int(Path(max_namespaces).read_text().strip())
    except (OSError, ValueError):
        max_ns = -1
    if max_ns == 0:
        out.append(f"user namespaces are disabled ({max_namespaces} is 0)")
    try:
        if Path("/proc/sys/kernel/unprivileged_userns_clone").read_text().strip() == "0":
            out.append("unprivileged user namespaces are disabled "
                       "(/proc/sys/kernel/unprivileged_userns_clone is 0)")
    except OSError:
        pass
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            out.append(f"{tool} is missing (install Debian's uidmap package)")
    if sub_range(subuid, uid, name) is None:
        out.append(f"no subordinate uid range for user {name} in {subuid} "
                   f"(usermod --add-subuids 100000-165535 {name})")
    if sub_range(subgid, gid, name) is None and sub_range(subgid, uid, name) is None:
        out.append(f"no subordinate gid range for user {name} in {subgid} "
                   f"(usermod --add-subgids 100000-165535 {name})")
    return out


def describe() -> str:
    """One line on the namespace this process runs in (read from /proc/self/uid_map)."""
    try:
        maps = [line.split() for line in Path("/proc/self/uid_map").read_text().splitlines()]
    except OSError:
        maps = []
    shown = ", ".join(f"{m[0]}..{int(m[0]) + int(m[2]) - 1} -> {m[1]}..{int(m[1]) + int(m[2]) - 1}"
                      for m in maps if len(m) == 3)
    return (f"user namespace uid map {shown}; store {default_root()}; "
            f"state {state_dir()}")


_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise RootlessError(f"cannot create a user namespace: {os.strerror(err)}")


def _setns(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, nstype) != 0:
            raise RootlessError(f"cannot join {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def _exec_inside(argv: list[str], uid: int) -> None:
    """Become root of the joined namespace and exec `python -m pybuild argv`."""
    os.setresgid(0, 0, 0)
    os.setgroups([])
    os.setresuid(0, 0, 0)
    env = dict(os.environ)
    env[ENV_INSIDE] = str(uid)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # -P: the working directory (a build context, say) never shadows the package
    os.execve(sys.executable, [sys.executable, "-P", "-m", "pybuild", *argv], env)


def _pause_forever() -> None:
    """The namespace holder (podman's pause process): containers started with `run -d`
    live in this user and mount namespace, so later commands can signal and unmount them."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.chdir("/")
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    while True:
        signal.pause()


def pause_pid() -> int | None:
    """The live pause process of this user's namespace, if any."""
    from pybuild.liveness import process_start

    try:
        pid_s, start = (state_dir() / "pause.pid").read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    return pid if process_start(pid) == start else None


def _create(argv: list[str], uid: int, gid: int, subuid: IdRange, subgid: IdRange,
            lock: int) -> int:
    """A new user + mount namespace with a pause process in it; run argv there.

    `lock` (held) is released once the pause process's pid is on disk."""
    from pybuild.liveness import process_start

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid_r, pid_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: unshare, wait for the maps, become root inside, exec
        try:
            for fd in (ready_r, go_w, pid_r, lock):
                os.close(fd)
            _unshare(CLONE_NEWUSER | CLONE_NEWNS)
            os.write(ready_w, b"1")
            if os.read(go_r, 1) != b"1":
                os._exit(1)
            os.setresgid(0, 0, 0)
            os.setgroups([])
            os.setresuid(0, 0, 0)
            if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
                raise RootlessError("cannot make the mount namespace private: "
                                    + os.strerror(ctypes.get_errno()))
            holder = os.fork()
            if holder == 0:
                os.close(pid_w)
                _pause_forever()
            os.write(pid_w, str(holder).encode())
            os.close(pid_w)
            _exec_inside(argv, uid)
        except BaseException as e:  # noqa: BLE001 - the child must never return into main()
            print(f"error: {e}", file=sys.stderr)
        os._exit(1)
    for fd in (ready_w, go_r, pid_w):
        os.close(fd)
    try:
        if os.read(ready_r, 1) != b"1":
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status) or 1
        for tool, own, rng in (("newuidmap", uid, subuid), ("newgidmap", gid, subgid)):
            res = subprocess.run([tool, str(pid), "0", str(own), "1", "1", str(rng.start),
                                  str(rng.count)], capture_output=True, text=True)
            if res.returncode != 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise RootlessError(f"{tool} failed: {res.stderr.strip() or res.returncode}")
        os.write(go_w, b"1")
        holder_s = b""
        while chunk := os.read(pid_r, 32):
            holder_s += chunk
        if holder_s.isdigit():
            holder = int(holder_s)
            tmp = state_dir() / f".pause.pid.{os.getpid()}"
            tmp.write_text(f"{holder} {process_start(holder)}\n")
            os.replace(tmp, state_dir() / "pause.pid")
    finally:
        for fd in (ready_r, go_w, pid_r, lock):
            os.close(fd)
    return _wait(pid)


def _terminal_group_is_ours() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def _wait(pid: int) -> int:
    def forward(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT and _terminal_group_is_ours():
            return  # Ctrl-C: the terminal sent it to the child as well (same group)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reexec(argv: list[str]) -> int:
    """Run `python -m pybuild argv` inside this user's namespace; its exit status.

    The namespace is made once (with the pause process holding it) and joined after, so
    every command sees the same mounts and can signal the same containers.
    """
    import fcntl

    missing = problems()
    if missing:
        raise RootlessError("rootless mode unavailable: " + "; ".join(missing))
    uid, gid = os.getuid(), os.getgid()
    name = _user_name(uid)
    subuid = sub_range("/etc/subuid", uid, name)
    subgid = sub_range("/etc/subgid", gid, name) or sub_range("/etc/subgid", uid, name)
    assert subuid is not None and subgid is not None
    d = ensure_state_dir()
    lock = os.open(d / "pause.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        holder = pause_pid()
    except BaseException:
        os.close(lock)
        raise
    if holder is None:
        return _create(argv, uid, gid, subuid, subgid, lock)
    os.close(lock)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            _setns(f"/proc/{holder}/ns/user", CLONE_NEWUSER)
            _setns(f"/proc/{holder}/ns/mnt", CLONE_NEWNS)
            _exec_inside(argv, uid)
        except BaseException as e:  # noqa: BLE001 - the child must never return into main()
            print(f"error: {e}", file=sys.stderr)
        os._exit(1)
    return _wait(pid)


# ---------------------------------------------------------------- fuse-overlayfs fallback

ENV_FUSE = "PYBUILD_FUSE_OVERLAYFS"
"""`1`: rootless mounts use fuse-overlayfs even where the kernel would mount overlayfs."""

_fuse_reason: str | None = None  # why this process uses fuse-overlayfs, once decided


def _use_fuse(reason: str) -> None:
    global _fuse_reason
    if _fuse_reason is None:
        _fuse_reason = reason
        print(f"rootless: using fuse-overlayfs: {reason}", file=sys.stderr, flush=True)


def fuse_overlay_wanted() -> bool:
    """True when rootless mounts go through fuse-overlayfs (forced, or after the kernel
    refused one in this process)."""
    if not inside():
        return False
    if _fuse_reason is None and os.environ.get(ENV_FUSE) == "1":
        _use_fuse(f"{ENV_FUSE}=1")
    return _fuse_reason is not None


def fuse_overlay_fallback(errno_: int) -> bool:
    """The kernel refused an unprivileged overlay mount (errno_): fall back to
    fuse-overlayfs from now on, saying so once. False when that is no way out either."""
    import errno

    if not inside() or errno_ not in (errno.EPERM, errno.EINVAL, errno.ENODEV):
        return False
    if shutil.which("fuse-overlayfs") is None:
        raise RootlessError(f"the kernel refused an overlay mount in the user namespace "
                            f"({os.strerror(errno_)}) and fuse-overlayfs is not installed "
                            "(install Debian's fuse-overlayfs package)")
    _use_fuse(f"the kernel refused overlayfs in the user namespace ({os.strerror(errno_)})")
    return True


def fuse_overlay_mount(lowers: list[str], upper: str | None, work: str | None,
                       target: str) -> None:
    """Mount lowers (top first, as overlay's lowerdir) with upper/work at target through
    fuse-overlayfs. Its upper has the kernel's form where a user namespace allows it (0/0
    whiteout devices); opaque directories carry `user.fuseoverlayfs.opaque` plus a
    `.wh..wh..opq` file, which the layer writer reads as the kernel's opaque xattr."""
    opts = "lowerdir=" + ":".join(lowers)
    if upper is not None and work is not None:
        opts += f",upperdir={upper},workdir={work}"
    res = subprocess.run(["fuse-overlayfs", "-o", opts, target], capture_output=True,
                         text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        raise RootlessError(f"fuse-overlayfs mount failed: {lines[-1] if lines else res.returncode}")


FUSE_OPAQUE_XATTR = "user.fuseoverlayfs.opaque"
_KERNEL_OPAQUE_XATTR = "user.overlay.opaque"  # the kernel's, mounted with userxattr
_FUSE_OPAQUE_FILES = (".wh..wh..opq", ".wh..opq")


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, _KERNEL_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def normalize_fuse_upper(upper: Path, lowers: list[Path]) -> None:
    """Give an upper fuse-overlayfs wrote the kernel's form, so its layer is the one a
    kernel overlay (and a root build) gives: same image digest.

    fuse-overlayfs marks every directory it creates opaque (`user.fuseoverlayfs.opaque`,
    a `.wh..wh..opq` file and a `.wh..opq` whiteout in it); the kernel marks one opaque
    only when it replaces something a lower layer has there (a directory created over a
    whiteout). `lowers` are top first; each directory's mtime is kept."""
    stack: list[tuple[str, list[str]]] = [(str(upper), [str(p) for p in lowers])]
    while stack:
        d, below = stack.pop()
        with os.scandir(d) as it:
            subdirs = [e for e in it if e.is_dir(follow_symlinks=False)]
        for e in subdirs:
            at = [os.path.join(b, e.name) for b in below]
            try:
                marked = os.getxattr(e.path, FUSE_OPAQUE_XATTR, follow_symlinks=False) == b"y"
            except OSError:
                marked = False
            if not marked:
                visible: list[str] = []
                for x in at:  # what shows through below this directory, top first
                    if not os.path.isdir(x) or os.path.islink(x):
                        if os.path.lexists(x):
                            break  # a file or whiteout hides everything under it
                        continue
                    visible.append(x)
                    if _opaque(x):
                        break
                stack.append((e.path, visible))
                continue
            st = os.lstat(e.path)
            for junk in _FUSE_OPAQUE_FILES:
                try:
                    os.unlink(os.path.join(e.path, junk))
                except FileNotFoundError:
                    pass
            os.removexattr(e.path, FUSE_OPAQUE_XATTR, follow_symlinks=False)
            if any(os.path.lexists(x) for x in at):
                os.setxattr(e.path, _KERNEL_OPAQUE_XATTR, b"y", follow_symlinks=False)
            os.utime(e.path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            stack.append((e.path, []))  # new or opaque: nothing below shows through
