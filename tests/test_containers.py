"""pybuild run / ps / logs / stop / rm: real containers through runc from busybox images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta, UTC
from pathlib import Path

import pytest

from container_fixtures import Cli, ps_rows, runc_ids, wait_for
from conftest import overlay_mounts
from pybuild import containers, image, runtime
from pybuild.snapshot import Snapshotter, chain_ids
from pybuild.store import Store
from pybuild.errors import PybuildError

# ----------------------------------------------------------------------------- pure rules
def test_process_args_follow_docker_rules() -> None:
    cfg = {"Entrypoint": ["/ep"], "Cmd": ["default"]}
    assert containers.process_args(cfg, [], None) == ["/ep", "default"]
    assert containers.process_args(cfg, ["x", "y"], None) == ["/ep", "x", "y"]
    assert containers.process_args(cfg, [], "/other") == ["/other"]
    assert containers.process_args(cfg, ["a"], "/other") == ["/other", "a"]
    assert containers.process_args(cfg, ["sh"], "") == ["sh"]
    assert containers.process_args({"Cmd": ["sh"]}, [], None) == ["sh"]
    with pytest.raises(PybuildError, match="No command specified"):
        containers.process_args(cfg, [], "")


def test_display_helpers() -> None:
    assert containers.human_duration(0.4) == "Less than a second"
    assert containers.human_duration(1) == "1 second"
    assert containers.human_duration(59) == "59 seconds"
    assert containers.human_duration(90) == "About a minute"
    assert containers.human_duration(3600) == "About an hour"
    assert containers.human_duration(5 * 3600) == "5 hours"
    assert containers.human_duration(3 * 86400) == "3 days"
    now = datetime(2024, 1, 1, tzinfo=UTC)
    c = containers.Container(id="a" * 64, name="n", image="i", image_id="sha256:x",
                             created=(now - timedelta(minutes=5)).isoformat(),
                             command=["sh", "-c", "echo hello world, a long one"],
                             status="exited", exit_code=3,
                             finished=(now - timedelta(seconds=30)).isoformat())
    assert containers.status_text(c, now) == "Exited (3) 30 seconds ago"
    assert containers.command_text(c) == '"sh -c echo hello wo…"'
    c.status, c.started = "running", (now - timedelta(minutes=2)).isoformat()
    assert containers.status_text(c, now) == "Up 2 minutes"


def test_signal_and_volume_parsing() -> None:
    assert containers.parse_signal("SIGUSR1") == signal.SIGUSR1
    assert containers.parse_signal("usr1") == signal.SIGUSR1
    assert containers.parse_signal("9") == signal.SIGKILL
    with pytest.raises(PybuildError, match="invalid signal: SIGNOPE"):
        containers.parse_signal("SIGNOPE")
    for bad, msg in [("data:/x", "named volumes"), ("/a:rel", "absolute"),
                     ("/a:/b:zz", "invalid mode: zz"), ("/a:/b:ro:x", "invalid volume")]:
        with pytest.raises(PybuildError, match=msg):
            containers._parse_volume(bad)


# ----------------------------------------------------------------------------- foreground
def test_foreground_streams_and_propagates_exit_code(cli: Cli) -> None:
    res = cli("run", "--name", "fg", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3",
              check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    rows = ps_rows(cli, "-a")
    assert [(r[1], r[2], r[4], r[5], r[6]) for r in rows] == [
        ("busybox", '"sh -c echo out; ech…"', rows[0][4], "", "fg")]
    assert rows[0][4].startswith("Exited (3) ")
    assert ps_rows(cli) == []  # not running
    assert sorted(cli("logs", "fg").stdout.splitlines()) == ["err", "out"]
    state = json.loads((cli.container_dirs()[0] / "state.json").read_text())
    assert state["status"] == "exited" and state["exit_code"] == 3 and state["name"] == "fg"


def test_missing_command_fails_like_docker(cli: Cli) -> None:
    res = cli("run", "--rm", "busybox", "nope", check=False)
    assert res.returncode == 127
    assert res.stderr == 'error: failed to start container: exec: "nope": executable file not ' \
                         "found in $PATH\n"
    assert res.stdout == ""
    assert cli.container_dirs() == []


def test_config_and_overrides(cli: Cli, tmp_path: Path) -> None:
    cli.build(tmp_path, "conf", "FROM busybox\nENV A=1 B=2\nWORKDIR /srv\nUSER app\n"
                                "ENTRYPOINT [\"echo\", \"ep\"]\nCMD [\"default\"]\n")
    assert cli("run", "--rm", "conf").stdout == "ep default\n"
    assert cli("run", "--rm", "conf", "x", "y").stdout == "ep x y\n"
    # --entrypoint replaces ENTRYPOINT and drops CMD: `env` gets no "default" argument.
    env = cli("run", "--rm", "--name", "envy", "-e", "B=3", "-e", "C=4", "--entrypoint", "env",
              "conf").stdout.splitlines()
    assert env[0] == "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env[1].startswith("HOSTNAME=") and len(env[1]) == len("HOSTNAME=") + 12
    assert {"A=1", "B=3", "C=4", "HOME=/home/app"} <= set(env)
    script = "id -u; id -G; pwd; hostname; echo $HOSTNAME"
    out = cli("run", "--name", "who", "--entrypoint", "sh", "conf", "-c", script).stdout.split("\n")
    assert out[:3] == ["1000", "1000 2000", "/srv"]
    assert out[3] == out[4]
    full_id = cli("ps", "-aq", "--no-trunc").stdout.split()[0]
    assert out[3] == full_id[:12]
    out = cli("run", "--rm", "-u", "0:0", "-w", "/new/dir", "--entrypoint", "sh", "conf", "-c",
              "id -u; pwd").stdout
    assert out == "0\n/new/dir\n"


def test_bind_and_anonymous_volumes(cli: Cli, tmp_path: Path) -> None:
    cli.build(tmp_path, "vol", "FROM busybox\nRUN mkdir /vol && echo seed > /vol/f && "
                               "chown 1000 /vol\nVOLUME /vol\n")
    host, ro = tmp_path / "host", tmp_path / "ro"
    ro.mkdir()
    (ro / "in").write_text("hello\n")
    res = cli("run", "--name", "vv", "-v", f"{host}:/data", "-v", f"{ro}:/ro:ro", "vol", "sh", "-c",
              "echo written > /data/x; cat /ro/in; touch /ro/y || echo refused; "
              "cat /vol/f; stat -c %u /vol; echo more > /vol/g", check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello\nrefused\nseed\n1000\n"
    assert (host / "x").read_text() == "written\n"
    assert not (ro / "y").exists()
    volumes = list(cli.container_dirs()[0].glob("volumes/*/g"))
    assert [p.read_text() for p in volumes] == ["more\n"]
    res = cli("run", "--rm", "-v", f"{host}:/d", "-v", f"{ro}:/d", "busybox", "true", check=False)
    assert (res.returncode, res.stderr) == (1, "error: Duplicate mount point: /d\n")


def test_rm_flag_leaves_nothing(cli: Cli) -> None:
    assert cli("run", "--rm", "busybox", "echo", "bye").stdout == "bye\n"
    assert cli.container_dirs() == []
    assert cli("ps", "-a").stdout.splitlines()[1:] == []


def test_ctrl_c_is_forwarded(cli: Cli) -> None:
    proc = subprocess.Popen(cli.argv("run", "busybox", "sh", "-c",
                                     "trap 'echo caught; exit 5' INT; echo ready; "
                                     "while true; do sleep 0.1; done"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, out, err) == (5, "caught\n", "")


def test_second_sigterm_kills_and_closed_stdout_ends_the_writer(cli: Cli) -> None:
    # sleep as PID 1 ignores the forwarded SIGTERM; the second one kills the container.
    proc = subprocess.Popen(cli.argv("run", "--rm", "busybox", "sh", "-c",
                                     "echo ready; exec sleep 300"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 137
    pipeline = subprocess.run(" ".join(f"'{a}'" for a in cli.argv("run", "--rm", "busybox", "yes"))
                              + " | head -n 2", shell=True, capture_output=True, text=True,
                              timeout=60)
    assert pipeline.stdout == "y\ny\n"
    assert cli.container_dirs() == []


def test_network_none_has_only_loopback(cli: Cli) -> None:
    out = cli("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]


# ----------------------------------------------------------------------------- detached
def test_detached_container_outlives_its_starter(cli: Cli, tmp_path: Path) -> None:
    port = 18080
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("served from a container\n")
    res = cli("run", "-d", "--name", "web", "--network", "host", "-v", f"{www}:/www:ro",
              "busybox", "sh", "-c",
              f"echo starting; exec httpd -f -v -p 127.0.0.1:{port} -h /www")
    cid = res.stdout.strip()
    assert len(cid) == 64 and res.stderr == ""

    def answers() -> bool:  # the host network here is the test's namespace
        return cli.netns.fetch(f"http://127.0.0.1:{port}/") == "served from a container\n"

    wait_for(answers, "httpd to answer")
    rows = ps_rows(cli)
    assert [(r[0], r[1], r[6]) for r in rows] == [(cid[:12], "busybox", "web")]
    assert rows[0][4].startswith("Up ")
    assert cli("logs", "web").stdout.startswith("starting\n")
    wait_for(lambda: "response:200" in cli("logs", cid[:8]).stdout, "the request in the log")
    state = json.loads((tmp_path / "store/containers" / cid / "state.json").read_text())
    assert state["status"] == "running" and state["pid"] > 0 and state["command"][0] == "sh"
    assert os.path.exists(f"/proc/{state['pid']}")
    assert containers.RUNC_ID_PREFIX + cid in runc_ids()
    # What a build does first must not reap a detached container or its rootfs mount.
    runtime.cleanup_stale()
    Snapshotter(Store(cli.root)).cleanup_stale()
    assert answers() and [m for m in overlay_mounts() if cid in m] != []
    assert containers.chain_ids_in_use(Store(cli.root)) == set(
        chain_ids(image.load(Store(cli.root), "busybox").diff_ids))
    res = cli("run", "-d", "--name", "web", "busybox", "true", check=False)
    assert res.returncode == 1
    assert f'container name "/web" is already in use by container "{cid}"' in res.stderr
    res = cli("rm", "web", check=False)
    assert res.returncode == 1 and "You cannot remove a running container" in res.stderr
    assert cli("rm", "-f", "web").stdout == "web\n"
    assert not answers()
    assert cli.container_dirs() == []
    assert containers.RUNC_ID_PREFIX + cid not in runc_ids()
    assert not os.path.exists(f"/proc/{state['pid']}")


def test_logs_follow_until_exit(cli: Cli) -> None:
    cid = cli("run", "-d", "busybox", "sh", "-c",
              "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo done >&2; exit 4").stdout.strip()
    assert cli("logs", "-f", cid).stdout == "line 1\nline 2\nline 3\ndone\n"
    wait_for(lambda: "Exited (4)" in cli("ps", "-a").stdout, "the exit to be recorded")


def test_stop_sends_stopsignal(cli: Cli, tmp_path: Path) -> None:
    cli.build(tmp_path, "graceful",
              "FROM busybox\nSTOPSIGNAL SIGUSR1\n"
              "CMD [\"sh\", \"-c\", \"trap 'echo usr1 > /out/sig; exit 0' USR1; "
              "trap 'echo term > /out/sig; exit 1' TERM; echo ready; "
              "while true; do sleep 0.1; done\"]\n")
    out = tmp_path / "out"
    cli("run", "-d", "--name", "gg", "-v", f"{out}:/out", "graceful")
    wait_for(lambda: cli("logs", "gg").stdout == "ready\n", "the trap to be set")
    assert cli("stop", "gg").stdout == "gg\n"
    assert (out / "sig").read_text() == "usr1\n"
    rows = ps_rows(cli, "-a")
    assert rows[0][4].startswith("Exited (0) ")


def test_stop_kills_after_timeout(cli: Cli) -> None:
    # sleep as PID 1 has no handler: the kernel drops SIGTERM, so only SIGKILL stops it.
    cid = cli("run", "-d", "busybox", "sleep", "300").stdout.strip()
    assert cli("stop", "-t", "1", cid[:12]).stdout == f"{cid[:12]}\n"
    state = json.loads((cli.root / "containers" / cid / "state.json").read_text())
    assert (state["status"], state["exit_code"]) == ("exited", 137)
    assert containers.RUNC_ID_PREFIX + cid not in runc_ids()
    assert cli("stop", cid).stdout == f"{cid}\n"  # stopping a stopped one is fine
    assert cli("rm", cid).stdout == f"{cid}\n"


def test_unknown_containers_and_bad_input(cli: Cli) -> None:
    for cmd in (["logs", "ghost"], ["stop", "ghost"], ["rm", "ghost"]):
        res = cli(*cmd, check=False)
        assert (res.returncode, res.stderr) == (1, "error: No such container: ghost\n")
    res = cli("run", "-w", "rel", "busybox", "true", check=False)
    assert res.stderr == "error: the working directory 'rel' is invalid, it needs to be an absolute path\n"
    res = cli("run", "--name", "bad name", "busybox", "true", check=False)
    assert res.returncode == 1 and res.stderr.startswith("error: Invalid container name (bad name)")
    res = cli("run", "-u", "nobody2", "busybox", "true", check=False)
    assert res.stderr == "error: unable to find user nobody2: no matching entries in passwd file\n"
    res = cli("run", "nosuchimage", check=False)
    assert res.returncode == 1 and "No such image" in res.stderr
    assert cli.container_dirs() == []
