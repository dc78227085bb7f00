"""The Python API: build, inspect, push and pull images from a program, no daemon, no shell.

    import pybuild
    store = pybuild.Store("/var/lib/pybuild")
    img = pybuild.build("examples/django-app", tags=["app"], store=store)
    print(img.id)                      # what `pybuild build -q` prints

Every failure a user can cause raises a `pybuild.PybuildError` subclass; a Dockerfile
mistake is a `pybuild.DockerfileError` with `.filename` and `.line`. The names re-exported
by `pybuild/__init__.py` are the stable surface; everything else is private.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pybuild.errors import NeedsRootError, PybuildError
from pybuild.progress import BuildSummary, Progress, SourceExcerpt
from pybuild.store import Store

DEFAULT_ROOT = Path("/var/lib/pybuild")
EventKind = Literal["started", "log", "cached", "done", "error", "warning", "explain", "transfer",
                    "summary"]


@dataclass(frozen=True)
class Event:
    """One progress event of a build, as BuildKit's vertex model has them."""

    kind: EventKind
    vertex: str = ""        # "v3"; empty for build-wide events (warning, summary)
    name: str = ""          # "[build 2/4] RUN pip install -r requirements.txt"
    data: bytes = b""       # output of a step ("log")
    message: str = ""       # error text, warning, explanation of a cache miss
    current: int = 0        # bytes so far ("transfer")
    total: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)  # a build check: rule, line, url


class _CallbackProgress(Progress):
    """Hands every event to a callable instead of drawing it."""

    def __init__(self, callback: Callable[[Event], None]) -> None:
        super().__init__(sys.stderr)
        self._callback = callback

    def _on_started(self, v: Any) -> None:
        self._callback(Event("started", v.vid, v.name))

    def _on_log(self, v: Any, data: bytes, lines: list[tuple[float, bytes]], now: float) -> None:
        self._callback(Event("log", v.vid, v.name, data=data))

    def _on_finished(self, v: Any, excerpt: SourceExcerpt | None) -> None:
        kind: EventKind = "error" if v.state == "error" else ("cached" if v.state == "cached" else "done")
        self._callback(Event(kind, v.vid, v.name, message=v.error or ""))

    def _on_warning(self, message: str, detail: dict[str, Any] | None = None) -> None:
        # a build check's warning carries its rule, line and URL in `detail`
        self._callback(Event("warning", message=message, detail=dict(detail or {})))

    def _on_explain(self, v: Any, reason: str) -> None:
        self._callback(Event("explain", v.vid, v.name, message=reason))

    def _on_transfer(self, v: Any, tr: Any, now: float) -> None:
        self._callback(Event("transfer", v.vid, v.name, message=str(tr.label),
                             current=int(tr.current), total=tr.total))

    def _on_summary(self, s: BuildSummary) -> None:
        self._callback(Event("summary", message=f"{s.image_id} in {s.duration:.2f}s"))


def open_store(root: str | os.PathLike[str] | None = None) -> Store:
    """The store at `root`, else $PYBUILD_ROOT, else /var/lib/pybuild (created on first use)."""
    return Store(Path(root) if root is not None else Path(os.environ.get("PYBUILD_ROOT") or DEFAULT_ROOT))


@dataclass(frozen=True)
class Image:
    """An image in a store: its ID (config digest, as docker shows it) and what it holds."""

    store: Store
    id: str
    digest: str                     # the manifest (or index) digest the tags point at
    tags: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[-1][:12]

    def run(self, command: Iterable[str] | None = None, **options: Any) -> Container:
        """A container of this image: see `pybuild.run` for the options."""
        return run(self, command, store=self.store, **options)

    def attestations(self) -> dict[str, dict[str, Any]]:
        """predicate type → in-toto statement of the attestations about this image that
        its tags carry (`--sbom`: "https://spdx.dev/Document", `--provenance`:
        "https://slsa.dev/provenance/v1"); empty when it has none."""
        from pybuild.attest import manifest
        from pybuild.store import OCI_INDEX

        out: dict[str, dict[str, Any]] = {}
        for tag in self.tags:
            top = self.store.resolve_tag(tag)
            if top is None or top.media_type != OCI_INDEX:
                continue
            for att in manifest.read(self.store, top.digest, self.digest):
                out.setdefault(att.predicate_type, att.statement)
        return out

    @classmethod
    def from_store(cls, store: Store, name: str) -> Image:
        """An image by name, tag or ID prefix; PybuildError when the store has no such image."""
        from pybuild import image as imagemod

        img = imagemod.load(store, name)
        digest = img.manifest_desc.digest

        def names_it(d: Any) -> bool:  # the manifest itself, or an index holding it
            if d.digest == digest:
                return True
            try:
                return imagemod.is_index(store, d) and any(
                    e.digest == digest for e in imagemod.index_entries(store, d))
            except (OSError, PybuildError):
                return False  # another tag's damaged index (`pybuild doctor` reports it)

        tags = tuple(sorted(t for t, d in store.list_tags().items() if names_it(d)))
        return cls(store, img.id, img.manifest_desc.digest, tags, img.config)


def build(context: str | os.PathLike[str], *, tags: Iterable[str] = (),
          dockerfile: str | os.PathLike[str] | None = None,
          build_args: Mapping[str, str] | None = None, target: str | None = None,
          store: Store | None = None, progress: Callable[[Event], None] | None = None,
          no_cache: bool = False, labels: Mapping[str, str] | None = None, pull: bool = False,
          network: str = "host", secrets: Mapping[str, str | os.PathLike[str]] | None = None,
          platform: str | None = None, sbom: bool = False,
          provenance: Literal["min", "max"] | None = None) -> Image:
    """Build `context` (a directory) as `pybuild build` would; returns the image.

    `progress` receives every Event; without it the build is silent. `secrets` maps a
    secret id to the file `RUN --mount=type=secret,id=ID` reads (never stored in a layer).
    `platform` is --platform ("linux/arm64", or several comma-separated for an index);
    `sbom` and `provenance` ("min" or "max") attach attestations as --sbom and
    --provenance=mode=... do. Raises DockerfileError for a Dockerfile mistake (with
    .filename and .line), StepError when a RUN fails (with .exit_status), PybuildError for
    anything else a user can fix.
    """
    from pybuild.attest.for_build import AttestOptions
    from pybuild.platforms import parse_platforms
    from pybuild.solver.mounts import parse_secret_flag
    from pybuild.solver.solver import BuildOptions

    ctx = Path(context)
    if not ctx.is_dir():
        raise PybuildError(f"unable to prepare context: path {str(context)!r} not found")
    if provenance not in (None, "min", "max"):
        raise PybuildError(f"provenance must be 'min' or 'max', not {provenance!r}")
    plats = parse_platforms(platform) if platform else []
    df = Path(dockerfile) if dockerfile is not None else ctx / "Dockerfile"
    opts = BuildOptions(context=ctx, dockerfile=df,
                        dockerfile_name=str(dockerfile) if dockerfile is not None else "Dockerfile",
                        tags=list(tags), build_args=dict(build_args or {}), target=target,
                        no_cache=no_cache, labels=dict(labels or {}), pull=pull, network=network,
                        secrets={sid: parse_secret_flag(f"id={sid},src={os.fspath(src)}")
                                 for sid, src in (secrets or {}).items()},
                        platform=plats[0] if len(plats) == 1 else None)
    NeedsRootError.require("building")  # before a store is made for nothing
    store = store if store is not None else open_store()
    reporter: Progress = _CallbackProgress(progress) if progress else _CallbackProgress(lambda e: None)
    result = solve(opts, reporter, store, platforms=plats,
                   attest=AttestOptions(sbom, provenance))
    img = Image.from_store(store, result.image_id)
    return Image(store, result.image_id, result.manifest.digest, tuple(result.tags), img.config)


def solve(opts: Any, reporter: Progress, store: Store, *,
          platforms: list[dict[str, str]] | None = None, attest: Any = None,
          before: Callable[[Any], None] | None = None,
          after: Callable[[Any], None] | None = None, keep_image: bool = True) -> Any:
    """The build itself, shared by `build` and the CLI: plan `opts` (BuildOptions) for one
    platform or several, call `before(plan)` (the CLI's build checks), build into `store`,
    attach the attestations `attest` (AttestOptions) asks for, call `after(result)` (the
    CLI's -o exporters), report the summary. Returns the BuildResult.

    `keep_image=False` (only local/tar outputs, as BuildKit's exporters store no image)
    takes the image this build added out of the store again once `after` has read it;
    layers and cache records stay."""
    from pybuild.attest.for_build import attest_build, now
    from pybuild.solver import exporters
    from pybuild.solver.solver import PlatformsBuild, Solver, summary_of

    plats = platforms or []
    start = time.monotonic()
    try:
        NeedsRootError.require("building")
        solver: Solver | PlatformsBuild = PlatformsBuild(opts, reporter, plats) \
            if len(plats) > 1 else Solver(opts, reporter)
        solver.load()
        if before is not None:
            before(solver.plan)
        started = now()
        attesting = attest is not None and attest.wanted
        # the gc lock, shared, from the build to its outputs: no prune (and no other
        # build's discard_image) takes the image while the exporters read it
        with store.gc_lock(shared=True):
            result = solver.build(store)
            if attesting:
                index = attest_build(store, opts, result, attest, started)
                if result.platforms:  # a multi-platform build is known by its index
                    result = dataclasses.replace(result, manifest=index, image_id=index.digest)
            if after is not None:
                after(result)
        if not keep_image and result.new_image and not attesting:
            exporters.discard_image(store, result.manifest)
        reporter.summary(summary_of(result, time.monotonic() - start))
    finally:
        reporter.close()
    return result


# ---- registries and archives ---------------------------------------------------------

def registry_client(insecure_registries: Iterable[str] = (),
                    tls_ca: str | os.PathLike[str] | None = None) -> Any:
    """A registry client: plain HTTP for `insecure_registries` (loopback always is),
    registries' TLS checked against `tls_ca` when given (--insecure-registry, --tls-ca)."""
    from pybuild.registry import RegistryClient

    return RegistryClient(insecure=set(insecure_registries),
                          tls_ca=Path(tls_ca) if tls_ca is not None else None)


def _transfer(title: str, progress: Callable[[Event], None] | None, work: Callable[[Any], Any],
              insecure_registries: Iterable[str], tls_ca: str | os.PathLike[str] | None) -> Any:
    """`work(client)` as one progress vertex ("v1", `title`) whose transfers are events."""
    client = registry_client(insecure_registries, tls_ca)
    emit = progress or (lambda e: None)
    client.progress = lambda label, cur, total: emit(Event("transfer", "v1", title, message=label,
                                                           current=cur, total=total))
    emit(Event("started", "v1", title))
    try:
        result = work(client)
    except PybuildError as e:
        emit(Event("error", "v1", title, message=str(e)))
        raise
    finally:
        client.close()
    emit(Event("done", "v1", title))
    return result


def unpack_for_builds(store: Store, name: str, label: str | None = None) -> None:
    """Check an image's layers against its config and extract them into snapshots now, as
    `docker pull`/`import` do, so the first build FROM it does not pay for it.

    Every layer must hash to its config's diff_id (one per layer): a mismatch is refused
    here, with one line. Extracting needs root (whiteouts are device nodes); without it
    the layers are only hashed.
    """
    from pybuild import image
    from pybuild.snapshot import Snapshotter, check_layers, verify_layer

    try:
        img = image.load(store, name)
        check_layers(img.layers, img.diff_ids)
        if os.geteuid() != 0:
            for desc, diff_id in zip(img.layers, img.diff_ids, strict=False):
                verify_layer(store, desc, diff_id)
            return
        snaps = Snapshotter(store)
        snaps.cleanup_work_dirs()  # what a killed pull or import left behind
        snaps.ensure(img.layers, img.diff_ids)
    except PybuildError as e:
        if label is None:
            raise
        raise PybuildError(f"{label}: {e}") from None


@contextlib.contextmanager
def writing_image(store: Store, tag: str) -> Iterator[None]:
    """Around a pull or import: hold the gc lock (shared) from the first blob written until
    the tag is set and the image unpacked, so a concurrent prune cannot take its blobs; if
    the block fails, `tag` is put back to what it was (or removed if it is new)."""
    before = store.resolve_tag(tag)
    with store.gc_lock(shared=True):
        try:
            yield
        except BaseException:
            now = store.resolve_tag(tag)
            if now != before:
                if before is None:
                    store.remove_tag(tag)
                else:
                    store.set_tag(tag, before)
            raise


def pull(ref: str, *, store: Store | None = None, platform: str | None = None,
         progress: Callable[[Event], None] | None = None, insecure_registries: Iterable[str] = (),
         tls_ca: str | os.PathLike[str] | None = None) -> Image:
    """Pull `ref` (this host's platform of a multi-platform image, or `platform`'s, e.g.
    "linux/arm64") into the store, tag it with its familiar name and unpack it for builds,
    as `pybuild pull` does. A failed pull leaves the tag as it was."""
    from pybuild import registry
    from pybuild.platforms import parse_platform
    from pybuild.reference import parse_reference

    store = store if store is not None else open_store()
    r = parse_reference(ref)
    plat = parse_platform(platform) if platform else None
    with writing_image(store, r.familiar):
        desc = _transfer(f"pull {r.canonical}", progress,
                         lambda c: registry.pull(store, r.canonical, client=c, platform=plat),
                         insecure_registries, tls_ca)
        unpack_for_builds(store, desc.digest, f"pull {r.familiar}")
    return Image.from_store(store, r.familiar)


def push(name: str, destination: str | None = None, *, store: Store | None = None,
         chunked: bool = False, progress: Callable[[Event], None] | None = None,
         insecure_registries: Iterable[str] = (),
         tls_ca: str | os.PathLike[str] | None = None) -> str:
    """Push a local image to `destination` (default: its own name); returns the digest the
    registry has it under. A multi-platform or attested tag goes as its index, every
    manifest (attestation manifests included) first. `chunked` uploads layers in PATCHes."""
    from pybuild import image as imagemod
    from pybuild import registry
    from pybuild.reference import parse_reference

    store = store if store is not None else open_store()
    dest = destination or name
    imagemod.load(store, name)  # a clear error before any network traffic
    return str(_transfer(f"push {parse_reference(dest).canonical}", progress,
                         lambda c: registry.push(store, name, dest, client=c, chunked=chunked),
                         insecure_registries, tls_ca))


def save(names: Iterable[str], out: str | os.PathLike[str], *, store: Store | None = None,
         format: Literal["docker", "oci"] = "docker", platform: str | None = None) -> Path:
    """Write images to an archive `docker load` (format="docker") or any OCI tool reads
    (format="oci"); `platform` picks one entry of multi-platform tags (default: the host's
    for docker archives, all of them for OCI). Written whole or not at all."""
    from pybuild import image as imagemod
    from pybuild.platforms import parse_platform

    store = store if store is not None else open_store()
    wanted = list(names)
    if format not in ("docker", "oci"):
        raise PybuildError(f"unknown archive format {format!r} (docker or oci)")
    plat = parse_platform(platform) if platform else None
    for n in wanted:
        imagemod.load(store, n, plat)  # a clear error before anything is written
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        if format == "oci":
            imagemod.save_oci_archive(store, wanted, tmp, plat)
        else:
            imagemod.save_docker_archive(store, wanted, tmp, plat)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_archive(archive: str | os.PathLike[str] | BinaryIO, *, store: Store | None = None
                 ) -> list[Image]:
    """Load a `docker save` or OCI archive (a path or a binary stream), as `pybuild load`
    does: every blob checked before anything is published, each image unpacked for builds.
    Returns the images it holds. (Not `pybuild.load`: that name is the module of archives.)"""
    store = store if store is not None else open_store()
    return [Image.from_store(store, digest) for digest in load_report(archive, store).manifests]


def load_report(archive: str | os.PathLike[str] | BinaryIO, store: Store) -> Any:
    """`load_archive`'s work; what pybuild.load.load_archive reports (the CLI prints its
    lines: docker load's output)."""
    from pybuild.load import load_archive as load_stream

    if isinstance(archive, (str, os.PathLike)):
        try:
            src: BinaryIO = open(archive, "rb")
        except OSError as e:
            raise PybuildError(f"open {os.fspath(archive)}: {e.strerror}") from None
        with src:
            loaded = load_stream(store, src, f"load {os.fspath(archive)}")
    else:
        loaded = load_stream(store, archive, "load from stdin")
    for digest in loaded.manifests:
        unpack_for_builds(store, digest)
    return loaded


# ---- containers ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Container:
    """A container of a store (what `pybuild run` makes); methods read its live state."""

    store: Store
    id: str
    name: str

    def _record(self) -> Any:
        from pybuild import containers

        return containers.refresh(self.store, containers.find(self.store, self.id))

    @property
    def status(self) -> str:
        """created, running, restarting or exited."""
        return str(self._record().status)

    @property
    def exit_code(self) -> int | None:
        code = self._record().exit_code
        return None if code is None else int(code)

    def inspect(self) -> dict[str, Any]:
        """What `pybuild inspect CONTAINER` prints (docker's shape)."""
        from pybuild import containers

        return dict(containers.inspect(self.store, self._record()))

    def logs(self) -> bytes:
        """Everything the container wrote to stdout and stderr so far."""
        import io

        from pybuild import containers

        buf = io.BytesIO()
        containers.stream_logs(self.store, self._record(), buf, follow=False)
        return buf.getvalue()

    def wait(self) -> int:
        """Block until the container exits; its exit code (`pybuild wait`)."""
        from pybuild import containers

        return int(containers.wait(self.store, self._record()))

    def stop(self, timeout: float = 10.0) -> None:
        """STOPSIGNAL, then SIGKILL after `timeout` seconds (`pybuild stop`)."""
        from pybuild import containers

        containers.stop(self.store, self._record(), timeout)

    def remove(self, force: bool = False) -> None:
        """Delete the container (a running one only with force=True, killed first)."""
        from pybuild import containers

        containers.remove(self.store, self._record(), force=force)

    def port(self, container_port: int, protocol: str = "tcp") -> tuple[str, int]:
        """(host address, host port) a published container port is reachable at."""
        from pybuild import network

        att = self._record().attachment
        for m in network.Attachment(**att).port_mappings() if att else []:
            if m.container_port == container_port and m.protocol == protocol:
                return (m.host_ip or "127.0.0.1", m.host_port)
        raise PybuildError(f"container {self.name}: port {container_port}/{protocol} is not published")

    def url(self, container_port: int, path: str = "/") -> str:
        """http://HOST:PORT/path of a published port."""
        host, port = self.port(container_port)
        return f"http://{host}:{port}{path}"

    def wait_for_port(self, container_port: int, timeout: float = 30.0) -> None:
        """Until the published port accepts a TCP connection (or the container exits)."""
        import socket

        host, port = self.port(container_port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return
            except OSError:
                if self.status == "exited" or time.monotonic() > deadline:
                    raise PybuildError(f"container {self.name}: nothing answered on {host}:{port} "
                                       f"within {timeout:g}s (status {self.status})") from None
                time.sleep(0.2)


def run(image: Image | str, command: Iterable[str] | None = None, *, store: Store | None = None,
        detach: bool = True, name: str | None = None, env: Mapping[str, str] | None = None,
        ports: Iterable[int | str] = (), network: str | None = None) -> Container:
    """Start a container of `image`, as `pybuild run [-d]` would; returns it.

    `ports` are container ports (published on a free port of 127.0.0.1) or docker's
    `[IP:]HOST:CTR[/proto]` strings; with ports the container goes on the default bridge
    unless `network` says otherwise. With detach=False it runs to the end first.
    """
    from pybuild import containers, network as netmod

    if isinstance(image, Image):
        store = store if store is not None else image.store
        ref = image.id
    else:
        ref = image
    store = store if store is not None else open_store()
    publish = [netmod.parse_publish(f"127.0.0.1::{p}" if isinstance(p, int) else p) for p in ports]
    opts = containers.RunOptions(image=ref, command=list(command or []), name=name,
                                 env=[f"{k}={v}" for k, v in (env or {}).items()],
                                 publish=publish)
    if network is not None:
        opts.network = network
    c = containers.create(store, opts)
    import io

    out = io.BytesIO()  # a foreground run's output stays in its log (Container.logs())
    start_container(store, c, detach=detach, stdout=out, stderr=out)
    return Container(store, c.id, c.name)


def start_container(store: Store, container: Any, *, detach: bool, stdout: BinaryIO,
                    stderr: BinaryIO) -> int | None:
    """Start a created container as `pybuild run` does. Detached: None once it runs.
    Attached: its output goes to stdout/stderr and its exit code is returned (with a
    restart policy, the first run's, as docker's CLI; the policy goes on after). A
    container refused before it started (a port or network) is removed again; one whose
    command cannot start is kept, as docker keeps it, Created."""
    from pybuild import containers

    try:
        if detach:
            containers.start_detached(store, container)
            return None
        if container.restart_policy != "no":
            containers.start_detached(store, container)
            containers.stream_logs(store, container, stdout, follow=True)
            return int(containers.wait(store, container))
        return int(containers.run_foreground(store, container, stdout, stderr))
    except containers.StartError:
        raise
    except BaseException:
        current = containers.find_or_none(store, container.id)
        if current is not None and current.status == "created":
            containers.remove(store, current, force=True)
        raise
