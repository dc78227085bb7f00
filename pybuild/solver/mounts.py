"""RUN --mount: turn each mount definition into a runtime mount, and undo it afterwards.

Cache mounts persist per id under `<store>/cache-mounts/`; secrets come from files or
environment variables named on the command line and are only ever bind-mounted (never
written into a layer, the config or a cache key); bind mounts read from the context, a
stage or an image; tmpfs is a tmpfs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pybuild import fs, rootless
from pybuild.liveness import remove_tree
from pybuild.context import BuildContext, go_clean, walk_visible
from pybuild.errors import DockerfileError, PybuildError
from pybuild.liveness import process_start
from pybuild.runtime import Mount
from pybuild.store import tree_dir

SECRETS_DIR = rootless.state_dir() / "secrets"


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


def mount_key(m: Any, workdir: str, source_key: Callable[[str], str] | None = None) -> dict[str, Any]:
    """What one mount means, for the step's cache key: its typed, expanded fields with their
    defaults filled in, never the line it is on, how it was spelled or the order of its fields;
    never cache-mount contents or secret values. (What a bind mount shows is keyed by
    `bind_key`.) A cache mount seeded `from=` a stage or image keys on that source's key."""
    kind = (m.type or "bind").lower()
    target = _abs(m.target, workdir) if m.target else None
    out: dict[str, Any] = {"type": kind, "target": target}
    if kind == "bind":
        out.update(source=_clean_abs(m.source), readonly=bool(m.readonly))
    elif kind == "cache":
        out.update(id=m.id or target, sharing=(m.sharing or "shared").lower(),
                   readonly=bool(m.readonly), uid=int(m.uid or 0), gid=int(m.gid or 0),
                   mode=_mode(m.mode, 0o755))
        if m.from_:
            out.update(source=_clean_abs(m.source),
                       **{"from": source_key(m.from_) if source_key else m.from_})
    elif kind == "tmpfs":
        out["size"] = int(m.size or 0)
    elif kind == "secret":
        sid = m.id or (os.path.basename(target) if target else "")
        out.update(id=sid, env=m.env or "", required=bool(m.required),
                   uid=int(m.uid or 0), gid=int(m.gid or 0), mode=_mode(m.mode, 0o400))
        if not target and not m.env:
            out["target"] = f"/run/secrets/{sid}"
    else:
        out.update(id=m.id or "", required=bool(m.required))
    return out


def mounts_key(mounts: list[Any], workdir: str,
               source_key: Callable[[str], str] | None = None) -> list[dict[str, Any]]:
    """The mounts of one RUN for its key, ordered by target as BuildKit's exec op orders them."""
    keyed = [mount_key(m, workdir, source_key) for m in mounts]
    return sorted(keyed, key=lambda d: (d.get("target") or "", d["type"], json.dumps(d, sort_keys=True)))


def bind_key(m: Any, workdir: str, context: BuildContext, source_key: Callable[[str], str],
             line: int) -> dict[str, Any]:
    """What a bind mount shows the step: from a stage or an image, that source's key (which
    pins its content); from the context, the manifest of exactly the files it mounts
    (the context as sent: `.dockerignore` applied)."""
    target = _abs(m.target, workdir) if m.target else None
    source = _clean_abs(m.source)
    if m.from_:
        return {"target": target, "source": source, "from": source_key(m.from_)}
    path = context.resolve_mount_source(source, line)
    return {"target": target, "source": source, "files": context.manifest([path])}


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

    def __init__(self, store_root: Path, context: BuildContext, secrets: dict[str, SecretSource],
                 view: Callable[[str], Any], source_key: Callable[[str], str],
                 ssh: Any = None) -> None:
        self.ssh = ssh  # pybuild.solver.ssh.Agents of --ssh, or None
        self.cache_root = store_root / "cache-mounts"
        self.tmp_root = store_root / "tmp"
        self.context = context
        self.secrets = secrets
        self.view = view  # from= name → context manager yielding a mounted Path
        self.source_key = source_key  # from= name → the key pinning its content

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
                    from pybuild.solver.ssh import forward

                    n = sum(1 for x in mounts[:mounts.index(m)] if (x.type or "").lower() == "ssh")
                    fwd = stack.enter_context(forward(self.ssh, m, target, n, line))
                    if fwd is not None:
                        out.mounts.append(Mount(fwd[1], "bind", fwd[0], ["bind"]))
                        if not any(e.startswith("SSH_AUTH_SOCK=") for e in out.env):
                            out.env.append(f"SSH_AUTH_SOCK={fwd[1]}")
                else:
                    raise DockerfileError(f"unsupported mount type {kind!r}", line)
            yield out

    def _cache(self, stack: ExitStack, m: Any, target: str | None, line: int) -> Mount:
        if not target:
            raise DockerfileError("cache mount needs a target", line)
        cid = m.id or target
        # The id names a directory only through its hash: no id can name a path.
        name = cid if not m.from_ else json.dumps([cid, self.source_key(m.from_), _clean_abs(m.source)])
        base = self.cache_root / hashlib.sha256(cache_dir_key(m, name).encode()).hexdigest()[:32]
        data = base / "data"
        if not data.exists():
            tree_dir(self.cache_root)
            tmp = Path(tempfile.mkdtemp(dir=self.cache_root))
            if m.from_:
                # A new cache starts as a copy of the source, resolved inside its stage/image.
                with self.view(m.from_) as root:
                    seed = _in_root_source(Path(root), m.source, line)
                    if not seed.is_dir():
                        raise DockerfileError(f"cache mount source {_clean_abs(m.source)} is not a directory", line)
                    os.rmdir(tmp)
                    _copy_tree(seed, tmp, line)
            os.chmod(tmp, _mode(m.mode, 0o755))
            os.chown(tmp, int(m.uid or 0), int(m.gid or 0))
            base.mkdir(parents=True, exist_ok=True)
            (base / "id").write_text(cid)
            try:
                os.rename(tmp, data)
            except OSError:
                remove_tree(tmp)
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
                    stack.callback(remove_tree, source)
        opts = ["rbind", "ro" if m.readonly else "rw"]
        return Mount(target, "bind", str(source), opts)

    def _bind(self, stack: ExitStack, m: Any, target: str | None, line: int) -> Mount:
        if not target:
            raise DockerfileError("bind mount needs a target", line)
        rw = not m.readonly
        if m.from_:
            root = Path(stack.enter_context(self.view(m.from_)))
            src = _in_root_source(root, m.source, line)
        else:
            # The context as sent: only what .dockerignore lets through, never linked when
            # the step may write (a rw bind's writes are thrown away, as BuildKit does).
            src = self._context_view(stack, m.source, line, copy=rw)
            if rw:
                return Mount(target, "bind", str(src), ["rbind", "rw"])
        if rw:
            tmp = self._scratch(stack)
            dst = tmp / "src"
            _copy_tree(src, dst, line)
            return Mount(target, "bind", str(dst), ["rbind", "rw"])
        return Mount(target, "bind", str(src), ["rbind", "ro"])

    def _scratch(self, stack: ExitStack) -> Path:
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.tmp_root))
        stack.callback(remove_tree, tmp)
        return tmp

    def _context_view(self, stack: ExitStack, source: str | None, line: int, copy: bool) -> Path:
        """A directory (or file) holding exactly the visible context files below `source`:
        hard links to them (copies where links cannot be made, or when `copy`)."""
        src = self.context.resolve_mount_source(_clean_abs(source), line)
        dst = self._scratch(stack) / "src"
        st = os.lstat(src)
        if not stat.S_ISDIR(st.st_mode):
            _place_file(src, dst, st, copy)
            return dst
        _make_dir(dst, st)
        rel = os.path.relpath(src, self.context.root).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        dirs = [(dst, st)]
        for child, cst in walk_visible(src, [(self.context.matcher, prefix)]):
            path = dst / child
            if stat.S_ISDIR(cst.st_mode):
                _make_dir(path, cst)
                dirs.append((path, cst))
            elif stat.S_ISLNK(cst.st_mode):
                os.symlink(os.readlink(src / child), path)
                os.lchown(path, cst.st_uid, cst.st_gid)
            else:
                _place_file(src / child, path, cst, copy)
        for d, dst_st in dirs:
            os.chmod(d, stat.S_IMODE(dst_st.st_mode))
        return dst

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


def _clean_abs(source: str | None) -> str:
    """A mount source as a clean absolute path in its root ("" and "." are the root)."""
    return go_clean("/" + (source or "/"))


def _in_root_source(root: Path, source: str | None, line: int) -> Path:
    """The host path of a mount source inside a stage's or image's root: links followed as
    that root sees them, `..` stopped at it; missing is an error, as in BuildKit."""
    clean = _clean_abs(source)
    try:
        path = fs.resolve_in_root(root, clean)
    except fs.PathError as e:
        raise DockerfileError(f"mount source {clean}: {e.reason}", line) from None
    if not os.path.lexists(path):
        raise DockerfileError(f"failed to compute cache key: \"{clean}\": not found", line)
    return path


def _copy_tree(src: Path, dst: Path, line: int) -> None:
    """`cp -a` (links copied as links, owners, modes, times, xattrs kept): it walks any
    depth, where shutil.copytree recurses."""
    proc = subprocess.run(["cp", "-a", "--", str(src), str(dst)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise DockerfileError(f"cannot copy the mount source: {lines[-1][:300] if lines else 'cp failed'}", line)


def _make_dir(path: Path, st: os.stat_result) -> None:
    os.mkdir(path, 0o700)
    os.chown(path, st.st_uid, st.st_gid)


def _place_file(src: Path, dst: Path, st: os.stat_result, copy: bool) -> None:
    if not copy:
        try:
            os.link(src, dst, follow_symlinks=False)
            return
        except OSError:
            pass  # another filesystem, or links refused: copy
    shutil.copy2(src, dst, follow_symlinks=False)
    os.chown(dst, st.st_uid, st.st_gid)
