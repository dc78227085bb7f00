#!/usr/bin/env python3
"""Run one pybuild build of a benchmark scenario under cProfile; print the top entries.

    python3 bench/profile_build.py [SCENARIO] [--top 25] [--sort cumulative]

The scenario's untimed preparation runs first (base import, a warm-up build for the warm
and edit scenarios, the edit itself), then the very command `run.py` would time runs
in-process under the profiler. Only pybuild's own Python is profiled: time spent inside
runc or the RUN step's processes shows up as waits (e.g. `select`, `wait`).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

from daemons import Unavailable, remove_tree
from scenarios import SCENARIOS, Bench
from tools import REPO, Failure

PROFILABLE = [name for name, scn in SCENARIOS.items() if "pybuild" in scn.cases]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?", default="django-edit", choices=PROFILABLE)
    parser.add_argument("--top", type=int, default=25, help="entries to print (default 25)")
    parser.add_argument("--sort", default="cumulative",
                        help="pstats sort key: cumulative, tottime, ncalls (default cumulative)")
    parser.add_argument("--save", type=Path,
                        help="also write the raw profile here (for pstats or snakeviz)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from pybuild.cli import main as pybuild_main

    workdir = Path(tempfile.mkdtemp(prefix="pybuild-profile-", dir="/var/tmp"))
    try:
        with contextlib.ExitStack() as stack:
            bench = Bench(workdir, stack)
            case = SCENARIOS[args.scenario].cases["pybuild"](bench)
            stack.callback(case.close)
            case.setup()
            case.before(0)
            cmd = case.command(0)
            # argv is [python, -m, pybuild, ...]: run the same arguments in this process.
            pb_args = cmd.argv[3:]
            print(f"profiling: pybuild {' '.join(pb_args)}", flush=True)
            profiler = cProfile.Profile()
            log = bench.log("profiled-build")
            with open(log, "w") as out, contextlib.redirect_stdout(out), \
                    contextlib.redirect_stderr(out):
                start = time.perf_counter()
                status = profiler.runcall(pybuild_main, pb_args)
                wall = time.perf_counter() - start
            print(f"exit status {status}, {wall:.3f} s wall (under the profiler)")
            if status != 0:
                print(log.read_text()[-2000:])
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats(args.sort).print_stats(args.top)
            print(text.getvalue())
            if args.save:
                profiler.dump_stats(str(args.save))
            return 0 if status == 0 else 1
    except (Unavailable, Failure) as e:
        print(f"profile_build: {e}", file=sys.stderr)
        return 2
    finally:
        remove_tree(workdir)


if __name__ == "__main__":
    sys.exit(main())
