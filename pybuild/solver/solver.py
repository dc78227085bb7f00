"""The solver: walk the stage graph; per step, cache key → hit (reuse) or miss (run, commit).

This is the only module that combines the others. Metadata instructions (ENV, LABEL,
USER, …) change the image config and history; RUN, COPY, ADD and WORKDIR change the
filesystem and are cached. As in BuildKit, a step's key depends only on what the step
can see: its parent filesystem, its own expanded instruction, the env/args/user/cwd it
runs with, and for COPY/ADD the content of every source — so a LABEL change does not
invalidate a later RUN, but an ARG the RUN can see does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import posixpath
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from pybuild import fs
from pybuild import image as imagemod
from pybuild import runtime
from pybuild.solver import history as hist
from pybuild.solver import remote_cache
from pybuild.solver.cache import Cache, Record, compute_key, explain
from pybuild.solver.copy import (CopyRequest, add_git, add_urls, check_add_sources, copy_into,
                                 key_sources, parse_chmod, write_heredoc_files)
from pybuild.solver.mounts import (MountPreparer, SecretSource, cache_key_of,
                                  cleanup_stale_secrets)
from pybuild.solver.users import resolve_chown, resolve_user
from pybuild.context import BuildContext
from pybuild.dockerfile import ShellLex, instructions as ins, parse, stages
from pybuild.errors import DockerfileError, PybuildError, StepError
from pybuild.progress import BuildSummary, Progress, SourceExcerpt
from pybuild.reference import parse_reference
from pybuild.snapshot import Snapshotter, chain_ids
from pybuild.store import Descriptor, Store

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ["/bin/sh", "-c"]
PROXY_ARGS = {"HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY",
              "http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"}
EMPTY_KEY = "sha256:" + hashlib.sha256(b"scratch").hexdigest()


def host_arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


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
    allow: list[str] = field(default_factory=list)  # entitlements: security.insecure
    # Makes the RegistryClient with the user's TLS/insecure flags; called only when a build
    # talks to a registry, so local builds never import the HTTP stack.
    registry: Any = None


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


class Solver:
    """Builds the stages of one plan into the store."""

    def __init__(self, opts: BuildOptions, progress: Progress) -> None:
        self.opts = opts
        self.progress = progress
        self.text = ""
        self.lex = ShellLex()
        self.states: dict[int, StageState] = {}
        self.steps_run = 0
        self.steps_cached = 0
        self.timings: list[dict[str, Any]] = []
        self._registry_client: Any = None
        self._vid = 0
        self._now = self._timestamp()

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
        plan = stages.plan(df, self.opts.build_args, self.opts.target)
        self.plan = plan
        self.ctx = BuildContext(self.opts.context, self.opts.dockerfile)
        for w in plan.warnings:
            self.progress.warning(w)
        if plan.unused_build_args:
            self.progress.warning("One or more build-args [" + " ".join(sorted(plan.unused_build_args))
                                  + "] were not consumed")
        self._preflight(plan)
        return plan

    def build(self, store: Store) -> BuildResult:
        """Build the target; call after load(), which touches nothing on disk."""
        with store.gc_lock(shared=True):
            return self._build(store)

    def _build(self, store: Store) -> BuildResult:
        plan = self.plan
        self.store = store
        self.images: dict[str, Any] = {}
        for st in plan.stages:  # "load metadata": a missing base fails before any write
            if st.base_stage is None and st.base != "scratch":
                ref = parse_reference(st.base)
                self.images[ref.familiar] = self._resolve_image(ref, st.from_line)
        self.snaps = Snapshotter(store)
        self.cache = Cache(store)
        self.remote: dict[str, tuple[Any, Record]] = {}
        self.remote_layers: dict[str, tuple[Any, Record]] = {}
        for spec in self.opts.cache_from:
            for key, rec in remote_cache.load(store, spec, self._client(None)).items():
                self.remote.setdefault(key, (spec, rec))
        runtime.cleanup_stale()  # kill orphaned containers first, then unmount their rootfs
        self.snaps.cleanup_stale()
        cleanup_stale_secrets()
        state = self._stage(plan.target.index)
        return self._export(state)

    # ----- preflight ---------------------------------------------------------------
    def _preflight(self, plan: Any) -> None:
        """Fail on missing context sources before anything is written (when knowable)."""
        for st in plan.stages:
            args = dict(plan.meta_args)
            for i in st.instructions:
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
                    local = [s for s in srcs if not _is_url(s) and not _is_git(s, i.line)]
                    if local:
                        self.ctx.resolve_sources(local, i.line)

    # ----- stages ------------------------------------------------------------------
    def _stage(self, index: int) -> StageState:
        if index in self.states:
            return self.states[index]
        st = next((s for s in self.plan.stages if s.index == index), None)
        if st is None:
            raise PybuildError(f"stage {index} is not part of the build plan")
        for dep in sorted(st.deps):  # what COPY --from / RUN --mount from= read: built first
            if dep != index:
                self._stage(dep)
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
            self._dispatch(state, instr)
        self.states[index] = state
        return state

    def _base(self, st: Any) -> StageState:
        vid = self._vertex()
        name = self._step_name(st, 1, None, f"FROM {st.base}")
        if st.base_stage is not None:
            parent = self._stage(st.base_stage)
            self.progress.vertex_started(vid, name)
            self.progress.vertex_done(vid)
            state = StageState(st, json.loads(json.dumps(parent.config)), list(parent.history),
                               list(parent.layers), list(parent.diff_ids), parent.key, parent.base,
                               author=parent.author, records=list(parent.records),
                               own_history=parent.own_history)
        elif st.base == "scratch":
            self.progress.vertex_started(vid, name)
            self.progress.vertex_done(vid)
            # BuildKit's empty image: default PATH and WorkingDir "/"
            state = StageState(st, {"Env": [DEFAULT_PATH], "WorkingDir": "/"}, [], [], [],
                               EMPTY_KEY, None)
        else:
            ref = parse_reference(st.base)
            # BuildKit names the step by the normalised reference, with a tag only if given
            given = "@" in st.base or ":" in st.base.rsplit("/", 1)[-1]
            name = self._step_name(st, 1, None, f"FROM {ref.canonical if given else ref.full_name}")
            self.progress.vertex_started(vid, name)
            img = self._resolve_image(ref, st.from_line)
            self.progress.vertex_done(vid)
            cfg = json.loads(json.dumps(img.config.get("config") or {}))
            if not any(e.startswith("PATH=") for e in cfg.get("Env") or []):
                cfg["Env"] = [DEFAULT_PATH] + list(cfg.get("Env") or [])
            digest = img.manifest_desc.digest
            state = StageState(st, cfg, list(img.config.get("history") or []), list(img.layers),
                               list(img.diff_ids), "sha256:" + hashlib.sha256(
                                   f"image {digest}".encode()).hexdigest(), digest,
                               author=img.config.get("author"))
        return state

    def _resolve_image(self, ref: Any, line: int) -> Any:
        """An image from the store, pulled first when missing (or always with --pull)."""
        if ref.familiar in self.images:
            return self.images[ref.familiar]
        if not self.opts.pull:
            try:
                return imagemod.load(self.store, ref.familiar)
            except PybuildError:
                pass
        vid = self._vertex()
        self.progress.vertex_started(vid, f"[internal] load metadata for {ref.canonical}")
        try:
            from pybuild import registry

            desc = registry.pull(self.store, ref.canonical, client=self._client(vid))
        except PybuildError as e:
            try:  # offline with --pull: fall back to what the store has, as docker does
                if self.opts.pull:
                    img = imagemod.load(self.store, ref.familiar)
                    self.progress.warning(f"--pull: {e}; using the local {ref.familiar}")
                    self.progress.vertex_done(vid)
                    return img
            except PybuildError:
                pass
            self.progress.vertex_error(vid, str(e))
            raise DockerfileError(f"failed to resolve base image {ref.familiar}: {e} (import "
                                  f"it with `pybuild import ROOTFS.tar {ref.familiar}`, or pull "
                                  f"it from a registry you can reach)", line) from None
        self.progress.vertex_done(vid)
        return imagemod.load(self.store, desc.digest)

    def _client(self, vid: str | None) -> Any:
        """The user's registry client (made once), reporting transfers on vertex `vid`."""
        if self._registry_client is None:
            from pybuild.registry import RegistryClient

            self._registry_client = self.opts.registry() if self.opts.registry else RegistryClient()
        client = self._registry_client
        client.progress = None if vid is None else (
            lambda label, cur, total: self.progress.transfer(vid, label, cur, total))
        return client

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
        inputs = {"op": "mkdir", "path": path, "user": user}

        def do(active: Any) -> None:
            # BuildKit creates it as a file operation owned like `--chown=USER`: a bare
            # uid with no passwd entry gets that number as its gid too.
            uid, gid = resolve_chown(active.rootfs, user) if user else (0, 0)
            _mkdir_p(active.rootfs, path, uid, gid)

        self._fs_step(s, e, self._display(s, e), inputs, do, created_by=f"WORKDIR {path}")

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
        privileged = raw.security == "insecure"
        if privileged and "security.insecure" not in self.opts.allow:
            # BuildKit refuses it unless the build grants the entitlement
            # (dockerfile_runsecurity_test.go testRunSecurityInsecure)
            raise DockerfileError("entitlement security.insecure is not allowed "
                                  "(pybuild build --allow security.insecure)", raw.line)
        network = (raw.network or self.opts.network or "host").lower()
        if network == "default":
            network = self.opts.network or "host"
        if network not in ("host", "none"):
            raise DockerfileError(f"unsupported network mode {network!r} (host or none)", raw.line)
        mounts = [m.expand(self.lex, env_map) if hasattr(m, "expand") else m for m in raw.mounts]
        inputs = {"op": "run", "argv": argv,
                  "env": {k: v for k, v in s.vars.items() if k not in s.from_arg},
                  "args": {k: v for k, v in s.vars.items()
                           if k in s.from_arg and k not in PROXY_ARGS},
                  "cwd": cfg.get("WorkingDir") or "/", "user": cfg.get("User") or "",
                  "network": network, "mounts": [cache_key_of(m) for m in mounts],
                  "bind_sources": self._bind_sources(mounts, raw.line),
                  "security": raw.security or ""}
        if hostname != runtime.DEFAULT_HOSTNAME:
            inputs["hostname"] = hostname
        display = self._display(s, raw)
        created_by = hist.run([(k, s.vars.get(k, "")) for k in s.arg_decls if k not in PROXY_ARGS],
                              argv)

        def do(active: Any) -> None:
            uid, gid, groups = resolve_user(active.rootfs, cfg.get("User") or "")
            cwd = cfg.get("WorkingDir") or "/"
            preparer = MountPreparer(self.store.root, self.opts.context, self.opts.secrets,
                                     self._view)
            with preparer.prepare(mounts, cwd, raw.line) as prep, \
                    _script_mount(script, argv) as script_mounts:
                host, _stubs = runtime.host_mounts(active.rootfs, hostname=hostname)
                spec = runtime.RunSpec(rootfs=active.rootfs, args=argv,
                                       env=run_env + proxies + prep.env, cwd=cwd, uid=uid, gid=gid,
                                       additional_gids=groups, network=network, hostname=hostname,
                                       privileged=privileged,
                                       mounts=host + prep.mounts + script_mounts)
                vid = self._current_vid
                status = runtime.run(spec, lambda data: self.progress.vertex_log(vid, data))
            if status != 0:
                raise StepError(f"process {hist.go_quote(' '.join(argv))} did not complete "
                                f"successfully: exit code: {status}", raw.line, status)

        self._fs_step(s, raw, display, inputs, do, created_by=created_by)

    def _copy(self, s: StageState, e: Any, raw: Any) -> None:
        is_add = isinstance(e, ins.Add)
        cfg = s.config
        workdir = cfg.get("WorkingDir") or "/"
        dest = e.dest
        inputs: dict[str, Any] = {"op": "add" if is_add else "copy", "dest": dest, "workdir": workdir,
                                  "chown": e.chown or "", "chmod": e.chmod or "",
                                  "exclude": list(e.exclude or []), "parents": bool(e.parents),
                                  "link": bool(e.link)}
        heredocs = list(e.heredocs or [])
        kinds = check_add_sources(is_add, list(e.sources), getattr(e, "checksum", None), raw.line)
        gits = [(ref, *self._git_commit(e, ref, raw.line)) for _, ref in kinds if ref is not None]
        urls = [x for x, ref in kinds if ref is None and is_add and _is_url(x)]
        local = [x for x, ref in kinds if ref is None and x not in urls]  # heredocs come separately
        if gits:
            inputs["git"] = [[ref.remote, commit, ref.subdir, keep] for ref, commit, keep in gits]
        if getattr(e, "unpack", None) is not None:
            inputs["unpack"] = e.unpack
        if heredocs:
            inputs["heredocs"] = [[h.name, h.content] for h in heredocs]
        if urls:
            inputs["urls"] = urls
            inputs["checksum"] = getattr(e, "checksum", None) or ""
        context_paths: list[Path] = []
        if e.from_:
            inputs["from"] = self._source_key(e.from_, raw.line)
            inputs["sources"] = local
        elif local:
            # resolved once: the key's file digests and the copy read the same paths
            context_paths = self.ctx.resolve_sources(local, raw.line)
            inputs["sources"] = local
            extra = self.ctx.resolve_sources(key_sources(local), raw.line) if e.parents else []
            inputs["files"] = self.ctx.manifest(context_paths + extra)
        if e.chmod:
            parse_chmod(e.chmod, raw.line)  # a bad mode fails before the step starts
        word = "ADD" if is_add else "COPY"
        display = self._display(s, raw)
        # history shows the words after expansion, flags dropped (BuildKit's wording)
        words = list(e.sources) + [e.dest] if not heredocs else list(raw.sources) + [raw.dest]
        created_by = f"{word} {' '.join(words)} # buildkit"

        def do(active: Any) -> None:
            owner = resolve_chown(active.rootfs, e.chown) if e.chown else None
            chmod = parse_chmod(e.chmod, raw.line) if e.chmod else None
            if heredocs:
                write_heredoc_files(active.rootfs, [(h.name, h.content) for h in heredocs],
                                    dest, workdir, owner, chmod)
            for ref, commit, keep in gits:
                add_git(active.rootfs, ref, commit, keep, dest, workdir, owner, chmod, raw.line)
            if urls:
                add_urls(active.rootfs, urls, dest, workdir, getattr(e, "checksum", None),
                         owner, chmod, raw.line, unpack=bool(getattr(e, "unpack", None)))
            if local and e.from_:
                with self._view(e.from_) as root:
                    from_ctx = BuildContext.for_rootfs(root)
                    paths = from_ctx.resolve_sources(local, raw.line)
                    copy_into(active.rootfs, CopyRequest(
                        paths, root, dest, workdir, owner, chmod, list(e.exclude or []),
                        bool(e.parents), is_add, raw.line, keep_owner=True,
                        source_args=len(e.sources), patterns=local,
                        resolve=lambda p: from_ctx.resolve_sources([p], raw.line)))
            elif local:
                copy_into(active.rootfs, CopyRequest(
                    context_paths, self.ctx.root, dest, workdir, owner, chmod,
                    list(e.exclude or []), bool(e.parents), is_add, raw.line,
                    ignore=self.ctx.matcher, source_args=len(e.sources), patterns=local,
                    resolve=lambda p: self.ctx.resolve_sources([p], raw.line),
                    unpack=getattr(e, "unpack", None)))

        self._fs_step(s, raw, display, inputs, do, created_by=created_by)

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

    def _bind_sources(self, mounts: list[Any], line: int) -> list[Any]:
        """What a RUN's bind mounts show it: part of its key, as BuildKit hashes them.

        From the context, the content digest of the mounted files; from a stage or an
        image, that stage's key or the image's digest (which pin its content).
        """
        out: list[Any] = []
        for m in mounts:
            if (m.type or "bind").lower() != "bind":
                continue
            if m.from_:
                out.append({"target": m.target, "source": m.source or "/",
                            "from": self._source_key(m.from_, line)})
            else:
                src = (m.source or "/").lstrip("/") or "."
                paths = self.ctx.resolve_sources([src], line)
                out.append({"target": m.target, "source": m.source or "/",
                            "files": self.ctx.manifest(paths)})
        return out

    def _fs_step(self, s: StageState, raw: Any, display: str, inputs: dict[str, Any],
                 do: Any, created_by: str | None = None) -> None:
        """One cached filesystem step: look up, else mount, run `do`, commit."""
        s.step += 1
        vid = self._vertex()
        self._current_vid = vid
        name = self._step_name(s.stage, s.step + 1, s.steps_total, display)
        parent = s.key
        if s.base:
            inputs = dict(inputs, base=s.base)
        key = compute_key(parent, inputs)
        slot = hashlib.sha256(json.dumps([str(self.opts.context.resolve()),
                                          str(self.opts.dockerfile.resolve()), s.stage.index,
                                          s.step]).encode()).hexdigest()
        created_by = created_by or display
        self.progress.vertex_started(vid, name)
        started = time.monotonic()
        rec = None if self._skip_cache(s) else self._lookup(key, vid)
        if rec is not None:
            self.progress.vertex_cached(vid)
            self.timings.append({"step": name, "cached": True,
                                 "seconds": round(time.monotonic() - started, 3)})
            self.cache.hit(key)
            self.steps_cached += 1
            s.records.append(rec)
            self._append_layer(s, rec.layer, rec.diff_id, created_by, key, rec.created)
            return
        if self.opts.explain:
            self.progress.explain(vid, explain(self.cache.previous(slot, parent), parent, inputs))
        try:
            self._fetch_layers(s.layers, vid)
            lowers = self.snaps.ensure(s.layers, s.diff_ids)
            with self.snaps.mount(lowers) as active:
                do(active)
                desc, diff_id = self.snaps.commit(active, s.diff_ids,
                                                  compression=self.opts.compression,
                                                  source_date_epoch=self.opts.source_date_epoch)
        except DockerfileError as err:
            self.progress.vertex_error(vid, err.message, self._excerpt(raw))
            raise
        except PybuildError as err:
            self.progress.vertex_error(vid, str(err), self._excerpt(raw))
            raise DockerfileError(str(err), raw.line) from None
        now = time.time()
        chain_id = chain_ids(s.diff_ids + [diff_id])[-1]
        rec = Record(key, parent, slot, name, desc, diff_id, chain_id, inputs, now, now)
        self.cache.put(rec)
        s.records.append(rec)
        self.progress.vertex_done(vid)
        self.steps_run += 1
        self.timings.append({"step": name, "cached": False,
                             "seconds": round(time.monotonic() - started, 3)})
        self._append_layer(s, desc, diff_id, created_by, key, now)

    def _append_layer(self, s: StageState, desc: Descriptor, diff_id: str, created_by: str,
                      key: str, created: float) -> None:
        s.layers.append(Descriptor(desc.media_type, desc.digest, desc.size))
        s.diff_ids.append(diff_id)
        s.key = key
        # A cached layer keeps the time it was first made: an unchanged rebuild gives the
        # same config, so the same image ID (as BuildKit does).
        s.history.append({"created": self._format_time(created), "created_by": created_by,
                          "comment": hist.COMMENT})

    def _lookup(self, key: str, vid: str) -> Record | None:
        """A local record, or one offered by --cache-from.

        A remote record's layer is downloaded only when something needs its bytes: a step
        that runs on top of it, a COPY --from it, or the exported image (`_fetch_layers`).
        """
        rec = self.cache.lookup(key)
        if rec is not None or key not in self.remote:
            return rec
        spec, remote = self.remote[key]
        rec = Record(remote.key, remote.parent, "", remote.description, remote.layer,
                     remote.diff_id, remote.chain_id, remote.inputs, remote.created, time.time())
        self.remote_layers[rec.layer.digest] = (spec, rec)
        return rec

    def _fetch_layers(self, layers: list[Descriptor], vid: str | None) -> None:
        """Download the --cache-from layers among `layers` that the store lacks yet."""
        for d in layers:
            if d.digest in self.remote_layers and not self.store.has_blob(d.digest):
                spec, rec = self.remote_layers.pop(d.digest)
                remote_cache.fetch_layer(self.store, spec, rec, self._client(vid))
                self.cache.put(rec)  # a record only once its blob is in the store

    def _skip_cache(self, s: StageState) -> bool:
        if self.opts.no_cache:
            return True
        f = self.opts.no_cache_filter
        return bool(f) and (s.stage.name in f or str(s.stage.index) in f)

    # ----- sources from other stages and images ----------------------------------------
    def _stage_index(self, name: str) -> int | None:
        for st in self.plan.stages:
            if (st.name and st.name.lower() == name.lower()) or str(st.index) == name:
                return st.index
        return None

    def _source_key(self, name: str, line: int) -> str:
        idx = self._stage_index(name)
        if idx is not None:
            return "stage " + self._stage(idx).key
        img = self._resolve_image(parse_reference(name), line)
        return "image " + str(img.manifest_desc.digest)

    @contextmanager
    def _view(self, name: str) -> Iterator[Path]:
        """A read-only mounted view of a stage's or an image's filesystem."""
        idx = self._stage_index(name)
        if idx is not None:
            st = self._stage(idx)
            layers, diff_ids = st.layers, st.diff_ids
        else:
            img = self._resolve_image(parse_reference(name), 0)
            layers, diff_ids = img.layers, img.diff_ids
        self._fetch_layers(layers, None)
        lowers = self.snaps.ensure(layers, diff_ids)
        with self.snaps.mount(lowers, readonly=True) as active:
            yield active.rootfs

    # ----- export --------------------------------------------------------------------
    def _export(self, s: StageState) -> BuildResult:
        cfg = {k: v for k, v in s.config.items() if v not in (None, {}, [])}
        cfg.setdefault("OnBuild", None)  # BuildKit writes it even when empty (no omitempty)
        if self.opts.labels:
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **self.opts.labels}
        _fill_times(s.history[s.own_history:], self._now)
        config: dict[str, Any] = {
            "architecture": host_arch(),
            "config": cfg,
            "created": s.history[-1]["created"] if s.history else self._now,
            "history": s.history,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": list(s.diff_ids)},
        }
        if s.author:
            config["author"] = s.author
        vid = self._vertex()
        self.progress.vertex_started(vid, "exporting to image")
        self._fetch_layers(s.layers, vid)
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
                             self.steps_run, self.steps_cached, sizes, self.timings)
        for spec in self.opts.cache_to:
            vid = self._vertex()
            self.progress.vertex_started(vid, f"exporting cache to {spec.ref} (mode={spec.mode})")
            records = s.records if spec.mode == "min" else [
                r for st in self.states.values() for r in st.records]
            self._fetch_layers([r.layer for r in records], vid)
            remote_cache.export(self.store, spec, records, self._client(vid))
            self.progress.vertex_done(vid)
        return result

    # ----- helpers -------------------------------------------------------------------
    def _vertex(self) -> str:
        self._vid += 1
        return f"v{self._vid}"

    def _step_name(self, st: Any, n: int, total: int | None, text: str) -> str:
        if total is None:
            total = 1 + sum(1 for i in st.instructions if _is_fs_step(i))
        prefix = ""
        if self.stage_count > 1:
            prefix = (st.name or f"stage-{st.index}") + " "
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


def summary_of(result: BuildResult, duration: float) -> BuildSummary:
    return BuildSummary(result.image_id, result.tags, sum(s for s, _ in result.layers),
                        result.steps_run, result.steps_cached, duration,
                        result.layers)


def _is_fs_step(i: Any) -> bool:
    return isinstance(i, (ins.Run, ins.Copy, ins.Add, ins.Workdir))


def _is_git(s: str, line: int) -> bool:
    from pybuild.solver.git import parse_git_ref

    return parse_git_ref(s, line) is not None


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
