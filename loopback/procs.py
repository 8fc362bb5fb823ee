"""Child-process supervision: every process dQEMU starts is reaped on every exit path.

Children run in their own session (so a terminal's Ctrl-C reaches only the launcher, which
then tears down in order) and carry PR_SET_PDEATHSIG=SIGKILL, so that even a SIGKILLed
launcher leaves no orphans behind. Spawn only from the main thread: the death signal fires
when the spawning *thread* exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])


@dataclass
class Supervisor:
    """Starts children and guarantees their termination when closed."""

    children: list[Child] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        log: Path | None = None,
        stdout: int | IO[bytes] | None = None,
        pass_fds: Sequence[int] = (),
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        cmd = list(argv)
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        err: int | IO[bytes] | None = None
        log_file = None
        if log is not None:
            log_file = log.open("ab")
            err = log_file
            if stdout is None:
                stdout = log_file
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=err,
                start_new_session=True,
                preexec_fn=_child_setup,
                pass_fds=tuple(pass_fds),
                env=env,
                cwd=cwd,
            )
        finally:
            if log_file is not None:
                log_file.close()
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        for c in self.children:
            if c.poll() is not None:
                return c
        return None

    def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM every live child, wait up to ``grace`` seconds, then SIGKILL; reap all."""
        for c in reversed(self.children):
            if c.poll() is None:
                _signal_group(c.popen, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in self.children:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                c.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _signal_group(c.popen, signal.SIGKILL)
                c.popen.wait()
        # Anything the children left in their process groups goes too.
        for c in self.children:
            _signal_group(c.popen, signal.SIGKILL)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _signal_group(p: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)
