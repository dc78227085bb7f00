"""HEALTHCHECK as docker runs it: probe config, the probe's argv, and its state machine.

A probe runs every Interval (first one Interval after start), killed after Timeout. A
success makes the container healthy and resets the failing streak; a failure adds to the
streak, except while the container is still `starting` within its StartPeriod; Retries
consecutive failures make it unhealthy. The last 5 results are kept, each output cut to
4096 bytes (docker's maxLogEntries and maxOutputLen).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pybuild.errors import PybuildError

DEFAULT_INTERVAL = 30_000_000_000
DEFAULT_TIMEOUT = 30_000_000_000
DEFAULT_RETRIES = 3
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096


@dataclass
class HealthConfig:
    """Docker's Healthcheck fields; durations in nanoseconds, 0 meaning the default."""

    test: list[str]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    retries: int = 0

    @property
    def interval_s(self) -> float:
        return (self.interval or DEFAULT_INTERVAL) / 1e9

    @property
    def timeout_s(self) -> float:
        return (self.timeout or DEFAULT_TIMEOUT) / 1e9

    @property
    def start_period_s(self) -> float:
        return self.start_period / 1e9

    @property
    def max_failures(self) -> int:
        return self.retries or DEFAULT_RETRIES


@dataclass
class HealthState:
    """What `inspect` shows under State.Health."""

    status: str = "starting"
    failing_streak: int = 0
    log: list[dict[str, object]] = field(default_factory=list)


def effective(image: dict[str, Any] | None, *, cmd: str | None, interval: int | None,
              timeout: int | None, start_period: int | None, retries: int | None,
              disabled: bool) -> HealthConfig | None:
    """The image's HEALTHCHECK with --health-* flags laid over it; None: no probing."""
    if disabled:
        if cmd is not None:
            raise PybuildError("--no-healthcheck conflicts with --health-* options")
        return None
    base = image or {}
    test = list(base.get("Test") or [])
    if cmd is not None:
        test = ["CMD-SHELL", cmd]
    for name, value in (("interval", interval), ("timeout", timeout),
                        ("start-period", start_period)):
        if value is not None and 0 < value < 1_000_000:
            raise PybuildError(f"--health-{name} cannot be less than 1ms")
        if value is not None and value < 0:
            raise PybuildError(f"--health-{name} cannot be negative")
    if retries is not None and retries < 0:
        raise PybuildError("--health-retries cannot be negative")
    if not test or test[0] == "NONE":
        return None
    return HealthConfig(
        test=test,
        interval=interval if interval is not None else int(base.get("Interval") or 0),
        timeout=timeout if timeout is not None else int(base.get("Timeout") or 0),
        start_period=start_period if start_period is not None else int(base.get("StartPeriod") or 0),
        retries=retries if retries is not None else int(base.get("Retries") or 0))


def probe_argv(test: list[str]) -> list[str]:
    """CMD-SHELL runs through /bin/sh -c; CMD runs as given."""
    kind, args = test[0], test[1:]
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(args)]
    if kind == "CMD":
        return list(args)
    raise PybuildError(f"unknown healthcheck type {kind!r}")


def record(state: HealthState, config: HealthConfig, *, exit_code: int, output: str,
           start: str, end: str, since_start: float) -> HealthState:
    """The state after one probe result (docker's handleProbeResult)."""
    entry: dict[str, object] = {"Start": start, "End": end, "ExitCode": exit_code,
                                "Output": output[:MAX_OUTPUT]}
    log = (state.log + [entry])[-MAX_LOG_ENTRIES:]
    if exit_code == 0:
        return HealthState("healthy", 0, log)
    if state.status == "starting" and since_start < config.start_period_s:
        return HealthState(state.status, state.failing_streak, log)
    streak = state.failing_streak + 1
    status = "unhealthy" if streak >= config.max_failures else state.status
    return HealthState(status, streak, log)
