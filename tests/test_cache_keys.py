"""Cache keys hold meaning, never where or how a thing was written.

The same Dockerfile with comments, blank lines, other whitespace, another flag order and
an unrelated extra stage keeps every step cached (plain progress says CACHED for each).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Pybuild
from test_cache import build, ctx_with

pytestmark = pytest.mark.root

ORIGINAL = """FROM busybox AS base
RUN echo base > /base
FROM base AS app
ARG FLAVOUR=plain
RUN --mount=type=cache,target=/cache,id=pip,sharing=locked --mount=type=bind,from=base,source=/base,target=/b cat /b > /copy
RUN --mount=type=bind,source=a.txt,target=/a.txt --network=none cat /a.txt > /a
RUN --mount=type=tmpfs,target=/scratch,size=1m echo "$FLAVOUR" > /flavour
COPY --chmod=644 --chown=1:1 a.txt /x
WORKDIR /w
RUN echo done > done
"""

# Same meaning: comments (also above each RUN --mount), blank lines, whitespace, the
# mount fields and the flags in another order, relative paths written differently,
# and an unrelated stage first (every stage index moves by one).
REWRITTEN = """# syntax and comments do not matter
FROM busybox AS unrelated
RUN echo not built > /nothing

FROM   busybox   AS   base
# a comment
RUN   echo base > /base

FROM base AS app
ARG FLAVOUR=plain

# a comment above a RUN --mount
RUN --mount=id=pip,target=/cache/,type=cache,sharing=locked  --mount=target=/b,source=base/../base,from=base,type=bind   cat /b > /copy
  # another one, indented
RUN --network=none --mount=source=./a.txt,target=/a.txt cat /a.txt > /a
RUN --mount=type=tmpfs,size=1m,target=/scratch echo "$FLAVOUR" > /flavour

COPY --chown=1:1 --chmod=644 ./a.txt /x
WORKDIR /w
RUN echo done > done
"""


def test_comments_whitespace_flag_order_and_extra_stages_keep_every_step_cached(
        busybox: Pybuild, tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, ORIGINAL, {"a.txt": "a"})
    first = build(busybox, ctx)
    assert first and "CACHED" not in first.values()
    (ctx / "Dockerfile").write_text(REWRITTEN)
    second = build(busybox, ctx)
    steps = {k: v for k, v in second.items() if "FROM" not in k}
    assert len(steps) == len([k for k in first if "FROM" not in k]) == 7
    assert set(steps.values()) == {"CACHED"}, steps


def test_a_changed_meaning_still_misses(busybox: Pybuild, tmp_path: Path) -> None:
    """The other side: what a mount means is in the key (id, target, readonly, size)."""
    ctx = ctx_with(tmp_path, ORIGINAL, {"a.txt": "a"})
    build(busybox, ctx)
    (ctx / "Dockerfile").write_text(ORIGINAL.replace("size=1m", "size=2m"))
    result = build(busybox, ctx)
    changed = [k for k, v in result.items() if v != "CACHED" and "FROM" not in k]
    assert changed[0].endswith('echo "$FLAVOUR" > /flavour') or "flavour" in changed[0], result
    assert result[changed[0]].startswith("mounts changed"), result
