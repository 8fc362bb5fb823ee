#!/usr/bin/env python3
"""Forwarding microbenchmark: dqtest's latencies, local and forwarded (not a test).

Boots dqtest (guests/dqtest) twice with the same vCPU count: on one shard, where every
path is local, and over two shards (loopback: each shard in its own network namespace),
where an IPI between CPUs of different shards, and a PIO or MMIO access from a CPU on the
shard that owns no platform device, is forwarded through two routers. Beside them it
measures the raw one-hop socket round trip between two namespaces (bench/router_latency.py,
Python, blocking sockets): the physical floor of any forwarded round trip.

The 2-shard run is made once per data path (``--data-paths``, default both: through the
routers, and on direct shard-to-shard links, docs/protocol.md "Direct shard links").

Per mechanism it prints the p50 of the local paths and of the forwarded paths. Only the
pairs and CPUs that actually cross shards count as forwarded. ``pio`` and ``mmio`` are one
access each (dqtest's ``pio_read``, a CMOS data read, and ``mmio_read``, an IOAPIC window
read), so one forwarded round trip, comparable with the raw link's; ``ipi`` is a ping and
its pong. The ``pair`` rows are dqtest's index-write-plus-data-read samples (``pio_cmos``,
``mmio_ioapic``): two forwarded accesses each; before 2026-12-04 the ``pio`` and ``mmio``
figures were these. Per data path it also prints
the thread wake-ups per forwarded frame: the voluntary context switches of every thread of
every shard QEMU and router of the run (getrusage of the reaped children), divided by the
frames that crossed shards (the routers' counters, which include the direct links). It is
an upper bound: boot, idle timer ticks and housekeeping wake threads too. And the
forwarded PIO frames, how many of them were posted writes (no reply: docs/shard-design.md,
"Posted writes"; ``--posted-writes off`` to compare) and the code-invalidation frames, and
the shards' own wake-up counters (docs/shard-design.md §15): replies a vCPU caught by
polling or read from the link themselves, accesses the owner served and interrupts it
delivered in its receive thread (``--reply-poll off``, ``--serve-in-rx off``,
``--reply-read off``, ``--irq-in-rx off`` to compare), the config cycles a shard made
itself (``--local-config off`` to compare), and the halts a vCPU ended by polling for its
wake-up or by sleeping (``--halt-poll off`` to compare).

Usage: bench/forwarding.py [--vcpus 2] [--iters 300] [--machine q35] [--json FILE]
       [--data-paths router,direct] [--posted-writes auto|on|off]
       [--reply-poll on|off] [--serve-in-rx on|off] [--reply-read on|off]
       [--irq-in-rx on|off] [--local-config on|off] [--halt-poll on|off]
       [--transport tcp|rdma] [--link-timeout S]
Last line, all p50 over 2 shards on the default data path (the spec's, direct), in µs:
``ipi_rtt_us=<p50> pio_rtt_us=<p50> mmio_rtt_us=<p50> raw_link_rtt_us=<p50>``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.linux_guest import add_vm_choices, vm_extra  # noqa: E402
from cluster.errors import DqemuError  # noqa: E402
from cluster.qemu_build import ensure_qemu  # noqa: E402
from cluster.spec import DATA_PATHS, DEFAULT_DATA_PATH, TRANSPORTS, VMSpec  # noqa: E402
from loopback.dqtest import Latency, build_dqtest, dqtest_spec, run_dqtest  # noqa: E402

GROUPS = "pingpong,pio,mmio"
# HPET counter reads are served by every shard (patch 0018), so MMIO means the IOAPIC.
# "pio" and "mmio" are one access each (a CMOS data read, an IOAPIC window read: one
# forwarded round trip, set against the raw link's); the "pair" rows time dqtest's
# index-write-plus-data-read samples, two forwarded accesses each, as printed before.
MECHANISMS = {
    "ipi": ("ipi_rtt",), "pio": ("pio_read",), "mmio": ("mmio_read",),
    "pio pair": ("pio_cmos",), "mmio pair": ("mmio_ioapic",),
}  # fmt: skip


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


def sharded_vm(args: argparse.Namespace) -> dict[str, object]:
    """The 2-shard runs' own [vm] keys: the transport, and a longer link timeout if asked."""
    vm: dict[str, object] = {"transport": args.transport}
    if args.link_timeout is not None:
        vm["link_timeout"] = args.link_timeout
    return vm


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


def run(
    kernel: Path, qemu: Path, shards: int, args: argparse.Namespace, data_path: str | None = None
) -> tuple[list[Latency], float | None, dict[str, int]]:
    """The latencies, the wake-ups per forwarded frame (None on one shard) and the
    forwarding counters (``posted``: the PIO writes that went without a reply) with the
    shards' wake-up counters summed over the shards (``replies_polled``, ...)."""
    append = f"only={GROUPS} iters={args.iters} idle=hlt"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
    r = run_dqtest(
        kernel, qemu=qemu, shards=shards, append=append, vcpus=args.vcpus,
        machine=args.machine, timeout=args.timeout, data_path=data_path,
        vm_extra={**vm_extra(args), **(sharded_vm(args) if shards > 1 else {})},
    )  # fmt: skip
    wakeups = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - before
    if r.returncode is None or not r.result.complete:
        raise DqemuError(f"dqtest over {shards} shard(s) did not finish:\n{r.output[-1500:]}")
    for c in r.result.failures:
        print(f"  ({shards} shard(s)) not ok {c.number} - {c.description}", file=sys.stderr)
    frames = sum(r.forwarded.values())
    per = round(wakeups / frames, 1) if shards > 1 and frames else None
    counts = dict(r.forwarded)
    for shard in r.wakeups.values():
        for key, value in shard.items():
            counts[key] = counts.get(key, 0) + value
    return list(r.result.latencies), per, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--iters", type=int, default=300, help="samples per path (max 8192)")
    ap.add_argument("--machine", choices=("q35", "pc"), default="q35")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", type=Path, help="also write every latency row as JSON here")
    add_vm_choices(ap, ",".join(DATA_PATHS), "the 2-shard runs")
    ap.add_argument(
        "--transport", choices=TRANSPORTS, default="tcp",
        help="the 2-shard runs' vm.transport (rdma: where the kernel has rxe, e.g. in the "
        "RDMA test host, bench/rdma.py)",
    )  # fmt: skip
    ap.add_argument(
        "--link-timeout", type=float,
        help="the 2-shard runs' vm.link_timeout in seconds (TCG inside TCG: routers of a "
        "healthy link were seen silent for over the default 1 s)",
    )  # fmt: skip
    args = ap.parse_args()
    paths: list[str] = args.data_paths
    if args.vcpus < 2:
        print("forwarding: --vcpus must be at least 2 (one per shard)", file=sys.stderr)
        return 2
    try:
        qemu = ensure_qemu(quiet=True)
        kernel = build_dqtest()
        spec2 = dqtest_spec(kernel, shards=2, vcpus=args.vcpus, machine=args.machine)
        local, _, _ = run(kernel, qemu, 1, args)
        sharded = {path: run(kernel, qemu, 2, args, path) for path in paths}
        raw = raw_link_rtt_us()
    except DqemuError as e:
        print(f"forwarding: {e}", file=sys.stderr)
        return 1

    rows: list[dict[str, object]] = []
    result: dict[str, dict[str, float | None]] = {path: {} for path in paths}
    head = "".join(f" {'fwd ' + path:>13} {'local ' + path:>13}" for path in paths)
    print(f"{'mechanism':<10} {'1 shard p50_us':>15}{head}")
    for mech, names in MECHANISMS.items():
        one = [x for x in local if x.name in names]
        rows += [{"shards": 1, "name": x.name, "label": x.label, **x.values} for x in one]
        line = f"{mech:<10} {p50_us(one)!s:>15}"
        for path in paths:
            two = [x for x in sharded[path][0] if x.name in names]
            fwd = [x for x in two if forwarded(x, mech, spec2)]
            stay = [x for x in two if not forwarded(x, mech, spec2)]
            result[path][mech] = p50_us(fwd)
            line += f" {result[path][mech]!s:>13} {p50_us(stay)!s:>13}"
            rows += [
                {"shards": 2, "data_path": path, "name": x.name, "label": x.label, **x.values}
                for x in two
            ]
        print(line)
    print(f"{'raw link':<10} {raw:>15}")
    for path in paths:
        r = result[path]
        ratio = {m: round(v / raw, 1) if v and raw else None for m, v in r.items()}
        fwd = sharded[path][2]
        print(
            f"{path}: wakeups_per_forwarded_frame={sharded[path][1]} "
            f"pio_over_raw={ratio['pio']} ipi_over_raw={ratio['ipi']} "
            f"mmio_over_raw={ratio['mmio']} pio_frames={fwd.get('pio')} "
            f"posted_writes={fwd.get('posted')} "
            f"code_invalidate_frames={fwd.get('code_invalidate')} "
            f"replies_polled={fwd.get('replies_polled')} replies_slept={fwd.get('replies_slept')} "
            f"served_in_rx={fwd.get('served_in_rx')} replies_read={fwd.get('replies_read')} "
            f"rx_woken_empty={fwd.get('rx_woken_empty')} irqs_in_rx={fwd.get('irqs_in_rx')} "
            f"config_local={fwd.get('config_local')} halts_polled={fwd.get('halts_polled')} "
            f"halts_slept={fwd.get('halts_slept')}"
        )
    print(f"loadavg: {Path('/proc/loadavg').read_text().strip()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    last = result.get(DEFAULT_DATA_PATH) or result[paths[0]]
    print(
        f"ipi_rtt_us={last['ipi']} pio_rtt_us={last['pio']} mmio_rtt_us={last['mmio']} "
        f"raw_link_rtt_us={raw}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
