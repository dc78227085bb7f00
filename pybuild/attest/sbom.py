"""An SPDX 2.3 JSON SBOM of an image: what dpkg, apk and Python's installers recorded.

Read from the image's own package databases (`var/lib/dpkg/status`, `status.d/*`,
`lib/apk/db/installed`, `*.dist-info/METADATA`, `*.egg-info/PKG-INFO`), never by running
anything in the image. Every package gets a purl; the document is deterministic for a given
image (ids from content, time from the image's `created`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pybuild import __version__

SPDX_VERSION = "SPDX-2.3"
PREDICATE_TYPE = "https://spdx.dev/Document"
_DPKG_STATUS = "var/lib/dpkg/status"
_DPKG_STATUS_D = "var/lib/dpkg/status.d/"
_APK_DB = "lib/apk/db/installed"
_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
_PY_META = re.compile(r"(^|/)[^/]+\.(dist-info/METADATA|egg-info/PKG-INFO)$")
_SPDX_ID_CHARS = re.compile(r"[^A-Za-z0-9.-]")


@dataclass(frozen=True)
class Package:
    """One installed package, as its package manager recorded it."""

    kind: str            # "deb", "apk" or "pypi"
    name: str
    version: str
    purl: str
    location: str        # the database file it was read from
    arch: str = ""
    source: str = ""
    supplier: str = ""
    homepage: str = ""


def wanted(path: str) -> bool:
    """The files an SBOM reads from an image (for image_files.read_files)."""
    return (path in (_DPKG_STATUS, _APK_DB, *_OS_RELEASE) or path.startswith(_DPKG_STATUS_D)
            or _PY_META.search(path) is not None)


def _os_release(files: dict[str, bytes]) -> dict[str, str]:
    for name in _OS_RELEASE:
        if name in files:
            out: dict[str, str] = {}
            for line in files[name].decode(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    out[key.strip()] = value.strip().strip('"').strip("'")
            return out
    return {}


def _purl(kind: str, namespace: str, name: str, version: str, qualifiers: dict[str, str]) -> str:
    """A package URL (purl spec): percent-encoded parts, qualifiers sorted, empty ones dropped."""
    ns = f"{quote(namespace, safe='')}/" if namespace else ""
    quals = "&".join(f"{k}={quote(v, safe='')}" for k, v in sorted(qualifiers.items()) if v)
    return (f"pkg:{kind}/{ns}{quote(name, safe='')}@{quote(version, safe='')}"
            + (f"?{quals}" if quals else ""))


def _stanzas(text: str) -> list[dict[str, str]]:
    """Debian control stanzas: `Key: value` lines, continuation lines folded in."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, ""
        elif line[0] in " \t" and key:
            cur[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            key = key.strip()
            cur[key] = value.strip()
    if cur:
        out.append(cur)
    return out


def _distro(osr: dict[str, str], default: str) -> tuple[str, str]:
    """(ID, ID-VERSION_ID) of os-release, the purl namespace and its `distro` qualifier."""
    distro_id = osr.get("ID", default)
    return distro_id, f"{distro_id}-{osr['VERSION_ID']}" if osr.get("VERSION_ID") else distro_id


def _os_package(kind: str, distro: tuple[str, str], name: str, version: str, location: str,
                arch: str, source: str, supplier: str, homepage: str) -> Package:
    """A distribution package with its purl: arch and distro qualifiers, and the source
    package as `upstream` where it is another name."""
    quals = {"arch": arch, "distro": distro[1]}
    if source and source != name:
        quals["upstream"] = source
    return Package(kind, name, version, _purl(kind, distro[0], name, version, quals), location,
                   arch, source, supplier, homepage)


def _dpkg(files: dict[str, bytes], osr: dict[str, str]) -> list[Package]:
    distro = _distro(osr, "debian")
    out = []
    for path in sorted(p for p in files if p == _DPKG_STATUS or p.startswith(_DPKG_STATUS_D)):
        for st in _stanzas(files[path].decode(errors="replace")):
            name, version = st.get("Package", ""), st.get("Version", "")
            status = st.get("Status", "install ok installed").split()
            if not name or not version or status[-1:] != ["installed"]:
                continue
            out.append(_os_package("deb", distro, name, version, path, st.get("Architecture", ""),
                                   st.get("Source", "").split(" ")[0], st.get("Maintainer", ""),
                                   st.get("Homepage", "")))
    return out


def _apk(files: dict[str, bytes], osr: dict[str, str]) -> list[Package]:
    if _APK_DB not in files:
        return []
    distro = _distro(osr, "alpine")
    out = []
    for block in files[_APK_DB].decode(errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if len(line) > 2 and line[1] == ":":
                fields.setdefault(line[0], line[2:])
        name, version = fields.get("P", ""), fields.get("V", "")
        if not name or not version:
            continue
        out.append(_os_package("apk", distro, name, version, _APK_DB, fields.get("A", ""),
                               fields.get("o", ""), fields.get("m", ""), fields.get("U", "")))
    return out


def _pypi_name(name: str) -> str:
    """PEP 503 normalisation, as the purl spec asks for pypi names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _python(files: dict[str, bytes]) -> list[Package]:
    from email.parser import HeaderParser  # here only: most builds make no SBOM

    out = []
    for path in sorted(p for p in files if _PY_META.search(p)):
        meta = HeaderParser().parsestr(files[path].decode(errors="replace"), headersonly=True)
        name, version = meta.get("Name", ""), meta.get("Version", "")
        if not name or not version:
            continue
        norm = _pypi_name(name)
        out.append(Package("pypi", name, version, _purl("pypi", "", norm, version, {}), path,
                           supplier=meta.get("Author", "") or "", homepage=meta.get("Home-page", "") or ""))
    return out


def packages(files: dict[str, bytes]) -> list[Package]:
    """Every package the image's databases list, sorted and without duplicates."""
    osr = _os_release(files)
    found = set(_dpkg(files, osr) + _apk(files, osr) + _python(files))
    return sorted(found, key=lambda p: (p.kind, p.name.lower(), p.version, p.location))


def _spdx_id(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return f"SPDXRef-{prefix}-{_SPDX_ID_CHARS.sub('-', parts[0])[:60]}-{digest}"


def _supplier(text: str) -> str:
    """SPDX's supplier field: `Organization: name` or NOASSERTION (no e-mail leaks needed)."""
    name = re.sub(r"\s*<[^>]*>", "", text).strip().replace("\n", " ")
    return f"Organization: {name}" if name else "NOASSERTION"


def _repository(name: str) -> str:
    """`registry/repo` of a reference, without its tag or digest."""
    name = name.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return (head + "/" if head else "") + last.split(":", 1)[0]


def spdx_time(rfc3339: str) -> str:
    """SPDX wants `YYYY-MM-DDThh:mm:ssZ`: no fractions, UTC."""
    return rfc3339[:19] + "Z" if len(rfc3339) >= 19 else rfc3339


def document(files: dict[str, bytes], *, image_name: str, image_digest: str,
             created: str) -> dict[str, Any]:
    """The SPDX 2.3 JSON document for an image whose package files are `files`."""
    pkgs = packages(files)
    hexdigest = image_digest.partition(":")[2] or image_digest
    root_id = "SPDXRef-Image"
    spdx_packages: list[dict[str, Any]] = [{
        "name": image_name,
        "SPDXID": root_id,
        "versionInfo": image_digest,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "CONTAINER",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": _purl("docker", "", _repository(image_name),
                                                    image_digest, {})}],
    }]
    relationships: list[dict[str, str]] = [{"spdxElementId": "SPDXRef-DOCUMENT",
                                            "relationshipType": "DESCRIBES",
                                            "relatedSpdxElement": root_id}]
    for p in pkgs:
        pid = _spdx_id(p.kind, p.name, p.version, p.location)
        entry: dict[str, Any] = {
            "name": p.name,
            "SPDXID": pid,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "supplier": _supplier(p.supplier),
            "sourceInfo": f"recorded in /{p.location}",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": p.purl}],
        }
        if p.homepage.startswith(("http://", "https://")):
            entry["homepage"] = p.homepage
        spdx_packages.append(entry)
        relationships.append({"spdxElementId": root_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": pid})
    return {
        "spdxVersion": SPDX_VERSION,
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"sbom-{image_name}",
        # unique per image content, stable across rebuilds of the same image
        "documentNamespace": f"urn:pybuild:spdx:{hexdigest}",
        "creationInfo": {"created": spdx_time(created), "creators": [f"Tool: pybuild-{__version__}"]},
        "packages": spdx_packages,
        "relationships": relationships,
    }


def for_image(store: Any, img: Any, name: str) -> dict[str, Any]:
    """The SBOM of an image in the store, read from its layer blobs (no mount, no root)."""
    from functools import partial

    from pybuild.attest.image_files import read_files

    files = read_files([partial(store.open_blob, d.digest) for d in img.layers], wanted, name)
    created = str(img.config.get("created") or "1970-01-01T00:00:00Z")
    return document(files, image_name=name, image_digest=img.manifest_desc.digest, created=created)


def table(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """NAME, VERSION, TYPE, PURL rows of a document's packages (the image itself left out)."""
    rows = []
    for p in doc.get("packages") or []:
        if not isinstance(p, dict) or p.get("SPDXID") == "SPDXRef-Image":
            continue
        purl = next((r.get("referenceLocator", "") for r in p.get("externalRefs") or []
                     if isinstance(r, dict) and r.get("referenceType") == "purl"), "")
        kind = purl[4:].split("/", 1)[0] if purl.startswith("pkg:") else ""
        rows.append((str(p.get("name", "")), str(p.get("versionInfo", "")), kind, str(purl)))
    return rows
