"""What the kernel says about the local shard's QEMU, for the router's liveness log.

A shard that sends nothing for the liveness timeout is declared hung (docs/protocol.md,
"Liveness"). From the router's side a stopped process, a receive thread blocked on a lock
or on a write, one that is runnable but gets no CPU and one that runs but never gets to
the heartbeat (a loop) all look alike; the kernel tells them apart. So when the router
declares its shard hung, it logs ``describe``: every thread's state letter, wait channel,
and the time it has run and waited for a CPU (/proc/PID/task/TID/{stat,wchan,schedstat}).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

# the shard's thread that answers its router's heartbeat (QEMU's receive thread, 0012)
HEARTBEAT_THREAD = "dqemu-rx"
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
    cpu_ns: int


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
        ran, delay = int(sched[0]), int(sched[1])
    except (IndexError, ValueError):
        ran = delay = 0
    wchan = _read(task / "wchan") or ""
    state = fields[0] if fields else "?"
    return ThreadInfo(tid, comm, state, "" if wchan == "0" else wchan, delay, ran)


def threads(pid: int) -> list[ThreadInfo]:
    try:
        tids = sorted(int(t) for t in (p.name for p in Path(f"/proc/{pid}/task").iterdir()))
    except (OSError, ValueError):
        return []
    return [i for i in (thread_info(pid, t) for t in tids) if i is not None]


@dataclass(frozen=True)
class Sample:
    """How long each thread had run and waited for a CPU, at ``at`` (monotonic seconds)."""

    at: float
    run_delay_ns: dict[int, int]
    cpu_ns: dict[int, int]


def sample(pid: int, at: float) -> Sample:
    got = threads(pid)
    return Sample(at, {t.tid: t.run_delay_ns for t in got}, {t.tid: t.cpu_ns for t in got})


def describe(pid: int, since: Sample | None = None, now: float = 0.0) -> str:
    """Every thread of the process: ``comm state [wchan] [ran X s and waited Y s for a CPU
    of the last Z s]``; both counted from ``since`` (taken while the shard was silent), and
    each left out below 0.01 s. A runnable thread that has not run since then says so:
    the kernel adds a wait to ``schedstat`` only once the thread gets a CPU."""
    parts = []
    for t in threads(pid):
        words = [t.comm, t.state]
        if t.wchan and t.state != "R":
            words.append(t.wchan)
        if since is not None and t.tid in since.run_delay_ns:
            window = now - since.at
            ran = (t.cpu_ns - since.cpu_ns.get(t.tid, t.cpu_ns)) / 1e9
            waited = (t.run_delay_ns - since.run_delay_ns[t.tid]) / 1e9
            said = [f"ran {ran:.2f} s"] if ran >= 0.01 else []
            said += [f"waited {waited:.2f} s for a CPU"] if waited >= 0.01 else []
            if t.state == "R" and ran < 0.01:
                words.append(f"got no CPU in the last {window:.2f} s")
            elif said:
                words.append(f"{' and '.join(said)} of the last {window:.2f} s")
        parts.append(" ".join(words))
    return "; ".join(parts) if parts else "its threads cannot be read"


# a thread that is runnable and ran less than this share of a silence was starved of CPU
STARVED_SHARE = 0.05


def starved(pid: int, since: Sample, now: float, *, comm: str = "",
            tid: int = 0) -> ThreadInfo | None:  # fmt: skip
    """The thread of ``pid`` that is runnable (``R``) but has (almost) not run since
    ``since``: a thread the host's scheduler keeps waiting, not one that is stopped,
    blocked or looping. Only the thread ``tid``, or those named ``comm``, if given (the
    one that answers the heartbeat); None if there is none, or nothing can be read."""
    window_ns = max(now - since.at, 1e-3) * 1e9
    for t in threads(pid):
        if (tid and t.tid != tid) or (comm and t.comm != comm) or t.tid not in since.cpu_ns:
            continue
        ran = t.cpu_ns - since.cpu_ns[t.tid]
        if t.state == "R" and ran < STARVED_SHARE * window_ns:
            return t
    return None


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a UNIX socket (SO_PEERCRED)."""
    try:
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", cred)[0]
    return pid or None
