"""``dqemu loopback`` flags for the machine options build the same spec as the keys, and
their errors name the flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import build_parser
from cluster.errors import DqemuError
from cluster.spec import VMSpec, spec_from_flags

REPO = Path(__file__).resolve().parents[2]


def flags(*args: str) -> VMSpec:
    ns = build_parser().parse_args(["loopback", "--vcpus", "4", "--memory", "256M", *args])
    return spec_from_flags(ns)


def test_machine_option_flags() -> None:
    spec = flags(
        "--kernel", "guest:cloud", "--cpu", "qemu64,+x2apic", "--machine", "pc,hpet=off",
        "--sockets", "4", "--cores", "1", "--no-reboot", "--vga", "cirrus@1", "--shards", "2",
        "--numa-nodes", "2",
    )  # fmt: skip
    assert spec.cpu == "qemu64,+x2apic"
    assert (spec.machine, spec.machine_options) == ("pc", "hpet=off")
    assert spec.topology is not None and spec.topology.sockets == 4
    assert spec.no_reboot
    assert [(d.args, d.shard) for d in spec.devices] == [("cirrus-vga,id=dqvga", 1)]
    assert [n.vcpus for n in spec.nodes] == [(0,), (1,), (2,), (3,)]


def test_defaults() -> None:
    spec = flags("--kernel", "guest:cloud")
    assert spec.machine == "q35" and spec.machine_options == "" and spec.cpu is None
    assert not spec.no_reboot and spec.topology is None and spec.devices == ()


def test_firmware_boot_from_a_drive() -> None:
    spec = flags("--drive", "file=/d.img,format=raw")
    assert spec.boot.kernel is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--machine", "q35,accel=kvm"], "--machine: 'accel' is set by dqemu"),
        (["--machine", "isapc"], "--machine: 'isapc' is not one of q35, pc"),
        (["--cpu", "qemu64 x"], "--cpu: 'qemu64 x' is not a CPU model"),
        (["--sockets", "3"], "--sockets: sockets x cores x threads = 3 x 1 x 1 = 3, but"),
        (["--vga", "fancy"], "--vga: 'fancy' is not one of std"),
        (["--vga", "std@5"], "--vga (the @SHARD suffix): shard 5 does not exist"),
        (["--numa-nodes", "5"], "--numa-nodes: 5 is outside 1..4"),
        (["--numa-nodes", "0"], "--numa-nodes: 0 is outside 1..4"),
        (["--sockets", "0"], "--sockets: sockets = 0 is outside 1..4"),
    ],
)  # fmt: skip
def test_flag_errors(args: list[str], expected: str) -> None:
    with pytest.raises(DqemuError) as ei:
        flags("--kernel", "guest:cloud", *args)
    assert str(ei.value).startswith(expected), str(ei.value)


def test_no_kernel_and_no_drive() -> None:
    with pytest.raises(DqemuError, match="or a disk for the firmware to boot with --drive"):
        flags()


def test_spec_excludes_option_flags() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "loopback", "--spec", "examples/demo.toml",
         "--cpu", "max", "--no-reboot"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "dqemu: error: --spec cannot be combined with --cpu, --no-reboot"
    )


def test_data_path_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DQEMU_DATA_PATH", raising=False)
    assert flags("--kernel", "guest:cloud").data_path == "direct"
    assert flags("--kernel", "guest:cloud", "--data-path", "router").data_path == "router"
    with pytest.raises(SystemExit):
        flags("--kernel", "guest:cloud", "--data-path", "rdma")
