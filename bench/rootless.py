"""Rootless timings (issue 18): the same multi-stage Dockerfile built cold by

- pybuild as root (the store in a fresh temp dir),
- pybuild rootless, as an unprivileged user with a subuid range (fresh XDG store),
- pybuild rootless with fuse-overlayfs forced (PYBUILD_FUSE_OVERLAYFS=1), the fallback of
  kernels without unprivileged overlayfs,
- `buildah bud` as that same user (fresh rootless storage under the user's home),

interleaved run by run, median wall time of each. Needs root (it creates the user with
tests/rootless_user.py and removes it after). Results: bench/results/rootless.json.

    sudo python3 bench/rootless.py --runs 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rootless_user import EPOCH, User, missing, rootless_user, user_devices  # noqa: E402

DOCKERFILE = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc /home/app /tmp && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd \\
 && echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd \\
 && printf 'root:x:0:\\napp:x:1000:\\n' > /etc/group && chown app:app /home/app

FROM base AS builder
RUN --mount=type=cache,target=/cache echo cached >> /cache/c; cat /cache/c > /built
RUN for i in $(seq 1 300); do echo $i > /home/app/f$i; done; rm /home/app/f1
USER app
RUN echo hi > /home/app/hello

FROM base
COPY --from=builder --chown=app:app /home/app /srv/app
USER app
CMD ["cat", "/srv/app/hello"]
"""


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.monotonic()
    res = subprocess.run(argv, cwd="/", env=env, capture_output=True, text=True, timeout=600)
    dt = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"{argv[:8]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return dt


def _as_user(user: User, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user.name, "--", "env", "-i", *user.env(), *argv]


def _load() -> float:
    return os.getloadavg()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    why = missing()
    if why or shutil.which("buildah") is None:
        print(f"skipped: {why or 'buildah not installed'}")
        return 1
    times: dict[str, list[float]] = {"pybuild-root": [], "pybuild-rootless": [],
                                     "pybuild-rootless-fuse": [], "buildah-rootless": []}
    loads: list[float] = []
    with user_devices(), rootless_user("pbbench", "300000-365535") as user:
        ctx = user.home.parent / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        shutil.copy("/bin/busybox", ctx / "busybox")
        subprocess.run(["chmod", "-R", "o+rX", str(ctx)], check=True)
        root_env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
        for i in range(args.runs):
            loads.append(_load())
            store = user.home.parent / f"rootstore{i}"
            times["pybuild-root"].append(_timed(
                [sys.executable, "-m", "pybuild", "--root", str(store), "build", "--progress",
                 "quiet", "-t", "app", str(ctx)], env=dict(root_env, PYTHONPATH=str(REPO))))
            shutil.rmtree(store, ignore_errors=True)
            xdg = user.home / f"data{i}"
            times["pybuild-rootless"].append(_timed(_as_user(user, [
                "env", f"XDG_DATA_HOME={xdg}", user.python, "-m", "pybuild", "build",
                "--progress", "quiet", "-t", "app", str(ctx)])))
            xdg = user.home / f"fuse{i}"
            times["pybuild-rootless-fuse"].append(_timed(_as_user(user, [
                "env", f"XDG_DATA_HOME={xdg}", "PYBUILD_FUSE_OVERLAYFS=1", user.python, "-m",
                "pybuild", "build", "--progress", "quiet", "-t", "app", str(ctx)])))
            bstore = user.home / f"buildah{i}"
            times["buildah-rootless"].append(_timed(_as_user(user, [
                "buildah", "--root", str(bstore / "root"), "--runroot", str(bstore / "run"),
                "--storage-driver", "overlay", "bud", "--runtime", shutil.which("runc") or "runc",
                "--network", "host", "--layers",
                "-t", "app", str(ctx)])))
        versions = {
            "buildah": subprocess.run(["buildah", "--version"], capture_output=True,
                                      text=True).stdout.strip(),
            "runc": subprocess.run(["runc", "--version"], capture_output=True,
                                   text=True).stdout.splitlines()[0],
        }
    medians = {k: statistics.median(v) for k, v in times.items()}
    out = {"scenario": "rootless (cold multi-stage build)",
           "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "runs": times, "median": medians, "load": loads, "versions": versions}
    results = REPO / "bench" / "results" / "rootless.json"
    results.write_text(json.dumps(out, indent=1) + "\n")
    print("| tool | median s | runs | vs pybuild rootless |")
    print("|---|---|---|---|")
    for k, v in times.items():
        ratio = medians["pybuild-rootless"] / medians[k]
        print(f"| {k} | {medians[k]:.2f} | {', '.join(f'{t:.2f}' for t in v)} | {ratio:.2f} |")
    print(f"load at each run start: {', '.join(f'{x:.1f}' for x in loads)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
