"""The QEMU command line of one shard, derived from the VM spec.

Every shard gets the same machine (vCPUs, RAM, devices, firmware, kernel) so that all of
them build identical guest-visible state, including ACPI tables. What differs per shard:
its ``dqemu-shard`` object (identity, router socket, who runs what), its sockets, and the
*backends* of devices it does not own, which are replaced by inert ones so that a disk
image or a network backend is opened by its owner only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.spec import WAKEUP_CUT_KEYS, DeviceSpec, VMSpec, clock_sync_enabled
from cluster.vm_options import smp_arg

# Added to a Linux (bzImage) kernel's command line: serial console, and a panic that
# reboots at once instead of hanging (the launcher reads the panic from the console and
# ends the VM). A multiboot kernel gets only what the spec says.
BASE_APPEND = "console=ttyS0 panic=-1"
# Request/reply timeout of the shard's forwarding: expiry is a loud, fatal error.
FORWARD_TIMEOUT_MS = 10000


@dataclass(frozen=True)
class ShardPaths:
    """Per-shard sockets and files, all inside the VM's private run directory."""

    qmp: Path  # the launcher's own QMP socket
    serial: Path | None  # the console socket, on the shard that owns the serial port
    ram: tuple[Path, ...]  # guest RAM files (one per NUMA node) every shard maps; () in dsm
    router: Path | None  # the local router's shard socket (None: an unsharded VM)
    user_qmp: Path | None = None  # a second QMP socket for operators and tests
    # the file every shard maps to count posted writes (None: every write waits for a reply)
    posted: Path | None = None


@dataclass(frozen=True)
class BootFiles:
    kernel: Path | None  # None: the firmware boots from a disk, CD or network
    initrd: Path | None
    append: str
    linux: bool = True  # a Linux bzImage: its command line gets BASE_APPEND


def is_linux_kernel(path: Path) -> bool:
    """A Linux bzImage carries the boot protocol magic "HdrS" at offset 0x202."""
    try:
        with path.open("rb") as f:
            f.seek(0x202)
            return f.read(4) == b"HdrS"
    except OSError:
        return False


def kernel_append(boot: BootFiles) -> str:
    return f"{BASE_APPEND} {boot.append}".strip() if boot.linux else boot.append


def device_id(dev: DeviceSpec, index: int) -> str:
    """The qdev id of a -device entry: the user's ``id=``, else one we add."""
    m = re.search(r"(?:^|,)id=([^,]+)", dev.args)
    return m.group(1) if m else f"dqdev{index}"


def _option_id(args: str) -> str | None:
    m = re.search(r"(?:^|,)id=([^,]+)", args)
    return m.group(1) if m else None


def _device_args(dev: DeviceSpec, index: int, shard: int) -> list[str]:
    """The option for ``dev`` on ``shard``: the real thing on its owner, else an inert stand-in."""
    if dev.kind == "device":
        args = dev.args if _option_id(dev.args) else f"{dev.args},id={device_id(dev, index)}"
        return ["-device", args]
    if dev.shard == shard or dev.kind == "object":
        return [f"-{dev.kind}", dev.args]
    oid = _option_id(dev.args)
    if dev.kind == "drive":
        return ["-drive", shadow_drive(dev.args)]
    if dev.kind == "netdev" and oid:
        return ["-netdev", f"hubport,id={oid},hubid=0"]
    if dev.kind == "chardev" and oid:
        return ["-chardev", f"null,id={oid}"]
    return [f"-{dev.kind}", dev.args]


_ON = ("on", "yes", "true")


def _option_value(args: str, key: str) -> str | None:
    m = re.search(rf"(?:^|,){re.escape(key)}=([^,]*)", args)
    return m.group(1) if m else None


def shadow_drive(args: str) -> str:
    """The -drive of a shard that does not own the drive: the same image (same size and
    contents for the shadow front end), never locked here, and never written. The shadow
    device performs no I/O (its accesses go to the owner), but it must accept the node as
    its owner does: IDE and AHCI disks refuse a read-only node, so a writable drive gets a
    temporary overlay (snapshot=on: the image itself is opened read-only, any write would
    land in an unlinked temporary file). A read-only drive stays read-only."""
    extra = ["file.locking=off"]
    if _option_value(args, "read-only") not in _ON and _option_value(args, "snapshot") not in _ON:
        extra.insert(0, "snapshot=on")
    return ",".join([args, *extra])


def numa_nodes(spec: VMSpec) -> list[int]:
    """RAM per NUMA node in MiB (one RAM file each): by default one node per shard when
    sharded with NUMA on, else one (``cluster.vm_options.numa_layout``)."""
    return [node.mib for node in spec.nodes]


def _cpulist(cpus: tuple[int, ...]) -> str:
    """QEMU's -numa cpus= syntax: ranges joined by ':' continuation (cpus=0-1,cpus=4)."""
    return ",".join(f"cpus={c}" for c in cpus)


def shard_object(spec: VMSpec, shard: int, router: Path, posted: Path | None = None) -> str:
    cpumap = ":".join(str(spec.shard_of_vcpu(c)) for c in range(spec.vcpus))
    owners = "+".join(
        f"{device_id(d, i)}@{d.shard}" for i, d in enumerate(spec.devices) if d.kind == "device"
    )
    obj = (
        f"dqemu-shard,id=dqemu,shard={shard},router={router},cpumap={cpumap},"
        f"default-owner={spec.io_shard},timeout-ms={FORWARD_TIMEOUT_MS}"
    )
    if spec.memory_mode == "dsm":
        obj += f",dsm=on,dsm-homes={dsm_homes(spec)}"
    if clock_sync_enabled(spec):
        obj += ",clock-sync=on"
    if posted is not None:
        obj += f",posted-shm={posted}"
    if spec.code_announce == "fast":
        obj += ",fast-announce=on"
    obj += "".join(
        f",{key.replace('_', '-')}=off" for key in WAKEUP_CUT_KEYS if getattr(spec, key) == "off"
    )
    knob = spec.shards[shard]
    if knob.test_clock_skew_ns or knob.test_clock_drift_ppm:
        obj += (
            f",test-clock-skew-ns={knob.test_clock_skew_ns}"
            f",test-clock-drift-ppm={knob.test_clock_drift_ppm}"
        )
    if knob.test_dsm_delay:
        obj += f",test-dsm-delay={knob.test_dsm_delay}"
    return f"{obj},owners={owners}" if owners else obj


def with_rdma_device(argv: Sequence[str], device: str) -> list[str]:
    """A shard's argv with the RDMA device of its direct links (its router's device, which a
    host knows only once it has set up its links: loopback's rxe devices) on its dqemu-shard
    object."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("dqemu-shard,") and i and out[i - 1] == "-object":
            out[i] = f"{arg},rdma-device={device}"
            return out
    raise ValueError("no dqemu-shard object in the shard's command line")


def dsm_homes(spec: VMSpec) -> str:
    """The home shard of each memory backend (docs/dsm.md §2.2): the shard of its NUMA
    node; "-" (2 MiB stripes over every shard) when one node spans several shards."""
    if len(spec.nodes) == 1 and len(spec.shards) > 1:
        return "-"
    return ":".join(str(node.shard) for node in spec.nodes)


def shard_argv(
    qemu: Path, spec: VMSpec, shard: int, paths: ShardPaths, boot: BootFiles
) -> list[str]:
    argv = [
        str(qemu),
        "-name", f"{spec.name or 'dqemu'}-shard{shard},debug-threads=on",
        "-accel", "tcg,thread=multi",
        "-smp", smp_arg(spec.vcpus, spec.topology, len(spec.nodes)),
        "-m", f"{spec.memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-msg", "timestamp=on",  # logs say when a shard noticed a failure
        "-S",
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
    ]  # fmt: skip
    if boot.kernel is not None:
        argv += ["-kernel", str(boot.kernel), "-append", kernel_append(boot)]
    argv += _machine_args(spec, paths)
    if paths.user_qmp is not None:
        argv += ["-qmp", f"unix:{paths.user_qmp},server=on,wait=off"]
    if boot.initrd is not None:
        argv += ["-initrd", str(boot.initrd)]
    if paths.serial is not None:
        argv += [
            "-chardev", f"socket,id=console,path={paths.serial},server=on,wait=on",
            "-serial", "chardev:console",
        ]  # fmt: skip
    else:
        argv += ["-serial", "null"]  # the same UART exists everywhere; only its owner talks
    for i, dev in enumerate(spec.devices):
        argv += _device_args(dev, i, shard)
    if paths.router is not None:
        argv += ["-object", shard_object(spec, shard, paths.router, paths.posted)]
    # The unsupported escape hatch: last, so that it can add to anything above.
    return argv + list(spec.qemu_args) + list(spec.shards[shard].qemu_args)


def ram_backend(spec: VMSpec, paths: ShardPaths, node: int) -> str:
    """The memory backend of NUMA node ``node``: its RAM file, mapped shared by every
    shard, or in ``dsm`` mode this shard's own anonymous RAM (docs/dsm.md §1: ``merge=off``
    keeps KSM from merging write-protected pages, ``reserve=off`` keeps N shards on one
    host from each accounting for the whole guest up front)."""
    size = f"id=ram{node},size={spec.nodes[node].mib}M"
    if spec.memory_mode == "dsm":
        return f"memory-backend-ram,{size},share=off,prealloc=off,merge=off,reserve=off"
    return f"memory-backend-file,{size},mem-path={paths.ram[node]},share=on"


def _machine_args(spec: VMSpec, paths: ShardPaths) -> list[str]:
    """-machine, -cpu, the RAM backends and NUMA nodes, -no-reboot: the same on every shard."""
    machine = ",".join(x for x in (spec.machine, spec.machine_options) if x)
    argv = ["-cpu", spec.cpu] if spec.cpu else []
    if spec.no_reboot:
        argv.append("-no-reboot")  # a guest reset becomes a shutdown (reason guest-reset)
    if len(spec.nodes) == 1:
        return [
            *argv,
            "-machine", f"{machine},memory-backend=ram0",
            "-object", ram_backend(spec, paths, 0),
        ]  # fmt: skip
    argv += ["-machine", machine]
    for i, node in enumerate(spec.nodes):
        argv += [
            "-object", ram_backend(spec, paths, i),
            "-numa", f"node,nodeid={i},{_cpulist(node.vcpus)},memdev=ram{i}",
        ]  # fmt: skip
    return argv
