"""How a VM ended, as dqemu's exit status and one line of explanation.

A pure function of what ended and how, so that every rule is unit-tested without a guest.

Exit statuses (``docs/spec.md``, "Exit status"). A guest ends the VM with status 0 (poweroff)
or through isa-debug-exit, whose statuses are always odd (``(value << 1) | 1``, truncated to
8 bits). Every status dqemu chooses itself is even, so that none can be mistaken for one the
guest chose:

====  =============================================================================
0     the guest powered off (or the VM was quit), every shard exited 0
odd   the guest's own status through isa-debug-exit, the same on every shard
2     bad input: a spec or command-line error, a missing or unusable file
4     a shard or router failed, died or was killed, or a shard lost another one
6     the guest panicked (seen on its console)
8     the machine was reset while reboot is off (vm.no_reboot): by the guest or QMP
124   the guest did not finish within the timeout
130   interrupted (SIGINT); SIGTERM and SIGHUP end dqemu by the same signal
====  =============================================================================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime

EXIT_POWEROFF = 0
EXIT_USAGE = 2
EXIT_SHARD_FAILED = 4
EXIT_PANIC = 6
EXIT_GUEST_RESET = 8
EXIT_DESTROYED = 10  # an operator destroyed the VM (dqemu destroy, the control API)
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
# A shard QEMU exits with this status when it stopped the VM because another shard, or its
# router, was lost (hw/dqemu/liveness.c): a consequence, never the first failure by itself.
SHARD_EXIT_PEER_LOST = 4
# QMP SHUTDOWN reasons (QEMU's ShutdownCause) that mean the guest ended the VM itself.
GUEST_REASONS = ("guest-shutdown", "guest-reset", "guest-panic", "subsystem-reset", "snapshot-load")
# SHUTDOWN reasons of a reset that ended the VM because reboot is off, and who reset it.
RESET_REASONS = {"guest-reset": "guest", "host-qmp-system-reset": "QMP system_reset"}


@dataclass(frozen=True)
class Ending:
    """One child of the launcher as the VM ended."""

    name: str  # "shard 1", "router 0"
    code: int | None  # its exit status; -N: killed by signal N; None: still running
    seen_at: float = math.inf  # wall-clock time the launcher saw it end
    shutdown_reason: str | None = None  # reason of the SHUTDOWN event its QMP reported
    said: str = ""  # its own last words: a "dqemu: ..." line, else its log's tail
    said_at: float | None = None  # wall-clock time of that line (shard logs carry it)

    @property
    def is_shard(self) -> bool:
        return self.name.startswith("shard")

    @property
    def ended(self) -> bool:
        return self.code is not None

    @property
    def by_guest(self) -> bool:
        """It exited by itself because the guest ended the VM (its QMP said so)."""
        return (
            self.is_shard
            and self.code is not None
            and self.code >= 0
            and self.shutdown_reason in GUEST_REASONS
        )

    @property
    def when(self) -> float:
        return self.said_at if self.said_at is not None else self.seen_at


@dataclass(frozen=True)
class Verdict:
    status: int
    reason: str
    by_guest: bool = False  # the status is the guest's own choice, not an error of dqemu's


def how(code: int | None) -> str:
    """How a child ended, from its ``poll()``."""
    if code is None:
        return "is still running"
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _failed(e: Ending) -> bool:
    if not e.ended:
        return False
    if not e.is_shard:
        return True  # a router stays up until the teardown stops it
    return not e.by_guest and e.code != 0


def _first_cause(failures: list[Ending]) -> Ending:
    """The failure that caused the others. A child killed, a router gone, or a shard that
    exited with an error is a cause; a shard that stopped the VM because it lost another
    one (status 4) is a consequence, unless nothing else failed: then the earliest loss."""
    causes = [e for e in failures if not (e.is_shard and e.code == SHARD_EXIT_PEER_LOST)]
    return min(causes or failures, key=lambda e: e.when)


def _describe(e: Ending) -> str:
    if e.is_shard and e.code == SHARD_EXIT_PEER_LOST and e.said:
        return f"{e.name} stopped the VM: {e.said}"
    text = f"{e.name} {how(e.code)}"
    if e.is_shard and e.code is not None and e.code > 0:
        text = f"{e.name} (QEMU) {how(e.code)}"
    return f"{text} ({e.said})" if e.said and (e.code or 0) >= 0 else text


def decide(endings: list[Ending], panic: str | None = None) -> Verdict:
    """The VM's exit status and reason, once at least one child has ended."""
    if panic is not None:
        return Verdict(EXIT_PANIC, f"guest panic: {panic}")
    failures = [e for e in endings if _failed(e)]
    if failures:
        first = _first_cause(failures)
        then = sorted((e for e in failures if e is not first), key=lambda e: e.when)
        reason = _describe(first)
        if then:
            reason += "; then " + "; ".join(f"{e.name} {how(e.code)}" for e in then)
        return Verdict(EXIT_SHARD_FAILED, reason)
    shards = [e for e in endings if e.is_shard]
    ended = sorted((e for e in shards if e.ended), key=lambda e: e.seen_at)
    if not ended:
        raise ValueError("decide() needs at least one shard that ended")
    stuck = [e.name for e in shards if not e.ended]
    # A QEMU without the run-state patch (0019) does not follow: it was stopped.
    note = f"; {', '.join(stuck)} did not exit by itself (stopped)" if stuck else ""
    every = "every shard" if len(shards) > 1 else "the shard"
    reset = next((e for e in ended if e.code == 0 and e.shutdown_reason in RESET_REASONS), None)
    if reset is not None:
        # with reboot off, QEMU turns a reset into a shutdown that exits 0
        who = RESET_REASONS[reset.shutdown_reason or ""]
        return Verdict(EXIT_GUEST_RESET, f"{who} reset the machine (no_reboot: the VM ended; "
                       f"seen by {reset.name}){note}", who == "guest")  # fmt: skip
    guest = [e for e in ended if e.by_guest]
    if not guest:
        # Every shard that ended exited 0 without the guest asking: a quit (QMP, or the
        # guest's own poweroff when QMP could not tell).
        return Verdict(EXIT_POWEROFF, f"VM quit ({every} exited 0){note}")
    # A poweroff exits 0 everywhere; a status the guest chose (isa-debug-exit) is the owner
    # shard's, and every shard follows with it (0019). A shard that followed with 0 only
    # lost nothing: the guest's choice is the status that is not 0.
    chosen = [e for e in guest if e.code]
    if len({e.code for e in chosen}) > 1:
        told = "; ".join(f"{e.name} {how(e.code)}" for e in chosen)
        return Verdict(EXIT_SHARD_FAILED, f"the shards disagree on the guest's status: {told}")
    if not chosen:
        return Verdict(EXIT_POWEROFF, f"guest powered off ({every} exited 0){note}", True)
    status = chosen[0].code or 0
    text = f"the guest ended the VM with status {status}"
    if status % 2:
        text += f" (isa-debug-exit value {status >> 1:#x})"
    followed = [f"{e.name} {how(e.code)}" for e in ended if e.code != status]
    text += f"; {', '.join(followed)}" if followed else f" ({every} exited {status})"
    return Verdict(status, f"{text}{note}", True)


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")


def log_tail(lines: list[str], n: int) -> str:
    """The last ``n`` lines of a log, joined by " | "."""
    return " | ".join(lines[-n:])


def last_words(name: str, code: int, lines: list[str]) -> tuple[str, float | None]:
    """What the child ``name`` said about its end, and when (shard logs are time-stamped),
    from its log's ``lines``: for a shard that stopped the VM (status 4), its ``dqemu:
    shard N lost (...)`` line, else its last ``dqemu:`` line; for any other end, the tail
    of its log."""
    if name.startswith("shard") and code == SHARD_EXIT_PEER_LOST:
        ours = [ln for ln in lines if "dqemu:" in ln]
        lost = [ln for ln in ours if " lost (" in ln]
        pick = lost[0] if lost else ours[-1] if ours else ""
        said = pick[pick.index("dqemu:") :].strip() if pick else ""
    else:
        pick = lines[-1] if lines else ""
        said = log_tail(lines, 2) if code >= 0 else ""  # a killed child said nothing of it
    m = _STAMP.match(pick)
    when = datetime.fromisoformat(m.group(1) + "+00:00").timestamp() if m else None
    return said, when
