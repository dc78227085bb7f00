"""The registry client against Debian's real docker-registry, cross-checked with skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest
import requests
import zstandard

from pybuild import image, registry
from pybuild.auth import AuthProvider, Credentials, parse_challenges
from pybuild.errors import PybuildError
from pybuild.layer import MEDIA_TYPES, apply_layer
from pybuild.store import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Descriptor, Store
from registry_fixtures import Registry, TamperingProxy, TokenIssuer, htpasswd_line


def _skopeo() -> str:
    tool = shutil.which("skopeo")
    if tool is None:
        pytest.skip("skopeo not installed (apt-get install skopeo)")
    return tool


def _inspect_digest(ref: str) -> str:
    out = subprocess.run([_skopeo(), "inspect", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["Digest"]


def make_image(store: Store, tag: str, files: dict[str, bytes], *, compression: str = "gzip",
               architecture: str | None = None) -> Descriptor:
    """A one-layer image holding `files`, its layer compressed as asked; tagged `tag`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            tar.addfile(info, io.BytesIO(data))
    plain = raw.getvalue()
    blob = {"gzip": lambda b: gzip.compress(b, mtime=0),
            "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
            "none": lambda b: b}[compression](plain)
    layer = store.put_bytes(blob, MEDIA_TYPES[compression])
    plat = dict(image.host_platform())
    if architecture:
        plat = {"architecture": architecture, "os": "linux"}
    config = image.empty_config(plat)
    config["rootfs"]["diff_ids"] = ["sha256:" + hashlib.sha256(plain).hexdigest()]
    desc = image.write(store, config, [layer])
    store.set_tag(tag, desc)
    return desc


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture
def proxy(reg: Registry) -> Iterator[TamperingProxy]:
    with TamperingProxy(reg.addr) as p:
        yield p  # type: ignore[misc]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def bb_store(tmp_path: Path, busybox_tar: Path) -> Store:
    s = Store(tmp_path / "bb-store")
    image.import_rootfs(s, busybox_tar, "busybox")
    return s


def test_push_is_read_by_skopeo(bb_store: Store, reg: Registry, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int | None]] = []
    client = registry.RegistryClient(progress=lambda *a: seen.append(a))
    digest = registry.push(bb_store, "busybox", f"{reg.addr}/pb/busybox:1", client=client)
    assert digest == image.load(bb_store, "busybox").manifest_desc.digest
    assert _inspect_digest(f"{reg.addr}/pb/busybox:1") == digest
    layer = image.load(bb_store, "busybox").layers[0]
    assert (registry._short(layer.digest), layer.size, layer.size) in seen
    copy = subprocess.run([_skopeo(), "copy", "--src-tls-verify=false",
                           f"docker://{reg.addr}/pb/busybox:1", f"oci:{tmp_path / 'oci'}:x"],
                          capture_output=True, text=True, timeout=120)
    assert copy.returncode == 0, copy.stderr


def test_pull_docker_schema2_pushed_by_skopeo(bb_store: Store, reg: Registry,
                                              tmp_path: Path) -> None:
    push = subprocess.run([_skopeo(), "copy", "--format", "v2s2", "--dest-tls-verify=false",
                           f"oci:{bb_store.root}:busybox:latest",
                           f"docker://{reg.addr}/skopeo/busybox:v2"],
                          capture_output=True, text=True, timeout=120)
    assert push.returncode == 0, push.stderr
    remote = _inspect_digest(f"{reg.addr}/skopeo/busybox:v2")
    empty = Store(tmp_path / "empty")
    desc = registry.pull(empty, f"{reg.addr}/skopeo/busybox:v2")
    assert (desc.digest, desc.media_type) == (remote, DOCKER_MANIFEST)
    assert desc.platform == {"architecture": image.host_platform()["architecture"], "os": "linux"}
    img = image.load(empty, f"{reg.addr}/skopeo/busybox:v2")
    assert img.manifest_desc.digest == remote
    assert img.manifest["mediaType"] == DOCKER_MANIFEST  # kept as pulled
    with empty.open_blob(img.layers[0].digest) as blob:
        assert apply_layer(blob, tmp_path / "rootfs", mode="flatten") == img.diff_ids[0]
    assert (tmp_path / "rootfs" / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert empty.verify() == []


def test_second_push_sends_no_blob_and_other_repo_mounts(bb_store: Store,
                                                          proxy: TamperingProxy) -> None:
    registry.push(bb_store, "busybox", f"{proxy.addr}/m/first:1")
    first = proxy.take()
    assert sum(1 for m, p in first if m == "PUT" and "/blobs/uploads/" in p) == 2  # config, layer
    registry.push(bb_store, "busybox", f"{proxy.addr}/m/first:1")
    again = proxy.take()
    assert [m for m, p in again if "/blobs/" in p] == ["HEAD", "HEAD"]
    assert [m for m, p in again if "/manifests/" in p] == ["PUT"]
    digest = registry.push(bb_store, "busybox", f"{proxy.addr}/m/second:1")
    mounted = proxy.take()
    posts = [p for m, p in mounted if m == "POST"]
    assert len(posts) == 2 and all("mount=sha256" in p and "from=m%2Ffirst" in p for p in posts)
    assert not any(m in ("PUT", "PATCH") and "/blobs/" in p for m, p in mounted)
    assert _inspect_digest(f"{proxy.addr}/m/second:1") == digest


def test_chunked_push_and_pull_back(store: Store, proxy: TamperingProxy, tmp_path: Path) -> None:
    payload = os.urandom(700_000)  # incompressible: several 256 KiB chunks
    desc = make_image(store, "chunky", {"data.bin": payload})
    client = registry.RegistryClient()
    client.chunk_size = 256 * 1024
    digest = registry.push(store, "chunky", f"{proxy.addr}/chunked/app:1", client=client,
                           chunked=True)
    patches = [p for m, p in proxy.take() if m == "PATCH"]
    assert len(patches) >= 3
    assert digest == desc.digest == _inspect_digest(f"{proxy.addr}/chunked/app:1")
    back = Store(tmp_path / "back")
    assert registry.pull(back, f"{proxy.addr}/chunked/app:1").digest == digest
    layer = image.load(back, f"{proxy.addr}/chunked/app:1").layers[0]
    assert back.read_bytes(layer.digest) == store.read_bytes(layer.digest)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layer_compressions_round_trip(store: Store, reg: Registry, tmp_path: Path,
                                       compression: str) -> None:
    desc = make_image(store, "c", {"hello.txt": b"hello " + compression.encode()},
                      compression=compression)
    ref = f"{reg.addr}/comp/{compression}:1"
    registry.push(store, "c", ref)
    other = Store(tmp_path / "other")
    pulled = registry.pull(other, ref)
    assert (pulled.digest, pulled.media_type) == (desc.digest, OCI_MANIFEST)
    img = image.load(other, ref)
    assert img.layers[0].media_type == MEDIA_TYPES[compression]
    assert other.verify() == []


def _put_index(addr: str, repo: str, tag: str, entries: list[tuple[Descriptor, str]]) -> None:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**d.to_dict(), "platform": {"architecture": arch, "os": "linux"}} for d, arch in entries]}
    resp = requests.put(f"http://{addr}/v2/{repo}/manifests/{tag}", data=json.dumps(index),
                        headers={"Content-Type": OCI_INDEX}, timeout=30)
    assert resp.status_code == 201, resp.text


def test_manifest_list_picks_host_platform_or_fails_clearly(store: Store, reg: Registry,
                                                            tmp_path: Path) -> None:
    host = image.host_platform()["architecture"]
    mine = make_image(store, "mine", {"arch": host.encode()})
    other = make_image(store, "other", {"arch": b"s390x"}, architecture="s390x")
    registry.push(store, "mine", f"{reg.addr}/multi/app:mine")
    registry.push(store, "other", f"{reg.addr}/multi/app:other")
    _put_index(reg.addr, "multi/app", "both", [(other, "s390x"), (mine, host)])
    _put_index(reg.addr, "multi/app", "s390x-only", [(other, "s390x")])
    fresh = Store(tmp_path / "fresh")
    desc = registry.pull(fresh, f"{reg.addr}/multi/app:both")
    assert desc.digest == mine.digest and desc.platform == {"architecture": host, "os": "linux"}
    assert image.load(fresh, f"{reg.addr}/multi/app:both").id == image.load(store, "mine").id
    with pytest.raises(PybuildError) as err:
        registry.pull(fresh, f"{reg.addr}/multi/app:s390x-only")
    assert str(err.value) == (f"no image for linux/{host} in {reg.addr}/multi/app:s390x-only "
                              f"(available: linux/s390x)")
    assert f"{reg.addr}/multi/app:s390x-only" not in fresh.list_tags()


def test_missing_tag_repository_and_registry(store: Store, reg: Registry) -> None:
    make_image(store, "x", {"f": b"x"})
    registry.push(store, "x", f"{reg.addr}/app:1")
    with pytest.raises(PybuildError, match=rf"^manifest unknown: {reg.addr}/app:nope$"):
        registry.pull(store, f"{reg.addr}/app:nope")
    with pytest.raises(PybuildError, match=rf"^manifest unknown: {reg.addr}/no/such:1"):
        registry.pull(store, f"{reg.addr}/no/such:1")
    with pytest.raises(PybuildError, match=r"^cannot resolve registry host nope\.invalid "
                                           r"\(pulling nope\.invalid/app:1\)$"):
        registry.pull(store, "nope.invalid/app:1")
    from engines import free_port
    down = f"127.0.0.1:{free_port()}"
    with pytest.raises(PybuildError, match=rf"^cannot connect to registry {down}: connection "
                                           rf"refused \(pushing {down}/app:1\)$"):
        registry.push(store, "x", f"{down}/app:1")
    with pytest.raises(PybuildError, match="cannot push to a digest reference"):
        registry.push(store, "x", f"{reg.addr}/app@sha256:" + "a" * 64)


def test_tampered_blob_is_rejected_then_rerun_succeeds(store: Store, proxy: TamperingProxy,
                                                       tmp_path: Path) -> None:
    desc = make_image(store, "t", {"big": os.urandom(50_000)})
    registry.push(store, "t", f"{proxy.addr}/tamper/app:1")
    victim = Store(tmp_path / "victim")
    proxy.tamper = True
    with pytest.raises(PybuildError) as err:
        registry.pull(victim, f"{proxy.addr}/tamper/app:1")
    msg = str(err.value)
    assert "does not match its digest" in msg and "not stored" in msg
    assert msg.endswith(f"(pulling {proxy.addr}/tamper/app:1)")
    assert victim.list_tags() == {} and victim.verify() == []
    assert not any(victim.has_blob(d.digest) for d in image.load(store, "t").layers)
    proxy.tamper = False
    assert registry.pull(victim, f"{proxy.addr}/tamper/app:1").digest == desc.digest
    assert victim.verify() == []
    proxy.take()
    registry.pull(victim, f"{proxy.addr}/tamper/app:1")  # everything present: no blob fetched
    assert [m for m, p in proxy.take() if "/blobs/" in p] == []


def test_push_interrupted_by_registry_going_away(store: Store, tmp_path: Path) -> None:
    make_image(store, "big", {"blob": os.urandom(8 << 20)}, compression="none")
    r = Registry(tmp_path / "dying").start()
    try:
        killed: list[bool] = []

        def kill_mid_upload(label: str, current: int, total: int | None) -> None:
            if total and total > (1 << 20) and 0 < current < total and not killed:
                killed.append(True)
                r.kill()

        client = registry.RegistryClient(progress=kill_mid_upload)
        with pytest.raises(PybuildError) as err:
            registry.push(store, "big", f"{r.addr}/app:1", client=client)
        assert killed
        assert str(err.value).startswith(f"cannot connect to registry {r.addr}")
        assert str(err.value).endswith(f"(pushing {r.addr}/app:1)")
        r.start()
        digest = registry.push(store, "big", f"{r.addr}/app:1")
        assert _inspect_digest(f"{r.addr}/app:1") == digest
    finally:
        r.stop()


def test_basic_auth_login_and_logout(store: Store, tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", "s3cret") + "\n")
    config = tmp_path / "docker" / "config.json"
    with Registry(tmp_path / "basic", {"htpasswd": {"realm": "pybuild-test",
                                                    "path": str(htpasswd)}}) as r:
        make_image(store, "app", {"f": b"basic"})
        with pytest.raises(PybuildError, match=rf"^unauthorized: authentication required for "
                                               rf"{r.addr}/app \(pushing {r.addr}/app:1\)$"):
            registry.push(store, "app", f"{r.addr}/app:1",
                          client=registry.RegistryClient(auth=AuthProvider(config)))
        wrong = AuthProvider(config, {r.addr: Credentials("alice", "nope")})
        with pytest.raises(PybuildError, match="^unauthorized: authentication required for"):
            registry.push(store, "app", f"{r.addr}/app:1",
                          client=registry.RegistryClient(auth=wrong))
        with pytest.raises(PybuildError, match="incorrect username or password"):
            registry.login(r.addr, "alice", "nope", config_path=config)
        assert not config.exists()
        registry.login(r.addr, "alice", "s3cret", config_path=config)
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert json.loads(config.read_text())["auths"][r.addr]["auth"] == "YWxpY2U6czNjcmV0"
        client = registry.RegistryClient(auth=AuthProvider(config))
        digest = registry.push(store, "app", f"{r.addr}/app:1", client=client)
        fresh = Store(tmp_path / "fresh")
        assert registry.pull(fresh, f"{r.addr}/app:1", client=client).digest == digest
        assert registry.logout(r.addr, config_path=config) is True
        assert registry.logout(r.addr, config_path=config) is False
        with pytest.raises(PybuildError, match="^unauthorized"):
            registry.pull(fresh, f"{r.addr}/app:1",
                          client=registry.RegistryClient(auth=AuthProvider(config)))


def test_token_auth_flow(store: Store, tmp_path: Path) -> None:
    with TokenIssuer(tmp_path, {"bob": "hunter2"}) as issuer:
        assert isinstance(issuer, TokenIssuer)
        with Registry(tmp_path / "token", issuer.registry_auth()) as r:
            make_image(store, "app", {"f": b"token"})
            creds = AuthProvider(tmp_path / "none.json", {r.addr: Credentials("bob", "hunter2")})
            client = registry.RegistryClient(auth=creds)
            digest = registry.push(store, "app", f"{r.addr}/team/app:1", client=client)
            assert issuer.issued == [("bob", ("repository:team/app:pull,push",))]
            fresh = Store(tmp_path / "fresh")
            registry.pull(fresh, f"{r.addr}/team/app:1", client=client)
            registry.pull(fresh, f"{r.addr}/team/app:1", client=client)
            pulls = [s for _, s in issuer.issued if s == ("repository:team/app:pull",)]
            assert len(pulls) == 1  # cached per (registry, scope)
            assert client.authenticator.token_requests == 2
            # A mount from team/app asks one token for both repositories.
            registry.push(store, "app", f"{r.addr}/team/copy:1", client=client)
            assert issuer.issued[-1][1] == ("repository:team/app:pull",
                                            "repository:team/copy:pull,push")
            assert _inspect_digest_with_creds(f"{r.addr}/team/copy:1") == digest
            bad = AuthProvider(tmp_path / "none.json", {r.addr: Credentials("bob", "wrong")})
            with pytest.raises(PybuildError, match=rf"^unauthorized: authentication required "
                                                   rf"for {r.addr}/team/app \(pulling"):
                registry.pull(Store(tmp_path / "x"), f"{r.addr}/team/app:1",
                              client=registry.RegistryClient(auth=bad))
            registry.login(r.addr, "bob", "hunter2", config_path=tmp_path / "cfg.json")
            with pytest.raises(PybuildError, match="incorrect username or password"):
                registry.login(r.addr, "bob", "wrong", config_path=tmp_path / "cfg.json")


def _inspect_digest_with_creds(ref: str) -> str:
    out = subprocess.run([_skopeo(), "inspect", "--tls-verify=false", "--creds", "bob:hunter2",
                          f"docker://{ref}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["Digest"]


def test_credentials_from_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper_dir = tmp_path / "bin"
    helper_dir.mkdir()
    helper = helper_dir / "docker-credential-pbtest"
    helper.write_text("#!/bin/sh\nread server\n"
                      "if [ \"$server\" = \"helped.example:5000\" ]; then\n"
                      "  echo '{\"ServerURL\":\"x\",\"Username\":\"hu\",\"Secret\":\"hs\"}'\n"
                      "else echo 'credentials not found in native keychain'; exit 1; fi\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper_dir}:{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "auths": {"https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
                  "http://plain.example:5000/v2/": {"username": "pu", "password": "pp"}},
        "credHelpers": {"helped.example:5000": "pbtest", "broken.example": "missing"}}))
    p = AuthProvider(config)
    assert p.credentials("registry-1.docker.io") == Credentials("hub", "hubpw")
    assert p.credentials("plain.example:5000") == Credentials("pu", "pp")
    assert p.credentials("helped.example:5000") == Credentials("hu", "hs")
    assert p.credentials("other.example") is None
    with pytest.raises(PybuildError, match="docker-credential-missing not found"):
        p.credentials("broken.example")
    config.write_text(json.dumps({"credsStore": "pbtest"}))
    assert AuthProvider(config).credentials("other.example") is None
    config.write_text("{not json")
    with pytest.raises(PybuildError, match="cannot read docker config"):
        AuthProvider(config).credentials("x")


def test_parse_challenges() -> None:
    [c] = parse_challenges('Bearer realm="https://auth.example/token",service="reg",'
                           'scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg",
                        "scope": "repository:a/b:pull,push"}
    both = parse_challenges('Basic realm="r", Bearer realm="t"')
    assert [(c.scheme, c.params) for c in both] == [("basic", {"realm": "r"}),
                                                    ("bearer", {"realm": "t"})]


def test_plain_http_only_for_loopback_and_insecure() -> None:
    c = registry.RegistryClient(insecure={"reg.lan:5000"})
    assert c.base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert c.base_url("127.3.4.5") == "http://127.3.4.5"
    assert c.base_url("localhost:5000") == "http://localhost:5000"
    assert c.base_url("[::1]:5000") == "http://[::1]:5000"
    assert c.base_url("reg.lan:5000") == "http://reg.lan:5000"
    assert c.base_url("reg.lan:6000") == "https://reg.lan:6000"
    assert c.base_url("registry-1.docker.io") == "https://registry-1.docker.io"


def test_https_registry_with_tls_ca(store: Store, tmp_path: Path) -> None:
    """A non-loopback name means HTTPS: verified with tls_ca, refused without it."""
    import socket
    name = socket.gethostname()
    try:
        resolves = {a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        resolves = set()
    if not name or "127.0.0.1" not in resolves or name == "localhost":
        pytest.skip(f"the host name {name!r} does not resolve to 127.0.0.1 here")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-subj", f"/CN={name}", "-days", "2",
                    "-addext", f"subjectAltName=DNS:{name}"], check=True, capture_output=True)
    r = Registry(tmp_path / "tls")
    config = json.loads(r.config.read_text())
    config["http"]["tls"] = {"certificate": str(cert), "key": str(key)}
    r.config.write_text(json.dumps(config))
    r.ready_url = f"https://{r.addr}/v2/"
    with r:
        make_image(store, "app", {"f": b"tls"})
        dest = f"{name}:{r.port}/secure/app:1"
        with pytest.raises(PybuildError, match=rf"^TLS error talking to {name}:{r.port}: .*"
                                               rf"\(pushing {dest}\)$"):
            registry.push(store, "app", dest)
        client = registry.RegistryClient(tls_ca=cert)
        digest = registry.push(store, "app", dest, client=client)
        assert registry.pull(Store(tmp_path / "fresh"), dest, client=client).digest == digest


def test_push_hashes_each_blob_once(bb_store: Store, reg: Registry,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The check before any transfer is the only read that hashes a blob: the upload sends
    the very file that was checked (same inode, size, mtime, ctime), unhashed again."""
    img = image.load(bb_store, "busybox")
    hashed: list[str] = []
    real = registry.hasher

    def counting(digest: str) -> Any:
        hashed.append(digest)
        return real(digest)

    monkeypatch.setattr(registry, "hasher", counting)
    registry.push(bb_store, "busybox", f"{reg.addr}/once/bb:1")
    blobs = [img.config_desc.digest, *(d.digest for d in img.layers)]
    assert sorted(h for h in hashed if h in blobs) == sorted(blobs)


def test_blob_changed_after_the_check_is_hashed_again(store: Store) -> None:
    """The fingerprint the check returns stops matching after a same-size write in place
    (ctime moves), and the second check then refuses the altered bytes."""
    desc = store.put_bytes(b"x" * 4096, "application/octet-stream")
    fp = registry.check_stored_blob(store, desc)
    with store.open_blob(desc.digest) as f:
        assert registry.verified_unchanged(f, fp)
    path = store.blob_path(desc.digest)
    path.chmod(0o644)
    path.write_bytes(b"y" * 4096)
    with store.open_blob(desc.digest) as f:
        assert not registry.verified_unchanged(f, fp)
        assert not registry.verified_unchanged(f, None)
    with pytest.raises(PybuildError, match="hashes to"):
        registry.check_stored_blob(store, desc)
