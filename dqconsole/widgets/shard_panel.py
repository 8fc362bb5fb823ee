"""One shard as a panel: host, pid, state, CPU% and RSS, its vCPUs and devices, its links."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static


class ShardPanel(Static):
    """Shows one shard of ``info``; turns red with the cause when the shard is down."""

    shard: reactive[dict[str, Any]] = reactive(dict, always_update=True)
    cause: reactive[str | None] = reactive(None)

    def __init__(self, shard_id: int, **kw: Any) -> None:
        super().__init__(id=f"shard-{shard_id}", classes="shard", **kw)
        self.shard_id = shard_id
        self.border_title = f"shard {shard_id}"

    def _down(self) -> bool:
        return self.cause is not None or self.shard.get("state", "up") != "up"

    def watch_shard(self) -> None:
        self.set_class(self._down(), "-down")
        self.update(self._text())

    def watch_cause(self) -> None:
        self.set_class(self._down(), "-down")
        self.update(self._text())

    def _text(self) -> Text:
        s = self.shard
        t = Text()
        state = s.get("state", "?")
        t.append(f"{state}", style="bold red" if self._down() else "bold green")
        if self.cause:
            t.append(f"  {self.cause}", style="red")
        t.append(f"\nhost {s.get('host', '-')}\npid  {s.get('pid') or '-'}\n")
        cpu, rss = float(s.get("cpu_pct") or 0), float(s.get("rss_mib") or 0)
        t.append(f"CPU  {cpu:5.1f}%  RSS {rss:.0f} MiB\n")
        router = s.get("router") or {}
        if router:
            t.append(
                f"router pid {router.get('pid')}  CPU {float(router.get('cpu_pct') or 0):.1f}%\n"
            )
        vcpus = ",".join(str(c) for c in s.get("vcpus", [])) or "-"
        t.append(f"vCPUs {vcpus}\n")
        devices = ", ".join(str(d) for d in s.get("devices", [])) or "-"
        t.append(f"devices {devices}\n")
        for peer, state in sorted((s.get("links") or {}).items()):
            t.append(f"link → {peer}: ")
            t.append(str(state), style="green" if state == "up" else "bold red")
            t.append("\n")
        return t
