"""Build output: BuildKit's progress model (vertices, logs, transfers) rendered four ways.

The solver reports generic vertices and never formats anything itself; a renderer chosen by
`--progress` turns the events into text. `plain` reproduces BuildKit's plain printer so logs
diff cleanly against `docker build --progress=plain`; `tty` is a live rich display; `quiet`
prints only failures and the image id; `rawjson` is one JSON object per event for machines.
Every public method takes one lock, so a pull thread and a step thread may report at once.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO
from collections.abc import Callable

from pybuild.errors import PybuildError
from pybuild.units import bytes_text as human_size

if TYPE_CHECKING:  # rich is imported only by the tty renderer: plain builds start faster
    from rich.console import RenderableType
    from rich.text import Text

Clock = Callable[[], float]

MODES = ("auto", "tty", "plain", "quiet", "rawjson")
ERROR_TAIL_LINES = 20  # lines of a failed step's output repeated in the error block
TTY_TAIL_LINES = 6  # lines of a running step's output shown under it (BuildKit's term height)
MAX_PARTIAL = 64 * 1024  # a "line" without newline longer than this is flushed anyway
MAX_DELAY = 10.0  # plain: seconds a vertex's output may wait while another one prints
TRANSFER_MIN_DELTA = 0.05  # plain: reprint a transfer after 5 % progress ...
TRANSFER_MIN_TIME = 5.0  # ... or 5 seconds, as BuildKit does

_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_NAMED_CONTROL = {"\n": "\\n", "\r": "\\r"}
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")


@dataclass
class SourceExcerpt:
    """Where a failing instruction sits: `lines` is the whole file, start/end are 1-based.

    Pass `text.split("\\n")` to reproduce BuildKit exactly (it shows the empty line after a
    final newline as context too).
    """

    filename: str
    lines: list[str]
    start: int
    end: int


@dataclass
class BuildSummary:
    """What a finished build produced; `layers` holds (size, created_by) per layer."""

    image_id: str
    tags: list[str]
    size: int
    steps_run: int
    steps_cached: int
    duration: float
    layers: list[tuple[int, str]]


@dataclass
class _Transfer:
    """One byte counter of a vertex (a blob download, the context upload)."""

    label: str
    started: float
    current: int = 0
    total: int | None = None
    completed: float | None = None
    printed: tuple[int, float] | None = None  # plain: (current, time) last printed


@dataclass(eq=False)
class _Vertex:
    """Everything known about one vertex; renderer-specific fields are grouped at the end."""

    vid: str
    name: str
    created: float
    state: str = "waiting"  # waiting | running | cached | done | error
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    partial: bytearray = field(default_factory=bytearray)
    partial_time: float = 0.0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=ERROR_TAIL_LINES))
    transfers: dict[str, _Transfer] = field(default_factory=dict)
    explain: str | None = None
    # plain renderer
    index: int = 0
    announced: bool = False
    pending: list[str] = field(default_factory=list)
    pending_since: float | None = None
    # tty renderer
    screen: deque[str] = field(default_factory=lambda: deque(maxlen=TTY_TAIL_LINES))

    @property
    def is_final(self) -> bool:
        return self.state in ("cached", "done", "error")

    def offset(self, t: float) -> float:
        """Seconds since the vertex started: the stamp BuildKit puts on its log lines."""
        return max(0.0, t - self.started) if self.started is not None else 0.0


def escape(text: str) -> str:
    """Make text safe for a log: every control character except tab becomes visible."""
    return _CONTROL.sub(lambda m: _NAMED_CONTROL.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def _decode(raw: bytes) -> str:
    """Output bytes → text; invalid UTF-8 shows as \\xNN instead of being lost."""
    return raw.decode("utf-8", "backslashreplace")


def screen_text(raw: bytes) -> str:
    """What a terminal would roughly show for one output line, without escape sequences.

    Colour codes are dropped, a carriage return keeps only what was written after it (progress
    bars), tabs become spaces and anything else unprintable is escaped.
    """
    text = _ANSI.sub("", _decode(raw))
    if "\r" in text:
        text = next((seg for seg in reversed(text.split("\r")) if seg), "")
    return escape(text.expandtabs(8))


def stamp(seconds: float) -> str:
    """A log line's time as BuildKit writes it: 3 decimals below 10 s, 2 below 100 s, else 1."""
    precision = 3 if seconds < 10 else 2 if seconds < 100 else 1
    return f"{seconds:.{precision}f}"


def excerpt_window(excerpt: SourceExcerpt) -> list[tuple[int, str, bool]] | None:
    """The (line number, text, marked) rows BuildKit shows around a failing instruction.

    Same padding rule as BuildKit: up to 4 lines of context around a single line, 2 around a
    range, taken on whichever side the file has room.
    """
    count = len(excerpt.lines)
    start, end = excerpt.start, max(excerpt.start, excerpt.end)
    if start < 1 or start > count:
        return None
    end = min(end, count)
    pad = 4 if start == end else 2
    first, last, used = start, end, 0
    while used < pad:
        if first > 1:
            first, used = first - 1, used + 1
        if last != count:
            last, used = last + 1, used + 1
        used += 1
    return [(i, excerpt.lines[i - 1], start <= i <= end) for i in range(first, last + 1)]


def error_block(name: str, tail: list[str], excerpt: SourceExcerpt | None) -> str:
    """The text BuildKit prints under a failed step, up to (not including) the ERROR line.

    Nothing when there is nothing to show (a failed pull or push: no output, no
    Dockerfile line): the one-line error says it all.
    """
    if not tail and excerpt is None:
        return ""
    out = ["------", f" > {escape(name)}:", *tail, "------"]
    window = excerpt_window(excerpt) if excerpt is not None else None
    if excerpt is not None and window is not None:
        out.append(f"{escape(excerpt.filename)}:{excerpt.start}")
        out.append("--------------------")
        for number, text, marked in window:
            out.append(f" {number:3d} | {'>>>' if marked else '   '} {escape(text)}")
        out.append("--------------------")
    return "\n".join(out) + "\n"


def _largest_layers(s: BuildSummary, limit: int = 5) -> list[tuple[int, str]]:
    """The biggest layers first; equal sizes keep build order."""
    return sorted(s.layers, key=lambda layer: -layer[0])[:limit]


def summary_text(s: BuildSummary) -> str:
    """The build summary as plain lines (plain mode, and the documented format)."""
    layers = _largest_layers(s)
    out = [
        "BUILD SUMMARY",
        f" image:  {s.image_id}",
        f" tags:   {', '.join(s.tags) if s.tags else '(none)'}",
        f" size:   {human_size(s.size)} in {len(s.layers)} layer{'s' if len(s.layers) != 1 else ''}",
        f" steps:  {s.steps_run} run, {s.steps_cached} cached",
        f" time:   {s.duration:.1f}s",
    ]
    if layers:
        out.append(" largest layers:")
        width = max(len(human_size(size)) for size, _ in layers)
        out += [f"   {human_size(size):>{width}}  {escape(made_by)}" for size, made_by in layers]
    return "\n".join(out) + "\n"


def warnings_text(messages: list[str]) -> str:
    """Warnings as BuildKit lists them after the build."""
    n = len(messages)
    lines = [f"{n} warning{'s' if n != 1 else ''} found:"] + [f" - {escape(m)}" for m in messages]
    return "\n".join(lines) + "\n"


class Progress:
    """Shared bookkeeping for every mode: vertices, line splitting, the lock.

    Subclasses override the `_on_*` hooks, which run with the lock held. Events after
    close() are ignored: a straggling thread must not write over the final output.
    """

    def __init__(self, stream: TextIO, clock: Clock = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._lock = threading.RLock()
        self._vertices: dict[str, _Vertex] = {}
        self._order: list[_Vertex] = []
        self._warnings: list[str] = []
        self._closed = False
        self._t0 = clock()

    # -- public API (the solver codes against these) -------------------------------------
    def vertex_started(self, vid: str, name: str) -> None:
        """A vertex began; `name` is what users see, e.g. "[build 2/4] RUN pip install x"."""
        with self._lock:
            if self._closed:
                return
            v = self._vertex(vid, name)
            v.name = name
            if v.state != "waiting":
                return
            v.state, v.started = "running", self._clock()
            self._on_started(v)

    def vertex_log(self, vid: str, data: bytes) -> None:
        """A chunk of a step's output: any bytes, lines may be split across chunks."""
        with self._lock:
            if self._closed or not data:
                return
            v = self._vertex(vid)
            now = self._clock()
            lines = self._split(v, data, now)
            self._on_log(v, data, lines, now)

    def vertex_cached(self, vid: str) -> None:
        """The vertex was a cache hit (instead of, or after, vertex_started)."""
        self._finish(vid, "cached", None, None)

    def vertex_done(self, vid: str) -> None:
        """The vertex completed successfully."""
        self._finish(vid, "done", None, None)

    def vertex_error(self, vid: str, message: str, excerpt: SourceExcerpt | None = None) -> None:
        """The vertex failed; renderers show its last output lines and the Dockerfile excerpt."""
        self._finish(vid, "error", message, excerpt)

    def transfer(self, vid: str, label: str, current: int, total: int | None) -> None:
        """Byte progress of something a vertex moves; complete when current reaches total."""
        with self._lock:
            if self._closed:
                return
            v = self._vertex(vid)
            now = self._clock()
            tr = v.transfers.get(label)
            if tr is None:
                tr = v.transfers[label] = _Transfer(label, started=now)
            elif tr.completed is not None and (current, total) == (tr.current, tr.total):
                return
            tr.current, tr.total = current, total
            tr.completed = now if total and current >= total else None
            self._on_transfer(v, tr, now)

    def warning(self, message: str, detail: dict[str, Any] | None = None) -> None:
        """A build-wide warning, listed after the build like BuildKit does. `detail` is the
        structured form (a build check's rule, url, lines) that rawjson carries."""
        with self._lock:
            if self._closed:
                return
            self._warnings.append(message)
            self._on_warning(message, detail)

    def explain(self, vid: str, reason: str) -> None:
        """Why a step was rebuilt (its cache key changed)."""
        with self._lock:
            if self._closed:
                return
            v = self._vertex(vid)
            v.explain = reason
            self._on_explain(v, reason)

    def summary(self, s: BuildSummary) -> None:
        """The finished image: id, tags, size, cache use and the largest layers."""
        with self._lock:
            if not self._closed:
                self._on_summary(s)

    def close(self) -> None:
        """Flush everything; always called (finally) and safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for v in self._order:
                if v.partial:
                    self._flush_partial(v)
            self._on_close()
        self._after_close()

    def result_line(self, text: str) -> None:
        """The build's final stdout line (the image id); only quiet prints it."""
        with self._lock:
            self._on_result(text)

    # -- helpers -----------------------------------------------------------------------
    def _vertex(self, vid: str, name: str | None = None) -> _Vertex:
        """The vertex for vid, created on first mention (named after vid until started)."""
        v = self._vertices.get(vid)
        if v is None:
            v = self._vertices[vid] = _Vertex(vid, name if name is not None else vid, self._clock())
            self._order.append(v)
        return v

    def _split(self, v: _Vertex, data: bytes, now: float) -> list[tuple[float, bytes]]:
        """Complete lines of a chunk with the time each began; the rest waits in v.partial."""
        lines: list[tuple[float, bytes]] = []
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            if not v.partial:
                v.partial_time = now
            v.partial += data[pos:nl]
            lines.append(self._take_partial(v))
            pos = nl + 1
        if pos < len(data):
            if not v.partial:
                v.partial_time = now
            v.partial += data[pos:]
            if len(v.partial) >= MAX_PARTIAL:
                lines.append(self._take_partial(v))
        return lines

    def _take_partial(self, v: _Vertex) -> tuple[float, bytes]:
        """Turn the held partial line into a finished line (a CRLF ending counts as LF)."""
        raw = bytes(v.partial)
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        v.partial.clear()
        line = (v.offset(v.partial_time), raw)
        v.tail.append(f"{stamp(line[0])} {escape(_decode(raw))}")
        return line

    def _flush_partial(self, v: _Vertex) -> None:
        """A vertex ended mid-line: the held text becomes its last line."""
        line = self._take_partial(v)
        self._on_log(v, b"", [line], self._clock())

    def _finish(self, vid: str, state: str, message: str | None, excerpt: SourceExcerpt | None) -> None:
        with self._lock:
            if self._closed:
                return
            v = self._vertex(vid)
            if v.is_final:
                return
            if v.partial:
                self._flush_partial(v)
            v.state, v.finished, v.error = state, self._clock(), message
            self._on_finished(v, excerpt)

    # -- hooks (lock held); the base class renders nothing --------------------------------
    def _on_started(self, v: _Vertex) -> None:
        """A vertex began running."""

    def _on_log(self, v: _Vertex, data: bytes, lines: list[tuple[float, bytes]], now: float) -> None:
        """Raw data arrived; `lines` are the lines it completed (offset, bytes)."""

    def _on_finished(self, v: _Vertex, excerpt: SourceExcerpt | None) -> None:
        """A vertex reached cached, done or error (v.state says which)."""

    def _on_transfer(self, v: _Vertex, tr: _Transfer, now: float) -> None:
        """A transfer counter moved."""

    def _on_warning(self, message: str, detail: dict[str, Any] | None = None) -> None:
        """A warning was recorded in self._warnings."""

    def _on_explain(self, v: _Vertex, reason: str) -> None:
        """A cache miss was explained."""

    def _on_summary(self, s: BuildSummary) -> None:
        """The build finished with an image."""

    def _on_close(self) -> None:
        """Last output, lock held."""

    def _after_close(self) -> None:
        """Last output that must run without the lock (stopping the live display's thread)."""

    def _on_result(self, text: str) -> None:
        """The final stdout line; ignored unless quiet."""

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


class PlainProgress(Progress):
    """BuildKit's plain printer: `#N` blocks, stamped log lines, one vertex printed at a time.

    While one vertex is printing, another one's output waits (as BuildKit does against
    flicker) until the first finishes or the wait exceeds MAX_DELAY; finished vertices always
    print at once. Partial lines are held until their newline or the vertex's end.
    """

    def __init__(self, stream: TextIO, clock: Clock = time.monotonic) -> None:
        super().__init__(stream, clock)
        self._current: _Vertex | None = None
        self._next_index = 0
        self._printed_any = False
        self._warned = 0

    def _queue(self, v: _Vertex, lines: list[str], now: float) -> None:
        v.pending.extend(lines)
        if v.pending_since is None:
            v.pending_since = now
        self._pump(v, now)

    def _pump(self, trigger: _Vertex, now: float) -> None:
        """Print trigger if it may take the stream, then anything left waiting."""
        if self._has_output(trigger):
            waited = now - (trigger.pending_since if trigger.pending_since is not None else now)
            if self._current in (None, trigger) or trigger.is_final or waited >= MAX_DELAY:
                self._print(trigger)
        while self._current is None:
            ready = [v for v in self._order if self._has_output(v)]
            if not ready:
                break
            self._print(min(ready, key=lambda v: v.pending_since or 0.0))

    @staticmethod
    def _has_output(v: _Vertex) -> bool:
        """Something of v is unprinted and v may print (it started or finished)."""
        return v.state != "waiting" and (bool(v.pending) or not v.announced)

    def _print(self, v: _Vertex) -> None:
        out: list[str] = []
        if self._current is not v:
            old = self._current
            if old is not None and not old.is_final:
                out.append(f"#{old.index} ...")
            if self._printed_any:
                out.append("")
            if v.index == 0:
                self._next_index += 1
                v.index = self._next_index
            out.append(f"#{v.index} {escape(v.name)}")
            self._current = v
        out += [f"#{v.index} {line}" for line in v.pending]
        v.pending.clear()
        v.pending_since = None
        v.announced = True
        self._printed_any = True
        if v.is_final:
            self._current = None
        self._write("\n".join(out) + "\n")

    def _on_started(self, v: _Vertex) -> None:
        if v.pending_since is None:
            v.pending_since = v.started
        self._pump(v, self._clock())

    def _on_log(self, v: _Vertex, data: bytes, lines: list[tuple[float, bytes]], now: float) -> None:
        if lines:
            self._queue(v, [f"{stamp(t)} {escape(_decode(raw))}" for t, raw in lines], now)

    def _transfer_line(self, tr: _Transfer, now: float) -> str:
        if tr.total:
            amount = f" {human_size(tr.current)} / {human_size(tr.total)}"
        elif tr.current:
            amount = f" {human_size(tr.current)}"
        else:
            amount = ""
        elapsed = (tr.completed if tr.completed is not None else now) - tr.started
        timing = f" {elapsed:.1f}s" if elapsed > 0.01 else ""
        if tr.completed is not None:
            timing += " done"
        tr.printed = (tr.current, now)
        return f"{escape(tr.label)}{amount}{timing}"

    def _on_transfer(self, v: _Vertex, tr: _Transfer, now: float) -> None:
        if not tr.total and tr.printed is None and now - tr.started < TRANSFER_MIN_TIME:
            return  # a short count of unknown size prints once, with "done", when v ends
        if tr.printed is not None and tr.completed is None:
            last_current, last_time = tr.printed
            delta = (tr.current - last_current) / tr.total if tr.total else 0.0
            if delta < TRANSFER_MIN_DELTA and now - last_time < TRANSFER_MIN_TIME:
                return
        self._queue(v, [self._transfer_line(tr, now)], now)

    def _on_explain(self, v: _Vertex, reason: str) -> None:
        self._queue(v, [f"rebuilding: {escape(reason)}"], self._clock())

    def _on_finished(self, v: _Vertex, excerpt: SourceExcerpt | None) -> None:
        assert v.finished is not None
        lines: list[str] = []
        if v.state == "done":
            for tr in v.transfers.values():
                if tr.completed is None:
                    tr.completed = v.finished
                    lines.append(self._transfer_line(tr, v.finished))
            lines.append(f"DONE {v.finished - v.started:.1f}s" if v.started is not None else "DONE")
        elif v.state == "cached":
            lines.append("CACHED")
        else:
            lines.append(f"ERROR: {escape(v.error or '')}")
        v.pending.extend(lines)
        self._print(v)
        if v.state == "error":
            self._write(error_block(v.name, list(v.tail), excerpt))
        self._pump(v, v.finished)

    def _flush_warnings(self) -> None:
        if len(self._warnings) > self._warned:
            self._write("\n" + warnings_text(self._warnings[self._warned:]))
            self._warned = len(self._warnings)

    def _on_summary(self, s: BuildSummary) -> None:
        self._flush_warnings()
        self._write("\n" + summary_text(s))

    def _on_close(self) -> None:
        for v in self._order:
            if v.pending or (v.state != "waiting" and not v.announced):
                self._print(v)
        self._flush_warnings()


class QuietProgress(Progress):
    """Nothing but a failed step's error block (stream) and the image id (stdout)."""

    def _on_finished(self, v: _Vertex, excerpt: SourceExcerpt | None) -> None:
        if v.state == "error":
            self._write(error_block(v.name, list(v.tail), excerpt))

    def _on_result(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class RawJSONProgress(Progress):
    """One JSON object per line per event (schema in docs/progress.md).

    Logs are base64 of the exact bytes, so a consumer can rebuild the output losslessly;
    `time` is seconds since the Unix epoch.
    """

    def __init__(self, stream: TextIO, clock: Clock = time.time) -> None:
        super().__init__(stream, clock)

    def _emit(self, kind: str, **fields: object) -> None:
        event = {"type": kind, "time": round(self._clock(), 6), **fields}
        self._write(json.dumps(event, ensure_ascii=False) + "\n")

    def _on_started(self, v: _Vertex) -> None:
        self._emit("vertex.started", vertex=v.vid, name=v.name)

    def _on_log(self, v: _Vertex, data: bytes, lines: list[tuple[float, bytes]], now: float) -> None:
        if data:
            self._emit("vertex.log", vertex=v.vid, data=base64.b64encode(data).decode("ascii"))

    def _on_transfer(self, v: _Vertex, tr: _Transfer, now: float) -> None:
        self._emit("vertex.transfer", vertex=v.vid, label=tr.label, current=tr.current, total=tr.total)

    def _on_explain(self, v: _Vertex, reason: str) -> None:
        self._emit("vertex.explain", vertex=v.vid, reason=reason)

    def _on_finished(self, v: _Vertex, excerpt: SourceExcerpt | None) -> None:
        if v.state == "cached":
            self._emit("vertex.cached", vertex=v.vid)
            return
        assert v.finished is not None
        duration = round(v.finished - v.started, 6) if v.started is not None else None
        if v.state == "done":
            self._emit("vertex.done", vertex=v.vid, duration=duration)
            return
        source: dict[str, object] | None = None
        window = excerpt_window(excerpt) if excerpt is not None else None
        if excerpt is not None and window is not None:
            source = {
                "filename": excerpt.filename,
                "start": excerpt.start,
                "end": excerpt.end,
                "lines": [{"line": n, "text": t, "marked": m} for n, t, m in window],
            }
        self._emit(
            "vertex.error", vertex=v.vid, name=v.name, error=v.error or "", duration=duration,
            logs=list(v.tail), source=source,
        )

    def _on_warning(self, message: str, detail: dict[str, Any] | None = None) -> None:
        if detail is None:
            self._emit("warning", message=message)
        else:
            self._emit("warning", message=message, check=detail)

    def _on_summary(self, s: BuildSummary) -> None:
        self._emit(
            "summary", image_id=s.image_id, tags=list(s.tags), size=s.size, steps_run=s.steps_run,
            steps_cached=s.steps_cached, duration=round(s.duration, 6),
            layers=[{"size": size, "created_by": made_by} for size, made_by in s.layers],
        )

    def _on_result(self, text: str) -> None:
        self._emit("result", text=text)


_STATE_LABEL = {"waiting": "waiting", "running": "running", "cached": "CACHED", "done": "DONE", "error": "ERROR"}
_STATE_STYLE = {"waiting": "dim", "running": "bold", "cached": "blue", "done": "blue", "error": "bold red"}


class TtyProgress(Progress):
    """A live rich display redrawn ~8 times a second, collapsed to one line per step at the end.

    Only a bounded amount of state is drawn (6 output lines per running step, rows cropped to
    the terminal width, finished steps dropped from the top when the screen is full), so a
    step printing thousands of lines or raw escape codes cannot garble the screen.
    """

    def __init__(self, stream: TextIO, clock: Clock = time.monotonic) -> None:
        super().__init__(stream, clock)
        self._end: float | None = None
        self._errors: list[str] = []
        self._summary: BuildSummary | None = None
        from rich.console import Console
        from rich.live import Live

        self._console = Console(
            file=stream, force_terminal=True, highlight=False, markup=False, emoji=False, soft_wrap=False
        )
        self._live = Live(
            console=self._console, get_renderable=self._render, refresh_per_second=8,
            transient=False, redirect_stdout=False, redirect_stderr=True,
        )
        self._live.start(refresh=True)

    def _size(self) -> tuple[int, int]:
        """The terminal's current size, read every frame so a resize takes effect."""
        try:
            size = os.get_terminal_size(self._stream.fileno())
            return max(size.columns, 1), max(size.lines, 1)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return 80, 24

    def _render(self) -> RenderableType:
        width, height = self._size()
        self._console.size = (width, height)
        return self.frame(width, height)

    def frame(self, width: int, height: int) -> RenderableType:
        """The display for a terminal of this size (what the live view draws each refresh)."""
        from rich.console import Group
        from rich.text import Text

        with self._lock:
            now = self._end if self._end is not None else self._clock()
            final = self._end is not None
            done = sum(1 for v in self._order if v.is_final)
            failed = any(v.state == "error" for v in self._order)
            status = " FINISHED" if final and not failed and done == len(self._order) else ""
            header = Text(f"[+] Building {now - self._t0:.1f}s ({done}/{len(self._order)}){status}")
            header.truncate(width, overflow="crop")
            groups = [self._vertex_lines(v, width, now, final) for v in self._order]
            if not final:
                budget = max(height - 2, 1)
                while len(groups) > 1 and sum(map(len, groups)) > budget and self._order[len(self._order) - len(groups)].is_final:
                    groups.pop(0)
            return Group(header, *[line for group in groups for line in group])

    def _vertex_lines(self, v: _Vertex, width: int, now: float, final: bool) -> list[Text]:
        end = v.finished if v.finished is not None else now
        duration = end - v.started if v.started is not None else 0.0
        rows = [_aligned(f" => {_STATE_LABEL[v.state]:<7} {screen_text(v.name.encode())}", f"{duration:.1f}s", width, _STATE_STYLE[v.state])]
        if final or v.state != "running":
            return rows
        if v.explain:
            rows.append(_cropped(f" => => rebuilding: {escape(v.explain)}", width, "dim"))
        for tr in v.transfers.values():
            rows.append(_transfer_row(tr, width, now))
        lines = list(v.screen)
        if v.partial:
            lines.append(screen_text(bytes(v.partial)))
        rows += [_cropped(f" => => # {line}", width, "dim") for line in lines[-TTY_TAIL_LINES:]]
        return rows

    def _on_log(self, v: _Vertex, data: bytes, lines: list[tuple[float, bytes]], now: float) -> None:
        for _, raw in lines[-TTY_TAIL_LINES:]:
            v.screen.append(screen_text(raw))

    def _on_finished(self, v: _Vertex, excerpt: SourceExcerpt | None) -> None:
        if v.state == "error":
            self._errors.append(error_block(v.name, list(v.tail), excerpt))

    def _on_summary(self, s: BuildSummary) -> None:
        self._summary = s

    def _on_close(self) -> None:
        self._end = self._clock()

    def _after_close(self) -> None:
        self._live.stop()
        for block in self._errors:
            self._write(block)
        if self._warnings:
            self._write(warnings_text(self._warnings))
        if self._summary is not None:
            self._console.print(_summary_table(self._summary, self._size()[0]))


def _cropped(text: str, width: int, style: str) -> Text:
    """One screen row that can never wrap."""
    from rich.text import Text

    t = Text(text, style=style, no_wrap=True, overflow="ellipsis")
    t.truncate(width, overflow="ellipsis")
    return t


def _aligned(left: str, right: str, width: int, style: str) -> Text:
    """A row with `right` flush to the terminal's right edge and `left` cut to fit."""
    from rich.text import Text

    room = width - len(right) - 1
    if room < 12:
        return _cropped(left, width, style)
    row = Text(left, style=style, no_wrap=True)
    row.truncate(room, overflow="ellipsis", pad=True)
    row.append(" " + right)
    return row


def _transfer_row(tr: _Transfer, width: int, now: float) -> Text:
    amount = f"{human_size(tr.current)} / {human_size(tr.total)}" if tr.total else human_size(tr.current)
    bar = ""
    if tr.total:
        filled = min(20, tr.current * 20 // tr.total)
        bar = "[" + "=" * filled + (">" if filled < 20 else "") + " " * max(0, 19 - filled) + "] "
    elapsed = (tr.completed if tr.completed is not None else now) - tr.started
    return _aligned(f" => => {escape(tr.label)} {bar}{amount}", f"{elapsed:.1f}s", width, "cyan")


def _summary_table(s: BuildSummary, width: int) -> RenderableType:
    """The tty summary: key facts, then the largest layers with the step that made each."""
    from rich.console import Group
    from rich.table import Table

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("image", s.image_id)
    facts.add_row("tags", ", ".join(s.tags) if s.tags else "(none)")
    facts.add_row("size", f"{human_size(s.size)} in {len(s.layers)} layer{'s' if len(s.layers) != 1 else ''}")
    facts.add_row("steps", f"{s.steps_run} run, {s.steps_cached} cached")
    facts.add_row("time", f"{s.duration:.1f}s")
    layers = Table(box=None, padding=(0, 2), width=min(width, 100), show_edge=False)
    layers.add_column("SIZE", justify="right", no_wrap=True)
    layers.add_column("CREATED BY", no_wrap=True, overflow="ellipsis", ratio=1)
    for size, made_by in _largest_layers(s):
        layers.add_row(human_size(size), screen_text(made_by.encode()))
    return Group(facts, layers) if s.layers else facts


def make_progress(mode: str, stream: TextIO = sys.stderr, *, clock: Clock | None = None) -> Progress:
    """The renderer for `--progress=mode`; "auto" picks tty on a terminal, plain otherwise.

    Like docker, an explicit "tty" on something that is not a terminal is an error.
    `clock` replaces the time source (tests).
    """
    if mode not in MODES:
        raise PybuildError(f"invalid progress mode {mode!r}: expected one of {', '.join(MODES)}")
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    if mode == "auto":
        mode = "tty" if is_tty and os.environ.get("TERM") != "dumb" else "plain"
    if mode == "tty" and not is_tty:
        raise PybuildError("progress mode tty needs a terminal: the output is not one (use --progress=plain)")
    classes: dict[str, type[Progress]] = {
        "tty": TtyProgress, "plain": PlainProgress, "quiet": QuietProgress, "rawjson": RawJSONProgress,
    }
    cls = classes[mode]
    return cls(stream) if clock is None else cls(stream, clock)
