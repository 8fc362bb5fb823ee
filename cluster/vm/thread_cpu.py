"""CPU% of single threads (a shard's vCPU threads) from ``/proc/<pid>/task/<tid>/stat``.

psutil meters whole processes; a vCPU is one thread of its shard's QEMU, whose id
``query-cpus-fast`` gives (``thread-id``). Each reading is over the time since the
previous reading of the same thread, as the control API's other CPU figures are.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int, tid: int, proc: Path = Path("/proc")) -> float | None:
    """utime + stime of one thread in seconds; None if it is gone."""
    try:
        stat = (proc / str(pid) / "task" / str(tid) / "stat").read_text()
    except OSError:
        return None
    # the name (field 2) may hold spaces and parentheses: the fields after it start at
    # the last ')'; utime and stime are fields 14 and 15 of the whole line
    rest = stat[stat.rfind(")") + 2 :].split()
    try:
        return (int(rest[11]) + int(rest[12])) / TICKS
    except (IndexError, ValueError):
        return None


class ThreadMeter:
    """CPU% per (pid, tid), over the time since that thread's previous reading."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._last: dict[tuple[int, int], tuple[float, float]] = {}

    def read(self, pid: int, tid: int, now: float | None = None) -> float | None:
        """The thread's CPU% (100 = one core); 0.0 at its first reading; None if gone."""
        cpu = thread_cpu_seconds(pid, tid, self.proc)
        key = (pid, tid)
        if cpu is None:
            self._last.pop(key, None)
            return None
        t = time.monotonic() if now is None else now
        before = self._last.get(key)
        self._last[key] = (t, cpu)
        if before is None or t <= before[0]:
            return 0.0
        return round(max(0.0, cpu - before[1]) / (t - before[0]) * 100.0, 1)

    def forget(self, keep_pids: set[int]) -> None:
        """Drop the readings of processes no longer watched."""
        for key in [k for k in self._last if k[0] not in keep_pids]:
            del self._last[key]
