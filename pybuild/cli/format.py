"""`--format` as docker's commands take it, for the subset scripts use.

`table` (optionally followed by a template) prints a header row, `{{.Field}}`
placeholders are filled from a row's fields, `{{json .}}` prints the row as JSON and
`{{json .Field}}` one field; `\\t` and `\\n` are a tab and a newline. Anything else in
`{{ }}` is an error naming the template, never silently printed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from pybuild.errors import PybuildError

_ACTION = re.compile(r"{{\s*(.*?)\s*}}")


def _header(name: str) -> str:
    """Docker's column names: CreatedSince → CREATED, ID → IMAGE ID style upper case words."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).upper()


def render(template: str, rows: Sequence[dict[str, str]], fields: Sequence[str],
           headers: dict[str, str] | None = None) -> list[str]:
    """Lines for `rows` under a Go-template-like `template` (see the module docstring)."""
    table = template == "table" or template.startswith("table ")
    body = template[len("table"):].strip() if table else template
    if table and not body:
        body = "\t".join("{{." + f + "}}" for f in fields)
    body = body.replace("\\t", "\t").replace("\\n", "\n")
    for m in _ACTION.finditer(body):
        expr = m.group(1)
        if expr == "json .":
            continue
        name = expr.removeprefix("json ").strip()
        if not name.startswith(".") or name[1:] not in fields:
            raise PybuildError(f"template {template!r}: unknown field {expr!r} "
                               f"(fields: {', '.join(fields)})")

    def fill(row: dict[str, str]) -> str:
        def one(m: re.Match[str]) -> str:
            expr = m.group(1)
            if expr == "json .":
                return json.dumps({f: row[f] for f in sorted(fields)}, ensure_ascii=False)
            if expr.startswith("json "):
                return json.dumps(row[expr[5:].strip()[1:]], ensure_ascii=False)
            return row[expr[1:]]
        return _ACTION.sub(one, body)

    lines = [fill(r) for r in rows]
    if table:
        names = headers or {}
        head = _ACTION.sub(lambda m: names.get(m.group(1)[1:], _header(m.group(1)[1:]))
                           if m.group(1).startswith(".") else m.group(1), body)
        lines.insert(0, head)
        cells = [line.split("\t") for line in lines]
        width = max(len(c) for c in cells)
        widths = [max(len(c[i]) for c in cells if i < len(c)) for i in range(width)]
        lines = ["   ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
    return lines
