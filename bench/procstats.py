"""Readings from /proc: CPU time and memory of processes, and how busy the whole machine is."""
import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its closing one.
    return text.rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """Direct children of `pid` (a gunicorn arbiter's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process so far; None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # After the name: state(0) ppid(1) ... utime(11) stime(12).
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` line of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def postgres_backends(database: str) -> list[int]:
    """The PostgreSQL server processes serving connections to `database`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # A backend names itself "postgres: <user> <database> <client> <state>".
        if cmdline.startswith("postgres: ") and f" {database} " in cmdline:
            found.append(int(entry.name))
    return found


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


@dataclass
class CpuSnapshot:
    processes: dict[int, float]
    machine: tuple[int, int]


def snapshot(pids: list[int]) -> CpuSnapshot:
    return CpuSnapshot(
        {pid: cpu for pid in pids if (cpu := cpu_seconds(pid)) is not None}, machine_ticks()
    )


def cpu_used(before: CpuSnapshot, pids: list[int]) -> float:
    """CPU seconds `pids` used since `before`; a process new since then counts from zero."""
    total = 0.0
    for pid in pids:
        now = cpu_seconds(pid)
        if now is not None:
            total += now - before.processes.get(pid, 0.0)
    return total


def machine_busy(before: CpuSnapshot) -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, fraction of all cores' time busy) since `before`."""
    busy, total = machine_ticks()
    elapsed = total - before.machine[1]
    busy -= before.machine[0]
    return busy / TICKS, (busy / elapsed if elapsed else 0.0)


def connections_per_process(pids: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections to local `port` each process holds (from
    /proc/net/tcp and the processes' file descriptors): how a server's workers share its clients."""
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
            established.add(fields[9])
    counts = {}
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        counts[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in established)
    return counts
