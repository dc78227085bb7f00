"""`pybuild advise IMAGE`: what each line of a Dockerfile cost, read from the layers themselves.

A linter reads the text; this reads the image in the store and its build-cache records:

- wasted bytes: file versions a later layer overwrote or deleted. They still ship (layers are
  only ever added), yet no container can see them; "efficiency" is the visible share of all
  bytes in the layers (dive's idea, counting only the hidden copies as waste).
- caches and leftovers that stay visible: apt lists and .deb files, pip/npm/yarn caches,
  bytecode shipped from the build context, compilers and headers in the final stage.
- cache order: a step that re-ran only because an earlier COPY changed (from the cache
  records of the step's Dockerfile position, with the time each run took).
- a running-as-root note, and secret-looking names in ENV or in the build args of RUN steps.
- a build context bigger than it needs to be: directories nobody wants in an image that the
  `.dockerignore` does not exclude.

Everything is read-only: layer blobs are streamed, names inside tars are data (cleaned,
matched, never joined to a host path), the cache database is only SELECTed from.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pybuild.errors import PybuildError
from pybuild.units import bytes_text as human_size

MIN_BYTES = 1_000_000  # smaller findings are noise next to any base image
BYTECODE_MIN = 50_000  # a few modules' .pyc files are harmless; a checkout's worth is not


@dataclass
class Item:
    """One piece of advice: what, where (Dockerfile line and layer), how much, the fix."""

    kind: str
    what: str
    where: str
    how_much: str
    fix: str
    bytes: int = 0
    seconds: float = 0.0
    layer: int | None = None
    line: int | None = None


@dataclass
class Advice:
    image: str
    size: int  # bytes of all files in all layers (uncompressed content)
    wasted: int  # of those, hidden by a later layer
    items: list[Item] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        return 1.0 if self.size == 0 else (self.size - self.wasted) / self.size

    def leftover_bytes(self) -> int:
        return sum(i.bytes for i in self.items if i.kind in LEFTOVER_KINDS)

    def summary(self) -> str:
        """The one line printed after a build."""
        n = len(self.items)
        parts = [f"{human_size(self.wasted)} hidden by later layers",
                 f"{human_size(self.leftover_bytes())} of caches and leftovers"]
        return (f"advice: {n} item{'s' if n != 1 else ''} ({', '.join(parts)})"
                + (f"; see `pybuild advise {self.image}`" if n else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "size": self.size, "wasted": self.wasted,
                "efficiency": round(self.efficiency, 4), "items": [asdict(i) for i in self.items]}


LEFTOVER_KINDS = ("apt-lists", "apt-archives", "pip-cache", "npm-cache", "bytecode",
                  "compilers")


# --- layers -------------------------------------------------------------------------------

@dataclass
class Layer:
    index: int
    created_by: str
    files: dict[str, int]  # path -> size of regular files written here
    deleted: list[str]  # whiteouts: paths removed (with everything below)
    opaque: list[str]  # directories whose lower contents were hidden
    line: int | None = None


def clean_name(name: str) -> str | None:
    """A tar member name as a path inside the image (no leading /), or None if it climbs out."""
    path = posixpath.normpath("/" + name.lstrip("/"))
    if path == "/" or "/../" in path + "/":
        return None
    return path.lstrip("/")


def read_layer(fileobj: Any, index: int, created_by: str) -> Layer:
    """The files, whiteouts and opaque directories of one layer blob (any compression)."""
    from pybuild.layer import list_members

    return layer_of(list_members(fileobj), index, created_by)


def layer_of(members: Iterable[tuple[str, bytes, int]], index: int, created_by: str) -> Layer:
    """The files, whiteouts and opaque directories of a layer's (name, type, size) list."""
    files: dict[str, int] = {}
    deleted: list[str] = []
    opaque: list[str] = []
    try:
        for name, kind, size in members:
            path = clean_name(name)
            if path is None:
                continue
            parent, base = posixpath.split(path)
            if base == ".wh..wh..opq":
                opaque.append(parent)
            elif base.startswith(".wh."):
                deleted.append(posixpath.join(parent, base[4:]))
            elif kind == b"0":
                files[path] = size
            else:
                files.pop(path, None)
    except (OSError, EOFError, PybuildError) as e:
        raise PybuildError(f"layer {index + 1} cannot be read: {e}") from None
    return Layer(index, created_by, files, deleted, opaque)


def _under(path: str, top: str) -> bool:
    return top == "" or path == top or path.startswith(top + "/")


def visible_files(layers: list[Layer]) -> tuple[dict[str, tuple[int, int]], list[tuple[str, int, int, int]]]:
    """({path: (layer, size)} of what a container sees, [(path, size, written, hidden_by)])."""
    alive: dict[str, tuple[int, int]] = {}
    hidden: list[tuple[str, int, int, int]] = []
    for layer in layers:
        gone: set[str] = set()
        for top in layer.deleted + layer.opaque:
            for path in [p for p in alive if _under(p, top) and (p != top or top in layer.deleted)]:
                gone.add(path)
        for path in layer.files:
            if path in alive:
                gone.add(path)
        for path in gone:
            written, size = alive.pop(path)
            hidden.append((path, size, written, layer.index))
        for path, size in layer.files.items():
            alive[path] = (layer.index, size)
    return alive, hidden


# --- the image ----------------------------------------------------------------------------

def _history_for_layers(config: dict[str, Any], count: int) -> list[str]:
    made = [h.get("created_by", "") for h in config.get("history") or [] if not h.get("empty_layer")]
    made = made[-count:] if len(made) >= count else [""] * (count - len(made)) + made
    return [re.sub(r"\s+", " ", m).strip() for m in made]


def _lines_for(layers: list[Layer], dockerfile: str | None, descriptions: dict[int, str]) -> None:
    """Dockerfile lines of the layers, from the cache records' step names or the history."""
    if not dockerfile:
        return
    from pybuild.dockerfile import parse

    try:
        nodes = parse(dockerfile).nodes
    except PybuildError:
        return
    norm = [(n.start_line, " ".join(n.original.split())) for n in nodes]
    for layer in layers:
        text = descriptions.get(layer.index)
        if text:
            text = re.sub(r"^\[[^\]]*\] ", "", text)
            text = " ".join(text.split())
            for line, orig in norm:
                if orig == text or (len(text) > 12 and orig[:40] == text[:40]):
                    layer.line = line
                    break


def _records(store: Any) -> list[dict[str, Any]]:
    """The cache records, read-only (an absent table or database is no records)."""
    try:
        cur = store.db.execute("SELECT key, parent, slot, description, chain_id, inputs, created "
                               "FROM cache_records")
        rows = cur.fetchall()
    except (sqlite3.Error, OSError, PybuildError):
        return []
    return [{"key": key, "parent": parent, "slot": slot, "description": description,
             "chain_id": chain_id, "inputs_json": inputs, "created": float(created)}
            for key, parent, slot, description, chain_id, inputs, created in rows]


def _inputs(rec: dict[str, Any]) -> dict[str, Any]:
    """A record's inputs, parsed when first asked for: only the records of this image's
    steps and the steps above them are, not every record of the store (a COPY's inputs
    hold a line per file: parsing all of a busy store's took ~90 MB and 0.1 s)."""
    parsed = rec.get("inputs")
    if parsed is None:
        try:
            parsed = json.loads(rec.get("inputs_json") or "{}")
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        rec["inputs"] = parsed
    return parsed


def advise(store: Any, name: str, *, dockerfile: str | None = None, dockerfile_name: str =
           "Dockerfile", context: Path | None = None, built_layers_only: bool = False) -> Advice:
    """Read the image `name` from the store and say what its layers cost.

    `built_layers_only` (the line after a build) skips reading layers no build step of this
    store made (an imported or pulled base): far less to decompress, and the base's own
    leftovers are not this Dockerfile's to fix."""
    from pybuild import image as imagemod
    from pybuild.snapshot import built_members, chain_ids

    img = imagemod.load(store, name)
    descs = img.layers
    history = _history_for_layers(img.config, len(descs))
    records = _records(store)
    by_chain = {}
    for rec in sorted(records, key=lambda r: r["created"]):
        by_chain[rec["chain_id"]] = rec
    chains = chain_ids(img.diff_ids) if len(img.diff_ids) == len(descs) else []
    layers = []
    for i, desc in enumerate(descs):
        if built_layers_only and (i >= len(chains) or chains[i] not in by_chain):
            layers.append(Layer(i, history[i], {}, [], []))
            continue
        # a layer a build made here: its member list, noted when it was written
        noted = built_members(store, chains[i], img.diff_ids[i]) \
            if i < len(chains) and chains[i] in by_chain else None
        if noted is not None:
            layers.append(layer_of(noted, i, history[i]))
            continue
        with store.open_blob(desc.digest) as f:
            layers.append(read_layer(f, i, history[i]))
    descriptions = {i: by_chain[c]["description"] for i, c in enumerate(chains) if c in by_chain}
    _lines_for(layers, dockerfile, descriptions)
    alive, hidden = visible_files(layers)
    size = sum(s for layer in layers for s in layer.files.values())
    advice = Advice(name, size, sum(h[1] for h in hidden))
    where = _Where(layers, dockerfile_name)
    advice.items += _wasted(hidden, where)
    advice.items += _leftovers(alive, where)
    advice.items += _cache_order(records, [by_chain.get(c) for c in chains], where)
    advice.items += _config_notes(img.config, where)
    if context is not None:
        advice.items += context_advice(context)
    return advice


class _Where:
    def __init__(self, layers: list[Layer], filename: str) -> None:
        self.layers = layers
        self.filename = filename

    def __call__(self, index: int) -> tuple[str, int | None]:
        layer = self.layers[index]
        made = re.sub(r"^RUN (\|\d+ (\S+=\S* )+)?/bin/sh -c ", "RUN ", layer.created_by)
        made = made.removesuffix(" # buildkit")
        what = made[:60] + ("…" if len(made) > 60 else "")
        text = f"layer {index + 1}" + (f" ({what})" if what else "")
        if layer.line:
            text = f"{self.filename}:{layer.line}, {text}"
        return text, layer.line


def _top_dirs(paths: list[tuple[str, int]], limit: int = 3) -> str:
    sizes: dict[str, int] = defaultdict(int)
    for path, size in paths:
        parts = path.split("/")
        sizes["/" + "/".join(parts[:min(len(parts) - 1, 3)] or parts[:1])] += size
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{d} {human_size(s)}" for d, s in top)


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


def _wasted(hidden: list[tuple[str, int, int, int]], where: _Where) -> list[Item]:
    groups: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
    for path, size, written, hidden_by in hidden:
        groups[(written, hidden_by)].append((path, size))
    items = []
    for (written, hidden_by), paths in sorted(groups.items(), key=lambda kv: -sum(s for _, s in kv[1])):
        total = sum(s for _, s in paths)
        if total < MIN_BYTES:
            continue
        w_text, line = where(written)
        h_text, h_line = where(hidden_by)
        if line is None and h_line is not None:
            # written by the base image, replaced by a step of this Dockerfile: that step is
            # where to look (often package databases apt rewrites: little to gain)
            items.append(Item(
                "wasted-bytes",
                f"{_files(len(paths))} of the base image ({w_text}) {'are' if len(paths) != 1 else 'is'}"
                f" replaced here, so both copies ship ({_top_dirs(paths)})",
                h_text, human_size(total),
                "expected for package databases; for anything larger, change it in the base "
                "image or in a build stage",
                bytes=total, layer=hidden_by + 1, line=h_line))
            continue
        items.append(Item(
            "wasted-bytes",
            f"{_files(len(paths))} written here {'are' if len(paths) != 1 else 'is'} overwritten "
            f"or deleted in {h_text}, yet still ship ({_top_dirs(paths)})",
            w_text, human_size(total),
            "make and remove them in the same RUN, or build them in another stage and COPY "
            "--from only the result",
            bytes=total, layer=written + 1, line=line))
    return items


_LEFTOVERS: list[tuple[str, re.Pattern[str], str, str]] = [
    ("apt-lists", re.compile(r"var/lib/apt/lists/(?!lock$|partial(/|$)).+"),
     "apt package lists",
     ("end the RUN that runs apt-get update with `&& rm -rf /var/lib/apt/lists/*`, or mount "
     "them: --mount=type=cache,target=/var/lib/apt/lists")),
    ("apt-archives", re.compile(r"var/cache/apt/archives/.+\.deb"), "downloaded .deb files",
     "`apt-get clean` in the same RUN, or --mount=type=cache,target=/var/cache/apt"),
    ("pip-cache", re.compile(r"(root|home/[^/]+)/\.cache/pip/.+"), "pip's download cache",
     "pip install --no-cache-dir, or RUN --mount=type=cache,target=/root/.cache/pip"),
    ("npm-cache", re.compile(r"(root|home/[^/]+)/(\.npm/_cacache|\.cache/yarn)/.+|"
                             r"usr/local/share/\.cache/yarn/.+"), "npm/yarn cache",
     "npm ci --cache /tmp/npm && rm -rf /tmp/npm, or --mount=type=cache,target=/root/.npm"),
    # installed packages are compiled on purpose (pip does it); bytecode elsewhere is the
    # application's, written by a build step or copied from the developer's checkout
    ("bytecode", re.compile(r"(?!.*(/lib/python[0-9.]*/|/site-packages/|/dist-packages/))"
                            r"(?!usr/lib/).*__pycache__/.+\.pyc"),
     "Python bytecode copied from the build context",
     "add `**/__pycache__` and `**/*.pyc` to .dockerignore"),
    ("compilers", re.compile(r"usr/(lib|libexec)/gcc/.+|usr/bin/(x86_64-linux-gnu-|aarch64-linux-"
                             r"gnu-)?(gcc|g\+\+|cc1|c\+\+|clang)[-0-9.]*|usr/include/.+"),
     "compilers and C headers in the final stage",
     ("install them in a build stage only (e.g. one that builds wheels) and COPY --from or "
     "bind-mount its output into a runtime stage without them")),
]


def _leftovers(alive: dict[str, tuple[int, int]], where: _Where) -> list[Item]:
    found: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    for path, (layer, size) in alive.items():
        for kind, pattern, _, _ in _LEFTOVERS:
            if pattern.fullmatch(path):
                found[(kind, layer)].append((path, size))
                break
    items = []
    meta = {k: (label, fix) for k, _, label, fix in _LEFTOVERS}
    for (kind, layer), paths in sorted(found.items(), key=lambda kv: -sum(s for _, s in kv[1])):
        total = sum(s for _, s in paths)
        if total < (BYTECODE_MIN if kind == "bytecode" else MIN_BYTES):
            continue
        label, fix = meta[kind]
        text, line = where(layer)
        if kind == "bytecode" and line is None and not where.layers[layer].created_by.startswith(
                ("COPY", "ADD", "RUN")):
            continue  # the base image's own: not this Dockerfile's to fix
        if kind == "bytecode" and not where.layers[layer].created_by.startswith(("COPY", "ADD")):
            label = "Python bytecode written while building"
            fix = ("ENV PYTHONDONTWRITEBYTECODE=1 before the step that runs Python, or delete "
                   "the __pycache__ directories in that RUN")
        items.append(Item(kind, f"{label}: {_files(len(paths))} ({_top_dirs(paths, 2)})",
                          text, human_size(total), fix, bytes=total, layer=layer + 1, line=line))
    return items


def _cache_order(records: list[dict[str, Any]], chain: list[dict[str, Any] | None],
                 where: _Where) -> list[Item]:
    """Steps of this image that re-ran with their own inputs unchanged, after a COPY/ADD whose
    files changed: the classic `COPY . .` before `pip install`."""
    by_key = {r["key"]: r for r in records}
    by_slot: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["slot"]:
            by_slot[r["slot"]].append(r)
    items = []
    for index, rec in enumerate(chain):
        if rec is None or not rec["slot"]:
            continue
        runs = sorted(by_slot[rec["slot"]], key=lambda r: r["created"])
        own = _own_inputs(_inputs(rec))
        above = by_key.get(rec["parent"])
        # the same instruction under the same instruction: another Dockerfile that had a
        # step at this position is not this step's history
        reruns = [r for r in runs if _own_inputs(_inputs(r)) == own
                  and _same_step(by_key.get(r["parent"]), above)]
        if len(reruns) < 2:
            continue
        culprits = []
        durations = []
        for r in reruns[1:]:
            parent = by_key.get(r["parent"])
            cause = _changed_copy_above(parent, by_key, by_slot)
            if cause is not None:
                culprits.append(cause)
            if parent is not None and 0 <= r["created"] - parent["created"] < 3600:
                durations.append(r["created"] - parent["created"])
        if not culprits:
            continue
        seconds = sum(durations) / len(durations) if durations else 0.0
        installs = _INSTALL.search(rec["description"]) is not None
        if (durations and seconds < 1.0) or (not installs and seconds < SLOW_STEP):
            continue  # a step that uses the sources must re-run; only a slow one is news
        cause = culprits[-1]
        step = _step_text(rec["description"])
        text, line = where(index)
        items.append(Item(
            "cache-order",
            f"`{step}` re-ran {len(culprits)} time{'s' if len(culprits) != 1 else ''} with "
            f"unchanged inputs because `{cause}` above it copied changed files",
            text, f"≈{seconds:.1f}s each" if durations else "",
            "copy only what the step needs first (e.g. COPY requirements.txt, then RUN pip "
            "install), and the rest of the sources after it",
            seconds=round(seconds, 3), layer=index + 1, line=line))
    return items


_INSTALL = re.compile(r"\b(pip3?|npm|yarn|pnpm|apt-get|apt|apk|dnf|yum|poetry|uv|bundle|cargo|"
                      r"composer|gem|go mod)\b.*\b(install|ci|add|sync|fetch|download|wheel)\b")
SLOW_STEP = 10.0  # seconds: a step this slow that re-runs is worth a look even if it reads sources


def _step_text(description: str) -> str:
    """A step's name for a sentence: no `[stage n/m]`, no --mount flags, one line, short."""
    text = re.sub(r"^\[[^\]]*\] ", "", description)
    text = re.sub(r"\s--mount=\S+", "", " ".join(text.split()))
    return text[:60] + ("…" if len(text) > 60 else "")


def _same_step(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    strip = ("base", "files")
    return a["slot"] == b["slot"] and \
        {k: v for k, v in _inputs(a).items() if k not in strip} == \
        {k: v for k, v in _inputs(b).items() if k not in strip}


def _own_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """A step's inputs without the base image, to compare (as dicts: a COPY's hold a line
    per file, and encoding them to compare cost more than the comparison)."""
    return {k: v for k, v in inputs.items() if k != "base"}


def _changed_copy_above(rec: dict[str, Any] | None, by_key: dict[str, dict[str, Any]],
                        by_slot: dict[str, list[dict[str, Any]]]) -> str | None:
    """The nearest COPY/ADD at or above `rec` whose files differ from its previous build."""
    seen = 0
    while rec is not None and seen < 200:
        seen += 1
        if "files" in _inputs(rec):
            earlier = [r for r in by_slot.get(rec["slot"], []) if r["created"] < rec["created"]]
            if earlier and _inputs(max(earlier, key=lambda r: r["created"])).get("files") \
                    != _inputs(rec)["files"]:
                return _step_text(rec["description"])
        rec = by_key.get(rec["parent"])
    return None


def _config_notes(config: dict[str, Any], where: _Where) -> list[Item]:
    from pybuild.dockerfile.checks import is_secret_name

    inner = config.get("config") or {}
    items = []
    user = str(inner.get("User") or "")
    if user.split(":", 1)[0] in ("", "root", "0"):
        items.append(Item("runs-as-root", f"the container runs as {user or 'root (no USER)'}",
                          "image config User", "",
                          "create a user with a fixed uid in a RUN and end with USER uid:gid"))
    for item in inner.get("Env") or []:
        key = str(item).partition("=")[0]
        if is_secret_name(key):
            items.append(Item("secret-in-config", f"ENV {key} is stored in the image config, "
                              "readable by anyone who has the image", "image config Env", "",
                              "pass it at run time (-e) or to the RUN that needs it as "
                              "--mount=type=secret"))
    for h in config.get("history") or []:
        m = re.match(r"(?:RUN )?\|\d+ ((?:\S+=\S* )+)", str(h.get("created_by", "")))
        for pair in (m.group(1).split() if m else []):
            key = pair.partition("=")[0]
            if is_secret_name(key):
                items.append(Item("secret-in-config", f"build arg {key} is recorded in the image "
                                  "history of a RUN step", "image history", "",
                                  "use RUN --mount=type=secret,id=... instead of an ARG"))
    return items


# --- the build context ----------------------------------------------------------------------

IGNORE_WORTHY = (".git", "node_modules", ".venv", "venv", "__pycache__", ".tox", ".nox",
                 ".mypy_cache", ".pytest_cache", ".ruff_cache", "dist", "build", ".idea",
                 ".vscode", ".cache", "htmlcov", ".coverage", "target")
CONTEXT_MIN = 512_000


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path, followlinks=False):
        for f in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            total += st.st_size
    return total


def _ignore_worthy_dirs(root: Path, matcher: Any) -> Iterator[tuple[str, int]]:
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        keep = []
        for d in dirnames:
            rel = d if rel_dir == "." else f"{rel_dir}/{d}"
            if matcher.matches(rel):
                continue  # already excluded (re-included children are rare: not judged)
            if d in IGNORE_WORTHY or d.endswith(".egg-info"):
                yield rel, _du(Path(dirpath) / d)
            else:
                keep.append(d)
        dirnames[:] = keep


def context_advice(context: Path, dockerfile: Path | None = None) -> list[Item]:
    """Directories sent to every build that no image wants, largest first."""
    from pybuild.context import BuildContext

    try:
        ctx = BuildContext(context, dockerfile or context / "Dockerfile")
    except PybuildError:
        return []
    found = sorted(_ignore_worthy_dirs(ctx.root, ctx.matcher), key=lambda kv: -kv[1])
    items = []
    for rel, size in found:
        if size < CONTEXT_MIN:
            continue
        items.append(Item("large-context",
                          f"the build context includes {rel}/, which no image needs",
                          f"context {rel}/", human_size(size),
                          f"add `{rel.split('/')[-1] if '/' in rel else rel}` (or `**/{rel.split('/')[-1]}`) "
                          "to .dockerignore", bytes=size))
    return items


# --- output ------------------------------------------------------------------------------

def render_text(advice: Advice) -> str:
    out = [(f"{advice.image}: {human_size(advice.size)} in the layers, "
           f"{human_size(advice.wasted)} hidden by later layers (efficiency "
           f"{advice.efficiency:.1%})")]
    if not advice.items:
        out.append("no advice: nothing to remove, nothing re-runs needlessly")
    for i in advice.items:
        out.append("")
        out.append(f"{i.kind}: {i.what}")
        out.append(f"  where: {i.where}")
        if i.how_much:
            out.append(f"  how much: {i.how_much}")
        out.append(f"  fix: {i.fix}")
    return "\n".join(out) + "\n"
