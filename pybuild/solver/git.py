"""`ADD <git repository>`: BuildKit's git source, with the host's git client.

A source is a git repository when BuildKit's ParseGitRef says so (frontend/dockerfile/
dfgitutil): `http(s)://host/path.git`, `ssh://`, `git://`, or scp-like `user@host:path`,
with `#ref:subdir` and/or a query (`?ref=`, `tag=`, `branch=`, `subdir=`, `checksum=`,
`keep-git-dir=`). The ref is resolved to a commit before the step's cache key is computed
(`git ls-remote`), so a moved branch is a new key and an unchanged one a hit.

git runs with no terminal prompt, no system or global config, and only the transports a
Dockerfile can name (`ext::`, `file://` and local paths never reach it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pybuild.errors import DockerfileError
from pybuild.liveness import remove_tree

_PROTO = re.compile(r"^[a-zA-Z0-9]+://")
_SCP = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*@([^:/-][^:/]*):(.+)$")  # sshutil's scp-style URL
_SUPPORTED = ("http", "https", "ssh", "git")
_HEX = re.compile(r"[0-9a-f]+")
_TIMEOUT = 600


@dataclass(frozen=True)
class GitRef:
    remote: str
    ref: str = ""
    subdir: str = ""
    checksum: str = ""
    keep_git_dir: bool | None = None


def _opts(fragment: str) -> tuple[str, str]:
    ref, _, subdir = fragment.partition(":")
    return ref, os.path.normpath("/" + subdir).lstrip("/") if subdir else ""


def parse_git_ref(src: str, line: int | None = None) -> GitRef | None:
    """The git repository `src` names, or None when it is a URL or a local path."""
    if src.startswith(("./", "../")):
        return None
    query = ""
    if (m := _PROTO.match(src)) is not None:
        scheme = m.group(0)[:-3].lower()
        if scheme not in _SUPPORTED:
            return None
        parts = urlsplit(src)
        if scheme in ("http", "https") and not parts.path.endswith(".git"):
            return None  # an ordinary download
        remote = parts._replace(query="", fragment="").geturl()
        ref, subdir = _opts(parts.fragment)
        query = parts.query
    elif _SCP.match(src.split("#", 1)[0].split("?", 1)[0]) and "://" not in src:
        base, _, fragment = src.partition("#")
        remote, _, query = base.partition("?")
        ref, subdir = _opts(fragment)
    else:
        return None
    checksum, keep = "", None
    tag = branch = ""
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if len(values) > 1:
            raise DockerfileError(f'query "{key}" has multiple values', line)
        value = values[0]
        if value == "" and key not in ("keep-git-dir", "submodules", "fetch-by-commit"):
            raise DockerfileError(f'query "{key}" has no value', line)
        if key == "ref":
            if ref and ref != value:
                raise DockerfileError(f'ref conflicts: "{ref}" vs "{value}"', line)
            ref = value
        elif key == "tag":
            tag = value if value.startswith("refs/tags/") else "refs/tags/" + value
        elif key == "branch":
            branch = value if value.startswith("refs/heads/") else "refs/heads/" + value
        elif key == "subdir":
            subdir = os.path.normpath("/" + value).lstrip("/")
        elif key in ("checksum", "commit"):
            checksum = value
        elif key == "keep-git-dir":
            if value.lower() not in ("", "1", "t", "true", "0", "f", "false"):
                raise DockerfileError(f'invalid keep-git-dir value: "{value}"', line)
            keep = value.lower() in ("", "1", "t", "true")
        elif key in ("submodules", "mtime", "fetch-by-commit"):
            continue  # pybuild checks out no submodules and keeps checkout times
        else:
            raise DockerfileError(f'unexpected query "{key}"', line)
    if tag and branch:
        raise DockerfileError("branch conflicts with tag", line)
    for extra in (tag, branch):
        _check_ref(extra, line)
    for extra in (tag, branch):
        if extra:
            if ref and ref != extra:
                raise DockerfileError(f'ref conflicts: "{ref}" vs "{extra}"', line)
            ref = extra
    _check_ref(ref, line)
    return GitRef(remote, ref, subdir, checksum, keep)


_BAD_REF = re.compile(r"^-|[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|/$|\.lock$|^/")


def _check_ref(ref: str, line: int | None) -> None:
    """git's ref rules (check-ref-format), and never a word git would read as an option."""
    if ref and _BAD_REF.search(ref):
        raise DockerfileError(f"invalid git ref {ref!r}", line)


def _git(args: list[str], cwd: Path | None, line: int | None) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": "/nonexistent",
           "GIT_PROTOCOL_FROM_USER": "0", "LC_ALL": "C"}
    full = ["git", "-c", "protocol.allow=never", "-c", "advice.detachedHead=false"]
    for proto in _SUPPORTED:
        full += ["-c", f"protocol.{proto}.allow=always"]
    if shutil.which("git") is None:
        raise DockerfileError("ADD of a git repository needs git (apt-get install git)", line)
    try:
        proc = subprocess.run(full + args, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise DockerfileError(f"git {args[0]} timed out", line) from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise DockerfileError(f"git {args[0]} failed: {last}", line)
    return proc.stdout


def resolve_commit(ref: GitRef, line: int | None) -> str:
    """The commit `ref` names now, checked against --checksum (a commit prefix)."""
    if ref.checksum and not _HEX.fullmatch(ref.checksum):
        raise DockerfileError(f"invalid checksum {ref.checksum}: expected hex commit hash", line)
    commit = ""
    if ref.ref and _HEX.fullmatch(ref.ref) and len(ref.ref) in (40, 64):
        commit = ref.ref
    else:
        wanted = ref.ref or "HEAD"
        out = _git(["ls-remote", "--", ref.remote, wanted, f"{wanted}^{{}}"], None, line)
        found: dict[str, str] = {}
        for row in out.splitlines():
            sha, _, name = row.partition("\t")
            found[name] = sha
        for name in (f"{wanted}^{{}}", f"refs/tags/{wanted}^{{}}", wanted, f"refs/tags/{wanted}",
                     f"refs/heads/{wanted}"):
            if name in found:
                commit = found[name]
                break
        else:
            candidates = [sha for name, sha in found.items() if name.endswith("/" + wanted)]
            if not candidates:
                raise DockerfileError(f"git ref {wanted!r} not found in {ref.remote}", line)
            commit = candidates[0]
    if ref.checksum and not commit.startswith(ref.checksum):
        raise DockerfileError(f"expected checksum to match {ref.checksum}, got {commit}", line)
    return commit


@contextmanager
def checkout(ref: GitRef, commit: str, keep_git_dir: bool, line: int | None) -> Iterator[Path]:
    """A temporary checkout of `commit`; yields the directory to copy (the subdir, if any)."""
    with tempfile.TemporaryDirectory(prefix="pybuild-git-") as tmp:
        work = Path(tmp) / "repo"
        _git(["init", "-q", str(work)], None, line)
        _git(["remote", "add", "origin", ref.remote], work, line)
        fetch = ref.ref if ref.ref and ref.ref != commit else commit
        try:
            _git(["fetch", "-q", "--tags", "origin", fetch], work, line)
        except DockerfileError:
            _git(["fetch", "-q", "--tags", "origin"], work, line)  # a server refusing a bare sha
        _git(["checkout", "-q", "--detach", commit], work, line)
        if ref.ref and not ref.ref.startswith("refs/tags/") and ref.ref != commit:
            branch = ref.ref.removeprefix("refs/heads/")
            try:
                _git(["checkout", "-q", "-B", branch, commit], work, line)
            except DockerfileError:
                pass  # a tag name: stay detached
        if not keep_git_dir:
            remove_tree(work / ".git")
        src = work
        if ref.subdir:
            src = work / ref.subdir
            if src.is_symlink() or not src.is_dir() or not src.resolve().is_relative_to(work.resolve()):
                raise DockerfileError(f"subdir {ref.subdir!r} not found in {ref.remote}#{ref.ref}", line)
        yield src
