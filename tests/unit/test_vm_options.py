"""The guest-visible machine options of a spec: CPU, machine options, topology, NUMA,
no_reboot, VGA and the extra QEMU arguments; each bad value names its key and line."""

from __future__ import annotations

import pytest

from cluster.spec import SpecError, parse_spec
from cluster.vm_options import numa_layout, smp_arg

BASE = """\
[vm]
vcpus = 4
memory = "1G"
{vm}
[boot]
kernel = "guest:cloud"

[[shard]]
id = 0
vcpus = "0-1"
{shard0}
[[shard]]
id = 1
vcpus = "2-3"
"""


def spec_text(vm: str = "", shard0: str = "") -> str:
    return BASE.format(vm=vm, shard0=shard0)


def _err(text: str) -> str:
    with pytest.raises(SpecError) as ei:
        parse_spec(text, origin="vm.toml")
    return str(ei.value)


def test_defaults_change_nothing() -> None:
    spec = parse_spec(spec_text())
    assert spec.cpu is None and spec.machine_options == "" and spec.topology is None
    assert not spec.no_reboot and spec.qemu_args == () and spec.shards[0].qemu_args == ()
    assert [n.vcpus for n in spec.nodes] == [(0, 1), (2, 3)]
    assert not any("VGA" in d.args for d in spec.devices)


def test_cpu() -> None:
    assert parse_spec(spec_text('cpu = "qemu64,+x2apic,-svm,level=13"')).cpu == (
        "qemu64,+x2apic,-svm,level=13"
    )
    assert _err(spec_text('cpu = "qemu64 +x2apic"')).startswith(
        "vm.toml:4: vm.cpu: 'qemu64 +x2apic' is not a CPU model"
    )


def test_machine_options() -> None:
    spec = parse_spec(spec_text('machine_options = "hpet=off, pit=off"'))
    assert spec.machine_options == "hpet=off,pit=off"
    msg = _err(spec_text('machine_options = "hpet=off,memory-backend=x"'))
    assert msg == (
        "vm.toml:4: vm.machine_options: 'memory-backend' is set by dqemu (the guest RAM "
        "shared by every shard), not a machine option here"
    )
    assert "'accel' is set by dqemu (TCG" in _err(spec_text('machine_options = "accel=kvm"'))
    assert "'kernel' is set by boot.kernel" in _err(spec_text('machine_options = "kernel=/k"'))
    assert "'pit' is not key=value" in _err(spec_text('machine_options = "pit"'))


@pytest.mark.parametrize(
    ("keys", "expect"),
    [("sockets = 2\ncores = 2", (2, 2, 1)), ("threads = 2\nsockets = 2", (2, 1, 2)),
     ("cores = 4", (1, 4, 1))],
)  # fmt: skip
def test_topology(keys: str, expect: tuple[int, int, int]) -> None:
    spec = parse_spec(spec_text(keys + "\nnuma = false"))
    assert spec.topology is not None
    assert (spec.topology.sockets, spec.topology.cores, spec.topology.threads) == expect


def test_topology_must_multiply_to_vcpus() -> None:
    msg = _err(spec_text("sockets = 2\ncores = 3"))
    assert msg == (
        "vm.toml:4: vm.sockets: sockets x cores x threads = 2 x 3 x 1 = 6, but vm.vcpus = 4"
    )
    assert "vm.toml:4: vm.cores: cores = 0 is outside 1..4" in _err(spec_text("cores = 0"))


def test_socket_may_not_span_numa_nodes() -> None:
    # NUMA on: shard 0 (vCPUs 0-1) and shard 1 (2-3) are nodes 0 and 1.
    assert parse_spec(spec_text("sockets = 2\ncores = 2")).topology is not None
    msg = _err(spec_text("sockets = 1\ncores = 4"))
    assert msg.startswith("vm.toml:4: vm.sockets: socket 0 would hold vCPU 0 (NUMA node 0)")


def test_several_numa_nodes_per_shard() -> None:
    spec = parse_spec(spec_text(shard0="numa_nodes = 2"))
    assert [(n.shard, n.vcpus) for n in spec.nodes] == [(0, (0,)), (0, (1,)), (1, (2, 3))]
    assert sum(n.mib for n in spec.nodes) == 1024
    one = parse_spec(
        '[vm]\nvcpus = 4\nmemory = 64\n[[shard]]\nid = 0\nvcpus = "0-3"\nnuma_nodes = 2\n'
    )
    assert len(one.shards) == 1 and [n.vcpus for n in one.nodes] == [(0, 1), (2, 3)]


def test_numa_nodes_errors() -> None:
    msg = _err(spec_text(shard0="numa_nodes = 3"))
    assert msg.startswith("vm.toml:11: shard[0].numa_nodes: 3 is outside 1..2")
    msg = _err(spec_text("numa = false", shard0="numa_nodes = 2"))
    assert msg == "vm.toml:11: shard[0].numa_nodes: needs vm.numa = true"


def test_numa_layout_memory() -> None:
    nodes = numa_layout(1001, True, [(0, (0, 1), 2), (1, (2,), 1)])
    assert [n.mib for n in nodes] == [332, 332, 337]
    assert [n.vcpus for n in numa_layout(64, False, [(0, (0,), 1), (1, (1,), 1)])] == [(0, 1)]
    with pytest.raises(ValueError, match="less than 2 MiB per node"):
        numa_layout(16, True, [(0, tuple(range(16)), 16)])


def test_smp_arg() -> None:
    assert smp_arg(4, None, 1) == "4"
    assert smp_arg(4, None, 2) == "4,sockets=4,cores=1,threads=1"
    topo = parse_spec(spec_text("sockets = 2\ncores = 1\nthreads = 2")).topology
    assert smp_arg(4, topo, 2) == "4,sockets=2,cores=1,threads=2"


def test_no_reboot() -> None:
    assert parse_spec(spec_text("no_reboot = true")).no_reboot
    assert "vm.no_reboot: expected a boolean" in _err(spec_text("no_reboot = 1"))


def test_vga_is_a_device_of_its_shard() -> None:
    spec = parse_spec(spec_text('vga = "std"\nvga_shard = 1'))
    assert [(d.kind, d.args, d.shard) for d in spec.devices] == [("device", "VGA,id=dqvga", 1)]
    assert parse_spec(spec_text('vga = "cirrus"\nio_shard = 1')).devices[0].shard == 1
    assert _err(spec_text('vga = "fancy"')).startswith("vm.toml:4: vm.vga: 'fancy' is not one of")
    assert _err(spec_text('vga = "std"\nvga_shard = 2')) == (
        "vm.toml:5: vm.vga_shard: shard 2 does not exist"
    )
    assert "needs vm.vga" in _err(spec_text("vga_shard = 1"))


def test_qemu_args() -> None:
    spec = parse_spec(spec_text('qemu_args = ["-smbios", "type=1,product=x"]',
                                shard0='qemu_args = ["-d", "guest_errors"]'))  # fmt: skip
    assert spec.qemu_args == ("-smbios", "type=1,product=x")
    assert spec.shards[0].qemu_args == ("-d", "guest_errors") and spec.shards[1].qemu_args == ()
    assert (
        _err(spec_text("qemu_args = [1]")) == "vm.toml:4: vm.qemu_args: element 0 is not a string"
    )
    assert "shard[0].qemu_args: expected an array" in _err(spec_text(shard0='qemu_args = "-d"'))
