"""What a real build prints: the exact plain log, JSON events, and the live tty screen."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import Pybuild
from test_progress import final_screen, spawn_in_pty

pytestmark = pytest.mark.root

DOCKERFILE = """FROM busybox
COPY a /a
RUN echo hello && echo world
RUN echo out; exit 3
RUN echo never
"""


@pytest.fixture
def ctx(busybox: Pybuild, tmp_path: Path) -> Path:
    c = tmp_path / "ctx"
    c.mkdir()
    (c / "a").write_text("a\n")
    (c / "Dockerfile").write_text("FROM busybox\nCOPY a /a\n")
    busybox("build", str(c))  # so that COPY is CACHED below
    (c / "Dockerfile").write_text(DOCKERFILE)
    return c


def normalise(text: str) -> str:
    text = re.sub(r"^(#\d+) \d+\.\d+ ", r"\1 T ", text, flags=re.M)
    text = re.sub(r"^\d+\.\d+ ", "T ", text, flags=re.M)
    return re.sub(r"DONE \d+\.\d+s", "DONE Ns", text)


EXPECTED_PLAIN = """#1 [1/5] FROM docker.io/library/busybox
#1 DONE Ns

#2 [2/5] COPY a /a
#2 CACHED

#3 [3/5] RUN echo hello && echo world
#3 rebuilding: no earlier build of this step
#3 T hello
#3 T world
#3 DONE Ns

#4 [4/5] RUN echo out; exit 3
#4 rebuilding: no earlier build of this step
#4 T out
#4 ERROR: process "/bin/sh -c echo out; exit 3" did not complete successfully: exit code: 3
------
 > [4/5] RUN echo out; exit 3:
T out
------
Dockerfile:4
--------------------
   2 |     COPY a /a
   3 |     RUN echo hello && echo world
   4 | >>> RUN echo out; exit 3
   5 |     RUN echo never
   6 |     
--------------------
Dockerfile:4: process "/bin/sh -c echo out; exit 3" did not complete successfully: exit code: 3
"""


def test_plain_output_exactly(busybox: Pybuild, ctx: Path) -> None:
    proc = busybox("build", "--progress", "plain", str(ctx), check=False)
    assert proc.returncode == 1
    assert normalise(proc.stderr) == EXPECTED_PLAIN


def test_rawjson_events(busybox: Pybuild, ctx: Path) -> None:
    proc = busybox("build", "--progress", "rawjson", str(ctx), check=False)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("{")]
    events = [json.loads(ln) for ln in lines]
    kinds = [(e["type"], e.get("vertex")) for e in events]
    assert ("vertex.cached", "v2") in kinds
    logs = b"".join(base64.b64decode(e["data"]) for e in events
                    if e["type"] == "vertex.log" and e["vertex"] == "v3")
    assert logs == b"hello\nworld\n"
    err = next(e for e in events if e["type"] == "vertex.error")
    assert err["vertex"] == "v4" and "exit code: 3" in err["error"]
    assert all(isinstance(e["time"], (int, float)) for e in events)
    # the last stderr line is still the one-line error
    assert proc.stderr.strip().splitlines()[-1].startswith("Dockerfile:4: ")


def test_big_and_binary_output_do_not_break_plain(busybox: Pybuild, tmp_path: Path) -> None:
    c = tmp_path / "noisy"
    c.mkdir()
    (c / "Dockerfile").write_text(
        "FROM busybox\nRUN seq 10000\nRUN printf 'a\\033[2Jb\\007c\\r\\n\\001\\377end\\n'\n")
    proc = busybox("build", "--progress", "plain", str(c))
    lines = proc.stderr.splitlines()
    assert sum(1 for ln in lines if re.match(r"#2 \d+\.\d+ \d+$", ln)) == 10000
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert any("end" in ln and ln.startswith("#3 ") for ln in lines)


def run_pty(args: list[str], width: int = 80, height: int = 30) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "PYBUILD_PROGRESS")}
    env["TERM"] = "xterm-256color"
    _status, raw = spawn_in_pty([sys.executable, "-m", "pybuild", *args], env, width, height, 300)
    return raw.decode("utf-8", "replace")


def test_tty_screen_at_the_end(busybox: Pybuild, tmp_path: Path) -> None:
    c = tmp_path / "tty"
    c.mkdir()
    (c / "Dockerfile").write_text("FROM busybox\nRUN seq 10000\nRUN printf 'x\\033[2Jy\\n'\n")
    raw = run_pty(["--root", str(busybox.root), "build", "-t", "ttyimg", str(c)])
    lines = final_screen(raw, 80)
    text = "\n".join(lines)
    assert "¤" not in text, text
    assert re.search(r"\[\+\] Building \d+\.\ds \(4/4\) FINISHED", text), text
    assert re.search(r"=> DONE\s+\[2/3\] RUN seq 10000", text), text
    assert "ttyimg:latest" in text
    assert "=> => # " not in text.split("FINISHED")[-1]  # collapsed when done
