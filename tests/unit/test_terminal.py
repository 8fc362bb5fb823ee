"""The terminal mode while stdin goes to the guest: keys at once and unechoed, Ctrl-C still
a signal, and the user's mode back afterwards."""

from __future__ import annotations

import os
import pty
import termios

from loopback.terminal import console_terminal, interactive


def test_mode_inside_and_restored() -> None:
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with console_terminal(slave):
            pass  # not this process's controlling terminal: left alone
        assert termios.tcgetattr(slave) == before
        assert not interactive(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_mode_in_a_foreground_session() -> None:
    # A child in its own session with the pty as its controlling terminal, in the
    # foreground: it reports the mode inside the context and after it.
    pid, master = pty.fork()
    if pid == 0:  # the child
        try:
            lflag = lambda: termios.tcgetattr(0)[3]  # noqa: E731
            with console_terminal(0):
                inside = lflag()
            after = lflag()
            flags = (termios.ECHO, termios.ICANON, termios.ISIG)
            os.write(1, repr([bool(inside & f) for f in flags] + [bool(after & f) for f in flags]
                             + [interactive(0)]).encode() + b"\n")  # fmt: skip
        finally:
            os._exit(0)
    out = b""
    try:
        while b"\n" not in out:
            out += os.read(master, 1024)
    finally:
        os.waitpid(pid, 0)
        os.close(master)
    # inside: no echo, no line editing, signals on; after: echo and line editing back
    assert out.strip().splitlines()[-1] == b"[False, False, True, True, True, True, True]"
