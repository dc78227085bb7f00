"""`.dockerignore` and COPY wildcard matching is linear: no pattern can hang a build.

The matcher used to compile patterns into backtracking regexes: a line with twenty `**`
spun at 100% CPU for ever. The linear matcher (pybuild.patterns) must agree with that
regex form (moby/patternmatcher's semantics) on every ordinary pattern, and finish
hostile ones at once. Deep context trees walk without recursion, or fail in one line.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Pybuild

from pybuild.liveness import remove_tree
from pybuild.context import BuildContext, PatternMatcher, go_clean, walk_visible
from pybuild.errors import PybuildError
from pybuild.patterns import compile_go_glob

ROOT = Path(__file__).resolve().parents[2]


# The previous implementation, kept as the oracle for ordinary patterns: moby's regex form
# run by Python's backtracking `re`, with the exact/prefix/suffix shortcuts.
def _old_compile(pattern: str) -> tuple[str, re.Pattern[str] | None]:
    out, kind, i, n, first = "^", "exact", 0, len(pattern), True
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                if i + 1 >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        out += ".*"
                        kind = "regexp"
                else:
                    out += "(.*/)?"
                    kind = "regexp"
                if first:
                    kind = "suffix"
            else:
                out += "[^/]*"
                kind = "regexp"
        elif ch == "?":
            out += "[^/]"
            kind = "regexp"
        elif ch in ".+()|{}$":
            out += "\\" + ch
        elif ch == "\\":
            if i + 1 < n:
                i += 1
                out += re.escape(pattern[i])
                kind = "regexp"
            else:
                out += "\\\\"
        elif ch in "[]":
            out += ch
            kind = "regexp"
        else:
            out += ch
        i += 1
        first = False
    return kind, (re.compile(out + "$", re.DOTALL) if kind == "regexp" else None)


def _old_match_one(pattern: str, path: str) -> bool:
    kind, regex = _old_compile(pattern)
    if kind == "exact":
        return path == pattern
    if kind == "prefix":
        return path.startswith(pattern[:-2])
    if kind == "suffix":
        suffix = pattern[2:]
        return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
    assert regex is not None
    return regex.match(path) is not None


def _old_matches(patterns: list[str], path: str) -> bool:
    parents = path.split("/")[:-1]
    matched = False
    for raw in patterns:
        text = go_clean(raw.strip())
        exclusion = text.startswith("!")
        pat = text[1:] if exclusion else text
        if exclusion != matched:
            continue
        hit = _old_match_one(pat, path) or any(
            _old_match_one(pat, "/".join(parents[: i + 1])) for i in range(len(parents)))
        if hit:
            matched = not exclusion
    return matched


PATTERNS = ["*.pyc", "**/*.pyc", "**/node_modules", "node_modules", "docs/**", "**", "**foo",
            "a/**/b", "a/**", "**/b", "a?c", "[a-c]at", "[^a-c]at", "[a-]x", "file\\*", "a.b",
            "build/", "*/*.md", "a/*/c", "**/a/**/c", "a**b", "*.*", "?", "a/b/c", "x/**/y/**/z",
            ".git", "**/.env*", "src/**/test_*.py", "[]a]", "a\\", "**/**", "a/[b-d]/**",
            "secrets", "!secrets/ok", "(x)", "x+y", "{a}", "$x", "a|b"]
PATHS = ["a.pyc", "sub/a.pyc", "sub/deep/a.pyc", "web/node_modules/x/y.js", "node_modules/x.js",
         "docs", "docs/a/b.md", "xfoo", "foo", "a/b", "a/x/y/b", "abc", "a/c", "bat", "cat", "zat",
         "/at", "-x", "ax", "file*", "filex", "a.b", "axb", "build/out", "build", "a/x/c",
         "README.md", "docs/README.md", "a/b/c", "a/b/x/c", "ab", "a/zb", "x/1/y/2/z", "x/y/z",
         ".git", ".git/config", "app/.env.local", ".env", "src/pkg/test_a.py", "src/test_b.py",
         "]", "a\\", "a/c/d", "secrets/ok", "secrets/no", "(x)", "x+y", "{a}", "$x", "a|b", "x",
         "a/b/c/d/e", "Dockerfile", "a\nb", "ü/x"]


REJECTED = {"[a-]x", "[]a]", "a\\"}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_linear_matcher_agrees_with_the_regex_form(pattern: str) -> None:
    if pattern in REJECTED:   # Go's filepath.Match rejects them, so Docker does
        with pytest.raises(PybuildError, match="syntax error in pattern"):
            PatternMatcher([pattern])
        return
    mine = PatternMatcher([pattern])
    for path in PATHS:
        assert mine.matches(path) == _old_matches([pattern], path), (pattern, path)


def test_pattern_lists_with_reinclusion_agree() -> None:
    lists = [list(c) for c in itertools.combinations(
        ["**/*.log", "!keep/**", "keep/x.log", "build", "!build/dist", "*", "!*.md", "a/**/b"], 3)]
    for patterns in lists:
        matcher = PatternMatcher(patterns)
        for path in PATHS + ["keep/x.log", "keep/y.log", "build/dist/a", "z.md", "q/w.log"]:
            assert matcher.matches(path) == _old_matches(patterns, path), (patterns, path)


def test_go_glob_for_copy_wildcards() -> None:
    cases = [("*.txt", "a.txt", True), ("*.txt", "a.txtx", False), ("a*b*c", "aXbYc", True),
             ("a*b*c", "abcb", False), ("[!a]x", "!x", True), ("[^a]x", "bx", True),
             ("[^a]x", "ax", False), ("\\*", "*", True), ("??", "ab", True), ("??", "abc", False)]
    for pattern, name, ok in cases:
        assert compile_go_glob(pattern).fullmatch(name) is ok, (pattern, name)


HOSTILE = [
    "**/" * 20 + "x",                                     # twenty `**`: the reported hang
    "**" + "a**" * 25 + "b",
    "*a" * 30 + "b",                                      # classic (a*)^n backtracking
    "[^x]*" * 20 + "z",
    "?*" * 40 + "!",
]


def test_hostile_patterns_finish_at_once(tmp_path: Path) -> None:
    """Run in a child with a hard timeout: a backtracking matcher would never return."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ("a" * 250)).write_text("")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from pathlib import Path\n"
        "from pybuild.context import BuildContext, PatternMatcher\n"
        f"pats = {HOSTILE!r}\n"
        "path = '/'.join(['a' * 40] * 30)\n"
        "m = PatternMatcher(pats)\n"
        "print(m.matches(path), m.matches('a' * 5000))\n"
        "root = Path(sys.argv[2])\n"
        "ctx = BuildContext(root, root / 'Dockerfile')\n"     # a COPY wildcard, (a*)^30 b
        "print(len(ctx.resolve_sources(['*a' * 30 + 'b'], 1)))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "0"]


def test_deep_trees_walk_without_recursion(tmp_path: Path) -> None:
    root = tmp_path / "ctx"
    root.mkdir()
    _make_deep(root, 1500)             # deeper than Python's recursion limit, below PATH_MAX
    try:
        (root.joinpath(*["d"] * 1500) / "leaf.txt").write_text("x")
        (root / ".dockerignore").write_text("**/ignored\n!**/kept\n")
        ctx = BuildContext(root, root / "Dockerfile")
        entries = list(walk_visible(root, [(ctx.matcher, "")]))
        assert len(entries) == 1 + 1500 + 1 and entries[-1][0].endswith("/leaf.txt")
        assert "d/" * 1500 + "leaf.txt" in ctx.manifest([root]).entries()
    finally:
        remove_tree(root)


def _make_deep(top: Path, depth: int) -> None:
    """top/d/d/.../d, made through fds (no path is ever longer than one name)."""
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


@pytest.mark.root
def test_a_context_deeper_than_path_max_fails_in_one_line(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /app\n")
    _make_deep(ctx, 10_000)            # far beyond PATH_MAX
    try:
        proc = busybox("build", str(ctx), check=False, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        # the context is the cause, not a Dockerfile line: one line naming the path and why
        assert "File name too long" in last and "..." in last and len(last) < 400, last
    finally:
        remove_tree(ctx)
