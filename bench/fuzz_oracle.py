"""Differential fuzz: pybuild's parser against BuildKit's own Go parser (PyPI `dockerfile`).

The PyPI package `dockerfile` wraps moby/buildkit's frontend/dockerfile/parser (v0.12.5 in
dockerfile 3.4.0). Both parsers read the same text; every instruction must come out the same:
keyword, ONBUILD trigger, JSON form, original text, start and end line, flags, values and
heredocs (name and body). An input one side rejects the other must reject too, with the same
message. `normalise` holds every mapping between the two shapes, each with its reason; there
is no list of tolerated inputs.

    python bench/fuzz_oracle.py [--count N] [--seed S]

tests/dockerfile/test_df_crosscheck.py runs the conformance data, every Dockerfile of the
tests and a few thousand fuzz inputs through `compare`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pybuild.dockerfile import parse, parser, shell  # noqa: E402
from pybuild.dockerfile.parser import Node  # noqa: E402
from pybuild.errors import DockerfileError  # noqa: E402

try:
    import dockerfile as go_parser
except ImportError:  # tests skip with the reason; the bench run says it
    go_parser = None

Parsed = tuple[str, Any]  # ("ok", [instruction tuples]) or ("error", message)


def _load_grammar() -> Any:
    sys.path.insert(0, str(REPO / "bench"))
    import fuzz_dockerfile

    return fuzz_dockerfile


def _c(s: str) -> str:
    """The wrapper hands strings to Python as C strings: a NUL ends them (Go keeps it)."""
    return s.split("\x00", 1)[0]


def _c_or_none(s: str | None) -> str | None:
    """The wrapper turns an empty keyword or original into None."""
    return (_c(s) or None) if s is not None else None


def feedable(text: str) -> str:
    """The input both parsers get. The wrapper passes it to Go as a C string, so Go sees it
    cut at the first NUL; lone surrogates cannot cross as UTF-8 and are replaced."""
    return _c(text).encode("utf-8", "replace").decode("utf-8")


def theirs(text: str) -> Parsed:
    """BuildKit's parse of `text` (already `feedable`)."""
    assert go_parser is not None
    try:
        cmds = go_parser.parse_string(text)
    except go_parser.GoParseError as e:
        return ("error", str(e))
    except UnicodeDecodeError:
        # Go handed back bytes that are not UTF-8: only its byte-wise flag reader can cut a
        # character in two (see _extract_flags_bytewise), and the wrapper cannot decode that
        return ("undecodable", None)
    return ("ok", [(c.cmd, c.sub_cmd, c.json, c.original, c.start_line, c.end_line,
                    tuple(c.flags), tuple(c.value),
                    tuple((h.name, h.content) for h in c.heredocs)) for c in cmds])


def _values(node: Node) -> tuple[str, ...]:
    if node.inner is not None:
        # `ONBUILD ONBUILD x`: BuildKit's ONBUILD node holds its trigger in a child of an
        # empty-valued node, which the wrapper lists as one empty value.
        return ("",)
    if node.name in ("env", "label"):
        # pybuild keeps (key, value, separator) triples, the conformance dump's shape; the
        # wrapper lists the node chain's values, where BuildKit keeps the separator aside.
        return tuple(_c(a) for i, a in enumerate(node.args) if i % 3 != 2)
    return tuple(_c(a) for a in node.args)


def normalise(node: Node) -> tuple[Any, ...]:
    """A pybuild node in the wrapper's shape."""
    target = node.inner if node.inner is not None else node
    original = node.original
    heredocs: tuple[tuple[str, str], ...] = ()
    if node.inner is None and node.heredocs:
        # BuildKit appends each body and its delimiter to Original; pybuild keeps the
        # instruction line there (step names and ONBUILD triggers are built from it) and
        # the bodies in `heredocs`.
        original += "\n" + "".join(h.content + h.name + "\n" for h in node.heredocs)
        heredocs = tuple((h.name, h.content) for h in node.heredocs)
    # For ONBUILD the wrapper reads json, values and heredocs from the trigger node, where
    # BuildKit stores no heredocs (they hang on the ONBUILD node): so none are shown.
    return (_c_or_none(node.keyword), _c_or_none(node.inner.keyword if node.inner else None),
            target.json, _c_or_none(original), node.start_line, node.end_line, tuple(_c(f) for f in node.flags),
            _values(target), heredocs)


def ours(text: str) -> Parsed:
    try:
        df = parse(text)
    except DockerfileError as e:
        return ("error", e.message)
    return ("ok", [normalise(n) for n in df.nodes])


def compare(text: str) -> tuple[Parsed, Parsed] | None:
    """None when both parsers agree on `text`, else (ours, theirs)."""
    text = feedable(text)
    a, b = ours(text), theirs(text)
    return None if a == b else (a, b)


# --- the documented differences -----------------------------------------------------------------
# The oracle is BuildKit v0.12.5's parser; pybuild follows today's (and one deliberate choice).
# A disagreement is explained only when undoing exactly that difference makes the two agree.

def _json_v0_12(rest: str) -> list[str] | None:
    """v0.12.5's parseJSON: json.NewDecoder(...).Decode reads the first value and ignores what
    follows it. BuildKit 80518e257 (dockerfile 1.10) switched to json.Unmarshal, which
    rejects trailing text: `CMD ["a"] b` is shell form today."""
    text = rest.lstrip("".join(parser.GO_SPACES))
    if not text.startswith("["):
        return None
    try:
        value, _ = json.JSONDecoder(parse_constant=parser._reject_constant,
                                    parse_float=parser._finite_float).raw_decode(text)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise DockerfileError(parser.NOT_STRING_ARRAY)
    return [re.sub("[\ud800-\udfff]", "\ufffd", v) for v in value]


_MODIFIER = re.compile(r"\$\{([A-Za-z0-9_]*)(?:#|%|/)")


def _no_new_modifiers(text: str) -> str:
    """`${V#p}`, `${V%s}`, `${V/a/b}` came with BuildKit 0.13 (4f459a4cd, 9a3f9f36e); v0.12.5's
    lexer fails on them, and a failing lexer makes heredocsFromLine see no heredoc. `:-` is
    valid in both: with the modifier replaced the two must agree."""
    return _MODIFIER.sub(lambda m: "${" + m.group(1) + ":-", text)


def _no_blanks_after_heredoc_operator(sc: Any) -> str:
    """v0.12.5's lexer has no special `<`: a `<` is an ordinary character."""
    sc.pos += 1
    return "<"


_HEALTH = parser._health


def _health_bytewise(rest: str, escape: str) -> Any:
    """parseHealthConfig's byte loops: bytes 0x85 and 0xA0 inside a character end the
    HEALTHCHECK type word too (the same byte-wise reading as the flags)."""
    raw = rest.encode("utf-8", "surrogateescape")
    sep = 0
    while sep < len(raw) and chr(raw[sep]) not in shell.GO_SPACES:
        sep += 1
    if sep == 0:
        return [], False, None
    nxt = sep
    while nxt < len(raw) and chr(raw[nxt]) in shell.GO_SPACES:
        nxt += 1
    words, is_json, _ = parser._maybe_json(raw[nxt:].decode("utf-8", "ignore"), escape)
    return [raw[:sep].decode("utf-8", "ignore")] + words, is_json, None


def _ours_v0_12(text: str, old_json: bool, old_heredoc: bool, bytewise: bool = False) -> Parsed:
    """pybuild's parser with chosen upstream changes undone:
    - old_json: json.NewDecoder's reading (see _json_v0_12);
    - old_heredoc: today's lexer keeps the blanks after `<<` in that word, so `<<  EOF` (also
      across a continuation) is a heredoc (BuildKit 0b77373ab, lex.go
      processPossibleHeredoc); v0.12.5 split it into `<<` and `EOF`;
    - bytewise: BuildKit's byte-wise flag reader (see _extract_flags_bytewise)."""
    saved_json, saved_lt = parser._parse_json, shell._Scanner.possible_heredoc
    if bytewise:
        parser._extract_flags = _extract_flags_bytewise
        parser._DISPATCH["healthcheck"] = _health_bytewise
    if old_json:
        parser._parse_json = _json_v0_12
    if old_heredoc:
        shell._Scanner.possible_heredoc = _no_blanks_after_heredoc_operator  # type: ignore[method-assign]
    try:
        return ours(text)
    finally:
        parser._parse_json = saved_json
        parser._extract_flags = _EXTRACT_FLAGS
        parser._DISPATCH["healthcheck"] = _HEALTH
        shell._Scanner.possible_heredoc = saved_lt  # type: ignore[method-assign]


_EXTRACT_FLAGS = parser._extract_flags


def _extract_flags_bytewise(line: str) -> tuple[str, list[str]]:
    """BuildKit reads flag words byte by byte as runes (split_command.go extractBuilderFlags,
    still so today): each byte of a non-ASCII character becomes its own Latin-1 character,
    and bytes 0x85 and 0xA0 (U+0085, U+00A0: spaces to unicode.IsSpace) end a word. pybuild's
    own reader run over that byte view is exactly Go's loop; the rest of the line goes on as
    bytes (the wrapper drops the invalid UTF-8 a split leaves). pybuild reads characters, so
    a `--mount=target=/données` stays what was written."""
    view = line.encode("utf-8", "surrogateescape").decode("latin-1")
    rest, flags = _EXTRACT_FLAGS(view)
    return rest.encode("latin-1").decode("utf-8", "ignore"), flags


def _variants(text: str) -> list[tuple[str, Parsed, Parsed]]:
    """(name, ours, theirs) with each combination of documented differences undone."""
    out = []
    for mods in (False, True):
        t = _no_new_modifiers(text) if mods else text
        if mods and t == text:
            continue
        go = theirs(t)
        for old_json in (False, True):
            for old_heredoc in (False, True):
                for flags in (False, True):
                    name = "+".join(n for n, on in (
                        ("heredoc-blanks", old_heredoc), ("new-shell-modifiers", mods),
                        ("json-trailing-text", old_json), ("bytewise-flags", flags)) if on)
                    if name:
                        out.append((name, _ours_v0_12(t, old_json, old_heredoc, flags), go))
    return out


def explain(text: str) -> str | None:
    """The documented difference that accounts for a disagreement on `text`, or None."""
    text = feedable(text)
    if theirs(text)[0] == "undecodable":
        split = any(0x85 in c.encode() or 0xA0 in c.encode() for c in text if not c.isascii())
        return "bytewise-flags-undecodable" if split else None
    for name, mine, go in _variants(text):
        if mine == go:
            return name
    return None


def generate(rng: random.Random, grammar: Any, i: int) -> str:
    text: str = grammar.generate(rng)
    return grammar.mutate(rng, text) if i % 2 else text


def run(count: int, seed: int, show: int = 5) -> tuple[Counter[str], list[tuple[str, Any]]]:
    """(how many inputs agreed / differed for each documented reason, the unexplained)."""
    grammar = _load_grammar()
    rng = random.Random(seed)
    tally: Counter[str] = Counter()
    bad: list[tuple[str, Any]] = []
    for i in range(count):
        text = generate(rng, grammar, i)
        diff = compare(text)
        if diff is None:
            tally["agree"] += 1
            continue
        reason = explain(text)
        if reason is not None:
            tally[reason] += 1
            continue
        bad.append((text, diff))
        if len(bad) <= show:
            print(f"DISAGREEMENT on input {i}: {text!r}\n  pybuild:  {diff[0]}\n  buildkit: {diff[1]}")
    return tally, bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if go_parser is None:
        print("the PyPI package `dockerfile` is not installed (pip install dockerfile)")
        return 2
    start = time.perf_counter()
    tally, bad = run(args.count, args.seed)
    elapsed = time.perf_counter() - start
    print(f"{args.count} inputs in {elapsed:.1f}s ({args.count / elapsed:,.0f}/s), seed {args.seed}: "
          f"{tally['agree']} identical parses, "
          + ", ".join(f"{n} {k}" for k, n in sorted(tally.items()) if k != "agree")
          + f" (documented differences), {len(bad)} unexplained disagreements")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
