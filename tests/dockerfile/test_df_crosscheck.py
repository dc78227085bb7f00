"""The parser cross-checks: BuildKit's own Go parser (the oracle), and dockerfile-parse.

The oracle is the PyPI package `dockerfile`, which wraps moby/buildkit's
frontend/dockerfile/parser (v0.12.5). bench/fuzz_oracle.py holds the comparison: keyword,
ONBUILD trigger, JSON form, original text, line span, flags, values and heredocs of every
instruction, or the same error message. Here it runs on BuildKit's conformance Dockerfiles,
every Dockerfile of this test suite (tests/parity and the inline ones) and a few thousand
fuzz inputs; bench/fuzz_oracle.py runs 100,000+. Every disagreement must be one of the
documented differences (docs/dockerfile.md, "Parser cross-check"), each shown by a test below.

dockerfile-parse is kept for one thing it does right and independently of BuildKit's code:
which instructions a file has and on which line each starts, on the conformance files
(it breaks heredocs, `${V:-d}` and flags, so nothing else is compared). Where it disagrees,
BuildKit's expected parse shows which side is right: the cases where dockerfile-parse is
wrong are listed so a change on either side is noticed.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import load_bench
from pybuild.dockerfile import parse, parser

REPO = Path(__file__).resolve().parents[2]


ORACLE = load_bench("fuzz_oracle")
needs_oracle = pytest.mark.skipif(ORACLE.go_parser is None,
                                  reason="the PyPI package `dockerfile` (BuildKit's parser) is not installed")

CASES = Path(os.environ.get("PYBUILD_CONFORMANCE", REPO.parent / "shared" / "conformance")) \
    / "buildkit" / "parser" / "testfiles"

# dockerfile-parse is wrong here (BuildKit's expected results agree with pybuild):
DFP_WRONG = {
    "brimstone-consuldock": "comment lines inside a continuation end the instruction",
    "brimstone-docker-consul": "comment lines inside a continuation end the instruction",
    "continue-at-eof": "drops an instruction continued at end of file",
    "continueIndent": "comment lines inside a continuation end the instruction",
    "env": "drops an ENV whose continuation ends in a comment",
    "escapes": "ignores the `# escape=` directive",
    "trailing-backslash": "drops an instruction ending in a trailing escape",
}


BK_PARSER = CASES.parent


def _conformance_files() -> list[Path]:
    if not BK_PARSER.is_dir():
        return []
    return sorted(BK_PARSER.glob("*/*/Dockerfile")) + sorted(BK_PARSER.glob("testfile-line/Dockerfile"))


def _inline_dockerfiles() -> list[tuple[str, str]]:
    """String literals of the test suite that are Dockerfiles (they have a FROM line)."""
    out = []
    for f in sorted((REPO / "tests").rglob("*.py")):
        if f.name == Path(__file__).name:
            continue  # the differences shown below
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.search(r"(^|\n)[ \t]*FROM[ \t]", node.value, re.IGNORECASE):
                out.append((f"{f.relative_to(REPO)}:{node.lineno}", node.value))
    return out


def _assert_same(text: str) -> None:
    diff = ORACLE.compare(text)
    assert diff is None, f"pybuild: {diff[0]}\nbuildkit: {diff[1]}"


@needs_oracle
@pytest.mark.parametrize("path", _conformance_files() or [pytest.param(None, marks=pytest.mark.skip(
    reason=f"conformance data not found at {BK_PARSER}"))], ids=lambda p: p and f"{p.parent.parent.name}/{p.parent.name}")
def test_oracle_conformance_files(path: Path) -> None:
    _assert_same(path.read_text(encoding="utf-8", errors="replace"))


@needs_oracle
@pytest.mark.parametrize("path", sorted((REPO / "tests" / "parity").glob("*/Dockerfile")), ids=lambda p: p.parent.name)
def test_oracle_parity_dockerfiles(path: Path) -> None:
    _assert_same(path.read_text(encoding="utf-8"))


@needs_oracle
def test_oracle_inline_dockerfiles_of_the_tests() -> None:
    found = _inline_dockerfiles()
    assert len(found) > 150  # the suite has ~220: a collector that finds none must fail
    bad = [(where, ORACLE.compare(text)) for where, text in found if ORACLE.compare(text) is not None]
    assert bad == []


@needs_oracle
def test_oracle_differential_fuzz() -> None:
    tally, bad = ORACLE.run(3000, seed=14, show=0)
    assert [text for text, _ in bad] == []
    assert tally["agree"] > 2800  # most inputs parse identically; the rest are documented


@needs_oracle
def test_oracle_fuzz_finds_a_planted_parser_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """The differential fuzz can fail: a parser that forgets the vertical tab as a separator
    (a one-character slip) is caught, and no documented difference excuses it."""
    monkeypatch.setattr(parser, "_RE_WHITESPACE", re.compile(r"[\t\f\r ]+"))
    assert ORACLE.compare("FROM a\nEXPOSE 80\v81\n") is not None
    assert ORACLE.explain("FROM a\nEXPOSE 80\v81\n") is None


# --- each documented difference, shown --------------------------------------------------------

@needs_oracle
def test_difference_json_with_trailing_text_is_shell_form() -> None:
    """Today's BuildKit (80518e257, dockerfile 1.10: json.Unmarshal) reads `CMD ["a"] b` as
    shell form; the oracle's v0.12.5 read the first JSON value and ignored the rest."""
    text = 'FROM a\nCMD ["a"] b\n'
    assert parse(text).nodes[1].json is False
    assert parse(text).nodes[1].args == ['["a"] b']
    _ours, theirs = ORACLE.compare(text)
    assert theirs[1][1][2] is True and theirs[1][1][7] == ("a",)
    assert ORACLE.explain(text) == "json-trailing-text"


@needs_oracle
def test_difference_new_shell_modifiers_in_a_heredoc_line() -> None:
    """`${V#p}` is valid today (BuildKit 0.13, 4f459a4cd): the heredoc on the line is read.
    v0.12.5's lexer fails on it, and then heredocsFromLine sees no heredoc at all."""
    text = "FROM a\nRUN echo ${X#p} <<EOF\nhi\nEOF\n"
    assert [h.name for h in parse(text).nodes[1].heredocs] == ["EOF"]
    _ours, theirs = ORACLE.compare(text)
    assert theirs[0] == "ok" and theirs[1][1][8] == ()
    assert ORACLE.explain(text) == "new-shell-modifiers"


@needs_oracle
def test_difference_non_ascii_flag_values_are_kept() -> None:
    """BuildKit reads flag words byte by byte (extractBuilderFlags, unchanged today), so
    `--chown=usér` reaches it as `--chown=usÃ©r`; pybuild keeps the characters written."""
    text = "FROM a\nCOPY --chown=usér a b\n"
    assert parse(text).nodes[1].flags == ["--chown=usér"]
    _ours, theirs = ORACLE.compare(text)
    assert theirs[1][1][6] == ("--chown=usÃ©r",)
    assert ORACLE.explain(text) == "bytewise-flags"


@needs_oracle
def test_difference_blanks_after_heredoc_operator() -> None:
    """`RUN <<  EOF` opens a heredoc today (BuildKit 0b77373ab, parser_heredoc_test.go);
    v0.12.5 split `<<` from `EOF` and read no body."""
    text = "FROM a\nRUN <<  EOF  > foo\nhi\nEOF\n"
    assert [(h.name, h.content) for h in parse(text).nodes[1].heredocs] == [("EOF", "hi\n")]
    ours, theirs = ORACLE.compare(text)
    assert theirs[1][1][8] == ()
    assert ORACLE.explain(text) == "heredoc-blanks"


@needs_oracle
@pytest.mark.parametrize("text, expected", [
    # a continuation left open at the end of the file spans the blank/comment lines it read
    ("FROM a\nRUN x \\\n\n# c\n", (2, 4)),
    ("FROM a\nRUN x \\\n", (2, 2)),
])
def test_open_continuation_at_end_of_file_spans_what_it_read(text: str, expected: tuple[int, int]) -> None:
    node = parse(text).nodes[1]
    assert (node.start_line, node.end_line) == expected
    _assert_same(text)


@needs_oracle
@pytest.mark.parametrize("text, names", [
    ('FROM a\nCOPY <<"" /x\nEOF\n', []),  # `""` is no word: not a heredoc
    ("FROM a\nRUN <<\ufeff'EOF'\nhi\nEOF\n", ["EOF"]),  # text/scanner skips a leading BOM
])
def test_heredoc_words_as_go_lexes_them(text: str, names: list[str]) -> None:
    assert [h.name for h in parse(text).nodes[1].heredocs] == names
    _assert_same(text)


@needs_oracle
def test_healthcheck_type_ends_at_ascii_blanks() -> None:
    """parseHealthConfig reads bytes: U+00A0 after `CMD ` is part of the command."""
    text = "FROM a\nHEALTHCHECK CMD \u00a0 x\n"
    assert parse(text).nodes[1].args == ["CMD", "\u00a0 x"]
    _assert_same(text)


@needs_oracle
def test_difference_bytewise_split_inside_a_character() -> None:
    """A byte 0xA0 inside a character ends a flag word in BuildKit: `--x=\u00a0y` reaches it
    as `--x=Â` and the rest `y`; explained by BuildKit's byte reader, modelled exactly."""
    text = "FROM a\nCOPY --x=\u00a0y a b\n"
    ours, theirs = ORACLE.compare(text)
    assert theirs[1][1][6] == ("--x=\u00c2",) and theirs[1][1][7] == ("y", "a", "b")
    assert ORACLE.explain(text) == "bytewise-flags"


@needs_oracle
def test_heredoc_delimiter_keeps_unset_variables() -> None:
    """`<<E$X` names the delimiter `E$X` (heredocsFromLine lexes with SkipUnsetEnv)."""
    text = "FROM a\nRUN <<E$X\nhi\nE$X\nRUN echo ${X?err} <<EOF\nyo\nEOF\n"
    nodes = parse(text).nodes
    assert [h.name for h in nodes[1].heredocs] == ["E$X"]
    assert [h.name for h in nodes[2].heredocs] == ["EOF"]
    _assert_same(text)


def _cases() -> list[str]:
    if not CASES.is_dir():
        return []
    return sorted(p.name for p in CASES.iterdir() if (p / "Dockerfile").is_file())


@pytest.mark.parametrize("case", _cases() or [pytest.param("missing", marks=pytest.mark.skip(
    reason=f"conformance data not found at {CASES}"))])
def test_dockerfile_parse_agrees_where_it_is_right(case: str, tmp_path: Path) -> None:
    dockerfile_parse: Any = pytest.importorskip("dockerfile_parse")
    text = (CASES / case / "Dockerfile").read_text(errors="replace")
    ours = [(n.name.upper(), n.start_line) for n in parse(text).nodes]
    dfp = dockerfile_parse.DockerfileParser(path=str(tmp_path))
    dfp.content = text
    theirs = [(s["instruction"], s["startline"] + 1) for s in dfp.structure
              if s["instruction"] != "COMMENT"]
    if case in DFP_WRONG:
        assert ours != theirs, f"dockerfile-parse now agrees on {case}: drop it from DFP_WRONG"
    else:
        assert ours == theirs
