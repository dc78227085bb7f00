"""A malicious registry on loopback, served by the test itself.

It speaks just enough of the distribution API (/v2/, manifests, blobs, uploads, a token
realm) for pybuild to pull from and push to it, and every answer can be replaced by a
crafted one: any bytes for a manifest, index or config, a redirect anywhere (file://,
itself), a body that trickles a few bytes a second, a Content-Length that lies, an endless
body, a token endpoint that answers garbage. The tests in tests/security/test_hostile_registry.py
use it to show that each of these ends in one clear error, leaves the store as it was and
never hangs.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from registry_fixtures import _Server

from pybuild.image import host_platform

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1700000000
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Reply:
    """One crafted answer.

    `rate` (bytes/s) trickles the body; `length` overrides the Content-Length header
    (None: the true length, -1: none, chunked-free: the body just ends at close);
    `endless` repeats the body for ever (until the client goes away); `cut` closes the
    connection after that many body bytes; `delay` is silence after the headers;
    `head_rate` (bytes/s) trickles the status line and headers themselves.
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    rate: float | None = None
    length: int | None = None
    endless: bool = False
    cut: int | None = None
    delay: float = 0.0  # silence between the headers and the body
    head_rate: float | None = None


@dataclass
class Image:
    """A valid single-layer image as the hostile registry serves it (until altered)."""

    config: bytes
    layer: bytes
    manifest: bytes

    @property
    def manifest_digest(self) -> str:
        return sha256(self.manifest)


def make_image(files: dict[str, bytes] | None = None, *, config: dict[str, Any] | None = None,
               manifest: dict[str, Any] | None = None) -> Image:
    """A small valid image; `config`/`manifest` keys replace the generated ones."""
    layer = layer_tar(files or {"hello.txt": b"hello from a hostile registry\n"})
    plat = host_platform()
    cfg: dict[str, Any] = {"architecture": plat["architecture"], "os": plat["os"],
                           "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
                           "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
                           "history": [{"created_by": "test"}]}
    cfg.update(config or {})
    config_bytes = canonical(cfg)
    man: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config_bytes),
                   "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}]}
    man.update(manifest or {})
    return Image(config_bytes, layer, canonical(man))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    @property
    def registry(self) -> HostileRegistry:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def _answer(self) -> None:
        reg = self.registry
        path = self.path.split("?", 1)[0]
        with reg.lock:
            reg.requests.append((self.command, self.path))
            if self.headers.get("Authorization"):
                reg.authorizations.append((self.path, self.headers["Authorization"]))
        length = int(self.headers.get("Content-Length") or 0)
        if length and self.command in ("PUT", "PATCH", "POST"):
            self.rfile.read(length)
        reply = reg.route(self.command, path, self)
        if reply is None:
            reply = Reply(404, canonical({"errors": [{"code": "NOT_FOUND",
                                                       "message": "not here"}]}))
        self._send(reply)

    def _send(self, r: Reply) -> None:
        self.send_response(r.status)
        headers = {"Docker-Distribution-API-Version": "registry/2.0", **r.headers}
        declared = len(r.body) if r.length is None else r.length
        if r.endless and r.length is None:
            declared = -1
        for k, v in headers.items():
            self.send_header(k, v)
        if declared >= 0:
            self.send_header("Content-Length", str(declared))
        else:
            self.send_header("Connection", "close")
        if r.head_rate:
            head = b"".join(getattr(self, "_headers_buffer", [])) + b"\r\n"
            self._headers_buffer = []  # type: ignore[attr-defined]
            if not self._trickle(head, r.head_rate):
                return
        else:
            self.end_headers()
        if self.command == "HEAD" or not r.body:
            return
        try:
            self._write_body(r)
        except (BrokenPipeError, ConnectionResetError):
            return
        if r.cut is not None or declared < 0 or declared != len(r.body):
            self.close_connection = True

    def _trickle(self, data: bytes, rate: float) -> bool:
        """Write `data` a byte at a time at `rate` bytes/s; False when the client left."""
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                if self.registry.stopping.wait(1 / rate):
                    return False
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _write_body(self, r: Reply) -> None:
        reg = self.registry
        if r.delay and reg.stopping.wait(r.delay):
            return
        sent = 0
        step = max(1, int(r.rate)) if r.rate else 1 << 16
        while not reg.stopping.is_set():
            for i in range(0, len(r.body), step):
                piece = r.body[i:i + step]
                if r.cut is not None and sent + len(piece) > r.cut:
                    piece = piece[:r.cut - sent]
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                if r.cut is not None and sent >= r.cut:
                    return
                if r.rate and reg.stopping.wait(len(piece) / r.rate):
                    return
            if not r.endless:
                return

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _answer


class HostileRegistry(_Server):
    """Serves images whose every answer a test may replace.

    `blobs` and `manifests` hold what a well-behaved registry would serve (keyed by
    digest, and by "repo:tag" / "repo@digest"); `overrides[(METHOD, path)]` replaces any
    answer; `handler(method, path)` (when set) is asked first and may return a Reply.
    """

    def __init__(self) -> None:
        super().__init__(_Handler)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[tuple[str, str]] = []  # (path, Authorization) as sent
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.overrides: dict[tuple[str, str], Reply] = {}
        self.handler: Callable[[str, str], Reply | None] | None = None
        self.challenge: str | None = None  # a WWW-Authenticate header for /v2/
        self.token_reply: Reply | None = None

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        super().__exit__(*exc)

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"{self.addr}/{repo}:{tag}"

    def serve_image(self, repo: str, tag: str, img: Image) -> Image:
        self.blobs[sha256(img.config)] = img.config
        self.blobs[sha256(img.layer)] = img.layer
        self.serve_manifest(repo, tag, img.manifest)
        return img

    def serve_manifest(self, repo: str, tag: str, body: bytes,
                       media_type: str = OCI_MANIFEST) -> None:
        for key in (f"{repo}:{tag}", f"{repo}@{sha256(body)}", f"{repo}@{sha512(body)}"):
            self.manifests[key] = (body, media_type)

    def route(self, method: str, path: str, req: BaseHTTPRequestHandler) -> Reply | None:
        if (method, path) in self.overrides:
            return self.overrides[(method, path)]
        if self.handler is not None:
            got = self.handler(method, path)
            if got is not None:
                return got
        if path == "/token":
            return self.token_reply or Reply(200, canonical({"token": "t0k3n"}),
                                              {"Content-Type": "application/json"})
        if path == "/v2/":
            if self.challenge and not req.headers.get("Authorization"):
                return Reply(401, b"{}", {"WWW-Authenticate": self.challenge})
            return Reply(200, b"{}", {"Content-Type": "application/json"})
        if self.challenge and not req.headers.get("Authorization"):
            return Reply(401, b"{}", {"WWW-Authenticate": self.challenge})
        if "/blobs/uploads/" in path:
            repo = path[len("/v2/"):path.index("/blobs/uploads/")]
            return Reply(202, b"", {"Location": f"/v2/{repo}/blobs/uploads/u1"})
        parts = path.split("/")
        if len(parts) >= 5 and parts[1] == "v2":
            kind, last = parts[-2], parts[-1]
            repo = "/".join(parts[2:-2])
            if kind == "manifests":
                key = f"{repo}@{last}" if ":" in last else f"{repo}:{last}"
                if key in self.manifests:
                    body, media_type = self.manifests[key]
                    return Reply(200, body, {"Content-Type": media_type,
                                             "Docker-Content-Digest": sha256(body)})
            if kind == "blobs" and last in self.blobs:
                return Reply(200, self.blobs[last], {"Content-Type": "application/octet-stream"})
        return None


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()
