"""One RUN step (or one container) through an OCI runtime: runc by default, crun accepted.

The solver hands us a mounted rootfs; we write a runtime spec (config.json) into a bundle
directory outside that rootfs, run `runc run` with stdout+stderr on one pipe, stream the
output to the caller and, on every way out (normal exit, exception, Ctrl-C, SIGTERM),
kill and delete the container and remove the bundle. The spec mirrors what BuildKit gives
a RUN (checked against docker 20.10's BuildKit on this machine): see docs/runtime.md.
"""

from __future__ import annotations

from typing import Any

import hashlib
import json
import os
import resource
import secrets
import select
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pybuild import fs, rootless
from pybuild.errors import Cancelled, NeedsRootError, PybuildError
from pybuild.liveness import process_start, remove_tree

STATE_DIR = rootless.state_dir()
"""Everything this module leaves on the host while a container runs (tmpfs: gone at reboot):
/run/pybuild for root, `$XDG_RUNTIME_DIR/pybuild` in rootless mode (rootless.py)."""
BUNDLES_DIR = STATE_DIR / "bundles"
ID_PREFIX = "pybuild-"

# Docker's default capability set (the one BuildKit gives a RUN: CapEff 0xa80425fb).
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
# Every capability by number (linux/capability.h); a privileged step gets those the
# running kernel knows (/proc/sys/kernel/cap_last_cap).
ALL_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
NOFILE_LIMIT = 1048576
DEFAULT_HOSTNAME = "buildkitsandbox"

_READ_SIZE = 65536
_SIGNAL_CHECK_MS = 100
_KILL_TIMEOUT = 10.0
_CLI_TIMEOUT = 30.0


@dataclass
class Mount:
    """One OCI mount, as it goes into config.json."""

    destination: str
    type: str
    source: str
    options: list[str]


@dataclass
class RunSpec:
    """What to run and how; `build_spec` turns it into a runtime spec."""

    rootfs: Path
    args: list[str]
    env: list[str]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    network: str = "host"  # or "none"
    mounts: list[Mount] = field(default_factory=list)  # extra mounts, in order
    hostname: str = DEFAULT_HOSTNAME
    readonly_rootfs: bool = False
    tty: bool = False
    # RUN --security=insecure: every capability, all devices, /sys and cgroups writable,
    # nothing masked (BuildKit's insecure mode, what `docker run --privileged` gives)
    privileged: bool = False
    # docker build --ulimit (OCI rlimit type, soft, hard) and --shm-size (bytes)
    ulimits: list[tuple[str, int, int]] = field(default_factory=list)
    shm_size: int | None = None
    # docker build --add-host (host, ip): lines of /etc/hosts (host_mounts)
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)


def build_spec(spec: RunSpec) -> dict[str, Any]:
    """The OCI runtime spec for `spec`, without a container id: reusable by `runc create`."""
    if not spec.args:
        raise PybuildError("nothing to run: the command is empty")
    if not spec.cwd.startswith("/"):
        raise PybuildError(f"working directory must be absolute, got {spec.cwd!r}")
    check_network(spec.network)
    for m in spec.mounts:
        if not m.destination.startswith("/"):
            raise PybuildError(f"mount destination must be absolute, got {m.destination!r}")
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if spec.network == "none":
        namespaces.append({"type": "network"})  # the runtime brings lo up in it
    user: dict[str, Any] = {"uid": spec.uid, "gid": spec.gid}
    nofile = _nofile_limit()
    if spec.additional_gids:
        user["additionalGids"] = list(spec.additional_gids)
    caps = _kernel_caps() if spec.privileged else list(DEFAULT_CAPS)
    mounts = _default_mounts()
    if spec.privileged:
        for kernel_fs in mounts:
            if kernel_fs["destination"] in ("/sys", "/sys/fs/cgroup"):
                kernel_fs["options"] = [o for o in kernel_fs["options"] if o != "ro"]
    config = _with_limits(spec, {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.tty,
            "user": user,
            "args": list(spec.args),
            "env": list(spec.env),
            "cwd": spec.cwd,
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": False,
        },
        "root": {"path": str(Path(spec.rootfs).resolve()), "readonly": spec.readonly_rootfs},
        "hostname": spec.hostname,
        "mounts": mounts + [
            {"destination": m.destination, "type": m.type, "source": m.source,
             "options": list(m.options)}
            for m in spec.mounts
        ],
        "linux": {
            "namespaces": namespaces,
            "resources": {"devices": [{"allow": spec.privileged, "access": "rwm"}]},
            "maskedPaths": [] if spec.privileged else list(MASKED_PATHS),
            "readonlyPaths": [] if spec.privileged else list(READONLY_PATHS),
        },
    })
    if rootless.inside():
        rootless_spec(config)
    return config


def rootless_spec(config: dict[str, Any]) -> None:
    """What runc needs in a user namespace without delegated cgroups (runc's own rootless
    spec): /sys is a read-only rbind of ours (sysfs needs a network namespace this user
    namespace owns; RUN shares the host's), no cgroup mount, no device cgroup."""
    mounts = []
    for m in config["mounts"]:
        if m["destination"] == "/sys/fs/cgroup":
            continue
        if m["destination"] == "/sys":
            rw = "ro" not in m["options"]
            m = {"destination": "/sys", "type": "none", "source": "/sys",
                 "options": ["rbind", "nosuid", "noexec", "nodev"] + ([] if rw else ["ro"])}
        mounts.append(m)
    config["mounts"] = mounts
    config["linux"].pop("resources", None)


def _with_limits(spec: RunSpec, config: dict[str, Any]) -> dict[str, Any]:
    """--ulimit replaces or adds rlimits; --shm-size sizes the /dev/shm tmpfs."""
    if spec.ulimits:
        given = {t for t, _, _ in spec.ulimits}
        config["process"]["rlimits"] = [r for r in config["process"]["rlimits"]
                                        if r["type"] not in given] + [
            {"type": t, "soft": soft, "hard": hard} for t, soft, hard in spec.ulimits]
    if spec.shm_size:
        for m in config["mounts"]:
            if m["destination"] == "/dev/shm":
                m["options"] = [o for o in m["options"] if not o.startswith("size=")] + [
                    f"size={spec.shm_size}"]
    return config


def _kernel_caps() -> list[str]:
    """Every capability we can hand on: those in our own bounding set (a root inside
    another container may lack some; runc fails a step asking for them)."""
    status = Path("/proc/self/status").read_text()
    bound = int(next(line.split()[1] for line in status.splitlines()
                     if line.startswith("CapBnd:")), 16)
    return [name for i, name in enumerate(ALL_CAPS) if bound >> i & 1]


def _nofile_limit() -> int:
    """BuildKit's 1048576 open files, or our own hard limit when we cannot raise it.

    Raising a hard limit needs CAP_SYS_RESOURCE, which a root inside another container
    may lack; asking for more would make the runtime fail every step.
    """
    cap_sys_resource = 1 << 24
    status = Path("/proc/self/status").read_text()
    eff = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    if eff & cap_sys_resource and not rootless.inside():
        return min(NOFILE_LIMIT, int(Path("/proc/sys/fs/nr_open").read_text()))
    return min(NOFILE_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def _default_mounts() -> list[dict[str, Any]]:
    """The kernel filesystems every container gets, with BuildKit's options."""
    def mount(dest: str, typ: str, source: str, options: list[str]) -> dict[str, Any]:
        return {"destination": dest, "type": typ, "source": source, "options": options}
    return [
        mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", "devpts",
              ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
    ]


def host_mounts(rootfs: Path, *, hostname: str = DEFAULT_HOSTNAME,
                extra_hosts: Sequence[tuple[str, str]] = ()) -> tuple[list[Mount], list[str]]:
    """Read-only binds of /etc/resolv.conf (the host's) and /etc/hosts, and the mount stubs.

    /etc/hosts is BuildKit's generated file (localhost and the sandbox hostname), not the
    host's: that is what `docker build` steps see. The second value lists the paths (as
    the container sees them, deepest first) the runtime will create as mount points
    because they do not exist yet; pass it to `remove_mount_stubs` after the step.
    """
    _require_root()
    options = ["bind", "ro", "nosuid", "nodev", "noexec"]
    mounts = []
    resolv = Path("/etc/resolv.conf")
    if resolv.exists():
        mounts.append(Mount("/etc/resolv.conf", "bind", str(resolv.resolve()), list(options)))
    mounts.append(Mount("/etc/hosts", "bind", str(_hosts_file(hostname, extra_hosts)),
                        list(options)))
    return mounts, mount_stubs(rootfs, [m.destination for m in mounts])


def _hosts_file(hostname: str, extra_hosts: Sequence[tuple[str, str]] = ()) -> Path:
    """A hosts file with BuildKit's content (then one line per --add-host), shared by all
    steps with the same content."""
    content = f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    content += "".join(f"{ip}\t{host}\n" for host, ip in extra_hosts)
    path = STATE_DIR / "etc" / f"hosts-{hashlib.sha256(content.encode()).hexdigest()[:16]}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        tmp.write_text(content)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return path


def mount_stubs(rootfs: Path, destinations: Iterable[str]) -> list[str]:
    """Paths the runtime will have to create to mount on `destinations`, deepest first.

    The step's layer must not keep the file stubs (BuildKit removes them too), so they
    are remembered before the container starts and removed by `remove_mount_stubs` after.
    """
    stubs: set[str] = set()
    for dest in destinations:
        comps = fs.components(rootfs, dest)
        while comps and not os.path.lexists(Path(rootfs).joinpath(*comps)):
            stubs.add("/" + "/".join(comps))
            comps = comps[:-1]
    return sorted(stubs, key=lambda p: (-p.count("/"), p))


def remove_mount_stubs(rootfs: Path, stubs: Iterable[str]) -> None:
    """Remove the empty file stubs, keeping their parent's timestamps.

    Directories made as mount points stay, as in Docker 20.10's BuildKit (an image built
    with `RUN --mount=type=bind,target=/wheels` keeps an empty /wheels; a secret leaves
    /run/secrets). A stub the step filled is the step's output and stays too. The
    parent's atime/mtime are restored so the layer does not record a change there.
    """
    for stub in stubs:
        parent_comps = fs.components(rootfs, os.path.dirname(stub))
        parent = Path(rootfs).joinpath(*parent_comps)
        target = parent / os.path.basename(stub)
        try:
            st = os.lstat(target)
            parent_st = os.lstat(parent)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(target)
        else:
            continue
        os.utime(parent, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns), follow_symlinks=False)


_DirState = tuple[int, int, frozenset[str]]


def _existing_parents(rootfs: Path, stubs: list[str]) -> dict[Path, _DirState]:
    """Times and entries, before the step, of the existing directories that will get stubs."""
    states: dict[Path, _DirState] = {}
    for stub in stubs:
        parent = os.path.dirname(stub)
        if parent in stubs:
            continue
        path = Path(rootfs).joinpath(*fs.components(rootfs, parent))
        if path not in states:
            st = os.lstat(path)
            states[path] = (st.st_atime_ns, st.st_mtime_ns, frozenset(os.listdir(path)))
    return states


def _restore_parents(rootfs: Path, states: dict[Path, _DirState]) -> None:
    """Give back their pre-step times to directories the step left as it found them.

    The runtime created stubs in them (changing their mtime) and we removed the stubs;
    without this, /etc of every RUN with a missing /etc/hosts would look modified.
    """
    for path, (atime, mtime, names) in states.items():
        try:
            if frozenset(os.listdir(path)) == names and not os.path.islink(path):
                os.utime(path, ns=(atime, mtime))
        except (FileNotFoundError, NotADirectoryError):
            continue


def _ensure_cwd(rootfs: Path, cwd: str) -> None:
    """Create a missing working directory (0755, root-owned) as BuildKit does for RUN."""
    try:
        fs.mkdir_p(rootfs, cwd, uid=0, gid=0)
    except fs.NotADirectory:
        raise PybuildError(f"working directory {cwd} is not a directory in the image") from None


def _require_root() -> None:
    NeedsRootError.require("running build steps")


NETWORK_MODES = ("host", "none")


def check_network(mode: str) -> str:
    """The one check of a network mode for a step or container: host or none."""
    if mode not in NETWORK_MODES:
        raise PybuildError(f"unsupported network mode {mode!r}: use host or none")
    return mode


def find_runtime(runtime: str | None = None) -> str:
    """Path of the OCI runtime: `runtime`, else $PYBUILD_RUNTIME, else runc."""
    name = runtime or os.environ.get("PYBUILD_RUNTIME") or "runc"
    path = shutil.which(name)
    if path is None:
        base = os.path.basename(name)
        raise PybuildError(f"{base} not found: install the {base} package")
    return path


def state_root(binary: str) -> Path:
    """The runtime's --root: one per runtime (runc and crun keep different state formats)."""
    return STATE_DIR / os.path.basename(binary)


def _runtime_cli(binary: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run a short runtime command (kill, delete, list) against our state root.

    A hung runtime counts as a failure rather than an exception: this runs in cleanup.
    """
    argv = [binary, "--root", str(state_root(binary)), *args]
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=_CLI_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -1, b"", b"")


def _write_owner(bundle: Path) -> None:
    """Record which pybuild process runs this container, for `cleanup_stale`."""
    tmp = bundle / ".owner.tmp"
    tmp.write_text(f"{os.getpid()} {process_start(os.getpid())}\n")
    os.replace(tmp, bundle / "owner")


def is_stale(cid: str) -> bool:
    """A container is stale when the pybuild process that started it is gone.

    A container without a bundle is stale; a bundle without an owner file belongs to
    someone who meant the container to outlive its creator, and is left alone.
    """
    bundle = BUNDLES_DIR / cid
    if not bundle.is_dir():
        return True
    try:
        pid, start = (bundle / "owner").read_text().split()
    except FileNotFoundError:
        return False
    except ValueError:
        return True
    return process_start(int(pid)) != start


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into SystemExit(143) so `finally` blocks run and kill the container.

    Only in the main thread and only when nobody installed a SIGTERM handler already.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def unwind(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM while cleaning up: they are delivered once cleanup is done."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def run(spec: RunSpec, on_output: Callable[[bytes], None], *, runtime: str | None = None,
        cancel: threading.Event | None = None) -> int:
    """Run `spec` to completion; returns its exit status (128+signal when killed).

    Output (stdout and stderr merged, as the process writes it) goes to `on_output` in
    chunks as it arrives. Mount stubs created for `spec.mounts` are removed afterwards.
    When `cancel` is set (from any thread), the container is killed and deleted within
    one poll slice and `Cancelled` is raised.
    """
    _require_root()
    if spec.tty:
        raise PybuildError("a terminal needs runc create with a console socket; run() uses pipes")
    binary = find_runtime(runtime)
    if not Path(spec.rootfs).is_dir():
        raise PybuildError(f"root filesystem {spec.rootfs} does not exist")
    config = build_spec(spec)
    cid = ID_PREFIX + secrets.token_hex(8)
    if not rootless.inside():
        config["linux"]["cgroupsPath"] = f"/pybuild/{cid}"
    _ensure_cwd(Path(spec.rootfs), spec.cwd)
    stubs = mount_stubs(Path(spec.rootfs), [m.destination for m in spec.mounts])
    stub_parents = _existing_parents(Path(spec.rootfs), stubs)
    bundle = BUNDLES_DIR / cid
    proc: subprocess.Popen[bytes] | None = None
    with _sigterm_unwinds():
        try:
            BUNDLES_DIR.mkdir(parents=True, exist_ok=True)
            state_root(binary).mkdir(parents=True, exist_ok=True)
            # Built under a temporary name, so `cleanup_stale` never sees it half-written.
            tmp = BUNDLES_DIR / f".tmp-{cid}"
            tmp.mkdir(mode=0o700)
            _write_owner(tmp)
            (tmp / "config.json").write_text(json.dumps(config, indent=1))
            os.rename(tmp, bundle)
            # The runtime's own log goes to the bundle; its final error (say, exec: "x":
            # executable file not found) still reaches stderr, plainly, as docker shows it.
            proc = subprocess.Popen(
                [binary, "--root", str(state_root(binary)), "--log", str(bundle / "runtime.log"),
                 "--log-format", "json", "run", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)  # Ctrl-C reaches us only; we decide how to stop it
            # who runs it: a killed pybuild's `runc run` may still be creating the container,
            # and cleanup_stale must stop it before it can (see _stop_orphaned_runtimes)
            (bundle / "runtime").write_text(f"{proc.pid} {process_start(proc.pid)}\n")
            assert proc.stdout is not None
            if not _pump(proc.stdout.fileno(), on_output, cancel):
                raise Cancelled("cancelled")
            status = proc.wait()
            return 128 - status if status < 0 else status
        finally:
            with _signals_deferred():
                _teardown(binary, cid, proc, bundle)
                remove_mount_stubs(Path(spec.rootfs), stubs)
                _restore_parents(Path(spec.rootfs), stub_parents)


def _pump(fd: int, on_output: Callable[[bytes], None],
          cancel: threading.Event | None = None) -> bool:
    """Pass everything read from `fd` to `on_output` until EOF (True) or `cancel` (False).

    The wait is sliced: Python runs signal handlers only in the main thread, and a
    Ctrl-C the kernel hands to another thread (a progress renderer) would otherwise wait
    for the step to write something before turning into KeyboardInterrupt.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        if cancel is not None and cancel.is_set():
            return False
        if not poller.poll(_SIGNAL_CHECK_MS):
            continue
        chunk = os.read(fd, _READ_SIZE)
        if not chunk:
            return True
        on_output(chunk)


def _teardown(binary: str, cid: str, proc: subprocess.Popen[bytes] | None, bundle: Path) -> None:
    """Kill the container if it still runs, delete it, remove its bundle."""
    if proc is not None:
        if proc.stdout is not None:
            proc.stdout.close()  # a runtime blocked writing to a full pipe now fails and exits
        if proc.poll() is None:
            if _runtime_cli(binary, "kill", cid, "KILL").returncode != 0:
                _kill_group(proc.pid)  # not created yet: stop runc itself
            try:
                proc.wait(timeout=_KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
    if (state_root(binary) / cid).exists():
        _runtime_cli(binary, "delete", "-f", cid)
    remove_tree(bundle)
    remove_tree(bundle.with_name(f".tmp-{bundle.name}"))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _installed_runtimes() -> list[str]:
    names = ["runc", "crun", os.environ.get("PYBUILD_RUNTIME", "")]
    found = [shutil.which(n) for n in names if n]
    return list(dict.fromkeys(p for p in found if p))


def _stop_orphaned_runtimes() -> None:
    """Kill the `runc run` of every bundle whose pybuild is gone, before looking at runc's
    containers: otherwise it could finish creating one after the cleanup."""
    if not BUNDLES_DIR.is_dir():
        return
    for bundle in BUNDLES_DIR.iterdir():
        if not bundle.name.startswith(ID_PREFIX) or not is_stale(bundle.name):
            continue
        try:
            pid, start = (bundle / "runtime").read_text().split()
        except (OSError, ValueError):
            continue
        if process_start(int(pid)) != start:
            continue
        _kill_group(int(pid))
        deadline = time.monotonic() + _KILL_TIMEOUT
        while process_start(int(pid)) == start and time.monotonic() < deadline:
            time.sleep(0.02)


def cleanup_stale() -> None:
    """Delete containers and bundles left by a pybuild that was killed (SIGKILL, crash).

    Containers of pybuild processes that are still running are left alone, so two builds
    can run side by side.
    """
    if os.geteuid() != 0 or not STATE_DIR.is_dir():
        return
    _stop_orphaned_runtimes()
    for binary in _installed_runtimes():
        root = state_root(binary)
        # the runtime keeps one directory per container: none means nothing to list
        if not root.is_dir() or not any(e.name.startswith(ID_PREFIX) for e in os.scandir(root)):
            continue
        listing = _runtime_cli(binary, "list", "-f", "json")
        try:
            containers = json.loads(listing.stdout or b"null") or []
        except json.JSONDecodeError:
            continue
        for c in containers:
            cid = c.get("id", "")
            if cid.startswith(ID_PREFIX) and is_stale(cid):
                _runtime_cli(binary, "kill", cid, "KILL")
                _runtime_cli(binary, "delete", "-f", cid)
                remove_tree(BUNDLES_DIR / cid)
    if BUNDLES_DIR.is_dir():
        for bundle in BUNDLES_DIR.iterdir():
            cid = bundle.name.removeprefix(".tmp-")
            if cid.startswith(ID_PREFIX) and (bundle / "owner").exists() and is_stale(bundle.name):
                remove_tree(bundle)
