"""The guest workloads that the shard acceptance tests run, checked here on one shard.

The same tests run across shards once the shard series lands (tests/integration/
test_shards.py); here they show the workloads themselves are right.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_dqemu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

GUEST = ("--kernel", "guest:cloud", "--initrd", "guest:cloud", "--timeout", "300")


def test_smp_workload() -> None:
    r = run_dqemu("loopback", *GUEST, "--vcpus", "4", "--append", "dq.run=smp dq.cpus=4")
    assert r.returncode == 0, r.stderr
    assert r.passed("smp"), r.stdout[-3000:]
    kv = r.kv()
    assert kv["online_cpus"] == "4"
    assert kv["shootdown_stale"] == "0"
    assert kv["atomics_xadd"] == kv["atomics_cmpxchg"] == kv["atomics_expected"]
    assert int(kv["ipi_tlb"]) > 0


def test_serial_from_every_cpu() -> None:
    r = run_dqemu("loopback", *GUEST, "--vcpus", "2", "--append", "dq.run=serial")
    assert r.passed("serial"), r.stdout[-3000:]
    assert r.kv()["serial_cpu1"] == "ok"


def test_virtio_blk_irq_steered(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (16 << 20))
    r = run_dqemu(
        "loopback", *GUEST, "--vcpus", "2", "--append", "dq.run=blk dq.cpu=1",
        "--drive", f"file={disk},if=none,id=d0,format=raw", "--device", "virtio-blk-pci,drive=d0",
    )  # fmt: skip
    assert r.passed("blk"), r.stdout[-3000:]
    assert r.kv()["blk_bad_chunks"] == "0"
    assert int(r.kv()["blk_irq_on_cpu"]) > 0
