"""Docker's wording for image history (`docker history`), and Go's value formatting it uses.

BuildKit writes `created_by` with Go's fmt verbs (`%v` of maps and slices, `%q` of
strings), so the same Dockerfile must produce the same strings here byte for byte.
"""

from __future__ import annotations

from pybuild.dockerfile.shell import go_quote as go_quote

COMMENT = "buildkit.dockerfile.v0"


def go_quoted_list(items: list[str]) -> str:
    """`%q` of a []string: ["a" "b"]."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


def go_list(items: list[str]) -> str:
    """`%v` of a []string: [a b]."""
    return "[" + " ".join(items) + "]"


def go_duration(ns: int) -> str:
    """Go's time.Duration.String() for the non-negative durations a HEALTHCHECK takes."""
    if ns == 0:
        return "0s"
    if ns < 1000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _trim(ns / 1000) + "µs"
    if ns < 1_000_000_000:
        return _trim(ns / 1_000_000) + "ms"
    total_s = ns / 1_000_000_000
    hours = int(total_s // 3600)
    minutes = int((total_s - hours * 3600) // 60)
    seconds = total_s - hours * 3600 - minutes * 60
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + _trim(seconds) + "s"


def _trim(x: float) -> str:
    s = f"{x:.9f}".rstrip("0").rstrip(".")
    return s or "0"


def healthcheck(test: list[str], interval: int, timeout: int, start_period: int, retries: int) -> str:
    """`HEALTHCHECK &{[...] "5s" "0s" "0s" '\\x00'}` as BuildKit's %v of the struct."""
    retries_repr = repr(chr(retries)) if 0x20 <= retries < 0x7F else f"'\\x{retries:02x}'"
    return (f"HEALTHCHECK &{{{go_quoted_list(test)} {go_quote(go_duration(interval))} "
            f"{go_quote(go_duration(timeout))} {go_quote(go_duration(start_period))} {retries_repr}}}")


def exposed(ports: list[str]) -> str:
    """`EXPOSE map[443/tcp:{} 80/tcp:{}]`: Go prints map keys sorted."""
    return "EXPOSE map[" + " ".join(f"{p}:{{}}" for p in sorted(set(ports))) + "]"


def run(args_in_scope: list[tuple[str, str]], argv: list[str]) -> str:
    """`RUN |2 A=1 B=2 /bin/sh -c cmd # buildkit` (args listed only when some are set)."""
    prefix = ""
    if args_in_scope:
        prefix = f"|{len(args_in_scope)} " + " ".join(f"{k}={v}" for k, v in args_in_scope) + " "
    return f"RUN {prefix}{' '.join(argv)} # buildkit"
