"""Differential tests: pybuild must build what `docker build` (BuildKit) builds.

Every directory under tests/parity/ is one case: a Dockerfile, its context files and an
optional case.json ({"build_args": {...}, "target": "...", "secrets": {"id": "file"},
"mount_stubs": ["/dir", ...]}).
Each case is built once by a private Docker 20.10 engine (DOCKER_BUILDKIT=1) and once by
pybuild from the same busybox rootfs tarball; the flattened filesystems, the image configs
and the histories must match. docs/parity.md lists what is compared and what is tolerated.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Pybuild, make_busybox_tar, require_build_tools
from engines import DOCKER_CLIENT, Docker, docker_engine

pytestmark = [pytest.mark.slow, pytest.mark.root]

CASES_DIR = Path(__file__).parent / "parity"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "Dockerfile").is_file())

# Config fields a Dockerfile can set; anything else (Hostname, AttachStdin, ...) is
# engine bookkeeping docker fills in and pybuild need not copy.
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes",
                 "Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell", "ArgsEscaped")

# Known pybuild bugs, one entry per case: the test must fail until the lead fixes it
# (strict xfail), then the entry goes. Each is written up in the final report/docs.
# Case name → reason, for a pybuild bug found but not fixed yet (strict xfail: a fix
# turns it into a failure that asks for the entry to go). Empty: every case matches.
KNOWN_BUGS: dict[str, str] = {}


@dataclass
class Built:
    """What one builder produced for a case, reduced to comparable values."""

    files: dict[str, dict[str, object]]
    config: dict[str, object]
    history: list[tuple[str, bool]]
    layers: int


@dataclass
class Case:
    """A case directory and its build options."""

    name: str
    path: Path
    build_args: dict[str, str]
    target: str | None
    secrets: dict[str, str]
    mount_stubs: list[str]

    @classmethod
    def load(cls, name: str) -> Case:
        path = CASES_DIR / name
        meta_file = path / "case.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        return cls(name, path, meta.get("build_args", {}), meta.get("target"),
                   meta.get("secrets", {}), meta.get("mount_stubs", []))

    def flags(self) -> list[str]:
        """The build flags both builders accept with the same spelling."""
        out: list[str] = []
        for k, v in self.build_args.items():
            out += ["--build-arg", f"{k}={v}"]
        if self.target:
            out += ["--target", self.target]
        for sid, src in self.secrets.items():
            out += ["--secret", f"id={sid},src={self.path / src}"]
        return out


# ---- reducing a rootfs and a config to comparable values ------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot_tree(root: Path, before: float) -> dict[str, dict[str, object]]:
    """Every path under root with type, mode, owner, size, content, link target, hardlinks.

    mtime is kept only for non-directories older than `before` (the session start): those
    came from the base image, the context or an archive, so both builders must preserve
    them; anything newer was written during a build and its time is the clock's.
    """
    out: dict[str, dict[str, object]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            rel = "/" + str(p.relative_to(root))
            st = p.lstat()
            entry: dict[str, object] = {
                "type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)),
                "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISREG(st.st_mode):
                entry["size"] = st.st_size
                entry["sha256"] = _sha256(p)
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(p)
            if not stat.S_ISDIR(st.st_mode) and st.st_mtime < before:
                entry["mtime"] = int(st.st_mtime)
            out[rel] = entry
    for group in inodes.values():
        if len(group) > 1:
            for rel in group:
                out[rel]["hardlinks"] = sorted(group)
    return out


def reduce_config(cfg: dict) -> tuple[dict[str, object], list[tuple[str, bool]], int]:
    """The Dockerfile-settable config fields, the build's history entries, the layer count.

    A missing field and a JSON null mean the same to every consumer, so missing becomes
    None; an empty list or map is kept distinct (`CMD []` is not "no CMD").
    """
    inner = cfg.get("config") or {}
    fields = {k: inner.get(k) for k in CONFIG_FIELDS}
    fields = {k: (None if v == "" and k in ("WorkingDir", "User", "StopSignal") else v)
              for k, v in fields.items()}
    # The first entry is the imported base image: `docker import` and `pybuild import`
    # describe themselves differently, and that is not what a build writes.
    history = [(h.get("created_by", ""), bool(h.get("empty_layer", False)))
               for h in cfg.get("history", [])[1:]]
    return fields, history, len(cfg["rootfs"]["diff_ids"])


# ---- the two builders ------------------------------------------------------------------

def flatten_layers(layer_files: list[Path], dest: Path) -> Path:
    """Apply layers in order with whiteouts deleting, as `docker export` would see them."""
    from pybuild import layer

    dest.mkdir(parents=True)
    for lf in layer_files:
        with open(lf, "rb") as f:
            layer.apply_layer(f, dest, mode="flatten")
    return dest


class DockerSide:
    """One private dockerd for the session; every case is built on it at most once."""

    def __init__(self, engine: Docker, base: Path, since: float) -> None:
        self.engine = engine
        self.base = base
        self.since = since
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.futures: dict[str, Future[Built]] = {}

    def submit(self, name: str) -> Future[Built]:
        if name not in self.futures:
            self.futures[name] = self.pool.submit(self._build, Case.load(name))
        return self.futures[name]

    def _build(self, case: Case) -> Built:
        tag = f"parity-{case.name.lower()}:latest"
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        proc = subprocess.run(
            [str(DOCKER_CLIENT), "-H", self.engine.host, "build", "-q", "--network=host",
             "-t", tag, *case.flags(), str(case.path)],
            capture_output=True, text=True, env=env, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"docker build of {case.name} failed:\n{proc.stderr}")
        work = self.base / case.name
        archive = work / "image.tar"
        work.mkdir(parents=True)
        self.engine("save", "-o", str(archive), tag)
        unpacked = work / "archive"
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="tar")
        manifest = json.loads((unpacked / "manifest.json").read_text())[0]
        config = json.loads((unpacked / manifest["Config"]).read_text())
        rootfs = flatten_layers([unpacked / lf for lf in manifest["Layers"]], work / "rootfs")
        fields, history, layers = reduce_config(config)
        return Built(snapshot_tree(rootfs, self.since), fields, history, layers)


@dataclass
class PybuildSide:
    """One pybuild store for the session, holding the same busybox as `busybox:latest`."""

    pb: Pybuild
    base: Path
    since: float

    def build(self, case: Case) -> Built:
        from pybuild import image
        from pybuild.store import Store

        tag = f"parity-{case.name.lower()}"
        self.pb("build", "-q", "-t", tag, *case.flags(), str(case.path))
        img = image.load(Store(self.pb.root), tag)
        layer_files = [Store(self.pb.root).blob_path(d.digest) for d in img.layers]
        rootfs = flatten_layers(layer_files, self.base / case.name)
        fields, history, layers = reduce_config(img.config)
        return Built(snapshot_tree(rootfs, self.since), fields, history, layers)


@pytest.fixture(scope="session")
def since() -> float:
    """Session start: files older than this were not written by either build."""
    return time.time() - 1


@pytest.fixture(scope="session")
def parity_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_build_tools()
    tmp = tmp_path_factory.mktemp("parity")
    make_busybox_tar(tmp / "busybox.tar")
    return tmp


@pytest.fixture(scope="session")
def docker_side(parity_base: Path, since: float, request: pytest.FixtureRequest) -> Iterator[DockerSide]:
    """A private engine with busybox imported; docker builds of every selected case start now."""
    with docker_engine() as engine:
        engine("import", str(parity_base / "busybox.tar"), "busybox:latest")
        side = DockerSide(engine, parity_base / "docker", since)
        selected = [item.callspec.params["case"] for item in request.session.items
                    if item.module is not None and item.module.__name__ == __name__
                    and hasattr(item, "callspec") and "case" in item.callspec.params]
        for name in selected:
            side.submit(name)
        try:
            yield side
        finally:
            for fut in side.futures.values():
                fut.cancel()
            side.pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def pybuild_side(parity_base: Path, since: float) -> PybuildSide:
    pb = Pybuild(parity_base / "store")
    pb("import", str(parity_base / "busybox.tar"), "busybox")
    return PybuildSide(pb, parity_base / "pybuild", since)


def is_mount_stub(files: dict[str, dict[str, object]], path: str, stubs: list[str]) -> bool:
    """An empty directory BuildKit 0.8 left behind as the mount point of a RUN --mount.

    runc creates missing mount-point parents (e.g. /run/secrets) inside the step's rootfs and
    BuildKit 0.8 commits them; they are an artifact, not something the Dockerfile asked for.
    Only directories the case lists, and only while they hold nothing, are forgiven.
    """
    if path not in stubs or files[path]["type"] != stat.S_IFDIR:
        return False
    return all(not (p.startswith(path + "/") and p not in stubs) for p in files)


def diff_files(ref: dict[str, dict[str, object]], got: dict[str, dict[str, object]],
               stubs: list[str]) -> list[str]:
    """Human-readable differences, docker's value first."""
    lines = []
    for path in sorted(set(ref) | set(got)):
        if path not in got and is_mount_stub(ref, path, stubs):
            continue
        if path not in got:
            lines.append(f"{path}: only in docker {ref[path]}")
        elif path not in ref:
            lines.append(f"{path}: only in pybuild {got[path]}")
        elif ref[path] != got[path]:
            keys = sorted(set(ref[path]) | set(got[path]))
            parts = [f"{k} docker={ref[path].get(k)!r} pybuild={got[path].get(k)!r}"
                     for k in keys if ref[path].get(k) != got[path].get(k)]
            lines.append(f"{path}: " + ", ".join(parts))
    return lines


def compare(ref: Built, got: Built, stubs: list[str]) -> list[str]:
    problems = [f"file {line}" for line in diff_files(ref.files, got.files, stubs)]
    for k in CONFIG_FIELDS:
        if ref.config[k] != got.config[k]:
            problems.append(f"config {k}: docker={ref.config[k]!r} pybuild={got.config[k]!r}")
    if ref.history != got.history:
        problems.append(f"history:\n  docker ={ref.history!r}\n  pybuild={got.history!r}")
    if ref.layers != got.layers:
        problems.append(f"layers: docker={ref.layers} pybuild={got.layers}")
    return problems


def _params() -> list[object]:
    out = []
    for name in CASES:
        marks = []
        if name in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=f"pybuild bug: {KNOWN_BUGS[name]}"))
        out.append(pytest.param(name, id=name, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_parity(case: str, docker_side: DockerSide, pybuild_side: PybuildSide) -> None:
    fut = docker_side.submit(case)
    spec = Case.load(case)
    got = pybuild_side.build(spec)
    ref = fut.result(timeout=600)
    assert "/bin/busybox" in ref.files and "/bin/busybox" in got.files
    problems = compare(ref, got, spec.mount_stubs)
    assert not problems, f"{case}: pybuild differs from docker build:\n" + "\n".join(problems)


def test_cases_are_well_formed() -> None:
    """A typo in case.json must not silently build with defaults."""
    assert len(CASES) >= 25
    for name in CASES:
        meta_file = CASES_DIR / name / "case.json"
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            assert set(meta) <= {"build_args", "target", "secrets", "mount_stubs"}, name
            for src in meta.get("secrets", {}).values():
                assert (CASES_DIR / name / src).is_file(), name



# ----- what docker rejects, pybuild rejects (and the reverse) ---------------------------------
BORDERLINE = [
    "FROM scratch\nEXPOSE 0\n", "FROM scratch\nEXPOSE 70000\n", "FROM scratch\nEXPOSE 80-70\n",
    "FROM scratch\nEXPOSE abc\n", "FROM scratch\nEXPOSE 80/xyz\n", "FROM scratch\nEXPOSE 80/TCP\n",
    "FROM scratch\nSTOPSIGNAL FOO\n", "FROM scratch\nSTOPSIGNAL 999\n",
    "FROM scratch\nSTOPSIGNAL SIGRTMIN+3\n", "FROM scratch\nUSER\n", "FROM scratch\nENV A\n",
    "FROM scratch\nENV =x\n", "FROM scratch\nLABEL a\n", "FROM scratch\nVOLUME []\n",
    "FROM scratch\nARG =x\n", "FROM scratch\nCMD []\n", "FROM scratch\nSHELL sh -c\n",
    "FROM scratch\nSHELL []\n", "FROM scratch\nHEALTHCHECK CMD\n",
    "FROM scratch\nHEALTHCHECK --interval=0s CMD x\n", "FROM scratch\nHEALTHCHECK --retries=0 CMD x\n",
    "FROM scratch\nHEALTHCHECK --interval=1ns CMD x\n", "FROM scratch\nONBUILD FROM x\n",
    "FROM scratch AS 1bad\n", "FROM scratch AS Good_Name-1.2\n",
    "FROM scratch as a\nFROM scratch as A\n", "FROM scratch extra\n", "FROM scratch AS\n",
    "FROM scratch\nCOPY onlyone\n", "FROM scratch\nCOPY --chmod=999 a b\n",
    "FROM scratch\nWORKDIR /a b\n", "FROM scratch\nUSER a b\n", "FROM scratch\nENV A=1 B\n",
    "FROM scratch\nBOGUS x\n", "FROM scratch\nCOPY --frm=x a b\n", "",
    "FROM scratch\nENV A=\"unterminated\n", "FROM scratch\nENV A=${\n", "FROM scratch\nENV A=${B\n",
    "FROM scratch AS unused\nENV A=\"open\nFROM scratch\nLABEL a=b\n",
    "FROM scratch\nEXPOSE 127.0.0.1:80:80\n", "FROM scratch\nEXPOSE :80\n",
    "FROM scratch\nENV A=${B:-${C:-d}}\n", "FROM scratch\nCMD [\"a\",]\n",
    "FROM scratch\nVOLUME [\"/a\" \"/b\"]\n", "FROM scratch\nHEALTHCHECK NONE extra\n",
    "FROM scratch\nSTOPSIGNAL sigterm\n", "# escape=x\nFROM scratch\n",
    "FROM scratch\nRUN []\n", "FROM a\nFROM scratch AS a\n",
]


def test_rejects_what_docker_rejects(docker_side: DockerSide, tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    disagree = []
    for n, text in enumerate(BORDERLINE):
        ctx = tmp_path / f"c{n}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(text)
        (ctx / "a").write_text("a")
        docker = subprocess.run([str(DOCKER_CLIENT), "-H", docker_side.engine.host, "build", "-q",
                                 "--network=host", str(ctx)], capture_output=True, text=True,
                                env=env, timeout=120)
        ours = subprocess.run([sys.executable, "-m", "pybuild", "build", "--call", "outline", str(ctx)],
                              capture_output=True, text=True, timeout=60)
        if (docker.returncode == 0) != (ours.returncode == 0):
            disagree.append(f"{text!r}: docker rc={docker.returncode}, pybuild rc={ours.returncode}"
                            f" {ours.stderr.strip()[:120]}")
        if ours.returncode != 0:
            assert "Traceback" not in ours.stderr and ours.stderr.count("\n") == 1, ours.stderr
    assert disagree == []
