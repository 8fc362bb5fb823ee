"""The RDMA transport for real: one boot of the RDMA test host (Debian's generic kernel
with soft-RoCE, tests/support/rdma_host.py) runs, over rxe devices, the TCP router tests'
request, broadcast, control, ordering, fuzz and loss cases with DQEMU_TEST_TRANSPORT=rdma, and the
RDMA link's own cases (tests/rdma/). One boot for all of it: a boot costs 30-90 s.

`dqemu loopback --transport rdma` of dqtest over 2 shards in the test host (nested TCG) on the
routers' path takes longer than a test may: it is bench/rdma_loopback.py, which checks and
times it. On the direct path (the shards' own queue pairs) a short dqtest run is a test here."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cluster.vm.exit_policy import EXIT_SHARD_FAILED
from loopback.dqtest import EXIT_PASS, build_dqtest
from tests.support import rdma_host

pytestmark = [pytest.mark.integration, pytest.mark.testhost]

# the TCP router tests that run unchanged over RDMA links: request, broadcast, control,
# ordering, fuzz and link loss. Not the cases where the test itself plays a peer router on
# a raw TCP link (ordering's [raw], test_router_fuzz's auth and after-auth fuzz): over RDMA
# a peer's frames come by queue pair, and tests/rdma fuzzes what an RDMA peer sends at set-up
TCP_CASES = [
    "tests/unit/test_router_inprocess.py::test_request_reply_broadcast",
    "tests/unit/test_router_inprocess.py::test_control_api",
    "tests/unit/test_router_ordering.py::test_link_state_does_not_overtake_earlier_frames[router]",
    "tests/unit/test_router_fuzz.py::test_fuzz_local_and_peer_links",
    "tests/unit/test_router_inprocess.py::test_peer_loss_reported",
    "tests/unit/test_router_processes.py::test_kill9_fails_pending_requests_promptly",
]


def _kernel_installable() -> bool:
    r = subprocess.run(
        ["apt-cache", "policy", rdma_host.KERNEL_PACKAGE],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return "Candidate:" in r.stdout and "Candidate: (none)" not in r.stdout


def _need_test_host() -> None:
    """Skip where the test host's kernel is neither installed nor installable."""
    try:
        rdma_host.generic_kernel()
    except rdma_host.RdmaHostUnavailable as e:
        if not _kernel_installable():
            pytest.skip(f"{e}, and apt has no {rdma_host.KERNEL_PACKAGE} to install")
        raise


def test_rdma_links_in_the_test_host() -> None:
    _need_test_host()
    cmd = [
        "env", "DQEMU_TEST_TRANSPORT=rdma", "DQEMU_TEST_RDMA_DEVICE=rxe0",
        "DQEMU_TEST_TIMEOUT_SCALE=10",
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
        *TCP_CASES, "tests/rdma",
    ]  # fmt: skip
    r = rdma_host.run(cmd, timeout=1500)
    tail = r.output[-8000:]
    assert r.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail and " skipped" not in tail, tail


# in the test host: dqtest over 2 shards whose frames go on the shards' own queue pairs
# (transport "rdma", data_path "direct"); the shards' logs name the device of each link
DIRECT_SCRIPT = """
set -u
cat > /tmp/dqtest.toml <<'EOF_SPEC'
{spec}
EOF_SPEC
export DQEMU_START_TIMEOUT=600
mkdir -p /tmp/dqlogs
dqemu loopback --spec /tmp/dqtest.toml --transport rdma --log-dir /tmp/dqlogs > /tmp/out.txt 2>&1
RC=$?
tail -n 4 /tmp/out.txt
echo "== links"; grep -h "on RDMA device" /tmp/dqlogs/shard*.log
echo "== router errors"; grep -h "ERROR" /tmp/dqlogs/router*.log
echo "== exit $RC"
# a peer that dies: shard 1's QEMU is SIGKILLed once both RDMA links are up
mkdir -p /tmp/dqlogs2
sed -i 's/iters=[0-9]*/iters=1000000/' /tmp/dqtest.toml
dqemu loopback --spec /tmp/dqtest.toml --transport rdma --log-dir /tmp/dqlogs2 \\
  > /tmp/out2.txt 2>&1 &
L=$!
for i in $(seq 1200); do
  [ "$(cat /tmp/dqlogs2/shard*.log 2>/dev/null | grep -c 'on RDMA device')" = 2 ] && break
  sleep 0.5
done
T0=$(date +%s)
kill -9 $(python3 -c 'import json; print(json.load(open("/tmp/dqlogs2/pids.json"))["shard 1"])')
wait $L
echo "== killed: exit $? after $(( $(date +%s) - T0 )) s"
tail -n 3 /tmp/out2.txt
grep -h "shard 1" /tmp/dqlogs2/shard0.log | tail -n 3
echo "== left: $(pgrep -c qemu-system)"
"""


def test_dqtest_on_direct_rdma_links_in_the_test_host() -> None:
    """The whole forwarding path of a VM over RDMA without routers in it: dqtest (IPIs,
    PIO, MMIO, interrupts, clock, code coherence) passes, each shard logs the RDMA device
    its direct link runs on, and the routers log no error (the power-off included). Then a
    shard dies (SIGKILL) on its RDMA links: the VM ends with the loss named."""
    _need_test_host()
    kernel = build_dqtest()
    spec = rdma_host.dqtest_toml(
        kernel, append="iters=50 timeout_ms=20000", timeout=900, data_path="direct"
    )
    r = rdma_host.run(["sh", "-c", DIRECT_SCRIPT.format(spec=spec)], timeout=1500)
    out = r.output
    assert "dqtest: PASS" in out and f"== exit {EXIT_PASS}" in out, out[-6000:]
    links = out.split("== links\n", 1)[1].split("== router errors", 1)[0]
    assert re.search(r"shard 0: direct link to shard 1 on RDMA device dq\d+rxe0", links), out
    assert re.search(r"shard 1: direct link to shard 0 on RDMA device dq\d+rxe1", links), out
    errors = out.split("== router errors\n", 1)[1].split("== exit", 1)[0]
    assert not errors.strip(), errors
    # the peer that died: the VM ends at once, naming it, and nothing is left running
    m = re.search(r"== killed: exit (\d+) after (\d+) s\n(.*)== left: (\d+)", out, re.S)
    assert m, out[-4000:]
    assert int(m.group(1)) == EXIT_SHARD_FAILED, out[-4000:]
    assert "shard 1" in m.group(3) and "signal 9" in m.group(3), m.group(3)
    assert int(m.group(2)) < 60 and m.group(4) == "0", out[-4000:]
