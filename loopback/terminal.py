"""The user's terminal while stdin is copied to the guest's serial port.

Like ``qemu -serial stdio``: no local echo (the guest echoes), every key at once, Enter
as the carriage return a serial terminal sends; but Ctrl-C still interrupts the
launcher (ISIG stays on), which tears the VM down.
"""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from collections.abc import Iterator


def interactive(fd: int) -> bool:
    """Is ``fd`` the terminal this process runs in the foreground of? (A background job
    that read it or set its mode would be stopped by SIGTTIN / SIGTTOU.)"""
    try:
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


@contextlib.contextmanager
def console_terminal(fd: int | None) -> Iterator[None]:
    """The terminal mode for copying keys to the guest, restored on the way out."""
    if fd is None or not interactive(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[0] &= ~(termios.ICRNL | termios.IXON)  # iflag
    mode[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN)  # lflag, ISIG kept
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


@contextlib.contextmanager
def raw_terminal(fd: int | None) -> Iterator[None]:
    """Every key straight to the guest, Ctrl-C included (``dqemu console``: Ctrl-]
    detaches), restored on the way out."""
    if fd is None or not interactive(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
