#!/usr/bin/env python3
"""RDMA link benchmark (not a test): boots the RDMA test host (tests/support/rdma_host.py:
Debian's generic kernel with soft-RoCE under TCG) and runs, inside it, in one boot:

* ``bench/router_latency.py --transport rdma``: the router round trip over an RDMA link
  (both routers on ``rxe0``), between two C shard ends (bench/shard_pingpong.c: what talks
  to a router is C, QEMU) and, for continuity, between two Python ones;
* the same with ``--transport tcp``, in the same guest;
* rdma-core's ``ibv_rc_pingpong`` on the same rxe device, with messages of the frames' size
  (40 bytes, as the router's RDMA messages carry them): the raw verbs round trip, busy-polled
  (its default) and with ``-e`` (sleeping on the completion channel), in blocks between the
  C ends' blocks (``router_latency.py --verbs-device``), so that both see the same load of
  this shared machine (measured minutes apart, they differed by more than the goal).

Under TCG the absolute numbers mean little, so it reports ratios. Last line:
``rdma_rtt_us=<p50> tcp_rtt_us=<p50> verbs_rtt_us=<p50> ratio=<rdma/verbs>``
(the C shard ends' p50s; for verbs the median of the blocks' means, as ibv_rc_pingpong reports
a mean per iteration, not a p50). The line before it gives the Python client's figures and
the ratio to ``-e``'s verbs round trip. The goal is that the router adds at most 2x the raw
verbs round trip.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import rdma_host  # noqa: E402

INNER = """
set -u
run_bench() {{
  tag=$1; shift
  python bench/router_latency.py --no-netns --rdma-device rxe0 "$@" \\
    --iters {iters} --messages {messages} --rounds 1 --cpus all > /tmp/bench-$tag.txt 2>&1 \\
    || {{ echo "router_latency $* failed:"; cat /tmp/bench-$tag.txt; exit 3; }}
  sed "s/^/[$tag] /" /tmp/bench-$tag.txt
}}
run_bench rdma --transport rdma --verbs-device rxe0 {extra}
run_bench tcp --transport tcp {extra}
run_bench rdma-direct --transport rdma --data-path direct --verbs-device rxe0 {extra}
run_bench tcp-direct --transport tcp --data-path direct {extra}
"""


def last_kv(text: str, tag: str, key: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith(f"[{tag}] ") and f"{key}=" in ln]
    if not lines:
        raise SystemExit(f"bench/rdma.py: no {key}= line from [{tag}]:\n{text[-3000:]}")
    m = re.search(rf"{key}=([0-9.]+)", lines[-1])
    assert m is not None
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iters", type=int, default=1000, help="round trips per measurement")
    ap.add_argument("--messages", type=int, default=5000, help="frames for the throughput part")
    ap.add_argument(
        "--busy-poll-us", type=float, help="the routers' busy_poll_us (default: theirs)"
    )
    args = ap.parse_args()
    extra = "" if args.busy_poll_us is None else f"--busy-poll-us {args.busy_poll_us}"
    script = INNER.format(iters=args.iters, messages=args.messages, extra=extra)
    try:
        r = rdma_host.run(["sh", "-c", script], timeout=1800)
    except (rdma_host.RdmaHostUnavailable, TimeoutError) as e:
        print(f"bench/rdma.py: {e}", file=sys.stderr)
        return 2
    out = r.output
    for ln in out.splitlines():
        if ln.startswith(("[rdma]", "[tcp]", "[rdma-direct]", "[tcp-direct]")):
            print(ln)
    if r.returncode != 0:
        print(out[-4000:], file=sys.stderr)
        return 1
    rdma = last_kv(out, "rdma", "router_c_rtt_us")
    tcp = last_kv(out, "tcp", "router_c_rtt_us")
    verbs = last_kv(out, "rdma", "verbs_rtt_us")
    verbs_e = last_kv(out, "rdma", "verbs_events_rtt_us")
    py_rdma = last_kv(out, "rdma", "router_rtt_us")
    py_tcp = last_kv(out, "tcp", "router_rtt_us")
    d_rdma = last_kv(out, "rdma-direct", "router_c_rtt_us")
    d_tcp = last_kv(out, "tcp-direct", "router_c_rtt_us")
    d_verbs = last_kv(out, "rdma-direct", "verbs_rtt_us")
    print(
        f"python_client: rdma_rtt_us={py_rdma:.1f} tcp_rtt_us={py_tcp:.1f} "
        f"ratio={py_rdma / verbs:.2f}; verbs_events_rtt_us={verbs_e:.1f} "
        f"ratio_events={rdma / verbs_e:.2f}"
    )
    print(
        f"router_path: rdma_rtt_us={rdma:.1f} tcp_rtt_us={tcp:.1f} verbs_rtt_us={verbs:.1f} "
        f"ratio={rdma / verbs:.2f}"
    )
    print(
        f"rdma_rtt_us={d_rdma:.1f} tcp_rtt_us={d_tcp:.1f} verbs_rtt_us={d_verbs:.1f} "
        f"ratio={d_rdma / d_verbs:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
