"""The machine a benchmark runs on: CPU placement, CPU time of a process, a description.

Only the standard library: the comparison's driver (``compare.py``) runs on any Python.
"""

import contextlib
import os
import platform
from pathlib import Path

__all__ = ["children", "cpu_seconds", "describe", "pin_cpus"]


def pin_cpus(*postmaster_pids: int) -> str | None:
    """Give this process a CPU of its own and the servers every other one.

    On a small machine the scheduler otherwise keeps putting server backends on the
    benchmark's CPU, and which pool's backends land there decides which side "wins": an
    A/A comparison of two identical apps was seen to differ by 13%. Backends started later
    inherit the postmaster's affinity.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    ours, theirs = cpus[-1], set(cpus[:-1])
    for pid in [pid for main in postmaster_pids for pid in (main, *children(main))]:
        # A process may end between listing and pinning.
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, theirs)
    os.sched_setaffinity(0, {ours})
    return f"benchmark on CPU {ours}, PostgreSQL on CPU {','.join(map(str, sorted(theirs)))}"


def children(parent: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; the fields after it do not.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) process *pid* has used so far (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # utime and stime are the 14th and 15th fields; fields[0] is the 3rd (state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def describe() -> dict[str, str]:
    """The machine, in a few words: CPU, cores, memory, system and Python."""
    found = {
        "system": platform.platform(),
        "python": platform.python_version(),
        "cores": str(os.cpu_count()),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                found["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                found["memory"] = f"{int(line.split()[1]) / 1024**2:.0f} GiB"
                break
    return found
