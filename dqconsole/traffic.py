"""Traffic history from stats snapshots (``docs/control.md``): rates per link and per
mechanism over the last minutes, for sparklines. No Textual here."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

HISTORY = 300  # samples: five minutes at 1 Hz


@dataclass
class Series:
    rates: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    total: int = 0


@dataclass
class LinkRow:
    name: str
    msgs_per_s: float
    bytes_per_s: float
    requests: int
    p50_us: float
    p99_us: float


@dataclass
class TrafficHistory:
    """Folds snapshots in; keeps each link's and each mechanism's rate history."""

    links: dict[str, Series] = field(default_factory=dict)
    mechanisms: dict[str, Series] = field(default_factory=dict)
    link_rows: dict[str, LinkRow] = field(default_factory=dict)
    link_mechs: dict[str, dict[str, Series]] = field(default_factory=dict)
    seq: int = 0
    interval_s: float = 0.0

    def add(self, snap: dict[str, Any]) -> None:
        self.seq = int(snap.get("seq", 0))
        self.interval_s = float(snap.get("interval_s", 0.0))
        for name, m in (snap.get("mechanisms") or {}).items():
            s = self.mechanisms.setdefault(name, Series())
            s.rates.append(float(m.get("msgs_per_s", 0.0)))
            s.total = int(m.get("total", 0))
        for name, link in (snap.get("links") or {}).items():
            s = self.links.setdefault(name, Series())
            s.rates.append(float(link.get("msgs_per_s", 0.0)))
            s.total = sum(int(m.get("total", 0)) for m in (link.get("mechanisms") or {}).values())
            self.link_rows[name] = LinkRow(
                name, float(link.get("msgs_per_s", 0.0)), float(link.get("bytes_per_s", 0.0)),
                int(link.get("requests", 0)), float(link.get("latency_p50_us", 0.0)),
                float(link.get("latency_p99_us", 0.0)),
            )  # fmt: skip
            per = self.link_mechs.setdefault(name, {})
            for mname, m in (link.get("mechanisms") or {}).items():
                ms = per.setdefault(mname, Series())
                ms.rates.append(float(m.get("msgs_per_s", 0.0)))
                ms.total = int(m.get("total", 0))

    def total_messages(self) -> int:
        return sum(s.total for s in self.mechanisms.values())
