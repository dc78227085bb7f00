"""Bounded HTTP bodies for registry and token traffic: deadlines, a minimum rate, size caps.

A socket read timeout alone bounds only the silence between two packets: a server that
sends two bytes a second, or an endless body, holds a pull for ever. Every body pybuild
reads from a registry or token server is read here, one network read at a time, under
three limits: a size cap (the caller knows how much it expects), an overall deadline per
transfer, and a minimum rate averaged over a window (curl's --speed-limit/--speed-time).
Before any body, the status line and headers of every answer must be complete within their
own deadline (`DeadlineAdapter`, as Go's ResponseHeaderTimeout): a server trickling its
headers a byte at a time never resets it.
Redirects are followed by the caller with `redirect_target`, which allows only http and
https and counts the hops.

The limits come from the environment (documented in docs/registry.md):
PYBUILD_REGISTRY_TIMEOUT, PYBUILD_REGISTRY_HEADER_TIMEOUT, PYBUILD_REGISTRY_DEADLINE,
PYBUILD_REGISTRY_MIN_RATE, PYBUILD_REGISTRY_RATE_WINDOW.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.response

from pybuild.errors import PybuildError

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_READ = 1 << 20  # the most one network read returns


class TransferError(PybuildError):
    """A transfer broke a limit (too slow, too long, too large, a bad redirect)."""


class Truncated(requests.exceptions.ChunkedEncodingError):
    """A body ended before the length it announced: worth another try."""


@dataclass(frozen=True)
class Limits:
    """How long and how slowly a registry may take to answer."""

    connect_timeout: float = 30.0
    read_timeout: float = 300.0     # the longest silence on a connection
    header_timeout: float = 300.0   # from the request sent to the last header of its answer
    deadline: float = 21600.0       # the longest one body (blob, manifest, token) may take
    min_rate: float = 1024.0        # bytes per second, averaged over rate_window
    rate_window: float = 60.0
    max_redirects: int = 10         # Go's http.Client (docker, containerd) stops at 10

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        values: dict[str, float] = {}
        for name, field in (("PYBUILD_REGISTRY_TIMEOUT", "read_timeout"),
                            ("PYBUILD_REGISTRY_HEADER_TIMEOUT", "header_timeout"),
                            ("PYBUILD_REGISTRY_DEADLINE", "deadline"),
                            ("PYBUILD_REGISTRY_MIN_RATE", "min_rate"),
                            ("PYBUILD_REGISTRY_RATE_WINDOW", "rate_window")):
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not value >= 0 or value == float("inf") or \
                    (value == 0 and field in ("read_timeout", "header_timeout", "rate_window")):
                raise PybuildError(f"{name}={raw!r}: expected a positive number "
                                   f"({'bytes per second' if field == 'min_rate' else 'seconds'})")
            values[field] = value
        return cls(**values)  # type: ignore[arg-type]


class HeadersTooSlow(TransferError):
    """The status line and headers of an answer were not complete within header_timeout."""


def _with_header_deadline(conn: Any, seconds: float,
                          get: Callable[[], urllib3.response.HTTPResponse]) -> urllib3.response.HTTPResponse:
    """`get()` (reading an answer's status line and headers) within `seconds` in all: a
    timer shuts the socket down when they run out, however the bytes trickle in."""
    sock = conn.sock
    opts = getattr(conn, "_response_options", None)
    method = getattr(opts, "request_method", None) or "a request"
    path = urlsplit(getattr(opts, "request_url", None) or "").path or "/"
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def too_slow() -> HeadersTooSlow:
        return HeadersTooSlow(f"{conn.host}:{conn.port} did not send the status line and headers "
                              f"of its answer to {method} {path} within {seconds:g} s "
                              f"(PYBUILD_REGISTRY_HEADER_TIMEOUT)")

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        resp = get()
    except BaseException:
        if fired.is_set():
            raise too_slow() from None
        raise
    finally:
        timer.cancel()
    if fired.is_set():  # the timer won the race just after the last header
        resp.close()
        raise too_slow()
    return resp


class _HTTPConnection(urllib3.connection.HTTPConnection):
    header_timeout = Limits.header_timeout

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        return _with_header_deadline(self, self.header_timeout, super().getresponse)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    header_timeout = Limits.header_timeout

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        return _with_header_deadline(self, self.header_timeout, super().getresponse)


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections bound the headers of every answer by
    `limits.header_timeout` (mount it for http:// and https://)."""

    def __init__(self, limits: Limits) -> None:
        self._header_timeout = limits.header_timeout
        super().__init__()

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        extra = {"header_timeout": self._header_timeout}
        http = type("_HTTPConnection", (_HTTPConnection,), extra)
        https = type("_HTTPSConnection", (_HTTPSConnection,), extra)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("_HTTPPool", (urllib3.connectionpool.HTTPConnectionPool,),
                         {"ConnectionCls": http}),
            "https": type("_HTTPSPool", (urllib3.connectionpool.HTTPSConnectionPool,),
                          {"ConnectionCls": https}),
        }


def bounded_session(limits: Limits) -> requests.Session:
    """A requests session whose every answer's headers are bounded by `limits`."""
    session = requests.Session()
    session.mount("http://", DeadlineAdapter(limits))
    session.mount("https://", DeadlineAdapter(limits))
    return session


def _rate(n: float) -> str:
    return f"{n:.0f} B/s" if n < 10240 else f"{n / 1024:.0f} KiB/s"


class Pace:
    """Checks one transfer against the deadline and the minimum rate as bytes arrive."""

    def __init__(self, limits: Limits, what: str) -> None:
        self.limits = limits
        self.what = what
        self.start = self._window_start = time.monotonic()
        self._window_bytes = 0

    def silence(self) -> float:
        """How long the next read may wait for a byte before a limit is broken anyway."""
        limits = self.limits
        wait = limits.read_timeout
        if limits.min_rate:
            wait = min(wait, limits.rate_window)
        if limits.deadline:
            wait = min(wait, limits.deadline - (time.monotonic() - self.start))
        return max(wait, 0.05)

    def check(self, n: int) -> None:
        """`n` more bytes arrived (0: none yet); TransferError if a limit is broken."""
        now = time.monotonic()
        limits = self.limits
        if limits.deadline and now - self.start > limits.deadline:
            raise TransferError(f"{self.what} did not finish within {limits.deadline:g} s "
                                f"(PYBUILD_REGISTRY_DEADLINE)")
        self._window_bytes += n
        elapsed = now - self._window_start
        if elapsed >= limits.rate_window:
            rate = self._window_bytes / elapsed
            if rate < limits.min_rate:
                raise TransferError(f"{self.what} arrived at {_rate(rate)} for {elapsed:.0f} s, "
                                    f"below the minimum of {_rate(limits.min_rate)} "
                                    f"(PYBUILD_REGISTRY_MIN_RATE)")
            self._window_start, self._window_bytes = now, 0


def iter_body(resp: requests.Response, pace: Pace) -> Iterator[bytes]:
    """The body of a streamed response, one network read at a time, under `pace`.

    Transport failures come out as requests' exceptions (a drop mid-body is a
    ChunkedEncodingError, retried by the caller), a body shorter than its Content-Length
    as Truncated.
    """
    raw = resp.raw
    # A silent server must meet the deadline and the rate too: each read waits only as
    # long as those allow (the connection's socket, reached through urllib3's response).
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    pace.check(0)
    while True:
        try:
            if sock is not None:
                sock.settimeout(pace.silence())
            chunk = raw.read1(_READ, decode_content=True)
        except urllib3.exceptions.IncompleteRead as e:
            raise Truncated(f"the body ended after {e.partial} bytes, "
                            f"{e.expected} short of its Content-Length") from None
        except urllib3.exceptions.ReadTimeoutError:
            pace.check(0)  # TransferError when the silence broke the rate or the deadline
            raise requests.exceptions.ReadTimeout("read timed out") from None
        except urllib3.exceptions.DecodeError:
            raise TransferError(f"{pace.what}: the body is not in its declared "
                                f"Content-Encoding") from None
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError, OSError) as e:
            m = re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", str(e))
            if m:
                raise Truncated(f"the body ended after {m.group(1)} bytes, {m.group(2)} short "
                                f"of its Content-Length") from None
            if "IncompleteRead" in str(e) or "incomplete" in str(e).lower():
                raise Truncated("the body ended before its Content-Length") from None
            raise requests.exceptions.ChunkedEncodingError(str(e)) from None
        if not chunk:
            return
        pace.check(len(chunk))
        yield chunk


def read_capped(resp: requests.Response, limit: int, pace: Pace, *,
                truncate: bool = False) -> bytes:
    """The whole body, at most `limit` bytes (refused before reading if it says it is
    larger); with `truncate`, the first `limit` bytes and the rest left unread."""
    declared = resp.headers.get("Content-Length", "")
    if not truncate and declared.isdigit() and int(declared) > limit \
            and not resp.headers.get("Content-Encoding"):
        raise TransferError(f"{pace.what} is {int(declared)} bytes, larger than the limit of "
                            f"{limit} bytes: not read")
    out = bytearray()
    for chunk in iter_body(resp, pace):
        out += chunk
        if len(out) > limit:
            if truncate:
                return bytes(out[:limit])
            raise TransferError(f"{pace.what} is larger than the limit of {limit} bytes: "
                                f"not read")
    return bytes(out)


def http_url(base: str, location: str, what: str) -> str:
    """`location` resolved against `base`; TransferError unless it is a valid http(s) URL."""
    shown = location if len(location) <= 80 else location[:77] + "..."
    try:
        target = urljoin(base, location)
        parts = urlsplit(target)
        _ = parts.port  # raises for a port that is not a number
    except ValueError:
        raise TransferError(f"{what} {shown!r}: not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise TransferError(f"{what} {shown!r}: only http and https redirects are followed"
                            if "redirect" in what else
                            f"{what} {shown!r}: only http and https URLs are used")
    return target


def redirect_target(url: str, resp: requests.Response, hops: int, limits: Limits,
                    what: str) -> str:
    """Where a 3xx answer to `url` points; TransferError for a loop or a non-HTTP target."""
    location = resp.headers.get("Location")
    if not location:
        raise TransferError(f"{what}: answered {resp.status_code} without a Location")
    target = http_url(url, location, f"{what}: redirected to")
    if hops >= limits.max_redirects:
        raise TransferError(f"{what}: stopped after {limits.max_redirects} redirects "
                            f"(last to {target})")
    return target
