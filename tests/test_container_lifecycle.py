"""Limits through cgroups, OOM kills, stats, HEALTHCHECK, restart policies, exec, start,
restart, wait, kill: real runc, real cgroups, checked in the cgroup files themselves."""

from __future__ import annotations

import json
import shlex
import subprocess
import time

import pytest

from container_fixtures import Cli, cgroup_file, ps_rows, wait_for
from pybuild import health, limits, restart
from pybuild.errors import PybuildError


# ----------------------------------------------------------------------------- pure rules
def test_limit_parsing_follows_docker() -> None:
    assert limits.parse_bytes("256m", "--memory") == 256 * 1024 ** 2
    assert limits.parse_bytes("1g", "--memory") == 1024 ** 3
    assert limits.parse_bytes("1.5k", "--memory") == 1536
    assert limits.parse_bytes("100", "--memory") == 100
    lim, warnings = limits.make(memory="64m", memory_swap=None, cpus="0.5", cpu_shares=1,
                                pids_limit=-1)
    assert (lim.memory, lim.nano_cpus, lim.cpu_shares, lim.pids_limit) == (64 << 20, 500_000_000, 2, 0)
    assert warnings == ["Changing requested CPUShares of 1 to minimum allowed of 2"]
    res = limits.oci_resources(lim)
    assert res["cpu"] == {"shares": 2, "period": 100_000, "quota": 50_000}
    assert res["memory"]["limit"] == 64 << 20
    for kwargs, msg in [({"memory": "1m"}, "Minimum memory limit allowed is 6MB"),
                        ({"memory": "lots"}, "invalid size"),
                        ({"memory_swap": "1g"}, "always set the Memory limit"),
                        ({"memory": "64m", "memory_swap": "32m"}, "should be larger than memory"),
                        ({"cpus": "0.001"}, "Range of CPUs is from 0.01"),
                        ({"cpus": "512"}, "Range of CPUs is from 0.01"),
                        ({"cpus": "half"}, "rational number")]:
        args = {"memory": None, "memory_swap": None, "cpus": None, "cpu_shares": None,
                "pids_limit": None, **kwargs}
        with pytest.raises(PybuildError, match=msg):
            limits.make(**args)


def test_restart_policy_and_backoff() -> None:
    assert str(restart.parse("on-failure:3")) == "on-failure:3"
    for bad, msg in [("sometimes", "invalid restart policy"), ("always:3", "maximum retry"),
                     ("on-failure:x", "must be an integer")]:
        with pytest.raises(PybuildError, match=msg):
            restart.parse(bad)
    p = restart.parse("on-failure:2")
    assert [restart.should_restart(p, code, n, False) for code, n in
            [(1, 0), (1, 1), (1, 2), (0, 0)]] == [True, True, False, False]
    assert restart.should_restart(restart.parse("always"), 0, 99, False)
    assert not restart.should_restart(restart.parse("always"), 1, 0, True)  # stopped by hand
    delays = [restart.FIRST_DELAY]
    for _ in range(12):
        delays.append(restart.next_delay(delays[-1], 0.5))
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and delays[-1] == 60.0
    assert restart.next_delay(60.0, 10.0) == 0.1  # a run of 10 s resets the backoff


def test_health_state_machine_follows_docker() -> None:
    cfg = health.HealthConfig(test=["CMD-SHELL", "true"], retries=2, start_period=5_000_000_000)
    s = health.HealthState()

    def probe(state: health.HealthState, code: int, since: float) -> health.HealthState:
        return health.record(state, cfg, exit_code=code, output="x" * 5000, start="a", end="b",
                             since_start=since)

    s = probe(s, 1, 1.0)  # in the start period: does not count
    assert (s.status, s.failing_streak) == ("starting", 0)
    s = probe(s, 1, 6.0)
    s = probe(s, 1, 7.0)
    assert (s.status, s.failing_streak) == ("unhealthy", 2)
    s = probe(s, 0, 8.0)
    assert (s.status, s.failing_streak) == ("healthy", 0)
    for _ in range(5):
        s = probe(s, 0, 9.0)
    assert len(s.log) == 5 and len(str(s.log[0]["Output"])) == 4096
    assert health.probe_argv(["CMD-SHELL", "curl -f x"]) == ["/bin/sh", "-c", "curl -f x"]
    assert health.probe_argv(["CMD", "ls", "-l"]) == ["ls", "-l"]
    assert health.effective({"Test": ["NONE"]}, cmd=None, interval=None, timeout=None,
                            start_period=None, retries=None, disabled=False) is None


# ----------------------------------------------------------------------------- cgroups
def test_limits_reach_the_cgroup_and_stats_reads_them(cli: Cli) -> None:
    cid = cli("run", "-d", "--name", "lim", "--memory", "64m", "--memory-swap", "96m",
              "--cpus", "0.5", "--cpu-shares", "512", "--pids-limit", "50", "busybox",
              "sleep", "300").stdout.strip()
    assert cgroup_file(cid, "memory", "memory.limit_in_bytes", "memory.max") == str(64 << 20)
    if limits.is_v2():
        assert cgroup_file(cid, "memory", "", "memory.swap.max") == str(32 << 20)
        assert cgroup_file(cid, "cpu", "", "cpu.max") == "50000 100000"
    else:
        assert cgroup_file(cid, "memory", "memory.memsw.limit_in_bytes", "") == str(96 << 20)
        assert cgroup_file(cid, "cpu", "cpu.cfs_quota_us", "") == "50000"
        assert cgroup_file(cid, "cpu", "cpu.cfs_period_us", "") == "100000"
        assert cgroup_file(cid, "cpu", "cpu.shares", "") == "512"
    assert cgroup_file(cid, "pids", "pids.max", "pids.max") == "50"
    host = cli.inspect("lim")["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["NanoCpus"], host["PidsLimit"]) == \
        (64 << 20, 96 << 20, 500_000_000, 50)
    lines = cli("stats", "--no-stream").stdout.splitlines()
    assert lines[0].split() == ["CONTAINER", "ID", "NAME", "CPU", "%", "MEM", "USAGE", "/",
                                "LIMIT", "MEM", "%", "NET", "I/O", "PIDS"]
    row = lines[1].split()
    assert row[:2] == [cid[:12], "lim"] and row[2].endswith("%")
    assert row[5:7] == ["64.00MiB", row[6]] and row[-1] == "1"
    # the pids limit holds: 60 more processes cannot all start
    out = cli("exec", "lim", "sh", "-c", "for i in $(seq 60); do sleep 5 & done 2>&1 | "
              "grep -c -i 'resource\\|fork' ; true").stdout
    assert int(out.strip() or 0) > 0


def test_oom_kill_shows_137_and_oomkilled(cli: Cli) -> None:
    res = cli("run", "--name", "hog", "--memory", "8m", "--memory-swap", "8m", "busybox", "sh", "-c",
              "x=a; while true; do x=$x$x; done", check=False)
    assert res.returncode == 137
    state = cli.inspect("hog")["State"]
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 137, True)
    assert ps_rows(cli, "-a")[0][4].startswith("Exited (137) ")
    cli("run", "--name", "fine", "--memory", "8m", "busybox", "true")
    assert cli.inspect("fine")["State"]["OOMKilled"] is False


def test_bad_limits_make_nothing(cli: Cli) -> None:
    for flags, msg in [(["--memory", "4m"], "Minimum memory limit allowed is 6MB"),
                       (["--cpus", "64"], "Range of CPUs is from 0.01 to"),
                       (["--restart", "always", "--rm"], "Conflicting options: --restart and --rm"),
                       (["--restart", "maybe"], "invalid restart policy"),
                       (["--health-interval", "5"], "missing unit in duration")]:
        res = cli("run", *flags, "busybox", "true", check=False)
        assert res.returncode == 1 and res.stderr.startswith("error: ") and msg in res.stderr, res.stderr
        assert len(res.stderr.splitlines()) == 1
    assert cli.container_dirs() == []


# ----------------------------------------------------------------------------- health
def test_healthcheck_goes_starting_healthy_unhealthy(cli: Cli, tmp_path) -> None:
    cli.build(tmp_path, "checked", "FROM busybox\nHEALTHCHECK --interval=300ms --retries=2 "
                                   "--start-period=60s CMD test -e /tmp/ok && echo fine\n")
    cli("run", "-d", "--name", "hc", "checked", "sleep", "300")
    time.sleep(1)  # failing probes within the start period: still starting
    assert ps_rows(cli)[0][4].endswith("(health: starting)")
    h = cli.inspect("hc")["State"]["Health"]
    assert h["Status"] == "starting" and h["FailingStreak"] == 0 and h["Log"][-1]["ExitCode"] == 1
    cli("exec", "hc", "touch", "/tmp/ok")
    wait_for(lambda: ps_rows(cli)[0][4].endswith("(healthy)"), "healthy")
    h = cli.inspect("hc")["State"]["Health"]
    assert h["Status"] == "healthy" and h["Log"][-1]["Output"] == "fine\n"
    assert h["Log"][-1]["ExitCode"] == 0
    cli("exec", "hc", "rm", "/tmp/ok")
    wait_for(lambda: ps_rows(cli)[0][4].endswith("(unhealthy)"), "unhealthy")
    h = cli.inspect("hc")["State"]["Health"]
    assert h["FailingStreak"] >= 2 and h["Log"][-1]["ExitCode"] == 1
    assert cli.inspect("hc")["Config"]["Healthcheck"]["Interval"] == 300_000_000
    # flags replace the image's probe; a probe past its timeout fails with docker's words
    cli("run", "-d", "--name", "slow", "--health-cmd", "sleep 5", "--health-interval", "200ms",
        "--health-timeout", "300ms", "--health-retries", "1", "busybox", "sleep", "300")
    wait_for(lambda: cli.inspect("slow")["State"]["Health"]["Status"] == "unhealthy", "a timeout")
    last = cli.inspect("slow")["State"]["Health"]["Log"][-1]
    assert (last["ExitCode"], last["Output"]) == (-1, "Health check exceeded timeout (0.3s)")
    none = cli("run", "-d", "--name", "off", "--no-healthcheck", "checked", "sleep", "300")
    assert none.returncode == 0 and "Health" not in cli.inspect("off")["State"]


# ----------------------------------------------------------------------------- restart
def test_restart_policies(cli: Cli) -> None:
    cli("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c",
        "echo run; exit 3")
    wait_for(lambda: cli.inspect("flaky")["State"]["Status"] == "exited"
             and cli.inspect("flaky")["RestartCount"] == 2, "two restarts, then the end")
    assert cli("logs", "flaky").stdout == "run\n" * 3
    assert cli.inspect("flaky")["State"]["ExitCode"] == 3
    cli("run", "-d", "--name", "ok", "--restart", "on-failure", "busybox", "true")
    assert cli("wait", "ok").stdout == "0\n"
    time.sleep(0.5)
    assert cli.inspect("ok")["RestartCount"] == 0  # success: on-failure does not restart
    cli("run", "-d", "--name", "loop", "--restart", "always", "busybox", "sh", "-c", "sleep 0.3")
    wait_for(lambda: cli.inspect("loop")["RestartCount"] >= 2, "always to restart")
    cli("stop", "-t", "1", "loop")
    count = cli.inspect("loop")["RestartCount"]
    time.sleep(1.0)
    doc = cli.inspect("loop")
    assert doc["State"]["Status"] == "exited" and doc["RestartCount"] == count
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0}
    # attached: the first run's output and exit status; the policy goes on behind it
    res = cli("run", "--name", "fg", "--restart", "on-failure:1", "busybox", "sh", "-c",
              "echo once; exit 5", check=False)
    assert res.returncode == 5 and res.stdout.startswith("once\n")
    wait_for(lambda: cli.inspect("fg")["RestartCount"] == 1
             and cli.inspect("fg")["State"]["Status"] == "exited", "the restart behind it")


# ----------------------------------------------------------------------------- lifecycle
def test_exec_start_restart_wait_kill(cli: Cli, tmp_path) -> None:
    cli.build(tmp_path, "svc", "FROM busybox\nENV MODE=prod\nWORKDIR /srv\n"
                               "CMD [\"sh\", \"-c\", \"trap 'echo hup; exit 7' HUP; echo up; "
                               "while true; do sleep 0.1; done\"]\n")
    cid = cli("run", "-d", "--name", "svc", "svc").stdout.strip()
    wait_for(lambda: cli("logs", "svc").stdout == "up\n", "the trap")
    out = cli("exec", "svc", "sh", "-c", "echo $MODE $(pwd) $(id -u)").stdout
    assert out == "prod /srv 0\n"
    out = cli("exec", "-e", "MODE=dev", "-u", "1000:1000", "-w", "/tmp", "svc", "sh", "-c",
              "echo $MODE $(pwd) $(id -u):$(id -g)").stdout
    assert out == "dev /tmp 1000:1000\n"
    res = cli("exec", "svc", "sh", "-c", "exit 4", check=False)
    assert res.returncode == 4
    res = cli("exec", "-it", "svc", "tty", check=False)
    assert (res.returncode, res.stderr) == (1, "error: the input device is not a TTY\n")
    tty = subprocess.run(["script", "-qec", shlex.join(cli.argv("exec", "-it", "svc", "tty")),
                          "/dev/null"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    # (script answers its /dev/null stdin's EOF by writing that "terminal's" EOF character,
    # NUL, to the pty: echoed as ^@ before or after the output, as the timing falls)
    assert "/dev/pts/0" in tty.stdout.replace("^@", "\n").split(), tty
    assert cli("kill", "-s", "HUP", "svc").stdout == "svc\n"
    assert cli("wait", "svc").stdout == "7\n"
    assert cli("logs", "svc").stdout == "up\nhup\n"
    res = cli("exec", "svc", "true", check=False)
    assert (res.returncode, res.stderr) == (1, f"error: Container {cid} is not running\n")
    res = cli("kill", "svc", check=False)
    assert res.returncode == 1 and "is not running" in res.stderr
    assert cli("start", "svc").stdout == "svc\n"
    wait_for(lambda: cli("logs", "svc").stdout == "up\nhup\nup\n", "the second start")
    first_pid = cli.inspect("svc")["State"]["Pid"]
    assert cli("restart", "-t", "5", "svc").stdout == "svc\n"  # SIGTERM is trapped? no: HUP only
    doc = cli.inspect("svc")
    assert doc["State"]["Running"] and doc["State"]["Pid"] != first_pid
    cli("kill", "svc")
    assert cli("wait", "svc").stdout == "137\n"
    assert ps_rows(cli, "-a")[0][4].startswith("Exited (137)")
    created = cli("create", "--name", "later", "busybox", "echo", "from create").stdout.strip()
    assert ps_rows(cli, "-a")[0][4] == "Created"
    cli("start", "later")
    assert cli("wait", created[:12]).stdout == "0\n"
    assert cli("logs", "later").stdout == "from create\n"
    doc = json.loads(cli("inspect", "later", "busybox").stdout)
    assert doc[0]["Name"] == "/later" and doc[1]["RepoTags"] == ["busybox:latest"]
