"""Medians, ratios and the results table (plain text or Markdown) from result dicts.

Kept apart from the runner so the table can be re-rendered from bench/results/*.json
without building anything.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

TOOL_ORDER = ("pybuild", "docker", "buildah", "podman", "skopeo", "host")
# The tools pybuild is compared with; `host` is a floor, not a competitor.
RIVALS = ("docker", "buildah", "podman", "skopeo")


def summarize(seconds: list[float]) -> dict[str, float | list[float]]:
    """Median (the reported figure), min and max of one tool's run times."""
    return {"seconds": [round(s, 4) for s in seconds],
            "median": round(statistics.median(seconds), 4),
            "min": round(min(seconds), 4), "max": round(max(seconds), 4)}


def ratios(tools: dict[str, dict]) -> dict[str, float]:
    """pybuild's median over each rival's: below 1 means pybuild was faster."""
    mine = tools.get("pybuild", {}).get("median")
    out: dict[str, float] = {}
    for rival in RIVALS:
        theirs = tools.get(rival, {}).get("median")
        if mine is not None and theirs:
            out[f"pybuild/{rival}"] = round(mine / theirs, 3)
    return out


def _cell(tool: dict | None) -> str:
    if tool is None:
        return ""
    if "median" in tool:
        flag = "*" if "failed" in tool else ""
        return f"{tool['median']:.2f}{flag}"
    return "skip" if "skipped" in tool else "fail"


def _load(result: dict) -> str:
    before, after = result["load"]["loadavg_before"][0], result["load"]["loadavg_after"][0]
    return f"{before:.1f}->{after:.1f}"


def table(results: list[dict], markdown: bool = False) -> str:
    """One row per scenario: medians (s) per tool, ratios, runs, 1-min load before->after."""
    tools = [t for t in TOOL_ORDER if any(t in r["tools"] for r in results)]
    ratio_cols = [f"pybuild/{r}" for r in RIVALS
                  if any(f"pybuild/{r}" in res["ratios"] for res in results)]
    header = ["scenario", "runs", *[f"{t} s" for t in tools], *ratio_cols, "load"]
    rows = [header]
    for r in results:
        rows.append([r["scenario"], str(r["runs"]),
                     *[_cell(r["tools"].get(t)) for t in tools],
                     *[f"{r['ratios'][c]:.2f}" if c in r["ratios"] else "" for c in ratio_cols],
                     _load(r)])
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def write(result: dict, directory: Path) -> Path:
    """bench/results/<scenario>.json, replaced atomically so a crash never leaves half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result['scenario']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_all(directory: Path, names: list[str]) -> list[dict]:
    """Stored results for `names` (all stored ones when empty), in the given order."""
    paths = ([directory / f"{n}.json" for n in names] if names
             else sorted(directory.glob("*.json")))
    loaded = [json.loads(p.read_text()) for p in paths if p.exists()]
    return [r for r in loaded if "tools" in r]  # rootless.json has a table of its own
