"""Per-shard QEMU command lines: same machine everywhere, backends only on their owner."""

from __future__ import annotations

from pathlib import Path

from cluster.qemu_cmdline import (
    BootFiles,
    ShardPaths,
    is_linux_kernel,
    numa_nodes,
    shadow_drive,
    shard_argv,
)
from cluster.spec import parse_spec

SPEC = """\
[vm]
vcpus = 4
memory = "1000M"
[boot]
kernel = "guest:cloud"
[[shard]]
id = 0
vcpus = "0-1"
[[shard]]
id = 1
vcpus = "2-3"
[[device]]
drive = "file=/d.img,if=none,id=d0,format=raw"
shard = 1
[[device]]
device = "virtio-blk-pci,drive=d0"
shard = 1
[[device]]
netdev = "user,id=n0"
shard = 1
"""

BOOT = BootFiles(Path("/k"), Path("/i"), "dq.run=x")


def argv(shard: int) -> list[str]:
    spec = parse_spec(SPEC)
    paths = ShardPaths(
        qmp=Path(f"/r/s{shard}.qmp"),
        serial=Path("/r/console.sock") if shard == 0 else None,
        ram=(Path("/dev/shm/r0"), Path("/dev/shm/r1")),
        router=Path(f"/r/router{shard}/shard.sock"),
    )
    return shard_argv(Path("/q"), spec, shard, paths, BOOT)


def opt(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def test_numa_split_is_even_and_complete() -> None:
    assert numa_nodes(parse_spec(SPEC)) == [500, 500]
    spec = parse_spec(SPEC.replace('"1000M"', '"1001M"'))
    assert sum(numa_nodes(spec)) == 1001


def test_same_machine_on_every_shard() -> None:
    a, b = argv(0), argv(1)
    for name in ("-smp", "-m", "-machine", "-numa", "-kernel", "-append", "-initrd"):
        assert opt(a, name) == opt(b, name), name
    assert opt(a, "-smp") == ["4,sockets=4,cores=1,threads=1"]  # no socket spans two nodes
    assert opt(a, "-numa") == [
        "node,nodeid=0,cpus=0,cpus=1,memdev=ram0",
        "node,nodeid=1,cpus=2,cpus=3,memdev=ram1",
    ]
    # The device frontend is identical, with the id the owner list refers to.
    assert opt(a, "-device") == opt(b, "-device") == ["virtio-blk-pci,drive=d0,id=dqdev1"]


def test_backends_only_on_owner() -> None:
    owner, other = argv(1), argv(0)
    assert opt(owner, "-drive") == ["file=/d.img,if=none,id=d0,format=raw"]
    assert opt(other, "-drive") == [
        "file=/d.img,if=none,id=d0,format=raw,snapshot=on,file.locking=off"
    ]
    assert opt(owner, "-netdev") == ["user,id=n0"]
    assert opt(other, "-netdev") == ["hubport,id=n0,hubid=0"]


def test_console_on_io_shard_only() -> None:
    assert opt(argv(0), "-serial") == ["chardev:console"]
    assert opt(argv(1), "-serial") == ["null"]


def test_shard_object() -> None:
    objs = [o for o in opt(argv(1), "-object") if o.startswith("dqemu-shard")]
    assert objs == [
        "dqemu-shard,id=dqemu,shard=1,router=/r/router1/shard.sock,cpumap=0:0:1:1,"
        "default-owner=0,timeout-ms=10000,fast-announce=on,owners=dqdev1@1"
    ]


def test_shard_object_clock_sync_and_knob() -> None:
    spec = parse_spec(
        SPEC.replace('memory = "1000M"', 'memory = "1000M"\nclock_sync = "on"').replace(
            'vcpus = "2-3"', 'vcpus = "2-3"\ntest_clock_skew_ns = 5\ntest_clock_drift_ppm = -3'
        )
    )

    def obj(shard: int) -> str:
        ram = (Path("/dev/shm/r0"), Path("/dev/shm/r1"))
        paths = ShardPaths(qmp=Path("/q"), serial=None, ram=ram, router=Path("/r"))
        args = shard_argv(Path("/q"), spec, shard, paths, BOOT)
        return next(o for o in opt(args, "-object") if o.startswith("dqemu-shard"))

    assert ",clock-sync=on," in obj(0) and "test-clock" not in obj(0)
    assert ",test-clock-skew-ns=5,test-clock-drift-ppm=-3" in obj(1)
    assert "clock-sync" not in next(o for o in opt(argv(1), "-object") if "dqemu-shard" in o)


def test_shard_object_dsm_delay_knob() -> None:
    spec = parse_spec(
        SPEC.replace('memory = "1000M"', 'memory = "1000M"\nmemory_mode = "dsm"').replace(
            'vcpus = "2-3"', 'vcpus = "2-3"\ntest_dsm_delay = "hold:700"'
        )
    )
    paths = ShardPaths(qmp=Path("/q"), serial=None, ram=(), router=Path("/r"))
    objs = [
        next(
            o
            for o in opt(shard_argv(Path("/q"), spec, i, paths, BOOT), "-object")
            if "dqemu-shard" in o
        )
        for i in (0, 1)
    ]
    assert "test-dsm-delay" not in objs[0]
    assert ",test-dsm-delay=hold:700" in objs[1]


def test_unsharded_has_no_shard_object() -> None:
    spec = parse_spec('[vm]\nvcpus = 2\nmemory = 256\n[boot]\nkernel = "guest:cloud"\n')
    paths = ShardPaths(Path("/q.qmp"), Path("/c.sock"), (Path("/dev/shm/r0"),), None)
    args = shard_argv(Path("/q"), spec, 0, paths, BOOT)
    assert not any(o.startswith("dqemu-shard") for o in opt(args, "-object"))
    assert "-numa" not in args
    assert opt(args, "-smp") == ["2"]
    assert opt(args, "-machine") == ["q35,memory-backend=ram0"]


def one_shard_argv(vm: str, boot: BootFiles = BOOT, shard: str = "") -> list[str]:
    spec = parse_spec(f'[vm]\nvcpus = 4\nmemory = 256\n{vm}\n[[shard]]\nid = 0\nvcpus = "0-3"\n'
                      f"{shard}\n")  # fmt: skip
    ram = tuple(Path(f"/dev/shm/r{i}") for i in range(len(spec.nodes)))
    paths = ShardPaths(Path("/q.qmp"), Path("/c.sock"), ram, None)
    return shard_argv(Path("/q"), spec, 0, paths, boot)


def test_machine_options_in_argv() -> None:
    args = one_shard_argv('cpu = "qemu64,+x2apic"\nmachine = "pc"\nmachine_options = "hpet=off"\n'
                          "sockets = 2\ncores = 2\nno_reboot = true")  # fmt: skip
    assert opt(args, "-cpu") == ["qemu64,+x2apic"]
    assert opt(args, "-machine") == ["pc,hpet=off,memory-backend=ram0"]
    assert opt(args, "-smp") == ["4,sockets=2,cores=2,threads=1"]
    assert "-no-reboot" in args


def test_several_numa_nodes_on_one_shard() -> None:
    args = one_shard_argv("", shard="numa_nodes = 2")
    assert opt(args, "-machine") == ["q35"]
    assert opt(args, "-numa") == [
        "node,nodeid=0,cpus=0,cpus=1,memdev=ram0",
        "node,nodeid=1,cpus=2,cpus=3,memdev=ram1",
    ]
    assert opt(args, "-smp") == ["4,sockets=4,cores=1,threads=1"]


def test_vga_on_its_shard() -> None:
    spec = parse_spec(
        SPEC.replace('memory = "1000M"', 'memory = "1000M"\nvga = "std"\nvga_shard = 1')
    )
    paths = ShardPaths(Path("/q.qmp"), None, (Path("/r0"), Path("/r1")), Path("/r/s.sock"))
    args = shard_argv(Path("/q"), spec, 0, paths, BOOT)
    assert "VGA,id=dqvga" in opt(args, "-device")
    assert "dqvga@1" in next(o for o in opt(args, "-object") if o.startswith("dqemu-shard"))
    assert opt(args, "-vga") == ["none"]  # no default VGA besides


def test_qemu_args_come_last_global_then_shard() -> None:
    args = one_shard_argv('qemu_args = ["-smbios", "type=1,product=x"]',
                          shard='qemu_args = ["-d", "guest_errors"]')  # fmt: skip
    assert args[-4:] == ["-smbios", "type=1,product=x", "-d", "guest_errors"]


def test_linux_prefix_only_for_bzimage(tmp_path: Path) -> None:
    bz = tmp_path / "bzImage"
    bz.write_bytes(bytes(0x202) + b"HdrS" + bytes(100))
    mb = tmp_path / "multiboot.elf"
    mb.write_bytes(b"\x7fELF" + bytes(0x300))
    assert is_linux_kernel(bz) and not is_linux_kernel(mb) and not is_linux_kernel(tmp_path)
    linux = one_shard_argv("", BootFiles(bz, None, "quiet", linux=True))
    assert opt(linux, "-append") == ["console=ttyS0 panic=-1 quiet"]
    multiboot = one_shard_argv("", BootFiles(mb, None, "only=tsc", linux=False))
    assert opt(multiboot, "-append") == ["only=tsc"]


def test_firmware_boot_has_no_kernel() -> None:
    args = one_shard_argv("", BootFiles(None, None, "", linux=False))
    assert "-kernel" not in args and "-append" not in args and "-initrd" not in args


def test_machine_options_same_on_every_shard() -> None:
    vm = 'cpu = "max"\nmachine_options = "pit=off"\nno_reboot = true\nqemu_args = ["-S"]'
    spec = parse_spec(SPEC.replace('memory = "1000M"', f'memory = "1000M"\n{vm}'))
    a, b = (shard_argv(Path("/q"), spec, i, ShardPaths(Path("/q.qmp"), None, (Path("/r0"),
            Path("/r1")), Path("/r/s.sock")), BOOT) for i in (0, 1))  # fmt: skip
    for name in ("-cpu", "-machine", "-smp", "-numa"):
        assert opt(a, name) == opt(b, name), name
    assert opt(a, "-machine") == ["q35,pit=off"]
    assert "-no-reboot" in a and "-no-reboot" in b and a[-1] == b[-1] == "-S"


def test_shadow_drive_is_acceptable_to_every_front_end() -> None:
    # IDE/AHCI disks refuse a read-only node: a writable drive's shadow is a snapshot.
    assert shadow_drive("file=/d.img,if=none,id=d0") == (
        "file=/d.img,if=none,id=d0,snapshot=on,file.locking=off"
    )
    # A drive that is read-only on its owner stays read-only (every front end then accepts it
    # on the owner too); one that already is a snapshot is not made one twice.
    for args in ("file=/c.iso,if=none,id=c,read-only=on", "file=/d.img,id=d,snapshot=on"):
        assert shadow_drive(args) == f"{args},file.locking=off"


def test_dsm_gives_every_shard_private_ram() -> None:
    spec = parse_spec(SPEC.replace('memory = "1000M"', 'memory = "1000M"\nmemory_mode = "dsm"'))
    paths = ShardPaths(Path("/r/s1.qmp"), None, (), Path("/r/router1/shard.sock"))
    args = shard_argv(Path("/q"), spec, 1, paths, BOOT)
    backends = [o for o in opt(args, "-object") if o.startswith("memory-backend")]
    assert backends == [
        f"memory-backend-ram,id=ram{i},size=500M,share=off,prealloc=off,merge=off,reserve=off"
        for i in range(2)
    ]
    assert not any("/dev/shm" in a or "mem-path" in a for a in args)
    shard = [o for o in opt(args, "-object") if o.startswith("dqemu-shard")]
    assert shard[0].endswith(",dsm=on,dsm-homes=0:1,fast-announce=on,owners=dqdev1@1")


def test_dsm_homes_striped_without_numa() -> None:
    spec = parse_spec(
        SPEC.replace('memory = "1000M"', 'memory = "1000M"\nmemory_mode = "dsm"\nnuma = false')
    )
    paths = ShardPaths(Path("/r/s0.qmp"), None, (), Path("/r/router0/shard.sock"))
    shard = [
        o
        for o in opt(shard_argv(Path("/q"), spec, 0, paths, BOOT), "-object")
        if o.startswith("dqemu-shard")
    ]
    assert "dsm-homes=-" in shard[0]


def test_posted_writes_file_is_named_only_when_given() -> None:
    spec = parse_spec(SPEC)
    paths = ShardPaths(Path("/q.qmp"), None, (Path("/r0"), Path("/r1")), Path("/r/s.sock"))
    (obj,) = opt(shard_argv(Path("/q"), spec, 1, paths, BOOT), "-object")[-1:]
    assert "posted-shm" not in obj
    paths = ShardPaths(
        Path("/q.qmp"),
        None,
        (Path("/r0"), Path("/r1")),
        Path("/r/s.sock"),
        posted=Path("/r/posted.shm"),
    )
    (obj,) = opt(shard_argv(Path("/q"), spec, 1, paths, BOOT), "-object")[-1:]
    assert obj.startswith("dqemu-shard,") and ",posted-shm=/r/posted.shm" in obj


def test_fast_announce_follows_the_spec() -> None:
    paths = ShardPaths(Path("/q.qmp"), None, (Path("/r0"), Path("/r1")), Path("/r/s.sock"))
    (obj,) = opt(shard_argv(Path("/q"), parse_spec(SPEC), 1, paths, BOOT), "-object")[-1:]
    assert ",fast-announce=on" in obj
    plain = parse_spec(SPEC.replace("[vm]\n", '[vm]\ncode_announce = "plain"\n', 1))
    (obj,) = opt(shard_argv(Path("/q"), plain, 1, paths, BOOT), "-object")[-1:]
    assert "fast-announce" not in obj


def test_wakeup_cuts_follow_the_spec() -> None:
    paths = ShardPaths(Path("/q.qmp"), None, (Path("/r0"), Path("/r1")), Path("/r/s.sock"))
    (obj,) = opt(shard_argv(Path("/q"), parse_spec(SPEC), 1, paths, BOOT), "-object")[-1:]
    for prop in (
        "reply-poll",
        "serve-in-rx",
        "reply-read",
        "irq-in-rx",
        "local-config",
        "halt-poll",
    ):
        assert prop not in obj  # the shard's default: on
    off = (
        '[vm]\nreply_poll = "off"\nserve_in_rx = "off"\nreply_read = "off"\nirq_in_rx = "off"\n'
        'local_config = "off"\nhalt_poll = "off"\n'
    )
    (obj,) = opt(
        shard_argv(Path("/q"), parse_spec(SPEC.replace("[vm]\n", off, 1)), 1, paths, BOOT),
        "-object",
    )[-1:]
    assert ",reply-poll=off" in obj and ",serve-in-rx=off" in obj
    assert ",reply-read=off" in obj and ",irq-in-rx=off" in obj
    assert ",local-config=off" in obj and ",halt-poll=off" in obj
