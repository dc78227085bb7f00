"""Linear-time glob matching: `.dockerignore` patterns and COPY wildcards.

Docker's matchers are RE2 regexes (moby/patternmatcher) and Go's filepath.Match, both
linear in the input. Python's `re` backtracks: a pattern with twenty `**` takes forever on
a long path. Here a pattern compiles to a small NFA (one state per token) that is run over
the input as a lazily built DFA (Thompson's construction), so matching costs
O(len(path) × len(pattern)) at worst, whatever the pattern.

Tokens: a literal character, `?` (one character but "/"), `*` (any run without "/"),
`.*` (anything, `**` at the end), `(.*/)?` (`**` in the middle: nothing, or anything
ending in "/"), and a character class.
"""

from __future__ import annotations

from dataclasses import dataclass

from pybuild.errors import PybuildError

LIT, ONE, STAR, ANY, DIRS, CLASS = range(6)
_DFA_LIMIT = 4096             # cached DFA transitions per pattern before the cache is reset


@dataclass(frozen=True)
class Token:
    kind: int
    char: str = ""
    ranges: tuple[tuple[str, str], ...] = ()
    negate: bool = False
    negated_excludes_slash: bool = False

    def accepts(self, c: str) -> bool:
        if self.kind == LIT:
            return c == self.char
        if self.kind == ONE:
            return c != "/"
        inside = any(lo <= c <= hi for lo, hi in self.ranges)
        if self.negate:
            return not inside and not (self.negated_excludes_slash and c == "/")
        return inside


class Glob:
    """A compiled pattern; `fullmatch` and `matches_path_or_parent` never backtrack."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        n = len(tokens)
        self.accept = n
        # States: 0..n are "before token i" (n accepts); n+1+i is inside token i's `(.*/)?`.
        self._eps = [self._closure(i) for i in range(2 * n + 1)]
        self.start = self._eps[0]
        self._dfa: dict[tuple[frozenset[int], str], frozenset[int]] = {}
        # A pattern that cannot match "/" except literally matches paths of one depth only.
        crosses = any(t.kind in (ANY, DIRS) or (t.kind == CLASS and t.accepts("/")) for t in tokens)
        self.depth = None if crosses else sum(1 for t in tokens if t.kind == LIT and t.char == "/")
        # The literal characters the pattern starts and ends with: a text without them
        # cannot match, and saying so takes two string compares instead of a DFA run per
        # character (most names of a walk fail `*.pyc` on the last four characters).
        head = 0
        while head < n and tokens[head].kind == LIT:
            head += 1
        tail = n
        while tail > head and tokens[tail - 1].kind == LIT:
            tail -= 1
        self._head = "".join(t.char for t in tokens[:head])
        self._tail = "".join(t.char for t in tokens[tail:])

    def _closure(self, state: int) -> frozenset[int]:
        n = len(self.tokens)
        seen = {state}
        todo = [state]
        while todo:
            s = todo.pop()
            if s >= n:
                continue
            kind = self.tokens[s].kind
            nxt: list[int] = []
            if kind in (STAR, ANY):
                nxt = [s + 1]
            elif kind == DIRS:
                nxt = [s + 1, n + 1 + s]
            for x in nxt:
                if x not in seen:
                    seen.add(x)
                    todo.append(x)
        return frozenset(seen)

    def _step(self, states: frozenset[int], c: str) -> frozenset[int]:
        key = (states, c)
        hit = self._dfa.get(key)
        if hit is not None:
            return hit
        n = len(self.tokens)
        out: set[int] = set()
        for s in states:
            if s > n:                       # inside `(.*/)?`: anything, and "/" may leave
                out |= self._eps[s]
                if c == "/":
                    out |= self._eps[s - n]  # token index s-n-1, so the state after it
                continue
            if s == n:
                continue
            t = self.tokens[s]
            if t.kind == STAR:
                if c != "/":
                    out |= self._eps[s]
            elif t.kind == ANY:
                out |= self._eps[s]
            elif t.kind in (LIT, ONE, CLASS) and t.accepts(c):
                out |= self._eps[s + 1]
        result = frozenset(out)
        if len(self._dfa) >= _DFA_LIMIT:
            self._dfa.clear()
        self._dfa[key] = result
        return result

    def fullmatch(self, text: str) -> bool:
        if not (text.startswith(self._head) and text.endswith(self._tail)):
            return False
        states = self.start
        for c in text:
            states = self._step(states, c)
            if not states:
                return False
        return self.accept in states

    def matches_path_or_parent(self, path: str) -> bool:
        """Whether the pattern matches `path` or one of its parent directories, in one pass."""
        if self.depth is not None:
            # Only the prefix with exactly `depth` slashes can match.
            cut = -1
            for _ in range(self.depth + 1):
                cut = path.find("/", cut + 1)
                if cut < 0:
                    break
            return self.fullmatch(path if cut < 0 else path[:cut])
        # the path itself or a parent (a prefix ending before a "/") must end with the tail
        if not path.startswith(self._head) or not (
                path.endswith(self._tail) or self._tail + "/" in path):
            return False
        states = self.start
        for c in path:
            if c == "/" and self.accept in states:
                return True
            states = self._step(states, c)
            if not states:
                return False
        return self.accept in states


def _class(pattern: str, i: int, go_match: bool) -> tuple[Token, int]:
    """A `[...]` starting at pattern[i] == "["; the token and the index after "]".

    go_match: Go filepath.Match rules (`^` negates, never matches "/", an empty or
    unterminated class is an error); else RE2's (as patternmatcher hands `[...]` to
    regexp: `^` negates and then matches "/" too; `]` first is a literal).
    """
    n = len(pattern)
    i += 1
    negate = i < n and pattern[i] == "^"
    if negate:
        i += 1
    ranges: list[tuple[str, str]] = []
    first = True

    def char(j: int) -> tuple[str, int]:
        if j >= n:
            raise PybuildError(f"syntax error in pattern: {pattern}")
        if go_match and pattern[j] in "-]":
            raise PybuildError(f"syntax error in pattern: {pattern}")
        if pattern[j] == "\\":
            j += 1
            if j >= n:
                raise PybuildError(f"syntax error in pattern: {pattern}")
        return pattern[j], j + 1

    while True:
        if i >= n:
            raise PybuildError(f"syntax error in pattern: {pattern}")
        if pattern[i] == "]" and (not first or go_match):
            if first:
                raise PybuildError(f"syntax error in pattern: {pattern}")
            break
        if not go_match and first and pattern[i] == "]":
            lo, i = "]", i + 1
        else:
            lo, i = char(i)
        hi = lo
        if i + 1 < n and pattern[i] == "-" and pattern[i + 1] != "]":
            hi, i = char(i + 1)
            if hi < lo:
                raise PybuildError(f"syntax error in pattern: {pattern}")
        elif go_match and i < n and pattern[i] == "-":
            raise PybuildError(f"syntax error in pattern: {pattern}")
        ranges.append((lo, hi))
        first = False
    return Token(CLASS, ranges=tuple(ranges), negate=negate, negated_excludes_slash=go_match), i + 1


def compile_go_glob(pattern: str) -> Glob:
    """Go's filepath.Match for one path component (COPY/ADD wildcards), checked as Go does."""
    tokens: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if not tokens or tokens[-1].kind != STAR:
                tokens.append(Token(STAR))
        elif ch == "?":
            tokens.append(Token(ONE))
        elif ch == "\\":
            i += 1
            if i >= n:
                raise PybuildError(f"syntax error in pattern: {pattern}")
            tokens.append(Token(LIT, pattern[i]))
        elif ch == "[":
            tok, i = _class(pattern, i, go_match=True)
            tokens.append(tok)
            continue
        else:
            tokens.append(Token(LIT, ch))
        i += 1
    return Glob(tokens)


def compile_ignore(pattern: str) -> tuple[str, Glob | None]:
    """A cleaned `.dockerignore` pattern as moby/patternmatcher compiles it: its kind
    ("exact", "prefix", "suffix" or "regexp", the shortcuts Docker takes, which are also
    semantics: `**foo` matches `xfoo`) and, for "regexp", the linear matcher."""
    tokens: list[Token] = []
    kind = "exact"
    i, n = 0, len(pattern)
    first = True
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                if i + 1 >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        tokens.append(Token(ANY))
                        kind = "regexp"
                else:
                    if not (tokens and tokens[-1].kind == DIRS):   # (.*/)?(.*/)? == (.*/)?
                        tokens.append(Token(DIRS))
                    kind = "regexp"
                if first:
                    kind = "suffix"
            else:
                if not (tokens and tokens[-1].kind == STAR):
                    tokens.append(Token(STAR))
                kind = "regexp"
        elif ch == "?":
            tokens.append(Token(ONE))
            kind = "regexp"
        elif ch == "\\":
            if i + 1 < n:
                i += 1
                tokens.append(Token(LIT, pattern[i]))
                kind = "regexp"
            else:
                tokens.append(Token(LIT, "\\"))
        elif ch == "[":
            tok, i = _class(pattern, i, go_match=False)
            tokens.append(tok)
            kind = "regexp"
            first = False
            continue
        elif ch == "]":
            tokens.append(Token(LIT, "]"))
            kind = "regexp"
        else:
            tokens.append(Token(LIT, ch))
        i += 1
        first = False
    return kind, (Glob(tokens) if kind == "regexp" else None)
