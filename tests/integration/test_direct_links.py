"""Direct shard links (data_path = "direct", patch 0030): frames cross shards without routers.

dqtest's forwarding groups over two shards, once per data path. On the direct path the
shards' router links carry no device access or IPI at all (the routers only set up, ping
and count), yet the routers' stats of the link to the other shard count every one of them,
from the shards' stats pages; on the router path the same frames cross the local links.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loopback.dqtest import build_dqtest, dqtest_spec
from tests.conftest import run_dqemu
from tests.support.dqtest_run import run_passing_dqtest

pytestmark = [pytest.mark.integration]

# device accesses and IPIs a vCPU sends to the other shard
FORWARDED = ("PIO_REQ", "MMIO_REQ", "IRQ")


@pytest.fixture(scope="module")
def qemu() -> Path:
    r = run_dqemu("build-qemu", "--print-path", timeout=3000)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


def run(qemu: Path, data_path: str) -> list[dict[str, Any]]:
    spec = dqtest_spec(
        build_dqtest(), shards=2, vcpus=2, append="only=pingpong,pio,mmio iters=50",
        timeout=600, data_path=data_path,
    )  # fmt: skip
    vm, _ = run_passing_dqtest(spec, qemu, tail=2000)
    assert len(vm.router_stats) == 2, vm.router_stats
    return vm.router_stats


def local_link(stats: dict[str, Any]) -> dict[str, Any]:
    """The router's link to its own shard (closed by the time the stats are read)."""
    (link,) = [v for k, v in stats["closed_links"].items() if k.startswith("local shard")]
    return link


def test_direct_path_bypasses_the_routers_and_keeps_their_counts(qemu: Path) -> None:
    for stats in run(qemu, "direct"):
        sid = stats["shard_id"]
        peer = f"shard:{1 - sid}"
        assert stats["data_path"] == "direct"
        assert stats["direct_links"] == [1 - sid]
        crossed = stats["links"][peer]["per_type"]
        local = local_link(stats)["per_type"]
        # the shard sent its device accesses and IPIs to the other shard directly...
        assert not [t for t in FORWARDED if t in local], (sid, local)
        # ...and the router counts them all the same
        assert sum(crossed.get(t, {}).get("tx_msgs", 0) for t in FORWARDED) > 0, crossed
    for stats in run(qemu, "router"):
        local = local_link(stats)["per_type"]
        assert stats["direct_links"] == []
        assert any(t in local for t in FORWARDED), local
