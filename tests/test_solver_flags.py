"""Flags that used to be parsed and ignored, for real: each works or is refused clearly.

FROM --platform (the host's works, another is refused), RUN --security=insecure (needs
--allow security.insecure, then runs privileged), COPY --link (a layer of its own, cached
whatever is below it), ADD --keep-git-dir (works on git sources, tests/conformance; a flag
that contradicts the URL's query is refused before anything is fetched).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import Pybuild, store_snapshot
from test_cache import ctx_with
from pybuild.platforms import host_arch


def _cap_eff(out: str) -> int:
    line = next(x for x in out.splitlines() if "CapEff:" in x)
    return int(line.split()[-1], 16)


def test_insecure_runs_privileged_only_when_allowed(busybox: Pybuild, tmp_path: Path,
                                                    no_leaks: None) -> None:
    ctx = ctx_with(tmp_path, "FROM busybox\nRUN --security=insecure grep CapEff /proc/self/status\n"
                         "RUN grep CapEff /proc/self/status\n")
    before = store_snapshot(busybox.root)
    refused = busybox("build", str(ctx), check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "Dockerfile:2: RUN --security=insecure needs the security.insecure entitlement: "
        "pass --allow security.insecure")
    assert store_snapshot(busybox.root) == before
    out = busybox("build", "--allow", "security.insecure", str(ctx)).stderr
    insecure, sandbox = [_cap_eff(x) for x in out.split("RUN grep")]
    cap_sys_admin = 1 << 21
    assert insecure & cap_sys_admin and not sandbox & cap_sys_admin
    bad = busybox("build", "--allow", "network.bridge", str(ctx), check=False)
    assert bad.returncode == 1 and "--allow network.bridge: unknown entitlement" in bad.stderr


def test_from_platform(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, f"FROM --platform=linux/{host_arch()} busybox\nRUN true\n")
    busybox("build", str(ctx))
    ctx = ctx_with(tmp_path, f"ARG P=linux/{host_arch()}\nFROM --platform=$P busybox\nRUN true\n")
    busybox("build", str(ctx))
    # the ARG is expanded before the platform is read; a platform that is none is named
    # with its line, before anything is fetched (foreign platforms: tests/test_platforms.py)
    ctx = ctx_with(tmp_path, "ARG P=linux/notanarch\nFROM --platform=$P busybox\nRUN true\n")
    before = store_snapshot(busybox.root)
    refused = busybox("build", str(ctx), check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "Dockerfile:2: FROM --platform=linux/notanarch: invalid platform 'linux/notanarch': "
        "unknown architecture 'notanarch'")
    assert store_snapshot(busybox.root) == before


def test_add_keep_git_dir_contradicting_the_url_is_refused(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, "FROM busybox\n"
                   "ADD --keep-git-dir=false https://example.invalid/r.git?keep-git-dir=true /r\n")
    refused = busybox("build", str(ctx), check=False)
    assert refused.returncode == 1
    assert "Dockerfile:2: inconsistent keep-git-dir configuration" in refused.stderr


def _logs(out: str, step: str) -> list[str]:
    """The log lines of the step whose name contains `step` (plain progress)."""
    block = next(b for b in out.split("\n\n") if step in b.splitlines()[0])
    return [m.group(1) for line in block.splitlines()
            if (m := re.match(r"#\d+ \d+\.\d+ (.*)$", line))]


def test_copy_link_is_its_own_layer(busybox: Pybuild, tmp_path: Path, no_leaks: None) -> None:
    df = ("FROM busybox\nRUN echo {n} > /n && ln -s /real /app && mkdir /real\n"
          "COPY --link hello.txt /app/\nRUN cat /n /app/hello.txt && ls -ld /app | cut -c1\n")
    ctx = ctx_with(tmp_path, df.format(n=1))
    (ctx / "hello.txt").write_text("hello\n")
    first = busybox("build", "--progress", "plain", str(ctx)).stderr
    # the layer was made on an empty filesystem: /app is a directory in it, and it wins
    # over the symlink below (BuildKit's rebase) instead of the copy following the link
    assert _logs(first, "RUN cat") == ["1", "hello", "d"]
    (ctx / "Dockerfile").write_text(df.format(n=2))
    second = busybox("build", "--progress", "plain", str(ctx)).stderr
    link = next(b for b in second.split("\n\n") if "COPY --link" in b.splitlines()[0])
    assert link.endswith("CACHED"), second  # what is below changed; the linked layer did not
    assert _logs(second, "RUN cat") == ["2", "hello", "d"]


@pytest.mark.parametrize("jobs", ["0", "x"])
def test_jobs_must_be_a_positive_number(busybox: Pybuild, tmp_path: Path, jobs: str) -> None:
    ctx = ctx_with(tmp_path, "FROM busybox\n")
    bad = busybox("build", "--jobs", jobs, str(ctx), check=False)
    assert bad.returncode == 2 and "--jobs" in bad.stderr
