"""Runs the vertices of one build at once, as far as their inputs and `--jobs` allow.

Each vertex (a stage, a base image, an op with a given cache key) is started once, on its
own thread, the first time something asks for it (`once`): a stage that two others read
is built once, and two identical ops of different stages run once. A vertex that has to
do real work (mount, run, commit, pull) takes one of `jobs` slots for it; waiting for an
input holds no slot, so `--jobs 1` runs everything one after the other and never
deadlocks.

Cancellation is one event: Ctrl-C or SIGTERM in the main thread, or the first failing
vertex, sets it; every running step sees it within a poll slice (the runtime kills its
container), every waiting one stops waiting, and `run` returns only once every thread
has unwound (unmounted, released its locks). The first real error is what is raised.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from pybuild.errors import Cancelled

T = TypeVar("T")


class Future(Generic[T]):
    """The result of a vertex, once it is there (concurrent.futures' would import logging
    and more on every warm build for the three methods used here)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def set_result(self, result: T) -> None:
        self._result = result
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> T:
        """The result, or the vertex's exception raised; TimeoutError if not done in time."""
        if not self._done.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

_POLL = 0.05  # seconds between looks at the cancel event while waiting


def default_jobs() -> int:
    """`--jobs` by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Scheduler:
    """Vertices of one build: started once each, at most `jobs` doing work at a time."""

    def __init__(self, jobs: int | None = None) -> None:
        self.jobs = jobs or default_jobs()
        self.cancel = threading.Event()
        self._slots = threading.Semaphore(self.jobs)
        self._lock = threading.Lock()
        self._vertices: dict[Hashable, Future[Any]] = {}
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self._error: BaseException | None = None
        self.running = 0  # vertices holding a slot now
        self.peak = 0  # the most that ever held one at once

    # ----- vertices ---------------------------------------------------------------
    def once(self, key: Hashable, fn: Callable[[], T]) -> Future[T]:
        """The vertex `key`, started now on its own thread unless it was already."""
        with self._lock:
            fut = self._vertices.get(key)
            if fut is not None:
                return fut
            fut = Future()
            self._vertices[key] = fut
            if self.cancel.is_set():
                fut.set_exception(Cancelled("cancelled"))
                return fut
            t = threading.Thread(target=self._body, args=(fut, fn), daemon=True,
                                 name=f"vertex-{len(self._threads)}")
            self._threads.append(t)
        t.start()
        return fut

    def _body(self, fut: Future[Any], fn: Callable[[], Any]) -> None:
        try:
            result = fn()
        except BaseException as e:  # handed to whoever waits for this vertex
            if not isinstance(e, Cancelled):
                with self._lock:
                    if self._error is None:
                        self._error = e
                self.cancel.set()  # the first failure stops the others, as BuildKit does
            fut.set_exception(e)
        else:
            fut.set_result(result)

    def wait(self, fut: Future[T]) -> T:
        """The result of a vertex; holds no slot while waiting (gives it back meanwhile)."""
        held = getattr(self._local, "held", 0)
        if held and not fut.done():
            self._slots.release()
            self._count(-1)
            try:
                return self._result(fut)
            finally:
                self._acquire()
                self._count(1)
        return self._result(fut)

    def _result(self, fut: Future[T]) -> T:
        while True:
            if fut.done():
                return fut.result()
            if self.cancel.is_set() and threading.current_thread() is not threading.main_thread():
                raise Cancelled("cancelled")
            try:
                return fut.result(timeout=_POLL)
            except TimeoutError:
                continue

    # ----- slots ------------------------------------------------------------------
    @contextmanager
    def slot(self) -> Iterator[None]:
        """One of the `jobs` slots, for the real work of a vertex (re-entrant per thread)."""
        held = getattr(self._local, "held", 0)
        if held:
            self._local.held = held + 1
            try:
                yield
            finally:
                self._local.held = held
            return
        self._acquire()
        self._count(1)
        self._local.held = 1
        try:
            yield
        finally:
            self._local.held = 0
            self._count(-1)
            self._slots.release()

    def _acquire(self) -> None:
        while not self._slots.acquire(timeout=_POLL):
            if self.cancel.is_set():
                raise Cancelled("cancelled")
        if self.cancel.is_set():
            self._slots.release()
            raise Cancelled("cancelled")

    def _count(self, delta: int) -> None:
        with self._lock:
            self.running += delta
            self.peak = max(self.peak, self.running)

    def check(self) -> None:
        """Raise Cancelled if the build was cancelled (between steps)."""
        if self.cancel.is_set():
            raise Cancelled("cancelled")

    # ----- the main thread ----------------------------------------------------------
    def run(self, key: Hashable, fn: Callable[[], T]) -> T:
        """Build vertex `key` from the main thread; Ctrl-C or SIGTERM cancels everything.

        Returns (or raises) only after every vertex thread has finished unwinding.
        """
        restore = _sigterm_raises()
        try:
            try:
                return self.wait(self.once(key, fn))
            except BaseException as e:
                self.cancel.set()
                self.join()
                if isinstance(e, Cancelled) and self._error is not None:
                    raise self._error from None
                raise
            finally:
                self.cancel.set()  # nothing may start after the build (a stray prefetch)
                self.join()
        finally:
            restore()

    def join(self) -> None:
        """Wait for every vertex thread; a second Ctrl-C does not cut the unwinding short."""
        while True:
            with self._lock:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                return
            for t in alive:
                try:
                    t.join()
                except KeyboardInterrupt:
                    self.cancel.set()


def _sigterm_raises() -> Callable[[], None]:
    """SIGTERM becomes SystemExit(143) in the main thread, so the build unwinds as on
    Ctrl-C; unless someone installed a handler already. Returns the undo."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return lambda: None

    def unwind(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)
    return restore
