"""`pybuild advise`: per advice kind, an image that shows it and one that does not — real
builds (runc, overlayfs) read back from the store's layer blobs; SARIF output validated."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from pybuild.advise import clean_name, read_layer, visible_files
from tests.conftest import Pybuild

DATA = Path(__file__).parent / "data"


def advise(pb: Pybuild, image: str, *extra: str) -> dict:
    return json.loads(pb("advise", image, "--format", "json", *extra).stdout)


def kinds(doc: dict) -> list[str]:
    return [i["kind"] for i in doc["items"]]


def build(pb: Pybuild, ctx: Path, tag: str, dockerfile: str) -> str:
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    return pb("build", "-t", tag, str(ctx)).stderr


# --- logic, root-free --------------------------------------------------------------------

def _tar(entries: dict[str, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_whiteouts_and_overwrites_are_hidden_bytes() -> None:
    base = read_layer(_tar({"big": b"x" * 100, "dir/": None, "dir/a": b"a" * 10, "keep": b"k"}),
                      0, "base")
    top = read_layer(_tar({".wh.big": b"", "dir/.wh..wh..opq": b"", "keep": b"kk"}), 1, "top")
    alive, hidden = visible_files([base, top])
    assert sorted(alive) == ["keep"] and alive["keep"] == (1, 2)
    assert sorted((p, s, w, h) for p, s, w, h in hidden) == [
        ("big", 100, 0, 1), ("dir/a", 10, 0, 1), ("keep", 1, 0, 1)]


def test_names_inside_tars_stay_inside() -> None:
    assert clean_name("../../etc/passwd") == "etc/passwd"
    assert clean_name("./a/../b") == "b"
    assert clean_name("/") is None
    layer = read_layer(_tar({"../../../escape": b"x"}), 0, "")
    assert layer.files == {"escape": 1}


def test_unreadable_layer_is_one_clear_error() -> None:
    from pybuild.errors import PybuildError

    with pytest.raises(PybuildError, match="layer 1 cannot be read"):
        read_layer(io.BytesIO(b"\x1f\x8bnot gzip at all"), 0, "")


def test_sarif_is_valid_against_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    sarif_pydantic = pytest.importorskip("sarif_pydantic")
    from pybuild import sarif
    from pybuild.advise import Item
    from pybuild.dockerfile import parse
    from pybuild.dockerfile.checks import evaluate

    schema = json.loads((DATA / "sarif-2.1.0-minimal.schema.json").read_text())
    text = "FROM scratch as base\nCMD echo hi\nEXPOSE 80/TCP\n"
    logs = [sarif.from_checks(evaluate(parse(text)), "Dockerfile"),
            sarif.from_advice([Item("pip-cache", "pip cache", "layer 2", "2.00MB", "--no-cache-dir",
                                    layer=2, line=3),
                               Item("runs-as-root", "root", "config", "", "USER")], "Dockerfile")]
    for log in logs:
        jsonschema.validate(log, schema)
        sarif_pydantic.Sarif.model_validate(log)
    assert len(logs[0]["runs"][0]["results"]) == 3
    bad = json.loads(json.dumps(logs[0]))
    bad["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# --- real builds ------------------------------------------------------------------------------

def test_wasted_bytes_and_caches(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    out = build(busybox, ctx, "waste", "FROM busybox\n"
                "RUN head -c 3000000 /dev/urandom > /big && mkdir -p /root/.cache/pip "
                "&& head -c 2000000 /dev/urandom > /root/.cache/pip/wheel\n"
                "RUN rm /big\n")
    assert "advice: " in out and "3.00MB hidden by later layers" in out
    doc = advise(busybox, "waste", "-f", str(ctx / "Dockerfile"))
    wasted = next(i for i in doc["items"] if i["kind"] == "wasted-bytes")
    assert wasted["bytes"] == 3000000 and wasted["line"] == 2 and wasted["layer"] == 2
    assert "Dockerfile:3, layer 3 (RUN rm /big)" in wasted["what"]
    pip = next(i for i in doc["items"] if i["kind"] == "pip-cache")
    assert pip["bytes"] == 2000000 and pip["line"] == 2
    assert "--no-cache-dir" in pip["fix"]
    assert doc["wasted"] == 3000000
    text = busybox("advise", "waste").stdout
    assert "wasted-bytes: 1 file written here is overwritten or deleted in layer 3" in text
    # the same work done in one RUN leaves nothing behind
    build(busybox, ctx, "clean", "FROM busybox\nRUN head -c 3000000 /dev/urandom > /big && "
          "rm /big\nUSER 1000:1000\n")
    doc = advise(busybox, "clean")
    assert kinds(doc) == [] and doc["wasted"] == 0
    sarif = json.loads(busybox("advise", "waste", "--format", "sarif").stdout)
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} >= {"wasted-bytes", "pip-cache"}


def test_built_layers_are_advised_from_their_noted_members(busybox: Pybuild,
                                                           tmp_path: Path) -> None:
    """A layer this store built is advised from the member list its commit noted, and that
    gives exactly what reading the blob gives (a damaged or missing list: the blob)."""
    ctx = tmp_path / "ctx"
    build(busybox, ctx, "noted", "FROM busybox\n"
          "RUN head -c 3000000 /dev/urandom > /big && mkdir -p /root/.cache/pip "
          "&& head -c 2000000 /dev/urandom > /root/.cache/pip/wheel\nRUN rm /big\n")
    lists = sorted((busybox.root / "snapshots").glob("*/members-*"))
    assert len(lists) == 2  # the two RUN layers; the imported base has none
    from_lists = advise(busybox, "noted")
    for f in lists:  # the right layer, said to hold nothing: it is believed
        f.write_bytes(b"")
    assert advise(busybox, "noted")["wasted"] == 0
    for f in lists:  # a damaged list, a list of another layer, no list: the blob is read
        f.write_bytes(b"0\0x")
    assert advise(busybox, "noted") == from_lists
    for f in lists:
        f.rename(f.with_name("members-" + "0" * 64))
    assert advise(busybox, "noted") == from_lists
    for f in lists:
        f.with_name("members-" + "0" * 64).unlink()
    assert advise(busybox, "noted") == from_lists
    assert {i["kind"] for i in from_lists["items"]} >= {"wasted-bytes", "pip-cache"}


def test_apt_lists_bytecode_compilers(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "pkg" / "__pycache__").mkdir(parents=True)
    (ctx / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0" * 60_000)
    build(busybox, ctx, "left", "FROM busybox\n"
          "RUN mkdir -p /var/lib/apt/lists /usr/lib/gcc/x86_64-linux-gnu/12 && "
          "head -c 1500000 /dev/urandom > /var/lib/apt/lists/deb.debian.org_Packages && "
          "head -c 1200000 /dev/urandom > /usr/lib/gcc/x86_64-linux-gnu/12/cc1 && "
          "mkdir -p /var/cache/apt/archives /root/.npm/_cacache && "
          "head -c 1100000 /dev/urandom > /var/cache/apt/archives/gcc_12_amd64.deb && "
          "head -c 1300000 /dev/urandom > /root/.npm/_cacache/index\n"
          "COPY pkg /app/pkg\n")
    doc = advise(busybox, "left")
    assert sorted(kinds(doc)) == ["apt-archives", "apt-lists", "bytecode", "compilers",
                                  "npm-cache", "runs-as-root"]
    sizes = {i["kind"]: i["bytes"] for i in doc["items"]}
    assert sizes["apt-archives"] == 1100000 and sizes["npm-cache"] == 1300000
    assert sizes["compilers"] == 1200000 and sizes["bytecode"] == 60000
    apt = next(i for i in doc["items"] if i["kind"] == "apt-lists")
    assert apt["bytes"] == 1500000 and "rm -rf /var/lib/apt/lists/*" in apt["fix"]
    (ctx / "pkg" / "__pycache__" / "m.cpython-311.pyc").unlink()
    build(busybox, ctx, "tidy", "FROM busybox\nRUN mkdir -p /var/lib/apt/lists && "
          "head -c 1500000 /dev/urandom > /var/lib/apt/lists/x && rm -rf /var/lib/apt/lists/*\n"
          "COPY pkg /app/pkg\nUSER 10001\n")
    assert kinds(advise(busybox, "tidy")) == []


def test_cache_order_from_the_miss_history(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "req.txt").write_text("django\n")
    pip = "RUN printf '#!/bin/sh\\nsleep 1.2\\n' > /bin/pip && chmod +x /bin/pip\n"
    slow = f"FROM busybox\n{pip}WORKDIR /app\nCOPY . .\nRUN pip install -r req.txt\nUSER 1000\n"
    for n in range(3):
        (ctx / "app.py").write_text(f"print({n})\n")
        build(busybox, ctx, "order", slow)
    doc = advise(busybox, "order", "-f", str(ctx / "Dockerfile"))
    item = next(i for i in doc["items"] if i["kind"] == "cache-order")
    assert item["line"] == 5 and "re-ran 2 times" in item["what"] and "`COPY . .`" in item["what"]
    assert item["seconds"] >= 1.0
    # requirements first: the slow step keeps its cache across edits
    fast = f"FROM busybox\n{pip}WORKDIR /app\nCOPY req.txt .\nRUN pip install -r req.txt\n" \
           "COPY . .\nUSER 1000\n"
    for n in range(3):
        (ctx / "app.py").write_text(f"print({n + 10})\n")
        build(busybox, ctx, "order2", fast)
    assert "cache-order" not in kinds(advise(busybox, "order2"))


def test_root_and_secret_notes(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    build(busybox, ctx, "sec", "FROM busybox\nENV API_TOKEN=abc\nARG DB_PASSWORD=x\n"
          "RUN echo $DB_PASSWORD > /dev/null\n")
    doc = advise(busybox, "sec")
    texts = [i["what"] for i in doc["items"]]
    assert "the container runs as root (no USER)" in texts
    assert "ENV API_TOKEN is stored in the image config, readable by anyone who has the image" \
        in texts
    assert "build arg DB_PASSWORD is recorded in the image history of a RUN step" in texts
    build(busybox, ctx, "nosec", "FROM busybox\nENV PUBLIC_KEY=abc\nUSER 10001:10001\n")
    assert kinds(advise(busybox, "nosec")) == []


def test_large_context(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "node_modules" / "left-pad").mkdir(parents=True)
    (ctx / "node_modules" / "left-pad" / "blob").write_bytes(b"\0" * 700_000)
    build(busybox, ctx, "ctx", "FROM busybox\nUSER 1\n")
    doc = advise(busybox, "ctx", "--context", str(ctx))
    item = next(i for i in doc["items"] if i["kind"] == "large-context")
    assert item["bytes"] == 700_000 and "node_modules" in item["fix"]
    (ctx / ".dockerignore").write_text("node_modules\n")
    assert kinds(advise(busybox, "ctx", "--context", str(ctx))) == []


def test_bad_input_is_one_line(busybox: Pybuild, tmp_path: Path) -> None:
    proc = busybox("advise", "nothere", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = busybox("advise", "busybox", "-f", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 1 and "failed to read" in proc.stderr


# --- checks in real builds ----------------------------------------------------------------

def _on_a_terminal(pb: Pybuild, *args: str) -> str:
    """Run pybuild with its output on a pseudo-terminal (tty mode needs one)."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pybuild", "--root", str(pb.root), *args],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={**os.environ, "COLUMNS": "200", "TERM": "xterm"})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
    return out.decode(errors="replace").replace("\r\n", "\n")


def test_build_lists_warnings_in_every_mode(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCMD echo hi\nEXPOSE 80/TCP\nUSER 1\n")
    short = ("JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended "
             "behavior related to OS signals (line 2)")
    for mode in ("plain", "auto"):
        out = busybox("build", "--progress", mode, str(ctx))
        text = out.stdout + out.stderr
        assert "2 warnings found:\n - " + short in text, (mode, text)
        assert "ExposeProtoCasing: Defined protocol '80/TCP'" in text
    text = _on_a_terminal(busybox, "build", "--progress", "tty", str(ctx))
    assert "2 warnings found:" in text and "JSONArgsRecommended: JSON arguments" in text
    raw = busybox("build", "--progress", "rawjson", str(ctx))
    events = [json.loads(line) for line in (raw.stdout + raw.stderr).splitlines()
              if line.startswith("{")]
    warnings = [e for e in events if e["type"] == "warning"]
    assert [w["check"]["ruleName"] for w in warnings] == ["JSONArgsRecommended",
                                                          "ExposeProtoCasing"]
    assert warnings[0]["message"] == short
    assert warnings[0]["check"]["location"]["ranges"][0]["start"]["line"] == 2
    jsonschema = pytest.importorskip("jsonschema")
    from tests.test_progress import _schema

    for event in events:
        jsonschema.validate(event, _schema())


def test_error_true_fails_before_building(busybox: Pybuild, tmp_path: Path) -> None:
    from tests.conftest import store_snapshot

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("# check=error=true\nFROM busybox\nCMD echo hi\n"
                                    "RUN touch /ran\n")
    before = store_snapshot(busybox.root)
    proc = busybox("build", "-t", "nope", str(ctx), check=False)
    assert proc.returncode == 1
    assert proc.stderr.rstrip().endswith("Dockerfile:3: lint violation found for rules: "
                                         "JSONArgsRecommended")
    assert "Traceback" not in proc.stderr
    assert store_snapshot(busybox.root) == before
    ok = busybox("build", "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip=JSONArgsRecommended",
                 "-t", "yes", str(ctx))
    assert "warning" not in ok.stdout + ok.stderr
