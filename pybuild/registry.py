"""The OCI distribution API: pull and push images, blob mounts, login.

A pull is verified end to end: every blob streams through `store.writer(expected_digest)`,
so nothing becomes visible before its digest matched, and the manifest is stored (and the
tag set) only after all its blobs are in. A failed pull leaves only verified blobs, which
a rerun reuses. A push sends blobs the registry lacks (HEAD first), mounts those it already
holds in another repository (a table in the store's SQLite database remembers which blob
came from or went to which repository), and puts the manifest last, byte for byte as
stored, so its digest is the one the user sees locally.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from pybuild import image as _image
from pybuild.auth import (DOCKER_HUB_AUTH_KEY, AuthError, Authenticator, AuthProvider,
                          Challenge, Credentials, erase_credentials, parse_challenges,
                          store_credentials)
from pybuild.errors import PybuildError
from pybuild.reference import DOCKER_HUB_API_HOST, Reference, parse_reference
from pybuild.store import (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, INDEX_TYPES, MANIFEST_TYPES,
                           OCI_INDEX, OCI_MANIFEST, Descriptor, Store)

ProgressFn = Callable[[str, int, int | None], None]
T = TypeVar("T")

ACCEPT_MANIFESTS = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
SCHEMA1_TYPES = frozenset({"application/vnd.docker.distribution.manifest.v1+json",
                           "application/vnd.docker.distribution.manifest.v1+prettyjws"})
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PARALLEL_TRANSFERS = 4
TRIES = 3
_BACKOFF = 0.5  # seconds before the second try; doubled for each further one
_TIMEOUT = (30.0, 300.0)  # connect, read
_MANIFEST_MAX = 4 << 20  # distribution's own limit on manifest size
_CHUNK = 1 << 20
_HUB_NAMES = frozenset({"docker.io", "index.docker.io", DOCKER_HUB_API_HOST})


class _ServerError(Exception):
    """A 5xx answer: worth another try."""

    def __init__(self, resp: requests.Response) -> None:
        super().__init__(f"{resp.status_code} {resp.reason}")
        self.resp = resp


def _is_plain_http(registry: str, insecure: set[str] | frozenset[str]) -> bool:
    """Loopback and explicitly insecure registries speak plain HTTP, as dockerd allows."""
    host = urlsplit("//" + registry).hostname or registry
    if registry in insecure or host in insecure or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_query(url: str, **params: str) -> str:
    """`url` with `params` added to its query (upload Locations carry their own state)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _error_text(resp: requests.Response) -> str:
    """The registry's own error message ("manifest unknown"), else the HTTP status."""
    try:
        errors = resp.json().get("errors") or []
        first = errors[0]
        msg = str(first.get("message") or first.get("code") or "").strip()
        if msg:
            return msg
    except (ValueError, AttributeError, IndexError, TypeError):
        pass
    return f"HTTP {resp.status_code} {resp.reason}".strip()


def _short(digest: str) -> str:
    """The 12 hex digits docker shows for a layer."""
    return digest.split(":", 1)[-1][:12]


@dataclass(frozen=True)
class _Target:
    """One operation on one repository: what errors name, which token scopes it needs."""

    ref: Reference
    verb: str  # "pulling" / "pushing"
    scopes: tuple[str, ...]

    @property
    def registry(self) -> str:
        return self.ref.api_host

    @property
    def repo(self) -> str:
        """registry/repository, as in "unauthorized: authentication required for ..."."""
        if not self.ref.repository:
            return self.ref.registry  # login: the registry itself
        return f"{self.ref.registry}/{self.ref.repository}"

    @property
    def display(self) -> str:
        """The reference as given, fully qualified: "127.0.0.1:5000/app:1"."""
        tag = f":{self.ref.tag}" if self.ref.tag else ""
        return self.repo + tag + (f"@{self.ref.digest}" if self.ref.digest else "")

    def fail(self, problem: str) -> PybuildError:
        return PybuildError(f"{problem} ({self.verb} {self.display})")


class _ProgressReader:
    """A blob file as a request body: reports progress, rewinds for a retry."""

    def __init__(self, f: BinaryIO, size: int, report: Callable[[int], None]) -> None:
        self._f = f
        self._size = size
        self._report = report
        self._sent = 0
        self._reported = 0

    def __len__(self) -> int:  # requests sets Content-Length from it
        return self._size

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._sent += len(data)
        if self._sent - self._reported >= _CHUNK or self._sent == self._size:
            self._reported = self._sent
            self._report(self._sent)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._f.seek(offset, whence)
        self._sent = self._reported = pos
        return pos

    def tell(self) -> int:
        return self._f.tell()


class RegistryClient:
    """An HTTP session to registries: TLS choice, auth challenges and tokens, retries.

    `progress(label, current_bytes, total_bytes)` is called from transfer threads, several
    at once; label is the short digest docker shows. One client may serve many pulls and
    pushes; it caches each registry's auth challenge and the tokens it got.
    """

    chunk_size = 8 << 20  # bytes per PATCH of a chunked upload

    def __init__(self, *, insecure: set[str] | frozenset[str] = frozenset(),
                 tls_ca: Path | None = None, auth: AuthProvider | None = None,
                 progress: ProgressFn | None = None) -> None:
        self.insecure = frozenset(insecure)
        self.progress = progress
        self.auth = auth or AuthProvider()
        self.session = requests.Session()
        # session.verify is passed on every request: requests lets REQUESTS_CA_BUNDLE
        # override a session's own verify, which would silently drop tls_ca.
        if tls_ca is not None:
            if not Path(tls_ca).is_file():
                raise PybuildError(f"TLS CA bundle {tls_ca} does not exist")
            self.session.verify = str(tls_ca)
        elif SYSTEM_CA_BUNDLE.is_file():
            self.session.verify = str(SYSTEM_CA_BUNDLE)
        self.authenticator = Authenticator(self.session, self.auth)
        self._challenges: dict[str, Challenge | None] = {}
        self._lock = threading.Lock()

    def base_url(self, registry: str) -> str:
        scheme = "http" if _is_plain_http(registry, self.insecure) else "https"
        return f"{scheme}://{registry}"

    def close(self) -> None:
        self.session.close()

    # ---- transport ------------------------------------------------------------------

    def _describe(self, registry: str, e: BaseException) -> str:
        """One line for a transport failure: unknown host, refused, TLS, dropped."""
        text = str(e)
        host = urlsplit("//" + registry).hostname or registry
        if isinstance(e, _ServerError):
            return f"registry {registry} answered {e} ({_error_text(e.resp)}) {TRIES} times"
        if isinstance(e, requests.exceptions.SSLError):
            m = re.search(r"(?:certificate verify failed: |\[SSL: [A-Z0-9_]+\] )([^()']+?)\s*\(_ssl",
                          text)
            reason = m.group(1) if m else "handshake failed"
            return (f"TLS error talking to {registry}: {reason} "
                    f"(give the registry's CA with tls_ca, or mark it insecure)")
        if "Name or service not known" in text or "NameResolution" in text \
                or "Temporary failure in name resolution" in text or "No address associated" in text:
            return f"cannot resolve registry host {host}"
        if "Connection refused" in text:
            return f"cannot connect to registry {registry}: connection refused"
        if isinstance(e, requests.Timeout):
            return f"registry {registry} timed out"
        return f"connection to registry {registry} failed: {type(e).__name__}"

    def _retrying(self, t: _Target, op: Callable[[], T]) -> T:
        """Run `op`, again after 5xx answers and dropped or refused connections."""
        attempt = 1
        while True:
            try:
                return op()
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError, _ServerError) as e:
                problem = self._describe(t.registry, e)
                permanent = isinstance(e, requests.exceptions.SSLError) or \
                    problem.startswith("cannot resolve")
                if permanent or attempt == TRIES:
                    raise t.fail(problem) from None
                time.sleep(_BACKOFF * 2 ** (attempt - 1))
                attempt += 1

    def _challenge(self, t: _Target) -> Challenge | None:
        """GET /v2/ once per registry: None if open, else the challenge to answer."""
        with self._lock:
            if t.registry in self._challenges:
                return self._challenges[t.registry]

        def ping() -> requests.Response:
            resp = self.session.get(self.base_url(t.registry) + "/v2/", timeout=_TIMEOUT,
                                    verify=self.session.verify)
            if resp.status_code >= 500:
                raise _ServerError(resp)
            return resp

        resp = self._retrying(t, ping)
        challenge: Challenge | None = None
        if resp.status_code == 401:
            found = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
            by_scheme = {c.scheme: c for c in found}
            challenge = by_scheme.get("bearer") or by_scheme.get("basic")
            if challenge is None:
                raise t.fail(f"registry {t.registry} asks for an unsupported authentication "
                             f"({resp.headers.get('WWW-Authenticate', 'none')!r})")
        elif resp.status_code != 200:
            raise t.fail(f"{self.base_url(t.registry)}/v2/ answered {resp.status_code} "
                         f"{resp.reason}: not a distribution registry")
        with self._lock:
            self._challenges[t.registry] = challenge
        return challenge

    def _send(self, t: _Target, method: str, url: str, *, scopes: tuple[str, ...] = (),
              ok: tuple[int, ...] = (200,), headers: dict[str, str] | None = None,
              data: bytes | _ProgressReader | None = None, params: dict[str, str] | None = None,
              stream: bool = False) -> requests.Response:
        """One authenticated request; 401 → a fresh token once, then a clear error.

        Statuses in `ok` and 404 are returned; 5xx raises _ServerError (retryable); any
        other status raises PybuildError with the registry's message.
        """
        if url.startswith("/"):
            url = self.base_url(t.registry) + url
        scopes = scopes or t.scopes
        challenge = self._challenge(t)
        for fresh in (False, True):
            sent = dict(headers or {})
            try:
                value = self.authenticator.header(t.registry, challenge, scopes)
            except AuthError as e:
                raise t.fail(str(e) if not e.unauthorized
                             else f"unauthorized: authentication required for {t.repo}") from None
            if value:
                sent["Authorization"] = value
            resp = self.session.request(method, url, headers=sent, data=data, params=params,
                                        stream=stream, timeout=_TIMEOUT,
                                        verify=self.session.verify)
            if resp.status_code == 401 and not fresh and challenge is not None \
                    and challenge.scheme == "bearer":
                # The cached token may have expired or been revoked: one fresh token.
                self.authenticator.forget(t.registry, scopes)
                if isinstance(data, _ProgressReader):
                    data.seek(0)
                resp.close()
                continue
            break
        if resp.status_code in ok or resp.status_code == 404:
            return resp
        if resp.status_code == 401:
            raise t.fail(f"unauthorized: authentication required for {t.repo}")
        if resp.status_code >= 500:
            raise _ServerError(resp)
        raise t.fail(f"{_error_text(resp)}: {method} {urlsplit(url).path} answered "
                     f"{resp.status_code}")

    def _report(self, label: str, current: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(label, current, total)

    # ---- manifests ------------------------------------------------------------------

    def get_manifest(self, t: _Target, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest; the digest is checked when pinned."""
        url = f"/v2/{t.ref.repository}/manifests/{reference}"

        def fetch() -> requests.Response:
            resp = self._send(t, "GET", url, headers={"Accept": ACCEPT_MANIFESTS})
            _ = resp.content  # read the body inside the retry: a drop mid-body is retried
            return resp

        resp = self._retrying(t, fetch)
        if resp.status_code == 404:
            shown = t.display if reference in t.display else f"{t.repo}@{reference}"
            msg = _error_text(resp)
            extra = f" ({msg})" if msg not in ("manifest unknown", f"HTTP 404 {resp.reason}") else ""
            raise PybuildError(f"manifest unknown: {shown}{extra}")
        body = resp.content
        if len(body) > _MANIFEST_MAX:
            raise t.fail(f"manifest {reference} is larger than {_MANIFEST_MAX} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise t.fail(f"manifest {reference} from {t.registry} does not match its digest "
                         f"(got {digest})")
        sent = resp.headers.get("Docker-Content-Digest")
        if sent and sent.startswith("sha256:") and sent != digest:
            raise t.fail(f"manifest from {t.registry} does not match the Docker-Content-Digest "
                         f"{sent} (got {digest})")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise t.fail(f"manifest {reference} from {t.registry} is not JSON") from None
        if not isinstance(doc, dict):
            raise t.fail(f"manifest {reference} from {t.registry} is not a JSON object")
        media_type = doc.get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0]
        if media_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
            raise t.fail("Docker image manifest schema 1 is not supported (deprecated by docker "
                         "since 2017): push the image again with a current client")
        if media_type not in INDEX_TYPES | MANIFEST_TYPES:
            if "manifests" in doc:
                media_type = OCI_INDEX
            elif "config" in doc:
                media_type = OCI_MANIFEST
            else:
                raise t.fail(f"unsupported manifest type {media_type!r}")
        return body, media_type, digest

    # ---- blobs ----------------------------------------------------------------------

    def fetch_blob(self, t: _Target, store: Store, desc: Descriptor,
                   abort: threading.Event) -> None:
        """Download one blob into the store, verified against its digest and size."""
        label = _short(desc.digest)
        url = f"/v2/{t.ref.repository}/blobs/{desc.digest}"

        def download() -> None:
            resp = self._send(t, "GET", url, stream=True)
            with resp:
                if resp.status_code == 404:
                    raise t.fail(f"blob unknown: {desc.digest} is missing from {t.repo}")
                with store.writer(expected_digest=desc.digest) as w:
                    for chunk in resp.iter_content(_CHUNK):
                        if abort.is_set():
                            raise t.fail("cancelled after another transfer failed")
                        w.write(chunk)
                        if w.size > desc.size:
                            raise t.fail(f"blob {desc.digest} from {t.registry} is larger than "
                                         f"its {desc.size} bytes: not stored")
                        self._report(label, w.size, desc.size)
                    if w.size != desc.size:
                        raise requests.exceptions.ChunkedEncodingError(
                            f"blob {desc.digest} ended after {w.size} of {desc.size} bytes")
                    got = w.digest
                    try:
                        w.commit(desc.media_type)
                    except PybuildError:
                        raise t.fail(f"blob {desc.digest} from {t.registry} does not match its "
                                     f"digest (got {got}): not stored") from None

        self._report(label, 0, desc.size)
        self._retrying(t, download)

    def blob_exists(self, t: _Target, digest: str) -> bool:
        resp = self._retrying(t, lambda: self._send(
            t, "HEAD", f"/v2/{t.ref.repository}/blobs/{digest}"))
        return resp.status_code == 200

    def _check_created(self, t: _Target, resp: requests.Response, digest: str, what: str) -> None:
        if resp.status_code == 404:
            raise t.fail(f"{_error_text(resp)}: {what} answered 404")
        sent = resp.headers.get("Docker-Content-Digest")
        if sent and sent != digest:
            raise t.fail(f"registry {t.registry} stored {what} as {sent}, expected {digest}")

    def upload_blob(self, t: _Target, store: Store, desc: Descriptor, mount_from: list[str],
                    chunked: bool) -> str:
        """Mount or upload one blob; returns "mounted" or "uploaded"."""
        label = _short(desc.digest)
        uploads = f"/v2/{t.ref.repository}/blobs/uploads/"

        def attempt() -> str:
            location = None
            for source in mount_from:
                resp = self._send(t, "POST", uploads, ok=(201, 202),
                                  params={"mount": desc.digest, "from": source},
                                  scopes=t.scopes + (f"repository:{source}:pull",))
                if resp.status_code == 201:
                    self._check_created(t, resp, desc.digest, f"blob {label}")
                    return "mounted"
                if resp.status_code == 202:
                    location = resp.headers.get("Location")
                    break  # the registry opened an upload instead: use it
            if location is None:
                resp = self._send(t, "POST", uploads, ok=(202,))
                if resp.status_code == 404:
                    raise t.fail(f"{_error_text(resp)}: cannot start an upload")
                location = resp.headers.get("Location")
            if not location:
                raise t.fail(f"registry {t.registry} opened an upload without a Location")
            location = urljoin(self.base_url(t.registry) + "/", location)
            with store.open_blob(desc.digest) as f:
                if chunked:
                    offset = 0
                    while chunk := f.read(self.chunk_size):
                        resp = self._send(t, "PATCH", location, ok=(202,), data=chunk, headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                            "Content-Length": str(len(chunk))})
                        if resp.status_code == 404:
                            raise t.fail(f"{_error_text(resp)}: upload of {label} vanished")
                        offset += len(chunk)
                        location = urljoin(location, resp.headers.get("Location") or location)
                        self._report(label, offset, desc.size)
                    resp = self._send(t, "PUT", _with_query(location, digest=desc.digest),
                                      ok=(201,), data=b"", headers={"Content-Length": "0"})
                else:
                    body = _ProgressReader(f, desc.size,
                                           lambda n: self._report(label, n, desc.size))
                    resp = self._send(t, "PUT", _with_query(location, digest=desc.digest),
                                      ok=(201,), data=body, headers={
                                          "Content-Type": "application/octet-stream",
                                          "Content-Length": str(desc.size)})
            self._check_created(t, resp, desc.digest, f"blob {label}")
            self._report(label, desc.size, desc.size)
            return "uploaded"

        return self._retrying(t, attempt)

    def put_manifest(self, t: _Target, reference: str, body: bytes, media_type: str) -> str:
        """PUT the manifest bytes as they are; returns the digest the registry confirmed."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        resp = self._retrying(t, lambda: self._send(
            t, "PUT", f"/v2/{t.ref.repository}/manifests/{reference}", ok=(201,), data=body,
            headers={"Content-Type": media_type}))
        self._check_created(t, resp, digest, "the manifest")
        return digest


# ---- where blobs are known to be (for cross-repository mounts) ------------------------

def _ensure_table(store: Store) -> None:
    store.db.execute("CREATE TABLE IF NOT EXISTS registry_blobs (registry TEXT NOT NULL, "
                     "repository TEXT NOT NULL, digest TEXT NOT NULL, "
                     "PRIMARY KEY (registry, digest, repository))")


def _record(store: Store, registry: str, repository: str, digests: list[str]) -> None:
    """Remember that `registry/repository` holds these blobs."""
    _ensure_table(store)
    with store.db:
        store.db.executemany("INSERT OR IGNORE INTO registry_blobs VALUES (?, ?, ?)",
                             [(registry, repository, d) for d in digests])


def known_repositories(store: Store, registry: str, digest: str) -> list[str]:
    """Repositories of `registry` this store pulled `digest` from or pushed it to."""
    _ensure_table(store)
    rows = store.db.execute("SELECT repository FROM registry_blobs WHERE registry = ? AND "
                            "digest = ? ORDER BY repository", (registry, digest))
    return [r[0] for r in rows]


def _parallel(items: list[Descriptor], work: Callable[[Descriptor, threading.Event], T]) -> list[T]:
    """Run `work` on each item, 4 at a time; the first failure cancels the rest and is raised."""
    if not items:
        return []
    abort = threading.Event()
    with ThreadPoolExecutor(PARALLEL_TRANSFERS, thread_name_prefix="pybuild-transfer") as pool:
        futures: list[Future[T]] = [pool.submit(work, item, abort) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            abort.set()
            for f in futures:
                f.cancel()
            wait(futures)
            raise failed[0].exception()  # type: ignore[misc]
    return [f.result() for f in futures]


def _platform_string(p: dict[str, Any] | None) -> str:
    p = p or {}
    out = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return out + (f"/{p['variant']}" if p.get("variant") else "")


def _choose_platform(t: _Target, index: dict[str, Any]) -> Descriptor:
    """The linux/<host arch> entry of a manifest list, preferring the host's variant."""
    host = _image.host_platform()
    entries: list[Descriptor] = []
    for m in index.get("manifests") or []:
        try:
            d = Descriptor.from_dict(m)
        except PybuildError as e:
            raise t.fail(f"malformed manifest list: {e}") from None
        if d.media_type in MANIFEST_TYPES:
            entries.append(d)
    for want_variant in (True, False):
        for d in entries:
            p = d.platform or {}
            if p.get("os") == host["os"] and p.get("architecture") == host["architecture"] \
                    and (not want_variant or p.get("variant") == host.get("variant")):
                return d
    available = ", ".join(sorted({_platform_string(d.platform) for d in entries})) or "none"
    raise PybuildError(f"no image for {host['os']}/{host['architecture']} in {t.display} "
                       f"(available: {available})")


def _parse_manifest(t: _Target, body: bytes) -> tuple[Descriptor, list[Descriptor]]:
    doc = json.loads(body)
    try:
        config = Descriptor.from_dict(doc["config"])
        layers = [Descriptor.from_dict(d) for d in doc.get("layers") or []]
    except (PybuildError, KeyError, TypeError) as e:
        raise t.fail(f"malformed image manifest from {t.registry}: {e}") from None
    return config, layers


def _store_manifest(store: Store, body: bytes, digest: str, media_type: str) -> Descriptor:
    with store.writer(expected_digest=digest) as w:
        w.write(body)
        return w.commit(media_type)


def pull(store: Store, ref: str, *, client: RegistryClient | None = None) -> Descriptor:
    """Pull `ref` for this host's platform into the store and tag it (docker's familiar name).

    Returns the stored single-platform manifest descriptor (with its platform). Manifest
    bytes are kept exactly as served, Docker media types included, so digests stay valid.
    """
    client = client or RegistryClient()
    r = parse_reference(ref)
    t = _Target(r, "pulling", (f"repository:{r.repository}:pull",))
    body, media_type, digest = client.get_manifest(t, r.ref)
    index: tuple[bytes, str, str] | None = None
    platform: dict[str, Any] | None = None
    if media_type in INDEX_TYPES:
        index = (body, media_type, digest)
        chosen = _choose_platform(t, json.loads(body))
        platform = chosen.platform
        body, media_type, digest = client.get_manifest(t, chosen.digest)
        if media_type not in MANIFEST_TYPES:
            raise t.fail(f"manifest list entry {chosen.digest} is not an image manifest")
    config, layers = _parse_manifest(t, body)
    blobs = list({d.digest: d for d in [config, *layers]}.values())
    missing = [d for d in blobs if not store.has_blob(d.digest)]
    for d in blobs:
        if d not in missing:
            client._report(_short(d.digest), d.size, d.size)
    _parallel(missing, lambda d, abort: client.fetch_blob(t, store, d, abort))
    if platform is None:
        cfg = store.read_json(config.digest)
        if cfg.get("os") and cfg.get("architecture"):
            platform = {k: cfg[k] for k in ("architecture", "os", "variant") if cfg.get(k)}
    stored = _store_manifest(store, body, digest, media_type)
    if index is not None:
        _store_manifest(store, index[0], index[2], index[1])
    desc = Descriptor(stored.media_type, stored.digest, stored.size, None, platform)
    store.set_tag(r.familiar, desc)
    _record(store, r.registry, r.repository, [d.digest for d in blobs])
    return desc


def push(store: Store, local: str, dest: str, *, client: RegistryClient | None = None,
         chunked: bool = False) -> str:
    """Push the image `local` (tag or ID) to `dest`; returns the manifest digest.

    Blobs go first (skipped when present, mounted when known in another repository of
    the same registry), the manifest last, so the tag never points at missing blobs.
    """
    client = client or RegistryClient()
    img = _image.load(store, local)
    r = parse_reference(dest)
    if r.digest:
        raise PybuildError(f"cannot push to a digest reference: {dest} (push to a tag)")
    t = _Target(r, "pushing", (f"repository:{r.repository}:pull,push",))
    body = store.read_bytes(img.manifest_desc.digest)
    try:
        media_type = json.loads(body).get("mediaType") or img.manifest_desc.media_type
    except (ValueError, AttributeError):
        raise PybuildError(f"image {local}: its manifest is not a JSON object") from None
    if media_type not in MANIFEST_TYPES:
        media_type = OCI_MANIFEST
    blobs = list({d.digest: d for d in [img.config_desc, *img.layers]}.values())
    for d in blobs:
        if not store.has_blob(d.digest):
            raise PybuildError(f"image {local}: blob {d.digest} is missing from the store "
                               f"(run verify)")
    _send_blobs(client, t, store, blobs, chunked)
    digest = client.put_manifest(t, r.tag or "latest", body, media_type)
    _record(store, r.registry, r.repository, [d.digest for d in blobs])
    return digest


def _send_blobs(client: RegistryClient, t: _Target, store: Store, blobs: list[Descriptor],
                chunked: bool) -> None:
    """Each blob the registry lacks: mounted from another repository it is known to be in,
    else uploaded; 4 at a time. Blobs already there are skipped (HEAD)."""
    sources = {d.digest: [repo for repo in known_repositories(store, t.ref.registry, d.digest)
                          if repo != t.ref.repository] for d in blobs}

    def send(d: Descriptor, abort: threading.Event) -> str:
        if abort.is_set():
            raise t.fail("cancelled after another transfer failed")
        if client.blob_exists(t, d.digest):
            client._report(_short(d.digest), d.size, d.size)
            return "exists"
        return client.upload_blob(t, store, d, sources[d.digest], chunked)

    _parallel(blobs, send)


# ---- login -----------------------------------------------------------------------------

def _registry_host(registry: str) -> str:
    """"https://host:5000/" → "host:5000"; Docker Hub's names → docker.io."""
    host = registry.strip()
    for prefix in ("http://", "https://"):
        if host.startswith(prefix):
            host = host[len(prefix):]
    host = host.split("/", 1)[0]
    if not host or host in _HUB_NAMES or registry == DOCKER_HUB_AUTH_KEY:
        return "docker.io"
    return host


def login(registry: str, username: str, password: str, *, config_path: Path | None = None,
          client: RegistryClient | None = None) -> None:
    """Check the credentials against the registry (as `docker login`), then save them.

    `client` only carries TLS settings (insecure, tls_ca); its credentials are not used.
    """
    host = _registry_host(registry)
    if not username:
        raise PybuildError(f"login to {host}: a username is required")
    checker = RegistryClient(insecure=client.insecure if client else frozenset(),
                             auth=AuthProvider(config_path=config_path,
                                               credentials={host: Credentials(username, password)}))
    if client is not None:
        checker.session.verify = client.session.verify
    ref = Reference(host, "", None, None)
    t = _Target(ref, "logging in to", ())
    try:
        resp = checker._retrying(t, lambda: checker._send(t, "GET", "/v2/"))
        if resp.status_code != 200:
            raise PybuildError(f"login to {host} failed: /v2/ answered {resp.status_code}")
    except PybuildError as e:
        if "unauthorized" in str(e):
            raise PybuildError(f"unauthorized: incorrect username or password for {host}") from None
        raise
    finally:
        checker.close()
    store_credentials(host, Credentials(username, password), config_path)


def logout(registry: str, *, config_path: Path | None = None) -> bool:
    """Forget the saved credentials; False if there were none (docker: "Not logged in")."""
    return erase_credentials(_registry_host(registry), config_path)


# ---- artifacts: the build cache travels as an OCI manifest -----------------------------

def push_artifact(store: Store, dest: str, config: Descriptor, layers: list[Descriptor], *,
                  client: RegistryClient | None = None) -> str:
    """Push blobs then an OCI manifest of `config` + `layers` to `dest`; returns its digest."""
    client = client or RegistryClient()
    r = parse_reference(dest)
    t = _Target(r, "pushing", (f"repository:{r.repository}:pull,push",))
    blobs = list({d.digest: d for d in [config, *layers]}.values())
    _send_blobs(client, t, store, blobs, False)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_dict(),
                "layers": [d.to_dict() for d in layers]}
    body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    digest = client.put_manifest(t, r.tag or "latest", body, OCI_MANIFEST)
    _record(store, r.registry, r.repository, [d.digest for d in blobs])
    return digest


def fetch_artifact(store: Store, ref: str, *, client: RegistryClient | None = None
                   ) -> tuple[dict[str, Any], list[Descriptor]] | None:
    """The config document and layer list of the artifact at `ref`; None if it is absent.

    Only the config blob is downloaded; layers are fetched on demand with `fetch_blobs`.
    """
    client = client or RegistryClient()
    r = parse_reference(ref)
    t = _Target(r, "pulling", (f"repository:{r.repository}:pull",))
    try:
        body, media_type, _digest = client.get_manifest(t, r.ref)
    except PybuildError as e:
        if str(e).startswith("manifest unknown"):
            return None
        raise
    if media_type not in MANIFEST_TYPES:
        raise t.fail("not a cache manifest (it is an index)")
    config, layers = _parse_manifest(t, body)
    if not store.has_blob(config.digest):
        _parallel([config], lambda d, abort: client.fetch_blob(t, store, d, abort))
    return store.read_json(config.digest), layers


def fetch_blobs(store: Store, ref: str, descs: list[Descriptor], *,
                client: RegistryClient | None = None) -> None:
    """Download the blobs of `descs` missing from the store, verified, from `ref`'s repository."""
    client = client or RegistryClient()
    r = parse_reference(ref)
    t = _Target(r, "pulling", (f"repository:{r.repository}:pull",))
    missing = [d for d in descs if not store.has_blob(d.digest)]
    _parallel(missing, lambda d, abort: client.fetch_blob(t, store, d, abort))
    _record(store, r.registry, r.repository, [d.digest for d in descs])
