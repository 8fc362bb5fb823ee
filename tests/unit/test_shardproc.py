"""What the router logs and judges of a silent shard's threads (cluster/router/shardproc.py),
read from real processes: a thread that spins, one that sleeps on a lock, one that the
scheduler keeps off the CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from cluster.router.shardproc import describe, sample, starved

CHILD = """
import threading, time
lock = threading.Lock(); lock.acquire()
def spin():
    while True:
        pass
threading.Thread(target=spin, name="spinner", daemon=True).start()
threading.Thread(target=lock.acquire, name="sleeper", daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""


def test_a_spinning_thread_is_told_from_a_sleeping_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        since = sample(child.pid, time.monotonic())
        time.sleep(0.5)
        said = describe(child.pid, since, time.monotonic())
    finally:
        child.kill()
        child.wait()
    threads = said.split("; ")
    assert len(threads) == 3, said  # (Python names no thread for the kernel: all "python3")
    spinning = [t for t in threads if " ran " in t]
    assert len(spinning) == 1 and spinning[0].split()[1] == "R", said
    # it ran most of the half second (on a busy machine it may have waited for a CPU too)
    ran = float(spinning[0].split(" ran ")[1].split()[0])
    assert ran >= 0.1 and re.search(r" of the last \d+\.\d\d s$", spinning[0]), said
    assert sorted(t.split()[1] for t in threads) == ["R", "S", "S"], said


SPIN = "import os, sys\nprint('ready', flush=True)\nwhile True:\n    pass\n"


def _spinner(cpu: int, idle: bool) -> subprocess.Popen[str]:
    """A process that spins on ``cpu``; at SCHED_IDLE (it runs only when nothing else
    wants that CPU) if ``idle``."""

    def place() -> None:
        os.sched_setaffinity(0, {cpu})
        if idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    child = subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True,
                             preexec_fn=place)  # fmt: skip
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def test_a_thread_kept_off_the_cpu_is_starved_and_a_running_one_is_not() -> None:
    """Starvation as the router judges it (a silent shard that is not hung): runnable but
    hardly run. A SCHED_IDLE spinner beside a normal one on the same CPU is; the normal
    one, which runs, is not; neither is a sleeping process."""
    procs = [_spinner(0, idle=True), _spinner(0, idle=False)]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    procs.append(sleeper)
    try:
        t0 = time.monotonic()
        since = {c.pid: sample(c.pid, t0) for c in procs}
        time.sleep(0.5)
        now = time.monotonic()
        kept_off = starved(procs[0].pid, since[procs[0].pid], now)
        assert kept_off is not None and kept_off.state == "R"
        assert starved(procs[0].pid, since[procs[0].pid], now, comm="no-such-thread") is None
        assert starved(procs[1].pid, since[procs[1].pid], now) is None  # it ran
        assert starved(sleeper.pid, since[sleeper.pid], now) is None  # not runnable
        said = describe(procs[0].pid, since[procs[0].pid], now)
        assert re.fullmatch(r"python3? R got no CPU in the last \d+\.\d\d s", said), said
    finally:
        for c in procs:
            c.kill()
            c.wait()
