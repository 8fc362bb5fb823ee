"""The spec's machine options change what the guest sees (docs/spec.md, "Machine options").

Few boots: one Linux boot checks the CPU model, machine options, SMP topology, NUMA nodes
per shard, a VGA, the extra QEMU arguments and console input; a boot sector that prints
through the serial port and then resets checks firmware boot from a disk and no_reboot,
on one shard and with the reset on another shard than the BSP's.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from loopback.launcher import EXIT_GUEST_RESET
from tests.conftest import REPO, TEST_ENV, Run, dqemu_cmd, run_dqemu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

HELLO = b"hello from the boot sector"

MACHINE_SPEC = """\
[vm]
vcpus = 4
memory = "512M"
cpu = "qemu64,+x2apic"
machine_options = "hpet=off"
sockets = 2
cores = 2
vga = "std"
qemu_args = ["-smbios", "type=1,product=dqemu-hatch"]

[boot]
kernel = "guest:cloud"
initrd = "guest:cloud"
append = "dq.run=machine dq.input=1"
timeout = 400

[[shard]]
id = 0
vcpus = "0-3"
numa_nodes = 2
"""


# Two shards, the disk and the platform devices on shard 1; shard 0 traces the run-state
# commands it receives (through the unsupported qemu_args).
CF9_SPEC = """\
[vm]
vcpus = 2
memory = "256M"
io_shard = 1
no_reboot = true

[boot]
timeout = 240

[[shard]]
id = 0
vcpus = "0"
qemu_args = ["-trace", "dqemu_command_recv"]

[[shard]]
id = 1
vcpus = "1"

[[device]]
drive = "file={disk},if=none,id=d0,format=raw"
shard = 1

[[device]]
device = "virtio-blk-pci,drive=d0"
shard = 1
"""


def boot_sector(reset: str) -> bytes:
    """A 1 MiB raw disk whose boot sector writes HELLO to COM1 (0x3f8), then resets the
    machine: "triple" by a triple fault (an empty IDT, then int3), "cf9" through the
    reset control port, "none": it halts."""
    tails = {"triple": "0F011E007D CC", "cf9": "BAF90C B006 EE", "none": ""}
    tail = bytes.fromhex(tails[reset])

    def code(msg: int) -> bytes:
        # cli; ds = 0; si = msg; dx = 0x3f8; next: lodsb; test al,al; jz +3; out dx,al;
        # jmp next; <tail>; hlt; jmp hlt
        head = bytes.fromhex("FA 31C0 8ED8 BE") + msg.to_bytes(2, "little")
        return head + bytes.fromhex("BAF803 AC 84C0 7403 EE EBF8") + tail + bytes.fromhex("F4 EBFD")

    text = code(0x7C00 + len(code(0)))
    sector = bytearray(512)
    sector[: len(text)] = text
    sector[len(text) : len(text) + len(HELLO) + 3] = HELLO + b"\r\n\0"
    sector[510:] = b"\x55\xaa"  # 0x7d00, the empty IDT descriptor, stays zero
    return bytes(sector) + bytes(2047 * 512)


def test_machine_options_reach_the_guest(tmp_path: Path) -> None:
    spec = tmp_path / "machine.toml"
    spec.write_text(MACHINE_SPEC)
    proc = subprocess.Popen(
        dqemu_cmd("loopback", "--spec", str(spec), "--console-input"),
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=TEST_ENV,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    out = []
    try:
        for line in proc.stdout:  # ends when the launcher exits (timeout: 400 s)
            out.append(line.decode(errors="replace"))
            if line.startswith(b"DQ KV ready_for_input=1"):
                proc.stdin.write(b"typed into stdin\n")
                proc.stdin.flush()
        err = proc.communicate(timeout=60)[1].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = Run(proc.returncode, "".join(out), err)
    assert r.returncode == 0 and r.passed("machine"), r.stderr + r.stdout[-3000:]
    kv = r.kv()
    assert kv["x2apic"] == "1"  # vm.cpu (qemu64 has no x2apic by itself)
    assert kv["online_cpus"] == "4" and kv["packages"] == "2"  # vm.sockets, vm.cores
    assert kv["cpu0_package_cpus"] == "0-1"
    assert kv["numa_nodes"] == "2" and kv["node0_cpus"] == "0-1" and kv["node1_cpus"] == "2-3"
    assert "hpet" not in kv["clocksources"]  # vm.machine_options
    assert kv["pci_vga"] == "1" and kv["crtc"] == "90"  # vm.vga: 0x5a read back, not 0xff
    assert kv["product"] == "dqemu-hatch"  # vm.qemu_args
    assert kv["input"] == "typed into stdin"  # --console-input


def test_disk_boot_and_no_reboot(tmp_path: Path) -> None:
    disk = tmp_path / "triple.img"
    disk.write_bytes(boot_sector("triple"))
    r = run_dqemu(
        "loopback", "--drive", f"file={disk},if=none,id=d0,format=raw",
        "--device", "virtio-blk-pci,drive=d0", "--no-reboot", "--timeout", "240",
    )  # fmt: skip
    assert r.returncode == EXIT_GUEST_RESET, r.stderr + r.stdout[-2000:]
    assert r.stdout.count(HELLO.decode()) == 1, r.stdout[-2000:]  # booted once, not again
    assert "guest reset the machine (no_reboot: the VM ended" in r.stderr


def test_no_reboot_reset_on_another_shard(tmp_path: Path) -> None:
    # The reset port belongs to the I/O shard, 1: the reset starts there, not on the BSP's.
    disk = tmp_path / "cf9.img"
    disk.write_bytes(boot_sector("cf9"))
    spec = tmp_path / "cf9.toml"
    spec.write_text(CF9_SPEC.format(disk=disk))
    logs = tmp_path / "logs"
    logs.mkdir()
    r = run_dqemu("loopback", "--spec", str(spec), "--log-dir", str(logs))
    assert r.returncode == EXIT_GUEST_RESET, r.stderr + r.stdout[-2000:]
    assert r.stdout.count(HELLO.decode()) == 1, r.stdout[-2000:]
    # Shard 0 quit for the reset (cause 7, guest-reset), as every shard does: it was not
    # told to reset, which would leave it to take shard 1's exit for a lost peer.
    received = [ln for ln in (logs / "shard0.log").read_text().splitlines()
                if "dqemu_command_recv from shard 1" in ln]  # fmt: skip
    assert any(ln.endswith(": quit reason 7 arg 0") for ln in received), received
    assert not any("system_reset" in ln for ln in received), received


def test_no_reboot_qmp_system_reset(tmp_path: Path) -> None:
    # A reset asked for on shard 1's QMP (the disk and the platform are on shard 0).
    disk = tmp_path / "halt.img"
    disk.write_bytes(boot_sector("none"))
    qmp_dir = tmp_path / "qmp"
    qmp_dir.mkdir()
    proc = subprocess.Popen(
        dqemu_cmd("loopback", "--vcpus", "2", "--shards", "2", "--no-reboot",
                  "--drive", f"file={disk},if=none,id=d0,format=raw",
                  "--device", "virtio-blk-pci,drive=d0", "--timeout", "240",
                  "--qmp-dir", str(qmp_dir)),
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=TEST_ENV,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # ends when the launcher exits (timeout: 240 s)
            if HELLO in line:
                qmp = QEMUMonitorProtocol(str(qmp_dir / "shard1.qmp"))
                qmp.connect()
                try:
                    qmp.cmd("system_reset")
                finally:
                    with contextlib.suppress(EOFError, OSError):
                        qmp.close()  # the shard may have exited already
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_GUEST_RESET, err.decode(errors="replace")
    assert HELLO not in out  # the firmware did not boot the disk again
    assert b"QMP system_reset reset the machine (no_reboot: the VM ended" in err
