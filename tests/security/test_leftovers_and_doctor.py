"""What a SIGKILL mid-unpack leaves is cleaned by the next pull; doctor judges a snapshot by
the snapshot alone, never by host files its symlinks point at."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from conftest import REPO, Pybuild, require_build_tools
from security.hostile import HostileRegistry


def _many_files_tar(n: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for d in range(n // 500):
            ti = tarfile.TarInfo(f"d{d}")
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
            for i in range(500):
                ti = tarfile.TarInfo(f"d{d}/f{i}")
                ti.size = 3
                t.addfile(ti, io.BytesIO(b"abc"))
    return buf.getvalue()


def _work_dirs(root: Path) -> list[Path]:
    snaps = root / "snapshots"
    return sorted(snaps.glob("tmp-*")) if snaps.exists() else []


def test_sigkill_during_a_pulls_unpack_is_cleaned_by_the_next_pull(pybuild: Pybuild) -> None:
    """On main the next pull never removed the dead pull's `tmp-*` work dir (unpack did not
    clean up) and doctor flagged it for ever."""
    require_build_tools()
    with HostileRegistry() as registry:
        registry.image("lib/many", "1", [_many_files_tar(30_000)])
        ref = f"{registry.addr}/lib/many:1"
        pybuild("images")
        proc = subprocess.Popen([sys.executable, "-m", "pybuild", "--root", str(pybuild.root),
                                 "pull", ref], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                work = _work_dirs(pybuild.root)
                if work and (work[0] / "fs").is_dir() and any((work[0] / "fs").iterdir()):
                    break
                time.sleep(0.005)
            assert proc.poll() is None, "the pull finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert _work_dirs(pybuild.root), "the kill left no work dir: nothing was tested"
        doctor = pybuild("doctor", check=False)
        assert "snapshot-leftover" in doctor.stdout
        pybuild("pull", ref)
    assert _work_dirs(pybuild.root) == []
    doctor = pybuild("doctor", check=False)
    assert doctor.returncode == 0, doctor.stdout


def _symlink_layer(path: Path, host: Path) -> Path:
    """A rootfs whose `x` is a symlink to a host directory, with a file written through it."""
    with tarfile.open(path, "w") as t:
        ti = tarfile.TarInfo("x")
        ti.type, ti.linkname = tarfile.SYMTYPE, str(host)
        t.addfile(ti)
        ti = tarfile.TarInfo("x/victim")
        ti.size = 5
        t.addfile(ti, io.BytesIO(b"hello"))
    return path


def test_doctor_never_looks_through_a_layers_symlinks_onto_the_host(pybuild: Pybuild,
                                                                   tmp_path: Path) -> None:
    """On main doctor lstat()ed `fs/x/victim` on the host, following the layer's `x`
    symlink: the host directory decided the verdict (missing there: "incomplete snapshot",
    and --repair deleted a good snapshot)."""
    require_build_tools()
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep").write_text("host")
    pybuild("import", str(_symlink_layer(tmp_path / "sym.tar", host)), "sym")
    [snap] = [p for p in (pybuild.root / "snapshots").iterdir() if p.name != "empty"]
    # the extractor put the file where the root sees it: inside the snapshot
    inside = snap / "fs" / str(host).lstrip("/") / "victim"
    assert inside.read_bytes() == b"hello"
    doctor = pybuild("doctor", check=False)
    assert doctor.returncode == 0, doctor.stdout
    repaired = pybuild("doctor", "--repair", check=False)
    assert repaired.returncode == 0 and "removed incomplete snapshot" not in repaired.stdout
    assert snap.is_dir()
    # and a host file of the same name decides nothing either
    (host / "victim").write_bytes(b"other content, other size")
    inside.unlink()
    doctor = pybuild("doctor", check=False)
    assert "incomplete-snapshot" in doctor.stdout and "/x/victim" in doctor.stdout
    assert sorted(p.name for p in host.iterdir()) == ["keep", "victim"]
    assert (host / "victim").read_bytes() == b"other content, other size"
    assert (host / "keep").read_text() == "host"


def test_doctor_does_not_flag_a_live_work_dir(pybuild: Pybuild) -> None:
    """A pull or build still writing its work dir holds its lock: not a leftover."""
    import fcntl

    pybuild("images")
    work = pybuild.root / "snapshots" / ("tmp-" + "b" * 32)
    (work / "fs").mkdir(parents=True)
    fd = os.open(work / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert "snapshot-leftover" not in pybuild("doctor", check=False).stdout
    finally:
        os.close(fd)
    assert "snapshot-leftover" in pybuild("doctor", check=False).stdout
