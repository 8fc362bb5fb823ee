"""Traffic: per link and per mechanism msgs/s with sparklines, totals, latency p50/p99."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from dqconsole.traffic import TrafficHistory
from dqconsole.widgets.sparkline_text import sparkline


class TrafficView(Vertical):
    """Two tables fed by ``show(history)``."""

    def compose(self) -> ComposeResult:
        yield Static("waiting for the first stats snapshot…", id="traffic-summary")
        yield DataTable(id="links", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="mechanisms", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        links = self.query_one("#links", DataTable)
        links.add_columns("link", "msgs/s", "KiB/s", "total", "req", "p50 µs", "p99 µs", "history")
        mechs = self.query_one("#mechanisms", DataTable)
        mechs.add_columns("mechanism", "msgs/s", "total", "history")

    def show(self, h: TrafficHistory, width: int = 24) -> None:
        self.query_one("#traffic-summary", Static).update(
            f"stats #{h.seq} over {h.interval_s:.2f} s · {h.total_messages()} messages forwarded"
        )
        links = self.query_one("#links", DataTable)
        links.clear()
        for name in sorted(h.link_rows):
            r = h.link_rows[name]
            s = h.links[name]
            links.add_row(
                name, f"{r.msgs_per_s:.0f}", f"{r.bytes_per_s / 1024:.1f}", str(s.total),
                str(r.requests), f"{r.p50_us:.0f}", f"{r.p99_us:.0f}",
                sparkline(s.rates, width), key=name,
            )  # fmt: skip
        mechs = self.query_one("#mechanisms", DataTable)
        mechs.clear()
        rows: list[tuple[str, Any]] = []
        for name in sorted(h.mechanisms):
            s = h.mechanisms[name]
            rate = s.rates[-1] if s.rates else 0.0
            rows.append((name, (f"{rate:.0f}", str(s.total), sparkline(s.rates, width))))
        for name, cells in rows:
            mechs.add_row(name, *cells, key=name)
