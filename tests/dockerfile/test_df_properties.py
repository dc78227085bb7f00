"""Arbitrary text never crashes the frontend, and long inputs stay linear."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings, strategies as st

from pybuild.dockerfile import ShellLex, dump, instructions, parse, stages
from pybuild.errors import DockerfileError

# Dockerfile-ish alphabet: keywords, flags, quotes, escapes, heredocs, JSON, unicode.
_PIECES = st.sampled_from([
    "FROM ", "RUN ", "COPY ", "ADD ", "ENV ", "ARG ", "LABEL ", "ONBUILD ", "HEALTHCHECK ", "CMD ",
    "SHELL ", "EXPOSE ", "WORKDIR ", "USER ", "VOLUME ", "STOPSIGNAL ", "MAINTAINER ", "ENTRYPOINT ",
    "AS ", "--from=", "--mount=", "type=cache,target=/x", "--chown=", "--interval=", "--link ",
    "NONE", "CMD ", "<<", "<<-", "EOF", "'", '"', "\\", "`", "$", "${", "}", ":-", "#", "=", "[",
    "]", ",", "\n", "\t", " ", "\r", "# escape=`\n", "# syntax=x\n", "a", "/", "é", "\u00a0", "\x00",
])
_TEXT = st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=60).map("".join))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT)
def test_parse_only_returns_or_raises_dockerfile_error(text: str) -> None:
    try:
        df = parse(text)
    except DockerfileError:
        return
    assert dump(df).count("\n") == len(df.nodes)
    try:
        plan = stages.plan(df, {"a": "1"}, None)
    except DockerfileError:
        return
    lex = ShellLex(df.escape)
    for stage in plan.stages:
        for instr in stage.instructions:
            try:
                instr.expand(lex, {"a": "1"})
            except DockerfileError:
                pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.dictionaries(st.sampled_from(["a", "B", "_1"]), st.text(max_size=5)))
def test_expansion_only_returns_or_raises_dockerfile_error(word: str, env: dict[str, str]) -> None:
    for lex in (ShellLex("\\"), ShellLex("`"), ShellLex(raw_quotes=True, raw_escapes=True)):
        try:
            lex.expand(word, env)
            lex.expand_words(word, env)
        except DockerfileError:
            pass


@contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Turns a quadratic blow-up into a failure instead of a stuck suite (not a timing test:
    linear work here is well under a second, quadratic work would take hours)."""
    def fail(signum: int, frame: object) -> None:
        raise AssertionError(f"still running after {seconds}s: not linear")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_long_line_is_linear() -> None:
    word = "x" * 50_000
    body = f"{word} ${{A:-{word}}} '{word}' \"{word}\""
    with hang_guard(60):
        df = parse("FROM scratch\nRUN " + body + "\nENV " + "k=v " * 50_000 + "\n"
                   "# escape=" + " " * 200_000 + "x\n")
        assert len(df.nodes[1].args[0]) == len(body)
        assert len(df.nodes[2].args) == 150_000
        assert ShellLex().expand(body, {}) == " ".join([word] * 4)
        assert len(ShellLex().expand_words(" a" * 100_000, {})) == 100_000


def test_many_continuations_are_linear() -> None:
    text = "FROM scratch\nRUN true \\\n" + "  && echo x \\\n" * 20_000 + "  && done\n"
    with hang_guard(60):
        df = parse(text)
        run = df.nodes[1]
        assert (run.start_line, run.end_line) == (2, 20_003)
        assert run.args[0].count("&& echo x") == 20_000
        heredoc = parse("FROM scratch\nCOPY <<EOF /x\n" + "line\n" * 20_000 + "EOF\n")
        body = instructions.from_node(heredoc.nodes[1]).heredocs[0].content  # type: ignore[attr-defined]
        assert body.count("\n") == 20_000
