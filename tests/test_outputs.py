"""`pybuild build -o`: local, tar, oci, docker, image (+push) outputs, several at once,
read back by tools nobody here wrote (docker load, skopeo) and compared with
`docker build -o` of the real Docker 20.10 engine."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Pybuild, store_snapshot
from engines import docker_engine, registry_server
from pybuild.errors import PybuildError
from pybuild.solver.exporters import OutputSpec, check_outputs, parse_output, store_tags

DOCKERFILE = """\
FROM busybox AS build
RUN mkdir -p /out/bin /out/empty && echo wheel > /out/app.whl && ln -s app.whl /out/latest.whl \\
 && cp /bin/busybox /out/bin/tool && chmod 4755 /out/bin/tool && ln /out/app.whl /out/hard.whl \\
 && chmod 700 /out/empty
FROM scratch AS artifacts
COPY --from=build /out/ /
FROM build
RUN echo final > /final
"""


def _ctx(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def _tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """path → (kind, mode, content or link target): what an output must contain."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode),
                            __import__("hashlib").sha256(p.read_bytes()).hexdigest())
    return out


def _tar_tree(path: Path) -> dict[str, tuple[str, int, str]]:
    import hashlib

    out: dict[str, tuple[str, int, str]] = {}
    with tarfile.open(path) as t:
        members = {m.name.strip("/").removeprefix("./"): m for m in t.getmembers()}
        for name, m in members.items():
            if not name:
                continue
            if m.issym():
                out[name] = ("link", 0, m.linkname)
            elif m.isdir():
                out[name] = ("dir", m.mode & 0o7777, "")
            elif m.islnk():
                src = t.extractfile(members[m.linkname.strip("/")])
                assert src is not None
                out[name] = ("file", members[m.linkname.strip("/")].mode & 0o7777,
                             hashlib.sha256(src.read()).hexdigest())
            else:
                f = t.extractfile(m)
                assert f is not None
                out[name] = ("file", m.mode & 0o7777, hashlib.sha256(f.read()).hexdigest())
    return out


EXPECTED = {"app.whl", "latest.whl", "hard.whl", "bin", "bin/tool", "empty"}


# ---- parsing (root-free) -----------------------------------------------------------------

def test_output_specs_parse_as_buildx_reads_them() -> None:
    assert parse_output("out") == OutputSpec("local", "out")
    assert parse_output("-") == OutputSpec("tar", "-")
    assert parse_output("type=local,dest=d") == OutputSpec("local", "d")
    assert parse_output("dest=d") == OutputSpec("local", "d")
    assert parse_output("type=tar,dest=-").to_stdout
    assert parse_output('type=image,"name=a:1,b:2",push=true') == \
        OutputSpec("image", None, ["a:1", "b:2"], True)
    assert parse_output("type=registry,name=r/x").push
    assert parse_output("type=docker").to_store and not parse_output("type=docker,dest=f").to_store
    for bad, message in [("type=nope", "unknown type"), ("type=local", "needs dest"),
                         ("type=tar,dest=x,compression=gzip", "has no option 'compression'"),
                         ("type=image,push=maybe", "push must be"), ("", "expected type="),
                         ("type=image,name=Bad Name", "invalid")]:
        with pytest.raises(PybuildError, match=message):
            parse_output(bad)
    with pytest.raises(PybuildError, match="only one output can be written to stdout"):
        check_outputs([parse_output("-"), parse_output("type=oci,dest=-")], [])
    with pytest.raises(PybuildError, match="push needs name"):
        check_outputs([parse_output("type=image,push=true")], [])
    assert store_tags([], ["a"]) == ["a"]
    assert store_tags([parse_output("d")], ["a"]) == []
    assert store_tags([parse_output("d"), parse_output("type=image")], ["a"]) == ["a"]
    assert store_tags([parse_output("type=image,name=x:1")], ["a"]) == ["x:1"]


def test_outputs_that_would_clobber_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PybuildError, match="refusing to write over /"):
        parse_output("type=local,dest=/")
    with pytest.raises(PybuildError, match="is a directory"):
        parse_output(f"type=tar,dest={tmp_path}")
    with pytest.raises(PybuildError, match="is a directory"):
        parse_output(f"type=docker,dest={tmp_path}")


def test_a_bad_output_fails_before_the_build(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    before = store_snapshot(busybox.root)
    proc = busybox("build", "-o", "type=oci", str(ctx), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: invalid --output 'type=oci': type=oci needs dest=PATH"
    assert store_snapshot(busybox.root) == before


def test_discard_image_takes_only_an_image_nothing_holds(tmp_path: Path) -> None:
    """Root-free: the local/tar-only cleanup leaves a tagged image, and any image while
    another build of the store runs (it holds the gc lock shared)."""
    from pybuild import image as imagemod
    from pybuild.solver.exporters import discard_image
    from pybuild.store import Store

    store = Store(tmp_path / "store")
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    manifest = imagemod.write(store, config, [])
    config_digest = store.read_json(manifest.digest)["config"]["digest"]
    store.set_tag("kept:1", manifest)
    assert not discard_image(store, manifest) and store.has_blob(manifest.digest)
    store.remove_tag("kept:1")
    with store.gc_lock(shared=True):  # another build running
        assert not discard_image(store, manifest) and store.has_blob(manifest.digest)
    assert discard_image(store, manifest)
    assert not store.has_blob(manifest.digest) and not store.has_blob(config_digest)
    assert not discard_image(store, manifest)  # already gone: nothing to do


# ---- real builds ---------------------------------------------------------------------------

def test_local_and_tar_outputs_of_a_target_stage(busybox: Pybuild, tmp_path: Path,
                                                 no_leaks: None) -> None:
    ctx = _ctx(tmp_path)
    out_dir, out_tar = tmp_path / "dist", tmp_path / "dist.tar"
    images = _image_ids(busybox)
    busybox("build", "--target", "artifacts", "-t", "unused:1", "-o", str(out_dir),
            "-o", f"type=tar,dest={out_tar}", str(ctx))
    # as BuildKit's local and tar exporters: no image stored, tagged or not; the build
    # cache stays (a second build is all cached)
    assert _image_ids(busybox) == images
    assert len(busybox("cache", "ls").stdout.splitlines()) > 1
    tree = _tree(out_dir)
    assert set(tree) == EXPECTED
    assert tree["bin/tool"][1] == 0o4755 and tree["empty"] == ("dir", 0o700, "")
    assert tree["latest.whl"] == ("link", 0, "app.whl")
    assert (out_dir / "app.whl").read_text() == "wheel\n"
    assert os.stat(out_dir / "app.whl").st_ino == os.stat(out_dir / "hard.whl").st_ino
    assert _tar_tree(out_tar) == tree
    with tarfile.open(out_tar) as t:  # uncompressed, numeric owners, no ./ prefix
        assert all(m.uname == "" and not m.name.startswith(("./", "/")) for m in t.getmembers())
    assert out_tar.read_bytes()[:2] != b"\x1f\x8b"
    # no image output was asked for: -t names nothing in the store
    assert "unused" not in busybox("images").stdout
    # stdout output: a tar and nothing else, even with -q
    proc = subprocess.run([sys.executable, "-m", "pybuild", "--root", str(busybox.root), "build",
                           "-q", "--target", "artifacts", "-o", "-", str(ctx)],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    piped = tmp_path / "piped.tar"
    piped.write_bytes(proc.stdout)
    assert _tar_tree(piped) == tree
    assert _image_ids(busybox) == images
    # an image that was there before is never taken: a dangling one from a plain build
    busybox("build", "--target", "artifacts", str(ctx))
    dangling = _image_ids(busybox) - images
    assert len(dangling) == 1
    busybox("build", "--target", "artifacts", "-o", str(tmp_path / "again"), str(ctx))
    assert _image_ids(busybox) == images | dangling


def _image_ids(pb: Pybuild) -> set[str]:
    """Every image in the store, tagged or dangling (what `pybuild system df -v` lists)."""
    from pybuild.disk import all_images
    from pybuild.store import Store

    return {i.image.id for i in all_images(Store(pb.root))}


def test_local_output_never_writes_through_symlinks_already_in_dest(busybox: Pybuild,
                                                                    tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "bin").symlink_to(victim)          # the image has bin/ as a directory
    (dest / "app.whl").symlink_to(victim / "x")  # and app.whl as a file
    busybox("build", "--target", "artifacts", "-o", f"type=local,dest={dest}", str(ctx))
    assert list(victim.iterdir()) == []
    assert (dest / "bin").is_dir() and not (dest / "bin").is_symlink()
    assert (dest / "app.whl").read_text() == "wheel\n" and not (dest / "app.whl").is_symlink()


def test_oci_docker_and_image_outputs_at_once(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    oci, dock = tmp_path / "img.oci.tar", tmp_path / "img.docker.tar"
    busybox("build", "-t", "app:1", "-o", f"type=oci,dest={oci}", "-o",
            f"type=docker,dest={dock},name=app:exported", "-o", "type=image,name=app:stored",
            str(ctx))
    rows = [line.split()[:2] for line in busybox("images").stdout.splitlines()[1:]]
    assert ["app", "stored"] in rows and ["app", "1"] not in rows
    built = json.loads(busybox("inspect", "app:stored").stdout)[0]["Id"]
    for archive, names in ((oci, ["app:1"]), (dock, ["app:exported"])):
        other = Pybuild(tmp_path / f"other-{archive.name}")
        out = other("load", "-i", str(archive)).stdout.splitlines()
        assert out == [f"Loaded image: {n}" for n in names]
        assert json.loads(other("inspect", names[0]).stdout)[0]["Id"] == built
    if shutil.which("skopeo"):
        proc = subprocess.run(["skopeo", "inspect", f"oci-archive:{oci}"], capture_output=True,
                              text=True, check=True)
        assert json.loads(proc.stdout)["Layers"]


def test_image_output_pushes_to_a_registry(busybox: Pybuild, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    with registry_server() as addr:
        proc = busybox("build", "--target", "artifacts", "--insecure-registry", addr, "-o",
                       f"type=image,name={addr}/out/app:1,push=true", str(ctx))
        assert f"pushed {addr}/out/app:1: sha256:" in proc.stderr
        other = Pybuild(tmp_path / "other")
        other("pull", "--insecure-registry", addr, f"{addr}/out/app:1")
        assert json.loads(other("inspect", f"{addr}/out/app:1").stdout)[0]["Id"] == \
            json.loads(busybox("inspect", f"{addr}/out/app:1").stdout)[0]["Id"]


# ---- against docker build ------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker() -> Iterator:
    with docker_engine() as d:
        yield d


def test_docker_loads_type_docker_and_builds_the_same_local_and_tar(docker, busybox: Pybuild,
                                                                    tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    archive = tmp_path / "out.tar"
    busybox("build", "-o", f"type=docker,dest={archive},name=pb/out:1", str(ctx))
    assert "Loaded image: pb/out:1" in docker("load", "-i", str(archive)).stdout
    run = docker("run", "--rm", "--network=host", "pb/out:1", "cat", "/final", "/out/app.whl")
    assert run.stdout == "final\nwheel\n"
    # docker build -o of the same Dockerfile FROM the same busybox gives the same files
    saved = tmp_path / "bb.tar"
    busybox("save", "-o", str(saved), "busybox")
    docker("load", "-i", str(saved))
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    theirs_dir, theirs_tar = tmp_path / "docker-dist", tmp_path / "docker-dist.tar"
    docker_images = docker("images", "-aq", "--no-trunc").stdout.split()
    for out in (f"type=local,dest={theirs_dir}", f"type=tar,dest={theirs_tar}"):
        proc = subprocess.run(["/usr/bin/docker", "-H", docker.host, "build", "--network=host",
                               "--target", "artifacts", "-o", out, str(ctx)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    # docker stores no image for a local/tar output either (pybuild: the test above)
    assert docker("images", "-aq", "--no-trunc").stdout.split() == docker_images
    ours_dir, ours_tar = tmp_path / "dist", tmp_path / "dist.tar"
    busybox("build", "--target", "artifacts", "-o", str(ours_dir), "-o",
            f"type=tar,dest={ours_tar}", str(ctx))
    assert _tree(ours_dir) == _tree(theirs_dir)
    assert _tar_tree(ours_tar) == _tar_tree(theirs_tar)
