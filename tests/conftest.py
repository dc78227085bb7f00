"""Shared fixtures: a busybox rootfs, a fresh store, and running pybuild as a user would."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUSYBOX = Path("/bin/busybox")

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    "app:x:1000:1000::/home/app:/bin/sh\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n"


def load_bench(name: str) -> types.ModuleType:
    """A bench/ script as a module (the fuzzers' grammars and comparisons)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def is_root() -> bool:
    return os.geteuid() == 0


def require_build_tools() -> None:
    """Skip unless this process can mount overlays and run runc."""
    if not is_root():
        pytest.skip("needs root (overlay mounts, runc)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")


def _busybox_applets() -> list[str]:
    """The applets of the host's busybox (the same Debian version serves every arch)."""
    out = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    return [a for a in out.stdout.split() if a and a != "busybox"]


def make_busybox_tar(path: Path, binary: Path = BUSYBOX) -> Path:
    """A minimal busybox rootfs tarball: /bin/busybox, applet links, passwd and group;
    `binary` is the busybox to put in (another architecture's for a foreign base)."""
    with tarfile.open(path, "w") as tar:
        def add_dir(name: str, mode: int = 0o755) -> None:
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.DIRTYPE
            ti.mode = mode
            ti.mtime = 1700000000
            tar.addfile(ti)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = mode
            ti.mtime = 1700000000
            tar.addfile(ti, io.BytesIO(data))

        for d in ("bin", "etc", "tmp", "root", "home", "var"):
            add_dir(d, 0o1777 if d == "tmp" else 0o755)
        add_file("bin/busybox", binary.read_bytes(), 0o755)
        for applet in _busybox_applets():
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type = tarfile.SYMTYPE
            ti.linkname = "busybox"
            ti.mtime = 1700000000
            tar.addfile(ti)
        add_file("etc/passwd", PASSWD.encode())
        add_file("etc/group", GROUP.encode())
    return path


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    return make_busybox_tar(tmp_path_factory.mktemp("busybox") / "busybox.tar")


@dataclass
class Pybuild:
    """Runs the real CLI (`python -m pybuild`) against one store, as a user would."""

    root: Path

    def __call__(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
                 cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        full_env.setdefault("PYBUILD_PROGRESS", "plain")
        full_env.update(env or {})
        proc = subprocess.run([sys.executable, "-m", "pybuild", "--root", str(self.root), *args],
                              capture_output=True, text=True, env=full_env, cwd=cwd,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"pybuild {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def pybuild(tmp_path: Path) -> Pybuild:
    return Pybuild(tmp_path / "store")


@pytest.fixture
def busybox(pybuild: Pybuild, busybox_tar: Path) -> Pybuild:
    """A store holding `busybox:latest`, ready to build FROM busybox."""
    require_build_tools()
    pybuild("import", str(busybox_tar), "busybox")
    return pybuild


def store_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file of a store with its size and mtime: to prove a failure changed nothing."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.suffix in (".db-wal", ".db-shm") or p.name.endswith(("-wal", "-shm")):
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def overlay_mounts() -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if " overlay " in line]


@pytest.fixture
def no_leaks(tmp_path: Path) -> Iterator[None]:
    """Assert a test leaves no overlay mount (under its tmp dir) and no runc container behind."""
    yield
    assert [m for m in overlay_mounts() if str(tmp_path) in m] == []
    bundles = Path("/run/pybuild/bundles")
    for config in bundles.glob("*/config.json") if bundles.exists() else []:
        assert str(tmp_path) not in config.read_text(), f"container left behind: {config.parent}"


# The run side's fixtures (a network namespace per test, the CLI inside it).
from container_fixtures import cli, netns  # noqa: E402, F401


# ----- running the suite on several workers (pytest-xdist, `make test`) ---------------------
# Each test module is one unit of work, so its module-scoped images are built once. Modules
# that run containers share one unit: their checks read kernel state that is global to the
# machine (/run/netns), so they run one after another. Units start longest first, so the
# long ones do not end up as the tail of the run.
_CONTAINERS = "containers"
_CONTAINER_MODULES = {"test_api", "test_container_lifecycle", "test_containers",
                      "test_django_example", "test_network"}
_LONGEST_FIRST = [_CONTAINERS, "test_parity", "test_hostile_registry", "test_crash",
                  "test_image_commands", "test_rootless", "test_contexts", "test_outputs",
                  "test_store_integrity", "test_deep_trees", "test_scheduling", "test_platforms"]


def _work_unit(item: pytest.Item) -> str:
    module = item.path.stem
    return _CONTAINERS if module in _CONTAINER_MODULES else module


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(_work_unit(item), len(rank)), position[id(item)]))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_work_unit(item)))
