"""Containers from built images, without a daemon: create, run, list, logs, stop, remove.

A container lives in `<store>/containers/<id>/`: `state.json` (what `ps` shows), the runc
bundle (`config.json`), its overlay rootfs (`upper/`, `work/`, `merged/` over the image's
extracted snapshots), anonymous volumes (`volumes/`) and its output (`log`).

Docker keeps a shim process per container to collect its exit status; so do we. A
detached container is started by a small monitor (`python -m pybuild.containers`) in its
own session: it is a child subreaper, runs `runc run --detach` with the container's
stdio on the log file, and waits for the container's init (reparented to it) to record
the exit status, unmount the rootfs and honour `--rm`. A foreground container's owner is
the `pybuild run` process itself. Whoever finds a container stopped whose owner died
(a reboot, a SIGKILL) records it as exited with status 255, as dockerd does.

runc keeps its state under its own root (`/run/pybuild/containers-runc`), apart from the
build containers that `runtime.cleanup_stale` reaps.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, BinaryIO

from pybuild import fs, rootless, runtime
from pybuild import image as imagemod
from pybuild.errors import NeedsRootError, PybuildError
from pybuild.fs import resolve_in_root
from pybuild.liveness import process_start
from pybuild.snapshot import Active, Snapshotter, chain_ids
from pybuild.solver.users import resolve_user
from pybuild.store import Store
from pybuild.units import human_duration as human_duration

RUNC_ID_PREFIX = "pybuild-run-"
DEFAULT_STOP_TIMEOUT = 10.0
LOST_EXIT_CODE = 255  # dockerd's status for a container whose exit nobody saw
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_POLL_S = 0.05
_START_TIMEOUT = 120.0
_RECORD_TIMEOUT = 10.0
_READ_SIZE = 65536
_PR_SET_CHILD_SUBREAPER = 36
# Docker's CLI proxies these to an attached container (--sig-proxy).
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
              signal.SIGUSR1, signal.SIGUSR2)
_ADJECTIVES = ("brave", "calm", "clever", "eager", "gentle", "happy", "jolly", "keen",
               "lucid", "merry", "nimble", "proud", "quiet", "sharp", "steady", "sunny",
               "swift", "tidy", "vivid", "witty", "bold", "crisp", "fond", "wise")
_NOUNS = ("babbage", "curie", "darwin", "euler", "fermat", "galois", "hopper", "hypatia",
          "kepler", "lovelace", "maxwell", "noether", "pascal", "ramanujan", "shannon",
          "tesla", "turing", "volta", "wiles", "yalow", "zuse", "bohr", "dijkstra", "gauss")


@dataclass
class RunOptions:
    """What `pybuild run` was asked for, before the image fills in the rest."""

    image: str
    command: list[str] = field(default_factory=list)
    name: str | None = None
    env: list[str] = field(default_factory=list)  # KEY=VALUE, already resolved
    volumes: list[str] = field(default_factory=list)  # HOST:CTR[:ro|rw] or CTR
    network: str = "host"
    entrypoint: str | None = None  # "" clears the image's entrypoint
    workdir: str | None = None
    user: str | None = None
    remove: bool = False


@dataclass
class Container:
    """A container's record, as kept in state.json."""

    id: str
    name: str
    image: str
    image_id: str
    created: str
    command: list[str]
    status: str = "created"  # created | running | exited
    pid: int = 0
    exit_code: int | None = None
    started: str = ""
    finished: str = ""
    error: str = ""
    stop_signal: str = "SIGTERM"
    auto_remove: bool = False
    runtime: str = "runc"
    chain_ids: list[str] = field(default_factory=list)
    owner: list[str] = field(default_factory=list)  # [pid, start time] of who waits on it

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def runc_id(self) -> str:
        return RUNC_ID_PREFIX + self.id


# ---------------------------------------------------------------------------- store side
def containers_dir(store: Store) -> Path:
    return store.root / "containers"


def container_dir(store: Store, cid: str) -> Path:
    return containers_dir(store) / cid


def log_path(store: Store, c: Container) -> Path:
    return container_dir(store, c.id) / "log"


def _state_file(store: Store, cid: str) -> Path:
    return container_dir(store, cid) / "state.json"


def _read(store: Store, cid: str) -> Container | None:
    try:
        data = json.loads(_state_file(store, cid).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    known = {f.name for f in fields(Container)}
    return Container(**{k: v for k, v in data.items() if k in known})


def _write(store: Store, c: Container) -> None:
    """Atomically replace state.json, so a reader never sees half a record."""
    path = _state_file(store, c.id)
    tmp = path.with_name(f".state.{secrets.token_hex(8)}.tmp")  # unique per writer thread
    tmp.write_text(json.dumps(asdict(c), indent=1))
    os.replace(tmp, path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`: serialises state changes between processes."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def _container_lock(store: Store, cid: str) -> Iterator[bool]:
    """Lock one container; yields False when it was removed meanwhile."""
    d = container_dir(store, cid)
    if not d.is_dir():
        yield False
        return
    with _locked(d / "lock"):
        yield d.is_dir()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _me() -> list[str]:
    return [str(os.getpid()), process_start(os.getpid()) or ""]


def _owner_alive(c: Container) -> bool:
    return len(c.owner) == 2 and process_start(int(c.owner[0])) == c.owner[1]


def list_containers(store: Store) -> list[Container]:
    """Every container of the store, newest first, with stale statuses settled."""
    d = containers_dir(store)
    out = []
    for entry in d.iterdir() if d.is_dir() else []:
        c = _read(store, entry.name)
        if c is not None:
            out.append(refresh(store, c))
    return sorted(out, key=lambda c: c.created, reverse=True)


def find(store: Store, ref: str) -> Container:
    """A container by name, full id or unique id prefix (docker's lookup order)."""
    every = list_containers(store)
    for c in every:
        if c.id == ref or c.name == ref.removeprefix("/"):
            return c
    matches = [c for c in every if ref and c.id.startswith(ref)]
    if len(matches) > 1:
        raise PybuildError(f"multiple IDs found with provided prefix: {ref}")
    if not matches:
        raise PybuildError(f"No such container: {ref}")
    return matches[0]


def chain_ids_in_use(store: Store) -> set[str]:
    """Snapshots under existing containers' rootfs: a snapshot prune must keep them."""
    return {chain for c in list_containers(store) for chain in c.chain_ids}


# ---------------------------------------------------------------------------- runc
def _runc_root(binary: str) -> Path:
    return runtime.STATE_DIR / f"containers-{os.path.basename(binary)}"


def _runc(c: Container, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    binary = runtime.find_runtime(c.runtime)
    argv = [binary, "--root", str(_runc_root(binary)), *args]
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -1, b"", b"runtime timed out")


def _runc_status(c: Container) -> str:
    """runc's view: created, running, paused, stopped, or "" when runc has no such container."""
    res = _runc(c, "state", c.runc_id)
    if res.returncode != 0:
        return ""
    try:
        return str(json.loads(res.stdout).get("status", ""))
    except json.JSONDecodeError:
        return ""


def _runtime_error(path: Path) -> str:
    """The last error runc logged (json log format), without runc's own prefixes."""
    message = ""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("level") in ("error", "fatal"):
            message = str(entry.get("msg", ""))
    for prefix in ("runc run failed: ", "runc create failed: ", "unable to start container process: "):
        message = message.removeprefix(prefix)
    return message


def _start_exit_code(message: str) -> int:
    """docker run's codes for a command that cannot start: 127 not found, 126 not runnable."""
    if "not found" in message or "no such file" in message:
        return 127
    if "permission denied" in message or "exec format error" in message:
        return 126
    return 125


class StartError(PybuildError):
    """The runtime could not start the container's process."""

    def __init__(self, message: str) -> None:
        super().__init__(f"failed to start container: {message}")
        self.exit_code = _start_exit_code(message)


# ---------------------------------------------------------------------------- rootfs
def _mount_rootfs(snaps: Snapshotter, cdir: Path, lowers: list[Path]) -> Path:
    """Overlay of the image's snapshots with the container's own upper, left mounted.

    Unlike Snapshotter.mount (a context manager) this mount outlives the process that
    made it: a detached container keeps running after `pybuild run -d` returns.
    """
    active = Active(cdir.name, cdir, list(lowers), readonly=False)
    for sub in ("upper", "work", "merged"):
        (cdir / sub).mkdir(exist_ok=True)
    snaps.mount_overlay(active)
    return active.rootfs


def _unmount(path: Path) -> None:
    if not os.path.ismount(path):
        return
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0 \
            and os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _ensure_workdir(rootfs: Path, workdir: str) -> None:
    """Create a missing working directory, root-owned 0755, as dockerd does."""
    try:
        fs.mkdir_p(rootfs, workdir)
    except fs.NotADirectory:
        raise PybuildError(f"Cannot mkdir: {workdir} is not a directory") from None


# ---------------------------------------------------------------------------- create
def generate_name(taken: set[str]) -> str:
    """docker-style adjective_scientist names; a digit is added when all are taken."""
    for attempt in range(50):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
        if attempt >= 10:
            name += str(secrets.randbelow(10))
        if name not in taken:
            return name
    return f"container_{secrets.token_hex(4)}"


def _merge_env(base: list[str], extra: list[str]) -> list[str]:
    """Replace variables of `base` in place, append new ones (docker's ReplaceOrAppendEnv)."""
    out = list(base)
    index = {e.partition("=")[0]: i for i, e in enumerate(out)}
    for e in extra:
        key = e.partition("=")[0]
        if key in index:
            out[index[key]] = e
        else:
            index[key] = len(out)
            out.append(e)
    return out


def process_args(config: dict[str, Any], command: list[str], entrypoint: str | None) -> list[str]:
    """Entrypoint + Cmd by docker's rules: CMD args replace Cmd; --entrypoint replaces
    Entrypoint and drops the image's Cmd; `--entrypoint ""` clears it."""
    if entrypoint is not None:
        ep = [entrypoint] if entrypoint else []
        cmd = list(command)
    else:
        ep = list(config.get("Entrypoint") or [])
        cmd = list(command) if command else list(config.get("Cmd") or [])
    args = ep + cmd
    if not args:
        raise PybuildError("No command specified")
    return args


def _parse_volume(spec: str) -> tuple[str | None, str, bool]:
    """`-v HOST:CTR[:ro|rw]` or `-v CTR` → (host path or None, container path, readonly)."""
    parts = spec.split(":")
    if len(parts) == 1:
        host, dest, mode = None, parts[0], ""
    elif len(parts) in (2, 3):
        host, dest = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else ""
    else:
        raise PybuildError(f"invalid volume specification: '{spec}'")
    if mode not in ("", "ro", "rw"):
        raise PybuildError(f"invalid mode: {mode}")
    if not dest.startswith("/"):
        raise PybuildError(f"invalid volume specification: '{spec}': "
                           "the mount destination must be an absolute path")
    if host is not None and not host.startswith("/"):
        raise PybuildError(f"invalid volume specification: '{spec}': named volumes are not "
                           "supported, use an absolute host path")
    return host, os.path.normpath(dest), mode == "ro"


def _bind(source: str, dest: str, readonly: bool) -> runtime.Mount:
    return runtime.Mount(dest, "bind", source,
                         ["rbind", "rprivate"] + (["ro"] if readonly else []))


def _volume_mounts(cdir: Path, rootfs: Path, specs: list[str], image_volumes: list[str]) -> list[runtime.Mount]:
    """-v binds, and anonymous volumes seeded with the image's content at that path."""
    mounts: dict[str, runtime.Mount] = {}
    anonymous: list[str] = []
    for spec in specs:
        host, dest, ro = _parse_volume(spec)
        if dest in mounts or dest in anonymous:
            raise PybuildError(f"Duplicate mount point: {dest}")
        if dest == "/":
            raise PybuildError(f"invalid volume specification: '{spec}': cannot mount on /")
        if host is None:
            anonymous.append(dest)
            continue
        os.makedirs(host, exist_ok=True)
        mounts[dest] = _bind(host, dest, ro)
    for dest in image_volumes:
        dest = os.path.normpath(dest)
        if dest not in mounts and dest not in anonymous and dest != "/":
            anonymous.append(dest)
    for n, dest in enumerate(anonymous):
        vol = cdir / "volumes" / str(n)
        vol.mkdir(parents=True)
        src = resolve_in_root(rootfs, dest)
        if src.is_dir():
            # Docker copies the image's files (owners, modes, xattrs) into a new volume.
            res = subprocess.run(["cp", "-a", f"{src}/.", f"{vol}/"], capture_output=True, text=True)
            if res.returncode != 0:
                raise PybuildError(f"cannot populate volume {dest}: {res.stderr.strip()}")
        mounts[dest] = _bind(str(vol), dest, False)
    return sorted(mounts.values(), key=lambda m: m.destination.count("/"))


def create(store: Store, opts: RunOptions, *, runtime_name: str | None = None) -> Container:
    """Make a container from an image: its directory, mounted rootfs and runc bundle.

    Nothing is left behind when this fails (bad user, bad volume, missing image).
    """
    if os.geteuid() != 0:
        raise NeedsRootError("running containers needs root (overlay mounts, runc): run pybuild as root")
    binary = runtime.find_runtime(runtime_name)
    if opts.network not in ("host", "none"):
        raise PybuildError(f"unsupported network mode {opts.network!r}: use host or none")
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise PybuildError(f"the working directory '{opts.workdir}' is invalid, "
                           "it needs to be an absolute path")
    if opts.name is not None and not _NAME_RE.match(opts.name.removeprefix("/")):
        raise PybuildError(f"Invalid container name ({opts.name}), only "
                           "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    img = imagemod.load(store, opts.image)
    config = img.config.get("config") or {}
    args = process_args(config, opts.command, opts.entrypoint)
    cid = secrets.token_hex(32)
    root = containers_dir(store)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):  # names are claimed under one lock
        existing = list_containers(store)
        names = {c.name: c for c in existing}
        name = opts.name.removeprefix("/") if opts.name else generate_name(set(names))
        if name in names:
            raise PybuildError(f'Conflict. The container name "/{name}" is already in use by '
                               f'container "{names[name].id}". You have to remove (or rename) '
                               "that container to be able to reuse that name.")
        cdir = container_dir(store, cid)
        cdir.mkdir(mode=0o700)
        c = Container(id=cid, name=name, image=opts.image, image_id=img.id, created=_now(),
                      command=args, stop_signal=str(config.get("StopSignal") or "SIGTERM"),
                      auto_remove=opts.remove, runtime=binary,
                      chain_ids=chain_ids(img.diff_ids), owner=_me())
        _write(store, c)
    try:
        snaps = Snapshotter(store)
        rootfs = _mount_rootfs(snaps, cdir, snaps.ensure(img.layers, img.diff_ids))
        _write_bundle(cdir, rootfs, c, config, opts)
    except BaseException:
        _destroy(store, c)
        raise
    return c


def _write_bundle(cdir: Path, rootfs: Path, c: Container, config: dict[str, Any], opts: RunOptions) -> None:
    user_spec = opts.user if opts.user is not None else str(config.get("User") or "")
    uid, gid, groups = resolve_user(rootfs, user_spec) if user_spec else (0, 0, [])
    workdir = opts.workdir or str(config.get("WorkingDir") or "/")
    _ensure_workdir(rootfs, workdir)
    env = _merge_env([f"PATH={imagemod.DEFAULT_PATH}", f"HOSTNAME={c.short_id}"],
                     list(config.get("Env") or []))
    env = _merge_env(env, opts.env)
    host, _stubs = runtime.host_mounts(rootfs, hostname=c.short_id)
    volumes = _volume_mounts(cdir, rootfs, opts.volumes, sorted(config.get("Volumes") or {}))
    spec = runtime.RunSpec(rootfs=rootfs, args=c.command, env=env, cwd=workdir, uid=uid, gid=gid,
                           additional_gids=groups, network=opts.network,
                           mounts=host + volumes, hostname=c.short_id)
    oci = runtime.build_spec(spec)
    if not rootless.inside():
        oci["linux"]["cgroupsPath"] = f"/pybuild/{c.runc_id}"
    (cdir / "config.json").write_text(json.dumps(oci, indent=1))


# ---------------------------------------------------------------------------- finish
def _finish(store: Store, cid: str, exit_code: int | None, *, error: str = "") -> None:
    """Record how the container ended, free its runtime state and rootfs mount; --rm.

    Called by the container's owner once it saw the exit (`error` when the process never
    started), or by anyone who finds an ownerless container stopped (`exit_code` None:
    the status was lost). Idempotent: a second caller finds nothing to record.
    """
    with _container_lock(store, cid) as present:
        c = _read(store, cid) if present else None
        if c is None:
            return
        if error:
            # docker leaves a container that failed to start as Created, with the code.
            c.status, c.error, c.exit_code = "created", error, _start_exit_code(error)
        elif c.status == "running":
            c.status = "exited"
            c.exit_code = LOST_EXIT_CODE if exit_code is None else exit_code
            c.finished = _now()
        c.owner = []
        _runc(c, "delete", "-f", c.runc_id)
        _unmount(container_dir(store, cid) / "merged")
        if c.auto_remove:
            shutil.rmtree(container_dir(store, cid), ignore_errors=True)
            return
        _write(store, c)


def _destroy(store: Store, c: Container) -> None:
    """Remove every trace of a container: runtime state, mount, directory."""
    _runc(c, "delete", "-f", c.runc_id)
    cdir = container_dir(store, c.id)
    _unmount(cdir / "merged")
    shutil.rmtree(cdir, ignore_errors=True)


def refresh(store: Store, c: Container) -> Container:
    """Settle a container marked running whose owner is gone and whose process ended."""
    if c.status != "running" or _owner_alive(c):
        return c
    if _runc_status(c) in ("running", "paused", "created"):
        return c
    _finish(store, c.id, None)
    return _read(store, c.id) or c


# ---------------------------------------------------------------------------- foreground
def run_foreground(store: Store, c: Container, stdout: BinaryIO, stderr: BinaryIO) -> int:
    """Run a created container attached: its stdout/stderr to ours (and to its log).

    Signals pybuild receives are forwarded to the container, as docker's CLI does; a
    second Ctrl-C or SIGTERM kills it. Returns the exit status (128+signal if killed).
    """
    cdir = container_dir(store, c.id)
    binary = c.runtime
    _runc_root(binary).mkdir(parents=True, exist_ok=True)
    pid_file = cdir / "pid"
    proc = subprocess.Popen(
        [binary, "--root", str(_runc_root(binary)), "--log", str(cdir / "runtime.log"),
         "--log-format", "json", "run", "--pid-file", str(pid_file), "--bundle", str(cdir),
         c.runc_id],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)  # terminal signals reach us; we decide what the container gets
    _mark_running(store, c.id, None, _me())
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        hard = sum(1 for s in received if s in (signal.SIGINT, signal.SIGTERM)) >= 2
        try:
            if hard:
                _runc(c, "kill", c.runc_id, "KILL")
            else:
                os.kill(proc.pid, signum)  # runc run forwards it to the container
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    status: int | None = None
    try:
        started = _pump(proc, pid_file, stdout, stderr, cdir / "log",
                        lambda pid: _mark_running(store, c.id, pid, None))
        status = proc.wait()
        status = 128 - status if status < 0 else status
        if not started and status != 0:
            message = _runtime_error(cdir / "runtime.log") or f"runtime exited with status {status}"
            _finish(store, c.id, None, error=message)
            raise StartError(message)
        return status
    finally:
        if proc.poll() is None:  # pybuild itself failed: do not leave the container behind
            _runc(c, "kill", c.runc_id, "KILL")
            proc.wait()
            status = 137
        for s, h in previous.items():
            signal.signal(s, h)
        _finish(store, c.id, status)


def _pump(proc: subprocess.Popen[bytes], pid_file: Path, stdout: BinaryIO, stderr: BinaryIO,
          log: Path, on_started: Callable[[int], None]) -> bool:
    """Copy the container's two pipes to ours and to the log until both close.

    Until runc writes the pid file only runc itself can have written, so that output is
    held back: on a failed start it is runc's error, which we report in our own words.
    Returns whether the container's process started.
    """
    assert proc.stdout is not None and proc.stderr is not None
    outs = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr}
    pipes = {proc.stdout.fileno(): proc.stdout, proc.stderr.fileno(): proc.stderr}
    held: list[tuple[BinaryIO, bytes]] = []
    started = False
    poller = select.poll()
    for fd in outs:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    with open(log, "ab") as logf:
        while outs:
            events = poller.poll(200)
            if not started and pid_file.exists():
                started = True
                on_started(int(pid_file.read_text().strip() or 0))
                for dest, data in held:
                    _emit(dest, logf, data)
                held.clear()
            for fd, _ev in events:
                chunk = os.read(fd, _READ_SIZE)
                if chunk and not started:
                    held.append((outs[fd], chunk))
                elif not chunk or not _emit(outs[fd], logf, chunk):
                    # A closed reader (`pybuild run img yes | head -1`) closes the
                    # container's pipe too: its next write fails as it would without us.
                    poller.unregister(fd)
                    del outs[fd]
                    pipes[fd].close()
        if not started and proc.wait() == 0:
            started = True
        if started:
            for dest, data in held:
                _emit(dest, logf, data)
    return started


def _emit(dest: BinaryIO, logf: BinaryIO, data: bytes) -> bool:
    """Write to the log and to our stream; False once our stream's reader is gone."""
    logf.write(data)
    logf.flush()
    try:
        dest.write(data)
        dest.flush()
    except BrokenPipeError:
        return False
    return True


def _mark_running(store: Store, cid: str, pid: int | None, owner: list[str] | None) -> None:
    with _container_lock(store, cid) as present:
        c = _read(store, cid) if present else None
        if c is None:
            return
        c.status = "running"
        c.started = c.started or _now()
        if pid:
            c.pid = pid
        if owner is not None:
            c.owner = owner
        _write(store, c)


# ---------------------------------------------------------------------------- detached
def start_detached(store: Store, c: Container) -> Container:
    """Start a created container in the background; returns once its process runs.

    The monitor reports back through a pipe used only for this handshake: the
    container's own stdio goes to its log file, never through pybuild.
    """
    cdir = container_dir(store, c.id)
    read_fd, write_fd = os.pipe()
    pkg_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    with open(os.devnull, "rb") as devnull, open(cdir / "monitor.log", "ab") as mlog:
        subprocess.Popen([sys.executable, "-m", "pybuild.containers", str(store.root), c.id,
                          str(write_fd)],
                         stdin=devnull, stdout=mlog, stderr=mlog, pass_fds=(write_fd,),
                         start_new_session=True, env=env, cwd="/")
    os.close(write_fd)
    data = b""
    deadline = time.monotonic() + _START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], 0.5)
            if ready:
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_fd)
    try:
        reply = json.loads(data or b"{}")
    except json.JSONDecodeError:
        reply = {}
    if "error" in reply:
        raise StartError(reply["error"])
    if "pid" not in reply:
        raise PybuildError(f"the container monitor failed: see {cdir / 'monitor.log'}")
    return _read(store, c.id) or c


def _monitor(root: Path, cid: str, ready_fd: int) -> int:
    """The detached container's parent: start it, wait for it, record its exit."""
    store = Store(root)
    c = _read(store, cid)
    if c is None:
        return 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        os.write(ready_fd, json.dumps({"error": "cannot become a child subreaper"}).encode())
        _finish(store, cid, None)
        return 1
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(s, signal.SIG_IGN)
    cdir = container_dir(store, cid)
    binary = c.runtime
    _runc_root(binary).mkdir(parents=True, exist_ok=True)
    with open(cdir / "log", "ab") as log:
        log_size = log.tell()
        res = subprocess.run(
            [binary, "--root", str(_runc_root(binary)), "--log", str(cdir / "runtime.log"),
             "--log-format", "json", "run", "--detach", "--pid-file", str(cdir / "pid"),
             "--bundle", str(cdir), c.runc_id],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=False)
    if res.returncode != 0:
        os.truncate(cdir / "log", log_size)  # runc's error is not the container's output
        message = _runtime_error(cdir / "runtime.log") or f"runtime exited with status {res.returncode}"
        os.write(ready_fd, json.dumps({"error": message}).encode())
        os.close(ready_fd)
        _finish(store, cid, None, error=message)
        return 1
    pid = int((cdir / "pid").read_text().strip())
    _mark_running(store, cid, pid, _me())
    os.write(ready_fd, json.dumps({"pid": pid}).encode())
    os.close(ready_fd)
    while True:
        try:
            reaped, wstatus = os.waitpid(-1, 0)
        except ChildProcessError:
            status = LOST_EXIT_CODE  # cannot happen while it is our child; be safe
            break
        if reaped == pid:
            status = os.waitstatus_to_exitcode(wstatus)
            status = 128 - status if status < 0 else status
            break
    _finish(store, cid, status)
    return 0


# ---------------------------------------------------------------------------- stop / rm
def parse_signal(text: str) -> signal.Signals:
    """STOPSIGNAL values: SIGUSR1, USR1 or 10."""
    value = text.strip().upper()
    try:
        if value.isdigit():
            return signal.Signals(int(value))
        return signal.Signals[value if value.startswith("SIG") else "SIG" + value]
    except (KeyError, ValueError):
        raise PybuildError(f"invalid signal: {text}") from None


def _wait_exited(store: Store, cid: str, timeout: float) -> bool:
    """Wait until the container is recorded as no longer running (or removed)."""
    deadline = time.monotonic() + timeout
    while True:
        c = _read(store, cid)
        if c is None or c.status != "running":
            return True
        if not _owner_alive(c) and _runc_status(c) not in ("running", "paused", "created"):
            _finish(store, cid, None)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def stop(store: Store, c: Container, timeout: float = DEFAULT_STOP_TIMEOUT) -> Container:
    """Send the image's STOPSIGNAL, SIGKILL after `timeout` seconds; wait for the exit."""
    if c.status != "running":
        return c
    sig = parse_signal(c.stop_signal)
    _runc(c, "kill", c.runc_id, sig.name.removeprefix("SIG"))
    if not _wait_exited(store, c.id, max(timeout, 0.0)):
        _runc(c, "kill", c.runc_id, "KILL")
        if not _wait_exited(store, c.id, _RECORD_TIMEOUT):
            raise PybuildError(f"cannot stop container: {c.id}: it did not exit after SIGKILL")
    return _read(store, c.id) or c


def remove(store: Store, c: Container, *, force: bool = False) -> None:
    """Delete a container; a running one only with `force` (killed first, as docker does)."""
    c = refresh(store, c)
    if c.status == "running":
        if not force:
            raise PybuildError(f"You cannot remove a running container {c.id}. Stop the "
                               "container before attempting removal or force remove")
        _runc(c, "kill", c.runc_id, "KILL")
        _wait_exited(store, c.id, _RECORD_TIMEOUT)
    with _container_lock(store, c.id) as present:
        if present:
            _destroy(store, c)


# ---------------------------------------------------------------------------- logs
def stream_logs(store: Store, c: Container, out: BinaryIO, *, follow: bool = False) -> None:
    """Copy the container's log to `out`; with `follow`, until the container stops."""
    path = log_path(store, c)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        while True:
            chunk = f.read(_READ_SIZE)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not follow:
                return
            current = _read(store, c.id)
            if current is None or refresh(store, current).status != "running":
                rest = f.read()
                if rest:
                    out.write(rest)
                    out.flush()
                return
            time.sleep(0.1)


# ---------------------------------------------------------------------------- display
def status_text(c: Container, now: datetime | None = None) -> str:
    """STATUS as docker ps shows it: Up 5 seconds, Exited (0) 3 minutes ago, Created."""
    now = now or datetime.now(UTC)
    if c.status == "running":
        return f"Up {human_duration((now - parse_time(c.started or c.created)).total_seconds())}"
    if c.status == "exited":
        ago = human_duration((now - parse_time(c.finished or c.created)).total_seconds())
        return f"Exited ({c.exit_code}) {ago} ago"
    return "Created"


def command_text(c: Container, trunc: bool = True) -> str:
    """COMMAND as docker ps shows it: quoted, cut to 20 characters with an ellipsis."""
    text = " ".join(c.command)
    if trunc and len(text) > 20:
        text = text[:19] + "…"
    return json.dumps(text, ensure_ascii=False)


def _monitor_main(argv: list[str]) -> int:
    root, cid, fd = argv
    return _monitor(Path(root), cid, int(fd))


if __name__ == "__main__":
    sys.exit(_monitor_main(sys.argv[1:]))
