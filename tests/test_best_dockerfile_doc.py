"""docs/best-dockerfile.md shows the numbers its measuring script wrote (no hand-edited table)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_table_matches_the_measured_run() -> None:
    doc = (ROOT / "docs" / "best-dockerfile.md").read_text()
    results = json.loads((ROOT / "docs" / "best-dockerfile" / "results.json").read_text())
    assert [r["step"] for r in results] == [1, 2, 3, 4, 5, 6]
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d) \|.*$", doc, re.M)}
    for r in results:
        row = rows[r["step"]]
        assert f"| {r['size']} |" in row.replace("**", ""), (r["step"], row)
        assert f"{r['cold_s']} s" in row and f"{r['rebuild_s']} s" in row, (r["step"], row)
        assert f"{r['content_bytes'] / 1e6:.1f} MB" in row, (r["step"], row)
        assert (ROOT / r["dockerfile"]).is_file()
    # the last step is the example itself, and it is clean by both tools
    assert results[-1]["dockerfile"] == "examples/django-app/Dockerfile"
    assert results[-1]["check_rc"] == 0 and results[-1]["items"] == []
    assert all(r["check_rc"] == 1 for r in results[:-1])
