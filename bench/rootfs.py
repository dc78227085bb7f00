"""Input tarballs for the benchmarks, made with the standard library only.

The same bytes go to every builder, so differences in timing come from the builders and
not from their inputs.
"""

from __future__ import annotations

import io
import random
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
MTIME = 1700000000
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = mode
    ti.mtime = MTIME
    tar.addfile(ti)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = MTIME
    tar.addfile(ti, io.BytesIO(data))


def make_busybox_tar(path: Path, binary: Path = BUSYBOX) -> Path:
    """A minimal busybox rootfs (static /bin/busybox, applet symlinks, passwd, group);
    `binary` is another architecture's busybox for a foreign base (the host's applet list).

    Static busybox needs no libraries, so this 2 MB base works in every builder and keeps
    the benchmark about the RUN step, not about the base image.
    """
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "etc", "tmp", "root", "home", "var"):
            _add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        _add_file(tar, "bin/busybox", binary.read_bytes(), 0o755)
        for applet in applets:
            if applet == "busybox":
                continue
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type = tarfile.SYMTYPE
            ti.linkname = "busybox"
            ti.mtime = MTIME
            tar.addfile(ti)
        _add_file(tar, "etc/passwd", PASSWD.encode())
        _add_file(tar, "etc/group", GROUP.encode())
    return path


def make_random_tar(path: Path, files: int = 2000, size: int = 65536, seed: int = 128) -> Path:
    """`files` files of `size` pseudo-random bytes under data/: an incompressible layer.

    Seeded, so every run pushes the same blob; incompressible, so gzip cannot shrink the
    upload and the push measures moving bytes.
    """
    rng = random.Random(seed)
    with tarfile.open(path, "w") as tar:
        _add_dir(tar, "data")
        for i in range(files):
            _add_file(tar, f"data/f{i:05d}", rng.randbytes(size))
    return path
