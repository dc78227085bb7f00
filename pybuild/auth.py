"""Registry credentials and the distribution auth flows (anonymous, Basic, Bearer tokens).

Users already logged in with `docker login`, so credentials come from the same
`~/.docker/config.json` docker reads (`auths`, `credHelpers`, `credsStore`), and `login`
writes an entry docker reads back. The token flow follows the distribution spec: the
registry's `WWW-Authenticate: Bearer realm=..,service=..,scope=..` challenge names a token
server; the token is asked for with the repository scopes the operation needs and cached
per (registry, scopes) until it expires, so a pull of many layers asks once.
"""

from __future__ import annotations

from typing import Any

import base64
import contextlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from pybuild.errors import PybuildError

# docker keeps Docker Hub credentials under its historic index URL.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# The distribution spec's default when a token response has no expires_in.
_DEFAULT_TOKEN_SECONDS = 60
# Renew a token this long before it expires, so it does not lapse mid-request.
_EXPIRY_MARGIN = 5.0
_TOKEN_TIMEOUT = (30.0, 60.0)
_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


class AuthError(PybuildError):
    """Credentials were refused or a token could not be had; the caller names the image."""

    def __init__(self, message: str, unauthorized: bool = False) -> None:
        super().__init__(message)
        self.unauthorized = unauthorized


@dataclass(frozen=True)
class Credentials:
    """A username and password (or token secret) for one registry."""

    username: str
    password: str


@dataclass(frozen=True)
class Challenge:
    """One parsed `WWW-Authenticate` challenge: scheme ("basic"/"bearer") and parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse `Bearer realm="..",service="..",scope=".."` (several challenges may follow)."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if m is None:
            break
        scheme = m.group(1).lower()
        rest = rest[m.end():]
        params: dict[str, str] = {}
        while True:
            p = _CHALLENGE_PARAM.match(rest)
            # A bare word without "=" starts the next challenge.
            if p is None or not p.group(0).strip():
                break
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            rest = rest[p.end():]
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out


def default_config_path() -> Path:
    """docker's client config: $DOCKER_CONFIG/config.json or ~/.docker/config.json."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def config_key(registry: str) -> str:
    """The key docker files a registry's credentials under."""
    return DOCKER_HUB_AUTH_KEY if registry in _HUB_HOSTS else registry


def _hostname(key: str) -> str:
    """docker's ConvertToHostname: "https://host:5000/v2/" → "host:5000"."""
    for prefix in ("http://", "https://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key.split("/", 1)[0]


def _same_registry(key: str, registry: str) -> bool:
    host = _hostname(key)
    return host == registry or (host in _HUB_HOSTS and registry in _HUB_HOSTS)


def load_config(path: Path) -> dict[str, Any]:
    """The docker config as a dict ({} when there is none); PybuildError if it is corrupt."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PybuildError(f"cannot read docker config {path}: {e}") from None
    if not isinstance(data, dict):
        raise PybuildError(f"cannot read docker config {path}: not a JSON object")
    return data


def _write_config(path: Path, data: dict[str, Any]) -> None:
    """Atomically write the config with mode 0600: it holds passwords."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.json.")
    except OSError as e:
        raise PybuildError(f"cannot write docker config {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(data, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def store_credentials(registry: str, creds: Credentials, config_path: Path | None = None) -> None:
    """Write the `auths` entry for `registry` (base64 user:password), keeping everything else."""
    path = config_path or default_config_path()
    data = load_config(path)
    auths = data.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    auths = {k: v for k, v in auths.items() if not _same_registry(k, registry)}
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    auths[config_key(registry)] = {"auth": token}
    data["auths"] = auths
    _write_config(path, data)


def erase_credentials(registry: str, config_path: Path | None = None) -> bool:
    """Remove the `auths` entry for `registry`; False if there was none."""
    path = config_path or default_config_path()
    data = load_config(path)
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return False
    kept = {k: v for k, v in auths.items() if not _same_registry(k, registry)}
    if len(kept) == len(auths):
        return False
    data["auths"] = kept
    _write_config(path, data)
    return True


def _from_helper(helper: str, registry: str) -> Credentials | None:
    """Ask `docker-credential-<helper> get` (server URL on stdin), as docker does."""
    program = f"docker-credential-{helper}"
    server = config_key(registry)
    try:
        proc = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                              timeout=60)
    except FileNotFoundError:
        raise PybuildError(f"error getting credentials for {registry}: {program} not found "
                           f"in PATH (set in the docker config)") from None
    except subprocess.TimeoutExpired:
        raise PybuildError(f"error getting credentials for {registry}: {program} timed out") from None
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        if "credentials not found" in out.lower():
            return None  # the helper's protocol for "not logged in": go anonymous
        msg = out or proc.stderr.decode(errors="replace").strip()
        raise PybuildError(f"error getting credentials for {registry} from {program}: {msg}")
    try:
        reply = json.loads(out)
        username, secret = reply["Username"], reply["Secret"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise PybuildError(f"error getting credentials for {registry}: {program} "
                           f"printed no credentials JSON") from None
    if not secret:
        return None
    return Credentials(str(username), str(secret))


def _from_auths_entry(entry: object, registry: str, path: Path) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise PybuildError(f"invalid auth entry for {registry} in {path}: "
                               f"expected base64 of user:password")
        return Credentials(user, password)
    if entry.get("username") and entry.get("password") is not None:
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


class AuthProvider:
    """Where credentials come from: explicit ones first, then the docker config.

    `credentials` maps a registry ("127.0.0.1:5000") to what to use there, for callers
    (tests, CI flags) that do not want to touch a config file.
    """

    def __init__(self, config_path: Path | None = None,
                 credentials: dict[str, Credentials] | None = None) -> None:
        self.config_path = config_path or default_config_path()
        self._explicit = dict(credentials or {})

    def credentials(self, registry: str) -> Credentials | None:
        """Credentials for `registry`, or None for anonymous access."""
        for key, creds in self._explicit.items():
            if _same_registry(key, registry):
                return creds
        config = load_config(self.config_path)
        helpers = config.get("credHelpers")
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if _same_registry(key, registry) and isinstance(helper, str) and helper:
                    return _from_helper(helper, registry)
        store = config.get("credsStore")
        if isinstance(store, str) and store:
            from_store = _from_helper(store, registry)
            if from_store is not None:
                return from_store
        auths = config.get("auths")
        if isinstance(auths, dict):
            # An exact key wins over a URL form of the same host.
            for key in sorted(auths, key=lambda k: k != config_key(registry)):
                if _same_registry(key, registry):
                    found = _from_auths_entry(auths[key], registry, self.config_path)
                    if found is not None:
                        return found
        return None


def basic_header(creds: Credentials) -> str:
    """The Authorization value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


class Authenticator:
    """Turns a registry's challenge into an Authorization header, caching Bearer tokens.

    Thread-safe: parallel layer transfers share it; a token is fetched once per
    (registry, scopes) and reused until shortly before it expires.
    """

    def __init__(self, session: requests.Session, provider: AuthProvider) -> None:
        self._session = session
        self._provider = provider
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = {}
        self._creds: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()
        self.token_requests = 0  # how many tokens were fetched (the cache's effect)

    def _credentials(self, registry: str) -> Credentials | None:
        if registry not in self._creds:
            self._creds[registry] = self._provider.credentials(registry)
        return self._creds[registry]

    def header(self, registry: str, challenge: Challenge | None,
               scopes: tuple[str, ...]) -> str | None:
        """Authorization value for a request needing `scopes`; None means anonymous."""
        if challenge is None:
            return None
        with self._lock:
            creds = self._credentials(registry)
            if challenge.scheme == "basic":
                return basic_header(creds) if creds else None
            if challenge.scheme != "bearer":
                raise AuthError(f"unsupported authentication scheme {challenge.scheme!r} "
                                f"offered by {registry}")
            key = (registry, tuple(sorted(set(scopes))))
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return "Bearer " + cached[0]
            token, lifetime = self._fetch_token(registry, challenge, key[1], creds)
            self._tokens[key] = (token, time.monotonic() + max(lifetime - _EXPIRY_MARGIN, 1.0))
            return "Bearer " + token

    def forget(self, registry: str, scopes: tuple[str, ...]) -> None:
        """Drop a cached token the registry refused (it may have been revoked)."""
        with self._lock:
            self._tokens.pop((registry, tuple(sorted(set(scopes)))), None)

    def _fetch_token(self, registry: str, challenge: Challenge, scopes: tuple[str, ...],
                     creds: Credentials | None) -> tuple[str, float]:
        """GET realm?service=..&scope=.. (Basic auth with the user's credentials, if any)."""
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"{registry} asked for a bearer token but named no realm")
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params += [("scope", s) for s in scopes]
        if creds:
            params.append(("account", creds.username))
        try:
            resp = self._session.get(realm, params=params, timeout=_TOKEN_TIMEOUT,
                                     verify=self._session.verify,
                                     auth=(creds.username, creds.password) if creds else None)
        except requests.RequestException as e:
            raise AuthError(f"cannot get a token for {registry} from {realm}: "
                            f"{type(e).__name__}") from None
        self.token_requests += 1
        if resp.status_code in (401, 403):
            raise AuthError(f"unauthorized: authentication required for {registry}",
                            unauthorized=True)
        if resp.status_code != 200:
            raise AuthError(f"token server {realm} for {registry} answered "
                            f"{resp.status_code} {resp.reason}")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or _DEFAULT_TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError):
            token = None
            lifetime = 0.0
        if not isinstance(token, str) or not token:
            raise AuthError(f"token server {realm} for {registry} returned no token")
        return token, lifetime
