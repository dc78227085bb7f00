"""Build secrets reach the RUN that mounts them and nothing else: no layer, no config, no
cache record, no snapshot, no progress output, no `inspect`, no file left on the host."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import Pybuild
from pybuild import layer

pytestmark = pytest.mark.root

FILE_SECRET = "s3cr3t-file-7c1e94b2d0"
ENV_SECRET = "s3cr3t-env-a4f08b6e19"
DOCKERFILE = """\
FROM busybox
RUN --mount=type=secret,id=tok test "$(sha256sum < /run/secrets/tok | cut -c1-64)" = {file_sha} \\
 && wc -c < /run/secrets/tok > /tok-length
RUN --mount=type=secret,id=api,env=API_TOKEN test "${{#API_TOKEN}}" -eq {env_len} \\
 && echo used > /api-used
RUN --mount=type=secret,id=tok,target=/etc/app.key,mode=0440,uid=1000 \\
    --mount=type=secret,id=api,env=API2 \\
    test -r /etc/app.key && test -n "$API2" && ls -ln /etc/app.key | awk '{{print $1, $3}}' > /key-perm
RUN test ! -e /run/secrets/tok && test ! -e /etc/app.key && test -z "$API_TOKEN" && echo clean > /after
"""


def _every_byte(root: Path) -> list[tuple[Path, bytes]]:
    """Every file under root (names included), blobs decompressed, symlink targets read."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        for name in files + dirs:
            p = Path(dirpath) / name
            data = os.fsencode(str(p))
            if p.is_symlink():
                data += os.fsencode(os.readlink(p))
            elif p.is_file():
                data += p.read_bytes()
                if "blobs" in p.parts:
                    with open(p, "rb") as f:
                        try:
                            data += layer.open_decompressed(f).read()
                        except Exception:  # a JSON blob is not compressed: already read raw
                            pass
            out.append((p, data))
    return out


@pytest.mark.parametrize("mode", ["plain", "rawjson"])
def test_secret_values_appear_nowhere(busybox: Pybuild, tmp_path: Path, mode: str) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(
        file_sha=hashlib.sha256(FILE_SECRET.encode()).hexdigest(), env_len=len(ENV_SECRET)))
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(FILE_SECRET)
    env = {"MY_API": ENV_SECRET}
    res = busybox("build", "-t", "t", "--progress", mode, "--secret", f"id=tok,src={secret_file}",
                  "--secret", "id=api,env=MY_API", str(ctx), env=env)
    output = res.stdout + res.stderr
    assert FILE_SECRET not in output and ENV_SECRET not in output
    inspect = busybox("inspect", "t").stdout
    assert FILE_SECRET not in inspect and ENV_SECRET not in inspect
    leaks = [p for p, data in _every_byte(busybox.root)
             if FILE_SECRET.encode() in data or ENV_SECRET.encode() in data]
    assert leaks == []
    # the steps really saw the secrets
    from pybuild import image
    from pybuild.store import Store

    store = Store(busybox.root)
    rootfs = tmp_path / "rootfs"
    for desc in image.load(store, "t").layers:
        with store.open_blob(desc.digest) as f:
            layer.apply_layer(f, rootfs, mode="flatten")
    assert (rootfs / "tok-length").read_text().strip() == str(len(FILE_SECRET))
    assert (rootfs / "api-used").read_text() == "used\n"
    assert (rootfs / "key-perm").read_text().split() == ["-r--r-----", "1000"]
    assert (rootfs / "after").read_text() == "clean\n"
    assert not (rootfs / "run" / "secrets" / "tok").exists() and not (rootfs / "etc" / "app.key").exists()
    # nothing of the secrets stays on the host once the build is over
    secrets_dir = Path("/run/pybuild/secrets")
    for p in secrets_dir.iterdir() if secrets_dir.exists() else []:
        if p.is_file():
            assert FILE_SECRET.encode() not in p.read_bytes()
    # a rebuild is served from the cache, and its output leaks nothing either
    meta = tmp_path / "meta.json"
    again = busybox("build", "-t", "t", "--progress", mode, "--secret", f"id=tok,src={secret_file}",
                    "--secret", "id=api,env=MY_API", "--metadata-file", str(meta), str(ctx), env=env)
    assert json.loads(meta.read_text())["steps_cached"] == 4
    assert FILE_SECRET not in again.stdout + again.stderr
    assert ENV_SECRET not in again.stdout + again.stderr


def test_changing_a_secret_does_not_change_the_cache_key(busybox: Pybuild, tmp_path: Path) -> None:
    """As in BuildKit: secret values are not part of a step's key (only the mount definition)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=secret,id=k cat /run/secrets/k | wc -c > /n\n")
    meta = tmp_path / "meta.json"
    for value in ("first-value", "second-longer-value"):
        (tmp_path / "k").write_text(value)
        busybox("build", "--secret", f"id=k,src={tmp_path / 'k'}", "--metadata-file", str(meta), str(ctx))
    assert json.loads(meta.read_text())["steps_cached"] == 1
