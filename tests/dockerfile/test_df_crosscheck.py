"""Cross-check with dockerfile-parse: it agrees with us wherever it parses correctly.

dockerfile-parse is not our parser (it breaks heredocs, `${V:-d}` and flags); here it is
an independent second reading of the BuildKit conformance Dockerfiles. Where it disagrees,
BuildKit's own expected parse (tests/conformance) shows which side is right: these are
the cases where dockerfile-parse is wrong, listed so a change on either side is noticed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pybuild.dockerfile import parse

dockerfile_parse = pytest.importorskip("dockerfile_parse")

REPO = Path(__file__).resolve().parents[2]
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


def _cases() -> list[str]:
    if not CASES.is_dir():
        return []
    return sorted(p.name for p in CASES.iterdir() if (p / "Dockerfile").is_file())


@pytest.mark.parametrize("case", _cases() or [pytest.param("missing", marks=pytest.mark.skip(
    reason=f"conformance data not found at {CASES}"))])
def test_dockerfile_parse_agrees_where_it_is_right(case: str, tmp_path: Path) -> None:
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
