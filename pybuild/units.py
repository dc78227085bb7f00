"""Sizes and durations as docker and BuildKit print and parse them: one home for each.

Sizes are decimal (1 kB = 1000 B). `docker images` and `cache du` print three
significant digits (go-units HumanSize: 1.14MB); BuildKit's progress prints two
decimals (go-units Bytes: 1.14MB, 12.30kB). Durations: docker's HumanDuration
("About a minute"), and `until=24h`-style filters (Go's ParseDuration, plus `d`).
"""

from __future__ import annotations

import re

_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def decimal_size(n: float, spec: str = ".3g") -> str:
    """`n` bytes in decimal units, the number formatted by `spec`; plain B below 1 kB."""
    for unit in _SIZE_UNITS:
        if n < 1000 or unit == _SIZE_UNITS[-1]:
            return f"{int(n)}B" if unit == "B" else f"{n:{spec}}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_size(n: float) -> str:
    """docker's sizes (images, cache du): 1.14MB, 98B."""
    return decimal_size(n, ".3g")


def binary_size(n: float) -> str:
    """docker stats' memory: binary units, two decimals (45.2MiB shows as 45.20MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.2f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def bytes_text(n: int) -> str:
    """BuildKit's progress sizes (go-units Bytes, %.2f): 1.14MB, 98B."""
    return decimal_size(n, ".2f")


def human_duration(seconds: float) -> str:
    """docker's HumanDuration: "Less than a second", "About a minute", "3 hours"."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(round(seconds / 3600))
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


_DAYS = re.compile(r"([0-9]+(?:\.[0-9]*)?)d")


def parse_filter_duration(text: str) -> float:
    """`24h`, `30m`, `1h30m`, `7d` → seconds: Go's ParseDuration (what docker's `until`
    filters take) with days allowed too."""
    from pybuild.dockerfile.instructions import parse_duration

    go = _DAYS.sub(lambda m: f"{float(m.group(1)) * 24:g}h", text.strip())
    return parse_duration(go) / 1e9
