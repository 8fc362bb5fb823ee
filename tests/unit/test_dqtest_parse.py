"""The dqtest output parser: checks, latencies, skips, info lines and the verdict."""

from __future__ import annotations

from loopback.dqtest import parse_dqtest_output

PASSING = """\
\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)
Booting from ROM..
# dqtest 1 multiboot_magic=0x2badb002\r
# calib pit tsc_khz=2599942 runs=5 window_ms=20 spread_cycles=14988\r
# calib hpet tsc_khz=2600100 hpet_period_fs=10000000\r
ok 1 - tsc calibration pit vs hpet agree within 5% (pit=2599942 hpet=2600100 kHz)\r
ok 2 - cpu bring-up apic_id=1 cpu1 (10457 us)\r
ok 3 - ipi fixed physical cpu0->cpu1\r
# lat ipi_rtt cpu0-cpu1 p50_cycles=16830 p99_cycles=136692 p50_ns=6473 p99_ns=52575 \
min_cycles=16520 max_cycles=269072 n=200\r
# skip msi - no PCI device with MSI capability that dqtest can trigger (add -device edu)\r
not ok 4 - xmc concurrent cpu1 patches code cpu0 executes # TODO QEMU MTTCG notdirty_write race\r
# tsc max_backward_ns=12 bound_ns=50000\r
1..4\r
# todo: 1 known-defect checks failed (not counted)\r
dqtest: PASS 3/4\r
"""


def test_parses_a_passing_run() -> None:
    r = parse_dqtest_output(PASSING)
    assert r.status == "PASS"
    assert r.passed, r.problems
    assert [c.number for c in r.checks] == [1, 2, 3, 4]
    assert r.checks[2].description == "ipi fixed physical cpu0->cpu1"
    assert r.checks[2].ok and r.checks[2].directive is None
    assert r.plan == 4
    assert r.status_count == 3 and r.status_total == 4


def test_todo_failure_is_reported_but_does_not_fail() -> None:
    r = parse_dqtest_output(PASSING)
    todo = r.checks[3]
    assert not todo.ok
    assert todo.directive == "TODO"
    assert todo.reason == "QEMU MTTCG notdirty_write race"
    assert todo.description == "xmc concurrent cpu1 patches code cpu0 executes"
    assert r.failures == []
    assert r.todo_failures == [todo]


def test_latency_lines() -> None:
    r = parse_dqtest_output(PASSING)
    lat = r.latency("ipi_rtt", "cpu0-cpu1")
    assert lat is not None
    assert lat.values["p50_cycles"] == 16830
    assert lat.get("p99_ns") == 52575
    assert lat.n == 200
    assert r.latencies_named("ipi_rtt") == [lat]
    assert r.latency("ipi_rtt", "cpu1-cpu0") is None


def test_skip_and_info_lines() -> None:
    r = parse_dqtest_output(PASSING)
    assert [s.name for s in r.skips] == ["msi"]
    assert r.skips[0].reason.startswith("no PCI device")
    assert r.info["tsc"] == {"max_backward_ns": "12", "bound_ns": "50000"}
    assert r.info["calib pit"]["tsc_khz"] == "2599942"
    assert r.info["calib hpet"]["tsc_khz"] == "2600100"


def test_failing_run() -> None:
    text = (
        "ok 1 - a\nnot ok 2 - b\n"
        "# got cpu0=0 cpu1=2 expected cpu0=0 cpu1=1\n"
        "1..2\ndqtest: FAIL 1/2\n"
    )
    r = parse_dqtest_output(text)
    assert r.status == "FAIL"
    assert not r.passed
    assert [c.number for c in r.failures] == [2]
    assert r.problems == []
    assert "not ok 2 - b" in r.summary()
    assert r.diagnostics == {2: ["# got cpu0=0 cpu1=2 expected cpu0=0 cpu1=1"]}
    assert "# got cpu0=0 cpu1=2" in r.summary()


def test_incomplete_run_is_not_passed() -> None:
    r = parse_dqtest_output("ok 1 - a\nok 2 - b\n")
    assert r.status is None
    assert not r.complete
    assert not r.passed
    assert any("did not finish" in p for p in r.problems)


def test_inconsistent_output_is_flagged() -> None:
    # A PASS verdict that disagrees with the printed checks must not count as passed.
    r = parse_dqtest_output("ok 1 - a\nnot ok 2 - b\n1..2\ndqtest: PASS 2/2\n")
    assert not r.passed
    assert r.problems
    r = parse_dqtest_output("ok 1 - a\nok 3 - b\n1..2\ndqtest: PASS 2/2\n")
    assert any("numbered 3" in p for p in r.problems)
    r = parse_dqtest_output("ok 1 - a\n1..2\ndqtest: PASS 1/1\n")
    assert any("plan" in p for p in r.problems)


def test_panic_line_counts_as_failure() -> None:
    text = "ok 1 - a\nnot ok 2 - panic: exception #GP (vector 13) on cpu1\ndqtest: FAIL 1/2\n"
    r = parse_dqtest_output(text)
    assert r.status == "FAIL" and r.problems == []
    assert r.failures[0].description.startswith("panic:")


def test_empty_latency_and_foreign_lines() -> None:
    text = "QEMU 10.0.2 monitor\n# lat ipi_rtt cpu0-cpu1 n=0\nok 1 - a\n1..1\ndqtest: PASS 1/1\n"
    r = parse_dqtest_output(text)
    assert r.passed
    lat = r.latency("ipi_rtt", "cpu0-cpu1")
    assert lat is not None and lat.n == 0 and lat.get("p50_ns") is None
