"""Sparklines as text, so that a table cell can hold one."""

from __future__ import annotations

from collections.abc import Sequence

BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 30) -> str:
    """The last ``width`` values as bars scaled to their maximum."""
    vals = list(values)[-width:]
    top = max(vals, default=0.0)
    if top <= 0:
        return BARS[1] * len(vals)
    return "".join(BARS[max(1, round(v / top * (len(BARS) - 1)))] if v > 0 else BARS[1]
                   for v in vals)  # fmt: skip
