"""Multi-platform builds: platform spellings and selection (root-free), then real builds for
linux/amd64 + linux/arm64 (arm64 RUN steps under QEMU user emulation), an OCI index pushed
to a local registry, read back by skopeo, and pulled and run by Docker 20.10.

The arm64 base is Debian's `busybox-static:arm64`, fetched by `apt-get download` with a
private package list directory (`-o Dir::State::Lists=... -o APT::Architectures::=arm64`),
so the host's dpkg and apt configuration never change; the .deb is kept in
ARM64_CACHE for later runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import Pybuild, make_busybox_tar, require_build_tools
from engines import docker_engine, registry_server
from pybuild import platforms
from pybuild.errors import PybuildError
from pybuild.platforms import choose, matches, parse_platform, parse_platforms, platform_args
from pybuild.solver import ops
from pybuild.store import Descriptor

ARM64_CACHE = Path("/var/cache/pybuild-tests/arm64")
QEMU = Path("/usr/bin/qemu-aarch64-static")


# ----- root-free ----------------------------------------------------------------------
def test_parse_platform_spellings() -> None:
    assert parse_platform("linux/amd64") == {"architecture": "amd64", "os": "linux"}
    assert parse_platform("arm64") == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert parse_platform("linux/aarch64") == parse_platform("linux/arm64/v8")
    assert parse_platform("linux/arm/v6")["variant"] == "v6"
    assert parse_platform("linux/arm")["variant"] == "v7"
    assert [p["architecture"] for p in parse_platforms("linux/amd64, linux/arm64,amd64")] \
        == ["amd64", "arm64"]
    for bad in ("windows/amd64", "linux/vax", "linux//v7", "", "linux/arm64/v8/x"):
        with pytest.raises(PybuildError, match="invalid platform"):
            parse_platform(bad)


def test_platform_args_target_and_build() -> None:
    args = platform_args(parse_platform("linux/arm64"), parse_platform("linux/amd64"))
    assert args == {"TARGETPLATFORM": "linux/arm64", "TARGETOS": "linux",
                    "TARGETARCH": "arm64", "TARGETVARIANT": "",
                    "BUILDPLATFORM": "linux/amd64", "BUILDOS": "linux",
                    "BUILDARCH": "amd64", "BUILDVARIANT": ""}
    arm = platform_args(parse_platform("linux/arm/v7"))
    assert arm["TARGETPLATFORM"] == "linux/arm/v7" and arm["TARGETVARIANT"] == "v7"


def test_choose_and_matches() -> None:
    def d(arch: str, variant: str | None = None) -> Descriptor:
        plat = {"architecture": arch, "os": "linux"}
        if variant:
            plat["variant"] = variant
        return Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "0" * 64,
                          1, None, plat)

    entries = [d("amd64"), d("arm", "v6"), d("arm", "v7"), d("arm64", "v8")]
    assert choose(entries, parse_platform("linux/arm/v7")) is entries[2]
    assert choose(entries, parse_platform("linux/arm64")) is entries[3]
    assert choose(entries, parse_platform("linux/s390x")) is None
    assert matches({"architecture": "arm64", "os": "linux"}, parse_platform("linux/arm64"))
    assert not matches({"architecture": "amd64", "os": "linux"}, parse_platform("linux/arm64"))


def test_the_platform_is_part_of_every_key() -> None:
    def run(p: str) -> ops.Exec:
        return ops.Exec(argv=("true",), env=(), args=(), cwd="/", user="", network="host",
                        mounts=(), bind_sources=(), platform=p)

    assert ops.op_key("p", run("linux/amd64")) != ops.op_key("p", run("linux/arm64"))
    assert ops.op_key("p", ops.Mkdir("/a", "", "linux/amd64")) \
        != ops.op_key("p", ops.Mkdir("/a", "", "linux/arm64"))


def test_binfmt_entry_is_the_packages_own_with_fix_binary() -> None:
    if not (platforms.BINFMT_CONF[0] / "qemu-aarch64.conf").exists():
        pytest.skip("qemu-user-static is not installed (apt-get install qemu-user-static)")
    entry = platforms.binfmt_entry("aarch64")
    fields = entry.split(":")
    assert fields[1] == "qemu-aarch64" and fields[2] == "M"
    assert "F" in fields[7] and "P" in fields[7]
    with pytest.raises(PybuildError, match="install qemu-user-static"):
        platforms.binfmt_entry("no-such-arch")


def test_ensure_emulation_says_what_is_missing_or_refused(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    arm = parse_platform("linux/arm64")
    platforms.ensure_emulation(platforms.host_platform())  # native: nothing to do
    monkeypatch.setattr(platforms, "host_arch", lambda machine=None: "amd64"
                        if machine is None else platforms.ARCH.get(machine, machine))
    monkeypatch.setattr(platforms, "QEMU_DIR", tmp_path / "bin")
    with pytest.raises(PybuildError, match="qemu-aarch64-static is missing"):
        platforms.ensure_emulation(arm)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "qemu-aarch64-static").write_bytes(b"")
    binfmt = tmp_path / "binfmt_misc"
    (binfmt / "register").mkdir(parents=True)  # the kernel's refusal: writing it fails
    conf = tmp_path / "binfmt.d"
    conf.mkdir()
    (conf / "qemu-aarch64.conf").write_text(
        ":qemu-aarch64:M::\\x7fELF:\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OP\n")
    monkeypatch.setattr(platforms, "BINFMT", binfmt)
    monkeypatch.setattr(platforms, "BINFMT_CONF", (conf,))
    with pytest.raises(PybuildError, match="the kernel refused the binfmt_misc handler"):
        platforms.ensure_emulation(arm)
    assert platforms.binfmt_entry("aarch64").endswith(":OPF")
    # an enabled handler with F and P serves; one without F is not trusted
    (binfmt / "qemu-aarch64").write_text(
        "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\n")
    assert not platforms._handler_ok(binfmt / "qemu-aarch64", "aarch64")
    (binfmt / "qemu-aarch64").write_text(
        "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\n")
    platforms.ensure_emulation(arm)


# ----- real builds --------------------------------------------------------------------
def _arm64_busybox() -> Path:
    """Debian's arm64 busybox binary, from busybox-static:arm64 (downloaded once)."""
    binary = ARM64_CACHE / "root" / "bin" / "busybox"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get and dpkg-deb are needed to fetch busybox-static:arm64")
    lists = ARM64_CACHE / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (ARM64_CACHE / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    opts = ["-o", "APT::Architectures::=arm64", "-o", f"Dir::State::Lists={lists}",
            "-o", f"Dir::Cache={ARM64_CACHE / 'cache'}", "-o", "Debug::NoLocking=1"]
    for cmd in (["apt-get", *opts, "update"], ["apt-get", *opts, "download",
                                               "busybox-static:arm64"]):
        r = subprocess.run(cmd, cwd=ARM64_CACHE, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.skip(f"cannot fetch busybox-static:arm64 ({' '.join(cmd[:1] + cmd[-1:])}): "
                        f"{r.stderr.strip()[-200:]}")
    deb = next(ARM64_CACHE.glob("busybox-static_*_arm64.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(ARM64_CACHE / "root")], check=True)
    return binary


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Pybuild:
    """A store with `bb:multi`: an index of amd64 and arm64 busybox images, itself made by a
    two-platform build of `COPY rootfs-$TARGETARCH/ /` onto scratch."""
    require_build_tools()
    if not QEMU.exists():
        pytest.skip("qemu-user-static is not installed (apt-get install qemu-user-static)")
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    base = tmp_path_factory.mktemp("multi")
    ctx = base / "ctx"
    for arch, binary in (("amd64", Path("/bin/busybox")), ("arm64", _arm64_busybox())):
        tar = make_busybox_tar(base / f"{arch}.tar", binary)
        (ctx / f"rootfs-{arch}").mkdir(parents=True)
        with tarfile.open(tar) as t:
            t.extractall(ctx / f"rootfs-{arch}", filter="tar")
    (ctx / "Dockerfile").write_text("FROM scratch\nARG TARGETARCH\nCOPY rootfs-$TARGETARCH/ /\n")
    pb = Pybuild(base / "store")
    pb("build", "--platform", "linux/amd64,linux/arm64", "-t", "bb:multi", str(ctx))
    return pb


def _index(pb: Pybuild, tag: str) -> dict:
    from pybuild.store import Store

    store = Store(pb.root)
    desc = store.resolve_tag(tag)
    assert desc is not None and desc.media_type == "application/vnd.oci.image.index.v1+json"
    return store.read_json(desc.digest)


def test_arm64_run_prints_aarch64(multi: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM bb:multi\nARG TARGETPLATFORM\nRUN echo \"$TARGETPLATFORM $(uname -m)\" > /arch\n"
        "RUN cat /arch\n")
    out = multi("build", "--platform", "linux/amd64,linux/arm64", "-t", "app:1", str(tmp_path))
    assert "linux/arm64 aarch64" in out.stderr
    assert "linux/amd64 x86_64" in out.stderr
    assert "[linux/arm64 2/3] RUN" in out.stderr  # step names say the platform, as BuildKit
    index = _index(multi, "app:1")
    plats = sorted(platforms.normal_string(m["platform"]) for m in index["manifests"])
    assert plats == ["linux/amd64", "linux/arm64"]
    # each manifest's config names its platform; run picks one with --platform
    run = multi("run", "--rm", "--network", "none", "--platform", "linux/arm64", "app:1", "uname", "-m")
    assert run.stdout.strip() == "aarch64"
    native = multi("run", "--rm", "--network", "none", "app:1", "cat", "/arch")
    assert native.stdout.strip() == "linux/amd64 x86_64"
    images = multi("images").stdout
    assert "linux/amd64,linux/arm64" in images
    # a single foreign platform: one arm64 image, no index
    one = multi("build", "--platform", "linux/arm64", "-t", "app:arm", str(tmp_path))
    assert "#" in one.stderr
    from pybuild import image
    from pybuild.store import Store

    img = image.load(Store(multi.root), "app:arm")
    assert img.config["architecture"] == "arm64"


def test_cross_compile_from_buildplatform(multi: Pybuild, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM --platform=$BUILDPLATFORM bb:multi AS build\n"
        "RUN echo \"tools built on $(uname -m)\" > /tools\n"  # no TARGET* args: shared
        "ARG TARGETARCH\n"
        "RUN echo \"binary for $TARGETARCH\" > /out\n"
        "FROM bb:multi\n"
        "COPY --from=build /out /tools /\n"
        "RUN cat /out /tools && uname -m\n")
    meta = tmp_path / "meta.json"
    out = multi("build", "--platform", "linux/amd64,linux/arm64", "-t", "cross:1",
                "--metadata-file", str(meta), str(tmp_path))
    log = out.stderr
    assert "binary for arm64" in log and "binary for amd64" in log
    assert log.count("tools built on x86_64") == 2  # each final stage shows the shared file
    assert "tools built on aarch64" not in log  # the build stage ran natively for both
    steps = json.loads(meta.read_text())["steps"]
    tools = [s for s in steps if "> /tools" in s["step"]]
    assert len(tools) == 2 and sorted(s["cached"] for s in tools) == [False, True], tools
    run = multi("run", "--rm", "--network", "none", "--platform", "linux/arm64", "cross:1", "cat", "/out")
    assert run.stdout.strip() == "binary for arm64"


def test_index_pushed_inspected_and_pulled_by_docker(multi: Pybuild, tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    (tmp_path / "Dockerfile").write_text("FROM bb:multi\nRUN uname -m > /arch\n"
                                         "CMD [\"cat\", \"/arch\"]\n")
    with registry_server() as addr:
        ref = f"{addr}/app:1"
        multi("build", "--platform", "linux/amd64,linux/arm64", "-t", ref, "--push",
              str(tmp_path))
        raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                              f"docker://{ref}"], capture_output=True, text=True, check=True)
        index = json.loads(raw.stdout)
        assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
        archs = sorted(m["platform"]["architecture"] for m in index["manifests"])
        assert archs == ["amd64", "arm64"]
        for m in index["manifests"]:  # every manifest is there by digest
            one = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                                  f"docker://{addr}/app@{m['digest']}"],
                                 capture_output=True, text=True, check=True)
            assert json.loads(one.stdout)["config"]["mediaType"].endswith("config.v1+json")
        # pull --platform selects from the pushed index
        other = Pybuild(tmp_path / "other-store")
        other("pull", "--platform", "linux/arm64", ref)
        from pybuild import image
        from pybuild.store import Store

        assert image.load(Store(other.root), ref).config["architecture"] == "arm64"
        with docker_engine() as docker:
            docker("pull", ref)
            run = docker("run", "--rm", "--network=host", ref)
            assert run.stdout.strip() == "x86_64"



def test_save_all_platforms_or_one(multi: Pybuild, tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    oci = tmp_path / "all.tar"
    multi("save", "--format", "oci", "-o", str(oci), "bb:multi")
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{oci}:bb:multi"],
                         capture_output=True, text=True, check=True)
    assert sorted(m["platform"]["architecture"] for m in json.loads(raw.stdout)["manifests"]) \
        == ["amd64", "arm64"]
    for arch in ("amd64", "arm64"):  # every platform's image is complete in the archive
        cfg = subprocess.run(["skopeo", "inspect", "--override-arch", arch, "--config",
                              f"oci-archive:{oci}:bb:multi"], capture_output=True, text=True,
                             check=True)
        assert json.loads(cfg.stdout)["architecture"] == arch
    one = tmp_path / "arm.tar"
    multi("save", "--platform", "linux/arm64", "-o", str(one), "bb:multi")
    with tarfile.open(one) as t:
        manifest = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(t.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
    assert config["architecture"] == "arm64" and manifest[0]["RepoTags"] == ["bb:multi"]
    bad = multi("save", "--platform", "linux/s390x", "-o", str(tmp_path / "x.tar"), "bb:multi",
                check=False)
    assert bad.returncode != 0 and not (tmp_path / "x.tar").exists()
    assert "no manifest for linux/s390x" in bad.stderr and "Traceback" not in bad.stderr


def test_cache_to_and_from_per_platform(multi: Pybuild, tmp_path: Path) -> None:
    """--cache-to exports every platform's steps (their keys name the platform); a fresh
    store building FROM the pushed index pulls each platform's base and hits every step."""
    with registry_server() as addr:
        multi("push", "bb:multi", f"{addr}/base/bb:multi")
        (tmp_path / "Dockerfile").write_text(
            f"FROM {addr}/base/bb:multi\nRUN uname -m > /arch\nRUN cat /arch\n")
        cache = f"type=registry,ref={addr}/cache/app:buildcache,mode=max"
        first = Pybuild(tmp_path / "one")
        first("build", "--platform", "linux/amd64,linux/arm64", "-t", "app",
              "--cache-to", cache, str(tmp_path))
        second = Pybuild(tmp_path / "two")
        out = second("build", "--platform", "linux/amd64,linux/arm64", "-t", "app",
                     "--cache-from", cache, str(tmp_path))
        assert out.stderr.count("CACHED") == 4, out.stderr
        run = second("run", "--rm", "--platform", "linux/arm64", "app", "cat", "/arch")
        assert run.stdout.strip() == "aarch64"


def test_attestations_per_platform_pushed(multi: Pybuild, tmp_path: Path) -> None:
    """--sbom --provenance with two platforms: one attestation manifest per platform image,
    after the images in the index, each referencing its own image (as BuildKit's exporter
    writes them); pushed, and each one's statements read back by skopeo."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    from test_attest import slsa_validate, spdx_validate

    ctx = tmp_path / "ctx"
    for arch in ("amd64", "arm64"):
        meta = ctx / f"meta-{arch}" / f"tool-{arch}.dist-info" / "METADATA"
        meta.parent.mkdir(parents=True)
        meta.write_text(f"Metadata-Version: 2.1\nName: tool\nVersion: 1.0+{arch}\n")
    (ctx / "Dockerfile").write_text("FROM bb:multi\nARG TARGETARCH\nCOPY meta-$TARGETARCH/ /app/\n")
    local = {}
    for m in _index(multi, "bb:multi")["manifests"]:
        local[m["platform"]["architecture"]] = m["digest"]
    with registry_server() as addr:
        ref = f"{addr}/att/multi:1"
        built = multi("build", "-q", "--platform", "linux/amd64,linux/arm64", "--sbom",
                      "--provenance=mode=max", "-t", ref, "--push", str(ctx)).stdout.strip()
        # -q names the index the tag points at: the one holding the attestations
        from pybuild.store import Store

        assert built == Store(multi.root).resolve_tag(ref).digest  # type: ignore[union-attr]
        raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                              f"docker://{ref}"], capture_output=True, text=True, check=True)
        entries = json.loads(raw.stdout)["manifests"]
        assert [platforms.normal_string(e["platform"]) for e in entries] == [
            "linux/amd64", "linux/arm64", "unknown/unknown", "unknown/unknown"]
        for image, att in zip(entries[:2], entries[2:], strict=True):
            assert att["annotations"] == {"vnd.docker.reference.digest": image["digest"],
                                          "vnd.docker.reference.type": "attestation-manifest"}
            arch = image["platform"]["architecture"]
            oci = tmp_path / f"oci-{arch}"
            subprocess.run(["skopeo", "copy", "--src-tls-verify=false",
                            f"docker://{addr}/att/multi@{att['digest']}", f"oci:{oci}:att"],
                           capture_output=True, text=True, check=True)
            man = json.loads((oci / "blobs" / "sha256" / att["digest"][7:]).read_text())
            sts = {layer["annotations"]["in-toto.io/predicate-type"]:
                   json.loads((oci / "blobs" / "sha256" / layer["digest"][7:]).read_text())
                   for layer in man["layers"]}
            for st in sts.values():
                assert st["subject"] == [{"name": f"pkg:docker/{ref}?platform=linux%2F{arch}",
                                          "digest": {"sha256": image["digest"][7:]}}]
            doc = sts["https://spdx.dev/Document"]["predicate"]
            assert spdx_validate(doc) == []
            assert [(p["name"], p["versionInfo"]) for p in doc["packages"][1:]] == [
                ("tool", f"1.0+{arch}")]
            pred = sts["https://slsa.dev/provenance/v1"]["predicate"]
            slsa_validate(pred)
            # each platform's base is its own entry of bb:multi
            assert pred["buildDefinition"]["resolvedDependencies"] == [
                {"uri": f"pkg:docker/bb@multi?platform=linux%2F{arch}",
                 "digest": {"sha256": local[arch][7:]}}]
    run = multi("run", "--rm", "--network", "none", "--platform", "linux/arm64", ref, "cat",
                "/app/tool-arm64.dist-info/METADATA")
    assert "1.0+arm64" in run.stdout
    # `pybuild sbom` shows the attestation of the host's image, or of --platform's
    for plat, version in (([], "1.0+amd64"), (["--platform", "linux/arm64"], "1.0+arm64")):
        rows = multi("sbom", "--require-attestation", *plat, ref).stdout.splitlines()
        assert rows[1].split()[:3] == ["tool", version, "pypi"], rows
