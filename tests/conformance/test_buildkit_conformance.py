"""BuildKit's own frontend test data, run against our parser and lexer (one pytest case each).

The data lives outside the repository (`<repo>/../shared/conformance`, or $PYBUILD_CONFORMANCE);
without it every case skips, naming the path it looked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pybuild.dockerfile import ShellLex, dump, parse
from pybuild.errors import DockerfileError

ROOT = Path(os.environ.get("PYBUILD_CONFORMANCE")
            or Path(__file__).resolve().parents[2].parent / "shared" / "conformance")
BK = ROOT / "buildkit"
MISSING = f"conformance data not found at {ROOT} (set PYBUILD_CONFORMANCE)"


def _cases(sub: str) -> list[str]:
    d = BK / sub
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(MISSING)


@pytest.mark.parametrize("case", _cases("parser/testfiles") or [pytest.param("-", marks=pytest.mark.skip(MISSING))])
def test_parser_dump(case: str) -> None:
    d = BK / "parser" / "testfiles" / case
    _need(d)
    text = (d / "Dockerfile").read_text(encoding="utf-8")
    expected = (d / "result").read_text(encoding="utf-8")
    assert dump(parse(text)) == expected


def test_parser_case_count() -> None:
    _need(BK)
    assert len(_cases("parser/testfiles")) == 33
    assert len(_cases("parser/testfiles-negative")) == 4


@pytest.mark.parametrize("case", _cases("parser/testfiles-negative") or [pytest.param("-", marks=pytest.mark.skip(MISSING))])
def test_parser_negative(case: str) -> None:
    d = BK / "parser" / "testfiles-negative" / case
    _need(d)
    with pytest.raises(DockerfileError):
        parse((d / "Dockerfile").read_text(encoding="utf-8"))


def test_line_numbers() -> None:
    f = BK / "parser" / "testfile-line" / "Dockerfile"
    _need(f)
    nodes = parse(f.read_text(encoding="utf-8")).nodes
    assert [(n.start_line, n.end_line) for n in nodes] == [(5, 5), (11, 12), (17, 31)]


def _env_var_cases() -> list[object]:
    f = BK / "shell" / "envVarTest"
    if not f.exists():
        return [pytest.param("-", "-", marks=pytest.mark.skip(MISSING))]
    out: list[object] = []
    for no, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        plat, source, expected = (x.strip() for x in line.split("|", 2))
        if plat == "W":
            continue
        out.append(pytest.param(source, expected, id=f"line{no}"))
    return out


ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


@pytest.mark.parametrize("source,expected", _env_var_cases())
def test_env_var_expansion(source: str, expected: str) -> None:
    lex = ShellLex("\\")
    if expected == "error":
        with pytest.raises(DockerfileError):
            lex.expand(source, ENV)
    else:
        assert lex.expand(source, ENV) == expected


def _words_cases() -> list[object]:
    f = BK / "shell" / "wordsTest"
    if not f.exists():
        return [pytest.param("-", "-", {}, marks=pytest.mark.skip(MISSING))]
    env: dict[str, str] = {}
    out: list[object] = []
    for no, line in enumerate(f.read_text(encoding="utf-8").split("\n"), 1):
        if not line or line.startswith("#"):
            continue
        if line.startswith("ENV "):
            key, _, value = line[4:].lstrip(" ").partition("=")
            env[key] = value
            continue
        source, _, expected = line.partition(" | ")
        out.append(pytest.param(source.strip(), expected.lstrip(" "), dict(env), id=f"line{no}"))
    return out


@pytest.mark.parametrize("source,expected,env", _words_cases())
def test_word_splitting(source: str, expected: str, env: dict[str, str]) -> None:
    lex = ShellLex("\\")
    if expected == "error":
        with pytest.raises(DockerfileError):
            lex.expand_words(source, env)
    else:
        assert lex.expand_words(source, env) == expected.split(",")
