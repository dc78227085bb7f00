"""The OCI distribution API: pull and push images, blob mounts, login.

A pull is verified end to end: every blob streams through `store.writer(expected_digest)`,
so nothing becomes visible before its digest matched, and the manifest is stored (and the
tag set) only after all its blobs are in. A failed pull leaves only verified blobs, which
a rerun reuses. A push sends blobs the registry lacks (HEAD first), mounts those it already
holds in another repository (a table in the store's SQLite database remembers which blob
came from or went to which repository), and puts the manifest last, byte for byte as
stored, so its digest is the one the user sees locally.

Nothing a registry sends is trusted: documents are checked by `oci_documents` before any
field is used (and before any blob is written), digests are verified in their own
algorithm, and every body is read under `transport`'s limits (size, deadline, minimum
rate; redirects only to http/https, at most 10).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import urllib3.exceptions

from pybuild import image as _image
from pybuild.auth import (DOCKER_HUB_AUTH_KEY, AuthError, Authenticator, AuthProvider,
                          Challenge, Credentials, erase_credentials, parse_challenges,
                          store_credentials)
from pybuild.errors import PybuildError
from pybuild.oci_documents import (MAX_CONFIG, MAX_MANIFEST, DocumentError, ImageConfig, Index,
                                   Manifest, check_digest, check_image, digest_of, hasher,
                                   kind_of, parse_config, parse_document)
from pybuild.platforms import choose, host_platform, matches, platform_string
from pybuild.reference import DOCKER_HUB_HOSTS, Reference, parse_reference
from pybuild.store import (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MANIFEST_TYPES,
                           OCI_INDEX, OCI_MANIFEST, Descriptor, Store, canonical_json)
from pybuild.transport import (REDIRECT_STATUSES, HeadersTooSlow, Limits, Pace, TransferError,
                               Truncated, bounded_session, http_url, iter_body, read_capped,
                               redirect_target)

ProgressFn = Callable[[str, int, int | None], None]
T = TypeVar("T")

ACCEPT_MANIFESTS = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PARALLEL_TRANSFERS = 4
TRIES = 3
_BACKOFF = 0.5  # seconds before the second try; doubled for each further one
_SMALL_BODY = 1 << 20  # any other answer (errors, upload replies) is read up to this
_CHUNK = 1 << 20


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
    """The registry's own error message ("manifest unknown"), else the HTTP status.

    Only a body `_send` has already read (capped) is looked at: never an unbounded one.
    """
    try:
        if not resp._content_consumed:  # type: ignore[attr-defined]
            raise ValueError("body not read")
        errors = resp.json().get("errors") or []
        first = errors[0]
        msg = str(first.get("message") or first.get("code") or "").strip()
        if msg:
            return msg if len(msg) <= 200 else msg[:197] + "..."
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


class _ShortBlob(PybuildError):
    """A blob file ended before the size its descriptor (and our Content-Length) gives."""


class _ProgressReader:
    """A blob file as a request body: reports progress, rewinds for a retry.

    It never yields more than `size` bytes, and raises instead of ending early: a body
    shorter than the Content-Length sent would leave the registry waiting for the rest.
    """

    def __init__(self, f: BinaryIO, size: int, report: Callable[[int], None],
                 what: str = "blob") -> None:
        self._f = f
        self._size = size
        self._report = report
        self._sent = 0
        self._reported = 0
        self._what = what

    def __len__(self) -> int:  # requests sets Content-Length from it
        return self._size

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._sent
        data = self._f.read(left if n < 0 else min(n, left)) if left > 0 else b""
        if not data and left > 0:
            raise _ShortBlob(f"{self._what} ended after {self._sent} of its {self._size} "
                             f"bytes while it was being sent (the store changed under the push)")
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


def _no_netrc(r: requests.PreparedRequest) -> requests.PreparedRequest:
    return r


class RegistryClient:
    """An HTTP session to registries: TLS choice, auth challenges and tokens, retries.

    `progress(label, current_bytes, total_bytes)` is called from transfer threads, several
    at once; label is the short digest docker shows. One client may serve many pulls and
    pushes; it caches each registry's auth challenge and the tokens it got.
    """

    chunk_size = 8 << 20  # bytes per PATCH of a chunked upload

    def __init__(self, *, insecure: set[str] | frozenset[str] = frozenset(),
                 tls_ca: Path | None = None, auth: AuthProvider | None = None,
                 progress: ProgressFn | None = None, limits: Limits | None = None) -> None:
        self.insecure = frozenset(insecure)
        self.progress = progress
        self.auth = auth or AuthProvider()
        self.limits = limits or Limits.from_env()
        self.session = bounded_session(self.limits)
        # A session-level auth keeps requests from reading ~/.netrc: those passwords must
        # not go to whatever host a registry names as its token realm or redirect target.
        self.session.auth = _no_netrc
        # session.verify is passed on every request: requests lets REQUESTS_CA_BUNDLE
        # override a session's own verify, which would silently drop tls_ca.
        if tls_ca is not None:
            if not Path(tls_ca).is_file():
                raise PybuildError(f"TLS CA bundle {tls_ca} does not exist")
            self.session.verify = str(tls_ca)
        elif SYSTEM_CA_BUNDLE.is_file():
            self.session.verify = str(SYSTEM_CA_BUNDLE)
        self.authenticator = Authenticator(self.session, self.auth, self.limits)
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
        if isinstance(e, Truncated):
            return f"registry {registry}: {e} ({TRIES} tries)"
        if isinstance(e, requests.exceptions.ChunkedEncodingError):
            return f"registry {registry} dropped the connection mid-transfer ({TRIES} tries)"
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
            except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
                # A URL, header or encoding requests refuses (a hostile Location, say).
                text = str(e) if len(str(e)) <= 160 else str(e)[:157] + "..."
                raise t.fail(f"registry {t.registry}: {type(e).__name__}: {text}") from None

    def _challenge(self, t: _Target) -> Challenge | None:
        """GET /v2/ once per registry: None if open, else the challenge to answer."""
        with self._lock:
            if t.registry in self._challenges:
                return self._challenges[t.registry]

        def ping() -> requests.Response:
            resp = self._request(t, "GET", self.base_url(t.registry) + "/v2/", headers={})
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

    def _request(self, t: _Target, method: str, url: str, *, headers: dict[str, str],
                 data: bytes | _ProgressReader | None = None,
                 params: dict[str, str] | None = None, stream: bool = False) -> requests.Response:
        """One request, following redirects of GET and HEAD ourselves: only to http(s), at
        most `limits.max_redirects` hops, the Authorization header kept only on the same
        host. Without `stream` the body is read here, capped and paced, so no answer is
        ever read unbounded."""
        origin = urlsplit(url).netloc
        hops = 0
        while True:
            try:
                resp = self.session.request(method, url, headers=headers, data=data,
                                            params=params, stream=True,
                                            timeout=self.limits.timeout,
                                            verify=self.session.verify, allow_redirects=False)
            except HeadersTooSlow as e:
                raise t.fail(f"registry {e}") from None
            except ValueError as e:  # requests parses a redirect's Location even unfollowed
                if isinstance(e, requests.RequestException):
                    raise
                raise t.fail(f"registry {t.registry} ({method} {urlsplit(url).path}): "
                             f"{e} in its answer") from None
            if resp.status_code not in REDIRECT_STATUSES or method not in ("GET", "HEAD"):
                break
            resp.close()
            try:
                url = redirect_target(resp.url, resp, hops, self.limits,
                                      f"registry {t.registry} ({method} {urlsplit(url).path})")
            except TransferError as e:
                raise t.fail(str(e)) from None
            hops += 1
            params = None  # they are part of resp.url now
            if urlsplit(url).netloc != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if not stream:
            with resp:
                what = f"the answer of registry {t.registry} to {method} {urlsplit(url).path}"
                try:
                    body = b"" if method == "HEAD" else read_capped(resp, _SMALL_BODY, Pace(self.limits, what),
                                       truncate=resp.status_code not in (200, 201, 202))
                except TransferError as e:
                    raise t.fail(str(e)) from None
            resp._content = body
            resp._content_consumed = True  # type: ignore[attr-defined]
        return resp

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
            if value and urlsplit(url).netloc == urlsplit(self.base_url(t.registry)).netloc:
                # Credentials go to the registry itself only, never to an upload Location
                # or redirect on another host (docker's authorizer matches the host too).
                sent["Authorization"] = value
            resp = self._request(t, method, url, headers=sent, data=data, params=params,
                                 stream=stream)
            if resp.status_code == 401 and not fresh and challenge is not None \
                    and challenge.scheme == "bearer":
                # The cached token may have expired or been revoked: one fresh token.
                self.authenticator.forget(t.registry, scopes)
                if isinstance(data, _ProgressReader):
                    data.seek(0)
                resp.close()
                continue
            break
        if stream and resp.status_code not in ok:
            # An error answer to a streamed request: its message, read capped.
            with resp:
                try:
                    body = read_capped(resp, _SMALL_BODY, Pace(self.limits, "an error answer"),
                                       truncate=True)
                except TransferError as e:
                    raise t.fail(str(e)) from None
            resp._content = body
            resp._content_consumed = True  # type: ignore[attr-defined]
        if resp.status_code in ok or resp.status_code == 404:
            return resp
        if resp.status_code == 401:
            raise t.fail(f"unauthorized: authentication required for {t.repo}")
        if resp.status_code >= 500:
            raise _ServerError(resp)
        raise t.fail(f"{_error_text(resp)}: {method} {urlsplit(url).path} answered "
                     f"{resp.status_code}")

    def with_progress(self, progress: ProgressFn | None) -> RegistryClient:
        """This client (same session, auth and tokens) reporting to `progress`: one per
        call, so concurrent pulls of a build each report on their own vertex."""
        view = copy.copy(self)
        view.progress = progress
        return view

    def _report(self, label: str, current: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(label, current, total)

    # ---- manifests ------------------------------------------------------------------

    def get_manifest(self, t: _Target, reference: str, *, artifact: bool = False
                     ) -> tuple[bytes, str, str, Index | Manifest]:
        """(bytes, media type, sha256 digest, parsed document) of a manifest or index.

        The body is read capped at 4 MiB (containerd's limit), checked against a pinned
        digest in the pin's own algorithm (sha256 or sha512) and against the registry's
        Docker-Content-Digest, then parsed and checked as a document.
        """
        if ":" in reference:
            try:
                check_digest(reference, "pinned digest")
            except DocumentError as e:
                raise t.fail(str(e)) from None
        url = f"/v2/{t.ref.repository}/manifests/{reference}"
        what = (f"manifest {reference}" if ":" in reference
                else f"the manifest of tag {reference!r}") + f" from {t.registry}"

        def fetch() -> tuple[requests.Response, bytes]:
            resp = self._send(t, "GET", url, headers={"Accept": ACCEPT_MANIFESTS}, stream=True)
            if resp.status_code == 404:
                return resp, b""
            with resp:
                try:
                    # Read inside the retry: a drop mid-body is retried.
                    return resp, read_capped(resp, MAX_MANIFEST, Pace(self.limits, what))
                except TransferError as e:
                    raise t.fail(str(e)) from None

        resp, body = self._retrying(t, fetch)
        if resp.status_code == 404:
            shown = t.display if reference in t.display else f"{t.repo}@{reference}"
            msg = _error_text(resp)
            extra = f" ({msg})" if msg not in ("manifest unknown", f"HTTP 404 {resp.reason}") else ""
            raise PybuildError(f"manifest unknown: {shown}{extra}")
        digest = digest_of(body)
        if ":" in reference and digest_of(body, reference) != reference:
            raise t.fail(f"manifest {reference} from {t.registry} does not match its digest "
                         f"(got {digest_of(body, reference)})")
        sent = resp.headers.get("Docker-Content-Digest", "")
        try:
            check_digest(sent)
        except DocumentError:
            sent = ""  # absent or unreadable: the digest we compute is what counts
        if sent and digest_of(body, sent) != sent:
            raise t.fail(f"manifest from {t.registry} does not match the Docker-Content-Digest "
                         f"{sent} (got {digest_of(body, sent)})")
        declared = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            doc = parse_document(body, what, declared, artifact=artifact)
        except DocumentError as e:
            raise t.fail(str(e)) from None
        return body, doc.media_type, digest, doc

    # ---- blobs ----------------------------------------------------------------------

    def _download(self, t: _Target, desc: Descriptor, abort: threading.Event,
                  write: Callable[[bytes], object], *, hashed: bool = False) -> None:
        """Stream one blob to `write`, checked as it comes: no byte beyond its size, a
        Content-Length that agrees with the descriptor, the deadline and minimum rate, and
        at the end its size and its digest in the descriptor's own algorithm (`hashed`: the
        sink verifies the digest itself, a sha256 store writer). `write` must not publish
        anything before this returns (a store writer commits after)."""
        label = _short(desc.digest)
        url = f"/v2/{t.ref.repository}/blobs/{desc.digest}"
        what = f"blob {desc.digest} from {t.registry}"
        resp = self._send(t, "GET", url, stream=True)
        with resp:
            if resp.status_code == 404:
                raise t.fail(f"blob unknown: {desc.digest} is missing from {t.repo}")
            declared = resp.headers.get("Content-Length")
            if declared is not None and not resp.headers.get("Content-Encoding") and \
                    declared.strip() != str(desc.size):
                raise t.fail(f"{what} is announced as {declared.strip()[:20]} bytes "
                             f"(Content-Length), its descriptor says {desc.size}: not stored")
            h = None if hashed else hasher(desc.digest)
            size = 0
            try:
                for chunk in iter_body(resp, Pace(self.limits, what)):
                    if abort.is_set():
                        raise t.fail("cancelled after another transfer failed")
                    size += len(chunk)
                    if size > desc.size:
                        raise t.fail(f"{what} is larger than its {desc.size} bytes: not stored")
                    if h is not None:
                        h.update(chunk)
                    write(chunk)
                    self._report(label, size, desc.size)
            except TransferError as e:
                raise t.fail(str(e)) from None
            if size != desc.size:
                raise Truncated(f"blob {desc.digest} ended after {size} of {desc.size} bytes")
            if h is not None:
                got = f"{desc.digest.split(':', 1)[0]}:{h.hexdigest()}"
                if got != desc.digest:
                    raise t.fail(f"{what} does not match its digest (got {got}): not stored")

    def fetch_blob(self, t: _Target, store: Store, desc: Descriptor,
                   abort: threading.Event) -> None:
        """Download one blob into the store, verified against its digest and size."""
        label = _short(desc.digest)

        def download() -> None:
            with store.writer(expected_digest=desc.digest) as w:
                # The writer hashes (sha256) as it writes: one hash pass, checked by commit.
                self._download(t, desc, abort, w.write, hashed=True)
                got = w.digest
                if got != desc.digest:
                    raise t.fail(f"blob {desc.digest} from {t.registry} does not match its "
                                 f"digest (got {got}): not stored")
                w.commit(desc.media_type)

        self._report(label, 0, desc.size)
        self._retrying(t, download)

    def fetch_bytes(self, t: _Target, desc: Descriptor) -> bytes:
        """A small blob (a config) into memory, verified as fetch_blob does."""
        def download() -> bytes:
            buf = bytearray()
            self._download(t, desc, threading.Event(), buf.extend)
            return bytes(buf)

        return self._retrying(t, download)

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

    def _location(self, t: _Target, base: str, location: str) -> str:
        try:
            return http_url(base, location, f"registry {t.registry} opened an upload at")
        except TransferError as e:
            raise t.fail(str(e)) from None

    def upload_blob(self, t: _Target, store: Store, desc: Descriptor, mount_from: list[str],
                    chunked: bool, verified: BlobFingerprint | None = None) -> str:
        """Mount or upload one blob; returns "mounted" or "uploaded". `verified` is what
        check_stored_blob returned for it: the file is hashed again only if it changed since."""
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
            location = self._location(t, self.base_url(t.registry) + "/", location)
            with store.open_blob(desc.digest) as f:
                # replaced or written since the check: hashed again, and it must be this file
                if not verified_unchanged(f, verified) and \
                        not verified_unchanged(f, check_stored_blob(store, desc)):
                    raise PybuildError(f"blob {desc.digest} changed while it was pushed")
                if chunked:
                    offset = 0
                    while offset < desc.size:
                        chunk = f.read(min(self.chunk_size, desc.size - offset))
                        if not chunk:
                            raise _ShortBlob(f"blob {desc.digest} ended after {offset} of its "
                                             f"{desc.size} bytes while it was being sent")
                        resp = self._send(t, "PATCH", location, ok=(202,), data=chunk, headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                            "Content-Length": str(len(chunk))})
                        if resp.status_code == 404:
                            raise t.fail(f"{_error_text(resp)}: upload of {label} vanished")
                        offset += len(chunk)
                        location = self._location(t, location,
                                                  resp.headers.get("Location") or location)
                        self._report(label, offset, desc.size)
                    resp = self._send(t, "PUT", _with_query(location, digest=desc.digest),
                                      ok=(201,), data=b"", headers={"Content-Length": "0"})
                else:
                    body = _ProgressReader(f, desc.size,
                                           lambda n: self._report(label, n, desc.size),
                                           f"blob {desc.digest}")
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
        digest = digest_of(body)
        resp = self._retrying(t, lambda: self._send(
            t, "PUT", f"/v2/{t.ref.repository}/manifests/{reference}", ok=(201,), data=body,
            headers={"Content-Type": media_type}))
        self._check_created(t, resp, digest, "the manifest")
        return digest


# What identifies the bytes of a blob file that was hashed: (device, inode, size, mtime_ns,
# ctime_ns) of the open file. A store blob is written to a temporary name and renamed, and
# any write in place moves mtime/ctime, so the same fingerprint is the same bytes.
BlobFingerprint = tuple[int, int, int, int, int]


def _fingerprint(st: os.stat_result) -> BlobFingerprint:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_stored_blob(store: Store, desc: Descriptor) -> BlobFingerprint:
    """A stored blob has its descriptor's size and digest (read through, streaming): so a
    push never sends a truncated or altered blob under a digest it does not have. Returns
    the fingerprint of the file that was hashed (`verified_unchanged` tells it again)."""
    path = store.blob_path(desc.digest)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PybuildError(f"blob {desc.digest} is missing from the store (run `pybuild "
                           f"doctor`)") from None
    if size != desc.size:
        raise PybuildError(f"blob {desc.digest} in the store is {size} bytes, its descriptor "
                           f"says {desc.size}: not pushed (the store is damaged: run `pybuild "
                           f"doctor`)")
    h = hasher(desc.digest)
    with store.open_blob(desc.digest) as f:
        before = _fingerprint(os.fstat(f.fileno()))
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        after = _fingerprint(os.fstat(f.fileno()))
    got = f"{desc.digest.split(':', 1)[0]}:{h.hexdigest()}"
    if got != desc.digest or before[2] != desc.size:
        raise PybuildError(f"blob {desc.digest} in the store hashes to {got}: not pushed "
                           f"(the store is damaged: run `pybuild doctor`)")
    if after != before:
        raise PybuildError(f"blob {desc.digest} changed while it was checked: not pushed")
    return before


def verified_unchanged(f: BinaryIO, verified: BlobFingerprint | None) -> bool:
    """Whether the open blob file `f` is the very file `check_stored_blob` hashed (same
    inode, size, mtime and ctime): then its bytes need no second hash before they are sent."""
    return verified is not None and _fingerprint(os.fstat(f.fileno())) == verified


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
    """Repositories of `registry` this store pulled `digest` from or pushed it to.

    Only reads: a push that fails before its first transfer leaves the store untouched."""
    if not (store.root / "pybuild.db").exists() or store.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'registry_blobs'"
            ).fetchone() is None:
        return []
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


def _choose_platform(t: _Target, index: Index, want: dict[str, str] | None = None
                     ) -> Descriptor:
    """The entry of a manifest list for `want` (the host when None), preferring its variant."""
    host = want or host_platform()
    entries = [d for d in index.manifests if d.media_type in MANIFEST_TYPES]
    chosen = choose(entries, host)
    if chosen is not None:
        return chosen
    available = ", ".join(sorted({platform_string(d.platform) for d in entries})) or "none"
    raise PybuildError(f"no image for {host['os']}/{host['architecture']} in {t.display} "
                       f"(available: {available})")


def _store_manifest(store: Store, body: bytes, digest: str, media_type: str) -> Descriptor:
    with store.writer(expected_digest=digest) as w:
        w.write(body)
        return w.commit(media_type)


def _image_config(client: RegistryClient, t: _Target, store: Store, manifest: Manifest
                  ) -> tuple[bytes, ImageConfig]:
    """The config of `manifest`, fetched into memory (not stored yet) and checked."""
    desc = manifest.config
    if store.has_blob(desc.digest):
        body = store.read_bytes(desc.digest)
    else:
        body = client.fetch_bytes(t, desc)
    try:
        config = parse_config(body, f"config {_short(desc.digest)} of {t.display}")
        check_image(manifest, config, f"image {t.display}")
    except DocumentError as e:
        raise t.fail(str(e)) from None
    return body, config


def pull(store: Store, ref: str, *, client: RegistryClient | None = None,
         platform: dict[str, str] | None = None) -> Descriptor:
    """Pull `ref` for `platform` (this host's when None) into the store and tag it (docker's
    familiar name).

    Returns the stored single-platform manifest descriptor (with its platform). Manifest
    bytes are kept exactly as served, Docker media types included, so digests stay valid.
    Every document is checked (oci_documents) before any blob is written, so a bad one
    leaves the store as it was.
    """
    client = client or RegistryClient()
    r = parse_reference(ref)
    t = _Target(r, "pulling", (f"repository:{r.repository}:pull",))
    body, media_type, digest, doc = client.get_manifest(t, r.ref)
    index: tuple[bytes, str, str] | None = None
    got: dict[str, Any] | None = None
    if isinstance(doc, Index):
        index = (body, media_type, digest)
        chosen = _choose_platform(t, doc, platform)
        got = chosen.platform
        body, media_type, digest, doc = client.get_manifest(t, chosen.digest)
        if not isinstance(doc, Manifest):
            raise t.fail(f"manifest list entry {chosen.digest} is not an image manifest")
    config_body, config = _image_config(client, t, store, doc)
    layers = list({d.digest: d for d in doc.layers if d.digest != doc.config.digest}.values())
    missing = [d for d in layers if not store.has_blob(d.digest)]
    for d in [doc.config, *layers]:
        if d not in missing:
            client._report(_short(d.digest), d.size, d.size)
    _parallel(missing, lambda d, abort: client.fetch_blob(t, store, d, abort))
    _store_manifest(store, config_body, doc.config.digest, doc.config.media_type)
    if got is None:
        got = config.platform
        if platform is not None and got is not None and not matches(got, platform):
            raise PybuildError(f"{t.display} is {platform_string(got)}, not "
                               f"{platform_string(platform)} (no manifest list to choose from)")
    stored = _store_manifest(store, body, digest, media_type)
    if index is not None:
        _store_manifest(store, index[0], index[2], index[1])
    desc = Descriptor(stored.media_type, stored.digest, stored.size, None, got)
    store.set_tag(r.familiar, desc)
    _record(store, r.registry, r.repository, [d.digest for d in [doc.config, *layers]])
    return desc


def push(store: Store, local: str, dest: str, *, client: RegistryClient | None = None,
         chunked: bool = False) -> str:
    """Push the image `local` (tag or ID) to `dest`; returns the manifest digest.

    Blobs go first (skipped when present, mounted when known in another repository of
    the same registry), the manifest last, so the tag never points at missing blobs.
    """
    client = client or RegistryClient()
    r = parse_reference(dest)
    if r.digest:
        raise PybuildError(f"cannot push to a digest reference: {dest} (push to a tag)")
    from pybuild.attest.manifest import is_attestation

    t = _Target(r, "pushing", (f"repository:{r.repository}:pull,push",))
    top = None if local.startswith("sha256:") else store.resolve_tag(parse_reference(local).familiar)
    if top is not None and _image.is_index(store, top):
        # a multi-platform tag: every manifest (its blobs first) by digest, the index last
        for entry in _image.index_entries(store, top):
            if is_attestation(entry):
                _push_attestation(store, client, t, entry, local, chunked)
                continue
            _push_manifest(store, client, t, _image.load_descriptor(store, entry, local),
                           entry.digest, local, chunked)
        return client.put_manifest(t, r.tag or "latest", store.read_bytes(top.digest),
                                   top.media_type)
    return _push_manifest(store, client, t, _image.load(store, local), r.tag or "latest",
                          local, chunked)


def _push_manifest(store: Store, client: RegistryClient, t: _Target, img: _image.Image,
                   tag: str, local: str, chunked: bool) -> str:
    """One image manifest's blobs, then the manifest under `tag` (a tag or its digest)."""
    body = store.read_bytes(img.manifest_desc.digest)
    media_type = kind_of(img.manifest, img.manifest_desc.media_type)
    if media_type not in MANIFEST_TYPES:
        media_type = OCI_MANIFEST
    blobs = list({d.digest: d for d in [img.config_desc, *img.layers]}.values())
    return _push_document(store, client, t, body, media_type, blobs, tag, local, chunked)


def _push_document(store: Store, client: RegistryClient, t: _Target, body: bytes,
                   media_type: str, blobs: list[Descriptor], tag: str, local: str,
                   chunked: bool) -> str:
    """The blobs a manifest names (checked present first), then the manifest itself."""
    for d in blobs:
        if not store.has_blob(d.digest):
            raise PybuildError(f"image {local}: blob {d.digest} is missing from the store "
                               f"(run `pybuild doctor`)")
    _send_blobs(client, t, store, blobs, chunked)
    digest = client.put_manifest(t, tag, body, media_type)
    _record(store, t.ref.registry, t.ref.repository, [d.digest for d in blobs])
    return digest


def _push_attestation(store: Store, client: RegistryClient, t: _Target, entry: Descriptor,
                      local: str, chunked: bool) -> str:
    """An attestation manifest by digest: its config and in-toto layers are not an image's
    (no rootfs to check), so it is read as an artifact and its bytes sent as stored."""
    from pybuild.attest.manifest import blobs_of

    _, *blobs = blobs_of(store, entry, f"image {local}")
    return _push_document(store, client, t, store.read_bytes(entry.digest), entry.media_type,
                          blobs, entry.digest, local, chunked)


def _send_blobs(client: RegistryClient, t: _Target, store: Store, blobs: list[Descriptor],
                chunked: bool) -> None:
    """Each blob the registry lacks: mounted from another repository it is known to be in,
    else uploaded; 4 at a time. Blobs already there are skipped (HEAD)."""
    # A damaged store is refused before any transfer starts (whatever the registry answers
    # to the others meanwhile). Each blob is hashed once, here: upload_blob sends the file
    # only if it is still the one hashed (same inode, size, mtime, ctime), else hashes again.
    verified = {d.digest: check_stored_blob(store, d) for d in blobs}
    sources = {d.digest: [repo for repo in known_repositories(store, t.ref.registry, d.digest)
                          if repo != t.ref.repository] for d in blobs}

    def send(d: Descriptor, abort: threading.Event) -> str:
        if abort.is_set():
            raise t.fail("cancelled after another transfer failed")
        if client.blob_exists(t, d.digest):
            client._report(_short(d.digest), d.size, d.size)
            return "exists"
        return client.upload_blob(t, store, d, sources[d.digest], chunked, verified[d.digest])

    _parallel(blobs, send)


# ---- login -----------------------------------------------------------------------------

def _registry_host(registry: str) -> str:
    """"https://host:5000/" → "host:5000"; Docker Hub's names → docker.io."""
    host = registry.strip()
    for prefix in ("http://", "https://"):
        if host.startswith(prefix):
            host = host[len(prefix):]
    host = host.split("/", 1)[0]
    if not host or host in DOCKER_HUB_HOSTS or registry == DOCKER_HUB_AUTH_KEY:
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
    body = canonical_json(manifest)
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
        _body, _media_type, _digest, manifest = client.get_manifest(t, r.ref, artifact=True)
    except PybuildError as e:
        if str(e).startswith("manifest unknown"):
            return None
        raise
    if not isinstance(manifest, Manifest):
        raise t.fail("not a cache manifest (it is an index)")
    config = manifest.config
    if config.size > MAX_CONFIG:
        raise t.fail(f"cache config {config.digest} is {config.size} bytes, larger than the "
                     f"limit of {MAX_CONFIG}")
    if not store.has_blob(config.digest):
        _parallel([config], lambda d, abort: client.fetch_blob(t, store, d, abort))
    return store.read_json(config.digest), list(manifest.layers)


def fetch_blobs(store: Store, ref: str, descs: list[Descriptor], *,
                client: RegistryClient | None = None) -> None:
    """Download the blobs of `descs` missing from the store, verified, from `ref`'s repository."""
    client = client or RegistryClient()
    r = parse_reference(ref)
    t = _Target(r, "pulling", (f"repository:{r.repository}:pull",))
    missing = [d for d in descs if not store.has_blob(d.digest)]
    _parallel(missing, lambda d, abort: client.fetch_blob(t, store, d, abort))
    _record(store, r.registry, r.repository, [d.digest for d in descs])
