"""dqconsole's screens fit the terminal: the status line sits under the header, visible,
and nothing scrolls the screen, at 80x24 and at 160x48."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dqconsole.app import DQConsole
from dqconsole.screens.vm import OfflineClient, VMScreen
from dqconsole.screens.vm_list import VMListScreen


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_status_lines_are_visible(
    size: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DQEMU_RUN_DIR", str(tmp_path / "run"))

    async def main() -> None:
        app = DQConsole()
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            assert isinstance(app.screen, VMListScreen)
            assert app.screen.query_one("#list-status").region.y == 1
            app.push_screen(VMScreen("demo", client=OfflineClient("demo")))
            await pilot.pause()
            screen = app.screen
            status = screen.query_one("#vm-status").region
            assert (status.y, status.height, status.width) == (1, 1, size[0])
            assert screen.max_scroll_y == 0
            assert screen.query_one("#tabs").region.bottom <= size[1] - 1  # above the footer

    asyncio.run(main())
