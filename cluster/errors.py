"""The one exception type that user-facing code raises for bad input or failed set-up."""

from __future__ import annotations


class DqemuError(Exception):
    """An error whose message is a complete, one-line explanation for the user.

    The CLI prints it as ``dqemu: error: <message>`` and exits non-zero, without a traceback.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
