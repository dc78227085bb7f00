"""Checks of the benchmark harness itself (no builder runs): figures, table, inputs.

    python -m pytest -q bench/test_bench.py
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from rootfs import BUSYBOX, make_busybox_tar, make_random_tar  # noqa: E402
from scenarios import SCENARIOS  # noqa: E402


def result(name: str, tools: dict[str, dict]) -> dict:
    return {"scenario": name, "runs": 3, "tools": tools, "ratios": report.ratios(tools),
            "load": {"loadavg_before": [2.0, 1, 1], "loadavg_after": [3.25, 1, 1]}}


def test_summary_takes_the_median_not_the_mean() -> None:
    s = report.summarize([1.0, 9.0, 2.0])
    assert (s["median"], s["min"], s["max"]) == (2.0, 1.0, 9.0)


def test_ratios_are_pybuild_over_each_rival_and_skip_missing_ones() -> None:
    tools = {"pybuild": {"median": 1.0}, "docker": {"median": 4.0},
             "buildah": {"skipped": "not installed"}, "host": {"median": 0.5}}
    assert report.ratios(tools) == {"pybuild/docker": 0.25}


def test_table_shows_medians_ratios_skips_and_load() -> None:
    rows = [result("run128", {"pybuild": report.summarize([2.0, 3.0, 4.0]),
                              "docker": report.summarize([6.0, 6.0, 6.0]),
                              "buildah": {"skipped": "no buildah"}}),
            result("push128", {"pybuild": report.summarize([1.0]),
                               "skopeo": report.summarize([0.5])})]
    text = report.table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["scenario", "runs", "pybuild", "s", "docker", "s", "buildah",
                                "s", "skopeo", "s", "pybuild/docker", "pybuild/skopeo", "load"]
    assert lines[1].split() == ["run128", "3", "3.00", "6.00", "skip", "0.50", "2.0->3.2"]
    assert lines[2].split() == ["push128", "3", "1.00", "0.50", "2.00", "2.0->3.2"]
    md = report.table(rows, markdown=True).splitlines()
    assert md[1] == "|---|---|---|---|---|---|---|---|---|"
    assert md[2].startswith("| run128 | 3 | 3.00 | 6.00 | skip |")


def test_results_round_trip_through_json(tmp_path: Path) -> None:
    r = result("django-warm", {"pybuild": report.summarize([0.2, 0.3])})
    path = report.write(r, tmp_path)
    assert path.name == "django-warm.json"
    assert report.load_all(tmp_path, []) == [json.loads(path.read_text())] == [r]
    assert report.load_all(tmp_path, ["run128"]) == []


def test_random_layer_is_131_mb_and_reproducible(tmp_path: Path) -> None:
    a = make_random_tar(tmp_path / "a.tar", files=20)
    b = make_random_tar(tmp_path / "b.tar", files=20)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with tarfile.open(a) as tar:
        sizes = [m.size for m in tar.getmembers() if m.isfile()]
    assert sizes == [65536] * 20
    full = make_random_tar(tmp_path / "full.tar")
    with tarfile.open(full) as tar:
        assert sum(m.size for m in tar.getmembers()) == 2000 * 65536 == 131_072_000


def test_busybox_rootfs_has_a_shell(tmp_path: Path) -> None:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    with tarfile.open(make_busybox_tar(tmp_path / "bb.tar")) as tar:
        sh = tar.getmember("bin/sh")
        assert sh.issym() and sh.linkname == "busybox"
        assert tar.getmember("bin/busybox").mode == 0o755


def test_every_scenario_compares_pybuild_with_something() -> None:
    files = {f"files{n}k-{mode}" for n in (10, 50, 100, 200) for mode in ("warm", "edit")}
    assert set(SCENARIOS) == {"run128", "twostage", "django-cold", "django-cold-index",
                              "django-warm", "django-edit", "push128", "pull-debian", "arm64",
                              *files}
    for scn in SCENARIOS.values():
        assert scn.tools[0] == "pybuild" and len(scn.tools) >= 2


def test_every_scenario_makes_its_cases() -> None:
    """Each tool of each scenario has a case factory (a merge once dropped one's return)."""
    assert all(callable(make) for scn in SCENARIOS.values() for make in scn.cases.values())


def test_indexed_django_points_only_the_wheels_stage_at_the_index(tmp_path: Path) -> None:
    from scenarios import DJANGO_EXAMPLE, Adapter, IndexedDjangoCase

    case = IndexedDjangoCase(Adapter(), tmp_path, (tmp_path / "base.tar", "base"), "cold",
                             "http://127.0.0.1:1/simple/")
    case.prepare_context()
    ours = (case.context / "Dockerfile").read_text().splitlines()
    theirs = (DJANGO_EXAMPLE / "Dockerfile").read_text().splitlines()
    at = ours.index("FROM ${BASE} AS wheels") + 1
    assert ours[at] == "ARG PIP_INDEX_URL" and ours[:at] + ours[at + 1:] == theirs
    assert case.extra == ["--build-arg", "PIP_INDEX_URL=http://127.0.0.1:1/simple/"]
