"""The guest's serial console as a terminal: pyte emulates it, with scrollback. No Textual."""

from __future__ import annotations

from typing import Any

import pyte

SCROLLBACK = 5000


class Terminal:
    """Bytes in (``feed``), lines out (``lines``): the scrollback, then the screen."""

    def __init__(self, cols: int = 80, rows: int = 24, scrollback: int = SCROLLBACK) -> None:
        self.screen = pyte.HistoryScreen(cols, rows, history=scrollback, ratio=0.5)
        self.stream = pyte.ByteStream(self.screen)
        self.version = 0

    def feed(self, data: bytes) -> None:
        self.stream.feed(data)
        self.version += 1

    def _row(self, line: Any) -> str:
        return "".join(line[x].data for x in range(self.screen.columns)).rstrip()

    def lines(self) -> list[str]:
        history = [self._row(line) for line in self.screen.history.top]
        screen = [self._row(self.screen.buffer[y]) for y in range(self.screen.lines)]
        while screen and not screen[-1] and len(screen) - 1 > self.screen.cursor.y:
            screen.pop()
        return history + screen

    def cursor(self) -> tuple[int, int]:
        """The cursor as (column, line index into ``lines()``)."""
        return self.screen.cursor.x, len(self.screen.history.top) + self.screen.cursor.y

    def find(self, text: str, before: int | None = None) -> int | None:
        """The index of the last line containing ``text`` (case-insensitive) before ``before``."""
        needle = text.lower()
        lines = self.lines()
        end = len(lines) if before is None else min(before, len(lines))
        for i in range(end - 1, -1, -1):
            if needle in lines[i].lower():
                return i
        return None


KEYS = {
    "enter": b"\r", "tab": b"\t", "backspace": b"\x7f", "escape": b"\x1b",
    "up": b"\x1b[A", "down": b"\x1b[B", "right": b"\x1b[C", "left": b"\x1b[D",
    "home": b"\x1b[H", "end": b"\x1b[F", "delete": b"\x1b[3~",
    "pageup": b"\x1b[5~", "pagedown": b"\x1b[6~",
}  # fmt: skip


def key_bytes(key: str, character: str | None) -> bytes | None:
    """What a key sends to the guest; None for keys the console keeps (F-keys, ...)."""
    if key in KEYS:
        return KEYS[key]
    if key.startswith("ctrl+") and len(key) == 6 and key[5].isalpha():
        return bytes([ord(key[5]) & 0x1F])
    if character and character.isprintable():
        return character.encode()
    return None
