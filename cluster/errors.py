"""The one exception type that user-facing code raises for bad input or failed set-up."""

from __future__ import annotations

import os
import signal


class DqemuError(Exception):
    """An error whose message is a complete, one-line explanation for the user.

    The CLI prints it as ``dqemu: error: <message>`` and exits non-zero, without a traceback.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def end_by_signal(signum: int) -> None:
    """End this process by ``signum`` (after its clean-up), as a program that handles a
    terminating signal should: the parent sees the signal, never an exit status that a
    guest could have chosen too."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
