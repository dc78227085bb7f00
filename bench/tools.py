"""The builders under test, as command lines: pybuild, docker (BuildKit), buildah, skopeo.

Each wrapper knows how to import a rootfs tarball as a base image, how to spell a build,
and how to empty its cache. Housekeeping and timed commands both go through `run_logged`;
the runner times only the `Command` a case hands it for the measured step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemons import DOCKER_CLIENT, Unavailable, remove_tree

REPO = Path(__file__).resolve().parents[1]


class Failure(Exception):
    """A command a benchmark depends on failed; the message carries its output tail."""


@dataclass
class Command:
    """One process to run: argv plus the environment additions it needs."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}


def run_logged(cmd: Command, log: Path, check: bool = True) -> float:
    """Run `cmd` with its output appended to `log`; return wall seconds.

    The clock brackets only the child process: the same fork/exec cost for every tool.
    With `check`, a non-zero exit raises Failure with the log tail.
    """
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd.argv)}\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.run(cmd.argv, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=cmd.environ())
        elapsed = time.perf_counter() - start
    if check and proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise Failure(f"`{' '.join(cmd.argv[:6])} ...` exited {proc.returncode}; "
                      f"log {log}:\n{tail}")
    return elapsed


def children_cpu() -> float:
    """CPU seconds (user + system) of every child this process has waited for so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def daemon_cpu(marker: str) -> float:
    """CPU seconds used so far by the live processes whose command line contains `marker`
    (a private dockerd and its containerd, named by their state directory): the work a
    `docker build` client hands to its daemon."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


class Pybuild:
    """`python -m pybuild --root ROOT ...` from this checkout."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def cmd(self, *args: str) -> Command:
        return Command([sys.executable, "-m", "pybuild", "--root", str(self.root), *args],
                       {"PYTHONPATH": str(REPO)})

    def build(self, context: Path, tag: str, *extra: str) -> Command:
        return self.cmd("build", "--progress", "plain", "-t", tag, *extra, str(context))

    @staticmethod
    def check() -> None:
        if os.geteuid() != 0:
            raise Unavailable("pybuild builds need root (overlay mounts, runc)")
        if shutil.which("runc") is None:
            raise Unavailable("runc not installed")


class Docker:
    """The Debian docker client against one engine, BuildKit on, private client config."""

    def __init__(self, host: str, config_dir: Path) -> None:
        self.host = host
        self.config_dir = config_dir
        config_dir.mkdir(parents=True, exist_ok=True)

    def cmd(self, *args: str) -> Command:
        return Command([str(DOCKER_CLIENT), "-H", self.host, *args],
                       {"DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(self.config_dir)})

    def build(self, context: Path, tag: str, *extra: str) -> Command:
        # No bridge in the private engine: RUN steps share the host network, as pybuild's do.
        return self.cmd("build", "--network=host", "--progress=plain", "-t", tag, *extra,
                        str(context))



class Buildah:
    """buildah/podman on private storage: graph root and TMPDIR under `base`, run root in /tmp.

    TMPDIR matters: buildah keeps RUN --mount=type=cache directories in
    $TMPDIR/buildah-cache-<uid>, outside its storage, so a cold build must clear it too.
    """

    def __init__(self, base: Path, isolation: str | None) -> None:
        self.base = base
        self.isolation = isolation
        self.tmp = base / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        # containers/storage refuses a run root longer than 50 characters.
        self.runroot = Path(tempfile.mkdtemp(prefix="pbbh-run-", dir="/tmp"))
        self.storage = ["--root", str(base / "root"), "--runroot", str(self.runroot)]

    def _cmd(self, program: str, *args: str) -> Command:
        return Command([program, *self.storage, *args], {"TMPDIR": str(self.tmp)})

    def import_(self, tarball: Path, name: str, arch: str | None = None) -> Command:
        return self._cmd("podman", "import", *(["--arch", arch] if arch else []), str(tarball),
                         name)

    def pull(self, ref: str) -> Command:
        """`podman pull` from a plain-HTTP registry on loopback."""
        return self._cmd("podman", "pull", "--tls-verify=false", "-q", ref)

    def build(self, context: Path, tag: str, *extra: str) -> Command:
        iso = ["--isolation", self.isolation] if self.isolation else []
        return self._cmd("buildah", "bud", "--layers", "--network", "host", *iso, "-t", tag,
                         *extra, str(context))

    def forget(self, tag: str, log: Path) -> None:
        """Remove `tag` and the dangling intermediate images --layers kept (its cache)."""
        run_logged(self._cmd("buildah", "rmi", "-f", tag), log, check=False)
        run_logged(self._cmd("buildah", "rmi", "--prune"), log, check=False)

    def clear_cache_mounts(self) -> None:
        for d in self.tmp.glob("buildah-cache-*"):
            shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        """Remove working containers (they hold overlay mounts), then the whole storage."""
        cmd = self._cmd("buildah", "rm", "--all")
        subprocess.run(cmd.argv, capture_output=True, env=cmd.environ())
        remove_tree(self.base)
        remove_tree(self.runroot)

    @staticmethod
    def check() -> None:
        for tool in ("buildah", "podman"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} not installed (apt-get install {tool})")


def probe_buildah_isolation(busybox_tar: Path, log: Path) -> str | None:
    """The isolation buildah can run a RUN step with here: default first, else chroot.

    On this machine the default (crun) refuses cgroups in hybrid mode; the brief says to
    fall back to `--isolation chroot` then.
    """
    Buildah.check()
    for isolation in (None, "chroot"):
        b = Buildah(Path(tempfile.mkdtemp(prefix="pbbh-probe-")), isolation)
        try:
            ctx = b.base / "ctx"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text("FROM localhost/bench-busybox:latest\nRUN true\n")
            run_logged(b.import_(busybox_tar, "localhost/bench-busybox:latest"), log)
            try:
                run_logged(b.build(ctx, "probe"), log)
                return isolation
            except Failure:
                continue
        finally:
            b.close()
    raise Unavailable(f"buildah cannot run a RUN step with any isolation; see {log}")
