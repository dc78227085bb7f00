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

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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

    @classmethod
    def from_store(cls, store: Store, name: str) -> Image:
        """An image by name, tag or ID prefix; PybuildError when the store has no such image."""
        from pybuild import image as imagemod

        img = imagemod.load(store, name)
        tags = tuple(sorted(t for t, d in store.list_tags().items()
                            if d.digest == img.manifest_desc.digest))
        return cls(store, img.id, img.manifest_desc.digest, tags, img.config)


def build(context: str | os.PathLike[str], *, tags: Iterable[str] = (),
          dockerfile: str | os.PathLike[str] | None = None,
          build_args: Mapping[str, str] | None = None, target: str | None = None,
          store: Store | None = None, progress: Callable[[Event], None] | None = None,
          no_cache: bool = False, labels: Mapping[str, str] | None = None, pull: bool = False,
          network: str = "host", secrets: Mapping[str, str | os.PathLike[str]] | None = None) -> Image:
    """Build `context` (a directory) as `pybuild build` would; returns the image.

    `progress` receives every Event; without it the build is silent. `secrets` maps a
    secret id to the file `RUN --mount=type=secret,id=ID` reads (never stored in a layer). Raises
    DockerfileError for a Dockerfile mistake (with .filename and .line), StepError when a
    RUN fails (with .exit_status), PybuildError for anything else a user can fix.
    """
    from pybuild.solver.mounts import parse_secret_flag
    from pybuild.solver.solver import BuildOptions, Solver, summary_of

    ctx = Path(context)
    if not ctx.is_dir():
        raise PybuildError(f"unable to prepare context: path {str(context)!r} not found")
    df = Path(dockerfile) if dockerfile is not None else ctx / "Dockerfile"
    opts = BuildOptions(context=ctx, dockerfile=df,
                        dockerfile_name=str(dockerfile) if dockerfile is not None else "Dockerfile",
                        tags=list(tags), build_args=dict(build_args or {}), target=target,
                        no_cache=no_cache, labels=dict(labels or {}), pull=pull, network=network,
                        secrets={sid: parse_secret_flag(f"id={sid},src={os.fspath(src)}")
                                 for sid, src in (secrets or {}).items()})
    if os.geteuid() != 0:
        raise NeedsRootError("building needs root (overlay mounts and runc): run as root")
    store = store if store is not None else open_store()
    reporter: Progress = _CallbackProgress(progress) if progress else _CallbackProgress(lambda e: None)
    start = time.monotonic()
    try:
        solver = Solver(opts, reporter)
        solver.load()
        result = solver.build(store)
        reporter.summary(summary_of(result, time.monotonic() - start))
    finally:
        reporter.close()
    img = Image.from_store(store, result.image_id)
    return Image(store, result.image_id, result.manifest.digest, tuple(result.tags), img.config)


def pull(ref: str, *, store: Store | None = None) -> Image:
    """Pull `ref` from its registry into the store (and unpack it for builds)."""
    from pybuild import registry
    from pybuild.reference import parse_reference

    store = store if store is not None else open_store()
    canonical = parse_reference(ref).canonical
    registry.pull(store, canonical)
    return Image.from_store(store, parse_reference(ref).familiar)


def push(name: str, destination: str | None = None, *, store: Store | None = None) -> str:
    """Push a local image to `destination` (default: its own name); returns the digest."""
    from pybuild import image as imagemod
    from pybuild import registry

    store = store if store is not None else open_store()
    imagemod.load(store, name)  # a clear error before any network traffic
    return str(registry.push(store, name, destination or name))


def save(names: Iterable[str], out: str | os.PathLike[str], *, store: Store | None = None,
         format: Literal["docker", "oci"] = "docker") -> Path:
    """Write images to an archive `docker load` (format="docker") or any OCI tool reads."""
    from pybuild import image as imagemod

    store = store if store is not None else open_store()
    path = Path(out)
    if format == "docker":
        imagemod.save_docker_archive(store, list(names), path)
    elif format == "oci":
        imagemod.save_oci_archive(store, list(names), path)
    else:
        raise PybuildError(f"unknown archive format {format!r} (docker or oci)")
    return path


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
    try:
        if detach:
            containers.start_detached(store, c)
        else:
            import io

            out = io.BytesIO()
            containers.run_foreground(store, c, out, out)
    except BaseException:
        current = containers.find_or_none(store, c.id)
        if current is not None and current.status == "created":
            containers.remove(store, current, force=True)
        raise
    return Container(store, c.id, c.name)
