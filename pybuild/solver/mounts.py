"""RUN --mount: turn each mount definition into a runtime mount, and undo it afterwards.

Cache mounts persist per id under `<store>/cache-mounts/`; secrets come from files or
environment variables named on the command line and are only ever bind-mounted (never
written into a layer, the config or a cache key); bind mounts read from the context, a
stage or an image; tmpfs is a tmpfs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pybuild.errors import DockerfileError, PybuildError
from pybuild.liveness import process_start
from pybuild.runtime import Mount

SECRETS_DIR = Path("/run/pybuild/secrets")


@dataclass(frozen=True)
class SecretSource:
    """`--secret id=x,src=path` or `--secret id=x,env=VAR`."""

    id: str
    path: Path | None = None
    env: str | None = None

    def read(self) -> bytes:
        if self.path is not None:
            try:
                return self.path.read_bytes()
            except OSError as e:
                raise PybuildError(f"secret {self.id}: cannot read {self.path}: {e.strerror}") from None
        value = os.environ.get(self.env or "")
        if value is None:
            raise PybuildError(f"secret {self.id}: environment variable {self.env} is not set")
        return value.encode()


def parse_secret_flag(spec: str) -> SecretSource:
    """Parse a `--secret` command-line value as docker does (`id=`, `src=`/`source=`, `env=`)."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise PybuildError(f"invalid secret {spec!r}: expected key=value pairs")
        k, v = part.split("=", 1)
        fields[k.strip().lower()] = v.strip()
    sid = fields.get("id")
    src = fields.get("src") or fields.get("source")
    env = fields.get("env")
    if not sid:
        if src:
            sid = os.path.basename(src)
        elif env:
            sid = env
        else:
            raise PybuildError(f"invalid secret {spec!r}: id is required")
    if src:
        return SecretSource(sid, path=Path(src).expanduser())
    return SecretSource(sid, env=env or sid)


def cache_key_of(mount: Any) -> dict[str, Any]:
    """The mount's definition for the step's cache key: never cache-mount contents or
    secret values. (What a bind mount shows is keyed separately, by the solver.)"""
    return {k: v for k, v in sorted(vars(mount).items()) if v not in (None, False, "", [])}


def cache_dir_key(mount: Any, cid: str) -> str:
    """Which directory a cache mount shares: its id alone, or, when it has a base (uid, gid
    or mode, which BuildKit makes with a Mkdir; from=/source=), the id and that base, as
    BuildKit's getRefCacheDir keys `id:<base ref>`. `uid=1000` and `uid=2000` caches of the
    same target are two directories, each created with its own owner and mode."""
    parts = [f"{k}={getattr(mount, k)}" for k in ("from_", "source") if getattr(mount, k, None)]
    if any(getattr(mount, k, None) is not None for k in ("uid", "gid", "mode")):
        # the Mkdir's effective values: an explicit default is the same directory
        parts.append(f"mkdir={mount.uid or 0}:{mount.gid or 0}:{_mode(mount.mode, 0o755):o}")
    return ":".join([cid, *parts])


@dataclass
class Prepared:
    """Runtime mounts for one RUN and the env additions (secrets with `env=`).

    The runtime removes the mount points it had to create, so none lands in a layer.
    """

    mounts: list[Mount]
    env: list[str]


class MountPreparer:
    """Builds the runtime mounts of one RUN; the caller supplies stage/image rootfs views."""

    def __init__(self, store_root: Path, context_root: Path, secrets: dict[str, SecretSource],
                 view: Callable[[str], Any]) -> None:
        self.cache_root = store_root / "cache-mounts"
        self.context_root = context_root
        self.secrets = secrets
        self.view = view  # from= name → context manager yielding a mounted Path

    @contextmanager
    def prepare(self, mounts: list[Any], workdir: str, line: int) -> Iterator[Prepared]:
        out = Prepared([], [])
        with ExitStack() as stack:
            for m in mounts:
                kind = (m.type or "bind").lower()
                target = _abs(m.target, workdir) if m.target else None
                if kind == "cache":
                    out.mounts.append(self._cache(stack, m, target, line))
                elif kind == "tmpfs":
                    if not target:
                        raise DockerfileError("tmpfs mount needs a target", line)
                    opts = ["nosuid", "nodev"]
                    if getattr(m, "size", None):
                        opts.append(f"size={m.size}")
                    out.mounts.append(Mount(target, "tmpfs", "tmpfs", opts))
                elif kind == "bind":
                    out.mounts.append(self._bind(stack, m, target, line))
                elif kind == "secret":
                    self._secret(stack, m, target, out, line)
                elif kind == "ssh":
                    raise DockerfileError("RUN --mount=type=ssh is not supported by pybuild yet", line)
                else:
                    raise DockerfileError(f"unsupported mount type {kind!r}", line)
            yield out

    def _cache(self, stack: ExitStack, m: Any, target: str | None, line: int) -> Mount:
        if not target:
            raise DockerfileError("cache mount needs a target", line)
        cid = m.id or target
        base = self.cache_root / hashlib.sha256(cache_dir_key(m, cid).encode()).hexdigest()[:32]
        data = base / "data"
        if not data.exists():
            self.cache_root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.cache_root))
            os.chmod(tmp, _mode(m.mode, 0o755))
            os.chown(tmp, int(m.uid or 0), int(m.gid or 0))
            base.mkdir(parents=True, exist_ok=True)
            (base / "id").write_text(cid)
            try:
                os.rename(tmp, data)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        sharing = (m.sharing or "shared").lower()
        source = data
        if sharing in ("locked", "private"):
            fd = os.open(base / "id", os.O_RDONLY)
            stack.callback(os.close, fd)
            if sharing == "locked":
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # In use: a private mount gets a fresh directory of its own.
                    source = Path(tempfile.mkdtemp(dir=self.cache_root))
                    stack.callback(shutil.rmtree, source, True)
        opts = ["rbind", "ro" if m.readonly else "rw"]
        return Mount(target, "bind", str(source), opts)

    def _bind(self, stack: ExitStack, m: Any, target: str | None, line: int) -> Mount:
        if not target:
            raise DockerfileError("bind mount needs a target", line)
        src_rel = (m.source or "/").lstrip("/")
        if m.from_:
            root = Path(stack.enter_context(self.view(m.from_)))
        else:
            root = self.context_root
        src = (root / src_rel).resolve() if not m.from_ else root / src_rel
        if not m.from_ and not _inside(src, self.context_root.resolve()):
            raise DockerfileError(f"bind mount source {m.source!r} is outside the build context", line)
        if not os.path.lexists(src):
            raise DockerfileError(f"bind mount source {m.source!r} not found", line)
        if not m.readonly and getattr(m, "rw", False):
            # Writes to a rw bind are thrown away, as BuildKit does: mount a scratch copy.
            tmp = Path(tempfile.mkdtemp(dir=self.cache_root.parent / "tmp"))
            stack.callback(shutil.rmtree, tmp, True)
            dst = tmp / "src"
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst)
            return Mount(target, "bind", str(dst), ["rbind", "rw"])
        return Mount(target, "bind", str(src), ["rbind", "ro"])

    def _secret(self, stack: ExitStack, m: Any, target: str | None, out: Prepared,
                line: int) -> None:
        sid = m.id or (os.path.basename(target) if target else None)
        if not sid:
            raise DockerfileError("secret mount needs an id or a target", line)
        src = self.secrets.get(sid)
        if src is None:
            if m.required:
                raise DockerfileError(f"secret {sid} not found: pass it with --secret id={sid},src=FILE", line)
            return
        data = src.read()
        if m.env:
            out.env.append(f"{m.env}={data.decode(errors='replace')}")
            if not target:
                return
        target = target or f"/run/secrets/{sid}"
        SECRETS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Named after its owner, so a killed build's secret is removed by the next one.
        fd, path = tempfile.mkstemp(dir=SECRETS_DIR, prefix=_owner_tag() + "-")
        stack.callback(_unlink, path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, _mode(m.mode, 0o400))
        os.chown(path, int(m.uid or 0), int(m.gid or 0))
        out.mounts.append(Mount(target, "bind", path, ["bind", "ro"]))


def _owner_tag() -> str:
    return f"{os.getpid()}.{process_start(os.getpid())}"


def cleanup_stale_secrets() -> None:
    """Remove secret files whose owning pybuild process is gone (it was killed)."""
    if not SECRETS_DIR.is_dir():
        return
    for f in SECRETS_DIR.iterdir():
        owner = f.name.split("-", 1)[0]
        pid, _, start = owner.partition(".")
        if not pid.isdigit() or str(process_start(int(pid))) != start:
            _unlink(str(f))


def _mode(value: int | str | None, default: int) -> int:
    if value is None:
        return default
    return int(value, 8) if isinstance(value, str) else value


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _abs(path: str, workdir: str) -> str:
    return os.path.normpath(path if path.startswith("/") else os.path.join(workdir or "/", path))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
