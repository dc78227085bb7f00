"""Resource limits of a container (`--memory`, `--cpus`, ...) and what its cgroup reports.

Limits go into the runtime spec's `linux.resources`; runc writes them to the cgroup
files, on cgroup v1 (one hierarchy per controller, as on this machine) and v2 (one
unified tree) alike. The readers below find the container's cgroup under either layout,
for `pybuild stats` and for telling an OOM kill from any other SIGKILL.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pybuild.errors import PybuildError

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIN_MEMORY = 6 * 1024 * 1024  # docker's linuxMinMemory
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262144
CPU_PERIOD = 100_000  # µs, what docker uses for --cpus
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4, "p": 1024 ** 5}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$", re.IGNORECASE)


@dataclass
class Limits:
    """What the container may use; 0 means unlimited (memory_swap -1: unlimited swap)."""

    memory: int = 0
    memory_swap: int = 0
    nano_cpus: int = 0
    cpu_shares: int = 0
    pids_limit: int = 0


def parse_bytes(text: str, flag: str) -> int:
    """docker's RAMInBytes: 256m, 1g, 512k, 100b, 1.5g; a bare number is bytes."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise PybuildError(f"invalid argument {text!r} for \"{flag}\" flag: invalid size: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_cpus(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise PybuildError(f"invalid argument {text!r} for \"--cpus\" flag: failed to parse "
                           f"{text} as a rational number") from None
    return round(value * 1e9)


def make(*, memory: str | None, memory_swap: str | None, cpus: str | None,
         cpu_shares: int | None, pids_limit: int | None) -> tuple[Limits, list[str]]:
    """Checked limits, and docker's warnings for values it adjusts rather than refuses."""
    warnings: list[str] = []
    lim = Limits()
    if memory is not None:
        lim.memory = parse_bytes(memory, "--memory")
        if 0 < lim.memory < MIN_MEMORY:
            raise PybuildError("Minimum memory limit allowed is 6MB")
    if memory_swap is not None:
        lim.memory_swap = -1 if memory_swap.strip() == "-1" else parse_bytes(memory_swap, "--memory-swap")
        if lim.memory == 0 and lim.memory_swap != 0:
            raise PybuildError("You should always set the Memory limit when using Memoryswap limit, "
                               "see usage")
        if lim.memory_swap > 0 and lim.memory_swap < lim.memory:
            raise PybuildError("Minimum memoryswap limit should be larger than memory limit, see usage")
    if cpus is not None:
        lim.nano_cpus = parse_cpus(cpus)
        ncpu = os.cpu_count() or 1
        if lim.nano_cpus < 0 or (lim.nano_cpus and not 10_000_000 <= lim.nano_cpus <= ncpu * 1e9):
            raise PybuildError(f"Range of CPUs is from 0.01 to {ncpu:.2f}, as there are only "
                               f"{ncpu} CPUs available")
    if cpu_shares:
        if cpu_shares < 0:
            raise PybuildError(f"invalid CPU shares ({cpu_shares}): must be positive")
        clamped = min(max(cpu_shares, MIN_CPU_SHARES), MAX_CPU_SHARES)
        if clamped != cpu_shares:
            kind = "minimum" if clamped == MIN_CPU_SHARES else "maximum"
            warnings.append(f"Changing requested CPUShares of {cpu_shares} to {kind} allowed of "
                            f"{clamped}")
        lim.cpu_shares = clamped
    if pids_limit is not None:
        lim.pids_limit = max(0, pids_limit)
    return lim, warnings


def oci_resources(lim: Limits) -> dict[str, Any]:
    """The spec's linux.resources entries for `lim` (devices are added by the caller)."""
    out: dict[str, Any] = {}
    if lim.memory:
        # docker: without --memory-swap a container may use as much swap as memory
        swap = lim.memory_swap if lim.memory_swap else 2 * lim.memory
        out["memory"] = {"limit": lim.memory, "swap": swap} if _swap_accounting() \
            else {"limit": lim.memory}
    cpu: dict[str, Any] = {}
    if lim.cpu_shares:
        cpu["shares"] = lim.cpu_shares
    if lim.nano_cpus:
        cpu["period"] = CPU_PERIOD
        cpu["quota"] = lim.nano_cpus * CPU_PERIOD // 1_000_000_000
    if cpu:
        out["cpu"] = cpu
    if lim.pids_limit:
        out["pids"] = {"limit": lim.pids_limit}
    return out


def is_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _swap_accounting() -> bool:
    if is_v2():
        return True  # memory.swap.max exists wherever the memory controller does
    return (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()


def cgroup_dir(cgroups_path: str, controller: str) -> Path:
    """Where the container's `controller` files are: v2 has one directory for all."""
    rel = cgroups_path.lstrip("/")
    return CGROUP_ROOT / rel if is_v2() else CGROUP_ROOT / controller / rel


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def oom_kills(cgroups_path: str) -> int:
    """How many processes the kernel's OOM killer killed in this cgroup."""
    d = cgroup_dir(cgroups_path, "memory")
    name = "memory.events" if is_v2() else "memory.oom_control"
    return _keyed(_read(d / name)).get("oom_kill", 0)


def _host_memory() -> int:
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Usage:
    """One reading of a container's cgroup (and its namespace's interfaces)."""

    cpu_ns: int
    system_ns: int
    memory: int
    memory_limit: int
    pids: int
    net_rx: int
    net_tx: int


def _system_ns() -> int:
    """All CPUs' time since boot (/proc/stat), what docker divides container time by."""
    first = _read(Path("/proc/stat")).splitlines()[:1]
    if not first:
        return 0
    ticks = sum(int(v) for v in first[0].split()[1:8])
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _net(pid: int) -> tuple[int, int]:
    rx = tx = 0
    for line in _read(Path(f"/proc/{pid}/net/dev")).splitlines()[2:]:
        name, _, data = line.partition(":")
        fields = data.split()
        if name.strip() != "lo" and len(fields) >= 9:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


def usage(cgroups_path: str, pid: int) -> Usage:
    """docker stats' numbers: memory without the inactive page cache, as `docker stats`."""
    mem_dir = cgroup_dir(cgroups_path, "memory")
    if is_v2():
        cpu_ns = _keyed(_read(cgroup_dir(cgroups_path, "cpu") / "cpu.stat")).get("usage_usec", 0) * 1000
        mem = int(_read(mem_dir / "memory.current").strip() or 0)
        inactive = _keyed(_read(mem_dir / "memory.stat")).get("inactive_file", 0)
        raw_limit = _read(mem_dir / "memory.max").strip()
        limit = int(raw_limit) if raw_limit.isdigit() else 0
    else:
        cpu_ns = int(_read(cgroup_dir(cgroups_path, "cpuacct") / "cpuacct.usage").strip() or 0)
        mem = int(_read(mem_dir / "memory.usage_in_bytes").strip() or 0)
        inactive = _keyed(_read(mem_dir / "memory.stat")).get("total_inactive_file", 0)
        limit = int(_read(mem_dir / "memory.limit_in_bytes").strip() or 0)
    host = _host_memory()
    if not limit or (host and limit > host):
        limit = host
    pids = int(_read(cgroup_dir(cgroups_path, "pids") / "pids.current").strip() or 0)
    rx, tx = _net(pid)
    return Usage(cpu_ns=cpu_ns, system_ns=_system_ns(), memory=max(mem - inactive, 0),
                 memory_limit=limit, pids=pids, net_rx=rx, net_tx=tx)


def cpu_percent(before: Usage, after: Usage) -> float:
    """docker's formula: container CPU time over all CPUs' time, times the CPU count."""
    system = after.system_ns - before.system_ns
    if system <= 0:
        return 0.0
    return (after.cpu_ns - before.cpu_ns) / system * (os.cpu_count() or 1) * 100.0
