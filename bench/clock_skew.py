#!/usr/bin/env python3
"""Clock skew between the shards of a VM, measured two ways.

1. QEMU side (Linux guest, ``dq.run=sleep``, QMP on every shard): each shard's
   ``QEMU_CLOCK_VIRTUAL`` minus the VM-wide instant (the ``clock-vm-offset-ns`` property of
   its ``dqemu-shard`` object) after the start, and again after a stop/cont at one instant
   on every shard (``clock-stop-at-ns`` / ``clock-cont-at-ns``, then QMP ``stop`` / ``cont``
   shard by shard; once more with the instant given right after the command). The skew
   is the spread of those offsets. Also printed: each shard's
   measured host-clock offset to the clock master, its round trip and the error bound
   RTT/2 that the offset would have between hosts, and, for reference, the skew that plain
   per-shard ``stop``/``cont`` (no common instant, stock QEMU behaviour) leaves behind.
2. Guest side (dqtest ``only=tsc``): TSC values handed from CPU A to CPU B through shared
   memory. Every sample B - A is a handoff latency (>= 0) plus the skew s of B's clock
   against A's, so -min(A - B) <= s <= min(B - A): the guest can bound the skew by the
   fastest handoff, not measure it below that. Printed per pair of CPUs on different
   shards, with the midpoint as the estimate; dqtest's largest backward step is printed too.

3. Across hosts, played on one machine (``--skew OFFSET_NS DRIFT_PPM``): shard 1's view of its
   host clock is skewed by the test knob of docs/spec.md (``test_clock_skew_ns``,
   ``test_clock_drift_ppm``), with ``clock_sync`` on (and, with ``--also-off``, off). Every
   ``--interval`` s for ``--duration`` s it prints the true error of shard 1's virtual clock
   against shard 0's (``clock-virtual-minus-host-ns`` of each: the virtual clock minus the
   one real host clock, so the difference is the error whatever QMP's latency) next to the
   error bound shard 1 states (``clock-sync-bound-ns``), its drift estimate and residual.
   Last lines: ``offset_error_max_ns=<n>`` (after the first ``--settle`` s) and
   ``offset_error_within_bound=<k>/<n>`` per mode.

Last line (modes 1 and 2): ``max_skew_ns=<n>``, the largest spread of the shards' virtual
clocks found by the QEMU-side measurement (after the start and after a stop/cont at one
instant); the line before it, ``guest_skew_bound_ns=<n>``, the largest guest-side bound.
Run from the repository with the venv's python:
``.venv/bin/python bench/clock_skew.py [--shards 2 4]``, or for mode 3
``.venv/bin/python bench/clock_skew.py --skew 5000000000 200 [--also-off]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.errors import DqemuError  # noqa: E402
from cluster.spec import even_placement  # noqa: E402
from loopback.dqtest import build_dqtest, run_dqtest  # noqa: E402
from loopback.qmp import ShardMonitor  # noqa: E402

OBJ = "/objects/dqemu"
START_TIMEOUT = 300.0
PAUSE_S = 0.5


class Bench(Exception):
    """A measurement that could not be made; the message says why."""


def wait_for(what: str, ok: Callable[[], bool], alive: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if not alive():
            raise Bench(f"the VM ended while waiting for {what}")
        if time.monotonic() > deadline:
            raise Bench(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


class Shards:
    """QMP to every shard of a running loopback VM."""

    def __init__(self, qmp_dir: Path, n: int, alive: Callable[[], bool]) -> None:
        self.mons = [ShardMonitor(f"shard{k}", qmp_dir / f"shard{k}.qmp") for k in range(n)]
        for m in self.mons:
            wait_for(f"{m.path}", m.path.exists, alive, START_TIMEOUT)
            m.connect(timeout=START_TIMEOUT, alive=alive)

    def get(self, k: int, prop: str) -> Any:
        return self.mons[k].cmd("qom-get", path=OBJ, property=prop)

    def all(self, prop: str) -> list[int]:
        return [int(self.get(k, prop)) for k in range(len(self.mons))]

    def set_all(self, prop: str, value: int) -> None:
        for m in self.mons:
            m.cmd("qom-set", path=OBJ, property=prop, value=value)

    def each(self, command: str) -> None:
        for m in self.mons:
            m.cmd(command)

    def close(self) -> None:
        for m in self.mons:
            m.close()


@contextmanager
def running_vm(cmd: list[str], qmp_dir: Path, shards: int) -> Iterator[Shards]:
    """``dqemu loopback`` by ``cmd`` with QMP sockets in ``qmp_dir``, every shard's clock
    running; torn down on the way out."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    sh: Shards | None = None
    try:
        alive = lambda: proc.poll() is None  # noqa: E731
        sh = Shards(qmp_dir, shards, alive)
        s = sh
        wait_for("every shard's clock to run",
                 lambda: all(s.get(k, "clock-running") for k in range(shards)),
                 alive, START_TIMEOUT)  # fmt: skip
        yield sh
    except DqemuError as e:
        raise Bench(str(e)) from e
    finally:
        if sh is not None:
            sh.close()
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spread(values: list[int]) -> int:
    return max(values) - min(values)


def vm_offsets(sh: Shards, samples: int) -> tuple[list[int], int]:
    """Per-shard clock offsets and the largest spread over several readings."""
    worst, last = 0, [0]
    for _ in range(samples):
        last = sh.all("clock-vm-offset-ns")
        worst = max(worst, spread(last))
    return last, worst


def qemu_side(shards: int, vcpus: int, samples: int) -> int:
    with tempfile.TemporaryDirectory(prefix="dqemu-clock-") as tmp:
        qmp_dir = Path(tmp)
        cmd = [
            sys.executable, "-m", "cluster.cli", "loopback", "--kernel", "guest:cloud",
            "--initrd", "guest:cloud", "--append", "dq.run=sleep", "--vcpus", str(vcpus),
            "--shards", str(shards), "--timeout", "600", "--qmp-dir", str(qmp_dir),
        ]  # fmt: skip
        with running_vm(cmd, qmp_dir, shards) as sh:
            est, rtt = sh.all("clock-estimate-ns"), sh.all("clock-rtt-ns")
            used = sh.all("clock-offset-ns")
            for k in range(1, shards):
                print(f"shards={shards} shard{k}: host clock offset to shard0: used={used[k]} "
                      f"estimate={est[k]} rtt={rtt[k]} error_bound={rtt[k] // 2} (ns)")  # fmt: skip
            offs, start_skew = vm_offsets(sh, samples)
            print(f"shards={shards} start: vm_offsets_ns={offs} skew_ns={start_skew}")

            # a VM-wide stop/cont, each shard told the common instant first
            before = offs
            sh.set_all("clock-stop-at-ns", int(sh.get(0, "clock-vm-instant-ns")))
            sh.each("stop")
            time.sleep(PAUSE_S)
            sh.set_all("clock-cont-at-ns", int(sh.get(0, "clock-vm-instant-ns")))
            sh.each("cont")
            offs, cont_skew = vm_offsets(sh, samples)
            paused = [b - a for a, b in zip(offs, before, strict=True)]
            print(f"shards={shards} stop/cont at one instant: vm_offsets_ns={offs} "
                  f"skew_ns={cont_skew} paused_ns={paused}")  # fmt: skip

            # the same, each shard told the instant only after its stop / cont
            at = int(sh.get(0, "clock-vm-instant-ns"))
            sh.each("stop")
            sh.set_all("clock-stop-at-ns", at)
            time.sleep(PAUSE_S)
            at = int(sh.get(0, "clock-vm-instant-ns"))
            sh.each("cont")
            sh.set_all("clock-cont-at-ns", at)
            offs, late_skew = vm_offsets(sh, samples)
            print(f"shards={shards} stop/cont, instant given after the command: "
                  f"vm_offsets_ns={offs} skew_ns={late_skew}")  # fmt: skip

            # for reference: shard-by-shard stop/cont without a common instant
            sh.each("stop")
            time.sleep(PAUSE_S)
            sh.each("cont")
            offs, naive = vm_offsets(sh, samples)
            print(f"shards={shards} stop/cont without instants (stock): skew_ns={naive}")
            return max(start_skew, cont_skew, late_skew)


def guest_side(shards: int, vcpus: int, iters: int) -> int:
    run = run_dqtest(build_dqtest(), shards=shards, vcpus=vcpus, append=f"only=tsc iters={iters}",
                     timeout=600)  # fmt: skip
    r = run.result
    if not r.complete:
        raise Bench(f"dqtest over {shards} shards did not complete: {run.stderr}")
    khz = int(r.info.get("calib pit", {}).get("tsc_khz", "0") or 0) or 1_000_000
    shard_of = {c: s for s, cpus in enumerate(even_placement(vcpus, shards)) for c in cpus}
    mins = {lat.label: lat.get("min_cycles") for lat in r.latencies_named("tsc_handoff")}
    bounds = []
    for a in range(vcpus):
        for b in range(a + 1, vcpus):
            if shard_of[a] == shard_of[b]:
                continue
            ab, ba = mins.get(f"cpu{a}->cpu{b}"), mins.get(f"cpu{b}->cpu{a}")
            if ab is None or ba is None:
                raise Bench(f"dqtest reported no handoff for cpu{a}/cpu{b}")
            lo, hi = -ba * 1_000_000 // khz, ab * 1_000_000 // khz
            bounds.append(max(-lo, hi))
            pair = f"cpu{b}(shard{shard_of[b]}) vs cpu{a}(shard{shard_of[a]})"
            print(f"shards={shards} guest {pair}: {lo} <= skew_ns <= {hi}, "
                  f"estimate {(lo + hi) // 2}")  # fmt: skip
    back = r.info.get("tsc", {}).get("max_backward_ns", "?")
    print(f"shards={shards} guest: skew_bound_ns median={statistics.median(bounds):.0f} "
          f"max={max(bounds)} tsc_max_backward_ns={back}")  # fmt: skip
    return max(bounds)


SKEW_SPEC = """
[vm]
vcpus = 2
memory = 256
clock_sync = "{sync}"
[boot]
kernel = "guest:cloud"
initrd = "guest:cloud"
append = "dq.run=sleep"
timeout = 600
[[shard]]
id = 0
vcpus = [0]
[[shard]]
id = 1
vcpus = [1]
test_clock_skew_ns = {offset}
test_clock_drift_ppm = {drift}
"""


def skew_run(sync: str, offset: int, drift: int, duration: float, interval: float,
             settle: float) -> int:  # fmt: skip
    """Shard 1's virtual clock error against shard 0's under the knob; the largest |error|
    after ``settle`` s."""
    with tempfile.TemporaryDirectory(prefix="dqemu-clockskew-") as tmp:
        spec = Path(tmp) / "vm.toml"
        spec.write_text(SKEW_SPEC.format(sync=sync, offset=offset, drift=drift))
        qmp_dir = Path(tmp) / "qmp"
        qmp_dir.mkdir()
        cmd = [sys.executable, "-m", "cluster.cli", "loopback", "--spec", str(spec),
               "--qmp-dir", str(qmp_dir)]  # fmt: skip
        with running_vm(cmd, qmp_dir, 2) as sh:
            used, rtt = sh.get(1, "clock-offset-ns"), sh.get(1, "clock-rtt-ns")
            print(f"sync={sync} skew={offset} ns drift={drift} ppm: "
                  f"shard1 offset to shard0 used={used} rtt={rtt} ns")  # fmt: skip
            t0 = time.monotonic()
            worst, within, counted = 0, 0, 0
            while (t := time.monotonic() - t0) < duration:
                v0, v1 = sh.all("clock-virtual-minus-host-ns")
                err = v1 - v0
                bound = int(sh.get(1, "clock-sync-bound-ns"))
                print(f"sync={sync} t={t:5.1f}s error_ns={err} bound_ns={bound} "
                      f"drift_ppb={sh.get(1, 'clock-sync-drift-ppb')} "
                      f"residual_ns={sh.get(1, 'clock-sync-residual-ns')} "
                      f"estimates={sh.get(1, 'clock-sync-estimates')}")  # fmt: skip
                if t >= settle:
                    worst = max(worst, abs(err))
                    counted += 1
                    within += sync == "on" and abs(err) <= bound
                time.sleep(interval)
            print(f"sync={sync} offset_error_max_ns={worst}")
            if sync == "on":
                print(f"sync={sync} offset_error_within_bound={within}/{counted}")
            return worst


def skew_main(args: argparse.Namespace) -> int:
    offset, drift = args.skew
    modes = ["on", "off"] if args.also_off else ["on"]
    try:
        worst = {m: skew_run(m, offset, drift, args.duration, args.interval, args.settle)
                 for m in modes}  # fmt: skip
    except (Bench, DqemuError) as e:
        print(f"clock_skew: {e}", file=sys.stderr)
        return 1
    for m in modes:
        print(f"clock_sync={m} offset_error_max_ns={worst[m]}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--vcpus", type=int, default=4)
    ap.add_argument("--samples", type=int, default=5, help="QMP readings per phase")
    ap.add_argument("--iters", type=int, default=200, help="dqtest TSC handoffs per pair")
    ap.add_argument("--no-guest", action="store_true", help="skip the dqtest measurement")
    ap.add_argument("--skew", type=int, nargs=2, metavar=("OFFSET_NS", "DRIFT_PPM"),
                    help="mode 3: shard 1's host clock skewed by the test knob")  # fmt: skip
    ap.add_argument("--also-off", action="store_true", help="--skew: also without clock sync")
    ap.add_argument("--duration", type=float, default=30.0, help="--skew: seconds measured")
    ap.add_argument("--interval", type=float, default=1.0, help="--skew: seconds between reads")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="--skew: seconds before errors count")  # fmt: skip
    args = ap.parse_args()
    if args.skew is not None:
        return skew_main(args)
    bad = [n for n in args.shards if n < 2 or n > args.vcpus]
    if bad:
        ap.error(f"--shards: each count must be 2..{args.vcpus} (got {bad[0]})")
    worst, guest = 0, 0
    try:
        for n in args.shards:
            worst = max(worst, qemu_side(n, args.vcpus, args.samples))
            if not args.no_guest:
                guest = max(guest, guest_side(n, args.vcpus, args.iters))
    except (Bench, DqemuError) as e:
        print(f"clock_skew: {e}", file=sys.stderr)
        return 1
    if not args.no_guest:
        print(f"guest_skew_bound_ns={guest}")
    print(f"max_skew_ns={worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
