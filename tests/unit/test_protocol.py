"""Codec round trips for every message type, and decoding errors for malformed frames."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.router import protocol as p


def _field_strategy(f: p.Field, arrays: frozenset[str] = frozenset()) -> st.SearchStrategy[object]:
    if f.name in arrays:
        # a histogram: mostly zeros, a few counts anywhere
        return st.dictionaries(st.integers(0, f.count - 1), st.integers(0, (1 << 64) - 1)).map(
            lambda d: tuple(d.get(i, 0) for i in range(f.count))
        )
    if f.ctype == "char":
        return st.text(
            alphabet=st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]),
            max_size=f.count,
        ).filter(lambda s: len(s.encode()) <= f.count)
    if f.ctype == "u8" and f.count > 256:
        # a page: a short random pattern at a random offset keeps examples small
        return st.tuples(st.binary(max_size=32), st.integers(0, f.count - 32)).map(
            lambda t: bytes(t[1]) + t[0] + bytes(f.count - t[1] - len(t[0]))
        )
    if f.ctype == "u8" and f.count > 1:
        return st.binary(min_size=f.count, max_size=f.count)
    bits = f.size * 8
    return st.integers(min_value=0, max_value=(1 << bits) - 1)


def message_strategy(cls: type[p.Message]) -> st.SearchStrategy[p.Message]:
    kw: dict[str, st.SearchStrategy[object]] = {}
    for f in cls.LAYOUT.fields:
        if not f.reserved:
            kw[f.name] = _field_strategy(f, cls.ARRAYS)
    if cls.LAYOUT.tail:
        kw[cls.LAYOUT.tail] = st.text(
            alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300
        )
    return st.builds(cls, **kw)


any_message = st.one_of([message_strategy(c) for c in p.MESSAGES.values()])
shard_id = st.integers(min_value=0, max_value=0xFFFF)
flags_st = st.sampled_from([0, p.FLAG_REPLY, p.FLAG_WANT_REPLY])


@pytest.mark.parametrize("cls", list(p.MESSAGES.values()), ids=lambda c: c.NAME)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_roundtrip_every_type(cls: type[p.Message], data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    src = data.draw(shard_id)
    dst = data.draw(shard_id)
    flags = data.draw(flags_st)
    rid = data.draw(st.integers(min_value=1, max_value=(1 << 64) - 1))
    raw = p.encode_frame(msg, src=src, dst=dst, flags=flags, request_id=rid)
    assert len(raw) == p.HEADER_SIZE + len(msg.encode())
    frame = p.decode_frame(raw)
    assert frame.msg == msg
    assert frame.type == cls.TYPE
    assert (frame.src, frame.dst, frame.request_id) == (src, dst, rid)
    want_flags = flags | (p.FLAG_ERROR if cls is p.Error else 0)
    assert frame.flags == want_flags


@settings(max_examples=60, deadline=None)
@given(
    msgs=st.lists(any_message, min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=20),
)
def test_stream_decoder_any_chunking(msgs: list[p.Message], cuts: list[int]) -> None:
    stream = b"".join(p.encode_frame(m, src=1, dst=2) for m in msgs)
    dec = p.FrameDecoder()
    got: list[p.Frame] = []
    pos = 0
    for c in cuts:
        got += dec.feed(stream[pos : pos + c])
        pos += c
    got += dec.feed(stream[pos:])
    dec.check_eof()
    assert [f.msg for f in got] == msgs


def test_magic_bytes_on_wire() -> None:
    raw = p.encode_frame(p.Gsi(3, 1), src=1, dst=2)
    assert raw[:4] == b"DQMU"
    assert raw[4] == 1 and raw[5] == 0x13


def test_error_reply_with_reply_type() -> None:
    raw = p.encode_error_reply(
        p.MSG_PIO_REPLY, src=2, dst=1, request_id=9, code=p.ERR_LINK_DOWN, message="gone"
    )
    f = p.decode_frame(raw)
    assert f.type == p.MSG_PIO_REPLY and f.is_reply and f.is_error
    assert f.msg == p.Error(p.ERR_LINK_DOWN, "gone")


def test_irq_mask_layout() -> None:
    m = p.Irq(p.DM_FIXED, 0x41, p.TRIGGER_EDGE, (1 << 0) | (1 << 64) | (1 << 255))
    body = m.encode()
    words = struct.unpack_from("<4Q", body, 8)
    assert words == (1, 1, 0, 1 << 63)


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        p.Gsi(1 << 32, 0).encode()
    with pytest.raises(ValueError):
        p.Hello(1, 1, 0, b"short", "vm").encode()
    with pytest.raises(ValueError):
        p.Hello(1, 1, 0, b"\0" * 32, "x" * 33).encode()
    with pytest.raises(ValueError):
        p.encode_frame(p.Gsi(1, 1), src=1, dst=2, flags=p.FLAG_ERROR)


def test_error_text_truncated_on_char_boundary() -> None:
    body = p.Error(1, "é" * 5000).encode()
    assert len(body) <= 8 + p.ERROR_MSG_MAX
    assert p.Error.decode(body).message == "é" * (p.ERROR_MSG_MAX // 2)


# --- malformed frames -----------------------------------------------------------------------


def _raw(
    mtype: int = p.MSG_GSI,
    *,
    magic: int = p.MAGIC,
    version: int = p.VERSION,
    flags: int = 0,
    length: int | None = None,
    rid: int = 0,
    body: bytes | None = None,
) -> bytes:
    if body is None:
        body = bytes(p.SIZE_LO[mtype] if p.KNOWN[mtype] else 8)
    n = len(body) if length is None else length
    return p.HEADER.pack(magic, version, mtype, flags, 1, 2, n, rid) + body


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (_raw(magic=0x12345678), "bad magic"),
        (_raw(version=2), "unsupported protocol version 2"),
        (_raw(0x7F), "unknown message type 0x7f"),
        (_raw(0x00), "unknown message type 0x00"),
        (_raw(flags=0x8), "reserved flag bits 0x0008"),
        (_raw(length=70000, body=b""), "exceeds maximum 65536"),
        (_raw(body=bytes(12)), "does not match GSI's fixed size 8"),
        (_raw(p.MSG_IRQ, body=bytes(39)), "IRQ's fixed size 40"),
        (_raw(flags=p.FLAG_REPLY | p.FLAG_WANT_REPLY, rid=1), "both set"),
        (_raw(flags=p.FLAG_WANT_REPLY, rid=0), "request_id 0"),
        (_raw(p.MSG_ERROR, body=bytes(8)), "without the ERROR flag"),
        (_raw(p.MSG_ERROR, flags=p.FLAG_ERROR, body=bytes(4)), "ERROR body range"),
        (_raw(p.MSG_GSI, length=8, body=b"\0\0"), "truncated frame"),
        (_raw(p.MSG_GSI)[:10], "truncated frame: need 24 header bytes"),
        (_raw(p.MSG_GSI) + b"x", "trailing bytes"),
        (_raw(p.MSG_HELLO, body=bytes(48) + b"\xff" * 32), "not UTF-8"),
    ],
)
def test_malformed_frames(raw: bytes, needle: str) -> None:
    with pytest.raises(p.ProtocolError) as ei:
        p.decode_frame(raw)
    assert needle in str(ei.value)


def test_version_error_code() -> None:
    with pytest.raises(p.ProtocolError) as ei:
        p.decode_frame(_raw(version=9))
    assert ei.value.code == p.ERR_VERSION


def test_stream_truncated_at_eof() -> None:
    dec = p.FrameDecoder()
    assert dec.feed(_raw()[:-3]) == []
    with pytest.raises(p.ProtocolError, match="truncated"):
        dec.check_eof()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_decoder(data: bytes) -> None:
    dec = p.FrameDecoder()
    with contextlib.suppress(p.ProtocolError):
        dec.feed(data)


def test_type_tables_consistent() -> None:
    for t in range(256):
        assert p.KNOWN[t] == (t in p.MESSAGES)
    for req, rep in p.REPLY_TYPE.items():
        assert p.KNOWN[req] and p.KNOWN[rep]
    assert all(0x60 <= t <= 0x6F for t in (p.MSG_PAGE_REQ, p.MSG_PAGE_REPLY))
    assert all(0x01 <= t <= 0x0F for t, c in p.MESSAGES.items() if t < 0x10)
