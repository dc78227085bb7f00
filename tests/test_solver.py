"""The solver on a fake worker (tests/fake_worker.py): keys, explain, scheduling, flags.

Root-free: snapshots are plain directories and RUN a tiny interpreter, so these run as
any user; tests/test_build.py builds the same things for real with overlayfs and runc.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fake_worker import FakeWorker, wait_until
from pybuild.errors import Cancelled, DockerfileError, StepError
from pybuild.progress import Progress, _Vertex
from pybuild.solver import ops
from pybuild.platforms import host_arch
from pybuild.solver.solver import BuildOptions, BuildResult, Solver
from pybuild.store import Store

ME = f"{os.getuid()}:{os.getgid()}"


class Recorder(Progress):
    """Keeps the events the solver reports: names, explanations, cached steps."""

    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.explained: dict[str, str] = {}
        self.cached: list[str] = []
        self.errors: dict[str, str] = {}

    def _on_explain(self, v: _Vertex, reason: str) -> None:
        self.explained[v.name] = reason

    def _on_finished(self, v: _Vertex, excerpt: Any) -> None:
        if v.state == "cached":
            self.cached.append(v.name)
        elif v.state == "error":
            self.errors[v.name] = v.error or ""


class Env:
    """One context and store; `build` runs the real Solver on a FakeWorker."""

    def __init__(self, tmp: Path) -> None:
        self.ctx = tmp / "ctx"
        self.ctx.mkdir(parents=True)
        self.store = Store(tmp / "store")
        self.workers: list[FakeWorker] = []
        self.contents: dict[str, Any] = {}

    def worker(self, store: Store) -> FakeWorker:
        w = FakeWorker(store)
        w.contents = self.contents  # layers outlive one build, as snapshots do
        self.workers.append(w)
        return w

    def build(self, dockerfile: str, **kw: Any) -> tuple[BuildResult, Recorder]:
        (self.ctx / "Dockerfile").write_text(dockerfile)
        progress = Recorder()
        opts = BuildOptions(context=self.ctx, dockerfile=self.ctx / "Dockerfile",
                            explain=True, **kw)
        solver = Solver(opts, progress, worker=self.worker)
        solver.load()
        self.solver = solver
        return solver.build(self.store), progress


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


TWO_STAGES = f"""\
FROM scratch AS a
RUN sleep 0.3 && echo a > /a
FROM scratch AS b
RUN sleep 0.3 && echo b > /b
FROM scratch
COPY --from=a --chown={ME} /a /a
COPY --from=b --chown={ME} /b /b
"""


# ----- keys ---------------------------------------------------------------------------
def test_keys_ignore_comments_whitespace_lines_and_stage_position(env: Env) -> None:
    first, _ = env.build(TWO_STAGES)
    assert first.steps_run == 4
    moved = ("# the b stage first now, spelled differently\n\n"
             "FROM scratch AS b\nRUN    sleep 0.3 && echo b > /b\n"
             "FROM scratch AS a\n\n# comment\nRUN sleep 0.3 && echo a > /a\n"
             "FROM scratch\nCOPY --from=a --chown=" + ME + " /a /a\n"
             "COPY   --from=b   --chown=" + ME + "   /b    /b\n")
    second, progress = env.build(moved)
    assert (second.steps_run, second.steps_cached) == (0, 4)
    assert first.manifest.digest == second.manifest.digest
    # a different command inside the shell string is a different op
    third, progress = env.build(moved.replace("echo b", "echo  b"))
    assert third.steps_run == 2  # b's RUN and the COPY from b; a and COPY --from=a stay
    assert "[a 2/2] RUN sleep 0.3 && echo a > /a" in progress.cached


def test_same_text_same_key_anywhere(env: Env) -> None:
    r1, _ = env.build(TWO_STAGES)
    r2, progress = env.build("\n\n" + TWO_STAGES.replace("FROM scratch\n", "# final\nFROM scratch\n"))
    assert (r2.steps_run, r2.steps_cached) == (0, 4)
    assert r1.manifest.digest == r2.manifest.digest


def test_label_does_not_move_run_but_a_visible_arg_does(env: Env) -> None:
    base = "FROM scratch\nARG V=1\nLABEL x={label}\nRUN echo $V > /v\nRUN echo done > /d\n"
    env.build(base.format(label="1"))
    r, _ = env.build(base.format(label="2"))
    assert r.steps_run == 0
    r, progress = env.build(base.format(label="2"), build_args={"V": "2"})
    assert r.steps_run == 2
    assert progress.explained["[2/3] RUN echo 2 > /v"] == "build arg V changed (1 → 2)"
    assert progress.explained["[3/3] RUN echo done > /d"].startswith("an earlier step changed")


def test_key_is_versioned_and_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    op = ops.Mkdir("/app", "")
    key = ops.op_key(ops.Scratch().key(), op)
    assert key == ops.op_key(ops.Scratch().key(), ops.Mkdir("/app", ""))
    assert key != ops.op_key(ops.Scratch().key(), ops.Mkdir("/app", "1000"))
    assert key != ops.op_key(ops.ImageSource("x", "sha256:" + "0" * 64).key(), op)
    monkeypatch.setattr(ops, "KEY_VERSION", ops.KEY_VERSION + 1)
    assert ops.op_key(ops.Scratch().key(), op) != key
    with pytest.raises(AttributeError):
        op.path = "/other"  # type: ignore[misc]


def test_copy_link_key_does_not_depend_on_what_is_below(env: Env) -> None:
    (env.ctx / "f").write_text("data\n")
    df = "FROM scratch\nRUN echo {n} > /n\nCOPY --link --chown=" + ME + " f /f\n"
    env.build(df.format(n=1))
    r, progress = env.build(df.format(n=2))
    assert r.steps_run == 1
    assert "[3/3] COPY --link --chown=" + ME + " f /f" in progress.cached
    # and the files still land on top of the stage; what follows depends on both
    env.build(df.format(n=2) + "RUN echo x > /x\n")
    r, progress = env.build(df.format(n=3) + "RUN echo x > /x\n")
    assert r.steps_run == 2  # RUN echo 3 and the RUN after the linked COPY, not the COPY
    snap = env.workers[-1]
    seen = {rel for c in snap.contents.values() for rel in c}
    assert {"n", "f", "x"} <= seen


# ----- explain --------------------------------------------------------------------------
def test_explain_compares_with_the_same_step_not_a_sibling(env: Env) -> None:
    df = ("FROM scratch AS wheels\nRUN echo venv > /venv\n"
          "FROM scratch AS runtime\nRUN echo useradd > /user\n"
          f"COPY --from=wheels --chown={ME} /venv /venv\n")
    _, progress = env.build(df)
    assert progress.explained == {
        "[wheels 2/2] RUN echo venv > /venv": "no earlier build of this step",
        "[runtime 2/3] RUN echo useradd > /user": "no earlier build of this step",
        f"[runtime 3/3] COPY --from=wheels --chown={ME} /venv /venv":
            "no earlier build of this step"}
    _, progress = env.build(df.replace("useradd", "adduser"))
    reason = progress.explained["[runtime 2/3] RUN echo adduser > /user"]
    assert "useradd" in reason and "adduser" in reason and "venv" not in reason


def test_explain_follows_a_named_stage_that_moved(env: Env) -> None:
    env.build("FROM scratch AS one\nRUN echo 1 > /x\nFROM scratch AS two\nRUN echo 2 > /y\n",
              target="one")
    _, progress = env.build("FROM scratch AS two\nRUN echo 2 > /y\n"
                            "FROM scratch AS one\nRUN echo 1b > /x\n", target="one")
    assert progress.explained["[one 2/2] RUN echo 1b > /x"].startswith("command changed")


# ----- scheduling ------------------------------------------------------------------------
def test_independent_stages_run_at_once_within_jobs(env: Env) -> None:
    env.build(TWO_STAGES, jobs=2)
    assert env.workers[-1].peak == 2
    env.build(TWO_STAGES, jobs=1, no_cache=True)
    assert env.workers[-1].peak == 1


def test_a_stage_used_twice_is_built_once(env: Env) -> None:
    df = ("FROM scratch AS base\nRUN echo b > /b\n"
          "FROM base AS x\nRUN echo x > /x\n"
          "FROM base AS y\nRUN echo y > /y\n"
          f"FROM scratch\nCOPY --from=base --chown={ME} /b /b1\nCOPY --from=x --chown={ME} /x /x\n"
          f"COPY --from=y --chown={ME} /y /y\n")
    env.build(df, jobs=4)
    scripts = [s.args[-1] for s in env.workers[-1].runs]
    assert sorted(scripts) == ["echo b > /b", "echo x > /x", "echo y > /y"]


def test_an_identical_op_in_two_stages_runs_once(env: Env) -> None:
    df = ("FROM scratch AS a\nRUN sleep 0.2 && echo same > /s\n"
          "FROM scratch AS b\nRUN sleep 0.2 && echo same > /s\n"
          f"FROM scratch\nCOPY --from=a --chown={ME} /s /a\nCOPY --from=b --chown={ME} /s /b\n"
          )
    r, _ = env.build(df, jobs=4)
    assert len(env.workers[-1].runs) == 1
    assert (r.steps_run, r.steps_cached) == (3, 1)


DIAMOND = f"""\
FROM scratch AS root
RUN echo root > /root
FROM root AS left
RUN sleep 0.1 && echo left > /left
FROM root AS right
RUN echo right > /right
FROM left AS left2
RUN echo left2 > /left2
FROM right AS right2
RUN sleep 0.1 && echo right2 > /right2
FROM scratch
COPY --from=left2 --chown={ME} / /l/
COPY --from=right2 --chown={ME} / /r/
"""


def test_image_is_the_same_whatever_the_schedule(tmp_path: Path) -> None:
    digests = set()
    for jobs in (1, 4, 1, 4):
        env = Env(tmp_path / f"run-{len(digests)}-{jobs}-{time.monotonic_ns()}")
        r, _ = env.build(DIAMOND, jobs=jobs, source_date_epoch=1700000000)
        digests.add(r.manifest.digest)
    assert len(digests) == 1


def test_a_failing_step_cancels_its_running_siblings(env: Env) -> None:
    df = ("FROM scratch AS slow\nRUN sleep 30\n"
          "FROM scratch AS bad\nRUN sleep 0.2 && exit 3\n"
          f"FROM scratch\nCOPY --from=slow --chown={ME} / /s\nCOPY --from=bad --chown={ME} / /b\n"
          )
    started = time.monotonic()
    with pytest.raises(StepError) as e:
        env.build(df, jobs=2)
    assert e.value.exit_status == 3 and e.value.line == 4
    assert time.monotonic() - started < 20  # the 30 s sleep was cut short
    assert env.workers[-1].running == 0


def test_cancel_stops_every_running_step(env: Env) -> None:
    df = ("FROM scratch AS a\nRUN sleep 30 && echo a > /a\n"
          "FROM scratch AS b\nRUN sleep 30 && echo b > /b\n"
          f"FROM scratch\nCOPY --from=a --chown={ME} / /a\nCOPY --from=b --chown={ME} / /b\n"
          )
    (env.ctx / "Dockerfile").write_text(df)
    solver = Solver(BuildOptions(context=env.ctx, dockerfile=env.ctx / "Dockerfile", jobs=2),
                    Recorder(), worker=env.worker)
    solver.load()
    errors: list[BaseException] = []

    def build() -> None:
        try:
            solver.build(env.store)
        except BaseException as err:  # noqa: BLE001 - the test looks at it
            errors.append(err)

    t = threading.Thread(target=build)
    t.start()
    assert wait_until(lambda: bool(env.workers) and env.workers[-1].running == 2), (env.workers, errors)
    solver.sched.cancel.set()
    t.join(timeout=5)
    assert not t.is_alive()
    assert env.workers[-1].running == 0
    assert errors and isinstance(errors[0], Cancelled)


# ----- flags that are refused, never ignored ---------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("FROM --platform=linux/vax scratch\nRUN true\n",
     "Dockerfile:1: FROM --platform=linux/vax: invalid platform 'linux/vax': unknown architecture"),
    ("FROM --platform=windows/amd64 scratch\nRUN true\n",
     "Dockerfile:1: FROM --platform=windows/amd64: invalid platform"),
    ("FROM scratch\nRUN --security=insecure true\n",
     "Dockerfile:2: RUN --security=insecure needs the security.insecure entitlement"),
    ("FROM scratch\nCOPY https://example.invalid/x.git /x\n",
     "Dockerfile:2: source can't be a git ref for COPY"),
])
def test_refused_flags_name_the_line(env: Env, text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as e:
        env.build(text)
    assert str(e.value).startswith(message)
    assert not env.workers  # refused before anything was touched


def test_host_platform_and_insecure_with_allow_work(env: Env) -> None:
    r, _ = env.build(f"FROM --platform=linux/{host_arch()} scratch\n"
                     "RUN --security=insecure echo hi > /hi\nRUN echo sandboxed > /s\n",
                     allow=["security.insecure"])
    assert r.steps_run == 2
    assert [s.privileged for s in env.workers[-1].runs] == [True, False]


def test_one_job_never_deadlocks_on_a_mounted_stage(env: Env) -> None:
    df = ("FROM scratch AS a\nRUN echo a > /a\n"
          "FROM scratch AS b\nRUN --mount=type=bind,from=a,source=/a,target=/x echo b > /b\n"
          "FROM b\nRUN --mount=type=bind,from=a,target=/y echo c > /c\n")
    r, _ = env.build(df, jobs=1)
    assert r.steps_run == 3
    assert env.workers[-1].peak == 1


def test_a_long_chain_of_stages_needs_no_recursion(env: Env) -> None:
    """Each stage waits for its base on its own thread: 400 stages deep is no stack."""
    lines = ["FROM scratch AS s0", "RUN echo 0 > /f"]
    for i in range(1, 400):
        lines += [f"FROM s{i - 1} AS s{i}", f"ENV N={i}"]
    r, _ = env.build("\n".join(lines) + "\n", jobs=2)
    assert r.steps_run == 1
