#!/usr/bin/env python3
"""A low-sharing SMP workload in the Linux test guest, over 2 shards against 1 (issue 14).

Boots the test guest with ``dq.run=work`` (guests/linux/tests/work: one gzip job pinned to
every online vCPU, each over its own copy of its input, ``--rounds`` passes each) on one
shard and over two shards with the same vCPUs, alternating the layouts within every run so
that a change in the machine's load hits each alike. The work is the same in every run, so
a run's throughput is that work (MB of input compressed) over the host's seconds between
the guest's ``work_start`` and ``work_end`` lines; the guest's own elapsed time and each
job's are printed beside it. The 2-shard layout runs once per data path (``--data-paths``,
default: the spec's default path only). The guest sees the same machine in every layout:
two shards are two NUMA nodes (one each), so the one shard gets two as well
(``--no-same-numa``: one). Prints every run, the medians per layout and the
load average; per data path ``<path>: smp_throughput_ratio=<x>``, and last, for the default
path (or the first one given): ``smp_throughput_ratio=<median 2-shard throughput / median
1-shard throughput>``. Figures, never assertions. Run it from the repository with the
venv's python:

    .venv/bin/python bench/workload.py [--vcpus 2] [--runs 3] [--rounds 12]
        [--data-paths router,direct] [--posted-writes auto|on|off] [--no-same-numa]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.linux_guest import (  # noqa: E402
    BenchError,
    GuestRun,
    Layout,
    add_vm_choices,
    boot_guest,
    checked,
    loadavg,
    vm_flags,
)
from cluster.spec import default_data_path  # noqa: E402


@dataclass(frozen=True)
class WorkRun:
    """One run's figures: host seconds of the work, the guest's own, each job's (guest
    seconds), the MB of input compressed, and the boot's whole wall time."""

    work_s: float
    guest_s: float
    job_s: tuple[float, ...]
    mb: float
    wall_s: float

    @property
    def mb_per_s(self) -> float:
        return self.mb / self.work_s


def work_figures(run: GuestRun) -> WorkRun:
    """The figures of a checked ``dq.run=work`` boot; a BenchError if any is missing."""
    work_s = run.between("work_start", "work_end")
    try:
        jobs = int(run.kv["work_jobs"])
        mb = jobs * int(run.kv["work_rounds"]) * int(run.kv["work_bytes"]) / 1e6
        job_s = tuple(float(run.kv[f"work_cpu{i}_s"]) for i in range(jobs))
        guest_s = float(run.kv["work_guest_s"])
    except (KeyError, ValueError) as e:
        raise BenchError(f"the work test printed no usable {e}") from None
    if work_s is None or work_s <= 0:
        raise BenchError("the work test's start and end lines were not both seen")
    return WorkRun(work_s, guest_s, job_s, mb, run.elapsed)


def run_layout(layout: Layout, args: argparse.Namespace) -> WorkRun:
    # the same guest-visible machine in every layout: two shards are two NUMA nodes, so
    # the one shard is too (unless --no-same-numa)
    numa = ["--numa-nodes", "2"] if layout.shards == 1 and args.same_numa else []
    run = boot_guest(
        "work", args.vcpus, layout.shards, *numa, *vm_flags(args, layout.data_path),
        guest_args=f"dq.rounds={args.rounds}", timeout=args.timeout,
    )  # fmt: skip
    checked(run, f"the work over {layout.name}", "work_jobs", str(args.vcpus))
    return work_figures(run)


def ratio(two: list[WorkRun], one: list[WorkRun]) -> float:
    """Median 2-shard throughput over median 1-shard throughput."""
    return statistics.median(r.mb_per_s for r in two) / statistics.median(r.mb_per_s for r in one)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=12, help="gzip passes per job (default 12)")
    ap.add_argument("--timeout", type=float, default=900, help="per boot, seconds")
    ap.add_argument(
        "--same-numa", action=argparse.BooleanOptionalAction, default=True,
        help="boot the one shard with 2 NUMA nodes, as the guest sees 2 shards (default: on)",
    )  # fmt: skip
    add_vm_choices(ap, default_data_path(), "the 2-shard runs")
    args = ap.parse_args()
    if args.vcpus < 2 or args.runs < 1 or args.rounds < 1:
        print("workload: --vcpus must be at least 2, --runs and --rounds at least 1",
              file=sys.stderr)  # fmt: skip
        return 2
    paths: list[str] = args.data_paths
    print(f"numa_nodes={2 if args.same_numa else 1} on one shard, 1 per shard on two shards")
    layouts = [Layout(1, None), *(Layout(2, p) for p in paths)]
    results: dict[Layout, list[WorkRun]] = {lay: [] for lay in layouts}
    try:
        for n in range(1, args.runs + 1):
            for lay in layouts:
                r = run_layout(lay, args)
                results[lay].append(r)
                print(
                    f"run={n} {lay.name} vcpus={args.vcpus} work_s={r.work_s:.2f} "
                    f"guest_s={r.guest_s:.2f} job_s={','.join(f'{s:.2f}' for s in r.job_s)} "
                    f"mb_per_s={r.mb_per_s:.3f} boot_wall_s={r.wall_s:.1f}",
                    flush=True,
                )
    except BenchError as e:
        print(f"workload: {e}", file=sys.stderr)
        return 1
    for lay, runs in results.items():
        print(
            f"{lay.name} vcpus={args.vcpus} work_s_median="
            f"{statistics.median(r.work_s for r in runs):.2f} mb_per_s_median="
            f"{statistics.median(r.mb_per_s for r in runs):.3f} "
            f"runs={' '.join(f'{r.work_s:.2f}' for r in runs)}"
        )
    print(loadavg())
    one = results[layouts[0]]
    ratios = {lay.data_path: ratio(runs, one) for lay, runs in results.items() if lay.data_path}
    for path, x in ratios.items():
        print(f"{path}: smp_throughput_ratio={x:.2f}")
    default = default_data_path()
    print(f"smp_throughput_ratio={ratios.get(default, ratios[paths[0]]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
