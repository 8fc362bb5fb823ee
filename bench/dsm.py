#!/usr/bin/env python3
"""memory_mode "dsm" against "shared" (issue 17, docs/dsm.md §12).

Boots the Linux test guest (``dq.run=cpus``) over 2 shards in each mode, takes the wall
time from launch to the guest's power-off, and from the dsm runs the shards' fault-latency
histograms (PAGE_STATS, as the routers show them before teardown: every fault of the
boot, merged over both shards; a read fault that asked for the only copy, because the
shard wrote the page right after its last read copy, counts as a write). The guest's own
clock at power-off and its ratio are printed too (the wall time includes the start-up,
alike in both modes). Last line, the ratio of wall times:
``dsm_read_fault_us=<p50> dsm_write_fault_us=<p50> dsm_boot_ratio=<dsm/shared>``.
Goals (issue 17): read fault within 3x the raw link round trip + 30 us (the raw round
trip is measured in the same run, as bench/forwarding.py does); ratio <= 1.5.

Run from the repository with the venv's python:
``.venv/bin/python bench/dsm.py [--vcpus 2] [--runs 1]``. Figures, never assertions;
on this shared 2-CPU machine only orders of magnitude.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from forwarding import raw_link_rtt_us  # noqa: E402

from bench.linux_guest import boot_cpus, guest_seconds  # noqa: E402
from cluster.router.stats import LatencyHistogram  # noqa: E402


def boot_once(mode: str, vcpus: int, timeout: int) -> tuple[float, float, list[dict[str, Any]]]:
    """(wall seconds, guest seconds at power-off, every router's stats) of one boot."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        run = boot_cpus(
            vcpus, 2, "--memory-mode", mode, "--stats-file", str(stats), timeout=timeout
        )
        routers = json.loads(stats.read_text()).get("routers", []) if stats.exists() else []
        return run.elapsed, guest_seconds(run) or 0.0, routers


def merged(routers: list[dict[str, Any]], kind: str) -> LatencyHistogram:
    """One histogram of ``kind`` faults over every shard, since each started."""
    buckets: dict[int, int] = {}
    for r in routers:
        page = r.get("page") or {}
        for i, n in page.get("since_start", {}).get(kind, {}).get("buckets", {}).items():
            buckets[int(i)] = buckets.get(int(i), 0) + int(n)
    hist = [0] * (max(buckets, default=-1) + 2)
    for i, n in buckets.items():
        hist[i] = n
    count = sum(hist)
    return LatencyHistogram(hist, count, 0, 1 << 62) if count else LatencyHistogram()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    walls: dict[str, list[float]] = {}
    guests: dict[str, list[float]] = {}
    dsm_routers: list[dict[str, Any]] = []
    for mode in ("shared", "dsm"):
        for _ in range(args.runs):
            wall, guest, routers = boot_once(mode, args.vcpus, args.timeout)
            walls.setdefault(mode, []).append(wall)
            guests.setdefault(mode, []).append(guest)
            print(f"mode={mode} shards=2 vcpus={args.vcpus} wall_s={wall:.1f} guest_s={guest:.1f}")
            if mode == "dsm":
                dsm_routers += routers
                for r in routers:
                    c = (r.get("page") or {}).get("counters", {})
                    print(
                        f"  shard {r.get('shard_id')}: read_faults={c.get('read_faults')} "
                        f"write_faults={c.get('write_faults')} upgrades={c.get('upgrades')} "
                        f"exclusive_reads={c.get('exclusive_reads')} "
                        f"invalidations_in={c.get('invalidations_in')} "
                        f"pages_in={c.get('pages_in')} deferred_hold={c.get('deferred_hold')}"
                    )
    reads, writes = merged(dsm_routers, "read_fault"), merged(dsm_routers, "write_fault")
    for name, h in (("read", reads), ("write", writes)):
        print(
            f"dsm {name} faults: {h.count}, p50 {h.percentile(50) / 1000:.1f} us, "
            f"p99 {h.percentile(99) / 1000:.1f} us"
        )
    raw = raw_link_rtt_us()  # the goal's yardstick, measured in this run
    goal = 3 * raw + 30
    got = reads.percentile(50) / 1000
    print(f"raw link round trip p50 {raw:.1f} us: read fault goal <= 3 x {raw:.1f} + 30 = "
          f"{goal:.1f} us, {'met' if got <= goal else 'not met'} ({got:.1f} us)")  # fmt: skip
    ratio = statistics.median(walls["dsm"]) / statistics.median(walls["shared"])
    if statistics.median(guests["shared"]) > 0:
        g = statistics.median(guests["dsm"]) / statistics.median(guests["shared"])
        print(f"guest clock at power-off, dsm/shared: {g:.2f}")
    print(
        f"dsm_read_fault_us={reads.percentile(50) / 1000:.1f} "
        f"dsm_write_fault_us={writes.percentile(50) / 1000:.1f} dsm_boot_ratio={ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
