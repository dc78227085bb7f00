#!/usr/bin/env python3
"""A store with many cache records and images: how warm builds and `cache ls/prune` scale.

    sudo python3 bench/bigstore.py [--records 10000] [--images 1000] [--runs 3]

The store is made through pybuild's own APIs (Store, image.write, Cache.put): `images`
tagged one-layer images (a tiny real gzip layer each) and `records` cache records whose
layers are those images' layers (so `cache ls` resolves real users), plus the busybox base
and one real build. Then, each timed as a fresh process (median of `runs`): a warm rebuild
(every step a cache hit), `cache ls`, `cache ls --format json`, `cache prune --dry-run`.
The same timings on an empty-ish store (base + the one build) are printed alongside, so
the figure that matters is the difference. Prints a Markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from rootfs import make_busybox_tar  # noqa: E402

from pybuild import image as imagemod  # noqa: E402
from pybuild.layer import write_layer  # noqa: E402
from pybuild.solver.cache import Cache, Record  # noqa: E402
from pybuild.store import Descriptor, Store  # noqa: E402

BASE = "localhost/bench-busybox:latest"
DOCKERFILE = f"FROM {BASE}\nCOPY a.txt /a.txt\nRUN echo hi > /hi\nCOPY b.txt /b.txt\n"


def _tiny_layer(store: Store, i: int, work: Path) -> tuple[Descriptor, str]:
    src = work / f"layer{i}"
    src.mkdir()
    (src / f"f{i}").write_text(f"layer {i}\n")
    with store.writer() as w:
        info = write_layer(src, w)
        desc = w.commit(info.media_type)
    shutil.rmtree(src)
    return Descriptor(info.media_type, desc.digest, desc.size), info.diff_id


def populate(root: Path, records: int, images: int) -> None:
    store = Store(root)
    cache = Cache(store)
    work = Path(tempfile.mkdtemp(prefix="bigstore-", dir=root.parent))
    layers: list[tuple[Descriptor, str]] = []
    for i in range(images):
        layer, diff_id = _tiny_layer(store, i, work)
        layers.append((layer, diff_id))
        config = {"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
        store.set_tag(f"bench/img{i}:latest", imagemod.write(store, config, [layer]))
    now = time.time()
    for j in range(records):
        layer, diff_id = layers[j % len(layers)]
        key = f"sha256:{j:064x}"
        cache.put(Record(key, f"sha256:{j + 1:064x}", f"slot{j % 997}", f"[bench {j}] RUN step {j}",
                         layer, diff_id, diff_id, {"run": f"step {j}"}, now - j, now - j,
                         step=f"bench-step-{j}"))
    shutil.rmtree(work)
    store.close()


def pybuild(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pybuild", "--root", str(root), *args]


def timed(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, cwd=HERE.parent)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "pybuild")], check=False)
    base = Path(tempfile.mkdtemp(prefix="pybuild-bigstore-", dir=args.workdir))
    try:
        ctx = base / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        (ctx / "a.txt").write_text("a\n")
        (ctx / "b.txt").write_text("b\n")
        busybox = make_busybox_tar(base / "busybox.tar")
        rows = []
        for label, records, images in (("small", 0, 0), ("big", args.records, args.images)):
            root = base / f"store-{label}"
            t = time.perf_counter()
            populate(root, records, images)
            made = time.perf_counter() - t
            subprocess.run(pybuild(root, "import", str(busybox), BASE), check=True, capture_output=True)
            subprocess.run(pybuild(root, "build", "-q", "-t", "app", str(ctx)), check=True,
                           capture_output=True, cwd=HERE.parent)
            figures = {
                "warm build": timed(pybuild(root, "build", "-q", "-t", "app", str(ctx)), args.runs),
                "cache ls": timed(pybuild(root, "cache", "ls"), args.runs),
                "cache ls --format json": timed(pybuild(root, "cache", "ls", "--format", "json"), args.runs),
                "cache prune --dry-run": timed(pybuild(root, "cache", "prune", "--dry-run"), args.runs),
            }
            rows.append((label, records, images, made, figures))
        print("| store | records | images | made in s | " + " | ".join(rows[0][4]) + " |")
        print("|---|---|---|---|" + "---|" * len(rows[0][4]))
        for label, records, images, made, figures in rows:
            print(f"| {label} | {records} | {images} | {made:.1f} | "
                  + " | ".join(f"{v:.2f} s" for v in figures.values()) + " |")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
