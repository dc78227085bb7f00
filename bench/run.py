#!/usr/bin/env python3
"""Time pybuild against `docker build` (BuildKit) and `buildah bud` on this machine.

    python3 bench/run.py [SCENARIO...] [--runs 5] [--tools pybuild,docker]
    python3 bench/run.py --table [--markdown]        # re-print stored results

Runs are interleaved (run 1 of every tool, then run 2, ...) so a burst of load from
elsewhere lands on all tools alike. Each tool's figure is the median of its runs; ratios
are pybuild's median over the other tool's (below 1: pybuild faster). Results go to
bench/results/<scenario>.json with every run time, the load average around each run and
the tool versions. Needs root (overlay mounts, runc, dockerd).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import report
from daemons import Unavailable, remove_tree
from scenarios import SCENARIOS, Bench, Case, Scenario
from tools import REPO, Failure, children_cpu, daemon_cpu, run_logged

RESULTS = Path(__file__).resolve().parent / "results"


def _out(argv: list[str]) -> str:
    """First line of a command's output, or "" if it is missing or fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode == 0 else ""


def machine_facts(workdir: Path) -> dict[str, str | int | None]:
    """What a reader needs to compare figures across machines."""
    df = _out(["sh", "-c", f"df -hT {workdir} | tail -1"])
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "workdir_fs": df,
        "pybuild_commit": _out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "docker": _out(["/usr/bin/docker", "--version"]),
        "buildah": _out(["buildah", "--version"]),
        "skopeo": _out(["skopeo", "--version"]),
        "runc": _out(["runc", "--version"]),
    }


def uptime() -> str:
    return _out(["uptime"])


def run_scenario(scn: Scenario, bench: Bench, runs: int, only: set[str] | None) -> dict:
    """Set up every tool's case, time `runs` interleaved rounds, return the result dict."""
    print(f"== {scn.name}: {scn.what}", flush=True)
    tools: dict[str, dict] = {}
    cases: dict[str, Case] = {}
    try:
        for tool, make in scn.cases.items():
            if only is not None and tool not in only:
                continue
            try:
                cases[tool] = make(bench)
                cases[tool].setup()
            except Unavailable as e:
                tools[tool] = {"skipped": str(e)}
                print(f"   {tool}: skipped: {e}", flush=True)
            except Failure as e:
                tools[tool] = {"failed": str(e)}
                print(f"   {tool}: setup failed: {e}", flush=True)
        active = [t for t in cases if t not in tools]
        times: dict[str, list[float]] = {t: [] for t in active}
        loads: dict[str, list[float]] = {t: [] for t in active}
        # CPU seconds of each run: the tool's process tree, plus for docker its daemons
        # (on a loaded machine wall time is mostly the scheduler's share, CPU is the work)
        cpus: dict[str, list[float]] = {t: [] for t in active}
        up_before, load_before = uptime(), os.getloadavg()
        print(f"   uptime before: {up_before}", flush=True)
        for i in range(runs):
            for tool in list(active):
                case = cases[tool]
                try:
                    case.before(i)
                    loads[tool].append(round(os.getloadavg()[0], 2))
                    marker = bench.daemon_marker() if tool == "docker" else None
                    cpu = children_cpu() + (daemon_cpu(marker) if marker else 0.0)
                    times[tool].append(run_logged(case.command(i),
                                                  bench.log(f"{scn.name}-{tool}")))
                    cpu = children_cpu() + (daemon_cpu(marker) if marker else 0.0) - cpu
                    cpus[tool].append(round(cpu, 2))
                    case.after(i)
                except (Failure, Unavailable) as e:
                    tools[tool] = {"failed": str(e)}
                    active.remove(tool)
                    print(f"   {tool}: run {i + 1} failed: {e}", flush=True)
                    continue
                print(f"   run {i + 1}/{runs} {tool}: {times[tool][-1]:.2f} s "
                      f"({cpus[tool][-1]:.2f} s CPU, load {loads[tool][-1]:.1f})", flush=True)
        up_after, load_after = uptime(), os.getloadavg()
        print(f"   uptime after:  {up_after}", flush=True)
    finally:
        for case in cases.values():
            case.close()
    for tool, secs in times.items():
        if secs:
            tools[tool] = {**tools.get(tool, {}), **report.summarize(secs),
                           "cpu_seconds": cpus[tool], "load1_at_start": loads[tool]}
    return {
        "scenario": scn.name,
        "what": scn.what,
        "runs": runs,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "tools": tools,
        "ratios": report.ratios(tools),
        "load": {"uptime_before": up_before, "uptime_after": up_after,
                 "loadavg_before": [round(x, 2) for x in load_before],
                 "loadavg_after": [round(x, 2) for x in load_after]},
        "buildah_isolation": bench.buildah_isolation_used() if "buildah" in tools else None,
        "machine": machine_facts(bench.workdir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool (default 5)")
    parser.add_argument("--tools", help="comma-separated subset, e.g. pybuild,docker")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON output directory")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                        help="where stores, contexts and logs go (default /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--table", action="store_true",
                        help="only print the table of stored results")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.table:
        print(report.table(report.load_all(args.results, args.scenarios), args.markdown))
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (overlay mounts, runc, dockerd)", file=sys.stderr)
        return 2
    # Measure pybuild as installed (`make` precompiles it): read .pyc files even where
    # PYTHONDONTWRITEBYTECODE is set, so start-up is not a compile.
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    str(Path(__file__).resolve().parents[1] / "pybuild")], check=True)
    only = set(args.tools.split(",")) if args.tools else None
    workdir = Path(tempfile.mkdtemp(prefix="pybuild-bench-", dir=args.workdir))
    print(f"work dir {workdir}", flush=True)
    results = []
    try:
        with contextlib.ExitStack() as stack:
            bench = Bench(workdir, stack)
            for name in args.scenarios or list(SCENARIOS):
                result = run_scenario(SCENARIOS[name], bench, args.runs, only)
                print(f"   -> {report.write(result, args.results)}", flush=True)
                results.append(result)
    finally:
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            remove_tree(workdir)
    print()
    print(report.table(results, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
