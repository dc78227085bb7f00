"""ADD <url> is keyed on what the server sends now, as BuildKit's HTTP source does.

Each build revalidates the last download (If-None-Match with its ETag, If-Modified-Since
with its Last-Modified): a 304 reuses it, new content is downloaded and moves the key,
so a changed file is never served from a stale cache. Servers run on loopback.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Pybuild
from test_cache import build, ctx_with

from pybuild.solver.copy import fetch_url


@dataclass
class Origin:
    """What the loopback server serves, and what it saw."""

    body: bytes = b"version 1\n"
    etag: bool = True             # validators it sends: an ETag, or else Last-Modified
    modified: str = "Wed, 21 Oct 2015 07:28:00 GMT"
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (If-None-Match, If-Modified-Since, status)
    url: str = ""

    def tag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


@pytest.fixture
def origin() -> Iterator[Origin]:
    state = Origin()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            inm = self.headers.get("If-None-Match", "")
            ims = self.headers.get("If-Modified-Since", "")
            fresh = (state.etag and inm == state.tag()) or (not state.etag and ims == state.modified)
            status = 304 if fresh else 200
            state.seen.append((inm, ims, status))
            self.send_response(status)
            if state.etag:
                self.send_header("ETag", state.tag())
            else:
                self.send_header("Last-Modified", state.modified)
            if status == 304:
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/dl/tool.txt"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("etag", [True, False], ids=["etag", "last-modified"])
def test_fetch_revalidates_and_sees_changes(tmp_path: Path, origin: Origin, etag: bool) -> None:
    origin.etag = etag
    cache = tmp_path / "http-cache"
    first = fetch_url(cache, origin.url, 2)
    assert first.path.read_bytes() == b"version 1\n" and first.name == "tool.txt"
    assert origin.seen[-1] == ("", "", 200)
    again = fetch_url(cache, origin.url, 2)          # unchanged: the server answers 304
    assert origin.seen[-1][2] == 304 and again.digest == first.digest
    if etag:
        assert origin.seen[-1][0] == origin.tag()
    else:
        assert origin.seen[-1][1] == origin.modified
    origin.body = b"version 2\n"
    origin.modified = "Thu, 22 Oct 2015 07:28:00 GMT"
    changed = fetch_url(cache, origin.url, 2)
    assert origin.seen[-1][2] == 200 and changed.digest != first.digest
    assert changed.path.read_bytes() == b"version 2\n"
    assert changed.digest == "sha256:" + hashlib.sha256(b"version 2\n").hexdigest()


def test_a_damaged_cache_entry_is_downloaded_again(tmp_path: Path, origin: Origin) -> None:
    cache = tmp_path / "http-cache"
    first = fetch_url(cache, origin.url, 2)
    (first.path.parent / "meta.json").write_text("{not json")
    again = fetch_url(cache, origin.url, 2)
    assert origin.seen[-1] == ("", "", 200) and again.digest == first.digest
    assert [p.name for p in cache.iterdir()] == [hashlib.sha256(origin.url.encode()).hexdigest()]


DF = "FROM busybox\nADD {url} /opt/\nRUN cat /opt/tool.txt > /copy\n"


@pytest.mark.root
@pytest.mark.parametrize("etag", [True, False], ids=["etag", "last-modified"])
def test_a_changed_download_reruns_the_step(busybox: Pybuild, tmp_path: Path, origin: Origin,
                                            etag: bool) -> None:
    origin.etag = etag
    ctx = ctx_with(tmp_path, DF.format(url=origin.url))
    add = f"[2/3] ADD {origin.url} /opt/"
    assert build(busybox, ctx, "-t", "app")[add] == "no earlier build of this step"
    # the same bytes (the server answers 304): every step cached
    result = build(busybox, ctx, "-t", "app")
    assert {v for k, v in result.items() if "FROM" not in k} == {"CACHED"}
    assert origin.seen[-1][2] == 304
    # new bytes: the ADD and what follows rerun, and the image has them
    origin.body = b"version 2\n"
    origin.modified = "Thu, 22 Oct 2015 07:28:00 GMT"
    result = build(busybox, ctx, "-t", "app")
    assert result[add] != "CACHED" and result["[3/3] RUN cat /opt/tool.txt > /copy"] != "CACHED"
    out = busybox("run", "--rm", "--network", "none", "app", "cat", "/copy", "/opt/tool.txt")
    assert out.stdout == "version 2\nversion 2\n"


@pytest.mark.root
def test_cache_prune_removes_downloads_no_kept_record_names(pybuild: Pybuild, tmp_path: Path,
                                                           origin: Origin) -> None:
    """`cache prune` removes the http-cache entries (ADD <url> downloads) that no kept cache
    record names, `--all` every one, and counts their bytes; an entry being downloaded (its
    lock held) is left alone. On main http-cache/ was never pruned."""
    import fcntl
    import re

    from pybuild.solver.copy import http_cache_entry

    base = origin.url.rsplit("/", 1)[0]
    kept, dropped, orphan, busy = (f"{base}/{n}.txt" for n in ("kept", "dropped", "orphan", "busy"))
    origin.body = b"x" * 5000
    for url, tag in ((kept, ["-t", "keep"]), (dropped, [])):
        where = tmp_path / ("tagged" if tag else "untagged")
        where.mkdir()
        ctx = ctx_with(where, f"FROM scratch\nADD {url} /\n")
        pybuild("build", *tag, str(ctx))
    cache = pybuild.root / "http-cache"
    fetch_url(cache, orphan, None)   # a download whose record was pruned before
    fetch_url(cache, busy, None)
    entry = {u: http_cache_entry(cache, u) for u in (kept, dropped, orphan, busy)}
    assert all(p.is_dir() for p in entry.values())

    dry = pybuild("cache", "prune", "--dry-run").stdout
    assert f"Would remove: download {dropped}" in dry and f"Would remove: download {orphan}" in dry
    assert all(p.is_dir() for p in entry.values())
    with open(entry[busy] / "lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = pybuild("cache", "prune").stdout
    assert f"Deleted: download {dropped}" in out and f"Deleted: download {orphan}" in out
    assert "3 downloads" not in out and "2 downloads" in out, out   # busy: locked, kept
    freed = re.search(r"Total: ([0-9.]+)kB reclaimed", out)
    assert freed and float(freed.group(1)) >= 10.0, out             # two 5,000-byte downloads
    assert entry[kept].is_dir() and entry[busy].is_dir()
    assert not entry[dropped].exists() and not entry[orphan].exists()

    out = pybuild("cache", "prune", "--all").stdout
    assert f"Deleted: download {kept}" in out and f"Deleted: download {busy}" in out, out
    assert list(cache.iterdir()) == []
