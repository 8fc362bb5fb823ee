"""Issue 16: ``dqconsole --serve`` in a real headless browser (Debian's chromium-headless-shell).

The console serves its placement editor over HTTP on localhost (textual-serve). Chromium,
driven over the DevTools protocol, opens the page; the page starts a console process of its
own and shows its screen; keys typed into the browser (``1``: put the selected vCPU on
shard 1, Ctrl+S: save) reach that console, which writes the spec file; the spec loader
reads the new placement back. A screenshot of the page is kept in the test's directory.
No guest boots here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from cluster.spec import load_spec
from tests.conftest import REPO

pytestmark = pytest.mark.integration

BROWSER = "chromium-headless-shell"  # apt: scripts/bootstrap installs it
TIMEOUT = 180.0
SPEC = """\
# served and edited through a browser
[vm]
vcpus = 4
memory = "256M"

[[shard]]
id = 0
vcpus = "0-1"  # the BSP's shard

[[shard]]
id = 1
vcpus = [2, 3]
"""
KEYS = {  # DevTools key events: key, code, Windows virtual key code, modifiers (2: Ctrl)
    "1": ("1", "Digit1", 49, 0),
    "ctrl+s": ("s", "KeyS", 83, 2),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevTools:
    """The few DevTools-protocol calls the test needs, over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive(timeout=60)).data)
            if msg.get("id") == ident:
                assert "error" not in msg, msg
                return dict(msg.get("result", {}))

    async def js(self, expr: str) -> Any:
        out = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return out.get("result", {}).get("value")

    async def key(self, name: str) -> None:
        key, code, vk, mods = KEYS[name]
        common = {"key": key, "code": code, "windowsVirtualKeyCode": vk, "modifiers": mods}
        text = {"text": key} if not mods else {}
        await self.call("Input.dispatchKeyEvent", type="keyDown", **common, **text)
        await self.call("Input.dispatchKeyEvent", type="keyUp", **common)


def test_served_console_in_a_headless_browser(tmp_path: Path) -> None:
    browser = shutil.which(BROWSER)
    assert browser, f"{BROWSER} is not installed (scripts/bootstrap installs it)"
    spec = tmp_path / "vm.toml"
    spec.write_text(SPEC)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dqconsole.app", "--place", str(spec), "--serve",
         "--port", str(port)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    chrome = subprocess.Popen(
        [browser, "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
         f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1280,800", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        asyncio.run(drive(chrome, port, spec, tmp_path / "dqconsole-browser.png"))
        served = [p for p in psutil.Process(server.pid).children(recursive=True)
                  if "dqconsole.app" in " ".join(p.cmdline())]  # fmt: skip
        assert served, "the page started no console process"
    finally:
        for proc in (chrome, server):
            with contextlib.suppress(ProcessLookupError):
                kids = psutil.Process(proc.pid).children(recursive=True)
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
                for k in kids:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        k.kill()
    assert [s.vcpus for s in load_spec(spec).shards] == [(1,), (0, 2, 3)]
    text = spec.read_text()
    assert "# served and edited through a browser" in text
    assert 'vcpus = "1"  # the BSP\'s shard' in text


async def drive(chrome: subprocess.Popen[str], port: int, spec: Path, shot: Path) -> None:
    assert chrome.stderr is not None
    devtools_url = ""
    deadline = time.monotonic() + TIMEOUT
    while not devtools_url:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        assert time.monotonic() < deadline, "chromium did not start"
        line = await asyncio.to_thread(chrome.stderr.readline)
        assert line, "chromium exited"
        if m := re.search(r"ws://127\.0\.0\.1:(\d+)/", line):
            devtools_url = f"http://127.0.0.1:{m.group(1)}/json/list"
    async with aiohttp.ClientSession() as http:
        pages = await (await http.get(devtools_url)).json()
        page = next(p for p in pages if p.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            dt = DevTools(ws)
            url = f"http://localhost:{port}/"
            while True:  # the server takes a moment to listen
                try:
                    async with http.get(url) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"nothing serves {url}"
                await asyncio.sleep(0.5)
            await dt.call("Page.navigate", url=url)
            # textual-serve marks the page once the console's first bytes have arrived
            while not await dt.js("document.body.classList.contains('-first-byte')"):
                assert time.monotonic() < deadline, "the served console never drew"
                await asyncio.sleep(0.5)
            # keys go to the terminal; until the console's editor is up they may be lost,
            # and "1" (put on shard 1) then Ctrl+S (save) may be sent again harmlessly
            before = spec.read_text()
            while spec.read_text() == before:
                assert time.monotonic() < deadline, "the keys never reached the console"
                await dt.js("document.querySelector('.xterm-helper-textarea').focus()")
                await dt.key("1")
                await dt.key("ctrl+s")
                await asyncio.sleep(2.0)
            out = await dt.call("Page.captureScreenshot", format="png")
            shot.write_bytes(base64.b64decode(out["data"]))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            print(f"screenshot: {shot}")
