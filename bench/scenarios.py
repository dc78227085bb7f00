"""The benchmark scenarios: what each builder does before (untimed) and during a timed run.

A scenario maps tool names to cases. A case prepares once (`setup`), tidies before each
run (`before`: empty the cache for a cold build, edit a file for an edit build), hands the
runner the one command to time (`command`), and cleans up (`after`, `close`).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemons import Unavailable, docker_engine, registry_server, remove_tree
from rootfs import BUSYBOX, make_busybox_tar, make_random_tar
from tools import REPO, Buildah, Command, Docker, Pybuild, probe_buildah_isolation, run_logged

BUSYBOX_REF = "localhost/bench-busybox:latest"
DJANGO_REF = "localhost/debian-python:bookworm"
DJANGO_EXAMPLE = REPO / "examples" / "django-app"
DJANGO_BASE_TAR = Path("/var/cache/pybuild-demo/debian-python-bookworm.tar")
DJANGO_TEMPLATE = Path("notes/templates/notes/index.html")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The Django example's wheels as a PEP 503 index (simple/<project>/<wheel>), fetched from
# PyPI once; `django-cold-index` serves it on loopback so no timed run waits on PyPI.
WHEELHOUSE = Path("/var/cache/pybuild-demo/wheelhouse")
RUN128_FILES = 2000
# One shell, one `head` per file: 2,000 files of 64 KiB of fresh random bytes (131 MB).
RUN128_SCRIPT = ("mkdir -p {data} && for i in $(seq " + str(RUN128_FILES) + "); do "
                 "head -c 65536 /dev/urandom > {data}/f$i; done")


class Bench:
    """What scenarios share in one invocation: a work dir, input tarballs, daemons.

    The Docker engine and the buildah isolation probe are started lazily, once, so a run
    of pybuild-only scenarios never waits for dockerd.
    """

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.workdir = workdir
        self.stack = stack
        self._busybox: Path | None = None
        self._random: Path | None = None
        self._docker_host: str | None = None
        self._isolation: tuple[str | None] | None = None
        self._index: str | None = None

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def subdir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.workdir))

    def busybox_tar(self) -> Path:
        if self._busybox is None:
            if not BUSYBOX.exists():
                raise Unavailable("/bin/busybox missing (apt-get install busybox-static)")
            self._busybox = make_busybox_tar(self.workdir / "busybox.tar")
        return self._busybox

    def random_tar(self) -> Path:
        if self._random is None:
            self._random = make_random_tar(self.workdir / "random128.tar")
        return self._random

    def django_base_tar(self) -> Path:
        if not DJANGO_BASE_TAR.is_file():
            raise Unavailable(f"{DJANGO_BASE_TAR} missing: run examples/django-app/"
                              f"base-image.sh {DJANGO_BASE_TAR}")
        return DJANGO_BASE_TAR

    def package_index(self) -> str:
        """The URL of a package index on 127.0.0.1 holding the Django example's pinned
        wheels (downloaded once into WHEELHOUSE), served for this invocation."""
        if self._index is None:
            simple = make_wheelhouse(WHEELHOUSE, DJANGO_EXAMPLE / "requirements.txt")
            handler = functools.partial(_QuietFiles, directory=str(simple.parent))
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.stack.callback(server.server_close)
            self.stack.callback(server.shutdown)
            self._index = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        return self._index

    def docker(self) -> Docker:
        if self._docker_host is None:
            self._docker_host = self.stack.enter_context(docker_engine())
        return Docker(self._docker_host, self.workdir / "docker-config")

    def daemon_marker(self) -> str | None:
        """What the private engine's dockerd and containerd have in their command lines
        (their state directory), or None for an engine this bench did not start."""
        host = self._docker_host or ""
        if not host.startswith("unix://") or os.environ.get("DOCKER_HOST"):
            return None
        return str(Path(host[len("unix://"):]).parent)

    def buildah_isolation(self) -> str | None:
        if self._isolation is None:
            self._isolation = (probe_buildah_isolation(self.busybox_tar(),
                                                       self.log("buildah-probe")),)
        return self._isolation[0]

    def buildah_isolation_used(self) -> str | None:
        """For the record: "default", "chroot", or None when buildah has not run yet."""
        if self._isolation is None:
            return None
        return self._isolation[0] or "default"


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def make_wheelhouse(root: Path, requirements: Path) -> Path:
    """`root`/simple, a PEP 503 index of the wheels `requirements` pins (pure-Python, so
    the host's pip fetches the ones the image's Python installs); made once."""
    simple = root / "simple"
    if simple.is_dir() and any(simple.iterdir()):
        return simple
    with tempfile.TemporaryDirectory(dir=root.parent if root.parent.is_dir() else None) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "--disable-pip-version-check", "-d", tmp,
                        "-r", str(requirements)], check=True)
        staged = Path(tmp) / "simple"
        for wheel in sorted(Path(tmp).glob("*.whl")):
            project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
            (staged / project).mkdir(parents=True, exist_ok=True)
            wheel.rename(staged / project / wheel.name)
        root.mkdir(parents=True, exist_ok=True)
        staged.rename(simple)
    return simple


class Adapter:
    """One builder's verbs: import a base, build, forget the build cache, clean up."""

    log: Path
    arch: str | None = None  # the base tarball's architecture when not the host's

    def import_base(self, tarball: Path, name: str) -> None:
        raise NotImplementedError

    def build(self, context: Path, tag: str, extra: list[str]) -> Command:
        raise NotImplementedError

    def clear_cache(self, tag: str) -> None:
        """Make the next build cold: no cache records, no cache mounts, no old result."""
        raise NotImplementedError

    def close(self) -> None:
        """Release storage; the default keeps nothing to release."""


class PybuildAdapter(Adapter):
    """pybuild on a private store. `fresh_store`: cold means a brand-new --root."""

    def __init__(self, bench: Bench, name: str, fresh_store: bool) -> None:
        Pybuild.check()
        self.log = bench.log(name)
        self.fresh_store = fresh_store
        self.dir = bench.subdir(f"{name}-")
        self.generation = 0
        self.pb = Pybuild(self.dir / "store0")
        self.bases: list[tuple[Path, str]] = []

    def _import(self) -> list[str]:
        return ["--platform", f"linux/{self.arch}"] if self.arch else []

    def import_base(self, tarball: Path, name: str) -> None:
        self.bases.append((tarball, name))
        run_logged(self.pb.cmd("import", *self._import(), str(tarball), name), self.log)

    def build(self, context: Path, tag: str, extra: list[str]) -> Command:
        return self.pb.build(context, tag, *extra)

    def clear_cache(self, tag: str) -> None:
        if self.fresh_store:
            remove_tree(self.pb.root)
            self.generation += 1
            self.pb = Pybuild(self.dir / f"store{self.generation}")
            for tarball, name in self.bases:
                run_logged(self.pb.cmd("import", *self._import(), str(tarball), name), self.log)
        else:
            run_logged(self.pb.cmd("rmi", tag), self.log, check=False)
            run_logged(self.pb.cmd("cache", "prune", "--all"), self.log)

    def close(self) -> None:
        remove_tree(self.dir)


class DockerAdapter(Adapter):
    """`docker build` on the shared engine; cold = image removed + `builder prune -af`."""

    def __init__(self, bench: Bench, name: str) -> None:
        self.log = bench.log(name)
        self.docker = bench.docker()

    def import_base(self, tarball: Path, name: str) -> None:
        run_logged(self.docker.cmd("import", str(tarball), name), self.log)

    def build(self, context: Path, tag: str, extra: list[str]) -> Command:
        return self.docker.build(context, tag, *extra)

    def clear_cache(self, tag: str) -> None:
        run_logged(self.docker.cmd("rmi", "-f", tag), self.log, check=False)
        run_logged(self.docker.cmd("builder", "prune", "-af"), self.log)


class BuildahAdapter(Adapter):
    """`buildah bud --layers` on private storage; cold = no image, intermediates, cache mounts."""

    def __init__(self, bench: Bench, name: str) -> None:
        isolation = bench.buildah_isolation()
        self.log = bench.log(name)
        self.buildah = Buildah(bench.subdir(f"{name}-"), isolation)

    def import_base(self, tarball: Path, name: str) -> None:
        run_logged(self.buildah.import_(tarball, name, self.arch), self.log)

    def build(self, context: Path, tag: str, extra: list[str]) -> Command:
        return self.buildah.build(context, tag, *extra)

    def clear_cache(self, tag: str) -> None:
        self.buildah.forget(tag, self.log)
        self.buildah.clear_cache_mounts()

    def close(self) -> None:
        self.buildah.close()


class Case:
    """One tool in one scenario. Subclasses give `command`; the hooks default to nothing."""

    def setup(self) -> None:
        """Once, untimed."""

    def before(self, i: int) -> None:
        """Before run i, untimed."""

    def command(self, i: int) -> Command:
        raise NotImplementedError

    def after(self, i: int) -> None:
        """After run i, untimed."""

    def close(self) -> None:
        """Once at the end."""


class BuildCase(Case):
    """A build of `source` (copied, so edits never touch the repo) in one of three modes.

    Every mode builds once untimed first. cold: cache emptied before every run (for
    pybuild's run128, a brand-new store, so the base is unpacked inside the timed build);
    warm: rebuilt with nothing changed; edit: each run first appends a new HTML comment to
    one template.
    """

    def __init__(self, adapter: Adapter, workdir: Path, source: Path | str, base: tuple[Path, str],
                 mode: str, extra: list[str]) -> None:
        self.adapter = adapter
        self.context = workdir / "ctx"
        self.source = source
        self.base = base
        self.mode = mode
        self.extra = extra
        self.tag = "bench-image"

    def prepare_context(self) -> None:
        if isinstance(self.source, Path):
            shutil.copytree(self.source, self.context,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "data",
                                                          "staticfiles"))
        else:
            self.context.mkdir(parents=True)
            (self.context / "Dockerfile").write_text(self.source)

    def setup(self) -> None:
        self.prepare_context()
        self.adapter.import_base(*self.base)
        # Even for cold runs: docker and podman unpack a base at import time, pybuild on
        # its first build; one untimed build puts every tool in the "base ready" state.
        run_logged(self.command(-1), self.adapter.log)

    def before(self, i: int) -> None:
        if self.mode == "cold":
            self.adapter.clear_cache(self.tag)
        elif self.mode == "edit":
            with open(self.context / DJANGO_TEMPLATE, "a") as f:
                f.write(f"<!-- bench edit {i} -->\n")

    def command(self, i: int) -> Command:
        return self.adapter.build(self.context, self.tag, self.extra)

    def close(self) -> None:
        self.adapter.close()


class HostScriptCase(Case):
    """The run128 script straight on the host (busybox sh, no builder): the floor."""

    def __init__(self, bench: Bench) -> None:
        if not BUSYBOX.exists():
            raise Unavailable("/bin/busybox missing")
        self.dir = bench.subdir("host-")

    def before(self, i: int) -> None:
        shutil.rmtree(self.dir / "data", ignore_errors=True)

    def command(self, i: int) -> Command:
        return Command([str(BUSYBOX), "sh", "-c", RUN128_SCRIPT.format(data=self.dir / "data")])

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class PushCase(Case):
    """Push the 131 MB (2,000 x 64 KiB) one-layer image from a pybuild store.

    Each run gets a fresh, empty registry, so every byte is uploaded every time.
    """

    def __init__(self, bench: Bench, tool: str) -> None:
        Pybuild.check()
        self.bench = bench
        self.tool = tool
        self.log = bench.log(f"push128-{tool}")
        self.dir = bench.subdir(f"push-{tool}-")
        self.pb = Pybuild(self.dir / "store")
        self.registry: contextlib.ExitStack | None = None
        self.addr = ""

    def setup(self) -> None:
        if self.tool == "skopeo" and shutil.which("skopeo") is None:
            raise Unavailable("skopeo not installed")
        run_logged(self.pb.cmd("import", str(self.bench.random_tar()), "push128"), self.log)

    def before(self, i: int) -> None:
        self.registry = contextlib.ExitStack()
        self.addr = self.registry.enter_context(registry_server())

    def command(self, i: int) -> Command:
        dest = f"{self.addr}/x:1"
        if self.tool == "pybuild":
            return self.pb.cmd("push", "push128", dest)
        return Command(["skopeo", "copy", "--dest-tls-verify=false",
                        f"oci:{self.pb.root}:push128:latest", f"docker://{dest}"])

    def after(self, i: int) -> None:
        if self.registry is not None:
            self.registry.close()
            self.registry = None

    def close(self) -> None:
        self.after(-1)
        remove_tree(self.dir)


class PullCase(Case):
    """Pull + unpack of the Debian base (examples/django-app's 150 MB, 8,266-entry image)
    from a local docker-registry into an empty store each run: `pybuild pull` (blobs
    verified, layers unpacked into snapshots) vs `podman pull` on private storage.

    The image is pushed once, untimed, from a pybuild store (gzip layers, as pushed).
    """

    def __init__(self, bench: Bench, tool: str) -> None:
        Pybuild.check()
        if tool == "podman":
            Buildah.check()
        self.bench = bench
        self.tool = tool
        self.log = bench.log(f"pull-debian-{tool}")
        self.dir = bench.subdir(f"pull-{tool}-")
        self.registry = contextlib.ExitStack()
        self.ref = ""
        self.generation = 0
        self.podman: Buildah | None = None

    def setup(self) -> None:
        tarball = self.bench.django_base_tar()
        addr = self.registry.enter_context(registry_server())
        self.ref = f"{addr}/debian-python:bookworm"
        seed = Pybuild(self.dir / "seed")
        run_logged(seed.cmd("import", str(tarball), "debian-python:bookworm"), self.log)
        run_logged(seed.cmd("push", "debian-python:bookworm", self.ref), self.log)
        remove_tree(seed.root)

    def _target(self) -> Path:
        return self.dir / f"store{self.generation}"

    def before(self, i: int) -> None:
        self.generation += 1
        if self.tool == "podman":
            self.podman = Buildah(self._target(), None)

    def command(self, i: int) -> Command:
        if self.podman is None:
            return Pybuild(self._target()).cmd("pull", self.ref)
        return self.podman.pull(self.ref)

    def after(self, i: int) -> None:
        if self.podman is not None:
            self.podman.close()
            self.podman = None
        remove_tree(self._target())

    def close(self) -> None:
        self.registry.close()
        remove_tree(self.dir)


@dataclass(frozen=True)
class Scenario:
    """A named benchmark: its tools (the first is pybuild) and what one number means."""

    name: str
    what: str
    cases: dict[str, Callable[[Bench], Case]]

    @property
    def tools(self) -> list[str]:
        return list(self.cases)


RUN128_DOCKERFILE = f"FROM {BUSYBOX_REF}\nRUN {RUN128_SCRIPT.format(data='/data')}\n"


def _run128(tool: str) -> Callable[[Bench], Case]:
    def make(bench: Bench) -> Case:
        name = f"run128-{tool}"
        adapter: Adapter
        extra: list[str] = []
        if tool == "pybuild":
            adapter = PybuildAdapter(bench, name, fresh_store=True)
        elif tool == "docker":
            adapter, extra = DockerAdapter(bench, name), ["--no-cache"]
        else:
            adapter, extra = BuildahAdapter(bench, name), ["--no-cache"]
        return BuildCase(adapter, bench.subdir(f"{name}-ctx-"), RUN128_DOCKERFILE,
                         (bench.busybox_tar(), BUSYBOX_REF), "cold", extra)
    return make


def _adapter(bench: Bench, tool: str, name: str) -> Adapter:
    """The builder `tool` on its own storage; pybuild keeps its store across cold runs."""
    if tool == "pybuild":
        return PybuildAdapter(bench, name, fresh_store=False)
    if tool == "docker":
        return DockerAdapter(bench, name)
    return BuildahAdapter(bench, name)


def _django(tool: str, mode: str, local_index: bool = False) -> Callable[[Bench], Case]:
    def make(bench: Bench) -> Case:
        name = f"django-{mode}{'-index' if local_index else ''}-{tool}"
        base = (bench.django_base_tar(), DJANGO_REF)
        adapter = _adapter(bench, tool, name)
        if local_index:
            return IndexedDjangoCase(adapter, bench.subdir(f"{name}-ctx-"), base, mode,
                                     bench.package_index())
        secret = ["--secret", f"id=pip-ca,src={CA_BUNDLE}"] if CA_BUNDLE.is_file() else []
        return BuildCase(adapter, bench.subdir(f"{name}-ctx-"), DJANGO_EXAMPLE, base, mode,
                         secret)
    return make


class IndexedDjangoCase(BuildCase):
    """The Django example with its wheels stage pointed at a local package index: the
    copied Dockerfile gets `ARG PIP_INDEX_URL` after the stage's FROM (pip reads the
    variable) and every tool gets the same `--build-arg`. The rest is the example as is."""

    def __init__(self, adapter: Adapter, workdir: Path, base: tuple[Path, str], mode: str,
                 index: str) -> None:
        super().__init__(adapter, workdir, DJANGO_EXAMPLE, base, mode,
                         ["--build-arg", f"PIP_INDEX_URL={index}"])

    def prepare_context(self) -> None:
        super().prepare_context()
        dockerfile = self.context / "Dockerfile"
        stage = "FROM ${BASE} AS wheels\n"
        text = dockerfile.read_text()
        if stage not in text:
            raise Unavailable("examples/django-app/Dockerfile has no wheels stage to point "
                              "at the local index")
        dockerfile.write_text(text.replace(stage, stage + "ARG PIP_INDEX_URL\n", 1))


# Two independent stages and a final stage reading both: a solver that runs ready stages
# at once takes one sleep, one that walks stages in order takes two.
TWOSTAGE_DOCKERFILE = (f"FROM {BUSYBOX_REF} AS a\nRUN sleep 3 && echo a > /a\n"
                       f"FROM {BUSYBOX_REF} AS b\nRUN sleep 3 && echo b > /b\n"
                       f"FROM {BUSYBOX_REF}\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n")


def _twostage(tool: str) -> Callable[[Bench], Case]:
    def make(bench: Bench) -> Case:
        name = f"twostage-{tool}"
        return BuildCase(_adapter(bench, tool, name), bench.subdir(f"{name}-ctx-"),
                         TWOSTAGE_DOCKERFILE,
                         (bench.busybox_tar(), BUSYBOX_REF), "cold", [])
    return make


MANYFILES_DOCKERFILE = f"FROM {BUSYBOX_REF}\nCOPY . /ctx/\n"


def make_many_files(root: Path, dirs: int, per_dir: int) -> None:
    """`dirs` directories of `per_dir` small text files (~120 bytes each) and a Dockerfile."""
    root.mkdir(parents=True, exist_ok=True)
    for d in range(dirs):
        sub = root / f"d{d:04d}"
        sub.mkdir()
        for f in range(per_dir):
            (sub / f"f{f:03d}.txt").write_text(f"file {d} {f}\n" * 8)
    (root / "Dockerfile").write_text(MANYFILES_DOCKERFILE)


class ManyFilesCase(BuildCase):
    """`COPY . /ctx/` of a context of `dirs` x `per_dir` small files on the busybox base.

    warm: rebuilt unchanged; edit: before each run one file (in the middle of the tree)
    gets a line appended, so the COPY and its layer are redone and nothing else changes.
    """

    def __init__(self, adapter: Adapter, workdir: Path, bench: Bench, mode: str, dirs: int,
                 per_dir: int) -> None:
        super().__init__(adapter, workdir, MANYFILES_DOCKERFILE,
                         (bench.busybox_tar(), BUSYBOX_REF), mode, [])
        self.dirs = dirs
        self.per_dir = per_dir

    def setup(self) -> None:
        make_many_files(self.context, self.dirs, self.per_dir)
        # A checkout is older than the racily-clean margin (2 s) when it is built: files
        # written in the same instant as a build are re-read by the next one (by design).
        time.sleep(2.1)
        self.adapter.import_base(*self.base)
        run_logged(self.command(-1), self.adapter.log)

    def before(self, i: int) -> None:
        if self.mode == "edit":
            edited = self.context / f"d{self.dirs // 2:04d}" / f"f{self.per_dir // 2:03d}.txt"
            with open(edited, "a") as f:
                f.write(f"bench edit {i}\n")


def _many_files(tool: str, mode: str, dirs: int, per_dir: int = 100) -> Callable[[Bench], Case]:
    def make(bench: Bench) -> Case:
        name = f"files{dirs * per_dir // 1000}k-{mode}-{tool}"
        return ManyFilesCase(_adapter(bench, tool, name), bench.subdir(f"{name}-ctx-"), bench,
                             mode, dirs, per_dir)
    return make
# Foreign-architecture RUN steps under QEMU user emulation (arm64 on an amd64 host): a
# shell loop of 300 forks and a sha256 of 4 MiB, i.e. emulated process start-up and
# emulated compute, on Debian's arm64 busybox (tests/test_platforms.py fetches it).
ARM64_BUSYBOX = Path("/var/cache/pybuild-tests/arm64/root/bin/busybox")
ARM64_REF = "localhost/bench-busybox-arm64:latest"
ARM64_DOCKERFILE = (f"FROM {ARM64_REF}\n"
                    "RUN for i in $(seq 300); do echo $i > /dev/null; /bin/true; done\n"
                    "RUN head -c 4194304 /dev/zero | sha256sum > /sum && uname -m > /arch\n")


def _arm64(tool: str) -> Callable[[Bench], Case]:
    def make(bench: Bench) -> Case:
        if not ARM64_BUSYBOX.exists():
            raise Unavailable(f"{ARM64_BUSYBOX} missing (run tests/test_platforms.py once)")
        if not Path("/usr/bin/qemu-aarch64-static").exists():
            raise Unavailable("qemu-user-static not installed")
        name = f"arm64-{tool}"
        adapter: Adapter = PybuildAdapter(bench, name, fresh_store=False) if tool == "pybuild" \
            else BuildahAdapter(bench, name)
        adapter.arch = "arm64"
        tar = bench.workdir / "busybox-arm64.tar"
        if not tar.exists():
            make_busybox_tar(tar, ARM64_BUSYBOX)
        return BuildCase(adapter, bench.subdir(f"{name}-ctx-"), ARM64_DOCKERFILE,
                         (tar, ARM64_REF), "cold", ["--platform", "linux/arm64"])
    return make


BUILDERS = ("pybuild", "docker", "buildah")

# The curve of a `COPY . /ctx/` rebuild against the context's size (issue 13).
MANY_FILES_DIRS = (100, 500, 1000, 2000)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("run128",
             "cold build: busybox base + one RUN writing 2,000 x 64 KiB random files "
             "(131 MB), layer committed into the builder's own store; fresh cache each run. "
             "`host` = the same script run directly on the host, no builder (the floor).",
             {**{t: _run128(t) for t in BUILDERS}, "host": HostScriptCase}),
    Scenario("arm64",
             "cold build for linux/arm64 on the amd64 host, both RUN steps under QEMU user "
             "emulation (binfmt_misc): 300 emulated forks, then sha256 of 4 MiB; cache "
             "emptied before every run",
             {t: _arm64(t) for t in ("pybuild", "buildah")}),
    Scenario("twostage",
             "cold build: two independent stages (`RUN sleep 3` each) and a final stage "
             "with a COPY --from of both; cache emptied before every run",
             {t: _twostage(t) for t in BUILDERS}),
    Scenario("django-cold",
             "examples/django-app, empty build cache and cache mounts (base image present): "
             "venv + pip wheel from PyPI + pip install + collectstatic",
             {t: _django(t, "cold") for t in BUILDERS}),
    Scenario("django-cold-index",
             "django-cold with the wheels from a package index on 127.0.0.1 instead of "
             "PyPI (the same pinned wheels): the build tools' own time, without the "
             "network's variance",
             {t: _django(t, "cold", local_index=True) for t in BUILDERS}),
    Scenario("django-warm",
             "examples/django-app rebuilt with nothing changed (every step cached)",
             {t: _django(t, "warm") for t in BUILDERS}),
    Scenario("django-edit",
             "examples/django-app rebuilt after appending an HTML comment to one template: "
             "COPY . . and collectstatic rerun",
             {t: _django(t, "edit") for t in BUILDERS}),
    *[Scenario(f"files{d // 10}k-{mode}",
               f"FROM busybox + `COPY . /ctx/` of {d} dirs x 100 small files; "
               + ("rebuilt unchanged" if mode == "warm" else
                  "rebuilt after appending a line to one file"),
               {t: _many_files(t, mode, d) for t in BUILDERS})
      for d in MANY_FILES_DIRS for mode in ("warm", "edit")],
    Scenario("pull-debian",
             "pull + unpack of the Debian base image (150 MB) from a local docker-registry "
             "into an empty store: `pybuild pull` vs `podman pull` (private storage)",
             {"pybuild": lambda b: PullCase(b, "pybuild"),
              "podman": lambda b: PullCase(b, "podman")}),
    Scenario("push128",
             "push a 131 MB one-layer image (incompressible) from a pybuild store to a fresh "
             "local docker-registry: `pybuild push` vs `skopeo copy oci:STORE:TAG docker://...`",
             {"pybuild": lambda b: PushCase(b, "pybuild"),
              "skopeo": lambda b: PushCase(b, "skopeo")}),
]}
