"""Global and stage ARGs, build-arg overrides, stage references and --target pruning."""

from __future__ import annotations

from pybuild.dockerfile import instructions as ins, parse, stages


def plan(text: str, build_args: dict[str, str] | None = None,
         target: str | None = None) -> stages.BuildPlan:
    return stages.plan(parse(text), build_args or {}, target)


MULTI = """\
ARG GO=1.22
ARG BASE=alpine:${GO}
FROM golang:${GO} AS Build
ARG GO
RUN go build
FROM ${BASE} AS test
RUN --mount=type=bind,from=build,target=/src go test
FROM scratch AS unrelated
FROM build AS release
COPY --from=0 /out /out
COPY --from=alpine:3 /etc/passwd /etc/passwd
"""


def test_global_args_feed_from_lines_and_build_args_override() -> None:
    p = plan(MULTI, {"GO": "1.21"})
    assert p.meta_args["GO"] == "1.21" and p.meta_args["BASE"] == "alpine:1.21"
    assert [s.base for s in p.stages] == ["golang:1.21", "build"]


def test_stage_sees_global_arg_only_when_redeclared() -> None:
    p = plan(MULTI)
    build = p.stages[0]
    assert build.instructions[0] == ins.Arg(line=4, end_line=4, original="ARG GO", args=[("GO", None)])
    assert p.meta_args["GO"] == "1.22"


def test_target_keeps_transitive_dependencies_only() -> None:
    p = plan(MULTI)
    assert (p.target.name, p.target.index) == ("release", 3)
    assert [s.index for s in p.stages] == [0, 3]
    release = p.stages[1]
    assert release.base_stage == 0 and release.deps == {0}
    assert isinstance(release.instructions[1], ins.Copy)
    assert release.instructions[1].from_ == "alpine:3"  # an image, not a stage

    t = plan(MULTI, target="TEST")
    assert [s.index for s in t.stages] == [0, 1] and t.target.index == 1
    assert t.stages[1].deps == {0} and t.stages[1].base == "alpine:1.22"


def test_from_names_only_earlier_stages() -> None:
    p = plan("FROM alpine AS alpine\nFROM alpine\n")
    assert p.stages[0].base_stage is None  # a stage named like its image uses the image
    assert p.target.base_stage == 0 and [s.index for s in p.stages] == [0, 1]


def test_copy_from_expands_global_args() -> None:
    p = plan("ARG SRC=one\nFROM scratch AS one\nFROM scratch\nCOPY --from=$SRC /a /b\n")
    assert p.target.deps == {0} and len(p.stages) == 2
    copy = p.target.instructions[0]
    assert isinstance(copy, ins.Copy) and copy.from_ == "one"


def test_platform_args_are_predefined_globally() -> None:
    p = plan("FROM --platform=$BUILDPLATFORM busybox AS b\nARG TARGETARCH\n")
    host = stages.platform_args()
    assert p.target.platform == host["BUILDPLATFORM"]
    assert p.meta_args["TARGETOS"] == "linux"
    assert stages.platform_args("x86_64")["TARGETPLATFORM"] == "linux/amd64"
    assert stages.platform_args("aarch64")["BUILDARCH"] == "arm64"


def test_unused_build_args_ignore_builtins_and_pruned_stages() -> None:
    text = "ARG G\nFROM scratch AS a\nARG A\nFROM scratch AS b\nARG B\n"
    p = plan(text, {"G": "1", "A": "1", "B": "1", "HTTP_PROXY": "http://p", "zzz": "1"}, target="b")
    assert p.unused_build_args == ["A", "zzz"]


def test_describe() -> None:
    text = "ARG V=1\nFROM alpine:$V AS base\nRUN echo \\\n  hi\nFROM base\nCOPY --from=base /a /b\n"
    out = stages.describe(plan(text, {"nope": "x"}))
    host = stages.platform_args()
    expected = [
        "target: stage-1 (stage 1); stages needed: base, stage-1",
        *[f"global arg {k}={v}" for k, v in sorted({**host, "TARGETSTAGE": "default", "V": "1"}.items())],
        "stage 0 base: FROM alpine:1  # line 2",
        "     3: RUN echo hi",
        "stage 1: FROM stage base [needs 0]  # line 5",
        "     6: COPY --from=base /a /b",
        "warning: build-arg nope is not consumed by any ARG",
    ]
    assert out.splitlines() == expected
