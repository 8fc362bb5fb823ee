"""Checks of a VM's inputs before any process starts: what QEMU would take silently but
the guest cannot use, reported at once with the figures."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

from cluster.errors import DqemuError
from cluster.qemu_cmdline import is_linux_kernel

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192  # the multiboot header lies in the first 8 KiB, 4-byte aligned


def kernel_kind(path: Path) -> str:
    """``linux`` (bzImage), ``multiboot`` or ``elf``: the kernels QEMU's ``-kernel`` boots.

    QEMU itself takes any other file as an ancient zImage and jumps into it, so a wrong
    file would only show as a guest that never prints anything."""
    try:
        with path.open("rb") as f:
            head = f.read(MULTIBOOT_SEARCH)
    except OSError as exc:
        raise DqemuError(f"kernel {path}: cannot read it: {exc.strerror}") from None
    if is_linux_kernel(path):
        return "linux"
    for off in range(0, len(head) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", head, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return "multiboot"
    if head[:4] == b"\x7fELF":
        return "elf"
    raise DqemuError(
        f"kernel {path} is not a bootable kernel: not a Linux bzImage (no 'HdrS' at 0x202), "
        f"no multiboot header in its first 8 KiB, and not an ELF file"
    )


def host_memory_mib() -> int:
    """The host's RAM (MemTotal) in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise DqemuError("cannot read the host's memory size from /proc/meminfo")


def check_memory(
    memory_mib: int, shm: Path = Path("/dev/shm"), *, memory_mode: str = "shared", shards: int = 1
) -> None:
    """Guest RAM must fit in the host's RAM (refused). In ``shared`` mode it should fit in
    /dev/shm, where its backing file lives (warned: a guest that touches more gets SIGBUS);
    in ``dsm`` mode there is no file, but each of the shards on this host may end up
    holding a copy of every page (warned when they would not fit together)."""
    host = host_memory_mib()
    if memory_mib > host:
        raise DqemuError(
            f"guest memory {_size(memory_mib)} is more than this host's RAM ({_size(host)})"
        )
    if memory_mode == "dsm":
        if memory_mib * shards > host:
            print(
                f"dqemu: warning: {shards} shards of {_size(memory_mib)} each may hold a copy "
                f"of every page, more than this host's RAM ({_size(host)})",
                file=sys.stderr,
            )
        return
    st = os.statvfs(shm)
    free = st.f_bavail * st.f_frsize >> 20
    if memory_mib > free:
        print(
            f"dqemu: warning: guest memory {_size(memory_mib)} is more than {shm} has free "
            f"({_size(free)}): the guest fails if it touches more than that",
            file=sys.stderr,
        )


def _size(mib: int) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib} MiB"


# A guest that has printed nothing at all on its serial console after this long (or half
# its timeout, if that is shorter, but never less than SILENCE_MIN_S) is probably not booting.
SILENCE_MAX_S = 120.0
SILENCE_MIN_S = 30.0


def silence_limit(timeout: float) -> float:
    return min(SILENCE_MAX_S, max(SILENCE_MIN_S, timeout / 2))


def silence_ends_run(kind: str, append: str) -> bool:
    """Does a silent console mean the guest is not booting? For a Linux kernel, which
    prints on ttyS0 from the start (``console=ttyS0`` is always on its command line),
    unless told to keep quiet. A multiboot or ELF guest may be silent on purpose (its
    console may be VGA, or it ends through isa-debug-exit): only a warning."""
    words = append.split()
    return (
        kind == "linux"
        and "quiet" not in words
        and not any(w.startswith("loglevel=") for w in words)
    )


def check_transport(transport: str, shards: int) -> bool:
    """``transport = "rdma"`` needs RDMA here, checked before anything starts; it never
    falls back to TCP. True: the launcher adds soft-RoCE devices of its own for the routers
    (the kernel has rdma_rxe, :mod:`loopback.rxe`); False: TCP, or an existing device."""
    if transport != "rdma" or shards < 2:
        return False
    from cluster.rdma_devices import SYS_IB, RdmaUnavailable, check_usable
    from loopback.rxe import unavailable

    why_no_rxe = unavailable()
    if why_no_rxe is None:
        return True
    try:
        check_usable()
    except RdmaUnavailable as e:
        # a kernel without RDMA has no soft-RoCE either: the first reason says it all
        rxe = f"; and no soft-RoCE: {why_no_rxe}" if os.path.isdir(SYS_IB) else ""
        raise DqemuError(f'transport "rdma" cannot run here: {e}{rxe}') from None
    return False
