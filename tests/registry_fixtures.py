"""Registry test rigs: a restartable docker-registry with auth, a token issuer, a tampering proxy.

engines.registry_server() covers the plain case; these add what the registry client's
tests need: Basic (htpasswd) and token auth, stopping and restarting one registry on the
same port and storage (a push interrupted by the registry going away), a JWT issuer the
real registry verifies, and a proxy that counts requests and can corrupt blob bodies.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from engines import REGISTRY, _stop, _wait_for, free_port

SERVICE = "pybuild-test-registry"
ISSUER = "pybuild-test-issuer"


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry: from `htpasswd -Bbn` when installed, else from crypt(3)."""
    tool = shutil.which("htpasswd")
    if tool:
        out = subprocess.run([tool, "-Bbn", user, password], capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated in 3.11, still the stdlib's only bcrypt
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("neither htpasswd nor a bcrypt-capable crypt(3) is available")
    return f"{user}:{hashed}"


class Registry:
    """Debian's docker-registry on a fixed loopback port; storage survives stop/start."""

    def __init__(self, base: Path, auth: dict | None = None) -> None:
        if not REGISTRY.exists():
            pytest.skip(f"{REGISTRY} not installed (apt-get install docker-registry)")
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log = base / "registry.log"
        self.config = base / "config.yml"
        config: dict = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(base / "data")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.addr},
        }
        if auth:
            config["auth"] = auth
        self.config.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.proc: subprocess.Popen | None = None
        self.ready_url = f"http://{self.addr}/v2/"

    def start(self) -> Registry:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(REGISTRY), "serve", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            try:
                # Readiness only: a TLS registry's self-signed certificate is checked by tests.
                with urllib.request.urlopen(self.ready_url, timeout=2,
                                            context=ssl._create_unverified_context()):
                    return True
            except urllib.error.HTTPError:
                return True  # 401 from an auth-enabled registry: it is up
            except (urllib.error.URLError, OSError):
                return False

        _wait_for(ready, self.proc, "docker-registry", self.log, timeout=30)
        return self

    def kill(self) -> None:
        """SIGKILL: the registry vanishes mid-request, as a crash or a network cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server:
    """A ThreadingHTTPServer on a free loopback port, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class _ProxyHandler(BaseHTTPRequestHandler):
    """Forwards one request to the upstream registry, maybe flipping a byte of a blob."""

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        proxy: TamperingProxy = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with proxy.lock:
            proxy.requests.append((self.command, self.path))
        conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
        try:
            # Host stays the proxy's: the registry builds upload Locations from it. Headers
            # go one by one: clients repeat Accept, a dict would keep only the last.
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() != "connection":
                    conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            self.send_error(502)
            return
        finally:
            conn.close()
        if proxy.tamper and self.command == "GET" and "/blobs/sha256:" in self.path \
                and resp.status == 200 and data:
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0xFF
            data = bytes(flipped)
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class TamperingProxy(_Server):
    """An HTTP proxy in front of a registry: records (method, path), corrupts blobs on demand."""

    def __init__(self, upstream: str) -> None:
        super().__init__(_ProxyHandler)
        self.upstream = upstream
        self.tamper = False
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []

    def take(self) -> list[tuple[str, str]]:
        """The requests seen since the last call."""
        with self.lock:
            out, self.requests = self.requests, []
        return out


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _TokenHandler(BaseHTTPRequestHandler):
    """GET /token?service=..&scope=..: Basic-authenticated, answers a signed JWT."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        issuer: TokenIssuer = self.server.owner  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        user = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if issuer.users.get(name) == password:
                user = name
        if url.path != "/token" or user is None:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        scopes = query.get("scope", [])
        with issuer.lock:
            issuer.issued.append((user, tuple(scopes)))
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        token = issuer.sign(user, query.get("service", [""])[0], access)
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class TokenIssuer(_Server):
    """A token server for the distribution registry's `auth: token` mode.

    Found to work with distribution 2.8: RS256 JWTs whose header carries `x5c` (the
    signing certificate, base64 DER), that certificate being the registry's
    rootcertbundle; claims iss/aud/exp/nbf/iat/jti and `access`.
    """

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed")
        super().__init__(_TokenHandler)
        self.users = users
        self.lock = threading.Lock()
        self.issued: list[tuple[str, tuple[str, ...]]] = []
        self.key = workdir / "issuer.key"
        self.cert = workdir / "issuer.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(self.key), "-out", str(self.cert), "-subj", f"/CN={ISSUER}",
                        "-days", "2"], check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self._x5c = base64.b64encode(der).decode()

    @property
    def realm(self) -> str:
        return f"http://{self.addr}/token"

    def registry_auth(self) -> dict:
        """The `auth:` section of the registry config that trusts this issuer."""
        return {"token": {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.cert)}}

    def sign(self, user: str, service: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": ISSUER, "sub": user, "aud": service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}." \
                        f"{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(sig)}"
