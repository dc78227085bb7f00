"""Build output renderers: exact plain text, JSON events against the documented schema, and the
tty display driven through a real pseudo-terminal and read back with a small screen emulator."""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pybuild.errors import PybuildError
from pybuild.progress import (
    BuildSummary,
    PlainProgress,
    SourceExcerpt,
    error_block,
    excerpt_window,
    human_size,
    make_progress,
)

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ["FROM busybox", "COPY a /a", "RUN false"]
FAIL_MSG = 'process "/bin/sh -c false" did not complete successfully: exit code: 1'


class FakeClock:
    """Time that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def scripted_build(p, clock: FakeClock) -> None:
    """A build with an internal vertex, a cached step, a logging step and a failing step."""
    p.vertex_started("def", "[internal] load build definition from Dockerfile")
    p.transfer("def", "transferring dockerfile:", 82, None)
    clock.tick(0.02)
    p.vertex_done("def")
    p.vertex_started("from", "[1/3] FROM docker.io/library/busybox:latest")
    p.vertex_cached("from")
    p.vertex_started("copy", "[2/3] COPY a /a")
    p.explain("copy", "source a changed")
    clock.tick(0.1)
    p.transfer("copy", "sha256:abcd", 12_580_000, 128_000_000)
    clock.tick(0.1)
    p.transfer("copy", "sha256:abcd", 13_000_000, 128_000_000)  # < 5 %: throttled
    clock.tick(0.1)
    p.transfer("copy", "sha256:abcd", 128_000_000, 128_000_000)
    p.vertex_done("copy")
    p.vertex_started("run", "[3/3] RUN false")
    clock.tick(0.345)
    p.vertex_log("run", b"hel")
    clock.tick(0.1)
    p.vertex_log("run", b"lo\r\ncolour \x1b[31mred\x1b[0m\x07\n\ttabbed\xff")
    clock.tick(0.2)
    p.vertex_error("run", FAIL_MSG, SourceExcerpt("Dockerfile", DOCKERFILE, 3, 3))


EXPECTED_PLAIN = """\
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 82B 0.0s done
#1 DONE 0.0s

#2 [1/3] FROM docker.io/library/busybox:latest
#2 CACHED

#3 [2/3] COPY a /a
#3 rebuilding: source a changed
#3 sha256:abcd 12.58MB / 128.00MB
#3 sha256:abcd 128.00MB / 128.00MB 0.2s done
#3 DONE 0.3s

#4 [3/3] RUN false
#4 0.345 hello
#4 0.445 colour \\x1b[31mred\\x1b[0m\\x07
#4 0.445 \ttabbed\\xff
#4 ERROR: process "/bin/sh -c false" did not complete successfully: exit code: 1
------
 > [3/3] RUN false:
0.345 hello
0.445 colour \\x1b[31mred\\x1b[0m\\x07
0.445 \ttabbed\\xff
------
Dockerfile:3
--------------------
   1 |     FROM busybox
   2 |     COPY a /a
   3 | >>> RUN false
--------------------
"""


def test_plain_exact_output() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = make_progress("plain", out, clock=clock)
    scripted_build(p, clock)
    p.close()
    p.close()
    assert out.getvalue() == EXPECTED_PLAIN


def test_plain_holds_other_vertex_until_current_finishes() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = PlainProgress(out, clock)
    p.vertex_started("a", "[a 1/1] RUN a")
    p.vertex_started("b", "[b 1/1] RUN b")
    clock.tick(1)
    p.vertex_log("b", b"from b\n")
    p.vertex_log("a", b"from a\n")
    clock.tick(1)
    p.vertex_done("a")
    p.vertex_done("b")
    p.close()
    assert out.getvalue() == (
        "#1 [a 1/1] RUN a\n#1 1.000 from a\n#1 DONE 2.0s\n\n"
        "#2 [b 1/1] RUN b\n#2 1.000 from b\n#2 DONE 2.0s\n"
    )


def test_plain_switches_after_max_delay_and_marks_interrupted_block() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = PlainProgress(out, clock)
    p.vertex_started("a", "pull")
    p.vertex_log("a", b"a1\n")
    p.vertex_started("b", "step")
    clock.tick(11)
    p.vertex_log("b", b"b1\n")
    p.vertex_log("a", b"a2\n")
    p.vertex_done("a")
    p.vertex_done("b")
    p.close()
    assert out.getvalue() == (
        "#1 pull\n#1 0.000 a1\n#1 ...\n\n#2 step\n#2 11.00 b1\n#2 ...\n\n"
        "#1 pull\n#1 11.00 a2\n#1 DONE 11.0s\n\n#2 step\n#2 DONE 11.0s\n"
    )


def test_plain_cached_without_start_and_late_events_ignored() -> None:
    out = io.StringIO()
    p = make_progress("plain", out, clock=FakeClock())
    p.vertex_cached("[1/2] FROM scratch")
    p.vertex_done("[1/2] FROM scratch")  # already final: ignored
    p.close()
    p.vertex_log("x", b"late\n")
    assert out.getvalue() == "#1 [1/2] FROM scratch\n#1 CACHED\n"


def test_plain_summary_and_warnings() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = make_progress("plain", out, clock=clock)
    p.warning("FROM --platform flag should not use constant value")
    layers = [(100, "COPY a /a"), (5_000_000, "RUN apt-get install -y x"), (2_000, "RUN echo")]
    p.summary(BuildSummary("sha256:" + "0" * 64, ["myapp:latest", "myapp:1"], 5_002_100, 2, 1, 4.25, layers))
    p.close()
    assert out.getvalue() == (
        "\n1 warning found:\n - FROM --platform flag should not use constant value\n"
        "\nBUILD SUMMARY\n image:  sha256:" + "0" * 64 + "\n tags:   myapp:latest, myapp:1\n"
        " size:   5.00MB in 3 layers\n steps:  2 run, 1 cached\n time:   4.2s\n largest layers:\n"
        "   5.00MB  RUN apt-get install -y x\n   2.00kB  RUN echo\n     100B  COPY a /a\n"
    )


def test_plain_ten_thousand_lines_and_control_bytes() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = make_progress("plain", out, clock=clock)
    p.vertex_started("s", "[1/1] RUN big")
    payload = b"".join(b"line %d\n" % i for i in range(10_000))
    for i in range(0, len(payload), 777):  # chunks that split lines anywhere
        p.vertex_log("s", payload[i : i + 777])
    p.vertex_log("s", bytes(range(10)) + bytes(range(11, 32)) + b"\x7f\x9b\n")
    p.vertex_done("s")
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[1:10_001] == [f"#1 0.000 line {i}" for i in range(10_000)]
    assert lines[10_001] == (
        "#1 0.000 \\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\t\\x0b\\x0c\\r\\x0e\\x0f"
        "\\x10\\x11\\x12\\x13\\x14\\x15\\x16\\x17\\x18\\x19\\x1a\\x1b\\x1c\\x1d\\x1e\\x1f\\x7f\\x9b"
    )
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", out.getvalue())


def test_plain_is_thread_safe() -> None:
    out = io.StringIO()
    p = make_progress("plain", out)

    def step(vid: str) -> None:
        p.vertex_started(vid, f"[{vid}] RUN work")
        for i in range(500):
            p.vertex_log(vid, b"%s %d\n" % (vid.encode(), i))
            p.transfer(vid, "blob", i, 500)
        p.vertex_done(vid)

    threads = [threading.Thread(target=step, args=(f"t{n}",)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.close()
    text = out.getvalue()
    for line in text.splitlines():
        assert line == "" or re.fullmatch(r"#[12] .+", line), line
    for n in range(2):
        logged = re.findall(rf"^#\d \d+\.\d+ t{n} (\d+)$", text, re.M)
        assert logged == [str(i) for i in range(500)]
        assert text.count(f"[t{n}] RUN work") >= 1


def test_error_excerpt_context_like_buildkit() -> None:
    lines = [f"L{i}" for i in range(1, 11)]
    rows = excerpt_window(SourceExcerpt("Dockerfile", lines, 5, 5))
    assert [(n, m) for n, _, m in rows] == [(3, False), (4, False), (5, True), (6, False), (7, False)]
    rows = excerpt_window(SourceExcerpt("Dockerfile", lines, 1, 1))
    assert [n for n, _, _ in rows] == [1, 2, 3]
    rows = excerpt_window(SourceExcerpt("Dockerfile", lines, 4, 6))
    assert [(n, m) for n, _, m in rows] == [(3, False), (4, True), (5, True), (6, True), (7, False)]
    assert excerpt_window(SourceExcerpt("Dockerfile", lines, 11, 11)) is None
    block = error_block("[2/2] RUN x", [], SourceExcerpt("Dockerfile", lines, 99, 99))
    assert block == "------\n > [2/2] RUN x:\n------\n"


def test_human_size_matches_buildkit_units() -> None:
    assert [human_size(n) for n in (0, 999, 1000, 12_580_000, 128 * 10**6, 1_500_000_000)] == [
        "0B", "999B", "1.00kB", "12.58MB", "128.00MB", "1.50GB"
    ]


def test_quiet_prints_only_error_and_result(capsys: pytest.CaptureFixture[str]) -> None:
    clock, out = FakeClock(), io.StringIO()
    p = make_progress("quiet", out, clock=clock)
    scripted_build(p, clock)
    p.warning("ignored in quiet mode")
    p.close()
    p.result_line("sha256:" + "1" * 64)
    assert out.getvalue() == EXPECTED_PLAIN[EXPECTED_PLAIN.index("------") :]
    assert capsys.readouterr().out == "sha256:" + "1" * 64 + "\n"


def test_unknown_mode_and_tty_on_a_pipe_are_user_errors() -> None:
    with pytest.raises(PybuildError, match="invalid progress mode"):
        make_progress("fancy", io.StringIO())
    with pytest.raises(PybuildError, match="needs a terminal"):
        make_progress("tty", io.StringIO())
    assert type(make_progress("auto", io.StringIO())).__name__ == "PlainProgress"


# -- rawjson against the schema published in docs/progress.md ---------------------------------

def _schema() -> dict:
    doc = (ROOT / "docs" / "progress.md").read_text()
    block = re.search(r"```json schema\n(.*?)```", doc, re.S)
    assert block, "docs/progress.md must contain a ```json schema block"
    return json.loads(block.group(1))


def _validate(value: object, schema: dict, defs: dict, path: str = "$") -> None:
    """The JSON Schema subset the documented schema uses; raises AssertionError on mismatch."""
    if "$ref" in schema:
        return _validate(value, defs[schema["$ref"].rsplit("/", 1)[1]], defs, path)
    if "oneOf" in schema:
        matches = 0
        for option in schema["oneOf"]:
            try:
                _validate(value, option, defs, path)
                matches += 1
            except AssertionError:
                pass
        assert matches == 1, f"{path}: matches {matches} alternatives"
        return
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        pytypes = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
                   "null": type(None), "object": dict, "array": list}
        ok = any(isinstance(value, pytypes[k]) and not (k in ("integer", "number") and isinstance(value, bool))
                 for k in kinds)
        assert ok, f"{path}: {value!r} is not {kinds}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key}"
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(props), f"{path}: unexpected {set(value) - set(props)}"
        for key, sub in props.items():
            if key in value:
                _validate(value[key], sub, defs, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _validate(item, schema["items"], defs, f"{path}[{i}]")
    if "minimum" in schema:
        assert value >= schema["minimum"], f"{path}: {value} < {schema['minimum']}"


def test_rawjson_events_match_schema(capsys: pytest.CaptureFixture[str]) -> None:
    clock, out = FakeClock(), io.StringIO()
    p = make_progress("rawjson", out, clock=clock)
    scripted_build(p, clock)
    p.warning("a warning")
    p.summary(BuildSummary("sha256:" + "2" * 64, ["t:1"], 10, 1, 1, 1.5, [(10, "RUN x")]))
    p.result_line("sha256:" + "2" * 64)
    p.close()
    assert capsys.readouterr().out == ""
    schema = _schema()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    for event in events:
        _validate(event, schema, schema.get("$defs", {}))
    kinds = [e["type"] for e in events]
    for kind in ("vertex.started", "vertex.log", "vertex.cached", "vertex.done", "vertex.error",
                 "vertex.transfer", "vertex.explain", "warning", "summary", "result"):
        assert kind in kinds
    logs = b"".join(base64.b64decode(e["data"]) for e in events if e["type"] == "vertex.log")
    assert logs == b"hello\r\ncolour \x1b[31mred\x1b[0m\x07\n\ttabbed\xff"
    error = next(e for e in events if e["type"] == "vertex.error")
    assert error["error"] == FAIL_MSG and error["name"] == "[3/3] RUN false"
    assert error["logs"][0] == "0.345 hello"
    assert [r["marked"] for r in error["source"]["lines"]] == [False, False, True]
    with pytest.raises(AssertionError):  # the validator itself rejects a malformed event
        _validate({"type": "vertex.done", "time": 1.0}, schema, schema.get("$defs", {}))


# -- tty through a pseudo-terminal --------------------------------------------------------------

class Screen:
    """A strict terminal: printable text, CR, LF and the CSI codes rich's live display uses.

    Any other control byte or escape is drawn as '¤' so a test sees it; lines never scroll
    away (the buffer grows), and a character written past the last column wraps like a VT100.
    """

    CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0

    def _line(self) -> list[str]:
        while len(self.rows) <= self.row:
            self.rows.append([])
        line = self.rows[self.row]
        if len(line) < self.width:
            line.extend(" " * (self.width - len(line)))
        return line

    def _put(self, ch: str) -> None:
        if self.col >= self.width:
            self.row, self.col = self.row + 1, 0
        self._line()[self.col] = ch
        self.col += 1

    def feed(self, data: str) -> None:
        i = 0
        while i < len(data):
            ch = data[i]
            if ch == "\x1b":
                m = self.CSI.match(data, i)
                if m is None or not self._csi(m.group(1), m.group(2)):
                    self._put("¤")
                    i += 1
                else:
                    i = m.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                self._line()
            elif ch < " " or "\x7f" <= ch <= "\x9f":
                self._put("¤")
            else:
                self._put(ch)
            i += 1

    def _csi(self, params: str, final: str) -> bool:
        if params.startswith("?"):
            return final in "hl"  # cursor show/hide
        n = int(params.split(";")[0] or 0)
        if final == "m":
            return True
        if final == "A":
            self.row = max(0, self.row - max(n, 1))
        elif final == "B":
            self.row += max(n, 1)
        elif final == "G":
            self.col = max(n, 1) - 1
        elif final == "K":
            line = self._line()
            lo, hi = {0: (self.col, self.width), 1: (0, self.col + 1), 2: (0, self.width)}[n]
            line[lo:hi] = " " * (hi - lo)
        elif final == "J" and n == 0:
            self._line()[self.col :] = " " * (self.width - self.col)
            del self.rows[self.row + 1 :]
        else:
            return False
        return True

    def text(self) -> list[str]:
        return ["".join(r).rstrip() for r in self.rows]


CHILD = textwrap.dedent(
    """
    import sys, time
    from rich.console import Console
    from pybuild.progress import make_progress, BuildSummary, SourceExcerpt
    snap_path, scenario = sys.argv[1], sys.argv[2]
    p = make_progress("auto", sys.stderr)
    def snap(label):
        with open(snap_path, "a") as f:
            f.write("=== " + label + "\\n")
            Console(file=f, width=60, height=40, color_system=None).print(p.frame(60, 40))
    p.vertex_started("ctx", "[internal] load build context")
    p.transfer("ctx", "transferring context:", 2048, None)
    p.vertex_done("ctx")
    p.vertex_started("from", "[1/4] FROM docker.io/library/busybox:latest")
    p.vertex_cached("from")
    p.vertex_started("big", "[2/4] RUN seq 10000 with a name long enough to need cropping on a 60 column terminal")
    data = b"".join(b"line %d\\n" % i for i in range(10000))
    for i in range(0, len(data), 4000):
        p.vertex_log("big", data[i:i + 4000])
    p.vertex_log("big", b"50%\\r100% \\x1b[32mgreen\\x1b[0m\\x07\\x08\\x1b]0;title\\x07 tail")
    snap("running")
    time.sleep(0.3)
    p.vertex_done("big")
    p.vertex_started("ctl", "[3/4] RUN printf raw control bytes")
    p.vertex_log("ctl", bytes(range(32)) + b"\\x7f\\x1bc\\x1b[2J\\x1b[H\\n")
    p.vertex_done("ctl")
    if scenario == "fail":
        p.vertex_started("bad", "[4/4] RUN false")
        p.vertex_log("bad", b"about to fail\\n")
        p.vertex_error("bad", "exit code: 1", SourceExcerpt("Dockerfile", ["FROM busybox", "RUN false"], 2, 2))
    else:
        p.vertex_started("ok", "[4/4] COPY a /a")
        p.vertex_done("ok")
        p.summary(BuildSummary("sha256:" + "ab" * 32, ["demo:latest"], 4_200_000, 3, 1, 1.2,
                               [(4_000_000, "RUN seq 10000"), (200_000, "COPY a /a")]))
    p.close()
    """
)


def spawn_in_pty(argv: list[str], env: dict[str, str], width: int, height: int,
                 timeout: float) -> tuple[int, bytes]:
    """Run argv with a pty of the given size as its terminal; (exit status, raw output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode, b"".join(chunks)


def run_in_pty(tmp_path: Path, scenario: str, width: int = 60, height: int = 40,
               env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run CHILD with a pty of the given size as its terminal; returns (raw output, snapshots)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    snaps = tmp_path / f"snap-{scenario}.txt"
    child_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    child_env.update({"TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}, **(env or {}))
    status, raw = spawn_in_pty([sys.executable, str(script), str(snaps), scenario], child_env,
                               width, height, 120)
    assert status == 0, raw.decode(errors="replace")
    return raw.decode("utf-8", "replace"), snaps.read_text()


def final_screen(raw: str, width: int) -> list[str]:
    screen = Screen(width)
    screen.feed(raw)
    lines = screen.text()
    while lines and not lines[-1]:
        lines.pop()
    return lines


def test_tty_final_screen_after_success(tmp_path: Path) -> None:
    raw, snaps = run_in_pty(tmp_path, "ok")
    lines = final_screen(raw, 60)
    assert "¤" not in "".join(lines), "\n".join(lines)
    header = [i for i, line in enumerate(lines) if line.startswith("[+] Building")]
    frame = lines[header[-1] :]
    assert re.fullmatch(r"\[\+\] Building \d+\.\ds \(5/5\) FINISHED", frame[0])
    rows = frame[1:6]
    for row in rows:
        assert len(row) <= 60 and re.search(r" \d+\.\ds$", row), row
    assert rows[0].startswith(" => DONE    [internal] load build context")
    assert rows[1].startswith(" => CACHED  [1/4] FROM docker.io/library/busybox")
    assert rows[2].startswith(" => DONE    [2/4] RUN seq 10000 with a name") and "…" in rows[2]
    assert rows[3].startswith(" => DONE    [3/4] RUN printf raw control bytes")
    assert rows[4].startswith(" => DONE    [4/4] COPY a /a")
    rest = "\n".join(frame[6:])
    assert "=> => #" not in rest and "line 9999" not in rest  # collapsed: no output tails
    assert "sha256:" + "ab" * 32 in re.sub(r"\s", "", rest)  # folded on a narrow screen
    assert re.search(r"4\.00MB\s+RUN seq 10000", rest) and "demo:latest" in rest
    # the mid-build frame: the running step with exactly its last 6 output lines, cleaned
    running = snaps.split("=== running\n", 1)[1].splitlines()
    assert running[3].startswith(" => running [2/4] RUN seq 10000")
    tail = [line for line in running if line.startswith(" => => # ")]
    assert tail == [f" => => # line {i}" for i in range(9995, 10000)] + [" => => # 100% green\\x07\\x08 tail"]


def test_tty_error_block_after_final_frame(tmp_path: Path) -> None:
    raw, _ = run_in_pty(tmp_path, "fail", width=72, height=30)
    lines = final_screen(raw, 72)
    assert "¤" not in "".join(lines), "\n".join(lines)
    start = max(i for i, line in enumerate(lines) if line.startswith("[+] Building"))
    assert re.fullmatch(r"\[\+\] Building \d+\.\ds \(5/5\)", lines[start])
    assert lines[start + 5].startswith(" => ERROR   [4/4] RUN false")
    assert lines[start + 6 :] == [
        "------", " > [4/4] RUN false:", "0.000 about to fail", "------", "Dockerfile:2",
        "--------------------", "   1 |     FROM busybox", "   2 | >>> RUN false", "--------------------",
    ]


def test_tty_colour_and_no_color(tmp_path: Path) -> None:
    coloured, _ = run_in_pty(tmp_path, "ok")
    plain, _ = run_in_pty(tmp_path, "ok", env={"NO_COLOR": "1"})
    colour_sgr = re.compile(r"\x1b\[[0-9;]*(3[0-9]|9[0-7])[0-9;]*m")
    assert colour_sgr.search(coloured)
    assert not colour_sgr.search(plain)
    assert final_screen(plain, 60)[-1] == final_screen(coloured, 60)[-1]


def test_plain_explain_before_start_and_slow_unknown_size_transfer() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = make_progress("plain", out, clock=clock)
    p.explain("s", "build arg VERSION changed")  # before the vertex is named: held
    p.vertex_started("s", "[internal] load build context")
    p.transfer("s", "transferring context:", 1_000, None)
    clock.tick(6)
    p.transfer("s", "transferring context:", 3_000_000, None)  # unknown size, > 5 s: shown
    clock.tick(1)
    p.transfer("s", "transferring context:", 3_100_000, None)  # < 5 s since last: throttled
    p.vertex_done("s")
    p.close()
    assert out.getvalue() == (
        "#1 [internal] load build context\n#1 rebuilding: build arg VERSION changed\n"
        "#1 transferring context: 3.00MB 6.0s\n#1 transferring context: 3.10MB 7.0s done\n#1 DONE 7.0s\n"
    )
