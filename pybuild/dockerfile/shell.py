"""BuildKit's word expansion: `$V`, `${V:-w}` and friends, quotes, escapes and word splitting.

Docker expands Dockerfile words itself (not through /bin/sh), with a small lexer of its own whose
quirks users rely on: `${V:?msg}` errors, `\\$` escapes, single quotes that cannot be escaped,
positional and special parameters that are always empty. This is that lexer, rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from pybuild.errors import DockerfileError

# Go's unicode.IsSpace: the Latin-1 spaces plus Unicode White_Space (Python's isspace differs).
GO_SPACES = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                      "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_EOF = ""


def go_isspace(ch: str) -> bool:
    """unicode.IsSpace as Go defines it, which BuildKit uses to split words."""
    return ch in GO_SPACES


class _Words:
    """Collects the words of an expansion: unquoted whitespace splits, quoted text never does."""

    __slots__ = ("word", "words", "in_word")

    def __init__(self) -> None:
        self.word: list[str] = []
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch in GO_SPACES:
            if self.in_word and self.word:
                self.words.append("".join(self.word))
                self.word = []
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word.append(ch)
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        if text:  # an empty quoted string makes no word of its own (Go's wordsStruct)
            self.word.append(text)
        self.in_word = True

    def result(self) -> list[str]:
        if self.word:
            self.words.append("".join(self.word))
            self.word = []
            self.in_word = False
        return self.words


class _Scanner:
    """One pass over a word; every helper consumes characters, so expansion stays linear."""

    def __init__(self, lex: ShellLex, text: str, env: Mapping[str, str]) -> None:
        self.lex = lex
        self.text = text
        # Go's text/scanner, which BuildKit's lexer reads with, skips a byte order mark at
        # the start of its input: `<<\ufeffEOF` names the delimiter `EOF`.
        self.pos = 1 if text.startswith("\ufeff") else 0
        self.env = env
        self.matched: set[str] = set()

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else _EOF

    def next(self) -> str:
        if self.pos >= len(self.text):
            return _EOF
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def getenv(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matched.add(name)
            return self.env[name], True
        return "", False

    # --- the grammar ---------------------------------------------------------------------
    def stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Read up to `stop` (or the end when stop is EOF), returning the text and its words."""
        lex = self.lex
        result: list[str] = []
        words = _Words()
        specials: dict[str, Callable[[], str]] = {"$": self.dollar, "<": self.possible_heredoc}
        if not lex.skip_process_quotes:
            specials["'"] = self.single_quote
            specials['"'] = self.double_quote
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if stop != _EOF and ch == stop:
                self.pos += 1
                return "".join(result), words.result()
            fn = specials.get(ch)
            if fn is not None:
                tmp = fn()
                result.append(tmp)
                if ch == "$":
                    words.add_string(tmp)
                else:
                    words.add_raw_string(tmp)
                continue
            self.pos += 1
            if ch == lex.escape:
                if raw_escapes:
                    words.add_raw_char(ch)
                    result.append(ch)
                ch = self.next()
                if ch == _EOF:
                    break
                words.add_raw_char(ch)
            else:
                words.add_char(ch)
            result.append(ch)
        if stop != _EOF:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.result()

    def possible_heredoc(self) -> str:
        """`<<` keeps the blanks after it in its word: `<<  EOF` is one heredoc word (today's
        BuildKit, lex.go processPossibleHeredoc, 0b77373ab "allow whitespace in heredocs")."""
        self.pos += 1
        if self.peek() != "<":
            return "<"
        self.pos += 1
        start = self.pos
        while self.peek() in ("\t", "\r", " "):
            self.pos += 1
        return "<<" + self.text[start:self.pos]

    def single_quote(self) -> str:
        # Everything up to the next ' is literal; a ' cannot be escaped inside.
        quote = self.next()
        end = self.text.find("'", self.pos)
        if end < 0:
            raise _LexError("unexpected end of statement while looking for matching single-quote")
        body = self.text[self.pos:end]
        self.pos = end + 1
        return quote + body + quote if self.lex.raw_quotes else body

    def double_quote(self) -> str:
        lex = self.lex
        result: list[str] = []
        quote = self.next()
        if lex.raw_quotes:
            result.append(quote)
        while True:
            ch = self.peek()
            if ch == _EOF:
                raise _LexError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.pos += 1
                if lex.raw_quotes:
                    result.append(ch)
                return "".join(result)
            if ch == "$":
                result.append(self.dollar())
                continue
            self.pos += 1
            if ch == lex.escape:
                if lex.raw_escapes:
                    result.append(ch)
                nxt = self.peek()
                if nxt == _EOF:
                    continue  # a lone escape at the end of the word is dropped
                if nxt in ('"', "$", lex.escape):
                    ch = self.next()
            result.append(ch)

    def name(self) -> str:
        """A variable name: letters, digits, _; or all digits; or one special parameter."""
        start = self.pos
        ch = self.peek()
        if ch != _EOF and ch.isdecimal():
            while self.peek() != _EOF and self.peek().isdecimal():
                self.pos += 1
            return self.text[start:self.pos]
        if ch != _EOF and ch in _SPECIAL_PARAMS:
            self.pos += 1
            return ch
        while True:
            ch = self.peek()
            if ch == _EOF or not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            self.pos += 1
        return self.text[start:self.pos]

    def dollar(self) -> str:
        lex = self.lex
        self.next()  # the $
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value, found = self.getenv(name)
            if not found and lex.skip_unset_env:
                return "$" + name
            return value
        self.next()  # the {
        ch = self.peek()
        if ch == _EOF:
            raise _LexError("syntax error: missing '}'")
        if ch in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch == _EOF:
            raise _LexError("syntax error: missing '}'")
        if ch == "}":
            value, found = self.getenv(name)
            if not found and lex.skip_unset_env:
                return "${" + name + "}"
            return value
        if ch == "/":
            return self._replace(name)
        modifier = ch
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            modifier += ch
        if ch not in ("+", "-", "?", "#", "%") and not null_is_unset:
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        raw = ch in ("#", "%")
        if null_is_unset and raw:
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        try:
            word, _ = self.stop_on("}", raw)
        except _LexError:
            if self.peek() == _EOF:
                raise _LexError("syntax error: missing '}'") from None
            raise
        value, found = self.getenv(name)
        if lex.skip_unset_env and not found:
            return "${" + name + modifier + word + "}"
        empty = null_is_unset and value == ""
        if ch == "-":
            return word if not found or empty else value
        if ch == "+":
            return "" if not found or empty else word
        if ch == "?":
            if not found:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if empty:
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _LexError(f"unsupported modifier ({modifier}) in substitution")

    def _replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.stop_on("/", True)
        except _LexError:
            if self.peek() == _EOF:
                raise _LexError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self.stop_on("}", True)
        except _LexError:
            if self.peek() == _EOF:
                raise _LexError("syntax error: missing '}'") from None
            raise
        value, found = self.getenv(name)
        if self.lex.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        if replace_all:
            return regex.sub(lambda _m: replacement, value)
        return regex.sub(lambda _m: replacement, value, count=1)


class _LexError(Exception):
    """Internal: a malformed word; turned into a DockerfileError naming the word."""


def _pattern_regex(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell glob (`*`, `?`, `\\x`) as a regex; other characters are literal."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if i < n and pattern[i] in "}/":
                continue  # escaped only to survive ${...}; not part of the pattern
            nxt = pattern[i] if i < n else ""
            i += 1
            if nxt not in ("*", "?", "\\"):
                raise _LexError(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{nxt}'")
            out.append(re.escape(nxt))
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _pattern_regex(pattern, greedy, anchored=True).search(value)
    return value[m.end():] if m else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a glob, keeping each `\\x` escape in front of its character."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i:i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # Shortest/longest suffix = shortest/longest prefix of the reversed string.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


class ShellLex:
    """Expands Dockerfile words as BuildKit does (its `shell.Lex`)."""

    def __init__(self, escape: str = "\\", *, raw_quotes: bool = False, raw_escapes: bool = False,
                 skip_unset_env: bool = False, skip_process_quotes: bool = False) -> None:
        if escape not in ("\\", "`"):
            raise ValueError(f"escape must be \\ or `, not {escape!r}")
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset_env = skip_unset_env
        self.skip_process_quotes = skip_process_quotes

    def _process(self, word: str, env: Mapping[str, str]) -> tuple[str, list[str], set[str]]:
        sc = _Scanner(self, word, env)
        try:
            text, words = sc.stop_on(_EOF, self.raw_escapes)
        except _LexError as e:
            raise DockerfileError(f"failed to process {go_quote(word)}: {e}") from None
        return text, words, sc.matched

    def expand(self, word: str, env: Mapping[str, str]) -> str:
        """One word, variables substituted and quotes removed (BuildKit's ProcessWord)."""
        return self._process(word, env)[0]

    def expand_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """Expansion then splitting on unquoted whitespace (BuildKit's ProcessWords)."""
        return self._process(word, env)[1]

    def expand_with_matches(self, word: str, env: Mapping[str, str]) -> tuple[str, set[str]]:
        """Like expand, also naming the variables that were found: what a step really used."""
        text, _, matched = self._process(word, env)
        return text, matched


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_quote(s: str) -> str:
    """Go's strconv.Quote: how BuildKit prints words in dumps and error messages."""
    out = ['"']
    for ch in s:
        esc = _GO_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x20 or code == 0x7F:
                out.append(f"\\x{code:02x}")
            elif 0xD800 <= code <= 0xDFFF:
                out.append("\\ufffd")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
