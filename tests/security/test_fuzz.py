"""Hostile Dockerfiles: the frontend returns a plan or raises DockerfileError, nothing else.

The grammar (real instructions, flags, quotes, escapes, heredocs, continuations) and the
mutator live in bench/fuzz_dockerfile.py, which runs 100,000+ inputs; here hypothesis drives
the same generator with a CI-sized budget and shrinks any failure to its random choices.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import load_bench


FUZZ = load_bench("fuzz_dockerfile")
_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=1000, **_SETTINGS)
@given(st.randoms(use_true_random=False))
def test_grammar_dockerfiles(rng: random.Random) -> None:
    FUZZ.check(FUZZ.generate(rng))


@settings(max_examples=1000, **_SETTINGS)
@given(st.randoms(use_true_random=False), st.randoms(use_true_random=False))
def test_mutated_grammar_dockerfiles(rng: random.Random, mut: random.Random) -> None:
    FUZZ.check(FUZZ.mutate(mut, FUZZ.generate(rng)))


@contextmanager
def _hang_guard(seconds: int) -> Iterator[None]:
    """A super-linear blow-up fails the test instead of stalling the suite. Not a timing
    assertion: linear work on these inputs is about a second, quadratic work is hours."""
    def stop(_signum: int, _frame: object) -> None:
        raise AssertionError(f"no result after {seconds}s: super-linear behaviour")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_huge_inputs_stay_linear() -> None:
    with _hang_guard(120):
        results = FUZZ.linearity()
    assert [name for name, _size, _s in results] == [
        "1 MB RUN line", "1 MB ENV value with $", "50k continuations",
        "50k comment lines in a continuation", "50k instructions", "1 MB heredoc"]
    for name, size, seconds in results:
        print(f"linearity: {name} ({size:,} bytes): {seconds:.2f}s")
