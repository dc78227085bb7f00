"""Digests: the one typed form a digest from outside takes before it may name anything.

A digest string comes from a manifest, a config's `rootfs.diff_ids`, a cache record, a
done marker or a registry. Before it becomes part of a path (`blobs/<algorithm>/<hex>`,
`snapshots/<hex>`) it is parsed here: an algorithm this code can check and exactly the
hex digits that algorithm produces. Nothing else is ever joined to a store path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pybuild.errors import PybuildError

# algorithm → number of lowercase hex digits (the OCI registered algorithms we can check)
ALGORITHMS = {"sha256": 64, "sha512": 128}
_RE = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")


@dataclass(frozen=True, order=True)
class Digest:
    """`algorithm:hex`, validated: sha256 with 64 hex digits or sha512 with 128."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        want = ALGORITHMS.get(self.algorithm)
        if want is None or len(self.hex) != want or not re.fullmatch(r"[0-9a-f]+", self.hex):
            raise PybuildError(f"invalid digest {self.algorithm}:{self.hex!r}")

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: Any, what: str = "digest", *, algorithms: tuple[str, ...] = ("sha256", "sha512")
              ) -> Digest:
        """Parse `value`; PybuildError naming `what` unless it is `algo:hex` of a listed algorithm."""
        m = _RE.match(value) if isinstance(value, str) else None
        if m is None or m.group(1) not in algorithms or len(m.group(2)) != ALGORITHMS[m.group(1)]:
            shape = " or ".join(f"{a}:<{ALGORITHMS[a]} hex digits>" for a in algorithms)
            shown = value if isinstance(value, str) else type(value).__name__
            if isinstance(shown, str) and len(shown) > 100:
                shown = shown[:100] + "…"
            raise PybuildError(f"invalid {what} {shown!r}: expected {shape}")
        return cls(m.group(1), m.group(2))

    @classmethod
    def sha256(cls, value: Any, what: str = "digest") -> Digest:
        """Parse a digest that must be sha256 (blob names, diff_ids, chain ids)."""
        return cls.parse(value, what, algorithms=("sha256",))

    def hasher(self) -> Any:
        """A fresh hashlib object of this digest's algorithm."""
        return hashlib.new(self.algorithm)


def sha256_hex(value: Any, what: str = "digest") -> str:
    """The hex part of a sha256 digest, validated: what may name a file or directory."""
    return Digest.sha256(value, what).hex
