#!/usr/bin/env python3
"""dqconsole's own cost: its CPU while it watches a busy VM at 1 Hz and at 10 Hz, and the
time from a keypress to the screen showing its effect.

The console runs in a real terminal: a tmux session (160x48) running ``dqconsole NAME``.
Without ``--name`` a detached 4-shard Linux guest (shell mode) is started in a registry of
its own and kept busy (a loop that migrates a task between CPUs and shoots down TLBs, so
IPIs and TLB flushes cross shards all the time), then destroyed. CPU is the dqconsole
process's user+system time over the window, in % of one core. The key latency is the
median over ``--keys`` presses of ``h`` (1/10 Hz switch), each timed from ``tmux
send-keys`` until ``tmux capture-pane`` shows the status line's new rate. Last line:
``console_cpu_pct_1hz=<x> console_cpu_pct_10hz=<y> key_latency_ms=<z>``. Figures only.
Run it from the repository: ``.venv/bin/python bench/console.py [--name VM] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.detached_vm import detached_vm  # noqa: E402
from cluster.vm import registry  # noqa: E402
from cluster.vm.client import StreamReader, open_stream  # noqa: E402

# the test guest's own programs (guests/linux/programs): IPIs and TLB shootdowns
BUSY = "while :; do migrate 20 >/dev/null 2>&1; shootdown 20 >/dev/null 2>&1; done &\n"


def _make_busy(name: str, timeout: float = 600.0) -> None:
    """Wait for the guest's shell, then start the busy loop in it."""
    reader = StreamReader(open_stream(registry.find(name).control,
                                      {"cmd": "serial", "write": True}))  # fmt: skip
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while b"/ # " not in seen:
            if time.monotonic() > deadline:
                sys.exit(f"{name}: no shell prompt within {timeout:g} s")
            data = reader.read()
            if data is None:
                sys.exit(f"{name}: the console ended before the shell prompt")
            seen = (seen + data)[-4096:]
        reader.write(BUSY.encode())
        time.sleep(1.0)
    finally:
        reader.close()


class Tmux:
    def __init__(self, session: str, env: dict[str, str]) -> None:
        self.session = session
        self.env = env

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True,
                              env=self.env).stdout  # fmt: skip

    def start(self, command: str) -> psutil.Process:
        self.run("new-session", "-d", "-s", self.session, "-x", "160", "-y", "48", command)
        return psutil.Process(int(self.run("display", "-p", "-t", self.session,
                                           "#{pane_pid}").strip()))  # fmt: skip

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen():
            if time.monotonic() > deadline:
                sys.exit(f"dqconsole did not show {text!r} within {timeout:g} s:\n{self.screen()}")
            time.sleep(0.2)

    def key_latency_ms(self, key: str, shows: str, timeout: float = 30.0) -> float:
        t0 = time.perf_counter()
        self.run("send-keys", "-t", self.session, key)
        while shows not in self.screen():
            if time.perf_counter() - t0 > timeout:
                sys.exit(f"the key {key!r} did not show {shows!r} within {timeout:g} s")
            time.sleep(0.002)
        return (time.perf_counter() - t0) * 1000.0

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True,
                       check=False, env=self.env)  # fmt: skip


def _cpu_pct(proc: psutil.Process, seconds: float) -> float:
    t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0) * 100.0


def measure(name: str, env: dict[str, str], seconds: float, keys: int) -> None:
    session = f"dqbench-console-{os.getpid()}"
    tmux = Tmux(session, {**env, "TERM": "xterm-256color"})
    python = shutil.which("python", path=str(Path(sys.executable).parent)) or sys.executable
    proc = tmux.start(f"exec {python} -m dqconsole.app {name} --hz 1")
    try:
        tmux.wait_for("stats 1 Hz", 120)
        tmux.wait_for("running", 120)
        time.sleep(5.0)  # the first info, query of commands and scrollback are done
        cpu_1hz = _cpu_pct(proc, seconds)
        tmux.key_latency_ms("h", "stats 10 Hz")
        time.sleep(3.0)
        cpu_10hz = _cpu_pct(proc, seconds)
        times = []
        for i in range(keys):
            shows = "stats 1 Hz" if i % 2 == 0 else "stats 10 Hz"
            time.sleep(0.5)
            times.append(tmux.key_latency_ms("h", shows))
        latency = statistics.median(times)
        print(f"dqconsole pid {proc.pid} watching {name}: CPU {cpu_1hz:.1f}% at 1 Hz, "
              f"{cpu_10hz:.1f}% at 10 Hz over {seconds:g} s; key latency median of "
              f"{keys}: {latency:.1f} ms (min {min(times):.1f}, max {max(times):.1f})")  # fmt: skip
        print(f"console_cpu_pct_1hz={cpu_1hz:.1f} console_cpu_pct_10hz={cpu_10hz:.1f} "
              f"key_latency_ms={latency:.1f}")  # fmt: skip
    finally:
        tmux.kill()
        try:
            proc.wait(timeout=10)
        except psutil.TimeoutExpired:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", help="watch this running VM (default: start a busy 4-shard one)")
    ap.add_argument("--shards", type=int, default=4, help="shards of the VM started (4)")
    ap.add_argument("--seconds", type=float, default=20.0, help="CPU window per rate")
    ap.add_argument("--keys", type=int, default=10, help="key presses timed")
    args = ap.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("bench/console.py needs tmux")
    if args.name:
        measure(args.name, dict(os.environ), args.seconds, args.keys)
        return 0
    n = str(args.shards)
    with detached_vm("--kernel", "guest:cloud", "--initrd", "guest:cloud", "--vcpus", n,
                     "--shards", n, "--append", "dq.run=shell", "--timeout", "1800") as (
        name, env,
    ):  # fmt: skip
        _make_busy(name)
        measure(name, env, args.seconds, args.keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
