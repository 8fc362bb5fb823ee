"""dqconsole's Textual-free parts: the terminal, traffic history, QMP lines, back-off, keys."""

from __future__ import annotations

import pytest

from dqconsole.client import Backoff, VMClient, VMGone, list_vms
from dqconsole.qmp_line import QMPLineError, parse_qmp_line
from dqconsole.terminal import Terminal, key_bytes
from dqconsole.traffic import TrafficHistory
from dqconsole.widgets.sparkline_text import sparkline


def test_terminal_emulates_and_keeps_scrollback() -> None:
    t = Terminal(cols=20, rows=3)
    t.feed(b"one\r\ntwo\r\nthree\r\nfour\r\n\x1b[1mbold\x1b[0m\rB")
    lines = t.lines()
    assert lines[:3] == ["one", "two", "three"]  # scrolled off, kept
    assert lines[-1] == "Bold"  # the carriage return overwrote, escapes are not text
    assert t.find("TWO") == 1
    assert t.find("two", before=1) is None
    assert t.cursor() == (1, len(lines) - 1)


def test_traffic_history_keeps_rates_and_totals() -> None:
    h = TrafficHistory()
    for seq, rate in ((1, 10.0), (2, 30.0)):
        h.add({"seq": seq, "interval_s": 1.0,
               "mechanisms": {"ipi": {"total": seq * 100, "msgs_per_s": rate}},
               "links": {"0->1": {"msgs_per_s": rate, "bytes_per_s": 64.0, "requests": 3,
                                  "latency_p50_us": 180.0, "latency_p99_us": 410.0,
                                  "mechanisms": {"ipi": {"total": seq * 100}}}}})  # fmt: skip
    assert list(h.mechanisms["ipi"].rates) == [10.0, 30.0]
    assert h.total_messages() == 200
    assert h.links["0->1"].total == 200
    assert h.link_rows["0->1"].p99_us == 410.0
    assert sparkline([0.0, 15.0, 30.0]) == "▁▄█"


def test_qmp_lines() -> None:
    assert parse_qmp_line("query-status") == ("query-status", {})
    assert parse_qmp_line('qom-get {"path": "/machine", "property": "type"}') == (
        "qom-get", {"path": "/machine", "property": "type"},
    )  # fmt: skip
    assert parse_qmp_line('{"execute": "stop"}') == ("stop", {})
    for bad, why in (("", "type a QMP"), ("qom-get [1]", "JSON object"),
                     ("x {", "not JSON"), ('{"arguments": {}}', "execute")):  # fmt: skip
        with pytest.raises(QMPLineError, match=why):
            parse_qmp_line(bad)


def test_backoff_doubles_to_a_cap_and_resets() -> None:
    b = Backoff(first=0.5, cap=4.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5


def test_keys_to_the_guest() -> None:
    assert key_bytes("enter", "\r") == b"\r"
    assert key_bytes("a", "a") == b"a"
    assert key_bytes("ctrl+c", None) == b"\x03"
    assert key_bytes("up", None) == b"\x1b[A"
    assert key_bytes("f5", None) is None


def test_no_vm_is_an_error_naming_it(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DQEMU_RUN_DIR", str(tmp_path))
    assert list_vms() == []
    with pytest.raises(VMGone, match="no VM named ghost"):
        VMClient("ghost").info()
