"""Every bad input is a DockerfileError with BuildKit's wording and the instruction's line."""

from __future__ import annotations

import pytest

from pybuild.dockerfile import ShellLex, instructions, parse, stages
from pybuild.errors import DockerfileError


def plan(text: str, build_args: dict[str, str] | None = None, target: str | None = None) -> stages.BuildPlan:
    return stages.plan(parse(text), build_args or {}, target)


def error(text: str, **kw: object) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        plan(text, **kw)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("text,message,line", [
    ("FROM scratch\nFOO bar\n", "unknown instruction: FOO", 2),
    ("FROM scratch\nRUNN echo\n", "unknown instruction: RUNN (did you mean RUN?)", 2),
    ("FROM scratch\nCOPY --foo=1 a b\n", "unknown flag: foo", 2),
    ("FROM scratch\nCOPY --form=x a b\n", "unknown flag: form (did you mean from?)", 2),
    ("FROM scratch\nADD --from=x a b\n", "unknown flag: from", 2),
    ("FROM scratch\nCMD --doit [\"a\"]\n", "unknown flag: doit", 2),
    ("FROM scratch\nCOPY --chown a b\n", "missing a value on flag: chown", 2),
    ("FROM scratch\nCOPY --link=maybe a b\n", "expecting boolean value for flag link, not: maybe", 2),
    ("FROM scratch\nCOPY --from=a --from=b a b\n", "duplicate flag specified: from", 2),
    ("FROM scratch\nARG\n", "ARG requires at least one argument", 2),
    ("FROM scratch\nWORKDIR\n", "WORKDIR requires exactly one argument", 2),
    ("FROM scratch\nUSER\n", "USER requires exactly one argument", 2),
    ("FROM scratch\nSTOPSIGNAL\n", "STOPSIGNAL requires exactly one argument", 2),
    ("FROM scratch\nEXPOSE\n", "EXPOSE requires at least one argument", 2),
    ("FROM scratch\nVOLUME\n", "VOLUME requires at least one argument", 2),
    ("FROM scratch\nENV\n", "ENV requires at least one argument", 2),
    ("FROM scratch\nLABEL\n", "LABEL requires at least one argument", 2),
    ("FROM scratch\nENV PATH\n", "ENV must have two arguments", 2),
    ("FROM scratch\nLABEL a=b c\n",
     "Syntax error - can't find = in \"c\". Must be of the form: name=value", 2),
    ("FROM scratch\nCOPY a\n", "COPY requires at least two arguments, but only one was provided. "
     "Destination could not be determined", 2),
    ("FROM scratch\nADD\n", "ADD requires at least two arguments, but only one was provided. "
     "Destination could not be determined", 2),
    ("FROM\n", "FROM requires either one or three arguments", 1),
    ("FROM a b\n", "FROM requires either one or three arguments", 1),
    ("FROM a AS 1x\n", "invalid name for build stage: \"1x\", name can't start with a number "
     "or contain symbols", 1),
    ("FROM scratch\nSHELL /bin/sh -c\n", "SHELL requires the arguments to be in JSON form", 2),
    ("FROM scratch\nSHELL []\n", "SHELL requires at least one argument", 2),
    ("FROM scratch\nCMD [\"a\", 1]\n",
     "when using JSON array syntax, arrays must be comprised of strings only", 2),
    ("FROM scratch\nONBUILD ONBUILD RUN x\n", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", 2),
    ("FROM scratch\nONBUILD from x\n", "FROM isn't allowed as an ONBUILD trigger", 2),
    ("FROM scratch\nONBUILD MAINTAINER me\n", "MAINTAINER isn't allowed as an ONBUILD trigger", 2),
    ("FROM scratch\nONBUILD\n", "ONBUILD requires at least one argument", 2),
    ("FROM scratch\nHEALTHCHECK\n", "HEALTHCHECK requires at least one argument", 2),
    ("FROM scratch\nHEALTHCHECK CMD\n", "Missing command after HEALTHCHECK CMD", 2),
    ("FROM scratch\nHEALTHCHECK NONE x\n", "HEALTHCHECK NONE takes no arguments", 2),
    ("FROM scratch\nHEALTHCHECK CONNECT TCP 7000\n",
     "Unknown type \"CONNECT\" in HEALTHCHECK (try CMD)", 2),
    ("FROM scratch\nHEALTHCHECK --interval=5 CMD x\n", "time: missing unit in duration \"5\"", 2),
    ("FROM scratch\nHEALTHCHECK --interval=5y CMD x\n",
     "time: unknown unit \"y\" in duration \"5y\"", 2),
    ("FROM scratch\nHEALTHCHECK --timeout=-1s CMD x\n", "Interval \"timeout\" cannot be less than 1ms", 2),
    ("FROM scratch\nHEALTHCHECK --interval=1ns CMD x\n", "Interval \"interval\" cannot be less than 1ms", 2),
    ("FROM scratch\nEXPOSE 70000\n", "Invalid containerPort: 70000", 2),
    ("FROM scratch\nEXPOSE 80-70\n", "Invalid containerPort: 80-70", 2),
    ("FROM scratch\nEXPOSE abc\n", "Invalid containerPort: abc", 2),
    ("FROM scratch\nEXPOSE 80/xyz\n", "Invalid proto: xyz", 2),
    ("FROM scratch\nSTOPSIGNAL FOO\n", "Invalid signal: FOO", 2),
    ("FROM scratch\nARG =x\n", "ARG names can not be blank", 2),
    ("FROM scratch\nHEALTHCHECK --interval=1us CMD x\n",
     "Interval \"interval\" cannot be less than 1ms", 2),
    ("FROM scratch\nHEALTHCHECK --retries=-1 CMD x\n", "--retries cannot be negative (-1)", 2),
    ("FROM scratch\nHEALTHCHECK --retries=x CMD x\n",
     "strconv.ParseInt: parsing \"x\": invalid syntax", 2),
    ("FROM scratch\nRUN --network=bridge x\n", "unsupported network mode \"bridge\"", 2),
    ("FROM scratch\nRUN --mount=type=nfs,target=/x x\n", "unsupported mount type \"nfs\"", 2),
    ("FROM scratch\nRUN --mount=type=bind x\n", "mount target must be specified for bind mounts", 2),
    ("FROM scratch\nRUN --mount=target=/x,uid=1 x\n", "uid not allowed for \"bind\" type mounts", 2),
    ("FROM scratch\nRUN --mount=type=cache,target=/x,mode=9 x\n", "invalid value 9 for mode", 2),
    ("FROM scratch\nRUN --mount=type=cache,target=/x,sharing=all x\n",
     "unsupported sharing value \"all\"", 2),
    ("FROM scratch\nRUN --mount=target=/x,sharing=locked x\n",
     "invalid cache sharing set for bind mount", 2),
    ("FROM scratch\nRUN --mount=type=tmpfs,target=/x,size=lots x\n", "invalid value for size: lots", 2),
    ("FROM scratch\nRUN --mount=target=/x,required x\n",
     "unexpected key 'required' for mount type 'bind'", 2),
    ("FROM scratch\nRUN --mount=target=/x,color=red x\n", "unexpected key 'color' in 'color=red'", 2),
    ("FROM scratch\nRUN --mount=target=/x,nope x\n", "invalid field 'nope' must be a key=value pair", 2),
    ("FROM scratch\nRUN --mount=type=secret x\n", "invalid secret mount. one of source, target required", 2),
    ("FROM scratch\nRUN --mount=from=$X,target=/x x\n",
     "'from' doesn't support variable expansion, define alias stage instead", 2),
    ("FROM scratch\nCOPY a <<EOF\nx\nEOF\n", "COPY cannot accept a heredoc as a destination", 2),
    ("RUN echo\n", "no build stage in current context", 1),
    ("ARG A=1\n", "dockerfile contains no stages to build", None),
    ("FROM scratch\nRUN <<EOF\necho\n", "unterminated heredoc", 2),
    ("ARG X\nFROM ${X}\n", "base name (${X}) should not be blank", 2),
    ("FROM alpine AS a\nCOPY --from=a /x /y\n", "circular dependency detected on stage: a", 1),
    ("FROM alpine AS a\nCOPY --from=b /x /y\nFROM alpine AS b\nCOPY --from=a /x /y\n",
     "circular dependency detected on stage: a", 1),
    ("FROM alpine\nCOPY --from=3 /x /y\n", "invalid stage index 3", 2),
    ("# escape=x\nFROM a\n", "invalid escape token 'x' does not match ` or \\", 1),
    ("# escape=`\n# escape=\\\nFROM a\n", "only one escape parser directive can be used", 2),
    ("", "file with no instructions", None),
    ("# only a comment\n\n", "file with no instructions", None),
])
def test_bad_input(text: str, message: str, line: int | None) -> None:
    err = error(text)
    assert (err.message, err.line) == (message, line)


def test_target_not_found() -> None:
    err = error("FROM scratch AS a\n", target="b")
    assert (err.message, err.line) == ('target stage "b" could not be found', None)


def test_error_names_the_file() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nRUN <<EOF\n", filename="build/Dockerfile.dev")
    assert str(info.value) == "build/Dockerfile.dev:2: unterminated heredoc"


def test_expansion_error_in_step_points_at_its_line() -> None:
    p = plan("FROM scratch\nENV A=1\n\nWORKDIR ${A:?}\n")
    workdir = p.target.instructions[1]
    with pytest.raises(DockerfileError) as info:
        workdir.expand(ShellLex(), {})
    assert (info.value.message, info.value.line) == (
        'failed to process "${A:?}": A: is not allowed to be unset', 4)
    assert workdir.expand(ShellLex(), {"A": "/a"}).path == "/a"  # type: ignore[attr-defined]


def test_unset_variable_with_required_modifier_fails_on_expand() -> None:
    instr = plan("FROM scratch\nCOPY ${a:?unset!} /\n").target.instructions[-1]
    with pytest.raises(DockerfileError) as info:
        instr.expand(ShellLex(), {})
    assert (info.value.message, info.value.line) == ('failed to process "${a:?unset!}": a: unset!', 2)


@pytest.mark.parametrize("text,message,line", [
    ("FROM scratch\n\n\nWORKDIR \"/a\n", "failed to process \"\\\"/a\": unexpected end of statement "
     "while looking for matching double-quote", 4),
    ("FROM scratch\nENV A=${B\n", "failed to process \"${B\": syntax error: missing '}'", 2),
    ("FROM scratch AS a\nFROM scratch\nENV A=\"open\n", "failed to process \"\\\"open\": unexpected end of "
     "statement while looking for matching double-quote", 3),
])
def test_expansion_syntax_errors_fail_the_plan(text: str, message: str, line: int) -> None:
    # BuildKit converts every stage before running anything, so these fail up front
    with pytest.raises(DockerfileError) as info:
        plan(text)
    assert (info.value.message, info.value.line) == (message, line)


def test_deferred_mount_values_are_checked_on_expand() -> None:
    run = plan("FROM scratch\nRUN --mount=type=cache,target=/c,uid=$U true\n").target.instructions[0]
    assert isinstance(run, instructions.Run)
    assert run.expand(ShellLex(), {"U": "1000"}).mounts[0].uid == 1000
    with pytest.raises(DockerfileError) as info:
        run.expand(ShellLex(), {"U": "bob"})
    assert (info.value.message, info.value.line) == ("invalid value bob for uid", 2)


@pytest.mark.parametrize("text, retries, interval", [
    # today's BuildKit, instructions/parse.go parseHealthcheck and parseOptInterval
    ("FROM scratch\nHEALTHCHECK --retries=0 CMD x\n", 0, 0),
    ("FROM scratch\nHEALTHCHECK --interval=0s --retries=2 CMD x\n", 2, 0),
])
def test_healthcheck_zero_values_mean_the_default(text: str, retries: int, interval: int) -> None:
    from pybuild.dockerfile import instructions as ins

    hc = ins.from_node(parse(text).nodes[1])
    assert isinstance(hc, ins.Healthcheck) and (hc.retries, hc.interval) == (retries, interval)
