"""Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`) and docker's backoff.

Docker's restart manager waits 100 ms before the first restart and doubles the wait each
time, up to a minute; a run that lasted 10 s or more resets it to 100 ms. A container
stopped by `pybuild stop` or `kill` is not restarted. `always` and `unless-stopped` differ
only when a daemon restarts; pybuild has none, so here they behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from pybuild.errors import PybuildError

FIRST_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0
NAMES = ("no", "on-failure", "always", "unless-stopped")


@dataclass(frozen=True)
class RestartPolicy:
    name: str = "no"
    maximum_retry: int = 0

    def __str__(self) -> str:
        if self.name == "on-failure" and self.maximum_retry:
            return f"on-failure:{self.maximum_retry}"
        return self.name


def parse(text: str) -> RestartPolicy:
    name, sep, count = text.partition(":")
    if name not in NAMES:
        raise PybuildError(f"invalid restart policy {text!r}: use no, on-failure[:max-retries], "
                           "always or unless-stopped")
    if not sep:
        return RestartPolicy(name)
    if name != "on-failure":
        raise PybuildError(f"maximum retry count cannot be used with restart policy '{name}'")
    if not count.isdigit():
        raise PybuildError(f"invalid restart policy format: maximum retry count must be an "
                           f"integer: {count!r}")
    return RestartPolicy(name, int(count))


def should_restart(policy: RestartPolicy, exit_code: int, restart_count: int,
                   stopped_by_user: bool) -> bool:
    if stopped_by_user or policy.name == "no":
        return False
    if policy.name == "on-failure":
        if exit_code == 0:
            return False
        return not policy.maximum_retry or restart_count < policy.maximum_retry
    return True


def next_delay(previous: float, ran_for: float) -> float:
    """The wait before the next restart, given the last wait and how long the run lasted."""
    if previous <= 0 or ran_for >= RESET_AFTER:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)
