"""Dockerfile text → Nodes, following BuildKit's parser rule for rule.

The parser keeps words raw (no expansion) and does not judge instructions: unknown names, flags
and argument counts are checked in `instructions`, as BuildKit does, so `dump` shows what was
written. It only rejects what cannot be read at all: bad directives, non-string JSON arrays,
`ENV`/`LABEL` without a value, unterminated heredocs, a file without instructions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from collections.abc import Callable

from pybuild.dockerfile.shell import GO_SPACES, ShellLex, go_quote
from pybuild.errors import DockerfileError

# Go's regexp \s is [\t\n\f\r ]; Python's is wider, so spell the class out.
_S = "[\t\n\f\r ]"
_RE_DIRECTIVE = re.compile(rf"#{_S}*([a-zA-Z][a-zA-Z0-9]*){_S}*=(.*)")
_DIRECTIVE_SPACE = "\t\n\f\r "
_RE_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_RE_HEREDOC = re.compile(r"([0-9]*)<<(-?)([^<]*)", re.S)
_RE_LEADING_TABS = re.compile(r"^\t+", re.M)
_DIRECTIVES = ("syntax", "escape", "check")
_HEREDOC_INSTRUCTIONS = ("run", "copy", "add")
NOT_STRING_ARRAY = "when using JSON array syntax, arrays must be comprised of strings only"


@dataclass
class Heredoc:
    """A `<<NAME` body. `content` keeps every line with its newline; `expand` is false when the
    delimiter was quoted; `chomp` is `<<-` (leading tabs are stripped from the body)."""

    name: str
    content: str
    expand: bool = True
    chomp: bool = False

    @property
    def data(self) -> str:
        """The body as the file or script receives it: leading tabs removed for `<<-`."""
        return _RE_LEADING_TABS.sub("", self.content) if self.chomp else self.content


@dataclass
class Node:
    """One instruction as written. ENV/LABEL args come as (key, value, separator) triples,
    HEALTHCHECK as [type, command...], ONBUILD has its trigger in `inner`."""

    name: str
    args: list[str]
    flags: list[str] = field(default_factory=list)
    json: bool = False
    heredocs: list[Heredoc] = field(default_factory=list)
    original: str = ""
    start_line: int = 0
    end_line: int = 0
    inner: Node | None = None
    keyword: str = ""  # the instruction word as written (for messages: `unknown instruction: FOO`)
    # The comment lines just above the instruction, `#` and spaces removed, directives left
    # out (BuildKit's PrevComment: stage descriptions, per-instruction `# check=` options).
    comments: list[str] = field(default_factory=list)


@dataclass
class Dockerfile:
    directives: dict[str, str]
    escape: str
    nodes: list[Node]
    warnings: list[str] = field(default_factory=list)
    # The last line of each instruction that had an empty continuation line (where
    # BuildKit's NoEmptyContinuation check points).
    empty_continuations: list[int] = field(default_factory=list)


class _Directives:
    """Parser directives are read only from the first lines, until anything else appears."""

    def __init__(self) -> None:
        self.escape = "\\"
        self.done = False
        self.seen: dict[str, str] = {}
        self._set_continuation()

    def _set_continuation(self) -> None:
        e = re.escape(self.escape)
        # An escape at the end of the line continues it, unless it is itself escaped.
        self.continuation = re.compile(rf"(^|[^{e}]){e}[ \t]*$")

    def feed(self, line: str) -> None:
        if self.done:
            return
        m = _RE_DIRECTIVE.fullmatch(line)
        # The value is trimmed here rather than in the regex: a lazy group before trailing
        # spaces makes Python's backtracking quadratic on long lines (Go's RE2 is linear).
        value = m.group(2).strip(_DIRECTIVE_SPACE) if m else ""
        key = m.group(1).lower() if m and value else ""
        if key not in _DIRECTIVES:
            self.done = True
            return
        if key in self.seen:
            raise ValueError(f"only one {key} parser directive can be used")
        self.seen[key] = value
        if key == "escape":
            if value not in ("`", "\\"):
                raise ValueError(f"invalid escape token '{value}' does not match ` or \\")
            self.escape = value
            self._set_continuation()

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        """(line without its continuation escape, whether the instruction ends here)."""
        m = self.continuation.search(line)
        if m is None:
            return line, True
        return line[:m.start()] + m.group(1), False


def _is_comment(line: str) -> bool:
    return line.lstrip("".join(GO_SPACES)).startswith("#")


def _split_lines(text: str) -> list[str]:
    """Lines with their newline kept (heredoc bodies need them)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    out = [ln + "\n" for ln in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile text; every error is a DockerfileError naming the line."""
    try:
        return _Parser(text).run()
    except DockerfileError as e:
        raise e.with_file(filename) from None


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = _split_lines(text)
        self.pos = 0  # index of the next line to read; also the 1-based number of the last read
        self.d = _Directives()
        self.warnings: list[str] = []
        self.empty_continuations: list[int] = []
        self.comments: list[str] = []

    def _note_comment(self, raw: str, directives_before: int) -> None:
        """Keep BuildKit's PrevComment: comment text since the last instruction; a bare `#`
        clears it, directives are not comments."""
        if not _is_comment(raw) or len(self.d.seen) != directives_before:
            return
        text = _trim_newline(raw).strip("".join(GO_SPACES))[1:].strip("".join(GO_SPACES))
        if text:
            self.comments.append(text)
        else:
            self.comments = []

    def _process(self, raw: str, strip_left: bool) -> str:
        line = _trim_newline(raw)
        if strip_left:
            line = line.lstrip("".join(GO_SPACES))
        try:
            self.d.feed(line)
        except ValueError as e:
            raise DockerfileError(str(e), self.pos) from None
        return "" if line.startswith("#") else line

    def run(self) -> Dockerfile:
        nodes: list[Node] = []
        lines = self.lines
        while self.pos < len(lines):
            raw = lines[self.pos]
            self.pos += 1
            directives_before = len(self.d.seen)
            line = self._process(raw, True)
            self._note_comment(raw, directives_before)
            start = end = self.pos
            line, done = self.d.trim_continuation(line)
            if done and line == "":
                continue
            parts = [line]
            empty_continuation = False
            while not done and self.pos < len(lines):
                raw = lines[self.pos]
                self.pos += 1
                cont = self._process(raw, False)
                if _is_comment(raw):
                    continue
                if not cont.lstrip("".join(GO_SPACES)):
                    empty_continuation = True
                    continue
                cont, done = self.d.trim_continuation(cont)
                parts.append(cont)
                end = self.pos
            if empty_continuation:
                self.warnings.append(f"line {start}: empty continuation lines will become errors "
                                     "in a future release")
                self.empty_continuations.append(end)
            joined = "".join(parts)
            try:
                node = _node_from_line(joined, self.d.escape)
            except DockerfileError as e:
                raise DockerfileError(e.message, start) from None
            node.start_line = start
            node.comments, self.comments = self.comments, []
            if _can_contain_heredoc(node) and "<<" in joined:
                end = self._read_heredocs(node, joined, start, end)
            node.end_line = end
            if node.inner is not None:
                node.inner.start_line, node.inner.end_line = start, end
                node.inner.heredocs = node.heredocs
            nodes.append(node)
        if not nodes:
            raise DockerfileError("file with no instructions", None)
        return Dockerfile(dict(self.d.seen), self.d.escape, nodes, self.warnings,
                          self.empty_continuations)

    def _read_heredocs(self, node: Node, line: str, start: int, end: int) -> int:
        try:
            docs = heredocs_from_line(line)
        except DockerfileError as e:
            raise DockerfileError(e.message, start) from None
        for doc in docs:
            body: list[str] = []
            while True:
                if self.pos >= len(self.lines):
                    raise DockerfileError("unterminated heredoc", start)
                raw = self.lines[self.pos]
                self.pos += 1
                candidate = _trim_newline(raw)
                if doc.chomp:
                    candidate = candidate.lstrip("\t")
                if candidate == doc.name:
                    break
                body.append(raw if raw.endswith("\n") else raw + "\n")
            doc.content = "".join(body)
            node.heredocs.append(doc)
            end = self.pos
        return end


def _can_contain_heredoc(node: Node) -> bool:
    target = node.inner if node.name == "onbuild" and node.inner is not None else node
    return target.name in _HEREDOC_INSTRUCTIONS and not target.json


def heredocs_from_line(line: str) -> list[Heredoc]:
    """The heredocs an instruction line opens, in order (bodies still empty)."""
    lex = ShellLex("\\", raw_quotes=True, raw_escapes=True)
    try:
        words = lex.expand_words(line, {})
    except DockerfileError:
        return []  # BuildKit ignores lines its lexer cannot split: no heredocs then
    docs = []
    for word in words:
        doc = parse_heredoc(word)
        if doc is not None:
            docs.append(doc)
    return docs


def parse_heredoc(word: str) -> Heredoc | None:
    """`<<EOF`, `<<-EOF`, `<<"EOF"` … as a Heredoc (empty body), or None for other words.

    Quoting any part of the delimiter turns expansion of the body off, as in sh."""
    m = _RE_HEREDOC.fullmatch(word)
    if m is None or not m.group(3):
        return None
    rest = m.group(3)
    plain = ShellLex("\\", skip_unset_env=True).expand_words(rest, {})
    if len(plain) != 1:
        return None
    raw = ShellLex("\\", skip_unset_env=True, raw_quotes=True).expand_words(rest, {})
    quotes = plain[0].count("'") + plain[0].count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return Heredoc(plain[0], "", expand=quotes == raw_quotes, chomp=m.group(2) == "-")


# --- instruction arguments -----------------------------------------------------------------------

def split_command(line: str) -> tuple[str, list[str], str]:
    """(instruction word, flags, rest) — flags are the leading `--x=y` words, quotes removed."""
    stripped = line.strip("".join(GO_SPACES))
    parts = _RE_WHITESPACE.split(stripped, maxsplit=1)
    if len(parts) < 2:
        return parts[0], [], ""
    rest, flags = _extract_flags(parts[1])
    return parts[0], flags, rest.strip("".join(GO_SPACES))


def _extract_flags(line: str) -> tuple[str, list[str]]:
    flags: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in GO_SPACES:
            i += 1
        if not line.startswith("--", i):
            return line[i:], flags
        word: list[str] = []
        blank_ok = False
        quote = ""
        while i < n:
            ch = line[i]
            if quote:
                if ch == quote:
                    quote = ""
                elif ch == "\\":
                    if i + 1 < n:
                        i += 1
                        word.append(line[i])
                    else:
                        quote = ""
                else:
                    word.append(ch)
                i += 1
                continue
            if ch in GO_SPACES:
                break
            if ch in "'\"":
                quote = ch
                blank_ok = True
            elif ch == "\\":
                if i + 1 < n:
                    i += 1
                    word.append(line[i])
            else:
                word.append(ch)
            i += 1
        text = "".join(word)
        if text == "--":
            return (line[i:] if i < n else ""), flags
        if blank_ok or text:
            flags.append(text)
        if i >= n:
            return "", flags


def parse_words(rest: str, escape: str) -> list[str]:
    """Split on whitespace outside quotes, keeping quotes and escapes (ARG, ENV, LABEL)."""
    words: list[str] = []
    word: list[str] = []
    blank_ok = False
    quote = ""
    in_word = False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word:
            if ch in GO_SPACES:
                i += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i + 1 == n:
                    i += 1
                    quote = ""
                    continue
                word.append(ch)
                i += 1
                ch = rest[i]
            word.append(ch)
            i += 1
            continue
        if ch in GO_SPACES:
            if blank_ok or word:
                words.append("".join(word))
            word = []
            blank_ok = False
            in_word = False
            i += 1
            continue
        if ch in "'\"":
            quote = ch
            blank_ok = True
        if ch == escape:
            if i + 1 == n:
                i += 1
                continue
            word.append(ch)
            i += 1
            ch = rest[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def _parse_json(rest: str) -> list[str] | None:
    """The exec form, or None when `rest` is not a JSON array (then it is shell form)."""
    text = rest.lstrip("".join(GO_SPACES))
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise DockerfileError(NOT_STRING_ARRAY)
    # Go's decoder turns lone surrogate escapes into U+FFFD.
    return [re.sub("[\ud800-\udfff]", "\ufffd", v) for v in value]


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")  # Go's decoder fails on these too
    return value


_Args = tuple[list[str], bool, "Node | None"]


def _maybe_json(rest: str, escape: str) -> _Args:
    if rest == "":
        return [], False, None
    words = _parse_json(rest)
    if words is not None:
        return words, True, None
    return [rest], False, None


def _maybe_json_list(rest: str, escape: str) -> _Args:
    words = _parse_json(rest)
    if words is not None:
        return words, True, None
    return _whitespace_list(rest, escape)


def _whitespace_list(rest: str, escape: str) -> _Args:
    if rest == "":
        return [], False, None
    return _RE_WHITESPACE.split(rest), False, None


def _string(rest: str, escape: str) -> _Args:
    return ([rest] if rest else []), False, None


def _name_or_name_val(rest: str, escape: str) -> _Args:
    return parse_words(rest, escape), False, None


def _name_val(key: str) -> Callable[[str, str], _Args]:
    def parse_kv(rest: str, escape: str) -> _Args:
        words = parse_words(rest, escape)
        if not words:
            return [], False, None
        if "=" not in words[0]:
            parts = _RE_WHITESPACE.split(rest, maxsplit=1)
            if len(parts) < 2:
                raise DockerfileError(f"{key} must have two arguments")
            return [parts[0], parts[1], ""], False, None
        out: list[str] = []
        for word in words:
            if "=" not in word:
                raise DockerfileError(f"Syntax error - can't find = in {go_quote(word)}. "
                                      "Must be of the form: name=value")
            k, v = word.split("=", 1)
            out += [k, v, "="]
        return out, False, None
    return parse_kv


def _health(rest: str, escape: str) -> _Args:
    sep = 0
    while sep < len(rest) and rest[sep] not in GO_SPACES:
        sep += 1
    if sep == 0:
        return [], False, None
    nxt = sep
    while nxt < len(rest) and rest[nxt] in GO_SPACES:
        nxt += 1
    words, is_json, _ = _maybe_json(rest[nxt:], escape)
    return [rest[:sep]] + words, is_json, None


def _sub_command(rest: str, escape: str) -> _Args:
    if rest == "":
        return [], False, None
    return [], False, _node_from_line(rest, escape)


def _ignore(rest: str, escape: str) -> _Args:
    return [""], False, None


_DISPATCH: dict[str, Callable[[str, str], _Args]] = {
    "add": _maybe_json_list, "arg": _name_or_name_val, "cmd": _maybe_json,
    "copy": _maybe_json_list, "entrypoint": _maybe_json, "env": _name_val("ENV"),
    "expose": _whitespace_list, "from": _whitespace_list, "healthcheck": _health,
    "label": _name_val("LABEL"), "maintainer": _string, "onbuild": _sub_command,
    "run": _maybe_json, "shell": _maybe_json, "stopsignal": _string, "user": _string,
    "volume": _maybe_json_list, "workdir": _string,
}


def _node_from_line(line: str, escape: str) -> Node:
    word, flags, rest = split_command(line)
    fn = _DISPATCH.get(word.lower(), _ignore)
    args, is_json, inner = fn(rest, escape)
    return Node(name=word.lower(), args=args, flags=flags, json=is_json, original=line,
                inner=inner, keyword=word)


# --- dump ------------------------------------------------------------------------------------

def dump_node(node: Node) -> str:
    """One node as BuildKit's test S-expression (without the surrounding parentheses)."""
    out = node.name
    if node.flags:
        out += " [" + " ".join(go_quote(f) for f in node.flags) + "]"
    if node.inner is not None:
        out += " (" + dump_node(node.inner) + ")"
    for arg in node.args:
        out += " " + go_quote(arg)
    return out


def dump(df: Dockerfile) -> str:
    """The whole file in the conformance `result` format."""
    return "".join(f"({dump_node(n)})\n" for n in df.nodes)
