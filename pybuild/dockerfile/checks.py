"""Build checks: BuildKit's Dockerfile rules by name, message and line, plus a few of pybuild's.

`evaluate(df, ...)` reads a parsed Dockerfile and returns a `Report` (warnings sorted by line,
and the error that stopped the evaluation, if any). It reads no files and starts no processes:
what it needs from outside (the `.dockerignore` patterns, the config of a base image already in
the store, the host platform) comes in as arguments, and a base image it does not know is
simply not judged (UndefinedVar and InvalidBaseImagePlatform need its config).

Configuration is BuildKit's: `# check=skip=A,B|all;error=true;experimental=...` as the file's
directive, replaced as a whole by `--build-arg BUILDKIT_DOCKERFILE_CHECK=...`; a `# check=`
comment just above an instruction adds skips for that instruction only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pybuild.context import PatternMatcher, go_clean
from pybuild.dockerfile import instructions as ins
from pybuild.dockerfile.parser import Dockerfile, Node
from pybuild.dockerfile.shell import ShellLex
from pybuild.dockerfile.stages import platform_args
from pybuild.errors import DockerfileError, PybuildError

DOCS = "https://docs.docker.com/go/dockerfile/rule/"
OWN_DOCS = "docs/checks.md#"  # pybuild's own rules are documented in the repository


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    url: str
    origin: str = "buildkit"  # or "pybuild"
    hadolint: str = ""  # the hadolint rule a pybuild rule corresponds to


def _bk(name: str, slug: str | None, description: str) -> Rule:
    return Rule(name, description, DOCS + slug + "/" if slug else "")


def _own(name: str, hadolint: str, description: str) -> Rule:
    return Rule(name, description, OWN_DOCS + name.lower(), "pybuild", hadolint)


RULES: dict[str, Rule] = {r.name: r for r in [
    _bk("StageNameCasing", "stage-name-casing", "Stage names should be lowercase"),
    _bk("FromAsCasing", "from-as-casing",
        "The 'as' keyword should match the case of the 'from' keyword"),
    _bk("NoEmptyContinuation", "no-empty-continuation",
        "Empty continuation lines will become errors in a future release"),
    _bk("ConsistentInstructionCasing", "consistent-instruction-casing",
        "All commands within the Dockerfile should use the same casing (either upper or lower)"),
    _bk("DuplicateStageName", "duplicate-stage-name", "Stage names should be unique"),
    _bk("ReservedStageName", "reserved-stage-name",
        "Reserved words should not be used as stage names"),
    _bk("JSONArgsRecommended", "json-args-recommended",
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related "
        "to OS signals"),
    _bk("MaintainerDeprecated", "maintainer-deprecated",
        "The MAINTAINER instruction is deprecated, use a label instead to define an image author"),
    _bk("UndefinedArgInFrom", "undefined-arg-in-from", "FROM command must use declared ARGs"),
    _bk("WorkdirRelativePath", "workdir-relative-path",
        "Relative workdir without an absolute workdir declared within the build can have "
        "unexpected results if the base image changes"),
    _bk("UndefinedVar", "undefined-var", "Variables should be defined before their use"),
    _bk("MultipleInstructionsDisallowed", "multiple-instructions-disallowed",
        "Multiple instructions of the same type should not be used in the same stage"),
    _bk("LegacyKeyValueFormat", "legacy-key-value-format",
        "Legacy key/value format with whitespace separator should not be used"),
    _bk("InvalidBaseImagePlatform", None,
        "Base image platform does not match expected target platform"),
    _bk("RedundantTargetPlatform", "redundant-target-platform",
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the "
        "default behavior"),
    _bk("SecretsUsedInArgOrEnv", "secrets-used-in-arg-or-env",
        "Sensitive data should not be used in the ARG or ENV commands"),
    _bk("InvalidDefaultArgInFrom", "invalid-default-arg-in-from",
        "Default value for global ARG results in an empty or invalid base image name"),
    _bk("FromPlatformFlagConstDisallowed", "from-platform-flag-const-disallowed",
        "FROM --platform flag should not use a constant value"),
    _bk("CopyIgnoredFile", "copy-ignored-file",
        "Attempting to Copy file that is excluded by .dockerignore"),
    _bk("ExposeProtoCasing", "expose-proto-casing",
        "Protocol in EXPOSE instruction should be lowercase"),
    _bk("ExposeInvalidFormat", "expose-invalid-format",
        "IP address and host-port mapping should not be used in EXPOSE instruction. This will "
        "become an error in a future release"),
    # pybuild's own: the package-manager habits that cost the most (docs/checks.md says why).
    _own("AptListsKept", "DL3009",
         "Delete the apt lists in the RUN that downloads them: they ship in the layer otherwise"),
    _own("AptRecommendsInstalled", "DL3015",
         "apt-get install without --no-install-recommends pulls in packages nobody asked for"),
    _own("PipCacheKept", "DL3042",
         "pip install keeps its download cache in the layer; use --no-cache-dir or a cache mount"),
    _own("PipefailMissing", "DL4006",
         "A RUN with a pipe hides the failure of every command but the last without pipefail"),
    _own("LastUserRoot", "DL3002", "The image runs as root: switch to an unprivileged USER"),
    _own("AddForLocalFiles", "DL3020",
         "ADD for a local file or directory: use COPY, ADD also unpacks archives and fetches URLs"),
]}

_RESERVED_STAGE_NAMES = ("context", "scratch")
_NON_ENV_ARGS = frozenset(["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"])
_SECRET = re.compile(r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|"
                     r"passwd|secret|token)(?:_|$)")
_SECRET_ALLOWED = re.compile(r"(?i)(?:_|^)(?:public|file|version)(?:_|$)")
_PLATFORM_PART = re.compile(r"[A-Za-z0-9_.-]+")
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
                 "armel": "arm", "i386": "386", "i686": "386"}


def is_secret_name(key: str) -> bool:
    """BuildKit's SecretsUsedInArgOrEnv test on an ARG or ENV name."""
    return bool(_SECRET.search(key)) and not _SECRET_ALLOWED.search(key)


# --- configuration --------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    skip_all: bool = False
    skip: frozenset[str] = frozenset()
    error: bool = False
    experimental_all: bool = False
    experimental: frozenset[str] = frozenset()

    def merged(self, other: Config) -> Config:
        """BuildKit merges skips and experimental rules of a comment; `error` stays global."""
        return replace(self, skip_all=self.skip_all or other.skip_all,
                       skip=self.skip | other.skip,
                       experimental_all=self.experimental_all or other.experimental_all,
                       experimental=self.experimental | other.experimental)

    def enabled(self, rule: str) -> bool:
        return not (self.skip_all or rule in self.skip)


_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def parse_options(text: str) -> Config:
    """`skip=A,B|all;error=true;experimental=...`; ValueError with BuildKit's wording."""
    text = text.strip()
    if not text:
        return Config()
    values: dict[str, Any] = {}
    for part in text.split(";", 2):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"invalid check option {_q(part)}")
        key = key.strip()
        value = value.strip()
        if key in ("skip", "experimental"):
            if value == "all":
                values[key + "_all"] = True
            else:
                values[key] = frozenset(v.strip() for v in value.split(","))
        elif key == "error":
            if value not in _BOOLS:
                raise ValueError(f"failed to parse check option {_q(part)}: strconv.ParseBool: "
                                 f"parsing {_q(value)}: invalid syntax")
            values["error"] = _BOOLS[value]
        else:
            raise ValueError(f"invalid check option {_q(key)}")
    return Config(**values)


def _q(s: str) -> str:
    from pybuild.dockerfile.shell import go_quote
    return go_quote(s)


def config_for(df: Dockerfile, build_args: Mapping[str, str]) -> Config:
    """The file's check configuration: the build arg replaces the directive, as in BuildKit."""
    if "BUILDKIT_DOCKERFILE_CHECK" in build_args:
        source, text = "BUILDKIT_DOCKERFILE_CHECK", build_args["BUILDKIT_DOCKERFILE_CHECK"]
    else:
        source, text = "check directive", df.directives.get("check", "")
    try:
        return parse_options(text)
    except ValueError as e:
        raise PybuildError(f"failed to parse check options ({source}): {e}") from None


def _comment_config(comments: list[str]) -> Config | None:
    """The first `check=` among the comments above an instruction (text after a space is a
    remark: `# check=skip=X // why`)."""
    for c in comments:
        key, eq, value = c.partition("=")
        if eq and key.strip().lower() == "check" and re.fullmatch(r"[a-zA-Z][a-zA-Z0-9]*",
                                                                   key.strip()):
            try:
                return parse_options(value.strip().split(" ", 1)[0])
            except ValueError:
                return None
    return None


# --- results --------------------------------------------------------------------------------

@dataclass
class Warning:
    rule: str
    detail: str
    line: int
    end_line: int

    @property
    def meta(self) -> Rule:
        return RULES[self.rule]

    @property
    def description(self) -> str:
        return self.meta.description

    @property
    def url(self) -> str:
        return self.meta.url

    def short(self) -> str:
        """BuildKit's one-line form, as listed after a build."""
        text = f"{self.rule}: {self.detail}"
        return f"{text} (line {self.line})" if self.line > 0 else text

    def to_dict(self) -> dict[str, Any]:
        """The shape of BuildKit's lint result (`result.json`), source index 0."""
        out: dict[str, Any] = {"ruleName": self.rule, "description": self.description}
        if self.url:
            out["url"] = self.url
        out["detail"] = self.detail
        out["location"] = {"sourceIndex": 0, "ranges": [
            {"start": {"line": self.line}, "end": {"line": self.end_line}}]}
        return out


@dataclass
class Report:
    warnings: list[Warning]
    config: Config
    error: DockerfileError | None = None
    called: list[str] = field(default_factory=list)

    def violation(self) -> DockerfileError | None:
        """With `error=true`: the error BuildKit fails the build with, else None."""
        if not self.config.error or not self.warnings:
            return None
        rules = sorted({w.rule for w in self.warnings})
        return DockerfileError("lint violation found for rules: " + ", ".join(rules),
                               self.warnings[0].line)


# --- evaluation -----------------------------------------------------------------------------

ImageConfig = Callable[[str], "dict[str, Any] | None"]


class _Recorder(Mapping[str, str]):
    """An environment that remembers which names were looked up and missing."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self._missing: dict[str, None] = {}

    def __getitem__(self, key: str) -> str:
        return self.env[key]

    def __contains__(self, key: object) -> bool:
        found = key in self.env
        if not found and isinstance(key, str):
            self._missing[key] = None
        return found

    @property
    def missing(self) -> list[str]:
        return list(self._missing)

    def __iter__(self) -> Iterator[str]:
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


def _levenshtein(a: str, b: str, limit: int) -> int:
    """Edit distance, or `limit` as soon as it cannot be below it (a band of the matrix)."""
    if abs(len(a) - len(b)) >= limit:
        return limit
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [limit] * len(b)
        lo, hi = max(1, i - limit), min(len(b), i + limit)
        for j in range(lo, hi + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != b[j - 1]))
        if min(cur[lo - 1:hi + 1]) >= limit:
            return limit
        prev = cur
    return min(prev[-1], limit)


class _Budget:
    """Hints cost an edit distance per candidate; a hostile file (thousands of variables, each
    undefined) would make that quadratic. Past the budget warnings come without hints."""

    def __init__(self, comparisons: int = 50_000) -> None:
        self.left = comparisons


def _suggest(word: str, options: list[str], budget: _Budget | None = None) -> str:
    """BuildKit's suggest.Search: the first option closer than 3 edits (none on an exact
    match: then the word was not the problem)."""
    if len(word) > 128:
        return ""
    if budget is not None:
        if budget.left < len(options):
            return ""
        budget.left -= len(options)
    best, best_dist = "", 3
    for opt in sorted(options):
        if opt == word:
            return ""
        dist = _levenshtein(word, opt, best_dist)
        if dist < best_dist:
            best, best_dist = opt, dist
    return best


@dataclass
class _StageState:
    """What later rules need from a stage, inherited by stages built on it."""

    env: dict[str, str] | None  # None: the base image is unknown, variables are not judged
    shell: bool = False
    workdir_set: bool = False


@dataclass
class _Stage:
    index: int
    node: Node
    frm: ins.From
    body: list[tuple[Node, ins.Instruction]]
    name: str | None


class _Checker:
    def __init__(self, df: Dockerfile, config: Config, build_args: Mapping[str, str],
                 ignore_patterns: list[str] | None, image_config: ImageConfig | None,
                 host: dict[str, str]) -> None:
        self.df = df
        self.config = config
        self.build_args = build_args
        self.image_config = image_config
        self.host = host
        self.lex = ShellLex(df.escape)
        self.warnings: list[Warning] = []
        self._seen: set[tuple[str, str, int]] = set()
        self.budget = _Budget()
        self.global_env: dict[str, str] = {}
        self.called: list[str] = []
        self.matcher: PatternMatcher | None = None
        if ignore_patterns:
            try:
                self.matcher = PatternMatcher(ignore_patterns)
            except PybuildError:
                self.matcher = None

    def warn(self, cfg: Config, rule: str, detail: str, node_or_lines: Node | tuple[int, int]
             ) -> None:
        if not cfg.enabled(rule):
            return
        if isinstance(node_or_lines, Node):
            start, end = node_or_lines.start_line, node_or_lines.end_line
        else:
            start, end = node_or_lines
        w = Warning(rule, detail, start, end)
        if (rule, detail, start) in self._seen:
            return
        self._seen.add((rule, detail, start))
        self.called.append(rule)
        self.warnings.append(w)

    def cfg(self, node: Node) -> Config:
        extra = _comment_config(node.comments)
        return self.config.merged(extra) if extra else self.config

    # -- the whole file ----------------------------------------------------------------------
    def run(self, reachable: set[int] | None) -> DockerfileError | None:
        for line in self.df.empty_continuations:
            self.warn(self.config, "NoEmptyContinuation", "Empty continuation line", (line, line))
        meta: list[tuple[Node, ins.Arg]] = []
        stages: list[_Stage] = []
        error: DockerfileError | None = None
        for node in self.df.nodes:
            cfg = self.cfg(node)
            if node.name == "maintainer":
                self.warn(cfg, "MaintainerDeprecated",
                          "Maintainer instruction is deprecated in favor of using label", node)
            if node.name == "from":
                self._from_casing(cfg, node)
            try:
                instr = ins.from_node(node)
            except DockerfileError as e:
                error = e
                break
            if isinstance(instr, ins.From):
                stages.append(_Stage(len(stages), node, instr, [], instr.name))
            elif stages:
                stages[-1].body.append((node, instr))
            elif isinstance(instr, ins.Arg):
                meta.append((node, instr))
            else:
                error = DockerfileError("no build stage in current context", instr.line)
                break
        if error is None and not stages:
            error = DockerfileError("dockerfile contains no stages to build", None)
        self._stage_names(stages)
        self._casing(stages)
        if error is not None:
            return error
        self._default_args_in_from(meta, stages)
        global_env, declared = self._meta_env(meta)
        self.global_env = global_env
        states: dict[int, _StageState] = {}
        for st in stages:
            state = self._stage(st, stages, global_env, declared, states)
            states[st.index] = state
            if reachable is not None and st.index not in reachable:
                continue
            self._body(st, state)
        if reachable is None or (stages and stages[-1].index in reachable):
            self._last_user(stages, states)
        return None

    def _from_casing(self, cfg: Config, node: Node) -> None:
        args = node.args
        if len(args) == 3 and args[2] != args[2].lower():
            self.warn(cfg, "StageNameCasing", f"Stage name '{args[2]}' should be lowercase", node)
        if len(args) >= 3:
            word = node.keyword or node.name
            lower, upper = word == word.lower(), word == word.upper()
            if (lower and args[1] != args[1].lower()) or (upper and not lower
                                                          and args[1] != args[1].upper()):
                self.warn(cfg, "FromAsCasing",
                          f"'{args[1]}' and '{word}' keywords' casing do not match", node)

    def _stage_names(self, stages: list[_Stage]) -> None:
        seen: set[str] = set()
        for st in stages:
            if st.name is None:
                continue
            if st.name in _RESERVED_STAGE_NAMES:
                self.warn(self.config, "ReservedStageName",
                          f'Stage name should not use the same name as reserved stage "{st.name}"',
                          st.node)
            if st.name in seen:
                self.warn(self.config, "DuplicateStageName",
                          f'Duplicate stage name "{st.name}", stage names should be unique',
                          st.node)
            seen.add(st.name)

    def _casing(self, stages: list[_Stage]) -> None:
        words: list[tuple[str, Node]] = []
        for st in stages:
            words.append((st.node.keyword or st.node.name, st.node))
            words += [(n.keyword or n.name, n) for n, _ in st.body]
        lower = sum(1 for w, _ in words if w == w.lower())
        upper = sum(1 for w, _ in words if w == w.upper() and w != w.lower())
        majority_lower = lower > upper
        for word, node in words:
            if majority_lower and word != word.lower():
                casing = "lowercase"
            elif not majority_lower and word != word.upper():
                casing = "uppercase"
            else:
                continue
            self.warn(self.config, "ConsistentInstructionCasing",
                      f"Command '{word}' should match the case of the command majority ({casing})",
                      node)

    # -- global ARGs and FROM ----------------------------------------------------------------
    def _meta_env(self, meta: list[tuple[Node, ins.Arg]]) -> tuple[dict[str, str], set[str]]:
        env = platform_args(self._host_machine())
        declared: set[str] = set(env)
        for _node, arg in meta:
            for name, default in arg.args:
                declared.add(name)
                if name in self.build_args:
                    env[name] = self.build_args[name]
                elif default is not None:
                    try:
                        env[name] = self.lex.expand(default, env)
                    except DockerfileError:
                        env[name] = default
                else:
                    env.pop(name, None)
        return env, declared

    def _host_machine(self) -> str:
        return self.host.get("architecture", "amd64")

    def _default_args_in_from(self, meta: list[tuple[Node, ins.Arg]], stages: list[_Stage]) -> None:
        """InvalidDefaultArgInFrom: base names with the ARG defaults only (no build args)."""
        from pybuild.reference import parse_reference

        env = platform_args(self._host_machine())
        for _, arg in meta:
            for name, default in arg.args:
                if default is None:
                    env.pop(name, None)
                    continue
                try:
                    env[name] = self.lex.expand(default, env)
                except DockerfileError:
                    return
        for st in stages:
            try:
                base = self.lex.expand(st.frm.image, env)
            except DockerfileError:
                return
            try:
                if base != "scratch":
                    parse_reference(base)
            except PybuildError:
                self.warn(self.cfg(st.node), "InvalidDefaultArgInFrom",
                          f"Default value for ARG {st.frm.image} results in empty or invalid "
                          "base image name", st.node)

    def _undeclared_in_from(self, cfg: Config, node: Node, word: str, env: dict[str, str],
                            declared: set[str]) -> tuple[str, set[str], list[str]] | None:
        rec = _Recorder(env)
        try:
            result, matched = self.lex.expand_with_matches(word, rec)
        except DockerfileError:
            result, matched = "", set()
        for name in rec.missing:
            if name in declared:
                continue
            hint = _suggest(name, sorted(declared), self.budget)
            detail = f"FROM argument '{name}' is not declared"
            self.warn(cfg, "UndefinedArgInFrom", detail + (f" (did you mean {hint}?)" if hint
                                                           else ""), node)
        return result, matched, rec.missing

    def _stage(self, st: _Stage, stages: list[_Stage], global_env: dict[str, str],
               declared: set[str], states: dict[int, _StageState]) -> _StageState:
        cfg = self.cfg(st.node)
        found = self._undeclared_in_from(cfg, st.node, st.frm.image, global_env, declared)
        base = found[0] if found else st.frm.image
        if st.frm.platform:
            plat = self._undeclared_in_from(cfg, st.node, st.frm.platform, global_env, declared)
            if plat is not None:
                self._platform_rules(cfg, st, plat, global_env)
        parent = next((s for s in stages[:st.index] if s.name is not None
                       and s.name == base.lower()), None)
        if parent is not None:
            p = states[parent.index]
            return _StageState(dict(p.env) if p.env is not None else None, p.shell, p.workdir_set)
        if base == "scratch":
            return _StageState({"PATH": _DEFAULT_PATH})
        config = self.image_config(base) if self.image_config else None
        if config is None:
            return _StageState(None)
        self._base_platform(cfg, st, base, config)
        inner = config.get("config") or {}
        env: dict[str, str] = {}
        for item in inner.get("Env") or []:
            k, _, v = str(item).partition("=")
            env[k] = v
        env.setdefault("PATH", _DEFAULT_PATH)
        return _StageState(env, bool(inner.get("Shell")))

    def _platform_rules(self, cfg: Config, st: _Stage, plat: tuple[str, set[str], list[str]],
                        env: dict[str, str]) -> None:
        result, matched, missing = plat
        raw = st.frm.platform or ""
        if matched == {"TARGETPLATFORM"} and not missing and result == env.get("TARGETPLATFORM"):
            self.warn(cfg, "RedundantTargetPlatform",
                      f"Setting platform to predefined {raw} in FROM is redundant as this is the "
                      "default behavior", st.node)
        if matched or missing:
            return
        parsed = _parse_platform(result, self._host_machine())
        if parsed is None:
            return
        os_, arch = parsed
        name = st.name or ""
        if os_ in name or arch in name:
            return
        self.warn(cfg, "FromPlatformFlagConstDisallowed",
                  f'FROM --platform flag should not use constant value "{result}"', st.node)

    def _base_platform(self, cfg: Config, st: _Stage, base: str, config: dict[str, Any]) -> None:
        if st.frm.platform:
            return
        want = (self.host.get("os", "linux"), self.host.get("architecture", "amd64"))
        have = (str(config.get("os", "")), str(config.get("architecture", "")))
        if not have[0] or not have[1] or have == want:
            return
        variant = config.get("variant")
        actual = "/".join(have) + (f"/{variant}" if variant else "")
        self.warn(cfg, "InvalidBaseImagePlatform",
                  f'Base image {base} was pulled with platform "{actual}", expected '
                  f'"{"/".join(want)}" for current build', st.node)

    # -- the instructions of one stage -------------------------------------------------------
    def _body(self, st: _Stage, state: _StageState) -> None:
        env = state.env
        declared: set[str] = set()
        last: dict[str, Node] = {}
        for node, instr in st.body:
            cfg = self.cfg(node)
            if env is not None and not isinstance(instr, ins.Arg):
                self._undefined_vars(cfg, node, instr, env, declared)
            if isinstance(instr, ins.Arg):
                for name, default in instr.args:
                    self._secret(cfg, node, "ARG", name)
                    value = self.build_args.get(name)
                    if value is None and default is not None:
                        if env is not None:  # `ARG A=$A`: A is not declared yet here
                            value = self._expand_reporting(cfg, node, default, env, declared)
                        else:
                            value = default
                    elif value is None:
                        value = self.global_env.get(name)  # a global ARG re-declared
                    declared.add(name)
                    if value is not None and env is not None and name not in _NON_ENV_ARGS:
                        env[name] = value
            elif isinstance(instr, (ins.Env, ins.Label)):
                word = "ENV" if isinstance(instr, ins.Env) else "LABEL"
                if any(node.args[i + 2] == "" for i in range(0, len(node.args) - 2, 3)):
                    self.warn(cfg, "LegacyKeyValueFormat",
                              f'"{word} key=value" should be used instead of legacy '
                              f'"{word} key value" format', node)
                if isinstance(instr, ins.Env):
                    for key, value in instr.pairs:
                        self._secret(cfg, node, "ENV", key)
                        if env is not None:
                            env[key] = self._expand_quiet(value, env)
            elif isinstance(instr, (ins.Cmd, ins.Entrypoint, ins.Healthcheck)):
                word = node.name.upper()
                if word in last:
                    self.warn(cfg, "MultipleInstructionsDisallowed",
                              f"Multiple {word} instructions should not be used in the same stage "
                              "because only the last one will be used", last[word])
                last[word] = node
                if isinstance(instr, (ins.Cmd, ins.Entrypoint)) and not instr.exec_form \
                        and node.args and not state.shell:
                    self.warn(cfg, "JSONArgsRecommended",
                              f"JSON arguments recommended for {word} to prevent unintended "
                              "behavior related to OS signals", node)
            elif isinstance(instr, ins.Shell):
                state.shell = True
            elif isinstance(instr, ins.Workdir):
                path = self._expand_quiet(instr.path, env or {})
                if not state.workdir_set and not path.startswith("/"):
                    self.warn(cfg, "WorkdirRelativePath",
                              f'Relative workdir "{path}" can have unexpected results if the '
                              "base image changes", node)
                state.workdir_set = True
            elif isinstance(instr, ins.Expose):
                for port in instr.ports:
                    self._expose(cfg, node, self._expand_quiet(port, env or {}))
            elif isinstance(instr, (ins.Copy, ins.Add)):
                self._copy_ignored(cfg, node, instr, env or {})
                if isinstance(instr, ins.Add):
                    self._add_local(cfg, node, instr)
            elif isinstance(instr, ins.Run):
                self._run_rules(cfg, node, instr, state)

    def _expand_quiet(self, word: str, env: Mapping[str, str]) -> str:
        try:
            return self.lex.expand(word, env)
        except DockerfileError:
            return word

    def _expand_reporting(self, cfg: Config, node: Node, word: str, env: dict[str, str],
                          declared: set[str]) -> str:
        rec = _Recorder(env)
        try:
            value = self.lex.expand(word, rec)
        except DockerfileError:
            value = word
        self._report_unmatched(cfg, node, rec.missing, env, declared)
        return value

    def _undefined_vars(self, cfg: Config, node: Node, instr: ins.Instruction,
                        env: dict[str, str], declared: set[str]) -> None:
        if isinstance(instr, (ins.Run, ins.Cmd, ins.Entrypoint, ins.Shell, ins.Healthcheck,
                              ins.Onbuild, ins.Maintainer)):
            return  # left to the shell at run time: BuildKit expands nothing there
        rec = _Recorder(env)
        try:
            instr.expand(self.lex, rec)
        except DockerfileError:
            pass
        self._report_unmatched(cfg, node, rec.missing, env, declared)

    def _report_unmatched(self, cfg: Config, node: Node, missing: list[str],
                          env: dict[str, str], declared: set[str]) -> None:
        for name in sorted(missing):
            if name in declared or name in _NON_ENV_ARGS:
                continue
            hint = _suggest(name, list(env), self.budget)
            self.warn(cfg, "UndefinedVar", f"Usage of undefined variable '${name}'"
                      + (f" (did you mean ${hint}?)" if hint else ""), node)

    def _secret(self, cfg: Config, node: Node, word: str, key: str) -> None:
        if is_secret_name(key):
            self.warn(cfg, "SecretsUsedInArgOrEnv",
                      f'Do not use ARG or ENV instructions for sensitive data ({word} "{key}")',
                      node)

    def _expose(self, cfg: Config, node: Node, raw: str) -> None:
        parts = raw.split(":")
        container = parts[-1]
        host_part = len(parts) > 1
        proto_parts = container.split("/")
        proto = proto_parts[1] if len(proto_parts) > 1 and proto_parts[1] else "tcp"
        if proto != proto.lower():
            self.warn(cfg, "ExposeProtoCasing",
                      f"Defined protocol '{raw}' in EXPOSE instruction should be lowercase", node)
        if host_part:
            self.warn(cfg, "ExposeInvalidFormat",
                      "EXPOSE instruction should not define an IP address or host-port mapping, "
                      f"found '{raw}'", node)

    def _copy_ignored(self, cfg: Config, node: Node, instr: ins.Copy | ins.Add,
                      env: Mapping[str, str]) -> None:
        m = self.matcher
        if m is None or m.exclusions or (isinstance(instr, ins.Copy) and instr.from_):
            return
        word = "Add" if isinstance(instr, ins.Add) else "Copy"
        for raw in instr.sources:
            src = self._expand_quiet(raw, env)
            if isinstance(instr, ins.Add) and _is_url(src):
                continue
            src = go_clean(src)
            if src in (".", "/"):
                if not any(p.cleaned in ("*", "**", "**/*") for p in m.patterns):
                    continue
                hit = True
            else:
                hit = m.matches(src.lstrip("/"))
            if hit:
                self.warn(cfg, "CopyIgnoredFile",
                          f'Attempting to {word} file "{src}" that is excluded by .dockerignore',
                          node)

    # -- pybuild's package-manager rules ------------------------------------------------------
    def _run_rules(self, cfg: Config, node: Node, instr: ins.Run, state: _StageState) -> None:
        script = _script_text(instr)
        if not script:
            return
        caches = {m.target.rstrip("/") for m in instr.mounts if m.type == "cache" and m.target}
        commands = _commands(script)
        if any(_is_apt(c, "update") for c in commands) and "/var/lib/apt/lists" not in caches \
                and "/var/lib/apt" not in caches and "/var/lib/apt/lists" not in script:
            self.warn(cfg, "AptListsKept",
                      "apt-get update without removing /var/lib/apt/lists/* in the same RUN: "
                      "the package lists ship in this layer", node)
        for c in commands:
            if _is_apt(c, "install") and "--no-install-recommends" not in c \
                    and "APT::Install-Recommends" not in c:
                self.warn(cfg, "AptRecommendsInstalled",
                          "apt-get install without --no-install-recommends", node)
            if _is_pip_install(c) and "--no-cache-dir" not in c \
                    and not any(t.endswith(("/.cache/pip", "/.cache")) for t in caches) and "PIP_NO_CACHE_DIR" not in script:
                self.warn(cfg, "PipCacheKept",
                          "pip install without --no-cache-dir or a cache mount on ~/.cache/pip: "
                          "the download cache ships in this layer", node)
        if not instr.exec_form and not state.shell and _has_pipe(script) \
                and "pipefail" not in script:
            self.warn(cfg, "PipefailMissing",
                      "RUN with a pipe and no `set -o pipefail`: a failing command before the "
                      "last `|` does not fail the step", node)

    def _add_local(self, cfg: Config, node: Node, instr: ins.Add) -> None:
        for src in instr.sources:
            if _is_url(src) or src.startswith("git@"):
                continue
            if re.search(r"\.(tar|tgz|tar\.(gz|bz2|xz|zst)|tbz2?|txz)$", src):
                continue
            self.warn(cfg, "AddForLocalFiles",
                      f'ADD of the local source "{src}": COPY it (ADD unpacks archives and '
                      "fetches URLs)", node)
            return

    def _last_user(self, stages: list[_Stage], states: dict[int, _StageState]) -> None:
        """LastUserRoot: the final stage's last USER is root (DL3002). A stage that never sets
        USER inherits its base's user, which the Dockerfile does not say: not judged."""
        if not stages:
            return
        last = stages[-1]
        users = [(n, i) for n, i in last.body if isinstance(i, ins.User)]
        if not users:
            return
        node, user = users[-1]
        name = user.user.split(":", 1)[0]
        if name in ("root", "0"):
            self.warn(self.cfg(node), "LastUserRoot",
                      f'The last USER of the final stage is "{user.user}": the container runs '
                      "as root", node)


_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _parse_platform(text: str, host_arch: str) -> tuple[str, str] | None:
    parts = text.split("/")
    if not parts or len(parts) > 3 or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
        return None
    os_ = parts[0].lower()
    if len(parts) == 1:
        return os_, host_arch
    arch = parts[1].lower()
    return os_, _ARCH_ALIASES.get(arch, arch)


def _is_url(src: str) -> bool:
    return src.startswith(("http://", "https://", "git://")) or src.endswith(".git") \
        and "://" in src


def _script_text(instr: ins.Run) -> str:
    if instr.heredocs:
        return "\n".join(h.data for h in instr.heredocs)
    if isinstance(instr.command, list):
        return " ".join(instr.command)
    return instr.command


_SPLIT = re.compile(r"&&|\|\||;|\n")


def _commands(script: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", script)
    return [" ".join(c.split()) for c in _SPLIT.split(joined) if c.strip()]


def _is_apt(command: str, verb: str) -> bool:
    words = command.split()
    return any(w in ("apt-get", "apt") for w in words[:3]) and verb in words


def _is_pip_install(command: str) -> bool:
    words = command.split()
    for i, w in enumerate(words):
        if (w in ("pip", "pip3") or re.fullmatch(r"(.*/)?pip[0-9.]*", w)) \
                and "install" in words[i + 1:i + 2]:
            return True
        if w == "-m" and words[i + 1:i + 3] == ["pip", "install"]:
            return True
    return False


def _has_pipe(script: str) -> bool:
    text = re.sub(r"'[^']*'|\"(?:\\.|[^\"\\])*\"", "", script)
    return re.search(r"(?<![|])\|(?![|])", text) is not None


def evaluate(df: Dockerfile, *, build_args: Mapping[str, str] | None = None,
             ignore_patterns: list[str] | None = None, image_config: ImageConfig | None = None,
             host: dict[str, str] | None = None, reachable: set[int] | None = None,
             config: Config | None = None) -> Report:
    """Run every enabled rule. `reachable`: the stage indices a build needs (the rules that
    BuildKit runs while converting a stage then only see those); None = all, as `--check`."""
    args = dict(build_args or {})
    cfg = config if config is not None else config_for(df, args)
    checker = _Checker(df, cfg, args, ignore_patterns, image_config,
                       host or {"os": "linux", "architecture": platform_args()["TARGETARCH"]})
    error = checker.run(reachable)
    warnings = sorted(checker.warnings, key=lambda w: w.line)
    return Report(warnings, cfg, error, checker.called)


# --- output ---------------------------------------------------------------------------------

def excerpt(text: str, filename: str, start: int, end: int) -> list[str]:
    """BuildKit's source block: FILE:LINE, a rule, numbered lines with `>>>`, a rule."""
    from pybuild.progress import SourceExcerpt, excerpt_window

    window = excerpt_window(SourceExcerpt(filename, text.split("\n"), start, end))
    if window is None:
        return []
    out = [f"{filename}:{start}", "-" * 20]
    out += [f" {n:3d} | {'>>>' if marked else '   '} {line}" for n, line, marked in window]
    out.append("-" * 20)
    return out


def render_text(report: Report, text: str, filename: str) -> str:
    """What `docker build --check` prints (buildx's summary line, then each warning)."""
    out: list[str] = []
    n = len(report.warnings)
    if n:
        out.append("Check complete, " + ("1 warning has been found!" if n == 1
                                         else f"{n} warnings have been found!"))
    for w in report.warnings:
        out.append("")
        out.append(f"WARNING: {w.rule}" + (f" - {w.url}" if w.url else ""))
        out.append(w.detail)
        out += excerpt(text, filename, w.line, w.end_line)
    if not n and report.error is None:
        out.append("Check complete, no warnings found.")
    return "\n".join(out) + "\n"


def render_json(report: Report, text: str, filename: str) -> dict[str, Any]:
    """BuildKit's lint result document (`docker build --call check,format=json`)."""
    import base64

    doc: dict[str, Any] = {
        "warnings": [w.to_dict() for w in report.warnings],
        "sources": [{"filename": filename, "language": "Dockerfile",
                     "data": base64.b64encode(text.encode()).decode()}],
    }
    err = report.error or report.violation()
    if err is not None:
        doc["buildError"] = {"message": err.message, "location": {
            "sourceIndex": 0, "ranges": [{"start": {"line": err.line or 0},
                                          "end": {"line": err.line or 0}}]}}
    return doc
