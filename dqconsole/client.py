"""The console's side of the VM control API (``docs/control.md``), with no Textual in it.

Everything here blocks: the app calls it from worker threads only. A request is one
connection (``vm_call``); a stream (``stats`` with watch, ``events``, ``serial``) holds its
own connection and is read with a short timeout, so a worker can notice it was cancelled.
A lost connection is retried with ``Backoff``; whether the VM is still there is the
registry's lock (``Entry.alive``), and how it ended is the registry's ``.ended/`` record.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cluster.errors import DqemuError
from cluster.router.control import ControlError
from cluster.vm import registry
from cluster.vm.client import (
    StreamReader,
    VMHandle,
    find_vm,
    info_or_starting,
    open_stream,
    ray_address,
    running_vms,
    uptime,
)
from cluster.vm.control import vm_call

Stream = StreamReader
T = TypeVar("T")


class ClientError(Exception):
    """A request failed; the message names the problem in one line."""


class VMGone(ClientError):
    """The VM is not running (any more); the message says what is known of its end."""


class ConnectionLost(ClientError):
    """The control socket did not answer or closed, while the VM's launcher still lives."""


@dataclass
class Backoff:
    """Delays between reconnection attempts: 0.5 s doubling up to ``cap``; ``reset`` on success."""

    first: float = 0.5
    cap: float = 8.0
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2**self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


def sleep_unless(cancelled: Callable[[], bool], seconds: float) -> None:
    """Sleep in small steps, so that a cancelled worker ends soon."""
    end = time.monotonic() + seconds
    while not cancelled() and time.monotonic() < end:
        time.sleep(0.1)


@dataclass
class Retry:
    """Calls a request or opens a stream again and again until it works (or the worker is
    cancelled: None), with ``Backoff`` between attempts. ``report`` gets a line saying the
    connection is lost and when the next attempt is, then "" once it works again.
    ``VMGone`` is not retried: it is the VM's end, not a lost connection."""

    what: str
    cancelled: Callable[[], bool]
    report: Callable[[str], None] = lambda _line: None
    backoff: Backoff = field(default_factory=Backoff)

    def __call__(self, fn: Callable[[], T]) -> T | None:
        while not self.cancelled():
            try:
                out = fn()
            except VMGone:
                raise
            except ClientError as e:
                delay = self.backoff.next()
                self.report(f"{self.what} lost ({e}); retrying in {delay:.1f} s")
                sleep_unless(self.cancelled, delay)
                continue
            if self.backoff.attempt:
                self.report("")
                self.backoff.reset()
            return out
        return None


def ended_reason(name: str) -> str | None:
    """``exit N: reason`` from the registry's record of how ``name`` ended, if there is one."""
    found = None
    for rec in registry.ended_records():
        if rec.get("name") == name:
            found = f"exit {rec.get('status')}: {rec.get('reason')}"
    return found


@dataclass
class VMRow:
    """One line of the VM list."""

    name: str
    state: str
    shards: int
    vcpus: int | None
    started: float | None

    def uptime(self, now: float | None = None) -> str:
        if self.started is None:
            return "-"
        return uptime((now if now is not None else time.time()) - self.started)


def list_vms() -> list[VMRow]:
    """Every running VM on this machine and on the Ray cluster at ``$RAY_ADDRESS``, with
    what its ``info`` says (``starting`` when its control API does not answer yet)."""
    rows = []
    for e in running_vms(ray_address()):
        info = info_or_starting(e)
        rows.append(VMRow(e.name, str(info.get("state")), len(info.get("shards") or []),
                          info.get("vcpus"), info.get("started")))  # fmt: skip
    return rows


@dataclass
class VMClient:
    """One VM's control API, by name."""

    name: str
    timeout: float = 10.0
    _entry: VMHandle | None = field(default=None, repr=False)

    def entry(self) -> VMHandle:
        if self._entry is not None and self._entry.alive():
            return self._entry
        try:
            self._entry = find_vm(self.name, ray_address())
        except DqemuError as e:
            raise VMGone(str(e)) from None
        return self._entry

    def alive(self) -> bool:
        try:
            return self.entry().alive()
        except VMGone:
            return False

    def gone_message(self) -> str:
        reason = ended_reason(self.name)
        return f"{self.name} has ended ({reason})" if reason else f"{self.name} is not running"

    def call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        entry = self.entry()
        try:
            return vm_call(entry, cmd, timeout=timeout or self.timeout, **args)
        except ControlError as e:
            raise ClientError(str(e)) from None
        except (OSError, ValueError) as e:
            if not entry.alive():
                raise VMGone(self.gone_message()) from None
            raise ConnectionLost(f"control API did not answer: {e}") from None

    def info(self) -> dict[str, Any]:
        return dict(self.call("info"))

    def qmp(self, shard: int, execute: str, arguments: dict[str, Any] | None = None) -> Any:
        return self.call("qmp", shard=shard, execute=execute, arguments=arguments or {})

    def open_stream(self, req: dict[str, Any]) -> Stream:
        """A stream connection; raises ClientError with the VM's refusal, VMGone, ConnectionLost."""
        entry = self.entry()
        try:
            return Stream(open_stream(entry, req, timeout=self.timeout))
        except ControlError as e:
            raise ClientError(str(e)) from None
        except (OSError, ValueError) as e:
            if not entry.alive():
                raise VMGone(self.gone_message()) from None
            raise ConnectionLost(f"{req.get('cmd')}: {e}") from None


def start_spec(spec: Path, timeout: float = 600.0) -> str:
    """``dqemu loopback --spec FILE --detach``; the VM's name, or ClientError with dqemu's
    own message."""
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "loopback", "--spec", str(spec), "--detach"],
        capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise ClientError(lines[-1] if lines else f"dqemu loopback exited {proc.returncode}")
    out = proc.stdout.split()
    if not out:
        raise ClientError("dqemu loopback --detach printed no VM name")
    return out[0]
