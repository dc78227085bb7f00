"""The op graph: what the frontend's instructions become, one frozen dataclass per op.

BuildKit turns a Dockerfile into LLB: sources (an image, the context, another stage) and
ops on them (exec, file). Each op here is the typed definition of one vertex after word
expansion; its cache key is derived from that definition and its inputs' keys only, so
it never depends on line numbers, comments, whitespace or where the stage sits in the
file. `KEY_VERSION` is part of every key: changing what goes into a key means bumping it.

`inputs()` is the recorded form of an op: what a cache record keeps beside its key so a
miss can be explained field by field against the previous build of the same step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from pybuild.context import FileManifest

# 3: every layer op names its platform; 4: hostname, git commits, unpack; 6: context files
# (COPY sources, bind mounts, named contexts) are keyed by their manifest's digest
KEY_VERSION = 6

Pairs = tuple[tuple[str, str], ...]


def digest_of(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys, no spaces); a FileManifest in
    it counts as its digest."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_key_form)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _key_form(obj: Any) -> str:
    if isinstance(obj, FileManifest):
        return obj.digest
    raise TypeError(f"{type(obj).__name__} has no key form")


def plain_inputs(obj: Any) -> Any:
    """Inputs as a record keeps them: each FileManifest as its entries (path -> signature),
    which `--explain` compares file by file."""
    if isinstance(obj, FileManifest):
        return dict(obj.entries())
    if isinstance(obj, dict):
        return {k: plain_inputs(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_inputs(v) for v in obj]
    return obj


# ----- sources ----------------------------------------------------------------------
@dataclass(frozen=True)
class Scratch:
    """The empty filesystem."""

    def key(self) -> str:
        return digest_of({"v": KEY_VERSION, "source": "scratch"})


@dataclass(frozen=True)
class ImageSource:
    """An image by its manifest digest: the digest pins every layer and the config."""

    ref: str
    digest: str

    def key(self) -> str:
        return digest_of({"v": KEY_VERSION, "source": "image", "digest": self.digest})


@dataclass(frozen=True)
class StageRef:
    """Another stage of the same build, by the key of its last op (not by its name or
    position: renaming or moving a stage keeps the keys of what reads it)."""

    stage: int
    stage_key: str

    def key(self) -> str:
        return self.stage_key


@dataclass(frozen=True)
class ContextSource:
    """Files of the build context (or of a `--build-context` directory): their manifest."""

    files: FileManifest

    def key(self) -> str:
        return digest_of({"v": KEY_VERSION, "source": "context", "files": self.files})


# ----- ops that make a layer ---------------------------------------------------------
@dataclass(frozen=True)
class Exec:
    """RUN: a process in the parent filesystem."""

    kind: ClassVar[str] = "run"
    argv: tuple[str, ...]
    env: Pairs  # ENV the process sees, in the state's order
    args: Pairs  # build args it sees (proxies excluded: they never reach a key)
    cwd: str
    user: str
    network: str
    mounts: tuple[Any, ...]  # each mount's meaning (mounts.cache_key_of)
    bind_sources: tuple[Any, ...]  # what the bind mounts show (content or stage keys)
    security: str = "sandbox"
    hostname: str = "buildkitsandbox"  # BUILDKIT_SANDBOX_HOSTNAME (runtime.DEFAULT_HOSTNAME)
    # --add-host / --ulimit / --shm-size (run_options.key_of): in the key only when given
    run_options: tuple[tuple[str, Any], ...] = ()
    platform: str = ""  # os/arch[/variant] the process runs as (emulated when foreign)

    def inputs(self) -> dict[str, Any]:
        return _with_platform(self.platform, {
            "op": "run", "argv": list(self.argv), "env": dict(self.env),
            "args": dict(self.args), "cwd": self.cwd, "user": self.user,
            "network": self.network, "mounts": list(self.mounts),
            "bind_sources": list(self.bind_sources), "security": self.security,
            "hostname": self.hostname, **dict(self.run_options)})


@dataclass(frozen=True)
class Mkdir:
    """WORKDIR: a directory (and its parents) owned by the current user."""

    kind: ClassVar[str] = "mkdir"
    path: str
    user: str
    platform: str = ""

    def inputs(self) -> dict[str, Any]:
        return _with_platform(self.platform, {"op": "mkdir", "path": self.path,
                                              "user": self.user})


@dataclass(frozen=True)
class FileCopy:
    """COPY / ADD, from the context, another stage or image, URLs or heredocs."""

    kind: ClassVar[str] = "copy"
    add: bool
    dest: str
    workdir: str
    chown: str
    chmod: str
    exclude: tuple[str, ...]
    parents: bool
    link: bool
    sources: tuple[str, ...]
    source: ContextSource | StageRef | ImageSource | None = None
    heredocs: tuple[tuple[str, str], ...] = ()
    urls: tuple[str, ...] = ()
    checksum: str = ""
    downloads: tuple[Any, ...] = ()  # each URL's content now (revalidated), when no checksum
    # ADD of git repositories: (remote, resolved commit, subdir, keep .git) each; the commit
    # is resolved before the lookup, so a branch or tag that moved is another key
    git: tuple[tuple[str, str, str, bool], ...] = ()
    unpack: bool | None = None  # ADD --unpack; None: not given (ADD's default)
    platform: str = ""

    def inputs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "add" if self.add else "copy", "dest": self.dest,
                               "workdir": self.workdir, "chown": self.chown,
                               "chmod": self.chmod, "exclude": list(self.exclude),
                               "parents": self.parents, "link": self.link}
        if self.git:
            out["git"] = [list(g) for g in self.git]
        if self.unpack is not None:
            out["unpack"] = self.unpack
        if self.heredocs:
            out["heredocs"] = [list(h) for h in self.heredocs]
        if self.urls:
            out["urls"] = list(self.urls)
            out["checksum"] = self.checksum
            if self.downloads:
                out["downloads"] = list(self.downloads)
        if isinstance(self.source, ContextSource):
            out["sources"] = list(self.sources)
            out["files"] = self.source.files
        elif self.source is not None:
            out["sources"] = list(self.sources)
            out["from"] = source_label(self.source)
        return _with_platform(self.platform, out)


def _with_platform(platform: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """An op's inputs with its platform (BuildKit's Op.Platform): the same step built for
    two platforms is two vertices, two keys."""
    if platform:
        inputs["platform"] = platform
    return inputs


LayerOp = Exec | Mkdir | FileCopy


def source_label(src: StageRef | ImageSource | ContextSource) -> str:
    """How a stage or image source shows in a record: "stage KEY" / "image DIGEST"
    (a --build-context directory: "context KEY")."""
    if isinstance(src, StageRef):
        return "stage " + src.stage_key
    if isinstance(src, ContextSource):
        return "context " + src.key()
    return "image " + src.digest


def op_key(parent: str, op: LayerOp, base: str | None = None) -> str:
    """The cache key of `op` on top of the filesystem whose key is `parent`."""
    return compute_key(parent, recorded_inputs(op, base))


def recorded_inputs(op: LayerOp, base: str | None = None) -> dict[str, Any]:
    """What a record keeps to explain a miss: the op's inputs, and the base image digest
    (already inside `parent`; kept to say "base image moved")."""
    inputs = op.inputs()
    if base:
        inputs["base"] = base
    return inputs


def compute_key(parent: str, inputs: dict[str, Any]) -> str:
    """The one key function, to look up and to write; versioned."""
    return digest_of({"v": KEY_VERSION, "parent": parent, "inputs": inputs})


def merge_key(below: str, layer: str) -> str:
    """The key of a filesystem made of `below` with a linked layer (COPY --link) on top."""
    return digest_of({"v": KEY_VERSION, "merge": [below, layer]})


# ----- step identity ------------------------------------------------------------------
@dataclass(frozen=True)
class StepId:
    """Which step of which Dockerfile a record came from: what `--explain` compares a miss
    with. The stage is its name, or its index when unnamed; position counts the stage's
    layer steps from 1 (ONBUILD triggers first, as they run)."""

    context: str
    dockerfile: str
    stage: str
    position: int

    def text(self) -> str:
        return json.dumps([self.context, self.dockerfile, self.stage, self.position])
