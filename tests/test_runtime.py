"""pybuild.runtime: the generated spec, and real containers through runc on a busybox rootfs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import sys
import threading
from pathlib import Path

import pytest

from pybuild import runtime
from pybuild.errors import NeedsRootError, PybuildError
from pybuild.runtime import Mount, RunSpec

BUSYBOX = Path("/bin/busybox")
APPLETS = ["sh", "echo", "cat", "id", "ls", "hostname", "ip", "ifconfig", "mount", "sleep",
           "grep", "touch", "test", "pwd", "env", "readlink"]
REPO = Path(__file__).resolve().parents[1]

needs_runc = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None or not BUSYBOX.exists(),
    reason="needs root, runc and a static /bin/busybox")


def make_rootfs(path: Path) -> Path:
    """A busybox rootfs with only /bin: no /etc, /proc, /dev, /sys (the runtime adds them)."""
    (path / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for applet in APPLETS:
        (path / "bin" / applet).symlink_to("busybox")
    return path


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


def sh(rootfs: Path, script: str, **kw: object) -> RunSpec:
    return RunSpec(rootfs=rootfs, args=["/bin/sh", "-c", script], env=["PATH=/bin"], **kw)


def run_capture(spec: RunSpec, runtime_name: str | None = None) -> tuple[int, str]:
    chunks: list[bytes] = []
    status = runtime.run(spec, chunks.append, runtime=runtime_name)
    return status, b"".join(chunks).decode()


def runc_list() -> list[dict]:
    listing = subprocess.run(["runc", "--root", str(runtime.state_root("runc")), "list", "-f", "json"],
                             capture_output=True, check=False).stdout
    return json.loads(listing or b"null") or []


def leftovers(rootfs: Path) -> list[str]:
    """Containers, bundles or processes still tied to `rootfs`: must be none after run()."""
    found = []
    root = str(rootfs.resolve())
    for c in runc_list():
        if c.get("rootfs") == root:
            found.append(f"container {c['id']}")
    if runtime.BUNDLES_DIR.is_dir():
        for bundle in runtime.BUNDLES_DIR.iterdir():
            try:
                cfg = json.loads((bundle / "config.json").read_text())
            except OSError:
                continue
            if cfg["root"]["path"] == root:
                found.append(f"bundle {bundle}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") == root:
                found.append(f"process {pid}")
        except OSError:
            continue
    return found


# --- the spec, no root needed -------------------------------------------------------------

def test_spec_namespaces_follow_network(tmp_path: Path) -> None:
    host = runtime.build_spec(RunSpec(rootfs=tmp_path, args=["true"], env=[]))
    none = runtime.build_spec(RunSpec(rootfs=tmp_path, args=["true"], env=[], network="none"))
    assert {n["type"] for n in host["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount"}
    assert {n["type"] for n in none["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "network"}
    assert "user" not in {n["type"] for n in none["linux"]["namespaces"]}


def test_spec_process_and_security(tmp_path: Path) -> None:
    spec = runtime.build_spec(RunSpec(rootfs=tmp_path, args=["a", "b"], env=["X=1"], cwd="/w",
                                      uid=5, gid=6, additional_gids=[7], hostname="h"))
    proc = spec["process"]
    assert proc["terminal"] is False
    assert proc["args"] == ["a", "b"] and proc["env"] == ["X=1"] and proc["cwd"] == "/w"
    assert proc["user"] == {"uid": 5, "gid": 6, "additionalGids": [7]}
    assert len(proc["capabilities"]["bounding"]) == 14
    assert "CAP_SYS_ADMIN" not in proc["capabilities"]["effective"]
    assert "ambient" not in proc["capabilities"] and "inheritable" not in proc["capabilities"]
    assert proc["rlimits"][0]["type"] == "RLIMIT_NOFILE"
    assert "seccomp" not in spec["linux"]
    assert spec["hostname"] == "h"
    assert spec["root"] == {"path": str(tmp_path.resolve()), "readonly": False}
    assert "cgroupsPath" not in spec["linux"]  # the caller adds it with the container id


def test_spec_mounts_defaults_then_extra_in_order(tmp_path: Path) -> None:
    extra = [Mount("/b", "tmpfs", "tmpfs", []), Mount("/a", "bind", "/x", ["rbind", "ro"])]
    spec = runtime.build_spec(RunSpec(rootfs=tmp_path, args=["true"], env=[], mounts=extra))
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                     "/sys/fs/cgroup", "/b", "/a"]
    assert spec["mounts"][-1] == {"destination": "/a", "type": "bind", "source": "/x",
                                  "options": ["rbind", "ro"]}
    shm = spec["mounts"][3]
    assert "size=65536k" in shm["options"]


@pytest.mark.parametrize("bad", [
    {"args": []}, {"cwd": "relative"}, {"network": "bridge"},
    {"mounts": [Mount("rel", "tmpfs", "tmpfs", [])]},
])
def test_spec_rejects_bad_input(tmp_path: Path, bad: dict) -> None:
    fields = {"rootfs": tmp_path, "args": ["true"], "env": []} | bad
    with pytest.raises(PybuildError):
        runtime.build_spec(RunSpec(**fields))


def test_not_root_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NeedsRootError, match="root"):
        runtime.run(RunSpec(rootfs=tmp_path, args=["true"], env=[]), lambda b: None)


def test_missing_runtime_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PYBUILD_RUNTIME", raising=False)
    spec = RunSpec(rootfs=tmp_path, args=["true"], env=[])
    with pytest.raises(PybuildError, match=r"^runc not found: install the runc package$"):
        runtime.run(spec, lambda b: None)
    monkeypatch.setenv("PYBUILD_RUNTIME", "nosuchruntime")
    with pytest.raises(PybuildError, match="nosuchruntime not found"):
        runtime.run(spec, lambda b: None)


def test_mount_stubs_follow_symlinks_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "real").mkdir(parents=True)
    (root / "etc").symlink_to("/real")  # absolute: must resolve inside root, not on the host
    assert runtime.mount_stubs(root, ["/etc/hosts", "/x/y/z", "/real"]) == \
        ["/x/y/z", "/real/hosts", "/x/y", "/x"]


def test_remove_mount_stubs_keeps_content_and_parent_times(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").touch()
    (root / "etc" / "filled").write_text("data")
    (root / "x" / "y").mkdir(parents=True)
    os.utime(root / "etc", (1000, 2000))
    runtime.remove_mount_stubs(root, ["/etc/hosts", "/etc/filled", "/x/y", "/x"])
    assert not (root / "etc" / "hosts").exists()
    assert (root / "x" / "y").is_dir()  # directories made as mount points stay (BuildKit 0.8)
    assert (root / "etc" / "filled").read_text() == "data"
    assert os.stat(root / "etc").st_mtime == 2000


# --- real containers ----------------------------------------------------------------------

@needs_runc
@pytest.mark.parametrize("code", [0, 1, 42])
def test_exit_status_propagated(rootfs: Path, code: int) -> None:
    assert run_capture(sh(rootfs, f"exit {code}"))[0] == code
    assert leftovers(rootfs) == []


@needs_runc
def test_missing_executable_reported_plainly(rootfs: Path) -> None:
    status, out = run_capture(RunSpec(rootfs=rootfs, args=["nonexistent"], env=["PATH=/bin"]))
    assert status != 0
    assert out.startswith("runc run failed: ") and 'exec: "nonexistent"' in out
    assert "level=" not in out
    assert leftovers(rootfs) == []


@needs_runc
def test_killed_process_reports_128_plus_signal(rootfs: Path) -> None:
    """Killed from outside (pid 1 of a PID namespace ignores its own SIGKILL)."""
    def kill(chunk: bytes) -> None:
        # `runc list` skips a container whose state another process is rewriting at that
        # moment (parallel tests): look again
        cid = None
        for _ in range(50):
            cid = next((c["id"] for c in runc_list() if c["rootfs"] == str(rootfs.resolve())), None)
            if cid is not None:
                break
            time.sleep(0.1)
        assert cid is not None
        subprocess.run(["runc", "--root", str(runtime.state_root("runc")), "kill", cid, "KILL"],
                       check=True)

    assert runtime.run(sh(rootfs, "echo started; sleep 60"), kill) == 128 + 9
    assert leftovers(rootfs) == []


@needs_runc
def test_output_streamed_before_exit(rootfs: Path, tmp_path: Path) -> None:
    """The step waits for a file we create only once its first line reached us."""
    shared = tmp_path / "shared"
    shared.mkdir()
    chunks: list[bytes] = []

    def on_output(chunk: bytes) -> None:
        chunks.append(chunk)
        if b"first" in chunk:
            (shared / "go").touch()

    script = ("echo first; i=0; while [ ! -e /shared/go ]; do i=$((i+1)); "
              "[ $i -gt 600 ] && exit 3; sleep 0.1; done; echo second >&2")
    spec = sh(rootfs, script, mounts=[Mount("/shared", "bind", str(shared), ["rbind"])])
    assert runtime.run(spec, on_output) == 0
    assert b"".join(chunks) == b"first\nsecond\n"


@needs_runc
def test_env_and_missing_cwd_created(rootfs: Path) -> None:
    spec = RunSpec(rootfs=rootfs, args=["/bin/sh", "-c", "pwd; echo $FOO"],
                   env=["PATH=/bin", "FOO=bar baz"], cwd="/work/deep")
    assert run_capture(spec) == (0, "/work/deep\nbar baz\n")
    st = os.stat(rootfs / "work" / "deep")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o755, 0, 0)


@needs_runc
def test_cwd_that_is_a_file_is_a_clear_error(rootfs: Path) -> None:
    (rootfs / "f").write_text("x")
    with pytest.raises(PybuildError, match="not a directory"):
        run_capture(sh(rootfs, "true", cwd="/f"))


@needs_runc
def test_user_groups_and_capabilities(rootfs: Path) -> None:
    status, out = run_capture(sh(rootfs, "id; grep CapEff /proc/self/status",
                                 uid=1000, gid=1001, additional_gids=[10, 20]))
    assert status == 0
    ident, caps = out.splitlines()
    assert ident.startswith("uid=1000 gid=1001 groups=")
    assert set(ident.split("groups=")[1].split(",")) == {"10", "20"}
    assert caps.split() == ["CapEff:", "0000000000000000"]  # a non-root user keeps no caps
    status, out = run_capture(sh(rootfs, "id; grep CapEff /proc/self/status"))
    assert out.splitlines() == ["uid=0 gid=0", "CapEff:\t00000000a80425fb"]  # Docker's set


@needs_runc
def test_network_none_has_only_lo_up(rootfs: Path) -> None:
    status, out = run_capture(sh(rootfs, "ls /sys/class/net; echo ---; ip link show lo",
                                 network="none"))
    assert status == 0
    names, lo = out.split("---\n")
    assert names.split() == ["lo"]
    assert "<LOOPBACK,UP" in lo


@needs_runc
def test_host_network_sees_host_interfaces(rootfs: Path) -> None:
    status, out = run_capture(sh(rootfs, "ls /sys/class/net"))
    assert status == 0
    assert sorted(out.split()) == sorted(os.listdir("/sys/class/net"))


@needs_runc
def test_proc_mounted_and_pid_1(rootfs: Path) -> None:
    status, out = run_capture(sh(rootfs, "echo $$; ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline; echo"))
    assert status == 0
    pid, count, cmdline = out.split("\n", 2)
    assert pid == "1"
    assert int(count) < 10  # a fresh PID namespace: sh, ls, grep, not the host's processes
    assert cmdline.startswith("/bin/sh\0-c\0echo $$")


@needs_runc
def test_hostname(rootfs: Path) -> None:
    assert run_capture(sh(rootfs, "hostname"))[1] == "buildkitsandbox\n"
    assert run_capture(sh(rootfs, "hostname", hostname="other"))[1] == "other\n"


@needs_runc
def test_ro_bind_refuses_writes_and_tmpfs_works(rootfs: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("hello\n")
    mounts = [Mount("/data", "bind", str(data), ["rbind", "ro"]),
              Mount("/scratch", "tmpfs", "tmpfs", ["nosuid", "nodev", "size=1m"])]
    script = ("cat /data/f; (echo x > /data/g) 2>/dev/null && echo WROTE || echo REFUSED; "
              "echo y > /scratch/t && cat /scratch/t")
    status, out = run_capture(sh(rootfs, script, mounts=mounts))
    assert status == 0
    assert out.splitlines()[0] == "hello" and "REFUSED" in out and out.endswith("y\n")
    assert sorted(os.listdir(data)) == ["f"]
    # as in Docker 20.10's BuildKit, mount-point directories stay (empty) in the layer
    assert os.listdir(rootfs / "data") == [] and os.listdir(rootfs / "scratch") == []


@needs_runc
def test_readonly_rootfs(rootfs: Path) -> None:
    status, out = run_capture(sh(rootfs, "touch /x && echo WROTE || echo REFUSED",
                                 readonly_rootfs=True))
    assert "REFUSED" in out and not (rootfs / "x").exists()


@needs_runc
def test_host_mounts_visible_and_stubs_reported(rootfs: Path) -> None:
    mounts, stubs = runtime.host_mounts(rootfs)
    assert stubs == ["/etc/hosts", "/etc/resolv.conf", "/etc"]
    assert [m.destination for m in mounts] == ["/etc/resolv.conf", "/etc/hosts"]
    script = ("cat /etc/resolv.conf; echo ---; cat /etc/hosts; "
              "(echo x >> /etc/hosts) 2>/dev/null || echo REFUSED")
    status, out = run_capture(sh(rootfs, script, mounts=mounts))
    resolv, hosts = out.split("---\n")
    assert resolv == Path("/etc/resolv.conf").read_text()
    assert hosts.startswith("127.0.0.1\tlocalhost buildkitsandbox\n") and "REFUSED" in hosts
    runtime.remove_mount_stubs(rootfs, stubs)
    assert os.listdir(rootfs / "etc") == []  # the file stubs go; the directory stays


@needs_runc
def test_host_mounts_over_existing_files_report_no_stub(rootfs: Path) -> None:
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "hosts").write_text("10.0.0.1 image\n")
    (rootfs / "etc" / "resolv.conf").write_text("")
    mounts, stubs = runtime.host_mounts(rootfs)
    assert stubs == []
    status, out = run_capture(sh(rootfs, "cat /etc/hosts", mounts=mounts))
    assert "buildkitsandbox" in out
    assert (rootfs / "etc" / "hosts").read_text() == "10.0.0.1 image\n"
    assert (rootfs / "etc" / "resolv.conf").exists()  # the image's own (empty) file stays


@needs_runc
def test_stub_parents_keep_their_times_unless_the_step_changed_them(rootfs: Path) -> None:
    for name in ("etc", "mnt"):
        (rootfs / name).mkdir()
        os.utime(rootfs / name, (1000, 2000))
    mounts = runtime.host_mounts(rootfs)[0] + [Mount("/mnt/cache", "tmpfs", "tmpfs", [])]
    assert run_capture(sh(rootfs, "echo x > /mnt/new", mounts=mounts))[0] == 0
    assert sorted(os.listdir(rootfs / "etc")) == [] and os.stat(rootfs / "etc").st_mtime == 2000
    assert sorted(os.listdir(rootfs / "mnt")) == ["cache", "new"]
    assert os.stat(rootfs / "mnt").st_mtime != 2000


@needs_runc
def test_keyboard_interrupt_kills_container(rootfs: Path) -> None:
    started = threading.Event()

    def interrupt() -> None:
        if started.wait(30):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        runtime.run(sh(rootfs, "echo started; sleep 60"), lambda chunk: started.set())
    assert leftovers(rootfs) == []


@needs_runc
def test_exception_in_output_handler_kills_flooding_container(rootfs: Path) -> None:
    """The step keeps writing into a pipe nobody reads any more: cleanup must not hang."""
    def fail(chunk: bytes) -> None:
        raise RuntimeError("renderer broke")

    with pytest.raises(RuntimeError, match="renderer broke"):
        runtime.run(sh(rootfs, "while true; do echo 0123456789abcdef0123456789abcdef; done"), fail)
    assert leftovers(rootfs) == []


CHILD = """
import sys
from pathlib import Path
from pybuild import runtime
spec = runtime.RunSpec(rootfs=Path(sys.argv[1]), args=["/bin/sh", "-c", "echo started; sleep 60"],
                       env=["PATH=/bin"])
def out(chunk):
    sys.stdout.buffer.write(chunk); sys.stdout.flush()
sys.exit(runtime.run(spec, out))
"""


def start_child(rootfs: Path) -> subprocess.Popen[bytes]:
    """A pybuild process running `sleep 60`, returned once the step has started."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(rootfs)], cwd=REPO,
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"started\n"
    return child


@needs_runc
def test_sigterm_kills_container(rootfs: Path) -> None:
    child = start_child(rootfs)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 128 + signal.SIGTERM
    assert leftovers(rootfs) == []


@needs_runc
def test_cleanup_stale_removes_only_dead_owners(rootfs: Path, tmp_path: Path) -> None:
    live_root = make_rootfs(tmp_path / "live")
    live = start_child(live_root)
    dead = start_child(rootfs)
    dead.kill()
    dead.wait()
    assert any(x.startswith("container") for x in leftovers(rootfs))  # left behind by SIGKILL
    runtime.cleanup_stale()
    assert leftovers(rootfs) == []
    assert any(x.startswith("container") for x in leftovers(live_root))  # still running
    live.send_signal(signal.SIGTERM)
    assert live.wait(timeout=60) == 128 + signal.SIGTERM
    assert leftovers(live_root) == []


@needs_runc
@pytest.mark.skipif(shutil.which("crun") is None, reason="crun not installed")
def test_crun_accepted(rootfs: Path) -> None:
    status, out = run_capture(sh(rootfs, "hostname; echo $$; exit 7"), runtime_name="crun")
    if status != 7 and "hybrid mode not supported" in out:
        pytest.skip(f"crun cannot run containers on this host's cgroup layout: {out.strip()}")
    assert leftovers(rootfs) == []
    assert (status, out) == (7, "buildkitsandbox\n1\n")
