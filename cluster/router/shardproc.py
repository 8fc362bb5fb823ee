"""What the kernel says about the local shard's QEMU, for the router's liveness log.

A shard that sends nothing for the liveness timeout is declared hung (docs/protocol.md,
"Liveness"). From the router's side a stopped process, a receive thread blocked on a lock
or on a write, and one that is runnable but gets no CPU all look alike; the kernel tells
them apart. So when the router declares its shard hung, it logs ``describe``: every
thread's state letter, wait channel and the time it has waited for a CPU
(/proc/PID/task/TID/{stat,wchan,schedstat}).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

# the router's log line when it declares its shard hung; hosts look for it in that log
HUNG_MARK = " is silent; its threads: "
HUNG_LINE = "local shard %d" + HUNG_MARK + "%s"


@dataclass(frozen=True)
class ThreadInfo:
    tid: int
    comm: str
    state: str  # R, S, D, T, t, Z, ...
    wchan: str
    run_delay_ns: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def thread_info(pid: int, tid: int) -> ThreadInfo | None:
    """One thread of ``pid``; None if it is gone or /proc does not say."""
    task = Path(f"/proc/{pid}/task/{tid}")
    stat = _read(task / "stat")
    if stat is None or ")" not in stat:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 1 :].split()
    sched = (_read(task / "schedstat") or "0 0").split()
    try:
        delay = int(sched[1])
    except (IndexError, ValueError):
        delay = 0
    wchan = _read(task / "wchan") or ""
    return ThreadInfo(tid, comm, fields[0] if fields else "?", "" if wchan == "0" else wchan, delay)


def threads(pid: int) -> list[ThreadInfo]:
    try:
        tids = sorted(int(t) for t in (p.name for p in Path(f"/proc/{pid}/task").iterdir()))
    except (OSError, ValueError):
        return []
    return [i for i in (thread_info(pid, t) for t in tids) if i is not None]


@dataclass(frozen=True)
class Sample:
    """How long each thread had waited for a CPU, at ``at`` (monotonic seconds)."""

    at: float
    run_delay_ns: dict[int, int]


def sample(pid: int, at: float) -> Sample:
    return Sample(at, {t.tid: t.run_delay_ns for t in threads(pid)})


def describe(pid: int, since: Sample | None = None, now: float = 0.0) -> str:
    """Every thread of the process: ``comm state [wchan] [waited X s of the last Y s for
    a CPU]``; the wait is counted from ``since`` (taken while the shard was silent)."""
    parts = []
    for t in threads(pid):
        words = [t.comm, t.state]
        if t.wchan and t.state != "R":
            words.append(t.wchan)
        if since is not None and t.tid in since.run_delay_ns:
            waited = (t.run_delay_ns - since.run_delay_ns[t.tid]) / 1e9
            if waited >= 0.01:
                words.append(f"waited {waited:.2f} s of the last {now - since.at:.2f} s for a CPU")
        parts.append(" ".join(words))
    return "; ".join(parts) if parts else "its threads cannot be read"


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a UNIX socket (SO_PEERCRED)."""
    try:
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", cred)[0]
    return pid or None
