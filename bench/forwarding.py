#!/usr/bin/env python3
"""Forwarding microbenchmark: dqtest's latencies, local and forwarded (not a test).

Boots dqtest (guests/dqtest) twice with the same vCPU count: on one shard, where every
path is local, and over two shards (loopback: each shard in its own network namespace),
where an IPI between CPUs of different shards, and a PIO or MMIO access from a CPU on the
shard that owns no platform device, is forwarded through two routers. Beside them it
measures the raw one-hop socket round trip between two namespaces (bench/router_latency.py,
Python, blocking sockets): the physical floor of any forwarded round trip.

Per mechanism it prints the p50 of the local paths and of the forwarded paths. Only the
pairs and CPUs that actually cross shards count as forwarded.

Usage: bench/forwarding.py [--vcpus 2] [--iters 300] [--machine q35] [--json FILE]
Last line, all p50 over 2 shards, in µs:
``ipi_rtt_us=<p50> pio_rtt_us=<p50> mmio_rtt_us=<p50> raw_link_rtt_us=<p50>``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.errors import DqemuError  # noqa: E402
from cluster.qemu_build import ensure_qemu  # noqa: E402
from cluster.spec import VMSpec  # noqa: E402
from loopback.dqtest import Latency, build_dqtest, dqtest_spec, run_dqtest  # noqa: E402

GROUPS = "pingpong,pio,mmio"
# HPET counter reads are served by every shard (patch 0018), so MMIO means the IOAPIC.
MECHANISMS = {"ipi": ("ipi_rtt",), "pio": ("pio_cmos",), "mmio": ("mmio_ioapic",)}


def label_cpus(label: str) -> list[int]:
    """'cpu0-cpu3' -> [0, 3]; 'cpu2' -> [2]."""
    return [int(n) for n in re.findall(r"cpu(\d+)", label)]


def forwarded(lat: Latency, mechanism: str, spec: VMSpec) -> bool:
    cpus = label_cpus(lat.label)
    shards = {spec.shard_of_vcpu(c) for c in cpus}
    if mechanism == "ipi":
        return len(shards) > 1
    return shards != {spec.io_shard}


def p50_us(lats: list[Latency]) -> float | None:
    vals = [lat.values["p50_ns"] for lat in lats if "p50_ns" in lat.values]
    return round(statistics.median(vals) / 1000, 2) if vals else None


def raw_link_rtt_us() -> float:
    """The Python raw one-hop round trip between two namespaces, from router_latency.py."""
    cmd = [sys.executable, str(ROOT / "bench" / "router_latency.py"), "--iters", "2000",
           "--messages", "20000", "--rounds", "1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    m = re.search(r"raw_rtt_us=([0-9.]+)", last)
    if out.returncode != 0 or not m:
        raise DqemuError(f"router_latency.py failed (exit {out.returncode}): {out.stderr[-500:]}")
    return float(m.group(1))


def run(kernel: Path, qemu: Path, shards: int, args: argparse.Namespace) -> list[Latency]:
    append = f"only={GROUPS} iters={args.iters} idle=hlt"
    r = run_dqtest(
        kernel, qemu=qemu, shards=shards, append=append, vcpus=args.vcpus,
        machine=args.machine, timeout=args.timeout,
    )  # fmt: skip
    if r.returncode is None or not r.result.complete:
        raise DqemuError(f"dqtest over {shards} shard(s) did not finish:\n{r.output[-1500:]}")
    for c in r.result.failures:
        print(f"  ({shards} shard(s)) not ok {c.number} - {c.description}", file=sys.stderr)
    return list(r.result.latencies)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--iters", type=int, default=300, help="samples per path (max 8192)")
    ap.add_argument("--machine", choices=("q35", "pc"), default="q35")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", type=Path, help="also write every latency row as JSON here")
    args = ap.parse_args()
    if args.vcpus < 2:
        print("forwarding: --vcpus must be at least 2 (one per shard)", file=sys.stderr)
        return 2
    try:
        qemu = ensure_qemu(quiet=True)
        kernel = build_dqtest()
        spec2 = dqtest_spec(kernel, shards=2, vcpus=args.vcpus, machine=args.machine)
        local = run(kernel, qemu, 1, args)
        sharded = run(kernel, qemu, 2, args)
        raw = raw_link_rtt_us()
    except DqemuError as e:
        print(f"forwarding: {e}", file=sys.stderr)
        return 1

    rows: list[dict[str, object]] = []
    result: dict[str, float | None] = {}
    print(f"{'mechanism':<10} {'1 shard p50_us':>15} {'2 shards local':>15} {'2 shards fwd':>13}")
    for mech, names in MECHANISMS.items():
        one = [x for x in local if x.name in names]
        two = [x for x in sharded if x.name in names]
        fwd = [x for x in two if forwarded(x, mech, spec2)]
        stay = [x for x in two if not forwarded(x, mech, spec2)]
        result[mech] = p50_us(fwd)
        print(f"{mech:<10} {p50_us(one)!s:>15} {p50_us(stay)!s:>15} {result[mech]!s:>13}")
        for shards, lats in ((1, one), (2, two)):
            rows += [{"shards": shards, "name": x.name, "label": x.label, **x.values} for x in lats]
    print(f"{'raw link':<10} {'':>15} {'':>15} {raw:>13}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(
        f"ipi_rtt_us={result['ipi']} pio_rtt_us={result['pio']} mmio_rtt_us={result['mmio']} "
        f"raw_link_rtt_us={raw}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
