#!/usr/bin/env python3
"""Forwarding microbenchmark: the latencies dqtest measures, as a table (not a test).

Boots dqtest (guests/dqtest) on one shard — a plain patched-QEMU process — and prints one
row per measured path: IPI round trips between every pair of vCPUs, PIO and MMIO round
trips from every vCPU, MSI delivery, shared-memory round trips and one-way TSC hand-offs.
Once the shard launcher runs multi-shard VMs the same kernel gives the cross-shard numbers;
this script then grows a ``--shards`` option.

Usage: bench/forwarding.py [--vcpus 4] [--iters 500] [--machine q35] [--json FILE]
Last line: ``ipi_rtt_p50_ns=<median over pairs> pio_p50_ns=<..> mmio_p50_ns=<..>
mem_rtt_p50_ns=<..> status=<PASS|FAIL>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.qemu_build import ensure_qemu  # noqa: E402
from loopback.dqtest import Latency, build_dqtest, run_dqtest  # noqa: E402

GROUPS = "pingpong,pio,mmio,msi,mem,tsc"


def median_p50_ns(lats: list[Latency]) -> int:
    vals = [lat.values["p50_ns"] for lat in lats if "p50_ns" in lat.values]
    return int(statistics.median(vals)) if vals else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=4)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--iters", type=int, default=500, help="samples per path (max 8192)")
    ap.add_argument("--machine", choices=("q35", "pc"), default="q35")
    ap.add_argument("--idle", choices=("hlt", "poll"), default="hlt", help="AP idle mode")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--qemu", type=Path, help="QEMU binary (default: the patched build)")
    ap.add_argument("--json", type=Path, help="also write the latencies as JSON here")
    args = ap.parse_args()

    qemu = args.qemu or ensure_qemu(quiet=True)
    kernel = build_dqtest()
    append = f"only={GROUPS} iters={args.iters} idle={args.idle}"
    run = run_dqtest(
        kernel, qemu=qemu, shards=args.shards, append=append, vcpus=args.vcpus,
        machine=args.machine, timeout=args.timeout,
    )  # fmt: skip
    r = run.result
    if run.timed_out or not r.complete:
        print(f"forwarding: dqtest did not finish\n{run.output[-2000:]}", file=sys.stderr)
        return 1

    print(f"{'path':<14} {'label':<12} {'p50_ns':>10} {'p99_ns':>10} {'p50_cyc':>10} {'n':>6}")
    for lat in r.latencies:
        v = lat.values
        print(
            f"{lat.name:<14} {lat.label:<12} {v.get('p50_ns', 0):>10} {v.get('p99_ns', 0):>10} "
            f"{v.get('p50_cycles', 0):>10} {lat.n:>6}"
        )
    for c in r.failures:
        print(f"not ok {c.number} - {c.description}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                [{"name": x.name, "label": x.label, **x.values} for x in r.latencies], indent=1
            )
        )
    pio = r.latencies_named("pio_cmos")
    mmio = r.latencies_named("mmio_ioapic") + r.latencies_named("mmio_hpet")
    print(
        f"ipi_rtt_p50_ns={median_p50_ns(r.latencies_named('ipi_rtt'))} "
        f"pio_p50_ns={median_p50_ns(pio)} mmio_p50_ns={median_p50_ns(mmio)} "
        f"mem_rtt_p50_ns={median_p50_ns(r.latencies_named('mem_rtt'))} status={r.status}"
    )
    return 0 if r.passed else 1


if __name__ == "__main__":
    sys.exit(main())
