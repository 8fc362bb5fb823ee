"""The RDMA transport for real: one boot of the RDMA test host (Debian's generic kernel
with soft-RoCE, tests/support/rdma_host.py) runs, over rxe devices, the TCP router tests'
request, broadcast, control, ordering, fuzz and loss cases with DQEMU_TEST_TRANSPORT=rdma, and the
RDMA link's own cases (tests/rdma/). One boot for all of it: a boot costs 30-90 s."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_rdma_links_in_the_test_host() -> None:
    try:
        rdma_host.generic_kernel()
    except rdma_host.RdmaHostUnavailable as e:
        if not _kernel_installable():
            pytest.skip(f"{e}, and apt has no {rdma_host.KERNEL_PACKAGE} to install")
        raise
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


def dqtest_toml(kernel: Path, append: str, timeout: float) -> str:
    """dqtest's VM over 2 shards as a spec file: loopback/dqtest.py's devices (its
    ``dqtest_spec`` without the scratch disk), for ``dqemu loopback --spec``."""
    from loopback.dqtest import DEBUG_EXIT_DEVICE, ISA_IRQ_DEVICE, VGA_DEVICE

    devices = [(DEBUG_EXIT_DEVICE, 0), ("edu", 0), (ISA_IRQ_DEVICE, 1), (VGA_DEVICE, 1)]
    return "\n".join(
        [
            '[vm]\nvcpus = 4\nmemory = 256\nmachine = "q35"',
            f'[boot]\nkernel = "{kernel}"\nappend = "{append}"\ntimeout = {timeout:g}',
            '[[shard]]\nid = 0\nvcpus = "0-1"\n[[shard]]\nid = 1\nvcpus = "2-3"',
            *(f'[[device]]\ndevice = "{d}"\nshard = {k}' for d, k in devices),
        ]
    )


# in the test host: dqtest over RDMA, the launcher's rxe devices seen while it runs and
# gone after it; then a SIGKILLed launcher's devices, reaped by `dqemu cleanup`
LOOPBACK_SCRIPT = """
set -u
cat > /tmp/dqtest.toml <<'EOF_SPEC'
{spec}
EOF_SPEC
( while sleep 2; do
    rdma link | grep -q 'dq[0-9]*rxe1' && {{ rdma link > /tmp/links.txt; break; }}
  done ) &
mkdir -p /tmp/dqlogs; T0=$(date +%s)
dqemu loopback --spec /tmp/dqtest.toml --transport rdma --log-dir /tmp/dqlogs > /tmp/out.txt 2>&1
RC=$?
echo "loopback exit $RC in $(( $(date +%s) - T0 )) s"
cat /tmp/out.txt
echo "== links while it ran"; cat /tmp/links.txt
grep -h "rdma" /tmp/dqlogs/router*.log | head -4
echo "== after"; rdma link; ip -br link | grep '^dq[0-9]'; ip netns list
dqemu loopback --spec /tmp/dqtest.toml --transport rdma > /tmp/out2.txt 2>&1 &
P=$!
for i in $(seq 600); do rdma link | grep -q "dq${{P}}rxe1" && break; sleep 0.5; done
echo "== killed launcher's"; rdma link | grep -c "dq${{P}}rxe"
kill -9 $P; wait $P
dqemu cleanup 2>&1 | tail -1
echo "== after cleanup"; rdma link; ip -br link | grep '^dq[0-9]'; ip netns list
exit $RC
"""


def test_loopback_dqtest_over_rxe() -> None:
    """`dqemu loopback --transport rdma` of dqtest over 2 shards, nested in the test host
    (TCG in TCG: about N min), on rxe devices that the launcher adds and removes."""
    from loopback.dqtest import EXIT_PASS, build_dqtest

    kernel = build_dqtest()  # here: the test host sees the build cache read-only
    spec = dqtest_toml(kernel, append="iters=100", timeout=3000)
    r = rdma_host.run(["sh", "-c", LOOPBACK_SCRIPT.format(spec=spec)], timeout=3600)
    out = r.output
    assert r.returncode == EXIT_PASS, out[-6000:]
    assert "dqtest: PASS" in out, out[-6000:]
    links = out.split("== links while it ran")[1].split("== after")[0]
    for i in (0, 1):
        assert re.search(rf"link dq\d+rxe{i}/1 state ACTIVE .* netdev dq\d+r{i}", links), links
    after = out.split("== after\n")[1].split("== killed")[0]
    assert " dq" not in after and "dq-" not in after, after
    assert "== killed launcher's\n2\n" in out, out[-3000:]
    cleaned = out.split("== after cleanup")[1]
    assert "netdev dq" not in cleaned and "dq-" not in cleaned, cleaned
