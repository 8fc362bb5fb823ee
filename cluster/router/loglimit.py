"""A rate limit for one kind of log line, so that a flood (of connections, of bad frames)
costs a bounded number of lines: at most ``burst`` lines per ``period`` seconds, and what
was held back is counted and summarised in one line when the period is over."""

from __future__ import annotations

import logging
import threading
import time


class LogLimiter:
    def __init__(
        self, logger: logging.Logger, what: str, burst: int = 5, period: float = 10.0
    ) -> None:
        self._log = logger
        self._what = what  # names the suppressed lines in the summary, e.g. "refused peer"
        self._burst = burst
        self._period = period
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._count = 0
        self._held = 0
        self._held_level = logging.INFO

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log the line unless this period's burst is used up. True if it went out."""
        with self._lock:
            self._roll(time.monotonic())
            if self._count < self._burst:
                self._count += 1
                self._log.log(level, msg, *args, stacklevel=2)
                return True
            self._held += 1
            self._held_level = max(self._held_level, level)
            return False

    def flush(self) -> None:
        """Call now and then: writes the summary of a period that is over."""
        with self._lock:
            self._roll(time.monotonic())

    def _roll(self, now: float) -> None:
        if now - self._start < self._period:
            return
        if self._held:
            self._log.log(
                self._held_level,
                "%d more %s line(s) not logged in the last %.0f s (rate limit: %d per %g s)",
                self._held, self._what, now - self._start, self._burst, self._period,
            )  # fmt: skip
        self._start = now
        self._count = 0
        self._held = 0
        self._held_level = logging.INFO
