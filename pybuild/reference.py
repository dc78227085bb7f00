"""Image references normalised the way docker does (distribution/reference).

`busybox` means docker.io/library/busybox:latest to every docker user; tags in the store,
the registry client and error messages must agree on that reading, so it lives here once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pybuild.errors import PybuildError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
# docker.io is an alias: the API itself is served from this host.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
# every name Docker Hub goes by, in references, credentials and API URLs
DOCKER_HUB_HOSTS = frozenset({DEFAULT_REGISTRY, "index.docker.io", DOCKER_HUB_API_HOST})

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_REFERENCE_RE = re.compile(rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$")
_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}$")
_NAME_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A normalised reference: registry "docker.io", repository "library/busybox".

    `tag` is None only when a digest pins the image; a bare name gets "latest".
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The repository as the distribution API names it: /v2/<name>/manifests/<ref>."""
        return self.repository

    @property
    def full_name(self) -> str:
        """docker's Name(): "docker.io/library/busybox"."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The name as docker prints it: "busybox", "localhost:5000/app"."""
        if self.registry == DEFAULT_REGISTRY:
            repo = self.repository
            if repo.startswith("library/") and repo.count("/") == 1:
                return repo[len("library/"):]
            return repo
        return self.full_name

    @property
    def familiar(self) -> str:
        """docker's familiar string with tag and/or digest: the store's tag name."""
        return self.familiar_name + self._suffix()

    @property
    def canonical(self) -> str:
        """Fully qualified: "docker.io/library/busybox:latest"."""
        return self.full_name + self._suffix()

    @property
    def ref(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host serving the registry API (docker.io's is registry-1.docker.io)."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag else ""
        return out + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.familiar


def _split_domain(name: str) -> tuple[str, str]:
    """docker's rule: the first component is a registry only if it looks like a host."""
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"
                   and first.lower() == first):
        domain, remainder = DEFAULT_REGISTRY, name
    else:
        domain, remainder = first, rest
    if domain == "index.docker.io":
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in remainder:
        remainder = "library/" + remainder
    return domain, remainder


def parse_reference(s: str) -> Reference:
    """Parse and normalise like `docker pull`/`docker tag`; PybuildError for invalid input."""
    if not isinstance(s, str) or s == "":
        raise PybuildError("invalid reference format: repository name must have at least one component")
    if _IDENTIFIER_RE.match(s):
        raise PybuildError(f"invalid repository name ({s}), cannot specify 64-byte hexadecimal strings")
    # Split off the tag and digest first so a registry port is not read as a tag.
    name, at, digest = s.partition("@")
    tag: str | None = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    domain, remainder = _split_domain(name)
    if remainder.lower() != remainder:
        raise PybuildError(f"invalid reference format: repository name must be lowercase: {s!r}")
    full = f"{domain}/{remainder}"
    rebuilt = full + (f":{tag}" if tag is not None else "") + (f"@{digest}" if at else "")
    m = _REFERENCE_RE.match(rebuilt)
    if m is None:
        raise PybuildError(f"invalid reference format: {s!r}")
    if len(full) > _NAME_MAX:
        raise PybuildError(f"invalid reference format: repository name must not be more than "
                           f"{_NAME_MAX} characters: {s!r}")
    if at:
        algo, _, hexpart = digest.partition(":")
        if algo == "sha256" and not re.fullmatch(r"[0-9a-f]{64}", hexpart):
            raise PybuildError(f"invalid reference format: invalid checksum digest: {s!r}")
    elif tag is None:
        tag = DEFAULT_TAG
    return Reference(domain, remainder, tag, digest if at else None)
