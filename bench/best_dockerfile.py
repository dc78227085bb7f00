"""Measure docs/best-dockerfile.md: each step's image size, cold build, one-edit rebuild, and
what `pybuild build --check` and `pybuild advise` print. Run as root from the repository root:

    python3 bench/best_dockerfile.py OUTDIR

Each step builds in a fresh store (the base image imported first, not timed), so "cold" means
no build cache and no cache mounts; then one source file is edited and the image rebuilt.
The base tarball comes from examples/django-app/base-image.sh (demo.sh caches it); pip reaches
PyPI with the host CA bundle as a build secret, as demo.sh does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "django-app"
STEPS = sorted((ROOT / "docs" / "best-dockerfile").glob("*.Dockerfile")) + [EXAMPLE / "Dockerfile"]
BASE_TAR = Path(os.environ.get("PYBUILD_DEMO_CACHE", "/var/cache/pybuild-demo")) / \
    "debian-python-bookworm.tar"
CA = Path("/etc/ssl/certs/ca-certificates.crt")


def pybuild(store: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "pybuild", "--root", str(store), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"pybuild {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for n, dockerfile in enumerate(STEPS, 1):
        work = out / f"work-{n}"
        shutil.rmtree(work, ignore_errors=True)
        ctx = work / "ctx"
        shutil.copytree(EXAMPLE, ctx, ignore=shutil.ignore_patterns("__pycache__", "data"))
        store = work / "store"
        pybuild(store, "import", str(BASE_TAR), "localhost/debian-python:bookworm")
        df = work / "Dockerfile"
        shutil.copy(dockerfile, df)
        check = pybuild(store, "build", "--check", "-f", str(df), str(ctx), check=False)
        build = ["build", "--progress", "plain", "-f", str(df), "-t", f"step{n}",
                 "--secret", f"id=pip-ca,src={CA}", str(ctx)]
        t0 = time.monotonic()
        cold = pybuild(store, *build)
        cold_s = time.monotonic() - t0
        views = ctx / "mysite" / "urls.py"
        views.write_text(views.read_text() + "# one edited line\n")
        t0 = time.monotonic()
        warm = pybuild(store, *build)
        warm_s = time.monotonic() - t0
        images = pybuild(store, "images").stdout
        size = next(line.split()[-1] for line in images.splitlines() if line.startswith(f"step{n} "))
        advice = pybuild(store, "advise", f"step{n}", "-f", str(df), "--context", str(ctx)).stdout
        advice_json = json.loads(pybuild(store, "advise", f"step{n}", "-f", str(df), "--format",
                                         "json").stdout)
        steps_line = next(line for line in warm.stdout.splitlines() + warm.stderr.splitlines()
                          if line.strip().startswith("steps:"))
        results.append({"step": n, "dockerfile": str(dockerfile.relative_to(ROOT)), "size": size,
                        "content_bytes": advice_json["size"], "wasted": advice_json["wasted"],
                        "cold_s": round(cold_s, 1), "rebuild_s": round(warm_s, 1),
                        "rebuild_steps": steps_line.strip(), "check_rc": check.returncode,
                        "items": [i["kind"] for i in advice_json["items"]]})
        (out / f"step-{n}-check.txt").write_text(check.stdout + check.stderr)
        (out / f"step-{n}-advise.txt").write_text(advice)
        (out / f"step-{n}-build.txt").write_text(cold.stdout + cold.stderr)
        (out / f"step-{n}-rebuild.txt").write_text(warm.stdout + warm.stderr)
        print(json.dumps(results[-1]), flush=True)
        shutil.rmtree(store, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
