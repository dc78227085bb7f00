"""SARIF 2.1.0 logs (what code-scanning UIs read) for build checks and for `pybuild advise`."""

from __future__ import annotations

from typing import Any

from pybuild import __version__

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _log(rules: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "pybuild", "version": __version__,
                            "rules": rules}},
        "results": results}]}


def _region(start: int, end: int) -> dict[str, Any]:
    return {"startLine": max(start, 1), "endLine": max(end, start, 1)}


def result(rule_index: int, rule_id: str, level: str, text: str, uri: str | None,
           start: int = 0, end: int = 0, logical: str | None = None) -> dict[str, Any]:
    """One result; a physical location when the Dockerfile line is known, else a logical one
    (an image layer)."""
    out: dict[str, Any] = {"ruleId": rule_id, "ruleIndex": rule_index, "level": level,
                           "message": {"text": text}}
    locations: list[dict[str, Any]] = []
    if uri is not None and start > 0:
        locations.append({"physicalLocation": {"artifactLocation": {"uri": uri},
                                               "region": _region(start, end)}})
    if logical:
        locations.append({"logicalLocations": [{"name": logical, "kind": "object"}]})
    if locations:
        out["locations"] = locations
    return out


def from_checks(report: Any, filename: str) -> dict[str, Any]:
    """A check report: one rule per rule that fired, level `error` under `check=error=true`."""
    from pybuild.dockerfile.checks import RULES

    names = sorted({w.rule for w in report.warnings})
    rules = []
    for name in names:
        meta = RULES[name]
        rule: dict[str, Any] = {"id": name, "name": name,
                                "shortDescription": {"text": meta.description}}
        if meta.url:
            rule["helpUri"] = meta.url
        rules.append(rule)
    level = "error" if report.config.error else "warning"
    results = [result(names.index(w.rule), w.rule, level, w.detail, filename, w.line, w.end_line)
               for w in report.warnings]
    return _log(rules, results)


def from_advice(items: list[Any], filename: str | None) -> dict[str, Any]:
    """Advice items (pybuild.advise.Item): the kind is the rule, the fix its help text."""
    kinds = sorted({i.kind for i in items})
    rules = [{"id": k, "name": k, "shortDescription": {"text": k}} for k in kinds]
    results = []
    for i in items:
        text = f"{i.what} ({i.how_much}). Fix: {i.fix}" if i.how_much else f"{i.what}. Fix: {i.fix}"
        results.append(result(kinds.index(i.kind), i.kind, "note", text, filename,
                              i.line or 0, i.line or 0,
                              f"layer {i.layer}" if i.layer is not None else None))
    return _log(rules, results)
