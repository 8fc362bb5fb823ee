"""cluster/vm/exit_policy.py: how a VM ended, as dqemu's exit status and reason."""

from __future__ import annotations

import pytest

from cluster.vm.exit_policy import (
    EXIT_GUEST_RESET,
    EXIT_PANIC,
    EXIT_POWEROFF,
    EXIT_SHARD_FAILED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Ending,
    decide,
    last_words,
)

GUEST = "guest-shutdown"
LOST0 = "dqemu: shard 0 lost (the link to its router was lost): stopping the VM"
LOST1 = "dqemu: shard 1 lost (the link to its router was lost): stopping the VM"


def routers(n: int = 2) -> list[Ending]:
    return [Ending(f"router {i}", None) for i in range(n)]


def test_dqemu_statuses_are_even_so_no_guest_status_is_one_of_them() -> None:
    # isa-debug-exit gives (value << 1) | 1: every guest status but 0 is odd
    for status in (EXIT_USAGE, EXIT_SHARD_FAILED, EXIT_PANIC, EXIT_GUEST_RESET, EXIT_TIMEOUT):
        assert status % 2 == 0 and status != EXIT_POWEROFF


@pytest.mark.parametrize("first", [0, 1])
def test_guest_status_comes_back_whichever_shard_ends_first(first: int) -> None:
    # every shard followed the guest's isa-debug-exit with its status (0019)
    shards = [Ending(f"shard {i}", 33, seen_at=1.0 + (i != first), shutdown_reason=GUEST)
              for i in (0, 1)]  # fmt: skip
    v = decide(routers() + shards)
    assert (v.status, v.by_guest) == (33, True), v
    assert v.reason == (
        "the guest ended the VM with status 33 (isa-debug-exit value 0x10) (every shard exited 33)"
    )


def test_guest_status_wins_over_a_shard_that_followed_with_0() -> None:
    # the symptom of issue 12.10 / 13§2.7: shard 1 exited 0 first, the owner 33
    shards = [Ending("shard 1", 0, seen_at=1.0, shutdown_reason=GUEST),
              Ending("shard 0", 33, seen_at=1.1, shutdown_reason=GUEST)]  # fmt: skip
    v = decide(routers() + shards)
    assert (v.status, v.by_guest) == (33, True), v
    assert v.reason.endswith("; shard 1 exited with status 0"), v.reason


def test_guest_status_1_is_the_guests_not_an_error() -> None:
    v = decide([Ending("shard 0", 1, seen_at=1.0, shutdown_reason=GUEST)])
    assert (v.status, v.by_guest) == (1, True), v
    assert "QEMU" not in v.reason


def test_qemu_exiting_1_by_itself_is_a_failure() -> None:
    v = decide([Ending("shard 0", 1, seen_at=1.0, said="qemu-system-x86_64: oops")])
    assert (v.status, v.by_guest) == (EXIT_SHARD_FAILED, False)
    assert v.reason == "shard 0 (QEMU) exited with status 1 (qemu-system-x86_64: oops)"


def test_poweroff_and_quit() -> None:
    off = decide(routers() + [Ending(f"shard {i}", 0, shutdown_reason=GUEST) for i in (0, 1)])
    assert (off.status, off.by_guest) == (0, True)
    assert "guest powered off (every shard exited 0)" in off.reason
    quit_ = decide(routers() + [Ending(f"shard {i}", 0) for i in (0, 1)])
    assert quit_.status == 0 and "every shard exited 0" in quit_.reason


def test_shards_that_disagree_on_the_guest_status_fail() -> None:
    shards = [
        Ending("shard 0", 33, shutdown_reason=GUEST),
        Ending("shard 1", 35, shutdown_reason=GUEST),
    ]
    assert decide(shards).status == EXIT_SHARD_FAILED


def test_a_router_gone_before_the_teardown_is_a_failure() -> None:
    shards = [Ending(f"shard {i}", 0, shutdown_reason=GUEST) for i in (0, 1)]
    v = decide([Ending("router 0", None), Ending("router 1", -9, seen_at=1.0), *shards])
    assert v.status == EXIT_SHARD_FAILED
    assert v.reason.startswith("router 1 was killed by signal 9")


def test_killed_shard_is_the_cause_not_the_shard_that_lost_it() -> None:
    # the killed shard is seen after the survivor's message: it is still the cause
    v = decide([
        *routers(),
        Ending("shard 0", 4, seen_at=2.0, said=LOST1, said_at=1.01),
        Ending("shard 1", -9, seen_at=1.05),
    ])  # fmt: skip
    assert v.status == EXIT_SHARD_FAILED
    assert v.reason.startswith("shard 1 was killed by signal 9"), v.reason
    assert "then shard 0 exited with status 4" in v.reason


def test_the_first_loss_is_named_first() -> None:
    # issue 12.11: shard 1 lost its link to shard 0 first; shard 0 then lost shard 1
    v = decide([
        *routers(),
        Ending("shard 0", 4, seen_at=1.2, said=LOST1, said_at=1.1),
        Ending("shard 1", 4, seen_at=1.2, said=LOST0, said_at=1.0),
    ])  # fmt: skip
    assert v.status == EXIT_SHARD_FAILED
    assert v.reason.startswith(f"shard 1 stopped the VM: {LOST0}"), v.reason
    assert v.reason.endswith("then shard 0 exited with status 4")


def test_panic_wins() -> None:
    v = decide([Ending("shard 0", 0)], panic="Kernel panic - not syncing: x")
    assert (v.status, v.reason) == (EXIT_PANIC, "guest panic: Kernel panic - not syncing: x")


def test_a_shard_that_did_not_follow_is_named() -> None:
    v = decide([Ending("shard 0", 0, shutdown_reason=GUEST), Ending("shard 1", None)])
    assert v.status == 0 and "shard 1 did not exit by itself (stopped)" in v.reason


def test_a_reset_with_reboot_off_is_not_a_poweroff() -> None:
    v = decide([Ending(f"shard {i}", 0, shutdown_reason="guest-reset") for i in (0, 1)])
    assert (v.status, v.by_guest) == (EXIT_GUEST_RESET, True)
    assert v.reason == "guest reset the machine (no_reboot: the VM ended; seen by shard 0)"
    qmp = [Ending("shard 0", 0, shutdown_reason="host-qmp-system-reset"), Ending("shard 1", 0)]
    v = decide(qmp)
    assert (v.status, v.by_guest) == (EXIT_GUEST_RESET, False)
    assert v.reason.startswith("QMP system_reset reset the machine (no_reboot: the VM ended")


def test_last_words_of_a_shard_that_stopped_the_vm_is_its_loss_line() -> None:
    lines = [
        "2026-01-02T03:04:05.250000Z qemu: something earlier",
        f"2026-01-02T03:04:06.500000Z {LOST1}",
        "2026-01-02T03:04:07.000000Z dqemu: stopping",
    ]
    said, when = last_words("shard 0", 4, lines)
    assert said == LOST1
    assert when is not None and when % 60 == pytest.approx(6.5)


def test_last_words_of_another_end_is_the_log_tail_and_a_killed_child_says_nothing() -> None:
    lines = ["one", "two", "three"]
    assert last_words("router 1", 1, lines) == ("two | three", None)
    assert last_words("shard 1", -9, lines) == ("", None)
    assert last_words("shard 1", 0, []) == ("", None)
