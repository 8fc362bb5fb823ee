"""Who made a leftover: is the process that created a file or namespace still running?

Launchers name what they make after their pid (``dq-<pid>-...`` namespaces,
``dqemu-<pid>-...`` run directories and RAM files). A pid alone is not enough: after the
launcher died, the pid may belong to another process. So a resource is its maker's only
while a process with that pid exists *and* started no later than the resource was last
changed (its ctime); a process that started afterwards reused the pid.

And a pid means something only in the pid namespace of the boot that gave it: a run
directory seen from another one (the RDMA test host sees this machine's /tmp through its
overlay) names a pid of a process it cannot see. So a launcher writes its identity (boot id
and pid namespace, :func:`identity`) into its run directory, and only a run directory that
carries this process's identity is judged by its pid (:func:`made_here`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# in a launcher's run directory: the boot id and pid namespace it was made in
OWNER_FILE = "owner"
# /proc/<pid>/stat start times have clock-tick resolution (10 ms): allow for it.
_SLACK_S = 0.05


def process_start(pid: int) -> float | None:
    """Wall-clock start time of ``pid``, or None if there is no such process, or it has
    ended and only waits for its parent to reap it (a zombie: a SIGKILLed launcher whose
    parent, often init for a detached one, has not collected it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # after the comm field (which may contain spaces): field 3 (state), field 22
    # (starttime, clock ticks since boot)
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None
    ticks = int(fields[19])
    since_boot = ticks / os.sysconf("SC_CLK_TCK")
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return boot + since_boot


def maker_alive(pid: int, path: Path) -> bool:
    """Is the process ``pid`` that made ``path`` still running (and not a pid reuse)?"""
    start = process_start(pid)
    if start is None:
        return False
    try:
        changed = path.stat().st_ctime
    except OSError:
        return True  # gone or unreadable: nothing to reap, nothing to decide
    return start <= changed + _SLACK_S


def identity() -> str:
    """This process's boot and pid namespace, ``<boot id> pidns:<inode>``: pids are
    comparable only between processes that share both."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot} pidns:{os.stat('/proc/self/ns/pid').st_ino}"


def mark_own(rundir: Path) -> None:
    """Record in ``rundir`` (just made) the identity of the process that made it."""
    (rundir / OWNER_FILE).write_text(identity() + "\n")


def made_here(rundir: Path) -> bool:
    """Was ``rundir`` made in this boot and pid namespace (so its name's pid is one this
    process can judge)? False when it carries another identity, or none."""
    try:
        return (rundir / OWNER_FILE).read_text().strip() == identity()
    except OSError:
        return False
