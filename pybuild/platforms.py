"""OCI platforms: this machine's, their spelling, and the host's entry of an index.

Every place that names or picks a platform (FROM --platform, --platform, the platform
ARGs, pulls, image configs, a stored index) asks this module. Foreign architectures run
under QEMU user emulation: `ensure_emulation` registers the binfmt_misc handler (with the
fix-binary flag, so the interpreter works inside the container's root) when missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pybuild.errors import PybuildError

# uname -m → GOARCH, as the OCI image spec spells architectures
ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
        "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
        "i686": "386", "i386": "386"}
_VARIANT = {"arm64": "v8", "arm": "v7"}


def host_arch(machine: str | None = None) -> str:
    """This machine's architecture as OCI spells it (amd64, arm64, ...)."""
    raw = (machine or os.uname().machine).lower()
    return ARCH.get(raw, raw)


def host_platform(machine: str | None = None) -> dict[str, str]:
    """The OCI platform of this machine ({"architecture": "amd64", "os": "linux"})."""
    arch = host_arch(machine)
    plat = {"architecture": arch, "os": "linux"}
    if arch in _VARIANT:
        plat["variant"] = _VARIANT[arch]
    return plat


def platform_string(p: dict[str, Any] | None) -> str:
    """os/arch[/variant], "?" for what is missing."""
    p = p or {}
    out = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return out + (f"/{p['variant']}" if p.get("variant") else "")


def normal_string(p: dict[str, Any]) -> str:
    """How BuildKit prints a platform: os/arch[/variant], arm64's implied v8 left out."""
    if p.get("architecture") == "arm64" and p.get("variant") == "v8":
        p = {k: v for k, v in p.items() if k != "variant"}
    return platform_string(p)


def parse_platform(text: str) -> dict[str, str]:
    """A `--platform` value (linux/arm64, arm64, linux/arm/v7) as an OCI platform, normalised
    as containerd does (arm64 gets variant v8, arm v7 unless given)."""
    parts = text.strip().lower().split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    if len(parts) > 3 or not all(parts) or parts[0] != "linux":
        raise PybuildError(f"invalid platform {text!r}: expected linux/ARCH[/VARIANT] "
                           f"(e.g. linux/amd64, linux/arm64)")
    arch = host_arch(parts[1])
    if arch not in ARCH.values():
        raise PybuildError(f"invalid platform {text!r}: unknown architecture {parts[1]!r}")
    plat = {"architecture": arch, "os": "linux"}
    variant = parts[2] if len(parts) == 3 else _VARIANT.get(arch, "")
    if variant:
        plat["variant"] = variant
    return plat


def parse_platforms(text: str) -> list[dict[str, str]]:
    """A comma-separated `--platform` list, each once, in the given order."""
    out: list[dict[str, str]] = []
    for part in text.split(","):
        p = parse_platform(part)
        if p not in out:
            out.append(p)
    return out


def matches(have: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    """Whether an image's platform serves `want` (same os and architecture; the variant
    only when both name one)."""
    have = have or {}
    if have.get("os", "linux") != want.get("os") or \
            host_arch(str(have.get("architecture", ""))) != want.get("architecture"):
        return False
    return not (have.get("variant") and want.get("variant")
                and have["variant"] != want["variant"])


def platform_args(target: dict[str, str] | None = None,
                  build: dict[str, str] | None = None) -> dict[str, str]:
    """BuildKit's automatic platform ARGs: TARGET* for the platform being built, BUILD* for
    this machine (where `FROM --platform=$BUILDPLATFORM` stages run natively)."""
    values: dict[str, str] = {}
    for prefix, plat in (("TARGET", target or host_platform()), ("BUILD", build or host_platform())):
        values[prefix + "PLATFORM"] = normal_string(plat)  # linux/arm64, TARGETVARIANT ""
        values[prefix + "OS"] = plat.get("os", "linux")
        values[prefix + "ARCH"] = plat["architecture"]
        values[prefix + "VARIANT"] = values[prefix + "PLATFORM"].split("/")[2] \
            if values[prefix + "PLATFORM"].count("/") == 2 else ""
    return values


def is_host(text: str) -> bool:
    """Whether a `--platform` value names this machine: linux/amd64, amd64, linux/arm64/v8."""
    host = host_platform()
    parts = text.strip().lower().split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    if parts[0] != "linux" or host_arch(parts[1]) != host["architecture"]:
        return False
    return len(parts) == 2 or (len(parts) == 3 and parts[2] == host.get("variant"))


class _HasPlatform(Protocol):
    @property
    def platform(self) -> dict[str, Any] | None: ...


T = TypeVar("T", bound=_HasPlatform)


def choose_host(entries: Sequence[T]) -> T | None:
    """The host's entry of a manifest list (docker's choice when pulling a multi-arch tag)."""
    return choose(entries, host_platform())


def choose(entries: Sequence[T], want: dict[str, Any] | None = None) -> T | None:
    """The entry of a manifest list for `want` (the host when None): same os and
    architecture, the wanted variant first; None when there is none."""
    want = want or host_platform()
    for want_variant in (True, False):
        for e in entries:
            p = e.platform or {}
            if p.get("os") == want["os"] and p.get("architecture") == want["architecture"] \
                    and (not want_variant or p.get("variant") == want.get("variant")):
                return e
    return None


# ----- emulation ------------------------------------------------------------------------
# OCI architecture → QEMU's name for it (qemu-<name>-static, binfmt handler qemu-<name>)
QEMU = {"arm64": "aarch64", "arm": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
        "riscv64": "riscv64", "386": "i386", "amd64": "x86_64"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = (Path("/usr/lib/binfmt.d"), Path("/usr/share/binfmts"))
QEMU_DIR = Path("/usr/bin")


def needs_emulation(plat: dict[str, Any]) -> bool:
    return host_arch(str(plat.get("architecture", ""))) != host_arch()


def _handler_ok(path: Path, name: str) -> bool:
    """An enabled handler for qemu-<name> with the fix-binary (F) flag, so it works inside
    a container's root, and preserve-argv0 (P), so multi-call binaries (busybox) see the
    name they were run by."""
    try:
        text = path.read_text()
    except OSError:
        return False
    lines = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    interp = lines.get("interpreter", "")
    flags = lines.get("flags:", "").strip()
    return text.startswith("enabled") and \
        (f"qemu-{name}" in interp or f"{name}-binfmt" in interp) and "F" in flags \
        and "P" in flags


def binfmt_entry(name: str) -> str:
    """The register line for qemu-<name>: the qemu-user-static package's own binfmt.d entry
    (magic, mask, its argv0-preserving interpreter), with the fix-binary flag."""
    conf = BINFMT_CONF[0] / f"qemu-{name}.conf"
    try:
        fields = conf.read_text().strip().split(":")
    except OSError:
        raise PybuildError(f"no binfmt entry for {name} ({conf} is missing): install "
                           f"qemu-user-static") from None
    if len(fields) != 8 or fields[2] != "M" or not fields[6].startswith("/"):
        raise PybuildError(f"{conf}: not a magic binfmt entry")
    if "F" not in fields[7]:
        fields[7] += "F"
    return ":".join(fields)


def ensure_emulation(plat: dict[str, Any]) -> None:
    """Make processes of `plat` runnable here: nothing for the host's architecture; else a
    binfmt_misc handler for qemu-<arch>-static with the fix-binary (F) flag, registered
    when missing (binfmt_misc mounted first when it is not). A clear error where the
    kernel or the machine refuses."""
    if not needs_emulation(plat):
        return
    arch = host_arch(str(plat.get("architecture")))
    name = QEMU.get(arch)
    if name is None:
        raise PybuildError(f"cannot emulate {platform_string(plat)}: no QEMU user emulator "
                           f"for {arch}")
    interpreter = QEMU_DIR / f"qemu-{name}-static"
    if not interpreter.exists():
        raise PybuildError(f"running {platform_string(plat)} steps needs QEMU user "
                           f"emulation: {interpreter} is missing (apt-get install "
                           f"qemu-user-static)")
    if not (BINFMT / "register").exists():
        import subprocess

        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                           capture_output=True, text=True)
        if r.returncode != 0 or not (BINFMT / "register").exists():
            raise PybuildError(f"cannot emulate {platform_string(plat)}: binfmt_misc is not "
                               f"mounted at {BINFMT} and mounting it failed: "
                               f"{(r.stderr or '').strip() or 'no register file'}")
    if any(_handler_ok(h, name) for h in BINFMT.iterdir()
           if h.name not in ("register", "status")):
        return
    if (BINFMT / f"qemu-{name}").exists():  # registered without F (or disabled): replace it
        try:
            (BINFMT / f"qemu-{name}").write_text("-1")
        except OSError as e:
            raise PybuildError(f"cannot replace the binfmt handler qemu-{name} (it lacks the "
                               f"fix-binary or preserve-argv0 flag): {e.strerror}") from None
    entry = binfmt_entry(name)
    try:
        (BINFMT / "register").write_text(entry)
    except OSError as e:
        if (BINFMT / f"qemu-{name}").exists():
            return  # registered by someone else meanwhile
        raise PybuildError(f"cannot emulate {platform_string(plat)}: the kernel refused the "
                           f"binfmt_misc handler for {interpreter}: {e.strerror}") from None
