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
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, BinaryIO

from pybuild import fs, rootless, runtime
from pybuild import health as healthmod
from pybuild import image as imagemod
from pybuild import limits as limitsmod
from pybuild import network as netmod
from pybuild import restart as restartmod
from pybuild.errors import NeedsRootError, PybuildError
from pybuild.fs import resolve_in_root
from pybuild.liveness import exclusive, process_start, remove_tree
from pybuild.snapshot import Active, Snapshotter, chain_ids
from pybuild.solver.users import resolve_user
from pybuild.store import Store, tree_dir
from pybuild.units import human_duration as human_duration

RUNC_ID_PREFIX = "pybuild-run-"
DEFAULT_STOP_TIMEOUT = 10.0
LOST_EXIT_CODE = 255  # dockerd's status for a container whose exit nobody saw
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})$")
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
    network: str = netmod.DEFAULT_NETWORK  # host | none | container:NAME | a network
    platform: str | None = None  # the entry of a multi-platform image (linux/arm64)
    entrypoint: str | None = None  # "" clears the image's entrypoint
    workdir: str | None = None
    user: str | None = None
    remove: bool = False
    publish: list[netmod.PortMapping] = field(default_factory=list)
    publish_all: bool = False
    aliases: list[str] = field(default_factory=list)
    hostname: str | None = None
    add_hosts: list[tuple[str, str]] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    limits: limitsmod.Limits = field(default_factory=limitsmod.Limits)
    restart: restartmod.RestartPolicy = field(default_factory=restartmod.RestartPolicy)
    health_cmd: str | None = None
    health_interval: int | None = None  # nanoseconds, as docker stores them
    health_timeout: int | None = None
    health_start_period: int | None = None
    health_retries: int | None = None
    no_healthcheck: bool = False


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
    lowers: list[str] = field(default_factory=list)  # the rootfs' snapshot dirs, to remount
    network: str = "host"  # host | none | container:ID | a network's name
    hostname: str = ""
    ports: list[dict[str, Any]] = field(default_factory=list)  # PortMappings asked for
    aliases: list[str] = field(default_factory=list)
    add_hosts: list[list[str]] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    attachment: dict[str, Any] | None = None  # network.Attachment while attached
    limits: dict[str, Any] = field(default_factory=dict)  # limits.Limits
    oom_killed: bool = False
    healthcheck: dict[str, Any] | None = None  # health.HealthConfig
    health: dict[str, Any] | None = None  # health.HealthState
    restart_policy: str = "no"
    restart_count: int = 0
    stopped_by_user: bool = False

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
def _container_lock(store: Store, cid: str) -> Iterator[bool]:
    """Lock one container; yields False when it was removed meanwhile."""
    d = container_dir(store, cid)
    if not d.is_dir():
        yield False
        return
    with exclusive(d / "lock"):
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


def find_or_none(store: Store, ref: str) -> Container | None:
    try:
        return find(store, ref)
    except PybuildError:
        return None


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


def _rootless_network(mode: str) -> str:
    """Rootless containers get their own namespace served by slirp4netns (the default
    bridge is netavark's, which needs root), as rootless podman; host and none as root."""
    if mode == netmod.DEFAULT_NETWORK:
        return netmod.SLIRP
    if mode not in ("host", "none") and not mode.startswith("container:"):
        raise PybuildError(f"network {mode!r}: bridge networks need root (netavark); "
                           f"rootless containers use --network {netmod.SLIRP} (the default), "
                           "host or none")
    return mode


def _network_mode(store: Store, opts: RunOptions) -> str:
    """The checked --network value; container:NAME becomes container:ID."""
    if rootless.inside() and opts.network == netmod.SLIRP:
        mode = netmod.SLIRP
    else:
        mode = netmod.parse_mode(store.root, opts.network)
    if rootless.inside():
        mode = _rootless_network(mode)
    user_network = mode not in ("host", "none", netmod.DEFAULT_NETWORK, netmod.SLIRP) \
        and not mode.startswith("container:")
    if opts.aliases and not user_network:
        raise PybuildError("network-scoped alias is supported only for containers in user "
                           "defined networks")
    if mode.startswith("container:"):
        other = find(store, mode.removeprefix("container:"))
        for flag, given in (("hostname", opts.hostname), ("dns", opts.dns),
                            ("add-host", opts.add_hosts),
                            ("port publishing", opts.publish or opts.publish_all)):
            if given:
                raise PybuildError(f"conflicting options: {flag} and the container network mode")
        return "container:" + other.id
    if mode not in ("host", "none"):
        missing = netmod.slirp_available() if mode == netmod.SLIRP else netmod.available()
        if missing:
            raise PybuildError(missing)
    return mode


def create(store: Store, opts: RunOptions, *, runtime_name: str | None = None,
           warnings: list[str] | None = None) -> Container:
    """Make a container from an image: its directory, mounted rootfs and runc bundle.

    Nothing is left behind when this fails (bad user, bad volume, missing image). Its
    network is set up when it starts (`start_detached`, `run_foreground`).
    """
    if os.geteuid() != 0:
        raise NeedsRootError("running containers needs root (overlay mounts, runc): run pybuild as root")
    binary = runtime.find_runtime(runtime_name)
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise PybuildError(f"the working directory '{opts.workdir}' is invalid, "
                           "it needs to be an absolute path")
    if opts.name is not None and not _NAME_RE.match(opts.name.removeprefix("/")):
        raise PybuildError(f"Invalid container name ({opts.name}), only "
                           "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    if opts.hostname is not None and not _HOSTNAME_RE.match(opts.hostname):
        raise PybuildError(f"invalid hostname format: {opts.hostname}")
    if opts.remove and opts.restart.name != "no":
        raise PybuildError("Conflicting options: --restart and --rm")
    mode = _network_mode(store, opts)
    from pybuild.platforms import ensure_emulation, parse_platform

    plat = parse_platform(opts.platform) if opts.platform else None
    img = imagemod.load(store, opts.image, platform=plat)
    if img.config.get("architecture"):  # a foreign arch runs under QEMU (binfmt_misc)
        ensure_emulation({"architecture": str(img.config["architecture"])})
    config = img.config.get("config") or {}
    args = process_args(config, opts.command, opts.entrypoint)
    check = healthmod.effective(
        config.get("Healthcheck"), cmd=opts.health_cmd, interval=opts.health_interval,
        timeout=opts.health_timeout, start_period=opts.health_start_period,
        retries=opts.health_retries, disabled=opts.no_healthcheck)
    ports = netmod.merge(opts.publish, netmod.exposed_ports(config) if opts.publish_all else [])
    if ports and mode in ("host", "none"):
        if warnings is not None:
            warnings.append(f"Published ports are discarded when using {mode} network mode")
        ports = []
    cid = secrets.token_hex(32)
    root = tree_dir(containers_dir(store))
    with exclusive(root / ".lock"):  # names are claimed under one lock
        existing = list_containers(store)
        names = {c.name: c for c in existing}
        name = opts.name.removeprefix("/") if opts.name else generate_name(set(names))
        if name in names:
            raise PybuildError(f'Conflict. The container name "/{name}" is already in use by '
                               f'container "{names[name].id}". You have to remove (or rename) '
                               "that container to be able to reuse that name.")
        cdir = container_dir(store, cid)
        cdir.mkdir(mode=0o700)
        hostname = opts.hostname or (socket.gethostname() if mode == "host" else cid[:12])
        c = Container(id=cid, name=name, image=opts.image, image_id=img.id, created=_now(),
                      command=args, stop_signal=str(config.get("StopSignal") or "SIGTERM"),
                      auto_remove=opts.remove, runtime=binary,
                      chain_ids=chain_ids(img.diff_ids), owner=_me(), network=mode,
                      hostname=hostname, ports=[asdict(p) for p in ports],
                      aliases=list(opts.aliases), add_hosts=[list(h) for h in opts.add_hosts],
                      dns=list(opts.dns), limits=asdict(opts.limits),
                      healthcheck=asdict(check) if check else None,
                      restart_policy=str(opts.restart))
        _write(store, c)
    try:
        snaps = Snapshotter(store)
        lowers = snaps.ensure(img.layers, img.diff_ids)
        c.lowers = [str(p) for p in lowers]
        _write(store, c)
        rootfs = _mount_rootfs(snaps, cdir, lowers)
        _write_bundle(store, cdir, rootfs, c, config, opts)
    except BaseException:
        _destroy(store, c)
        raise
    return c


def _etc_files(store: Store, c: Container, ip: str) -> None:
    """/etc/hosts, /etc/hostname, /etc/resolv.conf in the container's dir (bound in)."""
    cdir = container_dir(store, c.id)
    extra = [(h[0], h[1]) for h in c.add_hosts]
    if c.network == "host":
        hosts = netmod.host_hosts(extra)
    else:
        hosts = netmod.hosts(c.hostname, ip, extra)
    att = netmod.Attachment(**c.attachment) if c.attachment else None
    # slirp4netns: its DNS forwarder, unless --dns is given
    dns = c.dns or ([netmod.SLIRP_DNS] if c.network == netmod.SLIRP else [])
    resolv = netmod.resolv_conf(resolver=att.resolver if att else "", dns=dns,
                                keep_local=c.network == "host")
    for name, text in (("hosts", hosts), ("hostname", c.hostname + "\n"), ("resolv.conf", resolv)):
        tmp = cdir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, cdir / name)


def _etc_mounts(store: Store, c: Container) -> list[runtime.Mount]:
    own = container_dir(store, c.id)
    shared = own
    if c.network.startswith("container:"):  # docker shares the other's hosts and resolv.conf
        shared = container_dir(store, c.network.removeprefix("container:"))
    opts = ["rbind", "rprivate"]
    return [runtime.Mount("/etc/resolv.conf", "bind", str(shared / "resolv.conf"), list(opts)),
            runtime.Mount("/etc/hostname", "bind", str(own / "hostname"), list(opts)),
            runtime.Mount("/etc/hosts", "bind", str(shared / "hosts"), list(opts))]


def _write_bundle(store: Store, cdir: Path, rootfs: Path, c: Container, config: dict[str, Any],
                  opts: RunOptions) -> None:
    user_spec = opts.user if opts.user is not None else str(config.get("User") or "")
    uid, gid, groups = resolve_user(rootfs, user_spec) if user_spec else (0, 0, [])
    workdir = opts.workdir or str(config.get("WorkingDir") or "/")
    _ensure_workdir(rootfs, workdir)
    env = _merge_env([f"PATH={imagemod.DEFAULT_PATH}", f"HOSTNAME={c.hostname}"],
                     list(config.get("Env") or []))
    env = _merge_env(env, opts.env)
    _etc_files(store, c, "")
    volumes = _volume_mounts(cdir, rootfs, opts.volumes, sorted(config.get("Volumes") or {}))
    spec = runtime.RunSpec(rootfs=rootfs, args=c.command, env=env, cwd=workdir, uid=uid, gid=gid,
                           additional_gids=groups,
                           network="none" if c.network == "none" else "host",
                           mounts=_etc_mounts(store, c) + volumes, hostname=c.hostname)
    oci = runtime.build_spec(spec)
    if c.network not in ("host", "none"):
        # a bridge container joins the namespace netavark sets up; container:X joins X's,
        # whose path is only known once X runs (see _bring_up)
        oci["linux"]["namespaces"].append({"type": "network", "path": netmod.netns_path(c.id)})
    resources = limitsmod.oci_resources(limitsmod.Limits(**c.limits))
    if not rootless.inside():
        oci["linux"]["cgroupsPath"] = _cgroups_path(c)
        oci["linux"]["resources"].update(resources)
    elif resources:
        raise PybuildError("resource limits need cgroups, which rootless mode does not have "
                           "(no cgroup is delegated to this user)")
    (cdir / "config.json").write_text(json.dumps(oci, indent=1))


def _cgroups_path(c: Container) -> str:
    return f"/pybuild/{c.runc_id}"


# ---------------------------------------------------------------------------- network
def _bring_up(store: Store, c: Container) -> list[socket.socket]:
    """Before the process starts: hold the published ports, attach to the network, write
    the /etc files with the address. Returns the sockets holding the ports (the caller
    keeps them open while the container runs). Nothing stays set up when this fails."""
    if c.network in ("host", "none"):
        return []
    cdir = container_dir(store, c.id)
    if c.network.startswith("container:"):
        other = _read(store, c.network.removeprefix("container:"))
        if other is None or refresh(store, other).status != "running":
            raise PybuildError(f"cannot join network of a non running container: "
                               f"{c.network.removeprefix('container:')}")
        path = other.attachment["netns"] if other.attachment else f"/proc/{other.pid}/ns/net"
        oci = json.loads((cdir / "config.json").read_text())
        for ns in oci["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = path
        (cdir / "config.json").write_text(json.dumps(oci, indent=1))
        return []
    wanted = [netmod.PortMapping(**p) for p in c.ports]
    netmod.check_free(wanted, [m for other in list_containers(store)
                               if other.id != c.id and other.status == "running" and other.attachment
                               for m in netmod.Attachment(**other.attachment).port_mappings()])
    # slirp4netns binds the host ports itself (so nothing of ours may hold them)
    mappings, held = ([], []) if c.network == netmod.SLIRP else netmod.hold(wanted)
    try:
        if c.network == netmod.SLIRP:
            att = netmod.attach_slirp(c.id, wanted)
        else:
            att = netmod.attach(store.root, c.id, c.name, c.network, c.aliases, mappings,
                                c.dns)
        with _container_lock(store, c.id) as present:
            cur = _read(store, c.id) if present else None
            if cur is None:
                netmod.detach(store.root, c.id, att, name=c.name, dns=c.dns)
                raise PybuildError(f"No such container: {c.id}")
            cur.attachment = asdict(att)
            _write(store, cur)
            c.attachment = cur.attachment
        _etc_files(store, c, att.ip)
    except BaseException:
        netmod.close_all(held)
        raise
    return held


def _bring_down(store: Store, c: Container) -> None:
    """Detach from the network, as recorded; the record goes whatever netavark says."""
    if not c.attachment:
        return
    att = netmod.Attachment(**c.attachment)
    for problem in netmod.detach(store.root, c.id, att, name=c.name, dns=c.dns):
        print(f"warning: network teardown of {c.short_id}: {problem}", file=sys.stderr)
    c.attachment = None


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
            c.oom_killed = limitsmod.oom_kills(_cgroups_path(c)) > 0  # before runc deletes it
        elif c.status == "restarting":  # stopped while waiting to restart: keep the last exit
            c.status = "exited"
        c.owner = []
        _runc(c, "delete", "-f", c.runc_id)
        _bring_down(store, c)
        _unmount(container_dir(store, cid) / "merged")
        if c.auto_remove:
            remove_tree(container_dir(store, cid))
            return
        _write(store, c)


def _destroy(store: Store, c: Container) -> None:
    """Remove every trace of a container: runtime state, network, mount, directory."""
    _runc(c, "delete", "-f", c.runc_id)
    _bring_down(store, c)
    cdir = container_dir(store, c.id)
    _unmount(cdir / "merged")
    remove_tree(cdir)


def refresh(store: Store, c: Container) -> Container:
    """Settle a container marked running whose owner is gone and whose process ended."""
    if c.status not in ("running", "restarting") or _owner_alive(c):
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
    held = _bring_up(store, c)
    prober = _HealthProber(store, c.id)
    proc = subprocess.Popen(
        [binary, "--root", str(_runc_root(binary)), "--log", str(cdir / "runtime.log"),
         "--log-format", "json", "run", "--keep", "--pid-file", str(pid_file), "--bundle", str(cdir),
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
        def on_started(pid: int) -> None:
            _mark_running(store, c.id, pid, None)
            prober.start()

        started = _pump(proc, pid_file, stdout, stderr, cdir / "log", on_started)
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
        prober.stop()
        _finish(store, c.id, status)
        netmod.close_all(held)


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
        if pid or c.status != "running":
            c.started = _now()
            c.health = asdict(healthmod.HealthState()) if c.healthcheck else None
        c.status = "running"
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
        if reply.get("network"):  # a refused port or network: the process never ran
            raise PybuildError(reply["error"])
        raise StartError(reply["error"])
    if "pid" not in reply:
        try:
            lines = (cdir / "monitor.log").read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            lines = []
        raise PybuildError(f"the container monitor failed: {lines[-1] if lines else 'no reply'}")
    return _read(store, c.id) or c


def _report(fd: int, reply: dict[str, Any]) -> None:
    os.write(fd, json.dumps(reply).encode())
    os.close(fd)


def _run_detached_once(store: Store, c: Container) -> int | str:
    """`runc run --detach`: the process's pid, or the runtime's error."""
    cdir = container_dir(store, c.id)
    binary = c.runtime
    _runc_root(binary).mkdir(parents=True, exist_ok=True)
    (cdir / "pid").unlink(missing_ok=True)
    with open(cdir / "log", "ab") as log:
        log_size = log.tell()
        res = subprocess.run(
            [binary, "--root", str(_runc_root(binary)), "--log", str(cdir / "runtime.log"),
             "--log-format", "json", "run", "--detach", "--pid-file", str(cdir / "pid"),
             "--bundle", str(cdir), c.runc_id],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=False)
    if res.returncode != 0:
        os.truncate(cdir / "log", log_size)  # runc's error is not the container's output
        return _runtime_error(cdir / "runtime.log") or f"runtime exited with status {res.returncode}"
    return int((cdir / "pid").read_text().strip())


class _Reaper:
    """Exit statuses of the monitor's children, all reaped by one thread.

    The monitor is a subreaper: besides the container's process, the orphans of every
    `runc exec` of a health probe become its children, and a container's init cannot
    finish exiting while a zombie of its pid namespace waits to be reaped. So the main
    thread reaps every child (`wait(-1)`), and a probe thread gets its `runc exec`'s
    status from here instead of waiting for it itself.
    """

    def __init__(self) -> None:
        self._statuses: dict[int, int] = {}
        self._cond = threading.Condition()

    def reap_until(self, pid: int) -> int:
        """Reap children until `pid` exits; its status (128+signal when killed)."""
        while True:
            try:
                reaped, wstatus = os.waitpid(-1, 0)
            except ChildProcessError:
                return LOST_EXIT_CODE  # cannot happen while it is our child; be safe
            except InterruptedError:
                continue
            status = os.waitstatus_to_exitcode(wstatus)
            status = 128 - status if status < 0 else status
            if reaped == pid:
                return status
            with self._cond:
                self._statuses[reaped] = status
                self._cond.notify_all()

    def status_of(self, pid: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while pid not in self._statuses:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._statuses.pop(pid)


def _await_restart(store: Store, cid: str, status: int, delay: float) -> bool:
    """Record the exit, show `Restarting`, wait out the backoff; False if stopped meanwhile."""
    with _container_lock(store, cid) as present:
        c = _read(store, cid) if present else None
        if c is None:
            return False
        c.oom_killed = limitsmod.oom_kills(_cgroups_path(c)) > 0
        _runc(c, "delete", "-f", c.runc_id)
        c.status, c.exit_code, c.finished = "restarting", status, _now()
        c.restart_count += 1
        _write(store, c)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        c = _read(store, cid)
        if c is None or c.stopped_by_user:
            return False
        time.sleep(min(_POLL_S, max(deadline - time.monotonic(), 0)))
    return True


def _monitor(root: Path, cid: str, ready_fd: int) -> int:
    """The detached container's parent: start it, wait for it, restart it by its policy,
    probe its health, record its exit and free its network."""
    store = Store(root)
    c = _read(store, cid)
    if c is None:
        return 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _report(ready_fd, {"error": "cannot become a child subreaper"})
        _finish(store, cid, None)
        return 1
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(s, signal.SIG_IGN)
    try:
        held = _bring_up(store, c)
    except PybuildError as e:
        _report(ready_fd, {"error": str(e), "network": True})
        _finish(store, cid, None)
        return 1
    policy = restartmod.parse(c.restart_policy)
    delay = 0.0
    first = True
    status: int | None = None
    try:
        while True:
            outcome = _run_detached_once(store, c)
            if isinstance(outcome, str):
                if first:
                    _report(ready_fd, {"error": outcome})
                _finish(store, cid, None, error=outcome)
                return 1
            _mark_running(store, cid, outcome, _me())
            if first:
                _report(ready_fd, {"pid": outcome})
                first = False
            began = time.monotonic()
            reaper = _Reaper()
            prober = _HealthProber(store, cid, reaper)
            prober.start()
            status = reaper.reap_until(outcome)
            prober.stop()
            current = _read(store, cid)
            if current is None or not restartmod.should_restart(
                    policy, status, current.restart_count, current.stopped_by_user):
                break
            delay = restartmod.next_delay(delay, time.monotonic() - began)
            if not _await_restart(store, cid, status, delay):
                status = None
                break
            c = _read(store, cid) or c
    finally:
        _finish(store, cid, status)
        netmod.close_all(held)
    return 0


# ---------------------------------------------------------------------------- health
class _HealthProber:
    """Runs a container's HEALTHCHECK in a thread of the process that owns the container."""

    def __init__(self, store: Store, cid: str, reaper: _Reaper | None = None) -> None:
        self.store, self.cid, self.reaper = store, cid, reaper
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        c = _read(self.store, self.cid)
        if c is None or not c.healthcheck:
            return
        config = healthmod.HealthConfig(**c.healthcheck)
        self._thread = threading.Thread(target=self._loop, args=(config,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_RECORD_TIMEOUT)

    def _loop(self, config: healthmod.HealthConfig) -> None:
        began = time.monotonic()
        while not self._stop.wait(config.interval_s):
            c = _read(self.store, self.cid)
            if c is None or c.status != "running":
                return
            start = _now()
            since = time.monotonic() - began
            code, output = _probe(self.store, c, config, self.reaper)
            with _container_lock(self.store, self.cid) as present:
                cur = _read(self.store, self.cid) if present else None
                if cur is None or cur.status != "running" or self._stop.is_set():
                    return
                state = healthmod.HealthState(**cur.health) if cur.health else healthmod.HealthState()
                state = healthmod.record(state, config, exit_code=code, output=output,
                                         start=start, end=_now(), since_start=since)
                cur.health = asdict(state)
                _write(self.store, cur)


def _probe(store: Store, c: Container, config: healthmod.HealthConfig,
           reaper: _Reaper | None) -> tuple[int, str]:
    """One probe through `runc exec`; docker's -1 and message when it times out.

    In the monitor, the probe's status comes from the monitor's reaper (see _Reaper).
    """
    argv = healthmod.probe_argv(config.test)
    pid_file = container_dir(store, c.id) / f"probe.{threading.get_ident()}.pid"
    cmd = _exec_argv(c, argv, pid_file=pid_file)
    deadline = time.monotonic() + config.timeout_s
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = b""
    timed_out = False
    try:
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                break
            output += chunk
        if timed_out:
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            proc.kill()
        left = max(deadline - time.monotonic(), 0) + _RECORD_TIMEOUT
        if reaper is not None:
            status = reaper.status_of(proc.pid, left)
        else:
            try:
                status = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                status = None
        proc.returncode = status if status is not None else -1  # nobody else waits for it
    finally:
        proc.stdout.close()
        pid_file.unlink(missing_ok=True)
    if timed_out:
        return -1, f"Health check exceeded timeout ({config.timeout_s:g}s)"
    return (status if status is not None else -1), output.decode(errors="replace")


def _exec_argv(c: Container, argv: list[str], *, pid_file: Path | None = None, tty: bool = False,
               env: list[str] | None = None, user: tuple[int, int, list[int]] | None = None,
               cwd: str | None = None, interactive: bool = False) -> list[str]:
    """`runc exec` of `argv` in the running container; the container's process settings
    (env, user, cwd, capabilities) unless overridden."""
    binary = runtime.find_runtime(c.runtime)
    cmd = [binary, "--root", str(_runc_root(binary)), "exec"]
    if pid_file is not None:
        cmd += ["--pid-file", str(pid_file)]
    if tty:
        cmd.append("--tty")
    for e in env or []:
        cmd += ["--env", e]
    if user is not None:
        cmd += ["--user", f"{user[0]}:{user[1]}"]
        for g in user[2]:
            cmd += ["--additional-gids", str(g)]
    if cwd:
        cmd += ["--cwd", cwd]
    return cmd + [c.runc_id] + list(argv)


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
        if c is None or c.status not in ("running", "restarting"):
            return True
        if not _owner_alive(c) and _runc_status(c) not in ("running", "paused", "created"):
            _finish(store, cid, None)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def _mark_stopped_by_user(store: Store, cid: str, value: bool = True) -> None:
    """A container stopped or killed by hand is not restarted by its policy."""
    with _container_lock(store, cid) as present:
        c = _read(store, cid) if present else None
        if c is not None and c.stopped_by_user != value:
            c.stopped_by_user = value
            _write(store, c)


def stop(store: Store, c: Container, timeout: float = DEFAULT_STOP_TIMEOUT) -> Container:
    """Send the image's STOPSIGNAL, SIGKILL after `timeout` seconds; wait for the exit."""
    c = refresh(store, c)
    if c.status not in ("running", "restarting"):
        return c
    _mark_stopped_by_user(store, c.id)
    if c.status == "running":
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
    if c.status in ("running", "restarting"):
        if not force:
            raise PybuildError(f"You cannot remove a running container {c.id}. Stop the "
                               "container before attempting removal or force remove")
        _mark_stopped_by_user(store, c.id)
        _runc(c, "kill", c.runc_id, "KILL")
        _wait_exited(store, c.id, _RECORD_TIMEOUT)
    with _container_lock(store, c.id) as present:
        if present:
            _destroy(store, _read(store, c.id) or c)


def start(store: Store, c: Container) -> Container:
    """Start a created or stopped container in the background (a running one: nothing)."""
    c = refresh(store, c)
    if c.status in ("running", "restarting"):
        return c
    _mark_stopped_by_user(store, c.id, False)
    cdir = container_dir(store, c.id)
    if not os.path.ismount(cdir / "merged"):
        missing = [p for p in c.lowers if not os.path.isdir(p)]
        if missing:
            raise PybuildError(f"cannot start container {c.name}: its image's layers are gone "
                               f"({missing[0]})")
        _mount_rootfs(Snapshotter(store), cdir, [Path(p) for p in c.lowers])
    try:
        return start_detached(store, c)
    except BaseException:
        current = _read(store, c.id)
        if current is not None and current.status != "running":
            _unmount(cdir / "merged")
        raise


def restart(store: Store, c: Container, timeout: float = DEFAULT_STOP_TIMEOUT) -> Container:
    return start(store, stop(store, c, timeout))


def wait(store: Store, c: Container) -> int:
    """Block until the container is not running; its exit code (docker wait)."""
    while True:
        current = _read(store, c.id)
        if current is None:
            raise PybuildError(f"No such container: {c.id}")
        current = refresh(store, current)
        if current.status not in ("running", "created") or (
                current.status == "created" and current.exit_code is not None):
            return current.exit_code if current.exit_code is not None else 0
        time.sleep(_POLL_S * 2)


def kill(store: Store, c: Container, sig: str = "KILL") -> None:
    """Send a signal to the container's process (docker kill)."""
    signum = parse_signal(sig)
    c = refresh(store, c)
    if c.status != "running":
        raise PybuildError(f"Cannot kill container: {c.name}: Container {c.id} is not running")
    _mark_stopped_by_user(store, c.id)
    res = _runc(c, "kill", c.runc_id, signum.name.removeprefix("SIG"))
    if res.returncode != 0:
        raise PybuildError(f"Cannot kill container: {c.name}: "
                           f"{res.stderr.decode(errors='replace').strip()}")


def exec_argv(store: Store, c: Container, argv: list[str], *, tty: bool, env: list[str],
              user: str | None, workdir: str | None) -> list[str]:
    """The `runc exec` command line for `pybuild exec`; the container must be running."""
    c = refresh(store, c)
    if c.status != "running":
        raise PybuildError(f"Container {c.id} is not running")
    if not argv:
        raise PybuildError("exec needs a command to run")
    if workdir is not None and not workdir.startswith("/"):
        raise PybuildError(f"the working directory '{workdir}' is invalid, it needs to be an "
                           "absolute path")
    ids = resolve_user(container_dir(store, c.id) / "merged", user) if user else None
    return _exec_argv(c, argv, tty=tty, env=env, user=ids, cwd=workdir)


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
    """STATUS as docker ps shows it: Up 5 seconds (healthy), Exited (0) 3 minutes ago,
    Restarting (1) 2 seconds ago, Created."""
    now = now or datetime.now(UTC)
    if c.status == "running":
        up = f"Up {human_duration((now - parse_time(c.started or c.created)).total_seconds())}"
        if c.health:
            state = str(c.health.get("status", "starting"))
            up += " (health: starting)" if state == "starting" else f" ({state})"
        return up
    if c.status in ("exited", "restarting"):
        ago = human_duration((now - parse_time(c.finished or c.created)).total_seconds())
        word = "Exited" if c.status == "exited" else "Restarting"
        return f"{word} ({c.exit_code}) {ago} ago"
    return "Created"


def ports_text(c: Container) -> str:
    """PORTS as docker ps shows it, for a running container's published ports."""
    if c.status != "running" or not c.attachment:
        return ""
    return netmod.describe(netmod.Attachment(**c.attachment).port_mappings())


def _docker_time(stamp: str) -> str:
    return stamp or "0001-01-01T00:00:00Z"


def inspect(store: Store, c: Container) -> dict[str, Any]:
    """`docker inspect`'s view of a container (the fields pybuild has)."""
    cdir = container_dir(store, c.id)
    try:
        oci = json.loads((cdir / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        oci = {"process": {}, "linux": {}}
    process = oci.get("process") or {}
    lim = limitsmod.Limits(**c.limits)
    att = netmod.Attachment(**c.attachment) if c.attachment else None
    requested = [netmod.PortMapping(**p) for p in c.ports]
    bindings: dict[str, list[dict[str, str]]] = {}
    for m in requested:
        bindings.setdefault(m.key(), []).append(
            {"HostIp": m.host_ip, "HostPort": str(m.host_port) if m.host_port else ""})
    live: dict[str, list[dict[str, str]] | None] = {m.key(): None for m in requested}
    for m in att.port_mappings() if att else []:
        entry = live.get(m.key()) or []
        entry.append({"HostIp": m.host_ip or "0.0.0.0", "HostPort": str(m.host_port)})
        live[m.key()] = entry
    networks: dict[str, Any] = {}
    if c.network not in ("host", "none") and not c.network.startswith("container:"):
        networks[c.network] = {
            "Aliases": att.aliases if att else list(c.aliases),
            "NetworkID": att.network_id if att else "",
            "Gateway": att.gateway if att else "",
            "IPAddress": att.ip if att else "",
            "IPPrefixLen": att.prefix_len if att else 0,
            "MacAddress": att.mac if att else "",
        }
    elif not c.network.startswith("container:"):
        networks[c.network] = {"Aliases": None, "NetworkID": "", "Gateway": "", "IPAddress": "",
                               "IPPrefixLen": 0, "MacAddress": ""}
    state: dict[str, Any] = {
        "Status": c.status, "Running": c.status == "running", "Paused": False,
        "Restarting": c.status == "restarting", "OOMKilled": c.oom_killed, "Dead": False,
        "Pid": c.pid if c.status == "running" else 0,
        "ExitCode": c.exit_code if c.exit_code is not None else 0, "Error": c.error,
        "StartedAt": _docker_time(c.started), "FinishedAt": _docker_time(c.finished),
    }
    if c.healthcheck:
        h = healthmod.HealthState(**c.health) if c.health else healthmod.HealthState()
        state["Health"] = {"Status": h.status, "FailingStreak": h.failing_streak, "Log": h.log}
    policy = restartmod.parse(c.restart_policy)
    check = healthmod.HealthConfig(**c.healthcheck) if c.healthcheck else None
    return {
        "Id": c.id, "Created": c.created, "Path": c.command[0], "Args": c.command[1:],
        "State": state, "Image": c.image_id, "Name": "/" + c.name,
        "RestartCount": c.restart_count, "Driver": "overlay", "Platform": "linux",
        "HostnamePath": str(cdir / "hostname"), "HostsPath": str(cdir / "hosts"),
        "ResolvConfPath": str(cdir / "resolv.conf"), "LogPath": str(cdir / "log"),
        "HostConfig": {
            "NetworkMode": c.network, "PortBindings": bindings,
            "RestartPolicy": {"Name": policy.name, "MaximumRetryCount": policy.maximum_retry},
            "AutoRemove": c.auto_remove, "Dns": list(c.dns),
            "ExtraHosts": [f"{h[0]}:{h[1]}" for h in c.add_hosts] or None,
            "Memory": lim.memory, "MemorySwap": lim.memory_swap, "NanoCpus": lim.nano_cpus,
            "CpuShares": lim.cpu_shares, "PidsLimit": lim.pids_limit or None,
        },
        "Config": {
            "Hostname": c.hostname, "Env": process.get("env") or [], "Cmd": c.command,
            "Image": c.image, "WorkingDir": process.get("cwd", "/"),
            "ExposedPorts": {m.key(): {} for m in requested} or None,
            "Healthcheck": {"Test": check.test, "Interval": check.interval,
                            "Timeout": check.timeout, "StartPeriod": check.start_period,
                            "Retries": check.retries} if check else None,
            "StopSignal": c.stop_signal,
        },
        "NetworkSettings": {
            "Ports": live, "Networks": networks,
            "SandboxKey": att.netns if att else "",
            "IPAddress": "", "Gateway": "", "MacAddress": "",
        },
    }


def usage(store: Store, c: Container) -> limitsmod.Usage | None:
    """One cgroup reading of a running container (None once it stopped)."""
    current = _read(store, c.id)
    if current is None or refresh(store, current).status != "running":
        return None
    return limitsmod.usage(_cgroups_path(current), current.pid)


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
