"""A hostile registry for tests: serves whatever images the test crafts, on loopback.

It speaks just enough of the distribution API for `pybuild pull` and `--cache-from`
(GET/HEAD of /v2/, manifests and blobs). Images are written byte by byte by the test, so
a config can claim any diff_id, list any number of them, or name paths instead of
digests. A blob can be held back (`gate`) until the test lets it go.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line of a failed command (no traceback, non-zero exit)."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(*entries: tuple[str, str, Any]) -> bytes:
    """A tar from (name, kind, payload): kind is file, dir or sym."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, payload in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            data = b""
            if kind == "file":
                data = payload
                ti.size, ti.mode = len(data), 0o755
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, payload
            t.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


class HostileRegistry:
    """A threaded HTTP server on 127.0.0.1 with crafted manifests and blobs."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.gates: dict[str, threading.Event] = {}
        self.requested: dict[str, threading.Event] = {}
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: bytes, content_type: str, digest: str | None = None,
                        head: bool = False) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if digest:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _missing(self) -> None:
                body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/v2/":
                    return self._answer(b"{}", "application/json", head=head)
                if "/manifests/" in path:
                    repo, ref = path[len("/v2/"):].split("/manifests/", 1)
                    found = registry.manifests.get((repo, ref))
                    if found is None:
                        return self._missing()
                    return self._answer(found[0], found[1], sha256(found[0]), head)
                if "/blobs/" in path:
                    digest = path.rsplit("/blobs/", 1)[1]
                    if digest not in registry.blobs:
                        return self._missing()
                    registry.requested.setdefault(digest, threading.Event()).set()
                    gate = registry.gates.get(digest)
                    if gate is not None and not head:
                        gate.wait(timeout=120)
                    return self._answer(registry.blobs[digest], "application/octet-stream",
                                        digest, head)
                self._missing()

            def do_GET(self) -> None:
                self._serve(False)

            def do_HEAD(self) -> None:
                self._serve(True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.addr = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HostileRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for gate in self.gates.values():
            gate.set()
        self._server.shutdown()
        self._server.server_close()

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        """Serve `data`; returns its descriptor."""
        digest = sha256(data)
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(self, repo: str, tag: str, layers: list[bytes], *,
              diff_ids: list[Any] | None = None, config: dict[str, Any] | None = None) -> str:
        """Serve an image of plain-tar `layers` (gzipped here); the config claims `diff_ids`
        (default: the true ones). Returns the manifest digest."""
        packed = [gzip.compress(t, mtime=0) for t in layers]
        cfg = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
               "rootfs": {"type": "layers",
                          "diff_ids": [sha256(t) for t in layers] if diff_ids is None
                          else diff_ids}}
        cfg.update(config or {})
        return self.manifest(repo, tag, self.blob(json.dumps(cfg).encode(), OCI_CONFIG),
                             [self.blob(p, OCI_LAYER_GZIP) for p in packed])

    def manifest(self, repo: str, tag: str, config: dict[str, Any],
                 layers: list[dict[str, Any]]) -> str:
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                           "layers": layers}).encode()
        self.manifests[(repo, tag)] = (body, OCI_MANIFEST)
        self.manifests[(repo, sha256(body))] = (body, OCI_MANIFEST)
        return sha256(body)
