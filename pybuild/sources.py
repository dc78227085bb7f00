"""Where a build's context and Dockerfile come from, as `docker build` takes them.

    DIR                        a local directory (the usual case)
    -                          stdin: a tar (plain or compressed) is the context, anything
                               else is the Dockerfile with an empty context
    -f -                       the Dockerfile from stdin, the context from elsewhere
    git URL[#REF[:SUBDIR]]     cloned with the real `git` into a temp dir (.git removed)
    http(s)://.../ctx.tar.gz   downloaded; a tarball is the context, text the Dockerfile

Every archive is unpacked with the one safe extractor (pybuild.layer.extract_archive), so
a hostile tarball cannot write outside its temp dir; a git SUBDIR is resolved inside the
clone. Everything fetched lives in a temp dir removed when the build ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pybuild import fs
from pybuild.liveness import remove_tree
from pybuild.errors import PybuildError

_GIT_URL = re.compile(r"^(?:https?://\S+?\.git(?:#\S*)?|git://\S+|git@\S+|ssh://\S+|"
                      r"github\.com/\S+)$")
_TIMEOUT = (30, 300)


@dataclass
class Prepared:
    """A context directory and the Dockerfile to read, however they arrived."""

    context: Path
    dockerfile: Path
    name: str           # what error messages call the Dockerfile


def is_git_url(value: str) -> bool:
    """docker's rule: git://, git@, github.com/, or an http(s) URL whose path ends in .git."""
    return bool(_GIT_URL.match(value))


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


@contextlib.contextmanager
def prepare(context: str, dockerfile: str | None, stdin: BinaryIO) -> Iterator[Prepared]:
    """Resolve the CONTEXT argument and -f; temp dirs are removed when the block ends."""
    if context == "-" and dockerfile == "-":
        raise PybuildError("invalid argument: can't use stdin for both build context and dockerfile")
    if "-" in (context, dockerfile) and stdin.isatty():
        raise PybuildError("reading from stdin, but stdin is a terminal: pipe a tar context "
                           "or a Dockerfile into it")
    with contextlib.ExitStack() as stack:
        def scratch(prefix: str) -> Path:
            d = Path(tempfile.mkdtemp(prefix=prefix))
            stack.callback(remove_tree, d)
            return d

        inline: Path | None = None  # a Dockerfile that came instead of a context
        if context == "-":
            root, inline = _from_stream(stdin, scratch("pybuild-ctx-"), "stdin")
        elif is_git_url(context):
            root = fetch_git(context, scratch("pybuild-git-"))
        elif is_url(context):
            root, inline = fetch_http(context, scratch("pybuild-url-"))
        else:
            root = Path(context)
            if not root.is_dir():
                raise PybuildError(f"unable to prepare context: path {context!r} not found")
        remote = context == "-" or is_url(context) or is_git_url(context)
        if dockerfile == "-":
            d = scratch("pybuild-df-") / "Dockerfile"
            d.write_bytes(stdin.read())
            yield Prepared(root, d, "Dockerfile")
        elif inline is not None:
            yield Prepared(root, inline, "Dockerfile")
        elif dockerfile and remote:
            # -f names a file inside a context that came from elsewhere
            yield Prepared(root, fs.resolve_in_root(root, dockerfile), dockerfile)
        elif dockerfile:
            yield Prepared(root, Path(dockerfile), dockerfile)
        else:
            yield Prepared(root, root / "Dockerfile", "Dockerfile")


def _from_stream(src: BinaryIO, into: Path, what: str) -> tuple[Path, Path | None]:
    """A tar stream becomes the context; any other bytes are a Dockerfile (docker's rule)."""
    from pybuild import layer  # a directory context (the usual one) needs none of it

    head = src.read(layer.BLOCK)
    data_file = into / "stream"
    with open(data_file, "wb") as f:
        f.write(head)
        shutil.copyfileobj(src, f, layer.CHUNK)
    return _unpack_or_dockerfile(data_file, into, what)


def _unpack_or_dockerfile(data_file: Path, into: Path, what: str) -> tuple[Path, Path | None]:
    from pybuild import layer

    root = into / "context"
    root.mkdir()
    if layer.is_archive(data_file):
        with open(data_file, "rb") as f:
            try:
                layer.extract_archive(f, root, "/")
            except PybuildError as e:
                raise PybuildError(f"unable to prepare context from {what}: {e}") from None
        data_file.unlink()
        return root, None
    dockerfile = into / "Dockerfile"
    os.replace(data_file, dockerfile)
    return root, dockerfile


def fetch_http(url: str, into: Path) -> tuple[Path, Path | None]:
    """Download URL: a tarball is unpacked as the context, anything else is the Dockerfile."""
    from pybuild import layer

    import requests

    data_file = into / "download"
    try:
        with requests.get(url, stream=True, timeout=_TIMEOUT) as resp:
            if resp.status_code >= 400:
                raise PybuildError(f"unable to prepare context: failed to GET {url} with status "
                                   f"{resp.status_code} {resp.reason}")
            with open(data_file, "wb") as f:
                for chunk in resp.iter_content(layer.CHUNK):
                    f.write(chunk)
    except requests.RequestException as e:
        raise PybuildError(f"unable to prepare context: cannot download {url}: "
                           f"{type(e).__name__}") from None
    return _unpack_or_dockerfile(data_file, into, url)


def split_git_url(url: str) -> tuple[str, str, str]:
    """URL#REF:SUBDIR → (url, ref, subdir); empty parts when absent."""
    base, _, fragment = url.partition("#")
    ref, _, subdir = fragment.partition(":")
    return base, ref, subdir


def _git(args: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None:
        raise PybuildError("a git context needs git (apt-get install git)")
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1",
               GIT_PROTOCOL_FROM_USER="0")
    proc = subprocess.run(["git", "-c", "protocol.file.allow=never", "-c", "core.hooksPath=/dev/null",
                           *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise PybuildError(f"unable to prepare context: {what}: {detail}")
    return proc


def fetch_git(url: str, into: Path) -> Path:
    """Clone URL at REF (default: the remote's HEAD) and return SUBDIR of it."""
    base, ref, subdir = split_git_url(url)
    if base.startswith(("file:", "ext::", "-")) or "::" in base.split("/")[0]:
        raise PybuildError(f"unable to prepare context: unsupported git URL {base!r}")
    if ref.startswith("-"):
        raise PybuildError(f"unable to prepare context: invalid git ref {ref!r}")
    repo = into / "repo"
    repo.mkdir()
    _git(["init", "-q"], repo, "git init")
    _git(["remote", "add", "origin", base], repo, "git remote add")
    want = ref or "HEAD"
    try:
        _git(["fetch", "-q", "--depth=1", "origin", "--", want], repo, f"fetching {base} {want}")
        _git(["checkout", "-q", "FETCH_HEAD"], repo, "git checkout")
    except PybuildError:
        # a commit id the server will not hand out shallowly: fetch everything
        _git(["fetch", "-q", "--tags", "origin"], repo, f"fetching {base}")
        try:
            _git(["checkout", "-q", want], repo, f"checking out {want}")
        except PybuildError:
            raise PybuildError(f"unable to prepare context: {base} has no branch, tag or commit "
                               f"{want!r}") from None
    if (repo / ".gitmodules").exists():
        _git(["submodule", "update", "-q", "--init", "--recursive", "--depth=1"], repo,
             "git submodule update")
    remove_tree(repo / ".git")
    if not subdir:
        return repo
    root = fs.resolve_in_root(repo, subdir)
    if not root.is_dir():
        raise PybuildError(f"unable to prepare context: {subdir!r} is not a directory in {base}")
    return root
