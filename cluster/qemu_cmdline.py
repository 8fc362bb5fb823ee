"""The QEMU command line of one shard, derived from the VM spec.

Every shard gets the same machine (vCPUs, RAM, devices, kernel) so that all of them build
identical guest-visible state; what differs per shard is only its identity and sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.spec import VMSpec

# Added to every guest's kernel command line: serial console, and a panic that reboots at
# once instead of hanging (the launcher reads the panic from the console and ends the VM).
BASE_APPEND = "console=ttyS0 panic=-1"


@dataclass(frozen=True)
class ShardPaths:
    """Per-shard sockets and files, all inside the VM's private run directory."""

    qmp: Path
    serial: Path | None  # the console socket, on the shard that owns the serial port
    ram: Path  # guest RAM backing file, shared by every shard of the VM


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path | None
    append: str


def shard_argv(
    qemu: Path, spec: VMSpec, shard: int, paths: ShardPaths, boot: BootFiles
) -> list[str]:
    argv = [
        str(qemu),
        "-name", f"{spec.name},debug-threads=on",
        "-machine", f"{spec.machine},memory-backend=ram0",
        "-accel", "tcg,thread=multi",
        "-smp", str(spec.vcpus),
        "-m", f"{spec.memory_mib}M",
        "-object",
        f"memory-backend-file,id=ram0,size={spec.memory_mib}M,mem-path={paths.ram},share=on",
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
        "-kernel", str(boot.kernel),
        "-append", f"{BASE_APPEND} {boot.append}".strip(),
    ]  # fmt: skip
    if boot.initrd is not None:
        argv += ["-initrd", str(boot.initrd)]
    if paths.serial is not None:
        argv += [
            "-chardev", f"socket,id=console,path={paths.serial},server=on,wait=on",
            "-serial", "chardev:console",
        ]  # fmt: skip
    for dev in spec.devices:
        argv += [f"-{dev.kind}", dev.args]
    return argv
