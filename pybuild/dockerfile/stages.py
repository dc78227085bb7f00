"""Stages, global ARGs and `--target` pruning: which stages a build needs and from what.

BuildKit's rules: ARGs before the first FROM are "meta args", usable in FROM lines and visible in
a stage only when re-declared there; `--build-arg` overrides any ARG; the platform ARGs are
predefined globally; stages are referenced by (case-insensitive) name or index; only the target
and what it transitively needs is built.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from pybuild.dockerfile import instructions as ins
from pybuild.dockerfile.parser import Dockerfile
from pybuild.dockerfile.shell import ShellLex, go_quote
from pybuild.errors import DockerfileError
from pybuild.platforms import host_arch

PROXY_ARGS = frozenset(["HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY",
                        "http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy"])
PLATFORM_ARGS = ("TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
                 "BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT")
# Build args BuildKit consumes itself: never reported as unused.
BUILTIN_ARGS = PROXY_ARGS | frozenset(PLATFORM_ARGS) | frozenset([
    "BUILDKIT_INLINE_CACHE", "BUILDKIT_CACHE_MOUNT_NS", "BUILDKIT_MULTI_PLATFORM",
    "BUILDKIT_SANDBOX_HOSTNAME", "BUILDKIT_SYNTAX", "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
    "BUILDKIT_DOCKERFILE_CHECK",
    "SOURCE_DATE_EPOCH"])
_INDEX = re.compile(r"[+-]?[0-9]+")


def platform_args(machine: str | None = None) -> dict[str, str]:
    """The predefined platform ARGs for this host (builds are native: target = build)."""
    arch = host_arch(machine)
    values: dict[str, str] = {}
    for prefix in ("TARGET", "BUILD"):
        values[prefix + "PLATFORM"] = f"linux/{arch}"
        values[prefix + "OS"] = "linux"
        values[prefix + "ARCH"] = arch
        values[prefix + "VARIANT"] = ""
    return values


@dataclass
class Stage:
    """One FROM and the instructions after it. `base` is the FROM image after expansion with
    the global args; `base_stage` is set when it names an earlier stage."""

    index: int
    name: str | None
    base: str
    base_stage: int | None
    platform: str | None
    instructions: list[ins.Instruction]
    deps: set[int] = field(default_factory=set)
    from_line: int = 0

    @property
    def label(self) -> str:
        """How BuildKit names a stage in messages."""
        return self.name if self.name else f"stage-{self.index}"


@dataclass
class BuildPlan:
    stages: list[Stage]
    target: Stage
    meta_args: dict[str, str]
    unused_build_args: list[str]
    warnings: list[str] = field(default_factory=list)


def _split(df: Dockerfile) -> tuple[list[ins.Arg], list[tuple[ins.From, list[ins.Instruction]]]]:
    meta: list[ins.Arg] = []
    groups: list[tuple[ins.From, list[ins.Instruction]]] = []
    for node in df.nodes:
        instr = ins.from_node(node)
        if isinstance(instr, ins.From):
            groups.append((instr, []))
        elif groups:
            groups[-1][1].append(instr)
        elif isinstance(instr, ins.Arg):
            meta.append(instr)
        else:
            raise DockerfileError("no build stage in current context", instr.line)
    if not groups:
        raise DockerfileError("dockerfile contains no stages to build", None)
    return meta, groups


def _meta_args(meta: list[ins.Arg], lex: ShellLex, build_args: dict[str, str]) -> dict[str, str]:
    env = platform_args()
    for instr in meta:
        for name, default in instr.args:
            if name in build_args:
                env[name] = build_args[name]
            elif default is not None:
                try:
                    env[name] = lex.expand(default, env)
                except DockerfileError as e:
                    raise DockerfileError(e.message, instr.line) from None
            else:
                # BuildKit (Docker 20.10): a global `ARG TARGETPLATFORM` with no value
                # shadows the automatic platform value, so stages see it unset.
                env.pop(name, None)
    return env


class _Resolver:
    """Stage references: an index, or a name (case-insensitive); anything else is an image."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages

    def by_name(self, ref: str, before: int | None = None) -> int | None:
        found = None
        for st in self.stages[:before]:
            if st.name is not None and st.name == ref.lower():
                found = st.index
        return found

    def ref(self, ref: str, line: int) -> int | None:
        if _INDEX.fullmatch(ref):
            idx = int(ref)
            if not 0 <= idx < len(self.stages):
                raise DockerfileError(f"invalid stage index {idx}", line)
            return idx
        return self.by_name(ref)


class _AnyValue(Mapping[str, str]):
    """An environment in which every variable is set: expanding against it can only fail on
    syntax (a missing `}`, an open quote), never on a value the base image may provide."""

    def __getitem__(self, key: str) -> str:
        return "x"

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _check_syntax(instr: ins.Instruction, lex: ShellLex) -> None:
    """Word-expansion syntax errors fail the plan, as BuildKit fails before building.

    Only the lexer's own errors count here; a value check (a uid that is not a number)
    needs the real values and happens when the step is dispatched.
    """
    try:
        instr.expand(lex, _AnyValue())
    except DockerfileError as e:
        if e.message.startswith("failed to process"):
            raise


def plan(df: Dockerfile, build_args: dict[str, str], target: str | None) -> BuildPlan:
    """The stages needed for `target` (default: the last stage), in Dockerfile order."""
    lex = ShellLex(df.escape)
    meta, groups = _split(df)
    meta_env = _meta_args(meta, lex, build_args)
    all_stages: list[Stage] = []
    resolver = _Resolver(all_stages)
    for index, (frm, body) in enumerate(groups):
        expanded = frm.expand(lex, meta_env)
        if not expanded.image:
            raise DockerfileError(f"base name ({frm.image}) should not be blank", frm.line)
        base_stage = resolver.by_name(expanded.image, before=index)
        stage = Stage(index=index, name=frm.name, base=expanded.image, base_stage=base_stage,
                      platform=expanded.platform or None, instructions=body, from_line=frm.line)
        if base_stage is not None:
            stage.deps.add(base_stage)
        all_stages.append(stage)
    for stage in all_stages:
        stage.instructions = [_link(instr, stage, resolver, lex, meta_env)
                              for instr in stage.instructions]
    _check_cycles(all_stages)
    if target:
        found = resolver.by_name(target)
        if found is None:
            raise DockerfileError(f"target stage {go_quote(target)} could not be found", None)
        target_stage = all_stages[found]
    else:
        target_stage = all_stages[-1]
    needed = _closure(all_stages, target_stage.index)
    stages = [s for s in all_stages if s.index in needed]
    for stage in stages:  # BuildKit converts every needed stage before running any
        for instr in stage.instructions:
            _check_syntax(instr, lex)
    consumed = {name for a in meta for name, _ in a.args}
    for st in stages:
        consumed |= {name for i in st.instructions if isinstance(i, ins.Arg) for name, _ in i.args}
    unused = sorted(k for k in build_args if k not in consumed and k not in BUILTIN_ARGS)
    return BuildPlan(stages=stages, target=target_stage, meta_args=meta_env,
                     unused_build_args=unused, warnings=list(df.warnings))


def _link(instr: ins.Instruction, stage: Stage, resolver: _Resolver, lex: ShellLex,
          meta_env: dict[str, str]) -> ins.Instruction:
    """Record the stages an instruction reads from; COPY --from is expanded with global args."""
    if isinstance(instr, ins.Copy) and instr.from_:
        try:
            ref = lex.expand(instr.from_, meta_env)
        except DockerfileError as e:
            raise DockerfileError(e.message, instr.line) from None
        idx = resolver.ref(ref, instr.line)
        if idx is not None:
            stage.deps.add(idx)
        return dataclasses.replace(instr, from_=ref)
    if isinstance(instr, ins.Run):
        for m in instr.mounts:
            if m.from_:
                idx = resolver.ref(m.from_, instr.line)
                if idx is not None:
                    stage.deps.add(idx)
    return instr


def _check_cycles(stages: list[Stage]) -> None:
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done

    def visit(i: int) -> None:
        state[i] = 1
        for d in sorted(stages[i].deps):
            if state.get(d) == 1:
                raise DockerfileError(f"circular dependency detected on stage: {stages[d].label}",
                                      stages[d].from_line)
            if d not in state:
                visit(d)
        state[i] = 2

    for st in stages:
        if st.index not in state:
            visit(st.index)


def _closure(stages: list[Stage], start: int) -> set[int]:
    seen = {start}
    todo = [start]
    while todo:
        for d in stages[todo.pop()].deps:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def describe(plan: BuildPlan) -> str:
    """What `pybuild build --check` prints: the target, the stages and steps, the args."""
    t = plan.target
    lines = [f"target: {t.label} (stage {t.index}); stages needed: "
             + ", ".join(s.label for s in plan.stages)]
    for key in sorted(plan.meta_args):
        lines.append(f"global arg {key}={plan.meta_args[key]}")
    for st in plan.stages:
        base = (f"stage {_label_of(plan, st.base_stage)}" if st.base_stage is not None
                else st.base)
        header = f"stage {st.index}" + (f" {st.name}" if st.name else "") + f": FROM {base}"
        if st.platform:
            header += f" (platform {st.platform})"
        if st.deps:
            header += " [needs " + ", ".join(str(d) for d in sorted(st.deps)) + "]"
        lines.append(header + f"  # line {st.from_line}")
        for i in st.instructions:
            text = " ".join(i.original.split("\n", 1)[0].split())
            lines.append(f"  {i.line:>4}: {text}")
    for name in plan.unused_build_args:
        lines.append(f"warning: build-arg {name} is not consumed by any ARG")
    for w in plan.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _label_of(plan: BuildPlan, index: int) -> str:
    """A stage's label by index (the stage is always part of the plan when referenced)."""
    for st in plan.stages:
        if st.index == index:
            return st.label
    return str(index)
