"""Pattern operators of the lexer (BuildKit's data covers the rest) and splitting."""

from __future__ import annotations

import pytest

from pybuild.dockerfile import ShellLex
from pybuild.errors import DockerfileError

ENV = {"P": "/usr/local/bin/tool.tar.gz", "E": "", "S": "a-b-a-b", "T": "a*b"}


@pytest.mark.parametrize("word,expected", [
    ("${P#*/}", "usr/local/bin/tool.tar.gz"),
    ("${P##*/}", "tool.tar.gz"),
    ("${P%.*}", "/usr/local/bin/tool.tar"),
    ("${P%%.*}", "/usr/local/bin/tool"),
    ("${P#/usr}", "/local/bin/tool.tar.gz"),
    ("${P%nomatch}", "/usr/local/bin/tool.tar.gz"),
    ("${S/a/x}", "x-b-a-b"),
    ("${S//a/x}", "x-b-x-b"),
    ("${S//?-/}", "b"),
    ("${T/\\*/+}", "a+b"),
    ("${S//b\\}/x}", "a-b-a-b"),
    ("${U-def}${E-def}${E:-def}", "defdef"),
    ("${U+alt}${E+alt}${E:+alt}", "alt"),
    ("${P#${P%/*}/}", "tool.tar.gz"),
    ("a\\ b'c d'\"$E\"", "a bc d"),
])
def test_patterns(word: str, expected: str) -> None:
    assert ShellLex().expand(word, ENV) == expected


def test_unsupported_modifier() -> None:
    with pytest.raises(DockerfileError) as info:
        ShellLex().expand("${S:#a}", ENV)
    assert info.value.message == 'failed to process "${S:#a}": unsupported modifier (:#) in substitution'


def test_words_and_raw_modes() -> None:
    assert ShellLex().expand_words("$S 'x y'\"\" z\\ w", {"S": " 1  2 "}) == ["1", "2", "x y", "z w"]
    raw = ShellLex(raw_quotes=True, raw_escapes=True)
    assert raw.expand_words("<<'EOF' a\\ b", {}) == ["<<'EOF'", "a\\ b"]
    assert ShellLex(skip_unset_env=True).expand("$A ${B:-x}", {}) == "$A ${B:-x}"
    assert ShellLex(skip_process_quotes=True).expand("'$A' \"x\"", {"A": "1"}) == "'1' \"x\""


def test_matches_name_the_variables_used() -> None:
    text, used = ShellLex().expand_with_matches("$A-${B:-x}-$C", {"A": "1", "C": "3", "D": "4"})
    assert (text, used) == ("1-x-3", {"A", "C"})
