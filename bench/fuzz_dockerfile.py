"""Fuzz the Dockerfile frontend: grammar-built, then mutated, Dockerfiles through parse + plan.

The only acceptable outcomes are a plan or a DockerfileError; anything else (another
exception, a hang) is a bug. tests/security/test_fuzz.py drives the same grammar through
hypothesis with a small budget; this script runs 100,000+ inputs and reports inputs/s.

    python bench/fuzz_dockerfile.py [--count N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pybuild.dockerfile import ShellLex, parse, stages  # noqa: E402
from pybuild.errors import DockerfileError  # noqa: E402

WORDS = ["app", "/app", "src", ".", "*.py", "a b", "$X", "${X}", "${X:-d}", "${X:+alt}", "${X?err}",
         "${X#p}", "${X%%s}", "$1", "\\$X", "é", "'q u'", '"q $X"', "[a-z]", "../x", "/etc/passwd",
         "http://127.0.0.1/f.tar", "~", "''", '""', "${", "$", "\\", "`", "\u00a0", "x" * 40]
FLAGS = {
    "FROM": ["--platform=linux/amd64", "--platform=$BUILDPLATFORM"],
    "RUN": ["--mount=type=cache,target=/c", "--mount=type=secret,id=s,required",
            "--mount=type=bind,source=.,target=/b,rw", "--mount=type=tmpfs,target=/t,size=1m",
            "--mount=type=ssh", "--network=none", "--network=host", "--security=insecure",
            "--mount=type=cache,target=/c,sharing=locked,uid=1,gid=2,mode=0700", "--mount="],
    "COPY": ["--from=base", "--from=0", "--chown=1:1", "--chown=app", "--chmod=755", "--link",
             "--parents", "--exclude=*.md", "--chmod=9z"],
    "ADD": ["--chown=0:0", "--checksum=sha256:" + "0" * 64, "--keep-git-dir=true", "--link"],
    "HEALTHCHECK": ["--interval=5s", "--timeout=1s", "--start-period=2s", "--retries=3",
                    "--interval=bad", "--start-interval=1s"],
}
KEYWORDS = ["FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
            "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
            "HEALTHCHECK", "SHELL"]
# Most choices are valid so that inputs reach the planner; a few are wrong on purpose.
WRONG = 0.05
SPECIALS = ["\\\n", "\\ \n", "`\n", "\n#c\n", "\n\n", "\t", " ", "\r\n", "\x00", "\\", '"', "'",
            "[", "]", ",", "=", "<<EOF", "<<-EOF", "<<'EOF'", "EOF\n", "${", "}", "$", "#", "\ufeff"]


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _json_list(rng: random.Random) -> str:
    items = ", ".join(f'"{_word(rng)}"' for _ in range(rng.randint(0, 3)))
    return f"[{items}]" if rng.random() < 0.9 else f"[{items}"


def _args(rng: random.Random, kw: str) -> str:
    """Arguments shaped like the instruction's real syntax, sometimes subtly wrong."""
    w = _word
    if kw == "FROM":
        base = rng.choice(["busybox", "scratch", "base", "${IMG}", "img:tag@sha256:" + "a" * 64])
        if rng.random() < WRONG:
            return rng.choice(["", "a b", "x AS Bad!", "x AS"])
        return base + (f" AS {rng.choice(['base', 'b2', 'B3'])}" if rng.random() < 0.5 else "")
    if kw in ("RUN", "CMD", "ENTRYPOINT"):
        if rng.random() < 0.3:
            return _json_list(rng)
        if kw == "RUN" and rng.random() < 0.2:
            d = rng.choice(["EOF", "'EOF'", "-EOF", "E$X"])
            name = d.strip("-'")
            return f"<<{d}\necho {w(rng)}\n\t{w(rng)}\n{name}"
        return " && ".join(f"echo {w(rng)}" for _ in range(rng.randint(0, 3)))
    if kw in ("ENV", "LABEL"):
        if rng.random() < 0.2:
            return f"{w(rng)} {w(rng)}"  # legacy form
        return " ".join(f"{rng.choice(['X', 'a.b', 'K_1', '', '1x'])}={w(rng)}"
                        for _ in range(rng.randint(0, 3)))
    if kw == "ARG":
        return rng.choice(["X", "X=1", "IMG=busybox", "X=$X", "=", "A B", "TARGETARCH"])
    if kw in ("COPY", "ADD"):
        if rng.random() < 0.15:
            return f"<<EOF /f\n{w(rng)}\nEOF"
        if rng.random() < 0.2:
            return _json_list(rng)
        return " ".join(w(rng) for _ in range(rng.randint(1 if rng.random() < WRONG else 2, 4)))
    if kw == "EXPOSE":
        return " ".join(rng.choice(["80", "80/tcp", "1-2/udp", "x", "$P", "80/xyz"])
                        for _ in range(rng.randint(0, 2)))
    if kw == "HEALTHCHECK":
        return rng.choice(["NONE", "CMD true", "CMD [\"a\"]"] if rng.random() > WRONG else ["", "BAD x"])
    if kw == "ONBUILD":
        sub = rng.choice(KEYWORDS)
        return f"{sub} {_args(rng, sub)}"
    if kw == "SHELL":
        return _json_list(rng) if rng.random() > WRONG else "/bin/sh -c"
    if kw in ("USER", "MAINTAINER", "WORKDIR", "STOPSIGNAL"):
        return w(rng) if rng.random() > WRONG else ""
    return " ".join(w(rng) for _ in range(rng.randint(0, 2)))


def generate(rng: random.Random) -> str:
    """A Dockerfile from the grammar: directives, stages, instructions with flags."""
    lines: list[str] = []
    if rng.random() < 0.2:
        lines.append(rng.choice(["# escape=`", "# escape=\\", "# syntax=docker/dockerfile:1",
                                 "#check=skip=all"] + (["# escape=x"] if rng.random() < WRONG else [])))
    if rng.random() < 0.5:
        lines.append(f"ARG {rng.choice(['IMG=busybox', 'IMG=busybox', 'X', 'V=1'])}")
    have_from = False
    for _ in range(rng.randint(1, 12)):
        kw = rng.choice(KEYWORDS) if have_from else "FROM"
        have_from = True
        if rng.random() < WRONG / 5:
            kw = "BOGUS"
        if rng.random() < 0.15:
            kw = kw.lower()
        options = FLAGS.get(kw.upper(), [])
        flags = [rng.choice(options)] if options and rng.random() < 0.4 else []
        line = " ".join([kw, *flags, _args(rng, kw.upper())])
        if rng.random() < 0.15:
            cut = rng.randint(0, len(line))
            line = line[:cut] + rng.choice(["\\\n", "\\\n  # comment\n  ", "\\\n\n"]) + line[cut:]
        lines.append(line)
    return "\n".join(lines) + rng.choice(["\n", "", "\\", "\n\n"])


def mutate(rng: random.Random, text: str) -> str:
    """A few byte-level edits: insert specials, delete, duplicate or swap slices."""
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        pos = rng.randint(0, len(text))
        if op < 0.4:
            text = text[:pos] + rng.choice(SPECIALS) + text[pos:]
        elif op < 0.6 and text:
            end = min(len(text), pos + rng.randint(1, 8))
            text = text[:pos] + text[end:]
        elif op < 0.8:
            end = min(len(text), pos + rng.randint(1, 30))
            text = text[:pos] + text[pos:end] * 2 + text[end:]
        else:
            lines = text.split("\n")
            rng.shuffle(lines)
            text = "\n".join(lines)
    return text


def check(text: str) -> None:
    """Parse, plan and expand; return normally or raise DockerfileError, nothing else."""
    try:
        df = parse(text)
        plan = stages.plan(df, {"X": "1", "IMG": "busybox"}, None)
        stages.describe(plan)
        lex = ShellLex(df.escape)
        for stage in plan.stages:
            for instr in stage.instructions:
                try:
                    instr.expand(lex, {"X": "1"})
                except DockerfileError:
                    pass
    except DockerfileError:
        return


def linearity() -> list[tuple[str, int, float]]:
    """Inputs that punish quadratic code: one 1 MB line, 50k continuations, 50k instructions."""
    cases = [
        ("1 MB RUN line", "FROM busybox\nRUN echo " + "a" * (1 << 20) + "\n"),
        ("1 MB ENV value with $", "FROM busybox\nENV X=" + "$Y" * (1 << 19) + "\n"),
        ("50k continuations", "FROM busybox\nRUN echo \\\n" + "a \\\n" * 50_000 + "end\n"),
        ("50k comment lines in a continuation", "FROM busybox\nRUN echo \\\n" + "# c\n" * 50_000 + "x\n"),
        ("50k instructions", "FROM busybox\n" + "ENV A=1\n" * 50_000),
        ("1 MB heredoc", "FROM busybox\nRUN <<EOF\n" + "echo a\n" * (1 << 17) + "EOF\n"),
    ]
    out = []
    for name, text in cases:
        start = time.perf_counter()
        check(text)
        out.append((name, len(text), time.perf_counter() - start))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    failures = 0
    start = time.perf_counter()
    for i in range(args.count):
        text = generate(rng)
        if i % 2:
            text = mutate(rng, text)
        try:
            check(text)
        except Exception:
            failures += 1
            if failures <= 5:
                print(f"FAILURE on input {i}: {text!r}")
                traceback.print_exc()
    elapsed = time.perf_counter() - start
    print(f"{args.count} inputs in {elapsed:.1f}s: {args.count / elapsed:,.0f} inputs/s, "
          f"{failures} failures (seed {args.seed})")
    for name, size, seconds in linearity():
        print(f"linearity: {name} ({size:,} bytes): {seconds:.2f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
