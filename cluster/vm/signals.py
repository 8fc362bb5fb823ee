"""SIGTERM and SIGHUP as an exception in the main thread, so that teardown runs."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(BaseException):
    """Raised in the main thread when the launcher receives SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """What :func:`terminate_on_signals` yields. ``defer()`` makes SIGTERM, SIGHUP and
    SIGINT do nothing until the guard ends: for a teardown that a second signal must not
    cut short, which would leave its children, run directory and namespaces behind. (A
    Python handler, not SIG_IGN, which the teardown's own child processes would inherit.)"""

    def __init__(self, inert: bool = False) -> None:
        # inert: for a thread other than the main one, where signals cannot be handled
        self.inert = inert
        self._old: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def _set(self, sig: int, handler: Callable[[int, FrameType | None], None]) -> None:
        old = signal.signal(sig, handler)
        self._old.setdefault(sig, old)

    def defer(self) -> None:
        def ignore(_signum: int, _frame: FrameType | None) -> None:
            pass

        if self.inert:
            return
        for sig in DEFERRED:
            self._set(sig, ignore)

    def restore(self) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old.clear()


DEFERRED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


@contextmanager
def terminate_on_signals() -> Iterator[SignalGuard]:
    """Turn SIGTERM/SIGHUP into a :class:`Terminated` exception so ``finally`` blocks run;
    the guard it yields can defer them (and SIGINT) for the teardown in those blocks."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    guard = SignalGuard()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        guard._set(sig, handler)
    try:
        yield guard
    finally:
        guard.restore()
