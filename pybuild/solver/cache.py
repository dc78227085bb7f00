"""Build cache records: what each step produced, keyed by everything that went into it.

key(step) = sha256(key version, parent key, the step's inputs) (`ops.compute_key`). The
inputs are kept beside the record so that a miss can be explained against the last build
of the same step: its `step` column names the context, Dockerfile, stage and position
(`ops.StepId`), never a sibling that happens to share the parent.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from pybuild.context import go_clean
from pybuild.errors import PybuildError
from pybuild.solver.ops import compute_key
from pybuild.store import Descriptor, Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_records (
    key TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    slot TEXT NOT NULL,
    description TEXT NOT NULL,
    layer_digest TEXT NOT NULL,
    layer_media_type TEXT NOT NULL,
    layer_size INTEGER NOT NULL,
    diff_id TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    inputs TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS cache_records_slot ON cache_records(slot, created);
"""
# Migrations, in order: each runs once on a database that lacks its column.
_MIGRATIONS = [
    ("step", "ALTER TABLE cache_records ADD COLUMN step TEXT NOT NULL DEFAULT ''",
     "CREATE INDEX IF NOT EXISTS cache_records_step ON cache_records(step, created)"),
]
__all__ = ["Cache", "Record", "compute_key", "explain"]

_COLUMNS = ("key, parent, slot, description, layer_digest, layer_media_type, layer_size, "
            "diff_id, chain_id, inputs, created, last_used, hits, step")


def key_path(path: str) -> str:
    """A source path as its key holds it: what it names, not how it is written
    ("a.txt", "./a.txt" and "/a.txt" are one context file)."""
    return go_clean("/" + path)


@dataclass
class Record:
    key: str
    parent: str
    slot: str
    description: str
    layer: Descriptor
    diff_id: str
    chain_id: str
    # the inputs, or their JSON as the database holds it: parsed on first use (a hit
    # needs only the layer, and a COPY's inputs hold every file's line)
    inputs_or_json: dict[str, Any] | str
    created: float
    last_used: float
    hits: int = 0
    step: str = ""  # ops.StepId.text() of the step that made it; "" for remote records

    @property
    def inputs(self) -> dict[str, Any]:
        if isinstance(self.inputs_or_json, str):
            parsed: dict[str, Any] = json.loads(self.inputs_or_json)
            self.inputs_or_json = parsed
            return parsed
        return self.inputs_or_json


class Cache:
    """Cache records in the store's SQLite database (WAL; safe across processes)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.lock():  # schema changes, like the WAL switch, are serialised
            self.db.executescript(_SCHEMA)
            have = {r[1] for r in self.db.execute("PRAGMA table_info(cache_records)")}
            for column, *statements in _MIGRATIONS:
                if column not in have:
                    with self.db:
                        for sql in statements:
                            self.db.execute(sql)

    @property
    def db(self) -> sqlite3.Connection:
        """The calling thread's connection (steps record from several threads)."""
        return self.store.db

    def lookup(self, key: str) -> Record | None:
        """A record whose layer blob is still in the store, or None."""
        row = self.db.execute(f"SELECT {_COLUMNS} FROM cache_records WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        rec = _record(row)
        if not self.store.has_blob(rec.layer.digest):
            return None
        return rec

    def hit(self, key: str) -> None:
        self.hits([key])

    def hits(self, keys: list[str]) -> None:
        """Count a use of each record, in one transaction (a warm build's only write)."""
        if not keys:
            return
        now = time.time()
        with self.db:
            self.db.executemany("UPDATE cache_records SET hits = hits + 1, last_used = ? "
                                "WHERE key = ?", [(now, k) for k in keys])

    def put(self, rec: Record) -> None:
        with self.db:
            self.db.execute(
                f"INSERT OR REPLACE INTO cache_records ({_COLUMNS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.key, rec.parent, rec.slot, rec.description, rec.layer.digest,
                 rec.layer.media_type, rec.layer.size, rec.diff_id, rec.chain_id,
                 json.dumps(rec.inputs, sort_keys=True), rec.created, rec.last_used, rec.hits,
                 rec.step))

    def previous(self, step: str) -> Record | None:
        """What to explain a miss against: the latest record of the same step (same
        context, Dockerfile, stage and position), or None on its first build."""
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM cache_records WHERE step = ? ORDER BY created DESC LIMIT 1",
            (step,)).fetchone()
        return _record(row) if row else None

    def all(self) -> list[Record]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM cache_records ORDER BY last_used DESC").fetchall()
        return [_record(r) for r in rows]

    def get(self, prefix: str) -> Record:
        """A record by key or unique key prefix (with or without `sha256:`)."""
        hexpart = prefix.split(":", 1)[-1].lower()
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM cache_records WHERE key LIKE ?",
                               (f"sha256:{hexpart}%",)).fetchall()
        if not rows:
            raise PybuildError(f"no cache record {prefix}")
        if len(rows) > 1:
            raise PybuildError(f"cache record id {prefix} is ambiguous ({len(rows)} match)")
        return _record(rows[0])

    def remove(self, keys: list[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM cache_records WHERE key = ?", [(k,) for k in keys])


def _record(row: tuple[Any, ...]) -> Record:
    (key, parent, slot, description, digest, media_type, size, diff_id, chain_id, inputs,
     created, last_used, hits, step) = row
    return Record(key, parent, slot, description, Descriptor(media_type, digest, size), diff_id,
                  chain_id, inputs, created, last_used, hits, step)


def explain(prev: Record | None, parent: str, inputs: dict[str, Any]) -> str:
    """One line saying why a step is rebuilt, comparing with the last build of this step."""
    if prev is None:
        return "no earlier build of this step"
    reasons: list[str] = []
    if prev.parent != parent:
        if inputs.get("base") and prev.inputs.get("base") != inputs.get("base"):
            reasons.append(f"base image moved ({_short(prev.inputs.get('base'))} → "
                           f"{_short(inputs.get('base'))})")
        else:
            reasons.append("an earlier step changed")
    old_files = prev.inputs.get("files")
    new_files = inputs.get("files")
    if isinstance(old_files, dict) and isinstance(new_files, dict) and old_files != new_files:
        reasons.append(_files_changed(old_files, new_files))
    reasons.extend(_binds_changed(prev.inputs.get("bind_sources") or [],
                                  inputs.get("bind_sources") or []))
    for name in sorted(set(prev.inputs) | set(inputs)):
        if name in ("files", "base", "bind_sources"):
            continue
        old, new = prev.inputs.get(name), inputs.get(name)
        if old == new:
            continue
        label = _LABELS.get(name, name)
        if isinstance(old, dict) and isinstance(new, dict):
            for k in sorted(set(old) | set(new)):
                if old.get(k) != new.get(k):
                    reasons.append(f"{label} {k} changed ({_val(old.get(k))} → {_val(new.get(k))})")
        else:
            reasons.append(f"{label} changed ({_val(old)} → {_val(new)})")
    return "; ".join(reasons) if reasons else "cache record missing (pruned)"


_LABELS = {"argv": "command", "args": "build arg", "env": "env", "cwd": "working dir",
           "user": "user", "network": "network", "mounts": "mounts", "dest": "destination",
           "chown": "--chown", "chmod": "--chmod", "sources": "sources", "from": "source",
           "path": "path", "exclude": "--exclude", "heredocs": "heredoc", "urls": "URLs",
           "downloads": "downloaded content", "checksum": "--checksum",
           "hostname": "hostname", "git": "git source", "unpack": "--unpack"}


def _binds_changed(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """What changed behind RUN --mount=type=bind mounts, per target."""
    if len(old) != len(new):
        return ["bind mounts changed"] if old != new else []
    out = []
    for o, n in zip(old, new):
        if o == n:
            continue
        where = f"bind mount {n.get('target')}"
        if isinstance(o.get("files"), dict) and isinstance(n.get("files"), dict) \
                and o.get("source") == n.get("source"):
            out.append(f"{where}: {_files_changed(o['files'], n['files'])}")
        elif o.get("from") != n.get("from") and o.get("source") == n.get("source"):
            out.append(f"{where}: its source changed")
        else:
            out.append(f"{where} changed")
    return out


def _files_changed(old: dict[str, str], new: dict[str, str]) -> str:
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed: list[str] = []
    for path in sorted(set(old) & set(new)):
        if old[path] == new[path]:
            continue
        o, n = old[path].split(" "), new[path].split(" ")
        # signature: "type mode uid:gid target-or-sha"
        what = []
        if o[0] != n[0]:
            what.append("type")
        if o[1] != n[1]:
            what.append("mode")
        if o[2] != n[2]:
            what.append("owner")
        if o[3:] != n[3:]:
            what.append("content")
        changed.append(f"{path} ({'/'.join(what)})")
    parts = []
    for label, items in (("added", added), ("removed", removed), ("changed", changed)):
        if items:
            shown = ", ".join(items[:3])
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{label} {shown}{more}")
    return "files " + "; ".join(parts)  # e.g. "files changed app/views.py (content); added x"


def _short(digest: Any) -> str:
    s = str(digest)
    return s.split(":", 1)[-1][:12] if ":" in s else s


def _val(v: Any) -> str:
    if v is None:
        return "unset"
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."
