"""Build checks, rule by rule: a Dockerfile that triggers it (exact message and line, from
BuildKit's frontend/dockerfile/dockerfile_check_test.go) and one that does not. Root-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pybuild.dockerfile import parse
from pybuild.dockerfile.checks import (
    RULES,
    evaluate,
    parse_options,
    render_json,
    render_text,
)

ROOT = Path(__file__).resolve().parents[2]


def found(text: str, **kw: Any) -> list[tuple[str, int, str]]:
    report = evaluate(parse(text), **kw)
    assert report.error is None, report.error
    return [(w.rule, w.line, w.detail) for w in report.warnings]


def only(rule: str, text: str, **kw: Any) -> list[tuple[int, str]]:
    return [(line, detail) for r, line, detail in found(text, **kw) if r == rule]


BUSYBOX = {"config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
           "os": "linux", "architecture": "amd64"}

# rule, triggering Dockerfile, expected (line, message) list, a clean Dockerfile
CASES: list[tuple[str, str, list[tuple[int, str]], str]] = [
    ("StageNameCasing", "\nFROM scratch AS BadStageName\n",
     [(2, "Stage name 'BadStageName' should be lowercase")], "\nFROM scratch AS good\n"),
    ("FromAsCasing", "\nFROM scratch AS a\nFROM scratch as base2\n",
     [(3, "'as' and 'FROM' keywords' casing do not match")], "\nfrom scratch as a\n"),
    ("FromAsCasing", "\nfrom scratch AS base\nfrom scratch as base2\n",
     [(2, "'AS' and 'from' keywords' casing do not match")], "\nFROM scratch AS base\n"),
    ("NoEmptyContinuation", ("\nFROM scratch\n# warning: empty continuation line\nCOPY Dockerfile \\\n\n.\n"
     "COPY Dockerfile \\\n.\n"), [(6, "Empty continuation line")],
     "\nFROM scratch\nCOPY Dockerfile \\\n.\n"),
    ("ConsistentInstructionCasing", "\n# warning\n#\nFrom scratch as base\nFROM scratch AS base2\n",
     [(4, "Command 'From' should match the case of the command majority (uppercase)")],
     "\nFROM scratch\nCOPY Dockerfile /foo\nCOPY Dockerfile /bar\n"),
    ("ConsistentInstructionCasing", ("\nFROM scratch\ncopy Dockerfile /foo\ncopy Dockerfile /bar\n"
     "copy Dockerfile /baz\n"),
     [(2, "Command 'FROM' should match the case of the command majority (lowercase)")],
     "\nfrom scratch\ncopy Dockerfile /foo\n"),
    ("DuplicateStageName", "\nFROM scratch AS b\nFROM scratch AS b\n",
     [(3, 'Duplicate stage name "b", stage names should be unique')],
     "\nFROM scratch AS b1\nFROM scratch AS b2\n"),
    ("ReservedStageName", "\nFROM scratch AS scratch\nFROM scratch AS context\n",
     [(2, 'Stage name should not use the same name as reserved stage "scratch"'),
      (3, 'Stage name should not use the same name as reserved stage "context"')],
     "\nFROM scratch\nFROM scratch AS a\n"),
    ("JSONArgsRecommended", "\nFROM scratch\nCMD mycommand\n",
     [(3, ("JSON arguments recommended for CMD to prevent unintended behavior related to OS "
          "signals"))],
     "\nFROM scratch AS base\nSHELL [\"/usr/bin/customshell\"]\n\nFROM base\nCMD mycommand\n"),
    ("JSONArgsRecommended", "\nFROM scratch\nENTRYPOINT mycommand\n",
     [(3, ("JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to "
          "OS signals"))],
     "\nFROM scratch\n# check=skip=JSONArgsRecommended\nENTRYPOINT mycommand\n"),
    ("MaintainerDeprecated", "\nFROM scratch\nMAINTAINER me@example.org\n",
     [(3, "Maintainer instruction is deprecated in favor of using label")],
     '\nFROM scratch\nLABEL org.opencontainers.image.authors="me@example.org"\n'),
    ("UndefinedArgInFrom", "\nFROM --platform=$BULIDPLATFORM scratch\n",
     [(2, "FROM argument 'BULIDPLATFORM' is not declared (did you mean BUILDPLATFORM?)")],
     "\nARG BUILDPLATFORM=linux/amd64\nFROM --platform=$BUILDPLATFORM scratch\n"),
    ("UndefinedArgInFrom", "\nARG tag=latest\nFROM busybox:${tag}${version} AS b\n",
     [(3, "FROM argument 'version' is not declared")],
     "\nARG DEBUG\nFROM scra${DEBUG:-tch}\n"),
    ("UndefinedArgInFrom", ("\nARG MY_OS=linux\nARG MY_ARCH=amd64\nFROM --platform=linux/${MYARCH} "
     "busybox\n"), [(4, "FROM argument 'MYARCH' is not declared (did you mean MY_ARCH?)")],
     "\nARG DEBUG\nFROM scratch${DEBUG}\n"),
    ("WorkdirRelativePath", "\nFROM scratch\nWORKDIR app/\n",
     [(3, 'Relative workdir "app/" can have unexpected results if the base image changes')],
     "\nFROM scratch AS a\nWORKDIR /app\n\nFROM a AS b\nWORKDIR subdir/\n"),
    ("UndefinedVar", "\nFROM scratch AS first\nCOPY $foo .\nFROM scratch AS second\nCOPY $bar .\n",
     [(3, "Usage of undefined variable '$foo'"), (5, "Usage of undefined variable '$bar'")],
     "\nFROM scratch\nARG foo\nCOPY Dockerfile${foo} .\n"),
    ("UndefinedVar", ("\nFROM scratch\nARG DIR_BINARIES=binaries/\nARG DIR_ASSETS=assets/\n"
     "ARG DIR_CONFIG=config/\nCOPY $DIR_ASSET .\n"),
     [(6, "Usage of undefined variable '$DIR_ASSET' (did you mean $DIR_ASSETS?)")],
     "\nFROM scratch AS base\nARG foo=Dockerfile\n\nFROM base\nCOPY $foo .\n"),
    ("UndefinedVar", "\nFROM scratch\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\n",
     [(3, "Usage of undefined variable '$foo'")], "\nFROM scratch\nRUN echo $PATH $nope\n"),
    ("UndefinedVar", "\nFROM scratch\nENV PATH=$PAHT:/tmp/bin\n",
     [(3, "Usage of undefined variable '$PAHT' (did you mean $PATH?)")],
     "\nFROM scratch\nENV PATH=$PATH:/tmp/bin\n"),
    ("UndefinedVar", "ARG V=1\nFROM scratch\nCOPY $V /\nARG A=$A\n",
     [(3, "Usage of undefined variable '$V'"), (4, "Usage of undefined variable '$A'")],
     "ARG V=1\nFROM scratch\nARG V\nCOPY $V /\n"),
    ("MultipleInstructionsDisallowed", ("\nFROM scratch\nENTRYPOINT [\"/myapp\"]\nENTRYPOINT "
     "[\"/myotherapp\"]\nCMD [\"/myapp\"]\nCMD [\"/myotherapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\n"
     "HEALTHCHECK CMD [\"/myotherapp\"]\n"),
     [(3, ("Multiple ENTRYPOINT instructions should not be used in the same stage because only the "
          "last one will be used")),
      (5, ("Multiple CMD instructions should not be used in the same stage because only the last "
          "one will be used")),
      (7, ("Multiple HEALTHCHECK instructions should not be used in the same stage because only "
          "the last one will be used"))],
     ("\nFROM scratch AS a\nENTRYPOINT [\"/myapp\"]\nCMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myapp\"]"
     "\n\nFROM a AS b\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myotherapp\"]\nHEALTHCHECK CMD "
     "[\"/myotherapp\"]\n")),
    ("LegacyKeyValueFormat", "\nFROM scratch\nENV testkey value\nLABEL key value\n",
     [(3, '"ENV key=value" should be used instead of legacy "ENV key value" format'),
      (4, '"LABEL key=value" should be used instead of legacy "LABEL key value" format')],
     "\nFROM scratch\nENV testkey=value\nLABEL key=value\n"),
    ("RedundantTargetPlatform", "\nFROM --platform=${TARGETPLATFORM} scratch\n",
     [(2, ("Setting platform to predefined ${TARGETPLATFORM} in FROM is redundant as this is the "
          "default behavior"))],
     "\n# check=skip=RedundantTargetPlatform\nFROM --platform=$TARGETPLATFORM scratch\n"),
    ("SecretsUsedInArgOrEnv", ("\nFROM scratch\nARG SECRET_PASSPHRASE\nENV password=bar secret=baz\n"
     "ENV git_key=\n"),
     [(3, 'Do not use ARG or ENV instructions for sensitive data (ARG "SECRET_PASSPHRASE")'),
      (4, 'Do not use ARG or ENV instructions for sensitive data (ENV "password")'),
      (4, 'Do not use ARG or ENV instructions for sensitive data (ENV "secret")'),
      (5, 'Do not use ARG or ENV instructions for sensitive data (ENV "git_key")')],
     ("\nFROM scratch\nENV PUBLIC_KEY=\nARG public_token\nARG SECRET_PASSPHRASE_FILE\n"
     "ENV password_file=bar secret_File=baz\nARG AUTH_MODULE_VERSION\nENV sunflower=foo\n"
     "# check=skip=SecretsUsedInArgOrEnv // allow secret in environment\nENV password=bar\n")),
    ("InvalidDefaultArgInFrom", "\nARG VERSION\nFROM busybox:$VERSION\n",
     [(3, "Default value for ARG busybox:$VERSION results in empty or invalid base image name")],
     '\nARG VERSION="latest"\nFROM busybox:${VERSION}\n'),
    ("InvalidDefaultArgInFrom", "\nARG IMAGE\nFROM $IMAGE\n",
     [(3, "Default value for ARG $IMAGE results in empty or invalid base image name")],
     '\nARG BUSYBOX_VARIANT=""\nFROM busybox:stable${BUSYBOX_VARIANT}\n'),
    ("FromPlatformFlagConstDisallowed", "\nFROM --platform=linux/amd64 scratch\n",
     [(2, 'FROM --platform flag should not use constant value "linux/amd64"')],
     "\nFROM --platform=linux/amd64 scratch AS my_amd64_stage\n"),
    ("ExposeProtoCasing", "\nFROM scratch\nEXPOSE 80/TcP 8080/TCP 8080/udp\n",
     [(3, "Defined protocol '80/TcP' in EXPOSE instruction should be lowercase"),
      (3, "Defined protocol '8080/TCP' in EXPOSE instruction should be lowercase")],
     "\nFROM scratch\nEXPOSE 80/tcp 8080/udp 9000\n"),
    ("ExposeInvalidFormat", "\nFROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080 5000:5000 8000\n",
     [(3, ("EXPOSE instruction should not define an IP address or host-port mapping, found "
          "'127.0.0.1:80:80'")),
      (3, ("EXPOSE instruction should not define an IP address or host-port mapping, found "
          "'[::1]:8080:8080'")),
      (3, ("EXPOSE instruction should not define an IP address or host-port mapping, found "
          "'5000:5000'"))],
     "\nFROM scratch\nEXPOSE 8000 8001/udp\n"),
    # pybuild's package-manager rules
    ("AptListsKept", ("FROM debian\nRUN apt-get update && apt-get install -y --no-install-recommends "
     "curl\n"), [(2, ("apt-get update without removing /var/lib/apt/lists/* in the same RUN: the "
                    "package lists ship in this layer"))],
     ("FROM debian\nRUN apt-get update && apt-get install -y --no-install-recommends curl \\\n"
     " && rm -rf /var/lib/apt/lists/*\n")),
    ("AptRecommendsInstalled", ("FROM debian\nRUN apt-get install -y curl && rm -rf "
     "/var/lib/apt/lists/*\n"), [(2, "apt-get install without --no-install-recommends")],
     "FROM debian\nRUN apt-get install -y --no-install-recommends curl\n"),
    ("PipCacheKept", "FROM python\nRUN pip install -r requirements.txt\n",
     [(2, ("pip install without --no-cache-dir or a cache mount on ~/.cache/pip: the download "
          "cache ships in this layer"))],
     ("FROM python\nRUN --mount=type=cache,target=/root/.cache/pip pip install -r r.txt\n"
     "RUN python3 -m pip install --no-cache-dir django\n")),
    ("PipefailMissing", "FROM debian\nRUN curl -fsSL https://x | tar -xz\n",
     [(2, ("RUN with a pipe and no `set -o pipefail`: a failing command before the last `|` does "
          "not fail the step"))],
     "FROM debian\nRUN set -o pipefail; curl x | tar -xz\nRUN a || b\nRUN echo 'a | b'\n"),
    ("LastUserRoot", "FROM debian\nUSER app\nUSER root\n",
     [(3, 'The last USER of the final stage is "root": the container runs as root')],
     "FROM debian AS build\nUSER root\nFROM debian\nUSER 10001:10001\n"),
    ("AddForLocalFiles", "FROM debian\nADD app.py /app/\n",
     [(2, 'ADD of the local source "app.py": COPY it (ADD unpacks archives and fetches URLs)')],
     "FROM debian\nADD rootfs.tar.gz /\nADD https://example.com/x /x\nCOPY app.py /app/\n"),
]


@pytest.mark.parametrize("rule,text,expected,clean", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_triggers_and_not(rule: str, text: str, expected: list[tuple[int, str]],
                               clean: str) -> None:
    kw: dict[str, Any] = {"image_config": lambda name: BUSYBOX}
    assert only(rule, text, **kw) == expected
    assert only(rule, clean, **kw) == []


def test_every_rule_has_a_case_and_a_docs_anchor() -> None:
    docs = (ROOT / "docs" / "checks.md").read_text()
    covered = {c[0] for c in CASES} | {"CopyIgnoredFile", "InvalidBaseImagePlatform"}
    assert covered == set(RULES)
    for name in RULES:
        assert f'<a id="{name.lower()}"></a>' in docs, name


def test_copy_ignored_file() -> None:
    text = "\nFROM scratch\nCOPY Dockerfile .\nADD Dockerfile /windy\n"
    assert only("CopyIgnoredFile", text, ignore_patterns=["Dockerfile"]) == [
        (3, 'Attempting to Copy file "Dockerfile" that is excluded by .dockerignore'),
        (4, 'Attempting to Add file "Dockerfile" that is excluded by .dockerignore')]
    assert only("CopyIgnoredFile", "# check=skip=CopyIgnoredFile\n" + text[1:],
                ignore_patterns=["Dockerfile"]) == []
    # exclusions make it undecidable: BuildKit does not judge then
    assert only("CopyIgnoredFile", "\nFROM scratch\nCOPY ./Dockerfile .\n",
                ignore_patterns=["**", "!Dockerfile"]) == []
    # COPY --from reads a stage, not the context
    assert only("CopyIgnoredFile", "\nFROM scratch AS base\nCOPY Dockerfile /foobar\nFROM base\n"
                "COPY --from=base /foobar /Dockerfile\n", ignore_patterns=["foobar"]) == []
    # the context root only when everything is ignored
    assert only("CopyIgnoredFile", "\nFROM scratch\nCOPY . .\n", ignore_patterns=[".*"]) == []
    assert only("CopyIgnoredFile", "\nFROM scratch\nCOPY . .\n", ignore_patterns=["*"]) == [
        (3, 'Attempting to Copy file "." that is excluded by .dockerignore')]


def test_invalid_base_image_platform() -> None:
    arm = {"config": {}, "os": "linux", "architecture": "arm64", "variant": "v8"}
    text = "FROM busybox\n"
    assert only("InvalidBaseImagePlatform", text, image_config=lambda n: arm,
                host={"os": "linux", "architecture": "amd64"}) == [
        (1, ('Base image busybox was pulled with platform "linux/arm64/v8", expected '
            '"linux/amd64" for current build'))]
    assert only("InvalidBaseImagePlatform", text, image_config=lambda n: BUSYBOX,
                host={"os": "linux", "architecture": "amd64"}) == []
    # an unknown base image is not judged (nor are its variables)
    assert found("FROM nothere\nCOPY $x .\n", image_config=lambda n: None) == []


def test_unknown_base_env_is_not_judged_but_known_is() -> None:
    cfg = {"config": {"Env": ["PATH=/bin", "PYTHON_VERSION=3.12"]}}
    assert only("UndefinedVar", "FROM python\nENV V=$PYTHON_VERSION\n",
                image_config=lambda n: cfg) == []
    assert only("UndefinedVar", "FROM python\nENV V=$PYTHON_VERSOIN\n",
                image_config=lambda n: cfg) == [
        (2, "Usage of undefined variable '$PYTHON_VERSOIN' (did you mean $PYTHON_VERSION?)")]


def test_skip_directive_and_build_arg() -> None:
    text = "#check=skip=all\nFROM scratch as base\ncopy Dockerfile .\n"
    assert found(text) == []
    text = "#check=skip=ConsistentInstructionCasing\nFROM scratch as base\ncopy Dockerfile .\n"
    assert found(text) == [("FromAsCasing", 2, "'as' and 'FROM' keywords' casing do not match")]
    # the build arg replaces the directive as a whole
    text = "#check=skip=all\nFROM scratch as base\ncopy Dockerfile .\n"
    report = evaluate(parse(text), build_args={
        "BUILDKIT_DOCKERFILE_CHECK": "skip=ConsistentInstructionCasing;error=true"})
    assert [w.rule for w in report.warnings] == ["FromAsCasing"]
    err = report.violation()
    assert err is not None and err.message == "lint violation found for rules: FromAsCasing"
    assert err.line == 2
    report = evaluate(parse("#check=error=true\nFROM scratch as base\ncopy Dockerfile .\n"),
                      build_args={"BUILDKIT_DOCKERFILE_CHECK": "skip=all"})
    assert report.warnings == [] and report.violation() is None


def test_comment_skip_is_local_to_its_instruction() -> None:
    text = ("FROM scratch\n# check=skip=all // is local to only this instruction\n"
            "ENV alternate_password=bar\nARG alternate_password\n")
    assert found(text) == [("SecretsUsedInArgOrEnv", 4, ('Do not use ARG or ENV instructions for '
                            'sensitive data (ARG "alternate_password")'))]


def test_parse_options_errors_as_buildkit() -> None:
    assert parse_options("skip=A, B ;error=true").skip == frozenset({"A", "B"})
    assert parse_options("error=1").error
    with pytest.raises(ValueError, match='invalid check option "bogus"'):
        parse_options("bogus")
    with pytest.raises(ValueError, match='invalid check option "nope"'):
        parse_options("nope=1")
    with pytest.raises(ValueError, match="ParseBool"):
        parse_options("error=yes")


def test_warnings_before_an_error_are_kept() -> None:
    text = "\nFROM scratch AS BadStageName\nMAINTAINER me@example.org\nBADCMD\n"
    report = evaluate(parse(text))
    assert [(w.rule, w.line) for w in report.warnings] == [("StageNameCasing", 2),
                                                           ("MaintainerDeprecated", 3)]
    assert report.error is not None and report.error.line == 4
    assert report.error.message.startswith("unknown instruction: BADCMD")


def test_build_mode_judges_only_reachable_stages() -> None:
    text = "FROM scratch AS a\n\nFROM a AS b\nENV testkey value\n\nFROM a AS c\n"
    assert only("LegacyKeyValueFormat", text) == [
        (4, '"ENV key=value" should be used instead of legacy "ENV key value" format')]
    assert only("LegacyKeyValueFormat", text, reachable={0, 2}) == []


def test_text_and_json_shapes() -> None:
    text = "FROM alpine\nRUN echo hi\nENTRYPOINT echo hi\n"
    report = evaluate(parse(text), image_config=lambda n: BUSYBOX)
    assert render_text(report, text, "Dockerfile") == (
        "Check complete, 1 warning has been found!\n\n"
        "WARNING: JSONArgsRecommended - https://docs.docker.com/go/dockerfile/rule/"
        "json-args-recommended/\n"
        "JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS "
        "signals\n"
        "Dockerfile:3\n--------------------\n"
        "   1 |     FROM alpine\n   2 |     RUN echo hi\n   3 | >>> ENTRYPOINT echo hi\n"
        "   4 |     \n--------------------\n")
    doc = render_json(report, text, "Dockerfile")
    assert doc["warnings"][0]["ruleName"] == "JSONArgsRecommended"
    assert doc["warnings"][0]["location"]["ranges"][0]["start"]["line"] == 3
    assert "buildError" not in doc
    assert render_text(evaluate(parse("FROM scratch\n")), "", "Dockerfile") == \
        "Check complete, no warnings found.\n"


# --- the command line: exit codes as BuildKit's lint subrequest ---------------------------

def _check(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "Dockerfile").write_text(text)
    return subprocess.run([sys.executable, "-m", "pybuild", "--root", str(tmp_path / "store"),
                           "build", *extra, str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)


def test_check_exit_codes(tmp_path: Path) -> None:
    clean = _check(tmp_path, "FROM scratch\nCOPY Dockerfile /\n", "--check")
    assert clean.returncode == 0 and clean.stdout == "Check complete, no warnings found.\n"
    warned = _check(tmp_path, "FROM scratch as base\nCOPY Dockerfile /\n", "--check")
    # BuildKit's lint result has statuscode 1 when a warning was found; buildx exits with it
    assert warned.returncode == 1, warned.stderr
    assert warned.stdout.startswith("Check complete, 1 warning has been found!\n\nWARNING: "
                                    "FromAsCasing - ")
    assert warned.stderr == ""
    failing = _check(tmp_path, "# check=error=true\nFROM scratch as base\nCOPY Dockerfile /\n",
                     "--call", "check")
    assert failing.returncode == 1
    assert failing.stderr == "Dockerfile:2: lint violation found for rules: FromAsCasing\n"
    skipped = _check(tmp_path, "# check=error=true\nFROM scratch as base\n", "--check",
                     "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip=FromAsCasing")
    assert skipped.returncode == 0, skipped.stdout
    broken = _check(tmp_path, "FROM scratch AS Bad\nBADCMD\n", "--check")
    assert broken.returncode == 1 and "StageNameCasing" in broken.stdout
    assert broken.stderr == "Dockerfile:2: unknown instruction: BADCMD\n"
    bad_opt = _check(tmp_path, "# check=nope\nFROM scratch\n", "--check")
    assert bad_opt.returncode == 1 and "Traceback" not in bad_opt.stderr
    assert bad_opt.stderr.startswith("error: failed to parse check options")


def test_check_formats(tmp_path: Path) -> None:
    js = _check(tmp_path, "FROM scratch as base\n", "--call", "check,format=json")
    doc = json.loads(js.stdout)
    assert [w["ruleName"] for w in doc["warnings"]] == ["FromAsCasing"]
    sarif = _check(tmp_path, "FROM scratch as base\n", "--check", "--format", "sarif")
    log = json.loads(sarif.stdout)
    assert log["version"] == "2.1.0"
    assert log["runs"][0]["results"][0]["ruleId"] == "FromAsCasing"


def test_call_targets_and_outline(tmp_path: Path) -> None:
    text = ("# base the builder image\nFROM scratch AS base\n"
            "# app runs the application\nFROM base AS app\nARG PORT=80\n")
    out = _check(tmp_path, text, "--call", "targets")
    assert out.returncode == 0
    assert out.stdout == "TARGET        DESCRIPTION\nbase          the builder image\n" \
                         "app (default) runs the application\n"
    outline = _check(tmp_path, text, "--call", "outline")
    assert outline.stdout.startswith("TARGET:      app\nDESCRIPTION: runs the application\n\n"
                                     "BUILD ARG   VALUE   DESCRIPTION\nPORT        80      \n")
    assert "stage 1 app: FROM stage base" in outline.stdout
    bad = _check(tmp_path, text, "--call", "nothing")
    assert bad.returncode == 1 and "invalid --call" in bad.stderr


def test_checks_never_crash_on_what_parses() -> None:
    """Hostile-ish Dockerfiles built from real fragments: evaluate returns a report, always."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pybuild.errors import PybuildError

    lines = st.sampled_from([
        "FROM scratch", "FROM $X AS Base", "from a as b", "FROM --platform=$P ${I:-x}",
        "ARG A", "ARG B=$A", "ENV K V", "ENV T_TOKEN=$T", "LABEL a b", "COPY $A $B /",
        "ADD x /", "ADD https://x/y /", "WORKDIR rel", "WORKDIR /abs", "EXPOSE 1:2/UDP",
        "EXPOSE ${P}/TCP", "CMD x", "CMD [\"x\"]", "ENTRYPOINT y", "HEALTHCHECK CMD z",
        "SHELL [\"/bin/bash\", \"-c\"]", "USER root", "RUN apt-get update | tee x",
        "RUN pip install x", "MAINTAINER m", "ONBUILD RUN x", "# check=skip=all", "COPY \\",
        "", "VOLUME $V", "STOPSIGNAL $S", "USER $U"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(lines, min_size=1, max_size=12), st.lists(st.sampled_from(
        ["*", "x", "!y", "**/z"]), max_size=3))
    def run(body: list[str], ignore: list[str]) -> None:
        text = "\n".join(body) + "\n"
        try:
            df = parse(text)
        except PybuildError:
            return
        report = evaluate(df, ignore_patterns=ignore, image_config=lambda n: BUSYBOX)
        render_text(report, text, "Dockerfile")
        json.dumps(render_json(report, text, "Dockerfile"))
        for w in report.warnings:
            assert w.rule in RULES and w.line >= 1

    run()
