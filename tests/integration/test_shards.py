"""Issue 4 acceptance: the Linux guest across shards, in loopback.

4 vCPUs over 2 shards (2+2) and over 4 shards (one each): every CPU online, pinned work,
shared atomics, TLB shootdowns and migration; devices used from a CPU on a shard that
owns none (serial PIO; a virtio-blk disk owned by another shard, its MSI steered to that
CPU); forwarding counters non-zero in the routers' statistics; console lines written by
every CPU at once come out whole with posted UART writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopback.shard_logs import shard_counters
from tests.conftest import Run, run_dqemu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

GUEST = ("--kernel", "guest:cloud", "--initrd", "guest:cloud", "--timeout", "600")
LAYOUTS = {"2x2": ("--shards", "2"), "4x1": ("--shards", "4")}


def run_sharded(tmp_path: Path, *args: str) -> tuple[Run, dict[str, int]]:
    stats = tmp_path / "stats.json"
    r = run_dqemu("loopback", *GUEST, "--stats-file", str(stats), *args, timeout=900)
    forwarded = json.loads(stats.read_text())["forwarded"] if stats.exists() else {}
    return r, forwarded


def assert_smp_passed(r: Run, cpus: int) -> None:
    """dq.run=smp passed: every CPU online, pinned jobs, atomics, shootdowns, migration."""
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.passed("smp"), r.stdout[-3000:]
    kv = r.kv()
    assert kv["online_cpus"] == str(cpus)
    assert kv["atomics_xadd"] == kv["atomics_cmpxchg"] == kv["atomics_expected"]
    assert kv["shootdown_stale"] == "0"
    assert kv["migrate_wrong_cpu"] == "0"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_smp_across_shards(tmp_path: Path, layout: str) -> None:
    r, fwd = run_sharded(
        tmp_path, "--vcpus", "4", *LAYOUTS[layout], "--append", "dq.run=smp dq.cpus=4"
    )
    assert_smp_passed(r, cpus=4)
    assert fwd["ipi"] > 0, fwd  # IPIs crossed shards
    # every CPU reads PCI config space (tests/smp): the host bridge's shard answers the others
    assert fwd["pio"] > 0 and fwd["pci_cfg_read"] > 0, fwd
    if layout == "4x1":
        # MMIO from the boot itself (driver probing): over 2 shards only when the guest
        # happens to probe on CPU 2 or 3 (1 boot in 3-4 here forwarded none, with
        # pci_cfg_read=0 too); over 4 shards three CPUs of four forward it. dqtest's
        # mmio_read (test_dqtest) forwards MMIO from every CPU on purpose.
        assert fwd["mmio"] > 0, fwd


def test_serial_from_non_io_shard(tmp_path: Path) -> None:
    # CPUs 2-3 run on shard 1, which owns no device: their console writes are forwarded PIO.
    logs = tmp_path / "logs"
    logs.mkdir()
    r, fwd = run_sharded(
        tmp_path, "--vcpus", "4", "--shards", "2", "--posted-writes", "on",
        "--log-dir", str(logs), "--append", "dq.run=serial",
    )  # fmt: skip
    assert r.passed("serial"), r.stdout[-3000:]
    kv = r.kv()
    assert kv["serial_cpu3"] == "ok"
    assert fwd["pio"] > 0
    # CPUs 2-3 posted UART transmit writes (6425 and 7293 in two boots), and no line that
    # four CPUs wrote at once came out broken or lost
    assert fwd["posted"] > 0, fwd
    # the I/O shard served most of those UART accesses in its receive thread (0038): the
    # COM port is an isa-serial device, which 0038's list once missed (10-159 of about
    # 14,000 a boot were served there then, 13,878-16,543 since)
    wakeups = shard_counters(logs)[0]["wakeups"]
    assert wakeups["served_in_rx"] > fwd["pio"] // 2, (wakeups, fwd)
    want = {f"serial_burst_{c}_{j}" for c in range(4) for j in range(25)}
    burst = {k: v for k, v in kv.items() if k.startswith("serial_burst_")}
    assert set(burst) == want, sorted(want - set(burst))[:10]
    assert set(burst.values()) == {"0123456789abcdefghijklmnopqrstuvwxyz"}, burst
    broken = [ln for ln in r.stdout.splitlines() if "serial_burst" in ln and ln.strip() not in
              {f"DQ KV {k}=0123456789abcdefghijklmnopqrstuvwxyz" for k in want}]  # fmt: skip
    assert not broken, broken[:5]


def blk_on_shard1(tmp_path: Path) -> tuple[str, ...]:
    """Loopback arguments: 4 vCPUs over 2 shards, shard 1 owning the platform and a fresh
    16 MiB virtio-blk disk, dq.run=blk on CPU 0 (shard 0, which owns no device)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (16 << 20))
    return (
        "--vcpus", "4", "--placement", "0-1;2-3", "--io-shard", "1",
        "--append", "dq.run=blk dq.cpu=0",
        "--drive", f"file={disk},if=none,id=d0,format=raw@1",
        "--device", "virtio-blk-pci,drive=d0@1",
    )  # fmt: skip


def test_virtio_blk_on_other_shard(tmp_path: Path) -> None:
    # CPU 0 uses the disk of shard 1 with its MSI steered to CPU 0: MMIO forwarded to
    # shard 1, MSI back.
    r, fwd = run_sharded(tmp_path, *blk_on_shard1(tmp_path))
    assert r.passed("blk"), r.stdout[-3000:]
    assert r.kv()["blk_bad_chunks"] == "0"
    assert int(r.kv()["blk_irq_on_cpu"]) > 0
    assert fwd["mmio"] > 0 and fwd["irq"] > 0, fwd
