"""The layer cache: what is reused, why a step was rebuilt, and how the cache is pruned."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Pybuild, make_busybox_tar

pytestmark = pytest.mark.root


def ctx_with(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for k, v in (files or {}).items():
        (ctx / k).write_text(v)
    return ctx


def steps(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """Step name → "CACHED" or the explain reason, from plain output."""
    names: dict[str, str] = {}
    out: dict[str, str] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"#(\d+) (\[.*)$", line)
        if m:
            names[m.group(1)] = m.group(2)
            continue
        m = re.match(r"#(\d+) (CACHED|rebuilding: (.*))$", line)
        if m and m.group(1) in names:
            out[names[m.group(1)]] = "CACHED" if m.group(2) == "CACHED" else m.group(3)
    return out


def build(pb: Pybuild, ctx: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    return steps(pb("build", "--progress", "plain", *args, str(ctx), env=env))


DF = """FROM busybox
ARG EARLY=1
COPY a.txt /a.txt
RUN echo "early=$EARLY" > /early
ARG LATE=1
COPY b.txt /b.txt
RUN echo "late=$LATE" > /late
"""


def test_warm_rebuild_is_all_cached_and_explains_first_build(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, DF, {"a.txt": "a", "b.txt": "b"})
    first = build(busybox, ctx)
    assert set(first.values()) == {"no earlier build of this step"}
    assert set(build(busybox, ctx).values()) == {"CACHED"}


def test_same_size_same_mtime_edit_is_seen(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, DF, {"a.txt": "aaaa", "b.txt": "b"})
    build(busybox, ctx)
    st = os.stat(ctx / "a.txt")
    (ctx / "a.txt").write_text("bbbb")  # same size
    os.utime(ctx / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    result = build(busybox, ctx)
    assert result["[2/5] COPY a.txt /a.txt"] == "files changed a.txt (content)"
    assert result['[3/5] RUN echo "early=1" > /early'] == "an earlier step changed"


def test_mode_change_is_seen(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, DF, {"a.txt": "a", "b.txt": "b"})
    build(busybox, ctx)
    os.chmod(ctx / "b.txt", 0o600)
    assert build(busybox, ctx)["[4/5] COPY b.txt /b.txt"] == "files changed b.txt (mode)"


def test_arg_change_invalidates_runs_that_see_it_only(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, DF, {"a.txt": "a", "b.txt": "b"})
    build(busybox, ctx)
    late = build(busybox, ctx, "--build-arg", "LATE=2")
    assert late["[2/5] COPY a.txt /a.txt"] == "CACHED"
    assert late['[3/5] RUN echo "early=1" > /early'] == "CACHED"
    assert late["[4/5] COPY b.txt /b.txt"] == "CACHED"  # a COPY does not use args
    assert late['[5/5] RUN echo "late=2" > /late'] == "build arg LATE changed (1 → 2)"
    early = build(busybox, ctx, "--build-arg", "EARLY=3")
    assert early["[2/5] COPY a.txt /a.txt"] == "CACHED"
    assert early['[3/5] RUN echo "early=3" > /early'] == "build arg EARLY changed (1 → 3)"
    # the RUN after it sees EARLY too, and its parent moved
    assert early["[4/5] COPY b.txt /b.txt"] == "an earlier step changed"


def test_no_cache_and_no_cache_filter(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "FROM busybox AS deps\nRUN echo d > /d\n"
                             "FROM busybox AS app\nCOPY --from=deps /d /d\nRUN echo a > /a\n")
    build(busybox, ctx)
    assert "CACHED" not in build(busybox, ctx, "--no-cache").values()
    filtered = build(busybox, ctx, "--no-cache-filter", "app")
    assert filtered["[deps 2/2] RUN echo d > /d"] == "CACHED"
    assert filtered["[app 2/3] COPY --from=deps /d /d"] != "CACHED"


def test_moved_base_image_invalidates_stage(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "FROM busybox\nRUN echo x > /x\n")
    build(busybox, ctx)
    tar = tmp_path / "bb2.tar"
    make_busybox_tar(tar)
    import tarfile
    with tarfile.open(tar, "a") as t:
        info = tarfile.TarInfo("etc/motd")
        data = b"new base\n"
        info.size = len(data)
        import io
        t.addfile(info, io.BytesIO(data))
    busybox("import", str(tar), "busybox")
    reason = build(busybox, ctx)["[2/2] RUN echo x > /x"]
    assert reason.startswith("base image moved (") and "→" in reason


def test_prune_keeps_tagged_images(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "FROM busybox\nCOPY a.txt /a\nRUN --mount=type=cache,target=/c "
                             "echo x >> /c/log && cp /c/log /log\n", {"a.txt": "1"})
    busybox("build", "-t", "keep", str(ctx))
    (ctx / "a.txt").write_text("2")
    busybox("build", str(ctx))  # untagged result: its records are reclaimable
    ls = json.loads(busybox("cache", "ls", "--format", "json").stdout)
    regular = [r for r in ls if r["type"] == "regular"]
    assert len(regular) == 4
    assert sum(1 for r in regular if r["used_by"] == ["keep:latest"]) == 2
    assert any(r["type"] == "exec.cachemount" for r in ls)
    dry = busybox("cache", "prune", "--dry-run").stdout
    assert dry.count("Would remove:") == 2
    assert len(json.loads(busybox("cache", "ls", "--format", "json").stdout)) == 5
    busybox("cache", "prune", "--all")
    assert json.loads(busybox("cache", "ls", "--format", "json").stdout) == []
    # the tagged image is whole: every blob present, and it still builds FROM
    from pybuild.store import Store
    assert Store(busybox.root).verify() == []
    ctx2 = tmp_path / "ctx2"
    ctx2.mkdir()
    (ctx2 / "Dockerfile").write_text("FROM keep\nRUN cat /a /log\n")
    busybox("build", str(ctx2))


def test_prune_filters(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "FROM busybox\nRUN echo 1 > /1\n")
    busybox("build", str(ctx))
    assert "0 records" in busybox("cache", "prune", "--filter", "until=1h").stdout
    assert "1 records" in busybox("cache", "prune", "--filter", "type=regular").stdout
    bad = busybox("cache", "prune", "--filter", "until=soon", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: invalid duration 'soon'")
    du = json.loads(busybox("cache", "du", "--format", "json").stdout)
    assert du["records"] == 0


def test_two_concurrent_builds_share_one_store(busybox: Pybuild, tmp_path: Path) -> None:
    ctxs = []
    for n in range(2):
        c = tmp_path / f"c{n}"
        c.mkdir()
        (c / "Dockerfile").write_text(f"FROM busybox\nRUN echo common > /common\n"
                                      f"RUN for i in $(seq 50); do echo $i > /f{n}_$i; done\n")
        ctxs.append(c)
    results: list[subprocess.CompletedProcess] = []
    threads = [threading.Thread(target=lambda c=c, n=n: results.append(
        busybox("build", "-t", f"cc{n}", str(c), check=False))) for n, c in enumerate(ctxs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    from pybuild.store import Store
    assert Store(busybox.root).verify() == []
    assert "cc0" in busybox("images").stdout and "cc1" in busybox("images").stdout


def test_sigkill_mid_build_then_rebuild_reuses_committed_steps(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "FROM busybox\nRUN echo one > /one\nRUN echo started; sleep 30\n")
    env = dict(os.environ, PYBUILD_PROGRESS="plain")
    proc = subprocess.Popen([sys.executable, "-m", "pybuild", "--root", str(busybox.root),
                             "build", "-t", "k", str(ctx)], stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    seen = ""
    while "started" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    from pybuild.store import Store
    assert Store(busybox.root).verify() == []
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n")
    result = build(busybox, ctx, "-t", "k")
    assert result["[2/3] RUN echo one > /one"] == "CACHED"
    mounts = Path("/proc/mounts").read_text()
    assert str(busybox.root) not in mounts  # the killed build's overlay was cleaned up


def test_bind_mounted_content_is_part_of_the_key(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "FROM busybox AS src\nCOPY v.txt /out/v.txt\n"
                             "FROM busybox\n"
                             "RUN --mount=type=bind,from=src,source=/out,target=/in cat /in/v.txt > /from-stage\n"
                             "RUN --mount=type=bind,source=v.txt,target=/v.txt cat /v.txt > /from-context\n",
                   {"v.txt": "one\n"})
    busybox("build", "-t", "bind", str(ctx))
    (ctx / "v.txt").write_text("two\n")
    result = build(busybox, ctx, "-t", "bind")
    stage_run = next(v for k, v in result.items() if "/from-stage" in k)
    context_run = next(v for k, v in result.items() if "/from-context" in k)
    assert stage_run == "bind mount /in: its source changed"
    assert context_run == ("an earlier step changed; bind mount /v.txt: files changed v.txt "
                           "(content)")
    out = busybox("run", "--rm", "--network", "none", "bind", "cat", "/from-stage", "/from-context").stdout
    assert out == "two\ntwo\n"
