"""Issue 4: devices owned by a shard other than the platform shard, with a real Linux guest.

Shard 1 owns the platform (IOAPIC, PIC, host bridge, port 0x92); shard 0 owns a virtio-blk
disk and runs vCPUs 0-1, shard 1 runs vCPUs 2-3. The guest boots with ``pci=nomsi``, so
the disk interrupts through its INTx line: the GSI goes from shard 0 to the IOAPIC on
shard 1, which sends the interrupt (DEV_IRQ) to the CPU it is steered to, and that CPU's
level-triggered EOI goes back to shard 1. Config-space reads of the disk are answered by
shard 0, whose copy has the live Interrupt Status bit. The A20 gate, which the platform
shard's port 0x92 drives, must follow on shard 0, where vCPU 0 runs.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from loopback.qmp import ShardMonitor
from tests.conftest import REPO, TEST_ENV, Run, dqemu_cmd, run_dqemu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

GUEST = ("--kernel", "guest:cloud", "--initrd", "guest:cloud")
# CPU 1 runs on shard 0 (the disk's), CPU 3 on shard 1 (the IOAPIC's).
STEER = (1, 3)
PCI_STATUS_INTERRUPT = 0x08  # status register bit 3: INTx asserted
PCI_COMMAND_INTX_DISABLE_HI = 0x04  # command register bit 10, in its high byte


@pytest.fixture(scope="module")
def intx_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, int]]:
    tmp = tmp_path_factory.mktemp("devirq")
    disk, stats = tmp / "disk.img", tmp / "stats.json"
    disk.write_bytes(b"\0" * (16 << 20))
    r = run_dqemu(
        "loopback", *GUEST, "--timeout", "600", "--stats-file", str(stats),
        "--vcpus", "4", "--placement", "0-1;2-3", "--io-shard", "1",
        "--append", f"dq.run=devirq dq.irqcpus={STEER[0]},{STEER[1]} pci=nomsi",
        "--drive", f"file={disk},if=none,id=d0,format=raw@0",
        "--device", "virtio-blk-pci,drive=d0@0",
        timeout=900,
    )  # fmt: skip
    forwarded = json.loads(stats.read_text())["forwarded"] if stats.exists() else {}
    return r, forwarded


def test_intx_disk_on_non_platform_shard(intx_run: tuple[Run, dict[str, int]]) -> None:
    r, fwd = intx_run
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.passed("devirq"), r.stdout[-3000:]
    kv = r.kv()
    assert kv["intx_chip"] == "IO-APIC", kv  # a line interrupt, not MSI
    for cpu in STEER:
        assert kv[f"blk_bad_chunks_cpu{cpu}"] == "0", kv
        assert int(kv[f"blk_irq_cpu{cpu}"]) > 0, kv
    assert fwd["gsi"] > 0, fwd  # the disk's line, shard 0 -> IOAPIC on shard 1
    assert fwd["irq"] > 0, fwd  # the IOAPIC's interrupt to CPU 1 on shard 0 (DEV_IRQ)
    assert fwd["eoi"] > 0, fwd  # CPU 1's level-triggered EOIs back to shard 1


def test_pci_config_read_is_live(intx_run: tuple[Run, dict[str, int]]) -> None:
    r, fwd = intx_run
    assert r.passed("devirq"), r.stdout[-3000:]
    kv = r.kv()
    for cpu in STEER:
        # INTx disabled (the write reached the owner), a request completed: pending.
        assert int(kv[f"cfg_cmd_hi_masked_cpu{cpu}"]) & PCI_COMMAND_INTX_DISABLE_HI, kv
        assert int(kv[f"cfg_status_masked_cpu{cpu}"]) & PCI_STATUS_INTERRUPT, kv
        # INTx enabled again: the interrupt was taken and the bit is clear.
        assert not int(kv[f"cfg_status_after_cpu{cpu}"]) & PCI_STATUS_INTERRUPT, kv
    assert kv["cfg_bg_bad_chunks"] == "0", kv
    assert fwd["pci_cfg_read"] > 0, fwd


def _hmp(mon: ShardMonitor, line: str) -> str:
    return str(mon.cmd("human-monitor-command", **{"command-line": line}))


def _a20(mon: ShardMonitor, want: str | None = None, within: float = 10.0) -> str:
    """vCPU 0's A20 state as its shard sees it (the monitor's default CPU is vCPU 0).

    With ``want``, reads until the state is ``want`` or ``within`` seconds have passed, and
    returns the last state read. The platform shard broadcasts an A20 change without
    waiting for the other shards (a vCPU whose port write made the change still sees it at
    once: the reply to its forwarded write travels behind the broadcast), so a monitor on
    another shard may briefly see the old state."""
    deadline = time.monotonic() + within
    while True:
        m = re.search(r"A20=(\d)", _hmp(mon, "info registers"))
        assert m, "no A20 in 'info registers'"
        if want is None or m.group(1) == want or time.monotonic() > deadline:
            return m.group(1)
        time.sleep(0.05)


def test_a20_gate_follows_on_bsp_shard(tmp_path: Path) -> None:
    # SeaBIOS and Linux boot with the platform on shard 1 and the BSP (vCPU 0) on shard 0;
    # then, with the VM paused, port 0x92 on shard 1 closes and reopens the A20 gate.
    qmp_dir = tmp_path / "qmp"
    qmp_dir.mkdir()
    proc = subprocess.Popen(
        dqemu_cmd("loopback", *GUEST, "--timeout", "300", "--vcpus", "2", "--shards", "2",
                  "--io-shard", "1", "--qmp-dir", str(qmp_dir), "--append", "dq.run=sleep"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TEST_ENV,
    )  # fmt: skip
    mons = [ShardMonitor(f"shard{k}", qmp_dir / f"shard{k}.qmp") for k in (0, 1)]
    seen: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            if "DQ KV sleeping=1" in line or time.monotonic() > deadline:
                seen["sleeping"] = line.strip()
                break
        assert seen.get("sleeping", "").endswith("sleeping=1"), seen
        for mon in mons:
            mon.connect(30, lambda: proc.poll() is None)
        for mon in mons:
            mon.cmd("stop")
        seen["before"] = _a20(mons[0])
        port = int(_hmp(mons[1], "i /b 0x92").split("=")[-1].strip(), 16)
        _hmp(mons[1], f"o /b 0x92 {port & ~0x03:#x}")  # A20 off (bit 0 would reset)
        seen["off_bsp_shard"] = _a20(mons[0], want="0")
        seen["off_platform_shard"] = _a20(mons[1])
        _hmp(mons[1], f"o /b 0x92 {(port | 0x02) & ~0x01:#x}")
        seen["on_bsp_shard"] = _a20(mons[0], want="1")
        for mon in mons:
            mon.cmd("cont")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        for mon in mons:
            mon.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err[-2000:]
    assert seen["before"] == "1", seen
    assert seen["off_bsp_shard"] == "0", seen  # replicated to vCPU 0's own shard
    assert seen["off_platform_shard"] == "0", seen
    assert seen["on_bsp_shard"] == "1", seen
