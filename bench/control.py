#!/usr/bin/env python3
"""The control API's cost: ``info`` and ``stats`` round trips, and the CPU a 10 Hz stats
stream costs the VM's launcher and routers.

Starts a detached 2-shard Linux guest (``dq.run=sleep``) in a registry of its own, measures,
then destroys it. Last line: ``info_ms=<p50> stats_ms=<p50> stream_cpu_pct=<x>``, where
stream_cpu_pct is the launcher's and routers' extra CPU (% of one core) while one client
streams stats at 10 Hz, against the same processes idle. Run it from the repository:
``.venv/bin/python bench/control.py [--calls 50] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.detached_vm import detached_vm  # noqa: E402
from cluster.vm import registry  # noqa: E402
from cluster.vm.control import vm_call  # noqa: E402


def _round_trips(control: Path, cmd: str, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        vm_call(control, cmd)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _cpu_pct(procs: list[psutil.Process], seconds: float) -> float:
    before = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    time.sleep(seconds)
    after = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    return (after - before) / seconds * 100.0


def _stream(control: Path, stop: threading.Event, got: list[int]) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(control))
    s.sendall(json.dumps({"cmd": "stats", "watch": True, "hz": 10}).encode() + b"\n")
    with s, s.makefile("rb") as f:
        f.readline()
        while not stop.is_set() and f.readline():
            got[0] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=50, help="round trips per command")
    ap.add_argument("--seconds", type=float, default=10.0, help="CPU measuring window")
    args = ap.parse_args()
    with detached_vm("--kernel", "guest:cloud", "--initrd", "guest:cloud", "--vcpus", "2",
                     "--shards", "2", "--append", "dq.run=sleep", "--timeout", "900") as (
        name, _env,
    ):  # fmt: skip
        control = registry.find(name).control
        info = vm_call(control, "info")
        launcher = psutil.Process(info["launcher_pid"])
        procs = [launcher] + [psutil.Process(s["router"]["pid"]) for s in info["shards"]]
        time.sleep(3.0)  # let the guest settle into its sleep
        info_ms = _round_trips(control, "info", args.calls)
        stats_ms = _round_trips(control, "stats", args.calls)
        idle = _cpu_pct(procs, args.seconds)
        stop, got = threading.Event(), [0]
        t = threading.Thread(target=_stream, args=(control, stop, got), daemon=True)
        t.start()
        busy = _cpu_pct(procs, args.seconds)
        stop.set()
        t.join(timeout=5)
        print(f"info: {args.calls} calls, p50 {info_ms:.2f} ms")
        print(f"stats: {args.calls} calls, p50 {stats_ms:.2f} ms")
        print(f"launcher+routers CPU: idle {idle:.1f}%, with a 10 Hz stats stream "
              f"{busy:.1f}% ({got[0]} snapshots in {args.seconds:g} s)")  # fmt: skip
        print(f"info_ms={info_ms:.2f} stats_ms={stats_ms:.2f} "
              f"stream_cpu_pct={max(busy - idle, 0.0):.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
