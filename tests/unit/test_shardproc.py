"""What the router logs of a silent shard's threads (cluster/router/shardproc.py), read
from a real process: a thread that spins, one that sleeps on a lock."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from cluster.router.shardproc import describe, sample

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
