"""The VM spec parser: good specs load, bad ones name the key and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.spec import (
    SpecError,
    clock_sync_enabled,
    load_spec,
    parse_cpu_list,
    parse_memory,
    parse_spec,
    posted_writes_enabled,
)

GOOD = """\
[vm]
name = "t"
vcpus = 4
memory = "1G"

[boot]
kernel = "guest:cloud"
initrd = "guest:cloud"
append = "dq.run=cpus"

[[shard]]
id = 0
vcpus = "0-1"

[[shard]]
id = 1
vcpus = [2, 3]

[[device]]
device = "isa-debug-exit,iobase=0xf4,iosize=4"
shard = 1
"""


def test_good_spec_loads() -> None:
    spec = parse_spec(GOOD)
    assert spec.vcpus == 4
    assert spec.memory_mib == 1024
    assert [s.vcpus for s in spec.shards] == [(0, 1), (2, 3)]
    assert spec.devices[0].kind == "device"
    assert spec.devices[0].shard == 1
    assert spec.shard_of_vcpu(3) == 1


def test_default_single_shard() -> None:
    spec = parse_spec('[vm]\nvcpus = 3\nmemory = 256\n[boot]\nkernel = "guest:cloud"\n')
    assert len(spec.shards) == 1
    assert spec.shards[0].vcpus == (0, 1, 2)


def _err(text: str) -> str:
    with pytest.raises(SpecError) as ei:
        parse_spec(text, origin="vm.toml")
    return str(ei.value)


def test_unknown_key_names_key_and_line() -> None:
    msg = _err(GOOD.replace('memory = "1G"', 'memory = "1G"\ncolour = "blue"'))
    assert msg.startswith("vm.toml:5: vm.colour: unknown key")


def test_wrong_type_names_key_and_line() -> None:
    msg = _err(GOOD.replace("vcpus = 4", 'vcpus = "four"'))
    assert msg.startswith("vm.toml:3: vm.vcpus: expected an integer, got a string")


def test_boolean_is_not_an_integer() -> None:
    assert "got a boolean" in _err(GOOD.replace("vcpus = 4", "vcpus = true"))


def test_missing_kernel_file(tmp_path: Path) -> None:
    text = GOOD.replace('kernel = "guest:cloud"', 'kernel = "nope/bzImage"')
    with pytest.raises(SpecError) as ei:
        parse_spec(text, origin="vm.toml", base=tmp_path)
    assert str(ei.value) == "vm.toml:7: boot.kernel: file 'nope/bzImage' does not exist"


def test_unplaced_vcpu() -> None:
    msg = _err(GOOD.replace("vcpus = [2, 3]", "vcpus = [2]"))
    assert "vCPU(s) 3 not placed on any shard" in msg


def test_vcpu_placed_twice() -> None:
    msg = _err(GOOD.replace("vcpus = [2, 3]", "vcpus = [1, 2, 3]"))
    assert msg.startswith("vm.toml:17: shard[1].vcpus: vCPU 1 is already placed on shard 0")


def test_device_on_missing_shard() -> None:
    msg = _err(GOOD.replace("shard = 1", "shard = 5"))
    assert msg.startswith("vm.toml:21: device[0].shard: shard 5 does not exist")


def test_device_needs_one_kind() -> None:
    msg = _err(GOOD.replace("shard = 1", 'drive = "file=x"\nshard = 1'))
    assert "device[0]: needs exactly one of" in msg


def test_vcpu_out_of_range() -> None:
    assert "vCPU 7 does not exist" in _err(GOOD.replace("[2, 3]", "[2, 3, 7]"))


def test_bad_toml_has_line() -> None:
    msg = _err("[vm]\nvcpus = = 4\n")
    assert msg.startswith("vm.toml: not valid TOML:") and "line 2" in msg


def test_missing_tables() -> None:
    assert "missing table [vm]" in _err('[boot]\nkernel = "guest:cloud"\n')


def test_firmware_boot_needs_no_boot_table() -> None:
    spec = parse_spec("[vm]\nvcpus = 1\nmemory = 64\n")
    assert spec.boot.kernel is None and spec.boot.initrd is None


def test_append_needs_a_kernel() -> None:
    msg = _err('[vm]\nvcpus = 1\nmemory = 64\n[boot]\nappend = "quiet"\n')
    assert msg == "vm.toml:5: boot.append: needs boot.kernel (firmware boot takes none)"


def test_unknown_table() -> None:
    assert "unknown table [disks]" in _err(GOOD + "\n[disks]\nx = 1\n")


def test_shard_ids_in_order() -> None:
    assert "shard ids must be 0, 1, 2" in _err(GOOD.replace("id = 1", "id = 2"))


@pytest.mark.parametrize(
    ("text", "mib"), [("512M", 512), ("2G", 2048), ("1GiB", 1024), (64, 64), ("65536K", 64)]
)
def test_parse_memory(text: str | int, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["lots", "1.5G", "8", "0M", True])
def test_parse_memory_rejects(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_memory(text)


def test_cpu_list() -> None:
    assert parse_cpu_list("0-2,5") == (0, 1, 2, 5)
    for bad in ("", "a", "3-1", "1,,2"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_load_spec_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "absent.toml")


def test_example_specs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    for path in root.glob("*.toml"):
        load_spec(path)


IOMMU = GOOD.replace(
    'device = "isa-debug-exit,iobase=0xf4,iosize=4"\nshard = 1',
    'device = "intel-iommu,intremap=on"\nshard = 0\n\n'
    '[[device]]\ndevice = "virtio-blk-pci,drive=d0"\nshard = 1',
)


def test_iommu_devices_must_share_its_shard() -> None:
    # A PCI device on another shard than the IOMMU would hang at its first remapped MSI.
    msg = _err(IOMMU)
    assert msg.startswith("vm.toml:25: device[1].shard: with intel-iommu (device[0]) every")
    assert "on shard 1 could neither remap its MSIs nor translate its DMA" in msg
    spec = parse_spec(IOMMU.replace("shard = 1\n", "shard = 0\n", 1))
    assert [d.shard for d in spec.devices] == [0, 0]


def test_iommu_must_be_on_io_shard() -> None:
    msg = _err(IOMMU.replace('intremap=on"\nshard = 0', 'intremap=on"\nshard = 1'))
    assert msg.startswith("vm.toml:21: device[0].shard: intel-iommu must be on the I/O shard (0")


def test_data_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DQEMU_DATA_PATH", raising=False)
    assert parse_spec(GOOD).data_path == "direct"
    router = GOOD.replace('memory = "1G"', 'memory = "1G"\ndata_path = "router"')
    assert parse_spec(router).data_path == "router"
    assert "vm.data_path: 'rdma' is not one of router, direct" in _err(
        GOOD.replace('memory = "1G"', 'memory = "1G"\ndata_path = "rdma"')
    )
    monkeypatch.setenv("DQEMU_DATA_PATH", "router")
    assert parse_spec(GOOD).data_path == "router"  # the default of a spec that names none
    direct = GOOD.replace('memory = "1G"', 'memory = "1G"\ndata_path = "direct"')
    assert parse_spec(direct).data_path == "direct"


def test_memory_mode() -> None:
    assert parse_spec(GOOD).memory_mode == "shared"
    dsm = GOOD.replace('memory = "1G"', 'memory = "1G"\nmemory_mode = "dsm"')
    assert parse_spec(dsm).memory_mode == "dsm"
    assert "vm.memory_mode: 'numa' is not one of shared, dsm" in _err(
        GOOD.replace('memory = "1G"', 'memory = "1G"\nmemory_mode = "numa"')
    )


def test_shards_on_different_hosts_need_dsm() -> None:
    one_named = GOOD.replace("vcpus = [2, 3]", 'vcpus = [2, 3]\nhost = "node-b"')
    # a shard that names no host goes where the named one goes: one host, shared is fine
    assert parse_spec(one_named).memory_mode == "shared"
    two_hosts = one_named.replace('vcpus = "0-1"', 'vcpus = "0-1"\nhost = "node-a"')
    msg = _err(two_hosts)
    assert "vm.memory_mode: shards 0 and 1 are on different hosts (node-a, node-b)" in msg
    assert 'memory_mode must be "dsm", not "shared"' in msg
    dsm = two_hosts.replace('memory = "1G"', 'memory = "1G"\nmemory_mode = "dsm"')
    assert parse_spec(dsm).shards[1].host == "node-b"
    # one host named on every shard is one host: shared is fine
    same = one_named.replace('vcpus = "0-1"', 'vcpus = "0-1"\nhost = "node-b"')
    assert parse_spec(same).memory_mode == "shared"


@pytest.mark.parametrize(
    ("kind", "args", "why"),
    [
        ("device", "vhost-vsock-pci,guest-cid=3", "vhost-vsock-pci reaches guest RAM"),
        ("device", "ivshmem-plain,memdev=m", "ivshmem-plain reaches guest RAM"),
        ("drive", "file=/d.img,if=none,id=d,cache=none", "cache=none pins guest pages"),
        ("drive", "file=/d.img,if=none,id=d,aio=io_uring", "aio=io_uring pins guest pages"),
    ],
)
def test_dsm_refuses_what_bypasses_the_host_mmu(kind: str, args: str, why: str) -> None:
    spec = GOOD.replace('memory = "1G"', 'memory = "1G"\nmemory_mode = "dsm"')
    spec += f'[[device]]\n{kind} = "{args}"\nshard = 0\n'
    msg = _err(spec)
    assert f"device[1].{kind}: {why}" in msg
    assert 'not allowed with memory_mode "dsm"' in msg
    # the same device is fine with shared memory
    parse_spec(spec.replace('memory_mode = "dsm"', 'memory_mode = "shared"'))


def test_dsm_refuses_extra_memory_backends() -> None:
    spec = GOOD.replace(
        'memory = "1G"',
        'memory = "1G"\nmemory_mode = "dsm"\n'
        'qemu_args = ["-object", "memory-backend-ram,id=m,size=1M"]',
    )
    assert "qemu_args that add memory backends" in _err(spec)


def test_clock_sync_and_test_knob() -> None:
    spec = parse_spec(GOOD)
    assert spec.clock_sync == "auto"
    assert not clock_sync_enabled(spec)  # one host: off
    two_hosts = (
        GOOD.replace('vcpus = "0-1"', 'vcpus = "0-1"\nhost = "a"')
        .replace("vcpus = [2, 3]", 'vcpus = [2, 3]\nhost = "b"')
        .replace('memory = "1G"', 'memory = "1G"\nmemory_mode = "dsm"')
    )
    assert clock_sync_enabled(parse_spec(two_hosts))
    off = two_hosts.replace('memory = "1G"', 'memory = "1G"\nclock_sync = "off"')
    assert not clock_sync_enabled(parse_spec(off))
    on = GOOD.replace('memory = "1G"', 'memory = "1G"\nclock_sync = "on"')
    assert clock_sync_enabled(parse_spec(on))
    assert "vm.clock_sync: 'yes' is not one of auto, on, off" in _err(
        GOOD.replace('memory = "1G"', 'memory = "1G"\nclock_sync = "yes"')
    )
    knob = GOOD.replace(
        "vcpus = [2, 3]", "vcpus = [2, 3]\ntest_clock_skew_ns = -7\ntest_clock_drift_ppm = 200"
    )
    s1 = parse_spec(knob).shards[1]
    assert (s1.test_clock_skew_ns, s1.test_clock_drift_ppm) == (-7, 200)
    assert parse_spec(knob).shards[0].test_clock_drift_ppm == 0
    assert "shard[1].test_clock_drift_ppm: 20000 is outside -10000..10000" in _err(
        knob.replace("= 200", "= 20000")
    )


def test_dsm_delay_knob() -> None:
    dsm = GOOD.replace('memory = "1G"', 'memory = "1G"\nmemory_mode = "dsm"')
    knob = dsm.replace("vcpus = [2, 3]", 'vcpus = [2, 3]\ntest_dsm_delay = "hold:2000+install:300"')
    spec = parse_spec(knob)
    assert spec.shards[1].test_dsm_delay == "hold:2000+install:300"
    assert spec.shards[0].test_dsm_delay == ""
    for bad in ("hold", "hold:x", "late:5", "hold:-1", "hold:10000001"):
        err = _err(knob.replace("hold:2000+install:300", bad))
        assert f"shard[1].test_dsm_delay: {bad.split('+')[0]!r} is not EVENT:MICROSECONDS" in err
    shared = GOOD.replace("vcpus = [2, 3]", 'vcpus = [2, 3]\ntest_dsm_delay = "hold:5"')
    assert 'shard[1].test_dsm_delay: needs memory_mode "dsm"' in _err(shared)


def test_posted_writes_follow_the_memory_mode() -> None:
    assert parse_spec(GOOD).posted_writes == "auto"  # the default
    assert posted_writes_enabled(parse_spec(GOOD))  # two shards sharing guest RAM
    off = GOOD.replace('memory = "1G"', 'memory = "1G"\nposted_writes = "off"')
    assert not posted_writes_enabled(parse_spec(off))
    auto = GOOD.replace('memory = "1G"', 'memory = "1G"\nposted_writes = "auto"')
    assert posted_writes_enabled(parse_spec(auto))
    dsm = auto.replace('memory = "1G"', 'memory = "1G"\nmemory_mode = "dsm"')
    assert not posted_writes_enabled(parse_spec(dsm))  # no memory every shard maps
    dsm_default = GOOD.replace('memory = "1G"', 'memory = "1G"\nmemory_mode = "dsm"')
    assert not posted_writes_enabled(parse_spec(dsm_default))  # the default is no error there
    one = auto.replace('vcpus = "0-1"', 'vcpus = "0-3"').split("[[shard]]\nid = 1")[0]
    assert not posted_writes_enabled(parse_spec(one.replace("shard = 1", "shard = 0")))
    assert "vm.posted_writes: 'yes' is not one of auto, on, off" in _err(
        GOOD.replace('memory = "1G"', 'memory = "1G"\nposted_writes = "yes"')
    )
    both = GOOD.replace('memory = "1G"', 'memory = "1G"\nposted_writes = "on"\nmemory_mode = "dsm"')
    assert 'vm.posted_writes: "on" needs memory_mode "shared"' in _err(both)


def test_code_announce_defaults_to_fast() -> None:
    assert parse_spec(GOOD).code_announce == "fast"
    plain = GOOD.replace('memory = "1G"', 'memory = "1G"\ncode_announce = "plain"')
    assert parse_spec(plain).code_announce == "plain"
    assert "vm.code_announce: 'lazy' is not one of fast, plain" in _err(
        GOOD.replace('memory = "1G"', 'memory = "1G"\ncode_announce = "lazy"')
    )


def test_wakeup_cuts_default_to_on() -> None:
    spec = parse_spec(GOOD)
    assert (spec.reply_poll, spec.serve_in_rx, spec.reply_read, spec.irq_in_rx) == ("on",) * 4
    assert spec.local_config == "on"
    off = GOOD.replace('memory = "1G"', 'memory = "1G"\nlocal_config = "off"')
    assert parse_spec(off).local_config == "off"
    assert spec.halt_poll == "on"
    off = GOOD.replace('memory = "1G"', 'memory = "1G"\nhalt_poll = "off"')
    assert parse_spec(off).halt_poll == "off"
    both = GOOD.replace('memory = "1G"', 'memory = "1G"\nreply_read = "off"\nirq_in_rx = "off"')
    assert (parse_spec(both).reply_read, parse_spec(both).irq_in_rx) == ("off", "off")
    assert "vm.reply_read: 'no' is not one of on, off" in _err(
        GOOD.replace('memory = "1G"', 'memory = "1G"\nreply_read = "no"')
    )
    off = GOOD.replace('memory = "1G"', 'memory = "1G"\nreply_poll = "off"\nserve_in_rx = "off"')
    assert (parse_spec(off).reply_poll, parse_spec(off).serve_in_rx) == ("off", "off")
    assert "vm.serve_in_rx: 'yes' is not one of on, off" in _err(
        GOOD.replace('memory = "1G"', 'memory = "1G"\nserve_in_rx = "yes"')
    )


def test_link_timeout_reaches_the_routers_and_is_checked() -> None:
    assert parse_spec(GOOD).link_timeout == 1.0  # the routers' own default
    slow = GOOD.replace('memory = "1G"', 'memory = "1G"\nlink_timeout = 20')
    assert parse_spec(slow).link_timeout == 20.0
    for bad in ("0.1", "601"):
        err = _err(GOOD.replace('memory = "1G"', f'memory = "1G"\nlink_timeout = {bad}'))
        assert f"vm.link_timeout: {float(bad):g} s is outside 0.5..600 s" in err
    assert "vm.link_timeout" in _err(
        GOOD.replace('memory = "1G"', 'memory = "1G"\nlink_timeout = "2"')
    )
