"""The VM spec: one TOML file describes a whole distributed VM.

Every shard builds the same machine from it; the placement (which shard runs which vCPU,
which shard owns which device) is part of it. ``docs/spec.md`` documents the format. Loading
reports the first problem as a :class:`SpecError` that names the key and its line.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import DqemuError
from cluster.router.config import LINK_TIMEOUT
from cluster.vm.registry import NAME_RE, NAME_RULE
from cluster.vm_options import (
    NumaNode,
    Topology,
    check_cpu,
    check_machine_options,
    check_qemu_args,
    check_sockets_in_nodes,
    check_topology,
    numa_layout,
    split_even,
    vga_device,
)

MAX_VCPUS = 256
MAX_SHARDS = 64
DEVICE_KINDS = ("device", "drive", "netdev", "chardev", "object")
MACHINES = ("q35", "pc")
# Devices that translate other devices' DMA and remap their interrupts. Their state (root
# and interrupt-remapping table pointers, enables, caches) lives in the device, i.e. only
# on its owner shard: another shard's copy would pass DMA untranslated and drop MSIs.
IOMMU_DEVICES = ("intel-iommu", "amd-iommu", "virtio-iommu-pci")
GUEST_PREFIX = "guest:"


class SpecError(DqemuError):
    """A problem in a VM spec, located by key path and (when known) line."""


# the range of vm.link_timeout (its default: the routers' own, LINK_TIMEOUT)
LINK_TIMEOUT_RANGE = (0.5, 600.0)


@dataclass(frozen=True)
class ShardSpec:
    id: int
    vcpus: tuple[int, ...]
    host: str | None = None
    numa_nodes: int = 1  # NUMA nodes of this shard's vCPUs and RAM slice (vm.numa on)
    qemu_args: tuple[str, ...] = ()  # unsupported: appended to this shard's QEMU only
    # test knob (docs/spec.md): this shard's view of its host clock runs ahead by the skew
    # and fast by the drift, so that one machine can play shards on different hosts
    test_clock_skew_ns: int = 0
    test_clock_drift_ppm: int = 0
    # test knob (docs/dsm.md §13.2): DSM events this shard delays to force races,
    # "EVENT:US" items joined by "+" ("hold:2000+install:500"); "" = none
    test_dsm_delay: str = ""


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # one of DEVICE_KINDS: the QEMU option it becomes (-device, -drive, ...)
    args: str  # the option's argument, passed through to QEMU unchanged
    shard: int  # the owner shard


@dataclass(frozen=True)
class BootSpec:
    kernel: str | None  # a path, "guest:FLAVOUR" (the built Linux test guest), None: firmware
    initrd: str | None
    append: str
    timeout: float  # seconds before the launcher gives up on the guest


@dataclass(frozen=True)
class VMSpec:
    name: str | None  # None: the launcher generates one (cluster/vm/registry.py)
    vcpus: int
    memory_mib: int
    machine: str
    numa: bool
    io_shard: int  # owner of the platform devices: serial, RTC, PIT, IOAPIC, HPET, PCI host
    boot: BootSpec
    shards: tuple[ShardSpec, ...]
    devices: tuple[DeviceSpec, ...] = field(default=())
    source: Path | None = None
    cpu: str | None = None  # -cpu MODEL[,features]; None: QEMU's default
    machine_options: str = ""  # appended to -machine TYPE
    topology: Topology | None = None  # None: -smp N (one socket, or one per NUMA node)
    no_reboot: bool = False  # a guest reset ends the VM
    qemu_args: tuple[str, ...] = ()  # unsupported: appended to every shard's QEMU
    nodes: tuple[NumaNode, ...] = ()  # the NUMA nodes the guest sees (one: no -numa)
    # how frames cross between shards: "router" (through both routers) or "direct" (the
    # routers hand each pair of shards an authenticated connection; docs/protocol.md)
    data_path: str = "direct"
    # guest RAM: "shared" (one RAM file per NUMA node mapped by every shard, one host only)
    # or "dsm" (private RAM per shard kept coherent page by page; docs/dsm.md)
    memory_mode: str = "shared"
    # what the routers' peer links run on: "tcp", or "rdma" (RC queue pairs; docs/protocol.md
    # "RDMA links"), which fails before the VM starts where no RDMA device is usable
    transport: str = "tcp"
    # clock sync across hosts (docs/shard-design.md, Clock): "auto", "on" or "off"
    clock_sync: str = "auto"
    # UART transmit writes to another shard without a reply (docs/shard-design.md, "Posted
    # writes"): "auto" (the default: on with several shards in memory_mode "shared", off in
    # "dsm"), "on" or "off"
    posted_writes: str = "auto"
    # code announcements (docs/shard-design.md §6): "fast" (handled by the receive thread,
    # remembered until the page is invalidated) or "plain" (each one through the main loops)
    code_announce: str = "fast"
    # issue 14's wake-up cuts (docs/shard-design.md §15), "on" (default) or "off" to measure
    # without: a vCPU polls for a short reply before it sleeps (0037); the owner's receive
    # thread serves a UART/RTC/PIT/IOAPIC access itself instead of waking its main loop (0038);
    # the polling vCPU reads its reply from the direct link itself (0039); the receive
    # thread delivers another shard's interrupt itself (0041); a shard other than the PCI
    # host bridge's makes its vCPUs' config cycles itself, reading from the owner only what
    # it must (0042); a halted vCPU polls for its wake-up before it sleeps (0043)
    reply_poll: str = "on"
    serve_in_rx: str = "on"
    reply_read: str = "on"
    irq_in_rx: str = "on"
    local_config: str = "on"
    halt_poll: str = "on"
    # seconds a router waits for a sign of life of a peer router (or of its own shard)
    # before it calls the link dead (docs/protocol.md, liveness); longer where hosts stall
    link_timeout: float = LINK_TIMEOUT

    def shard_of_vcpu(self, vcpu: int) -> int:
        for s in self.shards:
            if vcpu in s.vcpus:
                return s.id
        raise KeyError(vcpu)


CLOCK_SYNC_MODES = ("auto", "on", "off")
POSTED_WRITES_MODES = ("auto", "on", "off")
CODE_ANNOUNCE_MODES = ("fast", "plain")
WAKEUP_CUT_MODES = ("on", "off")
# issue 14's cuts: [vm] keys that take WAKEUP_CUT_MODES, default "on"; each is the shard
# property of the same name with "-" for "_" (qemu_cmdline.py) and the flag "--" + that
WAKEUP_CUT_KEYS = (
    "reply_poll", "serve_in_rx", "reply_read", "irq_in_rx", "local_config", "halt_poll",
)  # fmt: skip
# the test knob's drift limit (the dqemu-shard object's own is larger)
MAX_TEST_CLOCK_DRIFT_PPM = 10_000


def clock_sync_enabled(spec: VMSpec) -> bool:
    """Whether the shards synchronise their clocks over the routers: ``auto`` turns it on
    when the shards name more than one host (a shard without ``host`` goes where the
    named ones go, as for memory_mode)."""
    if spec.clock_sync != "auto":
        return spec.clock_sync == "on"
    return len({s.host for s in spec.shards if s.host}) > 1


def posted_writes_enabled(spec: VMSpec) -> bool:
    """Whether forwarded UART transmit writes go without a reply: the shards count them in
    a file they all map, so only where they share guest RAM (one host, "shared")."""
    if spec.posted_writes == "auto":
        return len(spec.shards) > 1 and spec.memory_mode == "shared"
    return spec.posted_writes == "on" and len(spec.shards) > 1


DATA_PATHS = ("router", "direct")
TRANSPORTS = ("tcp", "rdma")
DEFAULT_DATA_PATH = "direct"
# DQEMU_DATA_PATH=router makes "router" the default of every spec that names none (to run
# the whole test suite on either path without editing it)
DATA_PATH_ENV = "DQEMU_DATA_PATH"


MEMORY_MODES = ("shared", "dsm")
# the shard object's test-dsm-delay events (docs/dsm.md §13.2), and the longest delay
DSM_DELAY_EVENTS = ("hold", "install")
MAX_DSM_DELAY_US = 10_000_000
# What reaches guest RAM behind the host MMU's back, or pins it, cannot be kept coherent by
# userfaultfd faults (docs/dsm.md §1 rule 3): device models refused in memory_mode "dsm"
DSM_REFUSED_DEVICES = ("vhost-", "vfio-", "ivshmem", "virtio-mem", "virtio-pmem")
# drive options that make the block layer pin guest pages (O_DIRECT, native AIO, io_uring)
DSM_REFUSED_DRIVE_OPTIONS = (
    ("cache", "none"),
    ("cache.direct", "on"),
    ("aio", "native"),
    ("aio", "io_uring"),
)


def default_data_path() -> str:
    value = os.environ.get(DATA_PATH_ENV, DEFAULT_DATA_PATH)
    if value not in DATA_PATHS:
        raise DqemuError(f"{DATA_PATH_ENV}={value!r} is not one of {', '.join(DATA_PATHS)}")
    return value


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS_MIB = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_memory(value: str | int) -> int:
    """Memory size in MiB from an int (MiB) or a string like "512M", "2G", "1GiB"."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 2G")
    if isinstance(value, int):
        mib = value
    else:
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size such as 512M or 2G")
        mib_f = int(m.group(1)) * _UNITS_MIB[m.group(2).upper()]
        if mib_f != int(mib_f):
            raise ValueError(f"{value!r} is not a whole number of MiB")
        mib = int(mib_f)
    if not 16 <= mib <= 1024 * 1024:
        raise ValueError(f"{mib} MiB is outside 16 MiB .. 1 TiB")
    return mib


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """'0-1,4' -> (0, 1, 4)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty element in CPU list {text!r}")
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{part!r} is not a CPU number or range")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"range {part!r} runs backwards")
        out.extend(range(a, b + 1))
    return tuple(out)


def even_placement(vcpus: int, shards: int) -> list[list[int]]:
    """vCPUs split over shards in order, as evenly as possible (the first shards get more)."""
    return [list(g) for g in split_even(range(vcpus), shards)]


class _Locator:
    """Finds the line of a key in the TOML text, for error messages."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line_of(self, table: str | None, index: int | None, key: str | None) -> int | None:
        current: tuple[str | None, int | None] = (None, None)
        counts: dict[str, int] = {}
        header_line: int | None = None
        for no, line in enumerate(self.lines, start=1):
            m = self._HEADER.match(line)
            if m:
                name = m.group(2)
                if m.group(1) == "[[":
                    counts[name] = counts.get(name, -1) + 1
                    current = (name, counts[name])
                else:
                    current = (name, None)
                if current == (table, index):
                    header_line = no
                continue
            if (
                current == (table, index)
                and key is not None
                and re.match(rf"^\s*{re.escape(key)}\s*=", line)
            ):
                return no
        return header_line


class _Reader:
    def __init__(self, text: str, origin: str) -> None:
        self.loc = _Locator(text)
        self.origin = origin
        self.flags: dict[tuple[str | None, str | None], str] | None = None
        # [vm] keys that a command-line flag set over the spec file: key -> flag
        self.overrides: dict[str, str] = {}

    def fail(self, table: str | None, index: int | None, key: str | None, msg: str) -> SpecError:
        if table == "vm" and key in self.overrides:
            return SpecError(f"{self.overrides[key]} (over {self.origin}): {msg}")
        if self.flags is not None:
            flag = self.flags.get((table, key)) or self.flags.get((table, None))
            return SpecError(f"{flag}: {msg}" if flag else msg)
        path = ".".join(
            p
            for p in (
                (f"{table}[{index}]" if index is not None else table) if table else None,
                key,
            )
            if p
        )
        line = self.loc.line_of(table, index, key)
        where = f"{self.origin}:{line}" if line else self.origin
        return SpecError(f"{where}: {path}: {msg}" if path else f"{where}: {msg}")

    def table(
        self,
        data: dict[str, Any],
        name: str,
        index: int | None,
        required: set[str],
        optional: dict[str, type | tuple[type, ...]],
        types: dict[str, type | tuple[type, ...]],
    ) -> dict[str, Any]:
        allowed = set(types) | set(optional)
        for key in data:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(name, index, key, f"unknown key (known keys: {known})")
        for key in sorted(required):
            if key not in data:
                raise self.fail(name, index, None, f"missing required key {key!r}")
        for key, value in data.items():
            want = types.get(key) or optional[key]
            if isinstance(value, bool) and bool not in _as_tuple(want):
                raise self.fail(name, index, key, f"expected {_type_name(want)}, got a boolean")
            if not isinstance(value, want):
                raise self.fail(
                    name, index, key, f"expected {_type_name(want)}, got {_toml_type(value)}"
                )
        return data


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }
    return " or ".join(names.get(x, x.__name__) for x in _as_tuple(t))


def _toml_type(v: object) -> str:
    return (
        _type_name(type(v)) if type(v) in (str, int, float, bool, list, dict) else type(v).__name__
    )


def load_spec(path: Path, overrides: dict[str, Any] | None = None) -> VMSpec:
    """The spec in ``path``. ``overrides`` maps [vm] keys to values given by command-line
    flags: they replace the file's values *before* the spec is checked, so every rule
    holds for the spec as it will run, and an error names the flag (``_FLAG_KEYS``)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror}") from exc
    return parse_spec(text, origin=str(path), base=path.parent, overrides=overrides)


def parse_spec(
    text: str,
    origin: str = "<spec>",
    base: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> VMSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{origin}: not valid TOML: {exc}") from exc
    r = _Reader(text, origin)
    if overrides:
        vm = data.get("vm")
        if isinstance(vm, dict):  # else spec_from_data names the missing [vm]
            for key, value in overrides.items():
                vm[key] = value
                r.overrides[key] = _FLAG_KEYS[("vm", key)]
    return spec_from_data(data, r, base)


def _vm_choice(
    r: _Reader, vm: dict[str, Any], key: str, modes: tuple[str, ...], default: str | None = None
) -> str:
    """[vm] ``key``, one of ``modes`` (default: ``default``, else the first)."""
    value = vm.get(key, default or modes[0])
    if value not in modes:
        raise r.fail("vm", None, key, f"{value!r} is not one of {', '.join(modes)}")
    return value


def spec_from_data(data: dict[str, Any], r: _Reader, base: Path | None) -> VMSpec:
    for key in data:
        if key not in ("vm", "boot", "shard", "device"):
            raise r.fail(
                None, None, None, f"unknown table [{key}] (known: vm, boot, shard, device)"
            )
    if "vm" not in data or not isinstance(data["vm"], dict):
        raise r.fail(None, None, None, "missing table [vm]")
    if not isinstance(data.get("boot", {}), dict):
        raise r.fail(None, None, None, "[boot] must be a table")

    vm = r.table(
        data["vm"],
        "vm",
        None,
        required={"vcpus", "memory"},
        optional={
            "name": str,
            "machine": str,
            "numa": bool,
            "io_shard": int,
            "data_path": str,
            "memory_mode": str,
            "transport": str,
            "clock_sync": str,
            "posted_writes": str,
            "code_announce": str,
            **dict.fromkeys(WAKEUP_CUT_KEYS, str),
            "link_timeout": (int, float),
            **VM_OPTION_KEYS,
        },
        types={"vcpus": int, "memory": (str, int)},
    )
    vcpus = vm["vcpus"]
    if not 1 <= vcpus <= MAX_VCPUS:
        raise r.fail("vm", None, "vcpus", f"{vcpus} is outside 1..{MAX_VCPUS}")
    try:
        memory = parse_memory(vm["memory"])
    except ValueError as exc:
        raise r.fail("vm", None, "memory", str(exc)) from None
    name = vm.get("name")
    if name is not None and not NAME_RE.match(name):
        raise r.fail("vm", None, "name", f"{name!r} is not a VM name ({NAME_RULE})")
    machine = vm.get("machine", "q35")
    if machine not in MACHINES:
        raise r.fail("vm", None, "machine", f"{machine!r} is not one of {', '.join(MACHINES)}")

    boot = r.table(
        data.get("boot", {}),
        "boot",
        None,
        required=set(),
        optional={"kernel": str, "initrd": str, "append": str, "timeout": (int, float)},
        types={},
    )
    timeout = float(boot.get("timeout", 300))
    if timeout <= 0:
        raise r.fail("boot", None, "timeout", "must be positive")
    # Without a kernel the firmware (SeaBIOS) boots from a disk, a CD or the network.
    for key in ("initrd", "append"):
        if key in boot and "kernel" not in boot:
            raise r.fail("boot", None, key, "needs boot.kernel (firmware boot takes none)")
    kernel = _boot_file(r, boot, "kernel", base) if "kernel" in boot else None
    initrd = _boot_file(r, boot, "initrd", base) if "initrd" in boot else None

    shards_raw = data.get("shard", [{"id": 0, "vcpus": f"0-{vcpus - 1}"}])
    if not isinstance(shards_raw, list):
        raise r.fail("shard", None, None, "must be an array of tables: write [[shard]]")
    if not 1 <= len(shards_raw) <= MAX_SHARDS:
        raise r.fail("shard", None, None, f"{len(shards_raw)} shards is outside 1..{MAX_SHARDS}")
    shards: list[ShardSpec] = []
    placed: dict[int, int] = {}
    for i, raw in enumerate(shards_raw):
        s = r.table(
            raw,
            "shard",
            i,
            required={"id", "vcpus"},
            optional={
                "host": str,
                "numa_nodes": int,
                "qemu_args": list,
                "test_clock_skew_ns": int,
                "test_clock_drift_ppm": int,
                "test_dsm_delay": str,
            },
            types={"id": int, "vcpus": (str, list)},
        )
        sid = s["id"]
        if sid != i:
            raise r.fail("shard", i, "id", f"shard ids must be 0, 1, 2, ... in order; expected {i}")
        try:
            cpus = parse_cpu_list(s["vcpus"]) if isinstance(s["vcpus"], str) else tuple(s["vcpus"])
        except ValueError as exc:
            raise r.fail("shard", i, "vcpus", str(exc)) from None
        for c in cpus:
            if not isinstance(c, int) or isinstance(c, bool):
                raise r.fail("shard", i, "vcpus", f"{c!r} is not a vCPU index")
            if not 0 <= c < vcpus:
                raise r.fail("shard", i, "vcpus", f"vCPU {c} does not exist (vm.vcpus = {vcpus})")
            if c in placed:
                raise r.fail(
                    "shard", i, "vcpus", f"vCPU {c} is already placed on shard {placed[c]}"
                )
            placed[c] = sid
        if not cpus:
            raise r.fail("shard", i, "vcpus", "a shard must run at least one vCPU")
        options = _shard_options(r, i, s, len(cpus))
        shards.append(
            ShardSpec(
                sid, tuple(sorted(cpus)), s.get("host"), *options, *_clock_knob(r, i, s),
                _dsm_delay_knob(r, i, s),
            )
        )  # fmt: skip
    unplaced = [c for c in range(vcpus) if c not in placed]
    if unplaced:
        raise r.fail(
            "shard", None, None, f"vCPU(s) {', '.join(map(str, unplaced))} not placed on any shard"
        )

    transport = vm.get("transport", "tcp")
    if transport not in TRANSPORTS:
        raise r.fail(
            "vm", None, "transport", f"{transport!r} is not one of {', '.join(TRANSPORTS)}"
        )
    # over RDMA too the direct path is the default: the shards' own queue pairs
    data_path = vm.get("data_path") or default_data_path()
    if data_path not in DATA_PATHS:
        raise r.fail(
            "vm", None, "data_path", f"{data_path!r} is not one of {', '.join(DATA_PATHS)}"
        )
    clock_sync = _vm_choice(r, vm, "clock_sync", CLOCK_SYNC_MODES)
    posted_writes = _vm_choice(r, vm, "posted_writes", POSTED_WRITES_MODES)
    code_announce = _vm_choice(r, vm, "code_announce", CODE_ANNOUNCE_MODES)
    reply_poll = _vm_choice(r, vm, "reply_poll", WAKEUP_CUT_MODES)
    serve_in_rx = _vm_choice(r, vm, "serve_in_rx", WAKEUP_CUT_MODES)
    reply_read = _vm_choice(r, vm, "reply_read", WAKEUP_CUT_MODES)
    irq_in_rx = _vm_choice(r, vm, "irq_in_rx", WAKEUP_CUT_MODES)
    local_config = _vm_choice(r, vm, "local_config", WAKEUP_CUT_MODES)
    halt_poll = _vm_choice(r, vm, "halt_poll", WAKEUP_CUT_MODES)
    link_timeout = float(vm.get("link_timeout", LINK_TIMEOUT))
    low, high = LINK_TIMEOUT_RANGE
    if not low <= link_timeout <= high:
        raise r.fail(
            "vm", None, "link_timeout", f"{link_timeout:g} s is outside {low:g}..{high:g} s"
        )
    io_shard = vm.get("io_shard", 0)
    if not 0 <= io_shard < len(shards):
        raise r.fail("vm", None, "io_shard", f"shard {io_shard} does not exist")

    devices: list[DeviceSpec] = []
    devs_raw = data.get("device", [])
    if not isinstance(devs_raw, list):
        raise r.fail("device", None, None, "must be an array of tables: write [[device]]")
    for i, raw in enumerate(devs_raw):
        kinds = [k for k in DEVICE_KINDS if k in raw]
        d = r.table(
            raw,
            "device",
            i,
            required={"shard"},
            optional=dict.fromkeys(DEVICE_KINDS, str),
            types={"shard": int},
        )
        if len(kinds) != 1:
            raise r.fail(
                "device",
                i,
                None,
                f"needs exactly one of {', '.join(DEVICE_KINDS)} (found {len(kinds)})",
            )
        owner = d["shard"]
        if not 0 <= owner < len(shards):
            raise r.fail(
                "device",
                i,
                "shard",
                f"shard {owner} does not exist (the spec has {len(shards)} shard(s))",
            )
        args = d[kinds[0]]
        if not args.strip():
            raise r.fail("device", i, kinds[0], "is empty")
        devices.append(DeviceSpec(kinds[0], args, owner))
    options = _vm_options(r, vm, shards, devices)

    _check_iommu(r, devices, io_shard)
    memory_mode = vm.get("memory_mode", "shared")
    _check_memory_mode(r, memory_mode, shards, devices, options)
    if posted_writes == "on" and memory_mode != "shared":
        raise r.fail(
            "vm",
            None,
            "posted_writes",
            '"on" needs memory_mode "shared" (the shards count posted writes in memory '
            "they all map)",
        )

    return VMSpec(
        name=name,
        vcpus=vcpus,
        memory_mib=memory,
        machine=machine,
        numa=vm.get("numa", True),
        io_shard=io_shard,
        boot=BootSpec(kernel, initrd, boot.get("append", ""), timeout),
        shards=tuple(shards),
        devices=tuple(devices),
        source=Path(r.origin) if base is not None else None,
        data_path=data_path,
        memory_mode=memory_mode,
        transport=transport,
        clock_sync=clock_sync,
        posted_writes=posted_writes,
        code_announce=code_announce,
        reply_poll=reply_poll,
        serve_in_rx=serve_in_rx,
        reply_read=reply_read,
        irq_in_rx=irq_in_rx,
        local_config=local_config,
        halt_poll=halt_poll,
        link_timeout=link_timeout,
        **options,
    )


def _check_memory_mode(
    r: _Reader,
    mode: str,
    shards: list[ShardSpec],
    devices: list[DeviceSpec],
    options: dict[str, Any],
) -> None:
    """docs/dsm.md §1: shards on different hosts need "dsm"; "dsm" refuses what would
    reach guest RAM behind the host MMU's back or add memory backends of its own."""
    if mode not in MEMORY_MODES:
        raise r.fail("vm", None, "memory_mode", f"{mode!r} is not one of {', '.join(MEMORY_MODES)}")
    # a shard that names no host goes where the others go (loopback: this machine; Ray:
    # the node the named shards are on), so only two different named hosts span hosts
    named = [s for s in shards if s.host]
    first = named[0] if named else shards[0]
    other = next((s for s in named if s.host != first.host), None)
    if other is not None and mode != "dsm":
        where = f"{first.host}, {other.host}"
        raise r.fail(
            "vm",
            None,
            "memory_mode",
            f"shards {first.id} and {other.id} are on different hosts ({where}): "
            f'memory_mode must be "dsm", not "{mode}"',
        )
    if mode != "dsm":
        knob = next((s for s in shards if s.test_dsm_delay), None)
        if knob is not None:
            raise r.fail("shard", knob.id, "test_dsm_delay", 'needs memory_mode "dsm"')
        return
    for i, d in enumerate(devices):
        model = d.args.split(",", 1)[0].strip()
        if d.kind == "device" and model.startswith(DSM_REFUSED_DEVICES):
            raise r.fail(
                "device",
                i,
                d.kind,
                f"{model} reaches guest RAM behind the host MMU: "
                'not allowed with memory_mode "dsm"',
            )
        if d.kind == "drive":
            opts = dict(o.partition("=")[::2] for o in d.args.split(","))
            for key, value in DSM_REFUSED_DRIVE_OPTIONS:
                if opts.get(key, "").strip() == value:
                    raise r.fail(
                        "device",
                        i,
                        d.kind,
                        f"{key}={value} pins guest pages (O_DIRECT or asynchronous I/O): "
                        'not allowed with memory_mode "dsm"',
                    )
    extra = [*options.get("qemu_args", ()), *(a for s in shards for a in s.qemu_args)]
    if any("memory-backend" in a for a in extra):
        raise r.fail(
            "vm", None, "memory_mode", 'qemu_args that add memory backends do not work with "dsm"'
        )


# [vm] keys of the guest-visible machine options (cluster/vm_options.py checks them).
VM_OPTION_KEYS: dict[str, type | tuple[type, ...]] = {
    "cpu": str,
    "machine_options": str,
    "sockets": int,
    "cores": int,
    "threads": int,
    "no_reboot": bool,
    "vga": str,
    "vga_shard": int,
    "qemu_args": list,
}


def _shard_options(r: _Reader, i: int, s: dict[str, Any], cpus: int) -> tuple[int, tuple[str, ...]]:
    """A shard's NUMA node count and its (unsupported) extra QEMU arguments."""
    nodes = s.get("numa_nodes", 1)
    if not 1 <= nodes <= cpus:
        why = f"{nodes} is outside 1..{cpus} (every node runs a vCPU of the shard)"
        raise r.fail("shard", i, "numa_nodes", why)
    try:
        return nodes, check_qemu_args(s.get("qemu_args", []))
    except ValueError as exc:
        raise r.fail("shard", i, "qemu_args", str(exc)) from None


def _clock_knob(r: _Reader, i: int, s: dict[str, Any]) -> tuple[int, int]:
    """A shard's test clock skew (ns) and drift (ppm)."""
    drift = s.get("test_clock_drift_ppm", 0)
    if abs(drift) > MAX_TEST_CLOCK_DRIFT_PPM:
        why = f"{drift} is outside -{MAX_TEST_CLOCK_DRIFT_PPM}..{MAX_TEST_CLOCK_DRIFT_PPM}"
        raise r.fail("shard", i, "test_clock_drift_ppm", why)
    return s.get("test_clock_skew_ns", 0), drift


def _dsm_delay_knob(r: _Reader, i: int, s: dict[str, Any]) -> str:
    """A shard's test_dsm_delay: "EVENT:US" items joined by "+" (docs/dsm.md §13.2)."""
    value: str = s.get("test_dsm_delay", "")
    for item in filter(None, value.split("+")):
        event, _, us = item.partition(":")
        if event not in DSM_DELAY_EVENTS or not us.isdigit() or int(us) > MAX_DSM_DELAY_US:
            why = (
                f"{item!r} is not EVENT:MICROSECONDS with EVENT one of "
                f"{', '.join(DSM_DELAY_EVENTS)} and at most {MAX_DSM_DELAY_US} µs"
            )
            raise r.fail("shard", i, "test_dsm_delay", why)
    return value


def _vm_options(
    r: _Reader, vm: dict[str, Any], shards: list[ShardSpec], devices: list[DeviceSpec]
) -> dict[str, Any]:
    """The VMSpec fields of the [vm] machine options; a VGA becomes a device of its shard."""

    def checked(key: str, check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except ValueError as exc:
            raise r.fail("vm", None, key, str(exc)) from None

    vcpus, numa = vm["vcpus"], vm.get("numa", True)
    topo_keys = [k for k in ("sockets", "cores", "threads") if k in vm]
    topology = checked(
        topo_keys[0] if topo_keys else "vcpus",
        check_topology, vcpus, vm.get("sockets"), vm.get("cores"), vm.get("threads"),
    )  # fmt: skip
    many = [s for s in shards if s.numa_nodes > 1]
    if many and not numa:
        raise r.fail("shard", many[0].id, "numa_nodes", "needs vm.numa = true")
    layout = checked(
        "memory", numa_layout, parse_memory(vm["memory"]), numa,
        [(s.id, s.vcpus, s.numa_nodes) for s in shards],
    )  # fmt: skip
    if topology is not None:
        checked(topo_keys[0], check_sockets_in_nodes, topology, layout)
    if "vga" in vm:
        owner = vm.get("vga_shard", vm.get("io_shard", 0))
        if not 0 <= owner < len(shards):
            raise r.fail("vm", None, "vga_shard" if "vga_shard" in vm else "io_shard",
                         f"shard {owner} does not exist")  # fmt: skip
        devices.append(DeviceSpec("device", checked("vga", vga_device, vm["vga"]), owner))
    elif "vga_shard" in vm:
        raise r.fail("vm", None, "vga_shard", "needs vm.vga (the default is no VGA)")
    return {
        "cpu": checked("cpu", check_cpu, vm["cpu"]) if "cpu" in vm else None,
        "machine_options": checked(
            "machine_options", check_machine_options, vm.get("machine_options", "")
        ),
        "topology": topology,
        "no_reboot": vm.get("no_reboot", False),
        "qemu_args": checked("qemu_args", check_qemu_args, vm.get("qemu_args", [])),
        "nodes": tuple(layout),
    }


def _check_iommu(r: _Reader, devices: list[DeviceSpec], io_shard: int) -> None:
    """An IOMMU and every device must be on the I/O shard: its translation and remapping
    state exists only on its owner, and the IOAPIC's interrupts pass through it too."""
    drivers = [d.args.split(",", 1)[0].strip() if d.kind == "device" else "" for d in devices]
    iommus = [i for i, name in enumerate(drivers) if name in IOMMU_DEVICES]
    if not iommus:
        return
    first = iommus[0]
    name = drivers[first]
    why = "an IOMMU's DMA-translation and interrupt-remapping state exists only on its own shard"
    if devices[first].shard != io_shard:
        raise r.fail(
            "device", first, "shard",
            f"{name} must be on the I/O shard ({io_shard}, vm.io_shard): {why}, and the "
            "IOAPIC's interrupts pass through it",
        )  # fmt: skip
    for i, d in enumerate(devices):
        if d.kind == "device" and d.shard != io_shard:
            raise r.fail(
                "device", i, "shard",
                f"with {name} (device[{first}]) every device must be on the I/O shard "
                f"({io_shard}): {why}, so a device on shard {d.shard} could neither remap "
                "its MSIs nor translate its DMA",
            )  # fmt: skip


def _boot_file(r: _Reader, boot: dict[str, Any], key: str, base: Path | None) -> str:
    value: str = boot[key]
    if value.startswith(GUEST_PREFIX):
        return value
    p = Path(value)
    if not p.is_absolute() and base is not None:
        p = base / p
    if not p.is_file():
        raise r.fail("boot", None, key, f"file {value!r} does not exist")
    return str(p)


def flag_reader(flags: dict[tuple[str | None, str | None], str]) -> _Reader:
    """A reader whose errors name command-line flags instead of spec keys and lines."""
    r = _Reader("", "command line")
    r.flags = flags
    return r


# --- the same spec from command-line flags (dqemu loopback, and later dqemu run) --------------

# [vm] keys that have a flag of their own, which also overrides a --spec's
VM_FLAG_KEYS = (
    "data_path", "memory_mode", "posted_writes", "code_announce", "transport", *WAKEUP_CUT_KEYS,
)  # fmt: skip
_FLAG_KEYS: dict[tuple[str | None, str | None], str] = {
    ("vm", "vcpus"): "--vcpus",
    ("vm", "memory"): "--memory",
    ("vm", "machine"): "--machine",
    ("vm", "io_shard"): "--io-shard",
    ("vm", "data_path"): "--data-path",
    ("vm", "memory_mode"): "--memory-mode",
    ("vm", "posted_writes"): "--posted-writes",
    ("vm", "code_announce"): "--code-announce",
    **{("vm", key): "--" + key.replace("_", "-") for key in WAKEUP_CUT_KEYS},
    ("vm", "transport"): "--transport",
    ("vm", "cpu"): "--cpu",
    ("vm", "machine_options"): "--machine",
    ("vm", "sockets"): "--sockets",
    ("vm", "cores"): "--cores",
    ("vm", "threads"): "--threads",
    ("vm", "vga"): "--vga",
    ("vm", "vga_shard"): "--vga (the @SHARD suffix)",
    ("shard", "numa_nodes"): "--numa-nodes",
    ("boot", "kernel"): "--kernel",
    ("boot", "initrd"): "--initrd",
    ("boot", "append"): "--append",
    ("boot", "timeout"): "--timeout",
    ("shard", "vcpus"): "--placement",
    ("shard", None): "--placement/--shards",
    ("device", "shard"): "--device/--drive/--netdev (the @SHARD suffix)",
    ("device", None): "--device/--drive/--netdev",
}


def _device_arg(kind: str, value: str) -> dict[str, Any]:
    args, sep, shard = value.rpartition("@")
    if not sep or not shard.isdigit():
        args, shard = value, "0"
    return {kind: args, "shard": int(shard)}


def _vm_option_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The [vm] machine options given as flags (cluster/vm_options.py checks them)."""
    vm: dict[str, Any] = {}
    machine, _, options = (ns.machine or "q35").partition(",")
    vm["machine"] = machine
    if options:
        vm["machine_options"] = options
    for key in ("cpu", "sockets", "cores", "threads"):
        if getattr(ns, key) is not None:
            vm[key] = getattr(ns, key)
    if ns.no_reboot:
        vm["no_reboot"] = True
    if ns.vga is not None:
        model, sep, shard = ns.vga.rpartition("@")
        if sep and shard.isdigit():
            vm["vga"], vm["vga_shard"] = model, int(shard)
        else:
            vm["vga"] = ns.vga
    return vm


def spec_from_flags(ns: argparse.Namespace) -> VMSpec:
    if ns.kernel is None and not ns.drive:
        raise DqemuError(
            "give either --spec FILE or --kernel FILE, or a disk for the firmware to boot "
            "with --drive (see dqemu loopback --help)"
        )
    if ns.shards is not None and ns.shards < 1:
        raise DqemuError(f"--shards: {ns.shards} is not a number of shards (1 or more)")
    shards = ns.shards or 1
    if ns.placement:
        groups = ns.placement.split(";")
        if ns.shards and len(groups) != ns.shards:
            raise DqemuError(
                f"--placement names {len(groups)} shard(s) but --shards is {ns.shards}"
            )
        placement = groups
    else:
        if ns.vcpus < 1:
            raise DqemuError(f"--vcpus: {ns.vcpus} is outside 1..{MAX_VCPUS}")
        if shards > ns.vcpus:
            raise DqemuError(f"--shards {shards} is more than --vcpus {ns.vcpus}")
        placement = even_placement(ns.vcpus, shards)
    boot: dict[str, Any] = {}
    if ns.kernel is not None:
        boot["kernel"] = ns.kernel
    if ns.append:
        boot["append"] = ns.append
    if ns.initrd:
        boot["initrd"] = ns.initrd
    if ns.timeout is not None:
        boot["timeout"] = ns.timeout
    data: dict[str, Any] = {
        "vm": {
            "vcpus": ns.vcpus,
            "memory": ns.memory,
            "io_shard": ns.io_shard or 0,
            **{key: value for key in VM_FLAG_KEYS if (value := getattr(ns, key, None)) is not None},
            **_vm_option_flags(ns),
        },
        "boot": boot,
        "shard": [
            {"id": i, "vcpus": cpus}
            | ({"numa_nodes": ns.numa_nodes} if ns.numa_nodes is not None else {})
            for i, cpus in enumerate(placement)
        ],
        "device": [_device_arg(k, v) for k in DEVICE_KINDS for v in getattr(ns, k) or []],
    }
    return spec_from_data(data, flag_reader(_FLAG_KEYS), Path.cwd())
