"""Rootless mode (issue 18): an unprivileged user with subuid/subgid ranges builds, runs,
pushes and prunes; the image digest equals the root build's.

The session fixture creates a real user (useradd, usermod --add-subuids), copies this
worktree's package and the Python packages it needs into a world-readable temp dir and
runs `python3 -m pybuild` as that user through runuser. Root-free unit tests cover the
paths, the subuid parsing, the missing-piece messages and the rootless runtime spec.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines import free_port
from pybuild import containers, rootless, runtime
from pybuild.errors import PybuildError
from pybuild.network import _slirp
from rootless_user import EPOCH, ROOT, User, missing, rootless_user, user_devices, worker_slot

BUSYBOX = Path("/bin/busybox")
# one user and subid range per pytest-xdist worker
USER = f"pbrootless{worker_slot()}"
SUBID_START = 400000 + worker_slot() * 70000  # clear of bench (300000) and older runs
SUBIDS = f"{SUBID_START}-{SUBID_START + 65535}"
DOCKERFILE = """\
FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc /home/app /tmp /old/d \\
 && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd \\
 && echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd \\
 && printf 'root:x:0:\\napp:x:1000:\\n' > /etc/group \\
 && chown app:app /home/app && chmod 1777 /tmp && echo x > /old/d/f && echo y > /old/g \\
 && mkdir /srv && chown 4242:4343 /srv

FROM base AS builder
RUN --mount=type=cache,target=/cache,uid=1000 echo cached >> /cache/c; cat /cache/c > /built
RUN rm /old/g && rm -rf /old/d && mkdir /old/d && echo new > /old/d/n
USER app
RUN echo hi > /home/app/hello && id > /home/app/id

FROM builder
COPY --from=builder --chown=app:app /home/app /srv/app
COPY --chown=4242:4343 busybox /srv/bb
USER app
CMD ["cat", "/srv/app/id"]
"""


# ----------------------------------------------------------------- root-free unit tests


def test_sub_range_parsing(tmp_path: Path) -> None:
    f = tmp_path / "subuid"
    f.write_text("other:100000:65536\nbad line\nme:x:5\n1234:300000:10\nme:200000:65536\n")
    assert rootless.sub_range(str(f), 1234, "me") == rootless.IdRange(300000, 10)
    assert rootless.sub_range(str(f), 99, "me") == rootless.IdRange(200000, 65536)
    assert rootless.sub_range(str(f), 99, "nobody-here") is None
    assert rootless.sub_range(str(tmp_path / "missing"), 99, "me") is None


def test_problems_name_the_missing_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    zero = tmp_path / "max"
    zero.write_text("0\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no newuidmap/newgidmap on it
    got = rootless.problems(str(empty), str(empty), str(zero))
    assert f"user namespaces are disabled ({zero} is 0)" in got
    assert "newuidmap is missing (install Debian's uidmap package)" in got
    assert "newgidmap is missing (install Debian's uidmap package)" in got
    assert any(p.startswith("no subordinate uid range for user ") and str(empty) in p for p in got)
    assert any(p.startswith("no subordinate gid range for user ") for p in got)


def test_paths_for_a_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv(rootless.ENV_INSIDE, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert rootless.default_root() == str(tmp_path / "home/.local/share/pybuild")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert rootless.default_root() == str(tmp_path / "data/pybuild")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert rootless.state_dir() == tmp_path / "pybuild"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "absent"))
    assert rootless.state_dir() == Path(f"/tmp/pybuild-{os.getuid()}")


def test_paths_for_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv(rootless.ENV_INSIDE, raising=False)
    assert rootless.default_root() == "/var/lib/pybuild"
    assert rootless.state_dir() == Path("/run/pybuild")


def test_variable_alone_does_not_make_rootless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rootless.ENV_INSIDE, "1000")
    if open("/proc/self/uid_map").read().split()[:3] == ["0", "0", "4294967295"]:
        assert not rootless.inside()


def test_rootless_spec_has_no_cgroups(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = runtime.RunSpec(rootfs=str(tmp_path), args=["true"], env=[])
    monkeypatch.delenv(rootless.ENV_INSIDE, raising=False)
    as_root = runtime.build_spec(spec)
    assert "resources" in as_root["linux"]
    monkeypatch.setattr(rootless, "inside", lambda: True)
    cfg = runtime.build_spec(spec)
    assert "resources" not in cfg["linux"]
    dests = {m["destination"]: m for m in cfg["mounts"]}
    assert "/sys/fs/cgroup" not in dests
    assert dests["/sys"]["type"] == "none" and "rbind" in dests["/sys"]["options"]
    assert "ro" in dests["/sys"]["options"]


# ----------------------------------------------------------------- the real user


@pytest.fixture(scope="session")
def user() -> Iterator[User]:
    reason = missing() or (None if BUSYBOX.exists() else "busybox-static not installed")
    if reason:
        pytest.skip(reason)
    with user_devices(), rootless_user(USER, SUBIDS) as u:
        yield u


@pytest.fixture(scope="session")
def context(user: User) -> Path:
    ctx = user.home.parent / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    shutil.copy(BUSYBOX, ctx / "busybox")
    subprocess.run(["chmod", "-R", "o+rX", str(ctx)], check=True)
    ctx.chmod(0o755)
    return ctx


def _digest(res: subprocess.CompletedProcess[str]) -> str:
    return res.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def built(user: User, context: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same Dockerfile built as the user (rootless) and as root, SOURCE_DATE_EPOCH set."""
    rl = _digest(user.pybuild("build", "--progress", "quiet", "-t", "app", str(context)))
    store = user.home.parent / "rootstore"
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    res = subprocess.run([sys.executable, "-m", "pybuild", "--root", str(store), "build",
                          "--progress", "quiet", "-t", "app", str(context)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return {"rootless": rl, "root": _digest(res), "root_store": str(store)}


def _layer_members(store: Path, image_id: str) -> list[list[tarfile.TarInfo]]:
    """The tar members of each layer of the image whose config digest is `image_id`."""
    blobs = store / "blobs" / "sha256"
    index = json.loads((store / "index.json").read_text())
    manifests = [json.loads((blobs / d["digest"].split(":")[1]).read_text())
                 for d in index["manifests"]]
    manifest = next(m for m in manifests if m.get("config", {}).get("digest") == image_id)
    out = []
    for layer in manifest["layers"]:
        data = gzip.decompress((blobs / layer["digest"].split(":")[1]).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            out.append(t.getmembers())
    return out


def test_rootless_build_digest_equals_root_build(user: User, built: dict[str, str]) -> None:
    assert built["rootless"].startswith("sha256:")
    assert built["rootless"] == built["root"]
    # what the user's store holds: other owners and whiteouts, as the root build wrote them
    store = user.home / ".local/share/pybuild"
    members = [m for layer in _layer_members(store, built["rootless"]) for m in layer]
    owners = {m.name: (m.uid, m.gid) for m in members}
    assert owners["srv/app/id"] == (1000, 1000)   # COPY --chown=app:app
    assert owners["srv/bb"] == (4242, 4343)        # COPY --chown=numeric
    assert owners["srv"] == (4242, 4343)          # chown in a RUN, inside the namespace
    assert owners["home/app/hello"] == (1000, 1000)  # written by USER app
    names = {m.name for m in members}
    assert "old/.wh.g" in names and "old/d/.wh..wh..opq" in names


def test_rootless_store_location_and_state_mode(user: User, built: dict[str, str]) -> None:
    store = user.home / ".local/share/pybuild"
    assert (store / "index.json").exists()
    assert store.stat().st_uid == user.uid
    state = user.runtime_dir / "pybuild"
    assert state.stat().st_mode & 0o777 == 0o700
    res = user.pybuild("images")
    assert "app" in res.stdout


def test_rootless_warm_build_hits_cache(user: User, context: Path, built: dict[str, str]) -> None:
    res = user.pybuild("build", "--progress", "plain", "-t", "app", str(context))
    assert f"image:  {built['rootless']}" in res.stderr
    assert "CACHED" in res.stdout + res.stderr


def test_rootless_run(user: User, built: dict[str, str]) -> None:
    res = user.pybuild("run", "--rm", "app")
    assert res.stdout.strip() == "uid=1000(app) gid=1000(app)"
    res = user.pybuild("run", "--rm", "--user", "0", "app", "stat", "-c", "%u:%g", "/srv/bb")
    assert res.stdout.strip() == "4242:4343"
    res = user.pybuild("run", "--rm", "--network", "none", "app", "cat", "/proc/net/dev")
    ifaces = [ln.split(":")[0].strip() for ln in res.stdout.splitlines()[2:]]
    assert ifaces == ["lo"]


def test_rootless_detached_container_stop_rm(user: User, built: dict[str, str]) -> None:
    cid = user.pybuild("run", "-d", "--name", "rl-web", "app", "sleep", "300").stdout.strip()
    try:
        assert "rl-web" in user.pybuild("ps").stdout
        user.pybuild("stop", "-t", "1", "rl-web")
        assert "rl-web" not in user.pybuild("ps").stdout
    finally:
        user.pybuild("rm", "-f", cid, check=False)
    assert "rl-web" not in user.pybuild("ps", "-a").stdout


def test_rootless_push_to_local_registry(user: User, built: dict[str, str],
                                         tmp_path: Path) -> None:
    from registry_fixtures import Registry

    with Registry(tmp_path / "reg") as reg:
        ref = f"{reg.addr}/rootless/app:1"
        user.pybuild("tag", "app", ref)
        user.pybuild("push", "--insecure-registry", reg.addr, ref)
        skopeo = shutil.which("skopeo")
        if skopeo is None:
            pytest.skip("skopeo not installed")
        out = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false",
                              f"docker://{ref}"], capture_output=True, text=True,
                             check=True).stdout
        assert json.loads(out)["config"]["digest"] == built["rootless"]


def test_rootless_cache_prune(user: User, context: Path, built: dict[str, str]) -> None:
    before = user.pybuild("cache", "du").stdout
    res = user.pybuild("cache", "prune", "--all")
    assert res.returncode == 0
    assert user.pybuild("cache", "du").stdout != before
    assert "app" in user.pybuild("images").stdout  # a tagged image is never pruned
    # the cache mount went too: the rebuild's RUN appends to an empty /cache/c again, so
    # the image is the same as the first build's (two lines in /built would change it)
    again = _digest(user.pybuild("build", "--progress", "quiet", "-t", "app", str(context)))
    assert again == built["root"]


def test_rootless_doctor(user: User, built: dict[str, str]) -> None:
    res = user.pybuild("doctor")
    assert res.stdout.startswith("rootless: user namespace uid map 0..0 -> ")
    assert f"1..65536 -> {SUBID_START}..{SUBID_START + 65535}" in res.stdout
    assert "rootless: container network: slirp4netns (published ports forwarded by it)\n" \
        in res.stdout
    assert "0 problem(s) found" in res.stdout


def test_missing_subuid_range_is_one_line(user: User) -> None:
    res = subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i", *user.env(HOME="/tmp"),
                          user.python, "-m", "pybuild", "images"],
                         cwd="/", capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith("error: rootless mode unavailable: no subordinate uid range "
                                 "for user nobody in /etc/subuid")
    assert len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i", *user.env(HOME="/tmp"),
                          user.python, "-m", "pybuild", "doctor"],
                         cwd="/", capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "rootless: no subordinate uid range for user nobody" in res.stdout


def test_missing_newuidmap_is_named(user: User) -> None:
    res = user.pybuild("doctor", check=False, PATH="/nonexistent")
    assert res.returncode == 1
    assert "rootless: newuidmap is missing (install Debian's uidmap package)" in res.stdout


def test_working_directory_never_shadows_the_package(user: User) -> None:
    """The re-exec runs `python -P -m pybuild`: a `pybuild/` dir in the working directory
    (a build context, say) is not imported inside the namespace."""
    d = user.home.parent / "shadow"
    (d / "pybuild").mkdir(parents=True)
    (d / "pybuild" / "__init__.py").write_text("")
    (d / "pybuild" / "__main__.py").write_text("print('SHADOWED')\n")
    subprocess.run(["chmod", "-R", "o+rX", str(d)], check=True)
    res = user.run([user.python, "-P", "-m", "pybuild", "images"], cwd=str(d))
    assert res.returncode == 0, res.stderr
    assert "SHADOWED" not in res.stdout
    assert res.stdout.startswith("REPOSITORY")


def test_rootless_network_modes(user: User, built: dict[str, str]) -> None:
    """Bridge networks are refused in one line naming why; --network host is the host's."""
    assert user.pybuild("run", "--rm", "--network", "mynet", "app",
                        check=False).stderr.strip() == "error: network mynet not found"
    user.pybuild("network", "create", "mynet")
    res = user.pybuild("run", "--rm", "--network", "mynet", "app", check=False)
    assert res.returncode != 0
    assert res.stderr.strip() == ("error: network 'mynet': bridge networks need root "
                                  "(netavark); rootless containers use --network slirp4netns "
                                  "(the default), host or none")
    host_ifaces = sorted(p.name for p in Path("/sys/class/net").iterdir())
    res = user.pybuild("run", "--rm", "--network", "host", "app", "ls", "/sys/class/net")
    assert sorted(res.stdout.split()) == host_ifaces


def _processes(binary: str, needle: str) -> list[int]:
    """pids of `binary` processes whose command line names `needle` (a path)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(binary.encode()) and any(needle.encode() in a for a in argv):
            out.append(int(d.name))
    return out


def _slirp_processes(needle: str) -> list[int]:
    return _processes("slirp4netns", needle)


def test_rootless_publish_port(user: User, built: dict[str, str]) -> None:
    """`run -p 127.0.0.1:PORT:80` as the user: slirp4netns forwards the host's loopback
    into the container's own namespace; the container cannot reach the host's loopback
    through the gateway; stop/rm leave no process, namespace or port behind."""
    if shutil.which("slirp4netns") is None:
        pytest.skip("slirp4netns not installed")
    port = free_port()
    name = f"rl-httpd-{worker_slot()}"
    cid = user.pybuild("run", "-d", "--name", name, "--user", "0", "-p", f"127.0.0.1:{port}:80",
                       "-p", "127.0.0.1::80", "app", "httpd", "-f", "-p", "80", "-h",
                       "/srv/app").stdout.strip()
    netns = user.runtime_dir / "pybuild" / "netns" / f"pybuild-{cid[:12]}"
    try:
        assert netns.exists() and len(_slirp_processes(str(netns))) == 1
        ps = user.pybuild("ps").stdout
        line = next(ln for ln in ps.splitlines() if name in ln)
        assert f"127.0.0.1:{port}->80/tcp" in line
        other = int(line.split("127.0.0.1:")[2].split("->")[0])  # the port picked for ::80
        for p in (port, other):
            with urllib.request.urlopen(f"http://127.0.0.1:{p}/hello", timeout=10) as r:
                assert r.read() == b"hi\n"
        # the same host port again: refused, and its helper does not linger
        res = user.pybuild("run", "-d", "-p", f"127.0.0.1:{port}:80", "app", "sleep", "30",
                           check=False)
        assert res.returncode != 0
        assert f"Bind for 127.0.0.1:{port} failed: port is already allocated" in res.stderr
        assert "Traceback" not in res.stderr
        # a host port below 1024 (ip_unprivileged_port_start): the kernel's refusal, named
        if Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() == "1024":
            res = user.pybuild("run", "--rm", "-p", "127.0.0.1:80:80", "app", "true",
                               check=False)
            assert res.stderr.strip() == ("error: cannot publish 127.0.0.1:80/tcp: "
                                          "Permission denied"), res.stderr
        assert sorted(p.name for p in netns.parent.iterdir()) == sorted(
            [netns.name, netns.name + ".sock", netns.name + ".log"])
        # inside: slirp4netns's address and DNS; the host's loopback is not reachable
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            hp = listener.getsockname()[1]
            res = user.pybuild("run", "--rm", "--user", "0", "app", "sh", "-c",
                               "cat /etc/resolv.conf; ip -4 -o addr show tap0; "
                               f"wget -q -T 3 -O- http://10.0.2.2:{hp}/ && echo REACHED "
                               "|| echo REFUSED", check=False)
            listener.settimeout(0)
            with pytest.raises(BlockingIOError):
                listener.accept()
        assert "nameserver 10.0.2.3" in res.stdout
        assert "inet 10.0.2.100/24" in res.stdout
        assert res.stdout.strip().endswith("REFUSED")
        user.pybuild("stop", "-t", "1", name)  # httpd as pid 1 ignores SIGTERM: killed
        assert _slirp_processes(str(netns.parent)) == []
        assert list(netns.parent.iterdir()) == []
    finally:
        user.pybuild("rm", "-f", name, check=False)
    assert name not in user.pybuild("ps", "-a").stdout
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of our GETs
        s.bind(("127.0.0.1", port))  # nothing listens there any more


# ----------------------------------------------------------------- root-free, networking


def test_rootless_default_network_is_slirp4netns() -> None:
    from pybuild import network as netmod

    assert containers._rootless_network(netmod.DEFAULT_NETWORK) == "slirp4netns"
    for mode in ("host", "none", "container:abc"):
        assert containers._rootless_network(mode) == mode
    with pytest.raises(PybuildError, match="bridge networks need root"):
        containers._rootless_network("mynet")


def test_slirp_missing_pieces_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _slirp.available().startswith("slirp4netns not found: install the slirp4netns "
                                         "package")
    fake = tmp_path / "slirp4netns"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setattr(_slirp, "TUN", str(tmp_path / "no-tun"))
    assert "is not readable and writable by this user" in _slirp.available()


def test_rootless_fuse_overlayfs_fallback(user: User, context: Path,
                                          built: dict[str, str]) -> None:
    """PYBUILD_FUSE_OVERLAYFS=1 forces the fallback a kernel without unprivileged overlayfs
    takes: said once, the same image digest as the root build, and `run` works on it."""
    if shutil.which("fuse-overlayfs") is None:
        pytest.skip("fuse-overlayfs not installed")
    data = user.home / "fuse-data"
    env = {"XDG_DATA_HOME": str(data), rootless.ENV_FUSE: "1"}
    res = user.pybuild("build", "--progress", "quiet", "-t", "app", str(context), **env)
    assert _digest(res) == built["root"]
    note = "rootless: using fuse-overlayfs: PYBUILD_FUSE_OVERLAYFS=1\n"
    assert res.stderr.count("fuse-overlayfs") == 1 and note in res.stderr, res.stderr
    # the container's rootfs too: owners, and the lowers' whiteout and opaque directory
    res = user.pybuild("run", "--rm", "--network", "none", "app", "sh", "-c",
                       "id; ls /old; ls /old/d", **env)
    assert res.stdout.split("\n") == ["uid=1000(app) gid=1000(app)", "d", "n", ""]
    assert _processes("fuse-overlayfs", str(data)) == []


def test_normalize_fuse_upper(tmp_path: Path) -> None:
    """fuse-overlayfs's opaque marks stay only where the kernel puts them: on a directory
    created where a lower has something at that path."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "x").mkdir(parents=True)
    (lower / "x" / "f").write_text("old")
    (lower / "keep" / "sub").mkdir(parents=True)
    for d in ("x", "new", "keep/sub"):
        (upper / d).mkdir(parents=True)
        try:
            os.setxattr(upper / d, rootless.FUSE_OPAQUE_XATTR, b"y")
        except OSError as e:
            pytest.skip(f"no user xattrs on {tmp_path}: {e}")
        (upper / d / ".wh..wh..opq").write_text("")
        if d == "new":
            (upper / d / "file").write_text("n")
        os.utime(upper / d, (1000, 1000))
    rootless.normalize_fuse_upper(upper, [lower])
    for d, opaque in (("x", True), ("new", False), ("keep/sub", True)):
        assert sorted(p.name for p in (upper / d).iterdir()) == (["file"] if d == "new" else [])
        assert os.listxattr(upper / d) == (["user.overlay.opaque"] if opaque else [])
        assert (upper / d).stat().st_mtime == 1000


def test_fuse_fallback_decision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """The kernel's refusal (EPERM, EINVAL, ENODEV) switches to fuse-overlayfs once, said
    once; other errors are not a reason; without fuse-overlayfs the missing piece is named."""
    import errno

    monkeypatch.setattr(rootless, "inside", lambda: True)
    monkeypatch.setattr(rootless, "_fuse_reason", None)
    monkeypatch.delenv(rootless.ENV_FUSE, raising=False)
    assert not rootless.fuse_overlay_wanted()
    assert not rootless.fuse_overlay_fallback(errno.ENOSPC)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(rootless.RootlessError, match="fuse-overlayfs is not installed"):
        rootless.fuse_overlay_fallback(errno.EPERM)
    fake = tmp_path / "fuse-overlayfs"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert rootless.fuse_overlay_fallback(errno.EPERM)
    assert rootless.fuse_overlay_fallback(errno.EINVAL)
    assert rootless.fuse_overlay_wanted()
    assert capsys.readouterr().err == ("rootless: using fuse-overlayfs: the kernel refused "
                                       "overlayfs in the user namespace (Operation not "
                                       "permitted)\n")
