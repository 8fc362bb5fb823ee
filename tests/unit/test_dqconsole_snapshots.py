"""Snapshots of dqconsole's main screens at 80x24 and 160x48, fed fixed data (no VM).

What made them differ from run to run, and is pinned here: the demo app's ``on_mount`` did
not replace DQConsole's (Textual runs every class's handler unless one prevents the
default), so a second, polling VM list of this machine's real registry was pushed too,
and its rows (other VMs, starting or not) and timing leaked into the pictures. Also pinned,
as sources a picture must not depend on: animations (the tab underline), a focused input's
blinking cursor, the time zone of event times (UTC here), and the screen's scroll position
(the tabs overflowed the screen; the layout now fits, tests/unit/test_dqconsole_layout.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Input

from dqconsole.app import DQConsole
from dqconsole.client import VMRow
from dqconsole.placement import Placement
from dqconsole.screens.placement import PlacementScreen
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
         "vcpu_threads": [{"vcpu": k, "thread": 4301 + k, "cpu_pct": 90.5 - 40 * k}],
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


SPEC = """\
[vm]
vcpus = 4
memory = "512M"

[[shard]]
id = 0
vcpus = "0-1"

[[shard]]
id = 1
vcpus = [2, 3]

[[device]]
device = "e1000,netdev=n0"
shard = 1
"""


class Demo(DQConsole):
    def __init__(self, tab: str) -> None:
        super().__init__()
        self.tab = tab
        self.animation_level = "none"

    def on_mount(self, event: events.Mount) -> None:
        event.prevent_default()  # (else DQConsole's own on_mount pushes a polling VM list too)
        if self.tab == "list":
            self.push_screen(VMListScreen(poll=False))
        elif self.tab == "placement":
            self.push_screen(PlacementScreen(Placement(Path("vm.toml"), SPEC)))
        else:
            self.push_screen(VMScreen("demo", client=OfflineClient("demo")))


async def feed(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, Demo)
    await pilot.pause()
    screen = app.screen
    for box in screen.query(Input):
        box.cursor_blink = False
    if isinstance(screen, PlacementScreen):
        await pilot.press("down", "1")  # vCPU 1 to shard 1: shard 0 keeps vCPU 0
        await pilot.press("up", "up", "1")  # and vCPU 0: shard 0 runs nothing
        return
    if isinstance(screen, VMListScreen):
        screen.show([VMRow("demo", "running", 2, 2, None), VMRow("web", "paused", 4, 8, None)])
        await pilot.pause()
        return
    assert isinstance(screen, VMScreen)
    screen.show_info(INFO)
    await pilot.pause()
    screen.show_info(INFO)
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
    for box in screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("DQEMU_RUN_DIR", str(tmp_path / "run"))  # no VM of this machine
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tab", ["list", "topology", "traffic", "console", "placement"])
@pytest.mark.usefixtures("utc")
def test_screens(snap_compare: Any, tab: str, size: tuple[int, int]) -> None:
    app: App[Any] = Demo(tab)
    assert snap_compare(app, terminal_size=size, run_before=feed)
