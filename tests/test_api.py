"""The Python API: a build from a program, progress events, typed errors with file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pybuild
from conftest import Pybuild, require_build_tools


def test_import_is_light_and_names_are_typed() -> None:
    # `import pybuild` must not pull in the solver, requests or rich (CLI start-up time)
    code = ("import sys, pybuild; heavy = [m for m in ('pybuild.solver.solver', 'requests', 'rich') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert pybuild.Store.__module__ == "pybuild.store"
    assert issubclass(pybuild.DockerfileError, pybuild.PybuildError)
    assert (Path(pybuild.__file__).parent / "py.typed").exists()
    with pytest.raises(AttributeError):
        _ = pybuild.no_such_name  # type: ignore[attr-defined]


def test_build_from_python(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hi\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY hello.txt /\nRUN cat /hello.txt\n"
                                    'CMD ["cat", "/hello.txt"]\n')
    events: list[pybuild.Event] = []
    store = pybuild.Store(busybox.root)
    img = pybuild.build(ctx, tags=["apitest:1"], store=store, progress=events.append)
    assert img.id.startswith("sha256:") and img.tags == ("apitest:1",)
    assert img.config["config"]["Cmd"] == ["cat", "/hello.txt"]
    # the CLI sees the same image, by the same ID
    assert img.short_id in busybox("images").stdout
    kinds = {e.kind for e in events}
    assert {"started", "done", "log", "summary"} <= kinds
    assert any(e.kind == "log" and b"hi" in e.data for e in events)
    again = pybuild.build(ctx, tags=["apitest:1"], store=store)
    assert again.id == img.id
    assert pybuild.Image.from_store(store, "apitest:1").id == img.id


def test_errors_are_typed_with_file_and_line(busybox: Pybuild, tmp_path: Path) -> None:
    require_build_tools()
    ctx = tmp_path / "bad"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\nNOPE x\n")
    store = pybuild.Store(busybox.root)
    with pytest.raises(pybuild.DockerfileError) as e:
        pybuild.build(ctx, store=store)
    assert e.value.line == 3 and "unknown instruction" in str(e.value).lower()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN exit 7\n")
    with pytest.raises(pybuild.StepError) as step:
        pybuild.build(ctx, store=store)
    assert step.value.exit_status == 7 and step.value.line == 2
    with pytest.raises(pybuild.PybuildError, match="not found"):
        pybuild.build(tmp_path / "missing", store=store)
