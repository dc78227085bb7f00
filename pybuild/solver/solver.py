"""The solver: the stage graph → typed ops (ops.py) → cache hit or run on the worker.

This is the only module that combines the others. Stages are vertices of the scheduler
(scheduler.py): every stage whose inputs are ready builds at once, at most `--jobs`
doing work at a time, and a stage that several others read is built once. Steps go
through the worker seam (worker.py), so the solver runs without root on a fake worker. Metadata instructions (ENV, LABEL,
USER, …) change the image config and history; RUN, COPY, ADD and WORKDIR change the
filesystem and are cached. As in BuildKit, a step's key depends only on what the step
can see: its parent filesystem, its own expanded instruction, the env/args/user/cwd it
runs with, and for COPY/ADD the content of every source — so a LABEL change does not
invalidate a later RUN, but an ARG the RUN can see does.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pybuild import fs
from pybuild import image as imagemod
from pybuild import runtime
from pybuild.context import BuildContext, DigestMemo
from pybuild.dockerfile import ShellLex, parse, stages
from pybuild.dockerfile import instructions as ins
from pybuild.errors import Cancelled, DockerfileError, PybuildError, StepError
from pybuild import platforms
from pybuild.platforms import host_platform, platform_string
from pybuild.progress import BuildSummary, Progress, SourceExcerpt
from pybuild.reference import parse_reference
from pybuild.solver import history as hist
from pybuild.solver import ops, remote_cache, run_options
from pybuild.solver.named_contexts import NamedContexts
from pybuild.solver.cache import Cache, Record, explain, key_path
from pybuild.solver.mounts import MountPreparer, SecretSource, bind_key, mounts_key
from pybuild.solver.scheduler import Future, Scheduler
from pybuild.solver.worker import RealWorker, Snapshot, Worker
from pybuild.store import Descriptor, Store, canonical_json

if TYPE_CHECKING:
    from pybuild.solver.incremental import IncrementalCopy

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ["/bin/sh", "-c"]
PROXY_ARGS = {"HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY",
              "http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"}
EMPTY_KEY = ops.Scratch().key()
# The parent of every COPY --link: its layer does not depend on what it lands on.
LINK_PARENT = ops.digest_of({"v": ops.KEY_VERSION, "source": "link"})
ENTITLEMENTS = ("security.insecure",)




@dataclass
class BuildOptions:
    """Everything `pybuild build` was asked to do."""

    context: Path
    dockerfile: Path
    dockerfile_name: str = "Dockerfile"
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    no_cache_filter: list[str] = field(default_factory=list)
    network: str = "host"
    secrets: dict[str, SecretSource] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    compression: str = "gzip"
    source_date_epoch: int | None = None
    explain: bool = False
    pull: bool = False
    cache_from: list[Any] = field(default_factory=list)
    cache_to: list[Any] = field(default_factory=list)
    # Makes the RegistryClient with the user's TLS/insecure flags; called only when a build
    # talks to a registry, so local builds never import the HTTP stack.
    registry: Any = None
    jobs: int | None = None  # vertices doing work at once; None: the CPU count
    allow: list[str] = field(default_factory=list)  # entitlements (--allow security.insecure)
    # --build-context NAME=...: pybuild.solver.named_contexts.NamedContext by name
    contexts: dict[str, Any] = field(default_factory=dict)
    # --add-host (host, ip), --ulimit (rlimit type, soft, hard), --shm-size (bytes)
    extra_hosts: list[tuple[str, str]] = field(default_factory=list)
    ulimits: list[tuple[str, int, int]] = field(default_factory=list)
    shm_size: int | None = None
    ssh: Any = None  # pybuild.solver.ssh.Agents for --ssh, or None
    platform: dict[str, str] | None = None  # the target platform; None: this machine's


@dataclass
class StageState:
    """The image being built by one stage, instruction by instruction."""

    stage: Any
    config: dict[str, Any]
    history: list[dict[str, Any]]
    layers: list[Descriptor]
    diff_ids: list[str]
    key: str
    base: str | None
    author: str | None = None
    cmd_set: bool = False
    step: int = 0
    steps_total: int = 0
    records: list[Record] = field(default_factory=list)
    # BuildKit's state env: the image ENV, then every ENV and valued ARG in order, the later
    # write winning. Expansion and RUN see this; the image config only gets ENV.
    vars: dict[str, str] = field(default_factory=dict)
    from_arg: set[str] = field(default_factory=set)  # names whose latest write was an ARG
    arg_decls: list[str] = field(default_factory=list)  # every ARG name, in order, repeats kept
    own_history: int = -1  # index of the first history entry this build made
    platform: dict[str, str] = field(default_factory=host_platform)  # what its steps run as

    def __post_init__(self) -> None:
        if self.own_history < 0:
            self.own_history = len(self.history)
        if not self.vars:
            self.vars = dict(e.partition("=")[::2] for e in self.config.get("Env") or [])

    def env_map(self) -> dict[str, str]:
        """What word expansion and RUN see (a copy)."""
        return dict(self.vars)


@dataclass
class BuildResult:
    manifest: Descriptor
    image_id: str
    tags: list[str]
    steps_run: int
    steps_cached: int
    layers: list[tuple[int, str]]
    steps: list[dict[str, Any]] = field(default_factory=list)  # name, cached, seconds
    # the base images it used: (canonical reference, manifest digest), for provenance
    materials: list[tuple[str, str]] = field(default_factory=list)
    # this build wrote the image's config (no image with this ID was in the store before):
    # what a local/tar-only build may take out again (exporters.discard_image)
    new_image: bool = False
    # a multi-platform build: each platform's own result, in --platform order
    platforms: list[BuildResult] = field(default_factory=list)


class Solver:
    """Builds the stages of one plan into the store."""

    def __init__(self, opts: BuildOptions, progress: Progress, *,
                 worker: Callable[[Store], Worker] | None = None,
                 shared: Solver | None = None) -> None:
        self.opts = opts
        self.progress = progress
        self.text = ""
        self.lex = ShellLex()
        self.states: dict[int, StageState] = {}  # finished stages, for --cache-to mode=max
        self.steps_run = 0
        self.steps_cached = 0
        self.timings: list[dict[str, Any]] = []
        self._make_worker = worker or RealWorker
        self._registry_client: Any = None
        self._vids = itertools.count(1)
        self._lock = threading.Lock()
        self._ops: dict[str, Future[Record]] = {}  # ops running now, by key: each runs once
        self._hits: list[str] = []
        self._materials: dict[str, str] = {}
        self._now = self._timestamp()
        self.sched = Scheduler(opts.jobs)
        self.target_platform = opts.platform or host_platform()
        self._ns = platform_string(self.target_platform)  # its vertices in a shared scheduler
        self.multi = False  # one of several platforms: step names say which
        if shared is not None:  # one build for several platforms: one scheduler, and an op
            self.sched = shared.sched  # running for one platform is waited for by another
            self._ops = shared._ops  # with the same key (a stage shared by all platforms)
            self._lock = shared._lock
            self._vids = shared._vids
            self._now = shared._now

    # ----- entry -------------------------------------------------------------------
    def load(self) -> Any:
        """Read and plan the Dockerfile; every error here leaves the store untouched."""
        try:
            self.text = self.opts.dockerfile.read_text()
        except FileNotFoundError:
            raise PybuildError(f"failed to read {self.opts.dockerfile_name}: no such file "
                               f"({self.opts.dockerfile})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PybuildError(f"failed to read {self.opts.dockerfile_name}: {e}") from None
        df = parse(self.text)
        self.stage_count = sum(1 for n in df.nodes if n.name == "from")
        self.lex = ShellLex(df.escape)
        self.display_lex = ShellLex(df.escape, raw_quotes=True, skip_unset_env=True)
        plan = stages.plan(df, self.opts.build_args, self.opts.target, self.opts.platform)
        self.plan = plan
        self.ctx = BuildContext(self.opts.context, self.opts.dockerfile)
        # plan.warnings (empty continuation lines) are reported by the build checks
        # (NoEmptyContinuation), which the command line runs after load().
        if plan.unused_build_args:
            self.progress.warning("One or more build-args [" + " ".join(sorted(plan.unused_build_args))
                                  + "] were not consumed")
        for a in self.opts.allow:
            if a not in ENTITLEMENTS:
                raise PybuildError(f"--allow {a}: unknown entitlement (pybuild knows "
                                   f"{', '.join(ENTITLEMENTS)})")
        self._preflight(plan)
        return plan

    def build(self, store: Store) -> BuildResult:
        """Build the target; call after load(), which touches nothing on disk."""
        with store.gc_lock(shared=True):
            try:
                return self.sched.run("build", lambda: self._build(store))
            finally:
                if self._hits:
                    self.cache.hits(self._hits)

    def _build(self, store: Store) -> BuildResult:
        plan = self.plan
        self.store = store
        self.named = NamedContexts(self.opts.contexts, store,
                                   lambda ref: self._resolve_image(parse_reference(ref), 0))
        self.ctx.memo = DigestMemo(lambda: store.db)  # context digests kept across builds
        wanted = []
        for st in plan.stages:  # "load metadata": a missing base fails before any write
            if st.base_stage is None and st.base != "scratch" and not self.named.has(st.base):
                wanted.append((parse_reference(st.base), st.from_line))
        for ref, line in wanted:  # all at once
            self._image_future(ref, line)
        for ref, line in wanted:
            self._resolve_image(ref, line)
        self.worker = self._make_worker(store)
        self.cache = Cache(store)
        self.remote: dict[str, tuple[Any, Record]] = {}
        self.remote_layers: dict[str, tuple[Any, Record]] = {}
        for spec in self.opts.cache_from:
            for key, rec in remote_cache.load(store, spec, self._client(None)).items():
                self.remote.setdefault(key, (spec, rec))
        # what killed builds left goes, alongside the cache lookups; waited for before
        # this build mounts anything (`_cleanup_once`)
        self.sched.once(("cleanup",), self.worker.cleanup_stale)
        state = self._stage(plan.target.index)
        return self._export(state)

    # ----- preflight ---------------------------------------------------------------
    def _preflight(self, plan: Any) -> None:
        """Fail on missing context sources and refused flags before anything is written."""
        for st in plan.stages:
            self._check_platform(st)
            args = dict(plan.meta_args)
            for i in st.instructions:
                self._check_flags(i)
                if isinstance(i, ins.Arg):
                    for name, default in i.args:
                        if name in self.opts.build_args:
                            args[name] = self.opts.build_args[name]
                        elif default is not None:
                            args[name] = default
                if not isinstance(i, (ins.Copy, ins.Add)) or i.from_ or i.heredocs:
                    continue
                srcs = []
                for s in i.sources:
                    if "$" in s:
                        break  # may need the image's ENV: checked when the step runs
                    srcs.append(s)
                else:
                    from pybuild.solver.copy import check_add_sources

                    kinds = check_add_sources(isinstance(i, ins.Add), srcs,
                                              getattr(i, "checksum", None), i.line)
                    local = [s for s, ref in kinds if ref is None and not _is_url(s)]
                    if local:
                        self.ctx.resolve_sources(local, i.line)

    def _check_platform(self, st: Any) -> None:
        """FROM --platform names a platform pybuild knows (run natively or emulated)."""
        self._stage_platform(st)

    def _stage_platform(self, st: Any) -> dict[str, str]:
        """What a stage's steps run as: its FROM --platform, else the target platform."""
        if not st.platform:
            return self.target_platform
        try:
            return platforms.parse_platform(st.platform)
        except PybuildError as e:
            raise DockerfileError(f"FROM --platform={st.platform}: {e}", st.from_line) from None

    def _check_flags(self, i: Any) -> None:
        """Flags pybuild cannot honour are refused, never ignored."""
        if isinstance(i, ins.Run) and (i.security or "sandbox") == "insecure" \
                and "security.insecure" not in self.opts.allow:
            raise DockerfileError("RUN --security=insecure needs the security.insecure "
                                  "entitlement: pass --allow security.insecure", i.line)

    # ----- stages ------------------------------------------------------------------
    def _stage(self, index: int) -> StageState:
        """A stage's final state: built once (on its own thread), however many ask."""
        return self.sched.wait(self._stage_future(index))

    def _stage_future(self, index: int) -> Future[StageState]:
        return self.sched.once(("stage", self._ns, index), lambda: self._build_stage(index))

    def _build_stage(self, index: int) -> StageState:
        st = next((s for s in self.plan.stages if s.index == index), None)
        if st is None:
            raise PybuildError(f"stage {index} is not part of the build plan")
        for dep in sorted(st.deps):  # what COPY --from / RUN --mount from= read: started now,
            if dep != index:         # waited for only where needed
                self._stage_future(dep)
        state = self._base(st)
        triggers = []
        for text in state.config.get("OnBuild") or []:
            node = parse(text).nodes[0]
            node.start_line = node.end_line = st.from_line
            triggers.append(ins.from_node(node))
        state.config["OnBuild"] = None
        todo = triggers + list(st.instructions)
        state.steps_total = 1 + sum(1 for i in todo if _is_fs_step(i))
        for instr in todo:
            self.sched.check()
            self._dispatch(state, instr)
        with self._lock:
            self.states[index] = state
        return state

    def _base(self, st: Any) -> StageState:
        vid = self._vertex()
        name = self._step_name(st, 1, None, f"FROM {st.base}")
        plat = self._stage_platform(st)
        if st.base_stage is not None and not self.named.has(st.base):
            parent = self._stage(st.base_stage)
            plat = parent.platform if not st.platform else plat
            self.progress.vertex_started(vid, name)
            self.progress.vertex_done(vid)
            state = StageState(st, json.loads(json.dumps(parent.config)), list(parent.history),
                               list(parent.layers), list(parent.diff_ids), parent.key, parent.base,
                               author=parent.author, records=list(parent.records),
                               own_history=parent.own_history, platform=plat)
        elif st.base == "scratch":
            self.progress.vertex_started(vid, name)
            self.progress.vertex_done(vid)
            # BuildKit's empty image: default PATH and WorkingDir "/"
            state = StageState(st, {"Env": [DEFAULT_PATH], "WorkingDir": "/"}, [], [], [],
                               EMPTY_KEY, None, platform=plat)
        else:
            ref = parse_reference(st.base)
            # BuildKit names the step by the normalised reference, with a tag only if given
            given = "@" in st.base or ":" in st.base.rsplit("/", 1)[-1]
            name = self._step_name(st, 1, None, f"FROM {ref.canonical if given else ref.full_name}")
            self.progress.vertex_started(vid, name)
            img = self.named.image(st.base) or self._resolve_image(ref, st.from_line, plat)
            self.progress.vertex_done(vid)
            cfg = json.loads(json.dumps(img.config.get("config") or {}))
            if not any(e.startswith("PATH=") for e in cfg.get("Env") or []):
                cfg["Env"] = [DEFAULT_PATH] + list(cfg.get("Env") or [])
            digest = img.manifest_desc.digest
            state = StageState(st, cfg, list(img.config.get("history") or []), list(img.layers),
                               list(img.diff_ids), ops.ImageSource(ref.familiar, digest).key(),
                               digest, author=img.config.get("author"), platform=plat)
        return state

    def _resolve_image(self, ref: Any, line: int, plat: dict[str, str] | None = None) -> Any:
        """An image from the store, pulled first when missing (or always with --pull)."""
        return self.sched.wait(self._image_future(ref, line, plat))

    def _image_future(self, ref: Any, line: int, plat: dict[str, str] | None = None
                      ) -> Future[Any]:
        plat = plat or self.target_platform
        return self.sched.once(("image", ref.familiar, platform_string(plat)),
                               lambda: self._material(ref, line, plat))

    def _material(self, ref: Any, line: int, plat: dict[str, str]) -> Any:
        img = self._load_image(ref, line, plat)
        with self._lock:
            self._materials[ref.canonical] = img.manifest_desc.digest
        return img

    def _load_image(self, ref: Any, line: int, plat: dict[str, str]) -> Any:
        local = ""  # why the store's image does not serve (another platform's, say)
        if not self.opts.pull:
            try:
                return imagemod.load(self.store, ref.familiar, platform=plat)
            except PybuildError as e:
                local = "" if str(e).startswith("No such image") else f"{e}; "
        vid = self._vertex()
        self.progress.vertex_started(vid, f"[internal] load metadata for {ref.canonical}")
        try:
            from pybuild import registry

            with self.sched.slot():
                desc = registry.pull(self.store, ref.canonical, client=self._client(vid),
                                     platform=plat)
        except PybuildError as e:
            if isinstance(e, Cancelled):
                raise
            try:  # offline with --pull: fall back to what the store has, as docker does
                if self.opts.pull:
                    img = imagemod.load(self.store, ref.familiar, platform=plat)
                    self.progress.warning(f"--pull: {e}; using the local {ref.familiar}")
                    self.progress.vertex_done(vid)
                    return img
            except PybuildError:
                pass
            self.progress.vertex_error(vid, str(e))
            raise DockerfileError(f"failed to resolve base image {ref.familiar}: {local}{e} (import "
                                  f"it with `pybuild import ROOTFS.tar {ref.familiar}`, or pull "
                                  f"it from a registry you can reach)", line) from None
        self.progress.vertex_done(vid)
        return imagemod.load(self.store, desc.digest, platform=plat)

    def _client(self, vid: str | None) -> Any:
        """The user's registry client (made once), reporting transfers on vertex `vid`: a
        view of it per call, so concurrent pulls each report on their own vertex."""
        with self._lock:
            if self._registry_client is None:
                from pybuild.registry import RegistryClient

                self._registry_client = (self.opts.registry() if self.opts.registry
                                         else RegistryClient())
        client = self._registry_client
        if vid is None:
            return client.with_progress(None)
        return client.with_progress(
            lambda label, cur, total: self.progress.transfer(vid, label, cur, total))

    # ----- dispatch ----------------------------------------------------------------
    def _dispatch(self, s: StageState, i: Any) -> None:
        env = s.env_map()
        if isinstance(i, ins.Arg):
            self._arg(s, i, env)
            return
        e = i.expand(self.lex, env)
        cfg = s.config
        if isinstance(e, ins.Env):
            for k, v in e.pairs:
                cfg["Env"] = _set_env(cfg.get("Env") or [], k, v)
                s.vars.pop(k, None)  # the step env moves it last (llb's AddOrReplace)
                s.vars[k] = v
                s.from_arg.discard(k)
            self._meta(s, "ENV " + " ".join(f"{k}={v}" for k, v in e.pairs))
        elif isinstance(e, ins.Label):
            labels = cfg.get("Labels") or {}
            for k, v in e.pairs:
                labels[k] = v
            cfg["Labels"] = labels
            self._meta(s, "LABEL " + " ".join(f"{k}={v}" for k, v in e.pairs))
        elif isinstance(e, ins.Maintainer):
            s.author = e.name
            self._meta(s, f"MAINTAINER {e.name}")
        elif isinstance(e, ins.Expose):
            ports = [q for p in e.ports for q in _ports(p, i.line)]
            exposed = cfg.get("ExposedPorts") or {}
            for p in ports:
                exposed[p] = {}
            cfg["ExposedPorts"] = exposed
            self._meta(s, hist.exposed(ports))
        elif isinstance(e, ins.Volume):
            vols = cfg.get("Volumes") or {}
            for v in e.paths:
                if not v.strip():
                    raise DockerfileError("VOLUME specified can not be an empty string", i.line)
                vols[v] = {}
            cfg["Volumes"] = vols
            self._meta(s, f"VOLUME {hist.go_list(list(e.paths))}")
        elif isinstance(e, ins.User):
            cfg["User"] = e.user
            self._meta(s, f"USER {e.user}")
        elif isinstance(e, ins.StopSignal):
            cfg["StopSignal"] = e.signal
            self._meta(s, f"STOPSIGNAL {e.signal}")
        elif isinstance(e, ins.Healthcheck):
            self._healthcheck(s, e)
        elif isinstance(e, ins.Shell):
            cfg["Shell"] = list(e.command)
            self._meta(s, f"SHELL {hist.go_list(list(e.command))}")
        elif isinstance(e, ins.Onbuild):
            # BuildKit records no history entry for ONBUILD.
            cfg["OnBuild"] = list(cfg.get("OnBuild") or []) + [e.expression]
        elif isinstance(e, (ins.Cmd, ins.Entrypoint)):
            self._cmd(s, e)
        elif isinstance(e, ins.Workdir):
            self._workdir(s, e)
        elif isinstance(e, ins.Run):
            self._run(s, i)
        elif isinstance(e, (ins.Copy, ins.Add)):
            self._copy(s, e, i)
        elif isinstance(e, ins.From):
            raise DockerfileError("FROM is not allowed here", i.line)
        else:
            raise DockerfileError(f"unsupported instruction {type(e).__name__.upper()}", i.line)

    def _arg(self, s: StageState, i: Any, env: dict[str, str]) -> None:
        """--build-arg, else the default (expanded), else the global ARG's value."""
        parts = []
        for name, default in i.args:
            expanded = self.lex.expand(default, env) if default is not None else None
            value: str | None
            if name in self.opts.build_args:
                value = self.opts.build_args[name]
            elif expanded is not None:
                value = expanded
            else:
                value = self.plan.meta_args.get(name)
            if value is not None:
                s.vars.pop(name, None)
                s.vars[name] = value
                s.from_arg.add(name)
                env[name] = value
            s.arg_decls.append(name)
            parts.append(name if expanded is None else f"{name}={expanded}")
        self._meta(s, "ARG " + " ".join(parts))

    def _healthcheck(self, s: StageState, e: Any) -> None:
        if e.test is None or e.test == ["NONE"]:
            s.config["Healthcheck"] = {"Test": ["NONE"]}
            self._meta(s, 'HEALTHCHECK &{["NONE"] "0s" "0s" "0s" \'\\x00\'}')
            return
        hc: dict[str, Any] = {"Test": list(e.test)}
        for key, val in (("Interval", e.interval), ("Timeout", e.timeout),
                         ("StartPeriod", e.start_period), ("StartInterval", getattr(e, "start_interval", 0)),
                         ("Retries", e.retries)):
            if val:
                hc[key] = val
        s.config["Healthcheck"] = hc
        self._meta(s, hist.healthcheck(list(e.test), e.interval or 0, e.timeout or 0,
                                       e.start_period or 0, e.retries or 0))

    def _cmd(self, s: StageState, e: Any) -> None:
        if e.exec_form:
            argv = list(e.command)
        else:
            argv = list(s.config.get("Shell") or DEFAULT_SHELL) + [e.command]
        if isinstance(e, ins.Entrypoint):
            s.config["Entrypoint"] = argv
            # Docker: ENTRYPOINT clears a CMD inherited from the base, not one set in this stage.
            if not s.cmd_set:
                s.config["Cmd"] = None
            self._meta(s, f"ENTRYPOINT {hist.go_quoted_list(argv)}")
        else:
            s.config["Cmd"] = argv
            s.config["ArgsEscaped"] = True  # BuildKit sets it for every CMD, never for ENTRYPOINT
            s.cmd_set = True
            self._meta(s, f"CMD {hist.go_quoted_list(argv)}")

    def _meta(self, s: StageState, created_by: str) -> None:
        # "created" is filled at export from the neighbouring layers' times (see _timestamps)
        s.history.append({"created": None, "created_by": created_by,
                          "comment": hist.COMMENT, "empty_layer": True})

    # ----- filesystem steps -----------------------------------------------------------
    def _workdir(self, s: StageState, e: Any) -> None:
        # BuildKit keeps an absolute path as written (a trailing "/" stays in the config
        # and history) and joins a relative one onto the previous WORKDIR, cleaned.
        path = e.path
        if not path.startswith("/"):
            path = posixpath.normpath(posixpath.join("/", s.config.get("WorkingDir") or "/", path))
            if path.startswith("//"):
                path = path[1:]
        s.config["WorkingDir"] = path
        user = s.config.get("User") or ""
        op = ops.Mkdir(path, user, platform=platform_string(s.platform))

        def do(snap: Snapshot, vid: str) -> None:
            from pybuild.solver.users import resolve_chown

            # BuildKit creates it as a file operation owned like `--chown=USER`: a bare
            # uid with no passwd entry gets that number as its gid too.
            uid, gid = resolve_chown(snap.rootfs, user) if user else (0, 0)
            _mkdir_p(snap.rootfs, path, uid, gid)

        self._fs_step(s, e, self._display(s, e), op, do, created_by=f"WORKDIR {path}")

    def _run(self, s: StageState, raw: Any) -> None:
        env_map = s.env_map()
        cfg = s.config
        shell = list(cfg.get("Shell") or DEFAULT_SHELL)
        script = _heredoc_script(raw.command, raw.heredocs) if not raw.exec_form else None
        if raw.exec_form:
            argv = list(raw.command)
        elif script is not None and script.startswith("#!"):
            argv = ["/dev/pipes/" + raw.heredocs[0].name]  # run by its own interpreter
        elif script is not None:
            argv = shell + [script]
        else:
            argv = shell + [_with_heredocs(raw.command, raw.heredocs)]
        run_env = [f"{k}={v}" for k, v in s.vars.items()
                   if not (k in PROXY_ARGS and k in s.from_arg)]
        proxies = stages.proxy_env(self.opts.build_args)
        hostname = self.opts.build_args.get("BUILDKIT_SANDBOX_HOSTNAME") or runtime.DEFAULT_HOSTNAME
        network = (raw.network or self.opts.network or "host").lower()
        if network == "default":
            network = self.opts.network or "host"
        try:
            runtime.check_network(network)
        except PybuildError as e:
            raise DockerfileError(str(e), raw.line) from None
        security = (raw.security or "sandbox").lower()
        self._check_flags(raw)  # again: ONBUILD triggers were not there at preflight
        mounts = [m.expand(self.lex, env_map) if hasattr(m, "expand") else m for m in raw.mounts]
        cwd = cfg.get("WorkingDir") or "/"
        op = ops.Exec(argv=tuple(argv),
                      env=tuple((k, v) for k, v in s.vars.items() if k not in s.from_arg),
                      args=tuple((k, v) for k, v in s.vars.items()
                                 if k in s.from_arg and k not in PROXY_ARGS),
                      cwd=cwd, user=cfg.get("User") or "",
                      network=network,
                      mounts=tuple(mounts_key(mounts, cwd,
                                              lambda name: self._source_key(name, raw.line))),
                      bind_sources=tuple(self._bind_sources(mounts, cwd, raw.line)),
                      security=security, platform=platform_string(s.platform),
                      hostname=hostname,
                      run_options=run_options.key_of(self.opts.extra_hosts, self.opts.ulimits,
                                                     self.opts.shm_size))
        display = self._display(s, raw)
        created_by = hist.run([(k, s.vars.get(k, "")) for k in s.arg_decls if k not in PROXY_ARGS],
                              argv)

        def do(snap: Snapshot, vid: str) -> None:
            from pybuild.solver.users import resolve_user

            platforms.ensure_emulation(s.platform)  # a foreign arch: QEMU through binfmt_misc
            uid, gid, groups = resolve_user(snap.rootfs, cfg.get("User") or "")
            cwd = cfg.get("WorkingDir") or "/"
            preparer = MountPreparer(self.store.root, self.ctx, self.opts.secrets, self._view,
                                     lambda name: self._source_key(name, raw.line),
                                     ssh=self.opts.ssh)
            with preparer.prepare(mounts, cwd, raw.line) as prep, \
                    _script_mount(script, argv) as script_mounts:
                spec = runtime.RunSpec(rootfs=snap.rootfs, args=argv,
                                       env=run_env + proxies + prep.env, cwd=cwd, uid=uid, gid=gid,
                                       additional_gids=groups, network=network, hostname=hostname,
                                       mounts=prep.mounts + script_mounts,
                                       privileged=security == "insecure",
                                       ulimits=self.opts.ulimits, shm_size=self.opts.shm_size,
                                       extra_hosts=self.opts.extra_hosts)
                status = self.worker.execute(
                    spec, lambda data: self.progress.vertex_log(vid, data), self.sched.cancel)
            if status != 0:
                raise StepError(f"process {hist.go_quote(' '.join(argv))} did not complete "
                                f"successfully: exit code: {status}", raw.line, status)

        self._fs_step(s, raw, display, op, do, created_by=created_by)

    def _copy(self, s: StageState, e: Any, raw: Any) -> None:
        is_add = isinstance(e, ins.Add)
        self._check_flags(raw)
        cfg = s.config
        workdir = cfg.get("WorkingDir") or "/"
        dest = e.dest
        heredocs = list(e.heredocs or [])
        # the checks BuildKit makes before anything runs (convert_copy.go), and each git
        # source's commit resolved now: a branch or tag that moved is another key
        from pybuild.solver.copy import check_add_sources, key_sources, parse_chmod

        kinds = check_add_sources(is_add, list(e.sources), getattr(e, "checksum", None), raw.line)
        gits = [(ref, *self._git_commit(e, ref, raw.line)) for _, ref in kinds if ref is not None]
        urls = [x for x, ref in kinds if ref is None and is_add and _is_url(x)]
        local = [x for x, ref in kinds if ref is None and x not in urls]  # heredocs come separately
        fetched: list[Any] = []
        checksum = (getattr(e, "checksum", None) or "") if urls else ""
        if urls and not checksum:  # keyed on what the server sends now (revalidated)
            from pybuild.solver.copy import fetch_urls

            fetched = fetch_urls(self.store.root / "http-cache", urls, None, raw.line)
        context_paths: list[Path] = []
        source: ops.ContextSource | ops.StageRef | ops.ImageSource | None = None
        if e.from_:
            source = self._source(e.from_, raw.line)
        elif local:
            # resolved once: the key's file digests and the copy read the same paths
            context_paths = self.ctx.resolve_sources(local, raw.line)
            # a `--parents` source with `**` keys the directory it walks, not only its matches
            extra = self.ctx.resolve_sources(key_sources(local), raw.line) if e.parents else []
            source = ops.ContextSource(self.ctx.manifest(context_paths + extra))
        if e.chmod:
            parse_chmod(e.chmod, raw.line)  # a bad mode fails before the step starts
        unpack = getattr(e, "unpack", None)
        # made only when the step runs (a warm build imports neither copy.py nor this)
        incremental = functools.cache(lambda: self._incremental_copy(
            e, is_add, local, context_paths, bool(heredocs or urls or gits)))
        op = ops.FileCopy(add=is_add, dest=dest, workdir=workdir, chown=e.chown or "",
                          chmod=e.chmod or "", exclude=tuple(e.exclude or []),
                          parents=bool(e.parents), link=bool(e.link),
                          sources=tuple(key_path(x) for x in local) if source is not None else (),
                          source=source,
                          heredocs=tuple((h.name, h.content) for h in heredocs),
                          urls=tuple(urls), checksum=checksum,
                          downloads=tuple(f.key() for f in fetched),
                          platform=platform_string(s.platform),
                          git=tuple((ref.remote, commit, ref.subdir, keep)
                                    for ref, commit, keep in gits),
                          unpack=unpack)
        word = "ADD" if is_add else "COPY"
        display = self._display(s, raw)
        # history shows the words after expansion, flags dropped (BuildKit's wording)
        words = list(e.sources) + [e.dest] if not heredocs else list(raw.sources) + [raw.dest]
        created_by = f"{word} {' '.join(words)} # buildkit"
        # --link: the files land in a layer of their own, made on an empty filesystem, so
        # the layer (and its key) does not depend on what is below (BuildKit's rebase).
        # A --chown by name still reads the stage's passwd/group.
        link_owner: tuple[int, int] | None = None
        if e.link and e.chown:
            from pybuild.solver.users import resolve_chown

            with self._stage_view(s) as root:
                link_owner = resolve_chown(root, e.chown)

        def do(snap: Snapshot, vid: str) -> None:
            # what only a step that runs needs (a warm build reads only the checks above)
            from pybuild.solver.copy import (CopyRequest, add_git, add_urls, copy_into,
                                             write_heredoc_files)
            from pybuild.solver.users import resolve_chown

            if e.link:
                owner = link_owner
            else:
                owner = resolve_chown(snap.rootfs, e.chown) if e.chown else None
            chmod = parse_chmod(e.chmod, raw.line) if e.chmod else None
            if heredocs:
                write_heredoc_files(snap.rootfs, [(h.name, h.content) for h in heredocs],
                                    dest, workdir, owner, chmod)
            for ref, commit, keep in gits:
                add_git(snap.rootfs, ref, commit, keep, dest, workdir, owner, chmod, raw.line)
            if urls:
                from pybuild.solver.copy import fetch_urls

                got = fetched or fetch_urls(self.store.root / "http-cache", urls,
                                            getattr(e, "checksum", None), raw.line)
                add_urls(snap.rootfs, got, dest, workdir, owner, chmod, raw.line,
                         unpack=bool(unpack))
            if local and e.from_:
                with self._view(e.from_) as root:
                    from_ctx = BuildContext.for_rootfs(root)
                    paths = from_ctx.resolve_sources(local, raw.line)
                    copy_into(snap.rootfs, CopyRequest(
                        paths, root, dest, workdir, owner, chmod, list(e.exclude or []),
                        bool(e.parents), is_add, raw.line, keep_owner=True,
                        source_args=len(e.sources), patterns=local,
                        resolve=lambda p: from_ctx.resolve_sources([p], raw.line)))
            elif local:
                copy_into(snap.rootfs, CopyRequest(
                    context_paths, self.ctx.root, dest, workdir, owner, chmod,
                    list(e.exclude or []), bool(e.parents), is_add, raw.line,
                    ignore=self.ctx.matcher, source_args=len(e.sources), patterns=local,
                    resolve=lambda p: self.ctx.resolve_sources([p], raw.line),
                    unpack=unpack, incremental=incremental()))

        self._fs_step(s, raw, display, op, do, created_by=created_by, link=bool(e.link),
                      incremental=incremental)

    def _incremental_copy(self, e: Any, is_add: bool, local: list[str],
                          paths: list[Path], other_sources: bool) -> IncrementalCopy | None:
        """An IncrementalCopy for a plain `COPY <context dir> <dest>` (one source, a real
        directory, nothing from a stage, URL, git or heredoc, no --parents), else None."""
        if is_add or e.from_ or e.parents or other_sources or len(local) != 1 or len(paths) != 1:
            return None
        try:
            if not stat.S_ISDIR(os.lstat(paths[0]).st_mode):
                return None
        except OSError:
            return None
        from pybuild.context import PatternMatcher
        from pybuild.solver.copy import tree_filters
        from pybuild.solver.incremental import IncrementalCopy

        rel = os.path.relpath(paths[0], self.ctx.root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        filters = tree_filters(PatternMatcher(list(e.exclude or [])), self.ctx.matcher, prefix)
        # without --exclude the copy walks what the key's manifest walked: reuse that walk
        walked = None if e.exclude else self.ctx.walks.get(os.fspath(paths[0]))
        return IncrementalCopy(paths[0], filters, walked)

    def _source_key(self, name: str, line: int) -> str:
        """A stage's or image's label in a key: "stage KEY" / "image DIGEST"."""
        return ops.source_label(self._source(name, line))

    def _git_commit(self, e: Any, ref: Any, line: int) -> tuple[str, bool]:
        """(commit, keep .git) of an ADD git source: flag and URL must agree (convert_copy.go)."""
        from pybuild.solver.git import resolve_commit

        flag_keep, flag_sum = getattr(e, "keep_git_dir", None), getattr(e, "checksum", None)
        if flag_keep is not None and ref.keep_git_dir is not None and flag_keep != ref.keep_git_dir:
            raise DockerfileError("inconsistent keep-git-dir configuration", line)
        if flag_sum and ref.checksum and flag_sum != ref.checksum:
            raise DockerfileError(f'checksum mismatch "{flag_sum}" != "{ref.checksum}"', line)
        keep = bool(ref.keep_git_dir if ref.keep_git_dir is not None else flag_keep)
        if flag_sum and not ref.checksum:
            ref = dataclasses.replace(ref, checksum=flag_sum)
        return resolve_commit(ref, line), keep

    def _bind_sources(self, mounts: list[Any], workdir: str, line: int) -> list[Any]:
        """What a RUN's bind mounts show it: part of its key, as BuildKit hashes them."""
        return [bind_key(m, workdir, self.ctx, lambda name: self._source_key(name, line), line)
                for m in mounts if (m.type or "bind").lower() == "bind"]

    @functools.cached_property
    def _paths(self) -> tuple[str, str]:
        return str(self.opts.context.resolve()), str(self.opts.dockerfile.resolve())

    def _step_id(self, s: StageState) -> str:
        return ops.StepId(*self._paths, s.stage.name or str(s.stage.index), s.step).text()

    def _fs_step(self, s: StageState, raw: Any, display: str, op: ops.LayerOp,
                 do: Callable[[Snapshot, str], None], created_by: str | None = None,
                 link: bool = False,
                 incremental: Callable[[], IncrementalCopy | None] | None = None) -> None:
        """One cached filesystem step: look up, else mount, run `do`, commit."""
        s.step += 1
        vid = self._vertex()
        name = self._step_name(s.stage, s.step + 1, s.steps_total, display)
        parent = LINK_PARENT if link else s.key
        inputs = ops.recorded_inputs(op, None if link else s.base)
        key = ops.compute_key(parent, inputs)
        # what later steps build on: a linked layer's own key knows nothing of the layers
        # below it, the stage's filesystem after it does (BuildKit's merge of the two)
        chain_key = ops.merge_key(s.key, key) if link else key
        step = self._step_id(s)
        slot = hashlib.sha256(step.encode()).hexdigest()
        created_by = created_by or display
        self.progress.vertex_started(vid, name)
        started = time.monotonic()
        rec = None if self._skip_cache(s) else self._lookup(key, vid, s.diff_ids)
        if rec is None:
            with self._lock:  # an identical op of another stage running now: wait for it
                other = self._ops.get(key)
                running: Future[Record] = other or Future()
                if other is None:
                    self._ops[key] = running
            if other is not None:
                rec = self.sched.wait(other)
        if rec is not None:
            self.progress.vertex_cached(vid)
            self._timing(name, True, started)
            with self._lock:
                self._hits.append(key)  # counted once, at the end of the build
                self.steps_cached += 1
            s.records.append(rec)
            self._append_layer(s, rec.layer, rec.diff_id, created_by, chain_key, rec.created)
            return
        try:
            rec = self._execute(s, raw, vid, name, op, do, key, parent, inputs, slot, step, link,
                                incremental)
        except BaseException as err:
            running.set_exception(err)
            raise
        finally:
            with self._lock:
                self._ops.pop(key, None)
        running.set_result(rec)
        s.records.append(rec)
        self.progress.vertex_done(vid)
        with self._lock:
            self.steps_run += 1
        self._timing(name, False, started)
        self._append_layer(s, rec.layer, rec.diff_id, created_by, chain_key, rec.created)

    def _execute(self, s: StageState, raw: Any, vid: str, name: str, op: ops.LayerOp,
                 do: Callable[[Snapshot, str], None], key: str, parent: str,
                 inputs: dict[str, Any], slot: str, step: str, link: bool,
                 incremental: Callable[[], IncrementalCopy | None] | None = None) -> Record:
        """Run a step that missed the cache on a fresh snapshot; record it. An incremental
        COPY's upper starts as its step's previous layer when that can be built on."""
        inputs = ops.plain_inputs(inputs)  # the manifests' entries, made now if not yet
        if self.opts.explain:
            prev = self.cache.previous(step)
            reason = explain(prev, parent, inputs)
            if prev is not None and prev.key == key and self._skip_cache(s):
                reason = "--no-cache" if self.opts.no_cache else "--no-cache-filter"
            self.progress.explain(vid, reason)
        layers, diff_ids = ([], []) if link else (s.layers, s.diff_ids)
        inc = incremental() if incremental is not None else None
        try:
            with self.sched.slot():
                self._cleanup_once()
                self._fetch_layers(layers, vid)
                seed = None
                if inc is not None and not self._skip_cache(s):
                    seed = inc.seed_for(self.cache.previous(step), parent, inputs, slot,
                                        self.worker.own_layer)
                with self.worker.prepare(layers, diff_ids, seed=seed) as snap:
                    do(snap, vid)
                    desc, diff_id = self.worker.commit(
                        snap, s.diff_ids, compression=self.opts.compression,
                        source_date_epoch=self.opts.source_date_epoch)
        except Cancelled:
            self.progress.vertex_error(vid, "cancelled")
            raise
        except DockerfileError as err:
            self.progress.vertex_error(vid, err.message, self._excerpt(raw))
            raise
        except PybuildError as err:
            self.progress.vertex_error(vid, str(err), self._excerpt(raw))
            raise DockerfileError(str(err), raw.line) from None
        from pybuild.snapshot import chain_ids

        now = time.time()
        chain_id = chain_ids(s.diff_ids + [diff_id])[-1]
        rec = Record(key, parent, slot, name, desc, diff_id, chain_id, inputs, now, now,
                     step=step)
        self.cache.put(rec)
        if inc is not None:
            inc.remember(key, chain_id, slot, self.worker.own_layer)
        return rec

    def _cleanup_once(self) -> None:
        """What killed builds left (containers, mounts, secrets) is gone before this build
        mounts anything; started with the build, it overlaps the cache lookups."""
        self.sched.wait(self.sched.once(("cleanup",), self.worker.cleanup_stale))

    def _timing(self, name: str, cached: bool, started: float) -> None:
        with self._lock:
            self.timings.append({"step": name, "cached": cached,
                                 "seconds": round(time.monotonic() - started, 3)})

    def _append_layer(self, s: StageState, desc: Descriptor, diff_id: str, created_by: str,
                      key: str, created: float) -> None:
        s.layers.append(Descriptor(desc.media_type, desc.digest, desc.size))
        s.diff_ids.append(diff_id)
        s.key = key
        # A cached layer keeps the time it was first made: an unchanged rebuild gives the
        # same config, so the same image ID (as BuildKit does).
        s.history.append({"created": self._format_time(created), "created_by": created_by,
                          "comment": hist.COMMENT})

    def _lookup(self, key: str, vid: str, parent_diff_ids: list[str]) -> Record | None:
        """A local record, or one offered by --cache-from.

        A remote record's layer is downloaded only when something needs its bytes: a step
        that runs on top of it, a COPY --from it, or the exported image (`_fetch_layers`).
        """
        rec = self.cache.lookup(key)
        if rec is not None or key not in self.remote:
            return rec
        spec, remote = self.remote[key]
        # The record's own chain id is not trusted: it is what our diff_ids make it.
        from pybuild.snapshot import chain_ids

        chain_id = chain_ids(parent_diff_ids + [remote.diff_id])[-1]
        rec = Record(remote.key, remote.parent, "", remote.description, remote.layer,
                     remote.diff_id, chain_id, remote.inputs, remote.created, time.time())
        self.remote_layers[rec.layer.digest] = (spec, rec)
        return rec

    def _fetch_layers(self, layers: list[Descriptor], vid: str | None) -> None:
        """Download the --cache-from layers among `layers` that the store lacks yet (each
        once, however many steps need it at the same time)."""
        for d in layers:
            if d.digest in self.remote_layers:
                self.sched.wait(self.sched.once(("fetch", d.digest),
                                                functools.partial(self._fetch_layer, d, vid)))

    def _fetch_layer(self, d: Descriptor, vid: str | None) -> None:
        """Download a --cache-from layer the store lacks, then hold it to its record: the
        record's diff_id is a claim, and its layer must hash to it before it is used."""
        from pybuild.snapshot import verify_layer

        spec, rec = self.remote_layers[d.digest]
        if not self.store.has_blob(d.digest):
            remote_cache.fetch_layer(self.store, spec, rec, self._client(vid))
        try:
            verify_layer(self.store, rec.layer, rec.diff_id)
        except PybuildError as e:
            raise PybuildError(f"--cache-from {spec.ref}: record {rec.key}: {e}") from None
        self.cache.put(rec)  # a record only once its blob is in the store, verified

    def _skip_cache(self, s: StageState) -> bool:
        if self.opts.no_cache:
            return True
        f = self.opts.no_cache_filter
        return bool(f) and (s.stage.name in f or str(s.stage.index) in f)

    # ----- sources from other stages and images ----------------------------------------
    def _stage_index(self, name: str) -> int | None:
        if self.named.has(name):
            return None  # a named context wins over a stage of that name (buildx)
        for st in self.plan.stages:
            if (st.name and st.name.lower() == name.lower()) or str(st.index) == name:
                return st.index
        return None

    def _source(self, name: str, line: int) -> ops.StageRef | ops.ImageSource | ops.ContextSource:
        """A `--from` name as a typed source: a stage of this build (waited for), or an image."""
        named = self.named.source(name)
        if named is not None:
            return named  # type: ignore[no-any-return]
        idx = self._stage_index(name)
        if idx is not None:
            return ops.StageRef(idx, self._stage(idx).key)
        img = self._resolve_image(parse_reference(name), line)
        return ops.ImageSource(name, str(img.manifest_desc.digest))

    @contextmanager
    def _view(self, name: str) -> Iterator[Path]:
        """A read-only mounted view of a stage's or an image's filesystem."""
        named_dir = self.named.directory(name)
        if named_dir is not None:
            yield named_dir  # --build-context NAME=DIR: the directory itself
            return
        idx = self._stage_index(name)
        if idx is not None:
            st = self._stage(idx)
            layers, diff_ids = st.layers, st.diff_ids
        else:
            img = self.named.image(name) or self._resolve_image(parse_reference(name), 0)
            layers, diff_ids = img.layers, img.diff_ids
        self._fetch_layers(layers, None)
        self._cleanup_once()
        with self.worker.prepare(layers, diff_ids, readonly=True) as snap:
            yield snap.rootfs

    @contextmanager
    def _stage_view(self, s: StageState) -> Iterator[Path]:
        """A read-only view of the stage being built, as it is now."""
        self._fetch_layers(s.layers, None)
        self._cleanup_once()
        with self.worker.prepare(list(s.layers), list(s.diff_ids), readonly=True) as snap:
            yield snap.rootfs

    # ----- export --------------------------------------------------------------------
    def _export(self, s: StageState) -> BuildResult:
        cfg = {k: v for k, v in s.config.items() if v not in (None, {}, [])}
        cfg.setdefault("OnBuild", None)  # BuildKit writes it even when empty (no omitempty)
        if self.opts.labels:
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **self.opts.labels}
        _fill_times(s.history[s.own_history:], self._now)
        config: dict[str, Any] = {
            "architecture": s.platform["architecture"],
            "config": cfg,
            "created": s.history[-1]["created"] if s.history else self._now,
            "history": s.history,
            "os": s.platform.get("os", "linux"),
            "rootfs": {"type": "layers", "diff_ids": list(s.diff_ids)},
        }
        if s.platform.get("variant") and s.platform["variant"] != "v8":
            config["variant"] = s.platform["variant"]  # arm64's v8 is implied, as BuildKit
        if s.author:
            config["author"] = s.author
        vid = self._vertex()
        self.progress.vertex_started(vid, "exporting to image")
        with self.sched.slot():
            self._fetch_layers(s.layers, vid)
            config.update(remote_cache.inline_config(self.opts.cache_to, s.records))
            new_image = not self.store.has_blob(
                "sha256:" + hashlib.sha256(canonical_json(config)).hexdigest())
            manifest = imagemod.write(self.store, config, s.layers)
        image_id = manifest_config_digest(self.store, manifest)
        with self.store.lock():
            for t in self.opts.tags:
                self.store.set_tag(parse_reference(t).familiar, manifest)
        self.progress.vertex_done(vid)
        sizes = []
        layer_hist = [h for h in s.history if not h.get("empty_layer")]
        for d, h in zip(s.layers, layer_hist):
            sizes.append((d.size, h.get("created_by", "")))
        result = BuildResult(manifest, image_id, [parse_reference(t).familiar for t in self.opts.tags],
                             self.steps_run, self.steps_cached, sizes, self.timings,
                             sorted(self._materials.items()), new_image)
        for spec in self.opts.cache_to:
            if spec.type == "inline":
                continue  # already in the image config
            vid = self._vertex()
            self.progress.vertex_started(vid, f"exporting cache to {spec.ref} (mode={spec.mode})")
            # mode=max: every finished stage, in Dockerfile order (not the order they
            # happened to finish in), so the exported cache is the same for any schedule
            records = s.records if spec.mode == "min" else [
                r for _, st in sorted(self.states.items()) for r in st.records]
            self._fetch_layers([r.layer for r in records], vid)
            remote_cache.export(self.store, spec, records, self._client(vid))
            self.progress.vertex_done(vid)
        return result

    # ----- helpers -------------------------------------------------------------------
    def _vertex(self) -> str:
        return f"v{next(self._vids)}"

    def _step_name(self, st: Any, n: int, total: int | None, text: str) -> str:
        if total is None:
            total = 1 + sum(1 for i in st.instructions if _is_fs_step(i))
        prefix = ""
        if self.multi:  # BuildKit: [linux/arm64 build 2/3]
            prefix = platforms.normal_string(self._stage_platform(st)) + " "
        if self.stage_count > 1:
            prefix += (st.name or f"stage-{st.index}") + " "
        return f"[{prefix}{n}/{total}] {text}"

    def _display(self, s: StageState, raw: Any) -> str:
        """A step's name as BuildKit shows it: the original text, variables it knows filled in."""
        try:
            return str(self.display_lex.expand(raw.original, s.env_map()))
        except DockerfileError:
            return str(raw.original)

    def _excerpt(self, raw: Any) -> SourceExcerpt:
        return SourceExcerpt(self.opts.dockerfile_name, self.text.split("\n"),
                             raw.line, getattr(raw, "end_line", raw.line))

    def _timestamp(self) -> str:
        return self._format_time(time.time())

    def _format_time(self, t: float) -> str:
        """RFC 3339 in UTC; SOURCE_DATE_EPOCH replaces every time when set."""
        if self.opts.source_date_epoch is not None:
            return datetime.fromtimestamp(self.opts.source_date_epoch, tz=UTC) \
                .strftime("%Y-%m-%dT%H:%M:%SZ")
        return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _set_env(env: list[str], key: str, value: str) -> list[str]:
    """The image config replaces a variable in place, or appends it (BuildKit's addEnv)."""
    out = list(env)
    for i, item in enumerate(out):
        if item.partition("=")[0] == key:
            out[i] = f"{key}={value}"
            return out
    return out + [f"{key}={value}"]


def _fill_times(history: list[dict[str, Any]], now: str) -> None:
    """Metadata entries of this build take the time of the layer before them (before its
    first layer, of the first one after): what BuildKit's history shows."""
    last: str | None = None
    pending: list[dict[str, Any]] = []
    for h in history:
        if h.get("created") is None:
            if last is None:
                pending.append(h)
            else:
                h["created"] = last
            continue
        if not h.get("empty_layer"):
            last = h["created"]
            for p in pending:
                p["created"] = last
            pending = []
    for p in pending:
        p["created"] = now


def manifest_config_digest(store: Store, manifest: Descriptor) -> str:
    return str(store.read_json(manifest.digest)["config"]["digest"])


class PlatformsBuild:
    """One build for several platforms (`--platform linux/amd64,linux/arm64`): a Solver per
    platform, all on one scheduler (so `--jobs` counts them together and the platforms
    build at once), sharing the map of ops running now (so a stage every platform builds
    the same way, e.g. `FROM --platform=$BUILDPLATFORM`, runs once). The tag gets an OCI
    image index of the per-platform manifests; `--cache-to` exports every platform's
    records (their keys name the platform) to one cache."""

    def __init__(self, opts: BuildOptions, progress: Progress, plats: list[dict[str, str]],
                 *, worker: Callable[[Store], Worker] | None = None) -> None:
        import dataclasses

        self.opts = opts
        self.progress = progress
        self.solvers: list[Solver] = []
        for p in plats:
            o = dataclasses.replace(opts, platform=p, tags=[], cache_to=[])
            sv = Solver(o, progress, worker=worker,
                        shared=self.solvers[0] if self.solvers else None)
            sv.multi = True
            self.solvers.append(sv)
        self.sched = self.solvers[0].sched

    def load(self) -> Any:
        for sv in self.solvers:
            sv.load()
        return self.plan

    @property
    def plan(self) -> Any:
        """The first platform's plan (the checks are the same for every platform)."""
        return self.solvers[0].plan

    def build(self, store: Store) -> BuildResult:
        with store.gc_lock(shared=True):
            try:
                return self.sched.run("platforms", lambda: self._build(store))
            finally:
                for sv in self.solvers:
                    if sv._hits:
                        sv.cache.hits(sv._hits)

    def _build(self, store: Store) -> BuildResult:
        futures = [self.sched.once(("platform", sv._ns), functools.partial(sv._build, store))
                   for sv in self.solvers]
        results = [self.sched.wait(f) for f in futures]
        entries = [Descriptor(r.manifest.media_type, r.manifest.digest, r.manifest.size, None,
                              r.manifest.platform) for r in results]
        vid = self.solvers[0]._vertex()
        self.progress.vertex_started(vid, "exporting manifest list")
        index = imagemod.write_index(store, entries)
        tags = [parse_reference(t).familiar for t in self.opts.tags]
        with store.lock():
            for t in tags:
                store.set_tag(t, index)
        self.progress.vertex_done(vid)
        for spec in self.opts.cache_to:
            vid = self.solvers[0]._vertex()
            self.progress.vertex_started(vid, f"exporting cache to {spec.ref} (mode={spec.mode})")
            records: list[Record] = []
            for sv in self.solvers:
                states = [sv.states[sv.plan.target.index]] if spec.mode == "min" else                     [st for _, st in sorted(sv.states.items())]
                records += [r for st in states for r in st.records if r not in records]
            first = self.solvers[0]
            first._fetch_layers([r.layer for r in records], vid)
            remote_cache.export(store, spec, records, first._client(vid))
            self.progress.vertex_done(vid)
        return BuildResult(index, index.digest, tags, sum(r.steps_run for r in results),
                           sum(r.steps_cached for r in results),
                           [x for r in results for x in r.layers],
                           [x for r in results for x in r.steps], platforms=results)


def summary_of(result: BuildResult, duration: float) -> BuildSummary:
    return BuildSummary(result.image_id, result.tags, sum(s for s, _ in result.layers),
                        result.steps_run, result.steps_cached, duration,
                        result.layers)


def _is_fs_step(i: Any) -> bool:
    return isinstance(i, (ins.Run, ins.Copy, ins.Add, ins.Workdir))


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def _heredoc_script(command: str, heredocs: list[Any]) -> str | None:
    """`RUN <<EOF` alone: the heredoc body is the script itself (BuildKit's rule)."""
    if len(heredocs) != 1:
        return None
    word = command.strip().lstrip("<").lstrip("-").strip("'\"")
    if not command.strip().startswith("<<") or word != heredocs[0].name:
        return None
    return str(heredocs[0].data)


@contextmanager
def _script_mount(script: str | None, argv: list[str]) -> Iterator[list[runtime.Mount]]:
    """A `#!` heredoc is mounted as an executable file under /dev/pipes, as BuildKit does."""
    if script is None or not script.startswith("#!"):
        yield []
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pybuild-heredoc-") as d:
        path = Path(d) / "script"
        path.write_text(script)
        path.chmod(0o755)
        yield [runtime.Mount(argv[0], "bind", str(path), ["bind", "ro"])]


def _with_heredocs(command: str, heredocs: list[Any]) -> str:
    """Shell form with heredocs: the shell gets the whole text, bodies included."""
    if not heredocs:
        return command
    body = command
    for h in heredocs:
        content = h.content if h.content.endswith("\n") or not h.content else h.content + "\n"
        body += "\n" + content + h.name
    return body


def _ports(p: str, line: int) -> list[str]:
    """`80`, `80/udp`, `7000-7002/tcp` → docker's port keys; a range is expanded. An
    `ip:hostPort:` prefix is accepted and ignored, as docker's EXPOSE does."""
    port, _, proto = p.rpartition(":")[2].partition("/")
    proto = (proto or "tcp").lower()
    lo, _, hi = port.partition("-")
    if proto not in ("tcp", "udp", "sctp"):
        raise DockerfileError(f"Invalid proto: {proto}", line)
    if not lo.isdigit() or (hi and not hi.isdigit()) or not int(lo) <= int(hi or lo) <= 65535:
        raise DockerfileError(f"Invalid containerPort: {port}", line)
    first, last = int(lo), int(hi or lo)
    return [f"{n}/{proto}" for n in range(first, last + 1)]


def _mkdir_p(rootfs: Path, path: str, uid: int, gid: int) -> None:
    """Create `path` inside rootfs, every new directory owned by uid:gid (as BuildKit)."""
    try:
        fs.mkdir_p(rootfs, path, uid=uid, gid=gid)
    except fs.NotADirectory:
        raise PybuildError(f"cannot create directory {path}: a file is in the way") from None
