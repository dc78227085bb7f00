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


# The API runs in-process, so the containers it starts must be started from inside the
# test's own network namespace: the script runs there (nsenter), as the CLI tests do.
_CONTAINER_SCRIPT = """
import json, sys, urllib.request
import pybuild
store = pybuild.Store(sys.argv[1])
img = pybuild.Image.from_store(store, "apiweb")
web = img.run(["httpd", "-f", "-v", "-p", "8000", "-h", "/www"], ports=[8000], name="apiweb")
web.wait_for_port(8000, timeout=30)
body = urllib.request.urlopen(web.url(8000, "/index.html"), timeout=10).read().decode()
host, port = web.port(8000)
status = web.status
web.stop(timeout=5)
after = web.status
logs = web.logs().decode(errors="replace")
web.remove()
try:
    web.port(8000)
    missing = "still there"
except pybuild.PybuildError as e:
    missing = str(e)
done = img.run(["sh", "-c", "echo out; exit 3"], detach=False)
code = done.exit_code
done.remove()
print(json.dumps({"body": body, "host": host, "port": port, "status": status, "after": after,
                  "logs": logs, "missing": missing, "code": code}))
"""


def test_containers_from_python(cli: object, tmp_path: Path) -> None:
    import json

    from conftest import REPO

    c = cli  # container_fixtures.Cli: a store with busybox, a namespace, leak checks
    c.build(tmp_path, "apiweb", "FROM busybox\nRUN mkdir /www && echo hello-api > /www/index.html\n")  # type: ignore[attr-defined]
    proc = subprocess.run([*c.netns.prefix, sys.executable, "-c", _CONTAINER_SCRIPT,  # type: ignore[attr-defined]
                           str(c.root)], capture_output=True, text=True, cwd=REPO, timeout=120)  # type: ignore[attr-defined]
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["body"] == "hello-api\n"
    assert got["host"] == "127.0.0.1" and got["port"] > 0
    assert got["status"] == "running" and got["after"] == "exited"
    assert "response:200" in got["logs"]  # httpd -v logs each request to stderr
    assert "no such container" in got["missing"].lower() or "not found" in got["missing"].lower()
    assert got["code"] == 3


def test_the_api_page_runs_as_written(cli: object, tmp_path: Path) -> None:
    """docs/api.md: every ```python block, run in order in one interpreter (inside the
    test's network namespace), prints exactly the block that follows it."""
    import re

    from conftest import REPO

    text = (REPO / "docs" / "api.md").read_text()
    pairs = re.findall(r"```python\n(.*?)```\n\nprints\n\n```\n(.*?)```", text, re.S)
    assert len(pairs) == 4
    marker = "\n#----\n"
    code = "STORE = __import__('sys').argv[1]\n" + "".join(
        f"{src}print({marker!r}, end='')\n" for src, _out in pairs)
    c = cli  # container_fixtures.Cli: a store with busybox, a namespace, leak checks
    proc = subprocess.run([*c.netns.prefix, sys.executable, "-c", code, str(c.root)],  # type: ignore[attr-defined]
                          capture_output=True, text=True, cwd=REPO, timeout=180)
    assert proc.returncode == 0, proc.stderr
    outputs = proc.stdout.split(marker)
    assert outputs[:4] == [out for _src, out in pairs]


def test_attested_build_push_pull_and_save(busybox: Pybuild, tmp_path: Path) -> None:
    """build(sbom=, provenance=) → Image.attestations(); push (index, image and attestation
    manifest), pull into another store, save as OCI: the same calls the CLI makes."""
    import json
    import shutil

    from engines import registry_server

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN mkdir -p /opt/a-1.dist-info && "
                                    "printf 'Name: a\\nVersion: 1\\n' > /opt/a-1.dist-info/METADATA\n")
    store = pybuild.Store(busybox.root)
    with pytest.raises(pybuild.PybuildError, match="min' or 'max"):
        pybuild.build(ctx, store=store, provenance="full")  # type: ignore[arg-type]
    img = pybuild.build(ctx, tags=["apiatt:1"], store=store, sbom=True, provenance="max")
    atts = img.attestations()
    assert sorted(atts) == ["https://slsa.dev/provenance/v1", "https://spdx.dev/Document"]
    assert [p["name"] for p in atts["https://spdx.dev/Document"]["predicate"]["packages"]] \
        == ["apiatt:1", "a"]
    again = pybuild.Image.from_store(store, "apiatt:1")  # the tag names an index now
    assert (again.id, again.digest, again.tags) == (img.id, img.digest, ("apiatt:1",))
    assert pybuild.Image.from_store(store, "busybox").attestations() == {}
    events: list[pybuild.Event] = []
    with registry_server() as addr:
        digest = pybuild.push("apiatt:1", f"{addr}/api/att:1", store=store, progress=events.append)
        assert {"started", "transfer", "done"} <= {e.kind for e in events}
        other = pybuild.Store(tmp_path / "other")
        pulled = pybuild.pull(f"{addr}/api/att:1", store=other)
        assert pulled.id == img.id and pulled.tags == (f"{addr}/api/att:1",)
        with pytest.raises(pybuild.PybuildError, match="s390x"):
            pybuild.pull(f"{addr}/api/att:1", store=other, platform="linux/s390x")
        assert pybuild.Image.from_store(other, f"{addr}/api/att:1").id == img.id  # unchanged
    assert digest == store.resolve_tag("apiatt:1").digest  # type: ignore[union-attr]
    out = pybuild.save(["apiatt:1"], tmp_path / "att.tar", store=store, format="oci")
    if shutil.which("skopeo"):
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{out}:apiatt:1"],
                             capture_output=True, text=True, check=True).stdout
        assert [m["platform"]["os"] for m in json.loads(raw)["manifests"]] == ["linux", "unknown"]
    docker_tar = pybuild.save(["apiatt:1"], tmp_path / "att-docker.tar", store=store)
    loaded = pybuild.load_archive(docker_tar, store=pybuild.Store(tmp_path / "loaded"))
    assert [(i.id, i.tags) for i in loaded] == [(img.id, ("apiatt:1",))]
    with pytest.raises(pybuild.PybuildError, match="open .*missing.tar"):
        pybuild.load_archive(tmp_path / "missing.tar", store=store)
    with pytest.raises(pybuild.PybuildError, match="unknown archive format"):
        pybuild.save(["apiatt:1"], tmp_path / "x.tar", store=store, format="zip")  # type: ignore[arg-type]
    assert not (tmp_path / "x.tar").exists()
