"""A process's memory, read from Linux's /proc: resident now, peak (and restarting its count), and the processes
below one, whose memory a command's peak includes (`rehearse`). Imports nothing heavy: a driver that only
watches its commands reads memory without loading MindSpore."""

from __future__ import annotations

import os


def status_gb(key: str, pid: int | str = "self") -> float:
    """A memory line of /proc/<pid>/status in GB (VmRSS: resident now, VmHWM: peak); 0 once the process is gone
    or where there is no /proc."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 2**20
    except (OSError, StopIteration, ValueError):
        return 0.0


def resident_gb() -> float:
    """This process's resident memory now (GB), from /proc (0 where there is none)."""
    return status_gb("VmRSS")


def reset_peak() -> bool:
    """Restart the kernel's count of this process's peak resident memory (Linux: /proc/self/clear_refs), so that
    the peak read afterwards is the measured part's, not import's or the network build's. False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_gb() -> float:
    """Peak resident memory of this process (GB): VmHWM since the last `reset_peak`, else since it started (where
    there is no /proc, getrusage's ru_maxrss, which in a child also counts what its parent held when it started)."""
    peak = status_gb("VmHWM")
    if peak:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from each process's parent in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found
