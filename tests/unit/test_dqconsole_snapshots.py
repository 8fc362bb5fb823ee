"""Snapshots of dqconsole's main screens at 80x24 and 160x48, fed fixed data (no VM)."""

from __future__ import annotations

from typing import Any

import pytest
from textual.app import App
from textual.pilot import Pilot

from dqconsole.app import DQConsole
from dqconsole.client import VMRow
from dqconsole.screens.vm import OfflineClient, VMScreen
from dqconsole.screens.vm_list import VMListScreen
from dqconsole.widgets.serial_view import SerialView

SIZES = [(80, 24), (160, 48)]

INFO: dict[str, Any] = {
    "name": "demo", "state": "running", "started": 0.0, "launcher_pid": 4242, "vcpus": 2,
    "memory_mib": 512,
    "shards": [
        {"id": k, "host": f"dq-4242-ab12cd-h{k}", "pid": 4250 + k, "state": "up",
         "vcpus": [k], "devices": ["isa-serial"] if k == 0 else [], "cpu_pct": 97.0 - 40 * k,
         "rss_mib": 310.5 - 100 * k, "router": {"pid": 4246 + k, "cpu_pct": 3.1, "rss_mib": 40.2},
         "links": {str(1 - k): "up"}}
        for k in (0, 1)
    ],
}  # fmt: skip


def snapshot(seq: int) -> dict[str, Any]:
    rate = float(10 * (seq % 7))
    mech = {
        "ipi": {"total": 100 * seq, "msgs_per_s": rate, "bytes_per_s": rate * 72},
        "pio": {"total": 40 * seq, "msgs_per_s": rate / 2, "bytes_per_s": rate * 20},
    }
    return {
        "seq": seq, "time": 0.0, "interval_s": 1.0, "mechanisms": mech,
        "links": {key: {"msgs_per_s": rate, "bytes_per_s": rate * 64, "requests": seq,
                        "latency_p50_us": 180.0, "latency_p99_us": 410.0, "mechanisms": mech}
                  for key in ("0->1", "1->0")},
    }  # fmt: skip


class Demo(DQConsole):
    def __init__(self, tab: str) -> None:
        super().__init__()
        self.tab = tab

    def on_mount(self) -> None:
        if self.tab == "list":
            self.push_screen(VMListScreen(poll=False))
        else:
            self.push_screen(VMScreen("demo", client=OfflineClient("demo")))


async def feed(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await pilot.pause()
    screen = app.screen
    if isinstance(screen, VMListScreen):
        screen.show([VMRow("demo", "running", 2, 2, None), VMRow("web", "paused", 4, 8, None)])
        await pilot.pause()
        return
    assert isinstance(screen, VMScreen)
    screen.show_info(INFO)
    await pilot.pause()
    screen.show_info(INFO)
    screen.show_vcpus([(0, 0, 4301, "/machine/unattached/device[0]"),
                       (1, 1, 4302, "/machine/unattached/device[1]")])  # fmt: skip
    for seq in range(1, 40):
        screen.history.add(snapshot(seq))
    screen._show_traffic()
    screen.on_vm_event({"seq": 1, "time": 0, "type": "state", "state": "running"})
    screen.on_vm_event({"seq": 2, "time": 0, "type": "link", "shard": 0, "peer": 1, "state": "up"})
    screen.query_one(SerialView).feed(
        b"DQ BEGIN shell\r\nDQ KV shell=1\r\n/ # echo hi-$((6*7))\r\nhi-42\r\n/ # "
    )
    screen.query_one("#tabs").active = app.tab  # type: ignore[attr-defined]
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tab", ["list", "topology", "traffic", "console"])
def test_screens(snap_compare: Any, tab: str, size: tuple[int, int]) -> None:
    app: App[Any] = Demo(tab)
    assert snap_compare(app, terminal_size=size, run_before=feed)
