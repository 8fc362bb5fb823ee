"""dQEMU wire protocol: constants, frame header and a codec for every message type.

The format is specified in docs/protocol.md; include/hw/dqemu/proto.h (added by
qemu-patches/0002-dqemu-wire-protocol-header.patch) is the C side of the same spec.
tests/unit/test_protocol_agreement.py checks that all three agree.

Each message body is described once, as a `Layout` (C struct name plus ordered, naturally
aligned fields). The dataclass of a message holds every layout field except the reserved
ones (named ``reserved*`` or ``pad*``), which are sent as zero and ignored on receipt.
Arrays of u64 map to one Python int (little-endian limbs), u8 arrays to bytes, char arrays
to str (NUL padded). A layout may end in a variable-length UTF-8 tail (ERROR's message).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Self

# --- frame header --------------------------------------------------------------------------

MAGIC = 0x554D5144  # b"DQMU" as little-endian bytes
VERSION = 1
HEADER_SIZE = 24
MAX_PAYLOAD = 65536

FLAG_REPLY = 0x0001
FLAG_ERROR = 0x0002
FLAG_WANT_REPLY = 0x0004
FLAGS_VALID = FLAG_REPLY | FLAG_ERROR | FLAG_WANT_REPLY

DST_BROADCAST = 0xFFFF
DST_ROUTER = 0xFFFE
MAX_SHARD_ID = 0xFFFD  # shard ids are 0..0xFFFD

HEADER = struct.Struct("<IBBHHHIQ")
assert HEADER.size == HEADER_SIZE

# --- message types -------------------------------------------------------------------------

# router level (0x01..0x0F)
MSG_HELLO = 0x01
MSG_AUTH = 0x02
MSG_AUTH_OK = 0x03
MSG_PING = 0x04
MSG_PONG = 0x05
MSG_ERROR = 0x06
MSG_REGISTER = 0x07
MSG_REGISTER_OK = 0x08
MSG_LINK_STATE = 0x09
MSG_SHARD_FD = 0x0A
MSG_DIRECT_UP = 0x0B
# interrupts
MSG_IRQ = 0x10
MSG_EOI = 0x11
MSG_APIC_STATE = 0x12
MSG_GSI = 0x13
MSG_DEV_IRQ = 0x14
# I/O forwarding
MSG_PIO_REQ = 0x20
MSG_PIO_REPLY = 0x21
MSG_MMIO_REQ = 0x22
MSG_MMIO_REPLY = 0x23
# memory map / code coherence
MSG_TB_INVALIDATE = 0x30
MSG_MEMMAP_SYNC = 0x31
MSG_PCI_CFG_READ = 0x32
MSG_PCI_CFG_READ_REPLY = 0x33
# VM control
MSG_COMMAND = 0x40
MSG_RUNSTATE = 0x41
MSG_CLOCK_REQ = 0x48
MSG_CLOCK_REPLY = 0x49
# DSM page coherence (0x60..0x6F reserved)
MSG_PAGE_REQ = 0x60
MSG_PAGE_REPLY = 0x61
MSG_PAGE_INVALIDATE = 0x62
MSG_PAGE_UPGRADE = 0x63
MSG_PAGE_GRANT = 0x64
MSG_PAGE_RECALL = 0x65
MSG_PAGE_STATS = 0x67

# --- enumerations carried in bodies ----------------------------------------------------------

# HELLO.role / REGISTER
ROLE_ROUTER = 1
ROLE_DATA = 2  # a router dialing a data connection for its shard's direct link

# feature bits (HELLO.features, REGISTER.features, REGISTER_OK.features)
FEAT_DSM = 0x0000000000000001  # sender understands PAGE_* (0x60..0x6F)
FEAT_DIRECT = 0x0000000000000002  # sender takes direct shard links (SHARD_FD, DIRECT_UP)
FEATURES_KNOWN = FEAT_DSM | FEAT_DIRECT

# SHARD_FD.kind
FD_STATS = 1  # a memfd holding the stats page
FD_DIRECT = 2  # a connected, authenticated stream socket to SHARD_FD.peer_shard
FD_DIRECT_RDMA = 3  # the same, for an RDMA queue pair's set-up ("RDMA links")
# one slot of the stats page: the router's per-link counters (see stats.Counters)
STATS_NBUCKETS = 42 * 8
STATS_SLOT_SIZE = 8 * (4 * 256 + STATS_NBUCKETS + 3)

# IRQ.delivery_mode
DM_FIXED = 0
DM_LOWEST_PRIO = 1
DM_SMI = 2
DM_NMI = 4
DM_INIT = 5
DM_SIPI = 6
DM_EXTINT = 7
DM_INIT_DEASSERT = 8  # outside the 3-bit APIC field on purpose

# IRQ.trigger_mode
TRIGGER_EDGE = 0
TRIGGER_LEVEL = 1

# PIO_REPLY.status / MMIO_REPLY.status (QEMU MemTxResult bits)
MEMTX_OK = 0
MEMTX_ERROR = 1
MEMTX_DECODE_ERROR = 2
MEMTX_ACCESS_ERROR = 4

# MEMMAP_SYNC.kind
MEMMAP_PCI_CONFIG = 1
MEMMAP_PAM = 2
MEMMAP_SMRAM = 3
MEMMAP_A20 = 4
MEMMAP_HPET_COUNTER = 5

# DEV_IRQ.source for an MSI write (otherwise the IOAPIC pin)
DEV_IRQ_MSI = 0xFFFFFFFF

# COMMAND.command
CMD_STOP = 1
CMD_CONT = 2
CMD_SYSTEM_RESET = 3
CMD_POWERDOWN = 4
CMD_QUIT = 5
CMD_GUEST_PANIC = 6

# RUNSTATE.state
RUNSTATE_PRELAUNCH = 1
RUNSTATE_RUNNING = 2
RUNSTATE_PAUSED = 3
RUNSTATE_SHUTDOWN = 4
RUNSTATE_GUEST_PANICKED = 5
RUNSTATE_INTERNAL_ERROR = 6

# CLOCK_*.clock_id
CLOCK_HOST_MONOTONIC = 0
CLOCK_QEMU_VIRTUAL = 1

# PAGE_REQ.access
PAGE_ACCESS_READ = 1
PAGE_ACCESS_WRITE = 2
PAGE_SIZE = 4096

# PAGE_GRANT.result
PAGE_GRANT_OK = 0
PAGE_GRANT_NEED_DATA = 1

# PAGE_STATS
PAGE_STATS_BUCKETS = STATS_NBUCKETS  # buckets of each latency histogram
PAGE_STATS_INTERVAL_MS = 500  # a shard sends its router PAGE_STATS this often

# LINK_STATE.state
LINK_DOWN = 0
LINK_UP = 1

# ERROR.code
ERR_PROTOCOL = 1
ERR_AUTH_FAILED = 2
ERR_VM_MISMATCH = 3
ERR_VERSION = 4
ERR_NO_ROUTE = 5
ERR_LINK_DOWN = 6
ERR_TIMEOUT = 7
ERR_UNSUPPORTED = 8
ERR_DUPLICATE = 9
ERR_BAD_REQUEST = 10
ERR_INTERNAL = 11
ERR_SHARD_EXITED = 12
ERR_SHARD_HUNG = 13
ERR_HEARTBEAT = 14

ERROR_MSG_MAX = 4096  # bytes of UTF-8 text in an ERROR body
VM_ID_SIZE = 32
NONCE_SIZE = 32
MAC_SIZE = 32

ERROR_NAMES = {
    ERR_PROTOCOL: "protocol error",
    ERR_AUTH_FAILED: "authentication failed",
    ERR_VM_MISMATCH: "vm id mismatch",
    ERR_VERSION: "protocol version mismatch",
    ERR_NO_ROUTE: "no route",
    ERR_LINK_DOWN: "link down",
    ERR_TIMEOUT: "timeout",
    ERR_UNSUPPORTED: "unsupported",
    ERR_DUPLICATE: "duplicate",
    ERR_BAD_REQUEST: "bad request",
    ERR_INTERNAL: "internal error",
    ERR_SHARD_EXITED: "shard exited",
    ERR_SHARD_HUNG: "shard hung",
    ERR_HEARTBEAT: "router silent",
}


class ProtocolError(ValueError):
    """A frame violates the wire protocol. The link that carried it must be closed."""

    def __init__(self, message: str, code: int = ERR_PROTOCOL) -> None:
        super().__init__(message)
        self.code = code


# --- layouts -------------------------------------------------------------------------------

_CTYPES: dict[str, tuple[str, int]] = {
    "u8": ("B", 1),
    "u16": ("H", 2),
    "u32": ("I", 4),
    "u64": ("Q", 8),
    "char": ("s", 1),
}


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str  # u8 u16 u32 u64 char
    count: int = 1  # > 1: array

    @property
    def size(self) -> int:
        return _CTYPES[self.ctype][1] * self.count

    @property
    def align(self) -> int:
        return _CTYPES[self.ctype][1]

    @property
    def reserved(self) -> bool:
        return self.name.startswith(("reserved", "pad"))

    @property
    def decl(self) -> str:
        """The doc/C spelling of the type, e.g. ``u64[4]``."""
        return self.ctype if self.count == 1 else f"{self.ctype}[{self.count}]"


class Layout:
    """A C struct: ordered fields with natural alignment and no implicit padding."""

    def __init__(self, cname: str, fields: list[Field], tail: str | None = None) -> None:
        self.cname = cname
        self.fields = fields
        self.tail = tail  # name of a variable-length UTF-8 tail field, if any
        fmt = "<"
        offsets: list[int] = []
        off = 0
        for f in fields:
            if off % f.align:
                raise AssertionError(f"{cname}.{f.name} at {off} is not naturally aligned")
            offsets.append(off)
            code, _ = _CTYPES[f.ctype]
            if f.ctype == "char" or (f.ctype == "u8" and f.count > 1):
                fmt += f"{f.count}s"
            elif f.count > 1:
                fmt += f"{f.count}{code}"
            else:
                fmt += code
            off += f.size
        self.offsets = offsets
        self.size = off  # fixed part
        if off % 8 and off:
            raise AssertionError(f"{cname} size {off} is not a multiple of 8")
        self.struct = struct.Struct(fmt)
        assert self.struct.size == off, (cname, self.struct.size, off)

    def offset_of(self, name: str) -> int:
        for f, o in zip(self.fields, self.offsets, strict=True):
            if f.name == name:
                return o
        raise KeyError(name)


def _f(spec: str) -> Field:
    """Parse ``"u64 cpu_mask[4]"`` into a Field."""
    ctype, name = spec.split()
    count = 1
    if name.endswith("]"):
        name, n = name[:-1].split("[")
        count = int(n)
    return Field(name, ctype, count)


def _layout(cname: str, *specs: str, tail: str | None = None) -> Layout:
    return Layout(cname, [_f(s) for s in specs], tail)


HEADER_LAYOUT = _layout(
    "DQHeader",
    "u32 magic",
    "u8 version",
    "u8 type",
    "u16 flags",
    "u16 src",
    "u16 dst",
    "u32 length",
    "u64 request_id",
)


# --- messages ------------------------------------------------------------------------------


class Message:
    """Base class of all message bodies. Subclasses are frozen dataclasses."""

    TYPE: ClassVar[int]
    NAME: ClassVar[str]
    LAYOUT: ClassVar[Layout]
    # u64 array fields carried as a tuple of ints (the others are one big integer)
    ARRAYS: ClassVar[frozenset[str]] = frozenset()
    # filled in by _register()
    _getters: ClassVar[list[tuple[str, str, int]]]

    def encode(self) -> bytes:
        lay = self.LAYOUT
        vals: list[object] = []
        for name, kind, count in self._getters:
            if kind == "zero":
                vals.append(0)
            elif kind == "zeros":
                vals.extend([0] * count)
            elif kind == "bytes0":
                vals.append(b"")
            else:
                v = getattr(self, name)
                if kind == "int":
                    vals.append(v)
                elif kind == "array":
                    if len(v) != count:
                        raise ValueError(f"{self.NAME}.{name} must have {count} values")
                    vals.extend(v)
                elif kind == "limbs":
                    if not 0 <= v < (1 << (64 * count)):
                        raise ValueError(f"{self.NAME}.{name} out of range")
                    vals.extend((v >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in range(count))
                elif kind == "str":
                    b = v.encode()
                    if len(b) > count:
                        raise ValueError(f"{self.NAME}.{name} longer than {count} bytes")
                    vals.append(b)
                else:  # bytes
                    if len(v) != count:
                        raise ValueError(f"{self.NAME}.{name} must be {count} bytes")
                    vals.append(v)
        try:
            body = lay.struct.pack(*vals)
        except struct.error as e:
            raise ValueError(f"{self.NAME}: {e}") from None
        if lay.tail is not None:
            tail = getattr(self, lay.tail).encode()
            if len(tail) > ERROR_MSG_MAX:
                tail = tail[:ERROR_MSG_MAX].decode(errors="ignore").encode()
            body += tail
        return body

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Self:
        lay = cls.LAYOUT
        n = len(payload)
        if lay.tail is None:
            if n != lay.size:
                raise ProtocolError(
                    f"payload length {n} does not match {cls.NAME}'s fixed size {lay.size}"
                )
        elif not lay.size <= n <= lay.size + ERROR_MSG_MAX:
            raise ProtocolError(
                f"payload length {n} outside {cls.NAME}'s range "
                f"{lay.size}..{lay.size + ERROR_MSG_MAX}"
            )
        raw = lay.struct.unpack_from(payload, 0)
        kw: dict[str, object] = {}
        i = 0
        for name, kind, count in cls._getters:
            if kind == "zeros":
                i += count
                continue
            if kind in ("zero", "bytes0"):
                i += 1
                continue
            if kind == "array":
                kw[name] = tuple(raw[i : i + count])
                i += count
                continue
            if kind == "limbs":
                v = 0
                for k in range(count):
                    v |= raw[i + k] << (64 * k)
                kw[name] = v
                i += count
                continue
            v = raw[i]
            i += 1
            if kind == "str":
                try:
                    kw[name] = v.rstrip(b"\0").decode()
                except UnicodeDecodeError:
                    raise ProtocolError(f"{cls.NAME}.{name} is not UTF-8") from None
            else:
                kw[name] = v
        if lay.tail is not None:
            try:
                kw[lay.tail] = bytes(payload[lay.size :]).decode()
            except UnicodeDecodeError:
                raise ProtocolError(f"{cls.NAME}.{lay.tail} is not UTF-8") from None
        return cls(**kw)


MESSAGES: dict[int, type[Message]] = {}


def _register(cls: type[Message]) -> type[Message]:
    lay = cls.LAYOUT
    getters: list[tuple[str, str, int]] = []
    for f in lay.fields:
        if f.reserved:
            if f.ctype == "char" or (f.ctype == "u8" and f.count > 1):
                getters.append((f.name, "bytes0", f.count))
            elif f.count > 1:
                getters.append((f.name, "zeros", f.count))
            else:
                getters.append((f.name, "zero", 1))
        elif f.ctype == "char":
            getters.append((f.name, "str", f.count))
        elif f.ctype == "u8" and f.count > 1:
            getters.append((f.name, "bytes", f.count))
        elif f.count > 1:
            getters.append((f.name, "array" if f.name in cls.ARRAYS else "limbs", f.count))
        else:
            getters.append((f.name, "int", 1))
    cls._getters = getters
    names = [g[0] for g in getters if g[1] in ("int", "limbs", "array", "str", "bytes")]
    if lay.tail:
        names.append(lay.tail)
    dc_names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if names != dc_names:
        raise AssertionError(f"{cls.__name__}: dataclass fields {dc_names} != layout {names}")
    assert cls.TYPE not in MESSAGES
    MESSAGES[cls.TYPE] = cls
    return cls


@_register
@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE = MSG_HELLO
    NAME = "HELLO"
    LAYOUT = _layout(
        "DQMsgHello",
        "u16 shard_id",
        "u8 role",
        "u8 reserved0",
        "u32 reserved1",
        "u64 features",
        "u8 nonce[32]",
        "char vm_id[32]",
    )
    shard_id: int
    role: int
    features: int
    nonce: bytes
    vm_id: str


@_register
@dataclass(frozen=True, slots=True)
class Auth(Message):
    TYPE = MSG_AUTH
    NAME = "AUTH"
    LAYOUT = _layout("DQMsgAuth", "u8 mac[32]")
    mac: bytes


@_register
@dataclass(frozen=True, slots=True)
class AuthOk(Message):
    TYPE = MSG_AUTH_OK
    NAME = "AUTH_OK"
    LAYOUT = _layout("DQMsgAuthOk", "u64 features")
    features: int  # features both ends will use (intersection of the HELLOs)


@_register
@dataclass(frozen=True, slots=True)
class Ping(Message):
    TYPE = MSG_PING
    NAME = "PING"
    LAYOUT = _layout("DQMsgPing", "u64 t_send")
    t_send: int


@_register
@dataclass(frozen=True, slots=True)
class Pong(Message):
    TYPE = MSG_PONG
    NAME = "PONG"
    LAYOUT = _layout("DQMsgPong", "u64 t_send", "u64 t_recv")
    t_send: int
    t_recv: int


@_register
@dataclass(frozen=True, slots=True)
class Error(Message):
    TYPE = MSG_ERROR
    NAME = "ERROR"
    LAYOUT = _layout("DQMsgError", "u32 code", "u32 reserved0", tail="message")
    code: int
    message: str


@_register
@dataclass(frozen=True, slots=True)
class Register(Message):
    TYPE = MSG_REGISTER
    NAME = "REGISTER"
    LAYOUT = _layout("DQMsgRegister", "u16 shard_id", "u16 reserved0", "u32 pid", "u64 features")
    shard_id: int
    pid: int
    features: int


@_register
@dataclass(frozen=True, slots=True)
class RegisterOk(Message):
    TYPE = MSG_REGISTER_OK
    NAME = "REGISTER_OK"
    LAYOUT = _layout(
        "DQMsgRegisterOk", "u16 shard_id", "u16 n_shards", "u32 reserved0", "u64 features"
    )
    shard_id: int
    n_shards: int
    features: int


@_register
@dataclass(frozen=True, slots=True)
class LinkState(Message):
    TYPE = MSG_LINK_STATE
    NAME = "LINK_STATE"
    LAYOUT = _layout("DQMsgLinkState", "u16 shard_id", "u8 state", "u8 reserved0", "u32 reason")
    shard_id: int
    state: int
    reason: int


@_register
@dataclass(frozen=True, slots=True)
class ShardFd(Message):
    TYPE = MSG_SHARD_FD
    NAME = "SHARD_FD"
    LAYOUT = _layout("DQMsgShardFd", "u16 peer_shard", "u8 kind", "u8 reserved0", "u32 slot")
    peer_shard: int
    kind: int
    slot: int


@_register
@dataclass(frozen=True, slots=True)
class DirectUp(Message):
    TYPE = MSG_DIRECT_UP
    NAME = "DIRECT_UP"
    LAYOUT = _layout("DQMsgDirectUp", "u16 shard_id", "u16 reserved0", "u32 reserved1")
    shard_id: int


@_register
@dataclass(frozen=True, slots=True)
class Irq(Message):
    TYPE = MSG_IRQ
    NAME = "IRQ"
    LAYOUT = _layout(
        "DQMsgIrq",
        "u8 delivery_mode",
        "u8 vector",
        "u8 trigger_mode",
        "u8 reserved0",
        "u32 reserved1",
        "u64 cpu_mask[4]",
    )
    delivery_mode: int
    vector: int
    trigger_mode: int
    cpu_mask: int  # bit i = vCPU index i, 256 bits


@_register
@dataclass(frozen=True, slots=True)
class DevIrq(Message):
    TYPE = MSG_DEV_IRQ
    NAME = "DEV_IRQ"
    LAYOUT = _layout(
        "DQMsgDevIrq",
        "u8 delivery_mode",
        "u8 vector",
        "u8 trigger_mode",
        "u8 reserved0",
        "u32 source",
        "u64 cpu_mask[4]",
    )
    delivery_mode: int
    vector: int
    trigger_mode: int
    source: int  # IOAPIC pin, or DEV_IRQ_MSI
    cpu_mask: int  # bit i = vCPU index i, 256 bits


@_register
@dataclass(frozen=True, slots=True)
class Eoi(Message):
    TYPE = MSG_EOI
    NAME = "EOI"
    LAYOUT = _layout("DQMsgEoi", "u8 vector", "u8 pad[7]")
    vector: int


@_register
@dataclass(frozen=True, slots=True)
class ApicState(Message):
    TYPE = MSG_APIC_STATE
    NAME = "APIC_STATE"
    LAYOUT = _layout("DQMsgApicState", "u32 cpu_index", "u32 apic_id", "u32 ldr", "u32 dfr")
    cpu_index: int
    apic_id: int
    ldr: int
    dfr: int


@_register
@dataclass(frozen=True, slots=True)
class Gsi(Message):
    TYPE = MSG_GSI
    NAME = "GSI"
    LAYOUT = _layout("DQMsgGsi", "u32 gsi", "u32 level")
    gsi: int
    level: int


@_register
@dataclass(frozen=True, slots=True)
class PioReq(Message):
    TYPE = MSG_PIO_REQ
    NAME = "PIO_REQ"
    LAYOUT = _layout(
        "DQMsgPioReq", "u16 port", "u8 size", "u8 is_write", "u32 cpu_index", "u64 data"
    )
    port: int
    size: int
    is_write: int
    cpu_index: int
    data: int


@_register
@dataclass(frozen=True, slots=True)
class PioReply(Message):
    TYPE = MSG_PIO_REPLY
    NAME = "PIO_REPLY"
    LAYOUT = _layout("DQMsgPioReply", "u64 data", "u32 status", "u32 reserved0")
    data: int
    status: int


@_register
@dataclass(frozen=True, slots=True)
class MmioReq(Message):
    TYPE = MSG_MMIO_REQ
    NAME = "MMIO_REQ"
    LAYOUT = _layout(
        "DQMsgMmioReq",
        "u64 addr",
        "u64 data",
        "u8 size",
        "u8 is_write",
        "u16 reserved0",
        "u32 cpu_index",
        "u32 attrs",
        "u32 reserved1",
    )
    addr: int
    data: int
    size: int
    is_write: int
    cpu_index: int
    attrs: int


@_register
@dataclass(frozen=True, slots=True)
class MmioReply(Message):
    TYPE = MSG_MMIO_REPLY
    NAME = "MMIO_REPLY"
    LAYOUT = _layout("DQMsgMmioReply", "u64 data", "u32 status", "u32 reserved0")
    data: int
    status: int


@_register
@dataclass(frozen=True, slots=True)
class TbInvalidate(Message):
    TYPE = MSG_TB_INVALIDATE
    NAME = "TB_INVALIDATE"
    LAYOUT = _layout("DQMsgTbInvalidate", "u64 gpa", "u64 len")
    gpa: int
    len: int


@_register
@dataclass(frozen=True, slots=True)
class MemmapSync(Message):
    TYPE = MSG_MEMMAP_SYNC
    NAME = "MEMMAP_SYNC"
    LAYOUT = _layout("DQMsgMemmapSync", "u32 kind", "u32 size", "u64 addr", "u64 data")
    kind: int
    size: int
    addr: int
    data: int


@_register
@dataclass(frozen=True, slots=True)
class PciCfgRead(Message):
    TYPE = MSG_PCI_CFG_READ
    NAME = "PCI_CFG_READ"
    LAYOUT = _layout("DQMsgPciCfgRead", "u64 addr", "u32 size", "u32 reserved0")
    addr: int  # bus << 20 | devfn << 12 | register
    size: int


@_register
@dataclass(frozen=True, slots=True)
class PciCfgReadReply(Message):
    TYPE = MSG_PCI_CFG_READ_REPLY
    NAME = "PCI_CFG_READ_REPLY"
    LAYOUT = _layout("DQMsgPciCfgReadReply", "u64 data", "u32 status", "u32 reserved0")
    data: int
    status: int


@_register
@dataclass(frozen=True, slots=True)
class Command(Message):
    TYPE = MSG_COMMAND
    NAME = "COMMAND"
    LAYOUT = _layout("DQMsgCommand", "u32 command", "u32 reason", "u64 arg")
    command: int
    reason: int
    arg: int


@_register
@dataclass(frozen=True, slots=True)
class RunState(Message):
    TYPE = MSG_RUNSTATE
    NAME = "RUNSTATE"
    LAYOUT = _layout("DQMsgRunState", "u32 state", "u32 reserved0")
    state: int


@_register
@dataclass(frozen=True, slots=True)
class ClockReq(Message):
    TYPE = MSG_CLOCK_REQ
    NAME = "CLOCK_REQ"
    LAYOUT = _layout("DQMsgClockReq", "u32 clock_id", "u32 reserved0", "u64 t1")
    clock_id: int
    t1: int


@_register
@dataclass(frozen=True, slots=True)
class ClockReply(Message):
    TYPE = MSG_CLOCK_REPLY
    NAME = "CLOCK_REPLY"
    LAYOUT = _layout(
        "DQMsgClockReply", "u32 clock_id", "u32 reserved0", "u64 t1", "u64 t2", "u64 t3"
    )
    clock_id: int
    t1: int
    t2: int
    t3: int


@_register
@dataclass(frozen=True, slots=True)
class PageReq(Message):
    TYPE = MSG_PAGE_REQ
    NAME = "PAGE_REQ"
    LAYOUT = _layout("DQMsgPageReq", "u64 gpa", "u32 access", "u32 reserved0")
    gpa: int
    access: int


@_register
@dataclass(frozen=True, slots=True)
class PageReply(Message):
    TYPE = MSG_PAGE_REPLY
    NAME = "PAGE_REPLY"
    LAYOUT = _layout("DQMsgPageReply", "u64 gpa", "u32 status", "u32 reserved0", "u8 data[4096]")
    gpa: int
    status: int
    data: bytes


@_register
@dataclass(frozen=True, slots=True)
class PageInvalidate(Message):
    TYPE = MSG_PAGE_INVALIDATE
    NAME = "PAGE_INVALIDATE"
    LAYOUT = _layout("DQMsgPageInvalidate", "u64 gpa")
    gpa: int


@_register
@dataclass(frozen=True, slots=True)
class PageUpgrade(Message):
    TYPE = MSG_PAGE_UPGRADE
    NAME = "PAGE_UPGRADE"
    LAYOUT = _layout("DQMsgPageUpgrade", "u64 gpa")
    gpa: int


@_register
@dataclass(frozen=True, slots=True)
class PageGrant(Message):
    TYPE = MSG_PAGE_GRANT
    NAME = "PAGE_GRANT"
    LAYOUT = _layout("DQMsgPageGrant", "u64 gpa", "u32 result", "u32 reserved0")
    gpa: int
    result: int


@_register
@dataclass(frozen=True, slots=True)
class PageRecall(Message):
    TYPE = MSG_PAGE_RECALL
    NAME = "PAGE_RECALL"
    LAYOUT = _layout("DQMsgPageRecall", "u64 gpa", "u32 access", "u32 reserved0")
    gpa: int
    access: int


PAGE_STATS_COUNTERS = (
    "read_faults",
    "write_faults",
    "upgrades",
    "local_faults",
    "joined_faults",
    "dma_pages",
    "invalidations_in",
    "recalls_in",
    "invalidations_out",
    "recalls_out",
    "home_queued",
    "need_data",
    "deferred_hold",
    "pages_in",
    "pages_out",
    "bytes_in",
    "bytes_out",
    "fault_count",
    "fault_sum_ns",
    "fault_max_ns",
    "resident_pages",
    "lent_pages",
    "exclusive_reads",
)


@_register
@dataclass(frozen=True, slots=True)
class PageStats(Message):
    """A shard's DSM counters for its router (docs/dsm.md §12); cumulative but for the
    gauges resident_pages and lent_pages."""

    TYPE = MSG_PAGE_STATS
    NAME = "PAGE_STATS"
    ARRAYS = frozenset({"read_hist", "write_hist"})
    LAYOUT = _layout(
        "DQMsgPageStats",
        *(f"u64 {n}" for n in PAGE_STATS_COUNTERS),
        "u64 reserved0",
        f"u64 read_hist[{PAGE_STATS_BUCKETS}]",
        f"u64 write_hist[{PAGE_STATS_BUCKETS}]",
    )
    read_faults: int
    write_faults: int
    upgrades: int
    local_faults: int
    joined_faults: int
    dma_pages: int
    invalidations_in: int
    recalls_in: int
    invalidations_out: int
    recalls_out: int
    home_queued: int
    need_data: int
    deferred_hold: int
    pages_in: int
    pages_out: int
    bytes_in: int
    bytes_out: int
    fault_count: int
    fault_sum_ns: int
    fault_max_ns: int
    resident_pages: int
    lent_pages: int
    exclusive_reads: int
    read_hist: tuple[int, ...]  # read-fault latency, the router's buckets (ns)
    write_hist: tuple[int, ...]  # write faults and upgrades

    def counters(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in PAGE_STATS_COUNTERS}


# request type -> reply type (a reply may instead be an ERROR body with FLAG_ERROR)
REPLY_TYPE: dict[int, int] = {
    MSG_PING: MSG_PONG,
    MSG_REGISTER: MSG_REGISTER_OK,
    MSG_PIO_REQ: MSG_PIO_REPLY,
    MSG_MMIO_REQ: MSG_MMIO_REPLY,
    MSG_CLOCK_REQ: MSG_CLOCK_REPLY,
    MSG_PCI_CFG_READ: MSG_PCI_CFG_READ_REPLY,
    MSG_APIC_STATE: MSG_APIC_STATE,  # the acknowledged forms echo the body
    MSG_TB_INVALIDATE: MSG_TB_INVALIDATE,
    MSG_MEMMAP_SYNC: MSG_MEMMAP_SYNC,
    MSG_RUNSTATE: MSG_RUNSTATE,  # a run-state query; the reply carries the state
    MSG_PAGE_REQ: MSG_PAGE_REPLY,
    MSG_PAGE_INVALIDATE: MSG_PAGE_INVALIDATE,  # the echo says the copy is dropped
    MSG_PAGE_UPGRADE: MSG_PAGE_GRANT,
    MSG_PAGE_RECALL: MSG_PAGE_REPLY,
}

TYPE_NAMES: dict[int, str] = {t: c.NAME for t, c in MESSAGES.items()}

# Per-type payload size bounds, indexed by type byte. Unknown types have lo > hi.
SIZE_LO: list[int] = [1] * 256
SIZE_HI: list[int] = [0] * 256
KNOWN: list[bool] = [False] * 256
for _t, _c in MESSAGES.items():
    KNOWN[_t] = True
    SIZE_LO[_t] = _c.LAYOUT.size
    SIZE_HI[_t] = _c.LAYOUT.size + (ERROR_MSG_MAX if _c.LAYOUT.tail else 0)
_ERROR_LO = SIZE_LO[MSG_ERROR]
_ERROR_HI = SIZE_HI[MSG_ERROR]


def type_name(t: int) -> str:
    return TYPE_NAMES.get(t, f"0x{t:02x}")


# --- header / frame ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    flags: int = 0
    src: int = 0
    dst: int = 0
    length: int = 0
    request_id: int = 0
    version: int = VERSION
    magic: int = MAGIC

    def pack(self) -> bytes:
        return HEADER.pack(
            self.magic,
            self.version,
            self.type,
            self.flags,
            self.src,
            self.dst,
            self.length,
            self.request_id,
        )


@dataclass(frozen=True, slots=True)
class Frame:
    header: Header
    msg: Message

    @property
    def type(self) -> int:
        return self.header.type

    @property
    def src(self) -> int:
        return self.header.src

    @property
    def dst(self) -> int:
        return self.header.dst

    @property
    def flags(self) -> int:
        return self.header.flags

    @property
    def request_id(self) -> int:
        return self.header.request_id

    @property
    def is_reply(self) -> bool:
        return bool(self.header.flags & FLAG_REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.header.flags & FLAG_ERROR)

    @property
    def wants_reply(self) -> bool:
        return bool(self.header.flags & FLAG_WANT_REPLY)


def header_error(
    magic: int, version: int, mtype: int, flags: int, length: int, request_id: int
) -> str | None:
    """Return a description of what is wrong with a header, or None if it is valid."""
    if magic != MAGIC:
        return f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x})"
    if version != VERSION:
        return f"unsupported protocol version {version} (this end speaks {VERSION})"
    if flags & ~FLAGS_VALID:
        return f"reserved flag bits 0x{flags & ~FLAGS_VALID:04x} set"
    if not KNOWN[mtype]:
        return f"unknown message type 0x{mtype:02x}"
    if length > MAX_PAYLOAD:
        return f"payload length {length} exceeds maximum {MAX_PAYLOAD}"
    if flags & FLAG_REPLY and flags & FLAG_WANT_REPLY:
        return "REPLY and WANT_REPLY both set"
    if flags & (FLAG_REPLY | FLAG_WANT_REPLY) and request_id == 0:
        return f"{type_name(mtype)} request/reply with request_id 0"
    if mtype == MSG_ERROR and not flags & FLAG_ERROR:
        return "ERROR frame without the ERROR flag"
    if flags & FLAG_ERROR:
        if not _ERROR_LO <= length <= _ERROR_HI:
            return f"payload length {length} outside ERROR body range {_ERROR_LO}..{_ERROR_HI}"
    elif not SIZE_LO[mtype] <= length <= SIZE_HI[mtype]:
        lo, hi = SIZE_LO[mtype], SIZE_HI[mtype]
        want = f"fixed size {lo}" if lo == hi else f"range {lo}..{hi}"
        return f"payload length {length} does not match {type_name(mtype)}'s {want}"
    return None


def encode_frame(
    msg: Message,
    *,
    src: int,
    dst: int,
    flags: int = 0,
    request_id: int = 0,
) -> bytes:
    """Encode one frame. With FLAG_ERROR the message must be an Error body."""
    if flags & FLAG_ERROR and not isinstance(msg, Error):
        raise ValueError("FLAG_ERROR needs an Error body")
    if isinstance(msg, Error):
        flags |= FLAG_ERROR
    body = msg.encode()
    return HEADER.pack(MAGIC, VERSION, msg.TYPE, flags, src, dst, len(body), request_id) + body


def encode_error_reply(
    mtype: int, *, src: int, dst: int, request_id: int, code: int, message: str
) -> bytes:
    """An error reply: flags REPLY|ERROR, the given type, an ERROR body."""
    body = Error(code, message).encode()
    return (
        HEADER.pack(MAGIC, VERSION, mtype, FLAG_REPLY | FLAG_ERROR, src, dst, len(body), request_id)
        + body
    )


def decode_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    if len(buf) - offset < HEADER_SIZE:
        raise ProtocolError(
            f"truncated frame: need {HEADER_SIZE} header bytes, have {len(buf) - offset}"
        )
    magic, ver, t, flags, src, dst, length, rid = HEADER.unpack_from(buf, offset)
    err = header_error(magic, ver, t, flags, length, rid)
    if err:
        code = ERR_VERSION if magic == MAGIC and ver != VERSION else ERR_PROTOCOL
        raise ProtocolError(err, code)
    return Header(t, flags, src, dst, length, rid, ver, magic)


def decode_body(header: Header, payload: bytes | memoryview) -> Message:
    cls = MESSAGES[MSG_ERROR] if header.flags & FLAG_ERROR else MESSAGES[header.type]
    return cls.decode(payload)


def decode_frame(buf: bytes | bytearray | memoryview) -> Frame:
    """Decode exactly one complete frame; trailing or missing bytes are errors."""
    h = decode_header(buf)
    end = HEADER_SIZE + h.length
    if len(buf) < end:
        raise ProtocolError(
            f"truncated frame: {type_name(h.type)} needs {h.length} payload bytes, "
            f"have {len(buf) - HEADER_SIZE}"
        )
    if len(buf) > end:
        raise ProtocolError(f"{len(buf) - end} trailing bytes after frame")
    return Frame(h, decode_body(h, memoryview(buf)[HEADER_SIZE:end]))


class FrameDecoder:
    """Incremental decoder for a byte stream. `feed()` returns complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        self._buf += data
        return list(self._drain())

    def _drain(self) -> Iterator[Frame]:
        buf = self._buf
        off = 0
        try:
            while len(buf) - off >= HEADER_SIZE:
                h = decode_header(buf, off)
                end = off + HEADER_SIZE + h.length
                if end > len(buf):
                    break
                yield Frame(h, decode_body(h, memoryview(buf)[off + HEADER_SIZE : end]))
                off = end
        finally:
            del buf[:off]

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def check_eof(self) -> None:
        """Call at end of stream: leftover bytes mean a truncated frame."""
        if self._buf:
            raise ProtocolError(f"truncated frame: stream ended with {len(self._buf)} bytes")


_EXPORT_PREFIXES = (
    "FLAG_",
    "DST_",
    "MSG_",
    "ROLE_",
    "FEAT_",
    "DM_",
    "TRIGGER_",
    "MEMTX_",
    "MEMMAP_",
    "DEV_IRQ_",
    "CMD_",
    "RUNSTATE_",
    "CLOCK_",
    "PAGE_",
    "LINK_",
    "ERR_",
    "FD_",
    "STATS_",
)
_EXPORT_NAMES = (
    "MAGIC",
    "VERSION",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "FLAGS_VALID",
    "MAX_SHARD_ID",
    "FEATURES_KNOWN",
    "ERROR_MSG_MAX",
    "VM_ID_SIZE",
    "NONCE_SIZE",
    "MAC_SIZE",
)


def constants() -> dict[str, int]:
    """Every protocol constant, by its C name without the ``DQ_`` prefix."""
    out: dict[str, int] = {}
    for name, val in globals().items():
        if not isinstance(val, int) or isinstance(val, bool):
            continue
        if name in _EXPORT_NAMES or name.startswith(_EXPORT_PREFIXES):
            out[name] = val
    return out
