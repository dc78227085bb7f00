"""Time the extractor on deep hostile layers (generators in tests/deep_layers.py).

    python3 bench/deep_layer.py chain 10000 [hop]   # a 10,000-deep chain, hops of 1,000
    python3 bench/deep_layer.py files 1000 20000    # 20,000 files in a dir 1,000 levels deep
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from deep_layers import chain_members, files_members, write_tar  # noqa: E402


def main(argv: list[str]) -> int:
    from pybuild.layer import apply_layer
    from pybuild.liveness import remove_tree
    kind, a = argv[0], int(argv[1])
    b = int(argv[2]) if len(argv) > 2 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "layer.tar"
        members = chain_members(a, b) if kind == "chain" else files_members(a, b)
        count = write_tar(members, tar)
        start = time.monotonic()
        with open(tar, "rb") as f:
            apply_layer(f, Path(tmp) / "root", mode="overlay")
        took = time.monotonic() - start
        print(f"{kind} {a} {b}: {count} entries, {tar.stat().st_size >> 20} MiB of tar, "
              f"extracted in {took:.2f} s")
        remove_tree(Path(tmp) / "root")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
