"""Per-thread CPU% from /proc (the control API's per-vCPU figures)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from cluster.vm.thread_cpu import TICKS, ThreadMeter, thread_cpu_seconds
from dqconsole.screens.vm import vcpu_rows


def test_a_busy_thread_reads_busy_and_an_idle_one_idle() -> None:
    ready = threading.Event()
    stop = threading.Event()
    tids: dict[str, int] = {}

    def spin() -> None:
        tids["busy"] = threading.get_native_id()
        ready.set()
        while not stop.is_set():
            pass

    def idle() -> None:
        tids["idle"] = threading.get_native_id()
        stop.wait()

    threads = [threading.Thread(target=spin), threading.Thread(target=idle)]
    for t in threads:
        t.start()
    ready.wait()
    while "idle" not in tids:
        time.sleep(0.01)
    meter = ThreadMeter()
    pid = os.getpid()
    try:
        assert meter.read(pid, tids["busy"]) == 0.0  # the first reading starts the interval
        assert meter.read(pid, tids["idle"]) == 0.0
        time.sleep(1.0)
        busy, idle = meter.read(pid, tids["busy"]), meter.read(pid, tids["idle"])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert busy is not None and busy > 1.0  # (it shares two cores with others)
    assert idle == 0.0


def test_stat_with_parentheses_and_spaces_in_the_name(tmp_path: Path) -> None:
    task = tmp_path / "7" / "task" / "9"
    task.mkdir(parents=True)
    fields = ["S", *["0"] * 10, str(3 * TICKS), str(2 * TICKS), *["0"] * 30]
    (task / "stat").write_text("9 (CPU 0/TCG) x) " + " ".join(fields) + "\n")
    assert thread_cpu_seconds(7, 9, tmp_path) == 5.0
    assert thread_cpu_seconds(7, 10, tmp_path) is None
    meter = ThreadMeter(tmp_path)
    assert meter.read(7, 9, now=1.0) == 0.0
    (task / "stat").write_text("9 (CPU 0/TCG) x) " + " ".join(fields).replace(
        str(3 * TICKS), str(4 * TICKS), 1) + "\n")  # fmt: skip
    assert meter.read(7, 9, now=3.0) == 50.0  # one more CPU second over two seconds
    (task / "stat").unlink()
    assert meter.read(7, 9, now=4.0) is None  # the thread is gone


def test_vcpu_rows_from_info() -> None:
    info = {"shards": [
        {"id": 1, "vcpu_threads": [{"vcpu": 3, "thread": 21, "cpu_pct": 50.0},
                                   {"vcpu": 1, "thread": 20, "cpu_pct": 99.04}]},
        {"id": 0, "vcpu_threads": [{"vcpu": 0, "thread": 10, "cpu_pct": 0}]},
        {"id": 2, "state": "exited -9", "vcpu_threads": []},
    ]}  # fmt: skip
    assert vcpu_rows(info) == [("0", "0", "10", "  0.0"), ("1", "1", "20", " 99.0"),
                               ("3", "1", "21", " 50.0")]  # fmt: skip
