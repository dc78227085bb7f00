"""Nodes → typed, validated instructions, and the per-instruction expansion Docker performs.

Validation follows BuildKit's `instructions` package: flags are checked here (the parser keeps
whatever was written), argument counts too, with BuildKit's wording. `expand(lex, env)` returns a
copy with variables substituted only where Docker substitutes them; RUN, CMD, ENTRYPOINT, SHELL
and HEALTHCHECK are left to the shell at run time.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from pybuild.dockerfile.parser import Heredoc, Node, parse_heredoc
from pybuild.dockerfile.shell import ShellLex, go_quote
from pybuild.errors import DockerfileError

INSTRUCTIONS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
                "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
                "WORKDIR")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")
_ONBUILD_PREFIX = re.compile(r"^[\t\n\f\r ]*ONBUILD[\t\n\f\r ]*", re.I)

Expander = Callable[[str], str]


def _expander(lex: ShellLex, env: Mapping[str, str], line: int) -> Expander:
    """One-word expansion whose errors point at the instruction's line."""
    def expand(word: str) -> str:
        try:
            return lex.expand(word, env)
        except DockerfileError as e:
            raise DockerfileError(e.message, line) from None
    return expand


# --- suggestions and flags ---------------------------------------------------------------------

def _distance(a: str, b: str) -> int:
    """Edit distance counting a swap of neighbours as one edit (typos like `form`/`from`)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def suggest(word: str, options: list[str] | tuple[str, ...], case_sensitive: bool) -> str:
    """` (did you mean X?)` for a near miss, else empty: BuildKit's typo hint."""
    if len(word) > 64:
        return ""
    key = word if case_sensitive else word.upper()
    best, best_dist = "", max(1, len(word) // 3) + 1
    for opt in options:
        dist = _distance(key, opt if case_sensitive else opt.upper())
        if dist < best_dist:
            best, best_dist = opt, dist
    return f" (did you mean {best}?)" if best else ""


_STR, _BOOL, _LIST = "string", "bool", "strings"
_FLAG_TYPES: dict[str, dict[str, str]] = {
    "from": {"platform": _STR},
    "run": {"mount": _LIST, "network": _STR, "security": _STR},
    "copy": {"chown": _STR, "chmod": _STR, "from": _STR, "link": _BOOL, "parents": _BOOL,
             "exclude": _LIST},
    "add": {"chown": _STR, "chmod": _STR, "link": _BOOL, "keep-git-dir": _BOOL, "checksum": _STR,
            "exclude": _LIST, "unpack": _BOOL},
    "healthcheck": {"interval": _STR, "timeout": _STR, "start-period": _STR,
                    "start-interval": _STR, "retries": _STR},
}


def _parse_flags(node: Node) -> dict[str, Any]:
    """Values of the instruction's flags (str, bool or list), checked as BuildKit's BFlags."""
    allowed = _FLAG_TYPES.get(node.name, {})
    values: dict[str, Any] = {}
    for raw in node.flags:
        if not raw.startswith("--"):
            raise DockerfileError(f"arg should start with -- : {raw}", node.start_line)
        name, has_value, value = raw[2:].partition("=")
        kind = allowed.get(name)
        if kind is None:
            hint = suggest(name, list(allowed), True)
            raise DockerfileError(f"unknown flag: {name}{hint}", node.start_line)
        if name in values and kind != _LIST:
            raise DockerfileError(f"duplicate flag specified: {name}", node.start_line)
        if kind == _BOOL:
            if has_value and value == "":
                raise DockerfileError(f"missing a value on flag: {name}", node.start_line)
            if value.lower() not in ("true", "false", ""):
                raise DockerfileError(f"expecting boolean value for flag {name}, not: {value}",
                                      node.start_line)
            values[name] = value.lower() != "false"
        elif not has_value:
            raise DockerfileError(f"missing a value on flag: {name}", node.start_line)
        elif kind == _LIST:
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
    return values


# --- durations and sizes -------------------------------------------------------------------------

_UNITS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
          "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds (what docker stores in Healthcheck)."""
    quoted = go_quote(text)
    s = text
    sign = 1
    if s[:1] in ("-", "+"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0
    while s:
        m = _DURATION_PART.match(s)
        assert m is not None  # the pattern matches any prefix, possibly empty
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        if unit == "":
            raise ValueError(f"time: missing unit in duration {quoted}")
        scale = _UNITS.get(unit)
        if scale is None:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {quoted}")
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        if total > 2 ** 63 - 1:
            raise ValueError(f"time: invalid duration {quoted}")
        s = s[m.end():]
    return sign * total


_RAM = re.compile(r"([0-9]+(?:\.[0-9]+)?)[ ]*([kmgtp]?)(?:i?b)?", re.I)


def parse_ram(text: str) -> int:
    """docker's units.RAMInBytes: "64m" → 67108864 (binary multiples)."""
    m = _RAM.fullmatch(text.strip())
    if m is None:
        raise ValueError(text)
    power = " kmgtp".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * 1024 ** power)


# --- instructions -----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Instruction:
    """Common to all: where it is and how it was written (continuations joined)."""

    line: int
    end_line: int
    original: str

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        """A copy with Docker's substitutions applied; identity where Docker does none."""
        return self


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    image: str
    name: str | None = None  # lower-case, as BuildKit matches stage names
    platform: str | None = None

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        ex = _expander(lex, env, self.line)
        return dataclasses.replace(self, image=ex(self.image),
                                   platform=ex(self.platform) if self.platform else self.platform)


MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")


@dataclass(frozen=True, kw_only=True)
class Mount:
    """One `RUN --mount=...`, parsed as BuildKit does; `spec` is the text as written."""

    spec: str
    line: int
    type: str = "bind"
    target: str | None = None
    source: str | None = None
    from_: str | None = None
    readonly: bool = True
    id: str | None = None
    sharing: str | None = None
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    required: bool = False
    env: str | None = None
    size: int | None = None

    @property
    def rw(self) -> bool:
        return not self.readonly

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Mount:
        """The same mount with its values expanded in the step's environment."""
        return parse_mount(self.spec, self.line, _expander(lex, env, self.line))


def parse_mount(spec: str, line: int, expand: Expander | None) -> Mount:
    """Parse a --mount value. Without an expander, values holding `$` are kept unchecked until
    the step's environment is known (BuildKit checks twice the same way)."""
    def fail(msg: str) -> DockerfileError:
        return DockerfileError(msg, line)

    try:
        fields = next(csv.reader([spec], skipinitialspace=False), [])
    except csv.Error as e:
        raise fail(f"failed to parse csv mounts: {e}") from None
    kv: dict[str, Any] = {"type": "bind"}
    ro_auto = True
    if expand is None and any(f.partition("=")[0].lower() == "type" and "$" in f.partition("=")[2]
                              for f in fields):
        # `type=$T`: today's BuildKit expands every value but `from` when the step runs and
        # checks nothing else before (commands_runmount.go parseMount without an expander).
        frm = [f.partition("=")[2] for f in fields if f.partition("=")[0].lower() == "from"]
        if frm and "$" in frm[-1][:-1]:
            raise fail("'from' doesn't support variable expansion, define alias stage instead")
        return Mount(spec=spec, line=line, from_=frm[-1] if frm else None)
    for fld in fields:
        key, has_value, value = fld.partition("=")
        key = key.lower()
        kind = kv["type"]
        if not has_value:
            if key in ("readonly", "ro"):
                kv["readonly"], ro_auto = True, False
            elif key in ("readwrite", "rw"):
                kv["readonly"], ro_auto = False, False
            elif key == "required":
                if kind not in ("secret", "ssh"):
                    raise fail(f"unexpected key '{key}' for mount type '{kind}'")
                kv["required"] = True
            else:
                raise fail(f"invalid field '{fld}' must be a key=value pair")
            continue
        if key == "from" and "$" in value[:-1]:
            raise fail(f"'{key}' doesn't support variable expansion, define alias stage instead")
        if expand is not None and key != "from":
            value = expand(value)
        deferred = expand is None and "$" in value
        if key == "type":
            if value.lower() not in MOUNT_TYPES:
                raise fail(f"unsupported mount type {go_quote(value)}"
                           + suggest(value.lower(), MOUNT_TYPES, True))
            kv["type"] = value.lower()
        elif key == "from":
            kv["from_"] = value
        elif key in ("source", "src"):
            kv["source"] = value
        elif key in ("target", "dst", "destination", "dest"):
            kv["target"] = value
        elif key in ("readonly", "ro", "readwrite", "rw", "required"):
            if key == "required" and kind not in ("secret", "ssh"):
                raise fail(f"unexpected key '{key}' for mount type '{kind}'")
            if not deferred:
                flag = _go_bool(value)
                if flag is None:
                    raise fail(f"invalid value for {key}: {value}")
                if key == "required":
                    kv["required"] = flag
                else:
                    kv["readonly"] = flag if key in ("readonly", "ro") else not flag
                    ro_auto = False
        elif key == "size":
            if kind != "tmpfs":
                raise fail(f"unexpected key '{key}' for mount type '{kind}'")
            if not deferred:
                try:
                    kv["size"] = parse_ram(value)
                except ValueError:
                    raise fail(f"invalid value for {key}: {value}") from None
        elif key == "id":
            kv["id"] = value
        elif key == "sharing":
            if kind != "cache":
                raise fail(f"invalid cache sharing set for {kind} mount")
            if not deferred and value.lower() not in ("shared", "private", "locked"):
                raise fail(f"unsupported sharing value {go_quote(value)}")
            kv["sharing"] = value.lower()
        elif key in ("mode", "uid", "gid"):
            if not deferred:
                try:
                    number = int(value, 8 if key == "mode" else 10)
                    if not value.isdigit() or number >= 2 ** 32:
                        raise ValueError(value)
                except ValueError:
                    raise fail(f"invalid value {value} for {key}") from None
                kv[key] = number
        elif key == "env":
            kv["env"] = value
        else:
            raise fail(f"unexpected key '{key}' in '{fld}'")
    kind = kv["type"]
    if kind not in ("secret", "ssh", "cache"):
        for key in ("mode", "uid", "gid"):
            if key in kv:
                raise fail(f"{key} not allowed for {go_quote(kind)} type mounts")
    if ro_auto:
        kv["readonly"] = kind not in ("cache", "tmpfs")
    if kind == "secret":
        if "from_" in kv:
            raise fail("secret mount should not have a from")
        if not (kv.get("source") or kv.get("target") or kv.get("id")):
            raise fail("invalid secret mount. one of source, target required")
        if kv.get("source") and kv.get("id"):
            raise fail("both source and id can't be set")
        if kv.get("source") and not kv.get("id"):
            kv["id"], kv["source"] = kv["source"], None  # source= is an alias of id= for secrets
    elif kind in ("bind", "cache", "tmpfs") and not kv.get("target"):
        raise fail(f"mount target must be specified for {kind} mounts")
    return Mount(spec=spec, line=line, **kv)


def _go_bool(value: str) -> bool | None:
    """strconv.ParseBool."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    """`command` is the shell text (shell form) or argv (exec form). Heredoc bodies are raw: the
    shell reads them from the command text, `<<-` included."""

    command: list[str] | str
    exec_form: bool
    mounts: list[Mount] = field(default_factory=list)
    network: str | None = None
    security: str | None = None
    heredocs: list[Heredoc] = field(default_factory=list)

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, mounts=[m.expand(lex, env) for m in self.mounts])


@dataclass(frozen=True, kw_only=True)
class _CopyLike(Instruction):
    """`sources` are paths (heredoc sources excluded); `heredocs` are inline files named by the
    delimiter, their content with `<<-` tabs removed and, after expand, variables substituted."""

    sources: list[str]
    dest: str
    chown: str | None = None
    chmod: str | None = None
    from_: str | None = None
    link: bool = False
    exclude: list[str] = field(default_factory=list)
    parents: bool = False
    heredocs: list[Heredoc] = field(default_factory=list)

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        ex = _expander(lex, env, self.line)
        raw = ShellLex(lex.escape, skip_process_quotes=True)
        ex_raw = _expander(raw, env, self.line)
        docs = [dataclasses.replace(h, content=ex_raw(h.content)) if h.expand else h
                for h in self.heredocs]
        changes: dict[str, Any] = dict(
            sources=[ex(s) for s in self.sources], dest=ex(self.dest),
            chown=ex(self.chown) if self.chown else self.chown,
            chmod=ex(self.chmod) if self.chmod else self.chmod,
            exclude=[ex(x) for x in self.exclude], heredocs=docs)
        if isinstance(self, Add) and self.checksum:
            changes["checksum"] = ex(self.checksum)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class Copy(_CopyLike):
    pass


@dataclass(frozen=True, kw_only=True)
class Add(_CopyLike):
    """ADD has no --from or --parents: those fields stay None/False."""

    checksum: str | None = None
    keep_git_dir: bool | None = None  # None: not given (a git URL's query may set it)
    unpack: bool | None = None  # None: ADD's default, local archives unpacked, URLs not


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    """(name, default or None) pairs; defaults raw until expanded."""

    args: list[tuple[str, str | None]]

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        ex = _expander(lex, env, self.line)
        return dataclasses.replace(
            self, args=[(ex(k), ex(v) if v is not None else None) for k, v in self.args])


@dataclass(frozen=True, kw_only=True)
class _Pairs(Instruction):
    """Every pair is expanded with the environment before this instruction (as Docker)."""

    pairs: list[tuple[str, str]]

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        ex = _expander(lex, env, self.line)
        return dataclasses.replace(self, pairs=[(ex(k), ex(v)) for k, v in self.pairs])


@dataclass(frozen=True, kw_only=True)
class Env(_Pairs):
    pass


@dataclass(frozen=True, kw_only=True)
class Label(_Pairs):
    pass


@dataclass(frozen=True, kw_only=True)
class _Command(Instruction):
    command: list[str] | str
    exec_form: bool


@dataclass(frozen=True, kw_only=True)
class Cmd(_Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Entrypoint(_Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    path: str

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, path=_expander(lex, env, self.line)(self.path))


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    user: str

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, user=_expander(lex, env, self.line)(self.user))


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    """Ports are split after expansion: `EXPOSE $PORTS` with PORTS="80 443" gives two."""

    ports: list[str]

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        out: list[str] = []
        for p in self.ports:
            try:
                out += lex.expand_words(p, env)
            except DockerfileError as e:
                raise DockerfileError(e.message, self.line) from None
        return dataclasses.replace(self, ports=out)


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    paths: list[str]

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        ex = _expander(lex, env, self.line)
        return dataclasses.replace(self, paths=[ex(p) for p in self.paths])


@dataclass(frozen=True, kw_only=True)
class StopSignal(Instruction):
    signal: str

    def expand(self, lex: ShellLex, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, signal=_expander(lex, env, self.line)(self.signal))


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """`test` as docker stores it: ["CMD-SHELL", cmd], ["CMD", argv...] or ["NONE"];
    durations in nanoseconds, 0 meaning "docker's default"."""

    test: list[str]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    """The trigger as docker stores it in config.OnBuild (heredoc bodies included)."""

    expression: str


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    command: list[str]


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    name: str


# --- from_node ------------------------------------------------------------------------------

def from_node(node: Node) -> Instruction:
    """Validate one parsed node and return its typed instruction."""
    builder = _BUILDERS.get(node.name)
    if builder is None:
        word = node.keyword or node.name
        raise DockerfileError(f"unknown instruction: {word}{suggest(word, INSTRUCTIONS, False)}",
                              node.start_line)
    return builder(node)


def _common(node: Node) -> dict[str, Any]:
    return {"line": node.start_line, "end_line": node.end_line, "original": node.original}


def _err(node: Node, message: str) -> DockerfileError:
    return DockerfileError(message, node.start_line)


def _exactly_one(node: Node, word: str) -> str:
    _parse_flags(node)
    if len(node.args) != 1:
        raise _err(node, f"{word} requires exactly one argument")
    return node.args[0]


def _at_least_one(node: Node, word: str) -> list[str]:
    _parse_flags(node)
    if not node.args:
        raise _err(node, f"{word} requires at least one argument")
    return node.args


def _command(node: Node) -> list[str] | str:
    """Exec form as argv, shell form as one string (BuildKit's handleJSONArgs)."""
    return list(node.args) if node.json else " ".join(node.args)


def _from(node: Node) -> From:
    flags = _parse_flags(node)
    args = node.args
    name = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.fullmatch(name):
            raise _err(node, f"invalid name for build stage: {go_quote(args[2])}, "
                             "name can't start with a number or contain symbols")
    elif len(args) != 1:
        raise _err(node, "FROM requires either one or three arguments")
    return From(image=args[0], name=name, platform=flags.get("platform"), **_common(node))


def _run(node: Node) -> Run:
    flags = _parse_flags(node)
    network = flags.get("network")
    if network is not None and network not in ("default", "none", "host"):
        raise _err(node, f"unsupported network mode {go_quote(network)}")
    security = flags.get("security")
    if security is not None and security not in ("sandbox", "insecure"):
        raise _err(node, f"unsupported security mode {go_quote(security)}")
    mounts = [parse_mount(spec, node.start_line, None) for spec in flags.get("mount", [])]
    if node.json and not node.args:
        raise _err(node, "RUN: arguments are required")
    return Run(command=_command(node), exec_form=node.json, mounts=mounts, network=network,
               security=security, heredocs=list(node.heredocs), **_common(node))


def _copy(node: Node) -> _CopyLike:
    word = node.name.upper()
    if len(node.args) < 2:
        raise _err(node, f"{word} requires at least two arguments, but only one was provided. "
                         "Destination could not be determined")
    flags = _parse_flags(node)
    *srcs, dest = node.args
    if not node.json and parse_heredoc(dest) is not None:
        raise _err(node, f"{word} cannot accept a heredoc as a destination")
    bodies = {h.name: h for h in node.heredocs}
    sources: list[str] = []
    docs: list[Heredoc] = []
    for src in srcs:
        doc = parse_heredoc(src) if bodies else None
        if doc is not None:
            body = bodies.get(doc.name)
            content = body.data if body is not None else ""
            docs.append(Heredoc(doc.name, content, expand=doc.expand, chomp=doc.chomp))
        else:
            sources.append(src)
    common = dict(sources=sources, dest=dest, chown=flags.get("chown"), chmod=flags.get("chmod"),
                  link=flags.get("link", False), exclude=flags.get("exclude", []), heredocs=docs,
                  **_common(node))
    if node.name == "add":
        return Add(checksum=flags.get("checksum"), keep_git_dir=flags.get("keep-git-dir"),
                   unpack=flags.get("unpack"), **common)
    return Copy(from_=flags.get("from"), parents=flags.get("parents", False), **common)


def _arg(node: Node) -> Arg:
    args = _at_least_one(node, "ARG")
    pairs: list[tuple[str, str | None]] = []
    for a in args:
        name, has_value, value = a.partition("=")
        if not name:
            raise _err(node, "ARG names can not be blank")
        pairs.append((name, value if has_value else None))
    return Arg(args=pairs, **_common(node))


_SIGNALS = frozenset(["ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX"])


def _check_signal(node: Node, sig: str) -> str:
    """Docker's signal.ParseSignal: a number, or a name with or without SIG (RTMIN+n too)."""
    if "$" in sig or sig.isdigit():
        return sig
    name = sig.upper().removeprefix("SIG")
    base, plus, offset = name.partition("+")
    base, minus, moffset = base.partition("-") if not plus else (base, "", "")
    if base in _SIGNALS and (not (plus or minus) or (base.startswith("RT") and
                                                     (offset or moffset).isdigit())):
        return sig
    raise _err(node, f"Invalid signal: {sig}")


def _check_ports(node: Node, ports: list[str]) -> list[str]:
    """Docker's nat.ParsePortSpec on what can be checked before expansion."""
    for p in ports:
        if "$" in p:
            continue
        port, _, proto = p.rpartition(":")[2].partition("/")  # ip:hostPort:containerPort
        if proto and proto.lower() not in ("tcp", "udp", "sctp"):
            raise _err(node, f"Invalid proto: {proto}")
        lo, dash, hi = port.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or int(lo) > 65535 \
                or (dash and (int(hi) > 65535 or int(hi) < int(lo))):
            raise _err(node, f"Invalid containerPort: {port}")
    return ports


def _pairs(node: Node, word: str) -> list[tuple[str, str]]:
    args = _at_least_one(node, word)
    pairs = []
    for i in range(0, len(args) - 2, 3):
        if not args[i]:
            raise _err(node, f"{word} names can not be blank")
        pairs.append((args[i], args[i + 1]))
    return pairs


def _healthcheck(node: Node) -> Healthcheck:
    args = node.args
    if not args:
        _parse_flags(node)
        raise _err(node, "HEALTHCHECK requires at least one argument")
    kind = args[0].upper()
    if kind == "NONE":
        if len(args) > 1:
            raise _err(node, "HEALTHCHECK NONE takes no arguments")
        return Healthcheck(test=["NONE"], **_common(node))
    flags = _parse_flags(node)
    if kind != "CMD":
        raise _err(node, f"Unknown type {go_quote(kind)} in HEALTHCHECK (try CMD)")
    cmd = args[1:] if node.json else ([" ".join(args[1:])] if args[1:] else [])
    if not cmd:
        raise _err(node, "Missing command after HEALTHCHECK CMD")
    test = (["CMD"] if node.json else ["CMD-SHELL"]) + cmd
    durations: dict[str, Any] = {}
    for flag in ("interval", "timeout", "start-period", "start-interval"):
        value = flags.get(flag, "")
        nanos = 0
        if value:
            try:
                nanos = parse_duration(value)
            except ValueError as e:
                raise _err(node, str(e)) from None
            # an explicit 0s means the default (today's parseOptInterval; 20.10 refused it)
            if nanos != 0 and nanos < 1_000_000:
                raise _err(node, f"Interval {go_quote(flag)} cannot be less than 1ms")
        durations[flag.replace("-", "_")] = nanos
    retries = 0
    if flags.get("retries"):
        value = flags["retries"]
        if not re.fullmatch(r"[+-]?[0-9]+", value) or abs(int(value)) >= 2 ** 31:
            raise _err(node, f'strconv.ParseInt: parsing {go_quote(value)}: invalid syntax')
        retries = int(value)
        if retries < 0:  # today's frontend allows 0 (the default); 20.10 wanted at least 1
            raise _err(node, f"--retries cannot be negative ({retries})")
    return Healthcheck(test=test, retries=retries, **durations, **_common(node))


def _onbuild(node: Node) -> Onbuild:
    _parse_flags(node)
    if node.inner is None:
        raise _err(node, "ONBUILD requires at least one argument")
    trigger = (node.inner.keyword or node.inner.name).upper()
    if trigger == "ONBUILD":
        raise _err(node, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise _err(node, f"{trigger} isn't allowed as an ONBUILD trigger")
    expression = _ONBUILD_PREFIX.sub("", node.original, count=1)
    for doc in node.heredocs:
        expression += "\n" + doc.content + doc.name
    return Onbuild(expression=expression, **_common(node))


def _shell(node: Node) -> Shell:
    _parse_flags(node)
    if not node.args:
        raise _err(node, "SHELL requires at least one argument")
    if not node.json:
        raise _err(node, "SHELL requires the arguments to be in JSON form")
    return Shell(command=list(node.args), **_common(node))


def _volume(node: Node) -> Volume:
    paths = []
    for p in _at_least_one(node, "VOLUME"):
        p = p.strip()
        if not p:
            raise _err(node, "VOLUME specified can not be an empty string")
        paths.append(p)
    return Volume(paths=paths, **_common(node))


def _cmd(cls: type[_Command]) -> Callable[[Node], _Command]:
    def build(node: Node) -> _Command:
        _parse_flags(node)
        return cls(command=_command(node), exec_form=node.json, **_common(node))
    return build


_BUILDERS: dict[str, Callable[[Node], Instruction]] = {
    "from": _from, "run": _run, "copy": _copy, "add": _copy, "arg": _arg,
    "env": lambda n: Env(pairs=_pairs(n, "ENV"), **_common(n)),
    "label": lambda n: Label(pairs=_pairs(n, "LABEL"), **_common(n)),
    "cmd": _cmd(Cmd), "entrypoint": _cmd(Entrypoint),
    "workdir": lambda n: Workdir(path=_exactly_one(n, "WORKDIR"), **_common(n)),
    "user": lambda n: User(user=_exactly_one(n, "USER"), **_common(n)),
    "expose": lambda n: Expose(ports=_check_ports(n, list(_at_least_one(n, "EXPOSE"))),
                               **_common(n)),
    "volume": _volume,
    "stopsignal": lambda n: StopSignal(signal=_check_signal(n, _exactly_one(n, "STOPSIGNAL")),
                                       **_common(n)),
    "healthcheck": _healthcheck, "onbuild": _onbuild, "shell": _shell,
    "maintainer": lambda n: Maintainer(name=_exactly_one(n, "MAINTAINER"), **_common(n)),
}
