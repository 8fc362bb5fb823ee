from __future__ import annotations

from pathlib import Path

from bench.linux_guest import summed_counters
from loopback.dqtest import shard_wakeups
from loopback.shard_logs import shard_counters

LINE = (
    'qemu-system-x86_64: dqemu: shard {n} counters: posted {{"sent": {sent}, "applied": 0}} '
    'tb {{"announces": 3, "announce_ns": 2000000000, "invalidates": 1, "invalidate_ns": 0, '
    '"remembered": 2}} wakeups {{"replies_polled": {polled}, "served_in_rx": 0}}\n'
)


def test_every_shard_log_counters_line_is_read(tmp_path: Path) -> None:
    (tmp_path / "shard0.log").write_text("boot\n" + LINE.format(n=0, sent=5, polled=7))
    (tmp_path / "shard1.log").write_text(LINE.format(n=1, sent=2, polled=0) + "bye\n")
    (tmp_path / "shard2.log").write_text("killed before it logged\n")
    (tmp_path / "router0.log").write_text(LINE.format(n=9, sent=100, polled=100))
    got = shard_counters(tmp_path)
    assert sorted(got) == [0, 1]
    assert got[0]["posted"] == {"sent": 5, "applied": 0}
    assert got[1]["wakeups"] == {"replies_polled": 0, "served_in_rx": 0}
    assert shard_wakeups(tmp_path)[0]["replies_polled"] == 7
    summed = summed_counters(tmp_path)
    assert summed["posted_sent"] == 7 and summed["announces"] == 6
    assert summed["announce_wait_s"] == 4.0 and summed["remembered"] == 4


def test_a_line_from_before_0037_has_no_wakeups(tmp_path: Path) -> None:
    old = 'dqemu: shard 0 counters: posted {"sent": 1} tb {"announces": 0}\n'
    (tmp_path / "shard0.log").write_text(old)
    assert shard_counters(tmp_path) == {0: {"posted": {"sent": 1}, "tb": {"announces": 0}}}
    assert shard_wakeups(tmp_path) == {}
