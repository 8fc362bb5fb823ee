"""The Linux-guest benches' reading of a run (bench/linux_guest.py, workload.py, boot.py)."""

from __future__ import annotations

import argparse

import pytest

from bench.boot import run_order, vcpus_arg
from bench.linux_guest import (
    BenchError,
    GuestRun,
    add_vm_choices,
    checked,
    data_paths,
    guest_seconds,
    loopback_cmd,
    read_kv,
    vm_flags,
)
from bench.workload import WorkRun, ratio, work_figures

CONSOLE = [
    (10.0, "[    1.234] random kernel line\n"),
    (11.0, "DQ BEGIN work\n"),
    (11.5, "DQ KV work_jobs=2\n"),
    (11.6, "DQ KV work_bytes=1000000\n"),
    (11.7, "DQ KV work_rounds=3\n"),
    (12.0, "DQ KV work_start=1\n"),
    (20.5, "DQ KV work_end=1\n"),
    (20.6, "DQ KV work_guest_s=8.40\n"),
    (20.7, "DQ KV work_cpu0_s=8.30\n"),
    (20.8, "DQ KV work_cpu1_s=7.90\n"),
    (20.9, "DQ KV work_digest=4d5e\n"),
    (21.0, "DQ KV work_jobs=9\n"),  # a repeated key keeps its first value and time
    (21.1, "DQ PASS work\n"),
]


def guest_run(lines: list[tuple[float, str]], returncode: int = 0, stderr: str = "") -> GuestRun:
    kv, seen = read_kv(lines)
    return GuestRun(30.0, returncode, "".join(x for _, x in lines), stderr, kv, seen)


def test_read_kv_keeps_the_first_value_and_when_it_was_seen() -> None:
    kv, seen = read_kv(CONSOLE)
    assert kv["work_jobs"] == "2" and seen["work_jobs"] == 11.5
    assert kv["work_digest"] == "4d5e"
    assert "random" not in " ".join(kv)


def test_work_figures_time_the_work_between_its_markers() -> None:
    r = work_figures(guest_run(CONSOLE))
    assert r.work_s == pytest.approx(8.5)
    assert r.guest_s == 8.4 and r.job_s == (8.3, 7.9)
    assert r.mb == pytest.approx(6.0)  # 2 jobs x 3 rounds x 1 MB
    assert r.mb_per_s == pytest.approx(6.0 / 8.5)


def test_work_figures_refuse_a_run_without_its_end_marker() -> None:
    lines = [x for x in CONSOLE if "work_end" not in x[1]]
    with pytest.raises(BenchError, match="start and end lines"):
        work_figures(guest_run(lines))
    lines = [x for x in CONSOLE if "work_cpu1_s" not in x[1]]
    with pytest.raises(BenchError, match="work_cpu1_s"):
        work_figures(guest_run(lines))


def test_ratio_is_median_two_shard_throughput_over_one_shard() -> None:
    def run(s: float) -> WorkRun:
        return WorkRun(s, s, (s,), 10.0, 40.0)

    one = [run(10.0), run(12.0), run(11.0)]
    two = [run(20.0), run(10.0), run(11.0)]
    assert ratio(two, one) == pytest.approx(1.0)
    assert ratio([run(22.0)], one) == pytest.approx(0.5)


def test_checked_names_the_failure() -> None:
    ok = guest_run(CONSOLE)
    assert checked(ok, "w", "work_jobs", "2") is ok
    with pytest.raises(BenchError, match=r"w failed: exit 4: dqemu: error: shard 1 died"):
        checked(guest_run(CONSOLE, 4, "noise\ndqemu: error: shard 1 died\n"), "w", "work_jobs")
    failed = [*CONSOLE[:5], (13.0, "DQ KV error=job 1 digest 0, job 0 4d5e\n"),
              (13.1, "DQ FAIL work exit status 1\n")]  # fmt: skip
    with pytest.raises(BenchError, match="DQ FAIL work exit status 1; error=job 1 digest"):
        checked(guest_run(failed), "w", "work_jobs")
    with pytest.raises(BenchError, match="no DQ KV work_jobs=4"):
        checked(ok, "w", "work_jobs", "4")


def test_data_paths_and_the_command_line() -> None:
    assert data_paths("router,direct", ("router", "direct")) == ["router", "direct"]
    with pytest.raises(BenchError, match="--data-paths takes router, direct"):
        data_paths("router,fast", ("router", "direct"))
    cmd = loopback_cmd("work", 2, 2, "--data-path", "router", guest_args="dq.rounds=3")
    assert cmd[cmd.index("--append") + 1] == "dq.run=work dq.rounds=3"
    assert cmd[-2:] == ["--data-path", "router"]
    assert cmd[cmd.index("--shards") + 1] == "2"
    none = argparse.Namespace(posted_writes=None, reply_poll=None, serve_in_rx=None)
    some = argparse.Namespace(posted_writes="off", reply_poll=None, serve_in_rx="off")
    assert vm_flags(none, None) == [] and vm_flags(some, "router") == [
        "--posted-writes", "off", "--serve-in-rx", "off", "--data-path", "router"
    ]  # fmt: skip


def test_vm_choices_check_the_paths_when_parsed(capsys: pytest.CaptureFixture[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench")
    add_vm_choices(ap, "direct", "the runs")
    args = ap.parse_args([])
    assert (args.data_paths, args.posted_writes, args.reply_poll) == (["direct"], None, None)
    assert ap.parse_args(["--serve-in-rx", "off"]).serve_in_rx == "off"
    assert ap.parse_args(["--reply-read", "off"]).reply_read == "off"
    assert ap.parse_args(["--irq-in-rx", "off"]).irq_in_rx == "off"
    assert ap.parse_args(["--local-config", "off"]).local_config == "off"
    assert ap.parse_args(["--halt-poll", "off"]).halt_poll == "off"
    assert ap.parse_args(["--data-paths", "router,direct"]).data_paths == ["router", "direct"]
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--data-paths", "fast"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--data-paths: 'fast': takes router, direct, comma-separated" in err


def test_boot_alternates_the_paths_run_by_run() -> None:
    assert run_order(0, ["router", "direct"]) == [
        (1, None), (2, "router"), (2, "direct"), (4, "router"), (4, "direct")
    ]  # fmt: skip
    assert run_order(1, ["router", "direct"])[1:3] == [(2, "direct"), (2, "router")]


def test_guest_seconds_is_the_power_off_time_stamp() -> None:
    out = "[    0.000000] Linux version 6.1\n[    9.876543] reboot: Power down\n"
    assert guest_seconds(GuestRun(12.0, 0, out, "")) == pytest.approx(9.876543)
    # no power-off line (a run that ended otherwise): unknown, not 0
    assert guest_seconds(GuestRun(12.0, 1, "[    1.0] panic\n", "")) is None


def test_boot_needs_a_vcpu_per_shard() -> None:
    assert vcpus_arg("4") == 4 and vcpus_arg("8") == 8
    with pytest.raises(argparse.ArgumentTypeError, match="4-shard layout needs at least 4"):
        vcpus_arg("2")
    with pytest.raises(argparse.ArgumentTypeError, match="not a number"):
        vcpus_arg("two")
