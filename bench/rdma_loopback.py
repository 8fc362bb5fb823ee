#!/usr/bin/env python3
"""``dqemu loopback --transport rdma`` of dqtest over 2 shards, nested in the RDMA test host
(tests/support/rdma_host.py: TCG inside TCG), timed (not a test: it takes longer than CI
allows; see docs/ARCHITECTURE.md, "RDMA links").

In one boot of the test host: dqtest runs over 2 shards whose routers are linked by RDMA on
the rxe devices the launcher adds (``dq<pid>rxe<i>``); the devices are seen ACTIVE while it
runs and gone after it; then a second launcher is SIGKILLed once its devices are up, and
``dqemu cleanup`` must leave neither devices nor veths nor namespaces. Every check is
printed; the exit status is 0 only if dqtest passed and every check held. Last line:
``loopback_rdma_s=<dqemu loopback's seconds> host_s=<the whole boot's seconds> dqtest=<PASS|FAIL>``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loopback.dqtest import EXIT_PASS, build_dqtest  # noqa: E402
from tests.support import rdma_host  # noqa: E402
from tests.support.rdma_host import dqtest_toml  # noqa: E402

# in the test host: dqtest over RDMA, the launcher's rxe devices seen while it runs and
# gone after it; then a SIGKILLed launcher's devices, reaped by `dqemu cleanup`
SCRIPT = """
set -u
cat > /tmp/dqtest.toml <<'EOF_SPEC'
{spec}
EOF_SPEC
( while sleep 2; do
    rdma link | grep -q 'dq[0-9]*rxe1' && {{ rdma link > /tmp/links.txt; break; }}
  done ) &
# TCG inside TCG: a router's start alone can take longer than the default 30 s
export DQEMU_START_TIMEOUT=600
mkdir -p /tmp/dqlogs; T0=$(date +%s)
dqemu loopback --spec /tmp/dqtest.toml --transport rdma --log-dir /tmp/dqlogs > /tmp/out.txt 2>&1
RC=$?
echo "loopback exit $RC in $(( $(date +%s) - T0 )) s"
cat /tmp/out.txt
[ $RC -eq 33 ] || tail -n 30 /tmp/dqlogs/shard*.log  # why it failed
echo "== links while it ran"; cat /tmp/links.txt
grep -h "rdma" /tmp/dqlogs/router*.log | head -4
echo "== after"; rdma link; ip -br link | grep '^dq[0-9]'; ip netns list
dqemu loopback --spec /tmp/dqtest.toml --transport rdma > /tmp/out2.txt 2>&1 &
P=$!
for i in $(seq 600); do rdma link | grep -q "dq${{P}}rxe1" && break; sleep 0.5; done
echo "== killed launcher's"; rdma link | grep -c "dq${{P}}rxe"
kill -9 $P; wait $P
dqemu cleanup 2> /tmp/cleanup.txt; tail -1 /tmp/cleanup.txt
# this machine's run directories, seen through the overlay, are not judged (not removed)
echo "foreign run directories left: $(grep -c '^dqemu: left ' /tmp/cleanup.txt)"
echo "== after cleanup"; rdma link; ip -br link | grep '^dq[0-9]'; ip netns list
exit $RC
"""


LAUNCHERS = re.compile(r"\bdq-?\d+")


def problems(returncode: int, out: str) -> list[str]:
    """What the run's output says went wrong; empty when dqtest passed and every check held."""
    bad = []
    if returncode != EXIT_PASS or "dqtest: PASS" not in out:
        bad.append(f"dqtest did not pass (exit {returncode})")
    parts = re.split(r"^== (links while it ran|after|killed launcher's|after cleanup)\n", out,
                     flags=re.M)  # fmt: skip
    sect = dict(zip(parts[1::2], parts[2::2], strict=True)) if len(parts) == 9 else {}
    if not sect:
        return [*bad, "the script's output lacks its sections"]
    for i in (0, 1):
        if not re.search(rf"link dq\d+rxe{i}/1 state ACTIVE .* netdev dq\d+r{i}",
                         sect["links while it ran"]):  # fmt: skip
            bad.append(f"no ACTIVE rxe device {i} on its veth while the launcher ran")
    # a launcher's devices and veths are dq<pid>rxe<i> and dq<pid>r<i>, its namespaces
    # dq-<pid>-...; the test host's own rxe0/rxe1 on dqr0/dqr1 stay
    if LAUNCHERS.search(sect["after"]):
        bad.append("devices, veths or namespaces left after the launcher ended")
    if not sect["killed launcher's"].startswith("2\n"):
        bad.append("the second launcher's two rxe devices were not seen before its kill -9")
    if LAUNCHERS.search(sect["after cleanup"]):
        bad.append("`dqemu cleanup` left the SIGKILLed launcher's devices or namespaces")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iters", type=int, default=100, help="dqtest's iters= (kernel argument)")
    ap.add_argument("--wait-ms", type=int, default=20000, help="dqtest's timeout_ms=")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for the whole boot")
    ap.add_argument(
        "--data-path", choices=("router", "direct"), default="router",
        help="direct: frames between the shards go on their own queue pairs",
    )  # fmt: skip
    args = ap.parse_args()
    kernel = build_dqtest()  # here: the test host sees the build cache read-only
    # timeout_ms: a single wait in dqtest may take long in TCG inside TCG (default 2 s)
    append = f"iters={args.iters} timeout_ms={args.wait_ms}"
    spec = dqtest_toml(kernel, append=append, timeout=args.timeout - 300, data_path=args.data_path)
    t0 = time.monotonic()
    try:
        r = rdma_host.run(["sh", "-c", SCRIPT.format(spec=spec)], timeout=args.timeout)
    except (rdma_host.RdmaHostUnavailable, TimeoutError) as e:
        print(f"bench/rdma_loopback.py: {e}", file=sys.stderr)
        return 2
    host_s = time.monotonic() - t0
    print(r.output[-6000:])
    bad = problems(r.returncode, r.output)
    for b in bad:
        print(f"bench/rdma_loopback.py: {b}", file=sys.stderr)
    m = re.search(r"^loopback exit \d+ in (\d+) s$", r.output, re.M)
    print(
        f"loopback_rdma_s={m.group(1) if m else 'NA'} host_s={host_s:.0f} "
        f"dqtest={'FAIL' if bad else 'PASS'}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
