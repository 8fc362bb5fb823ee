"""The counters each shard logs as it exits (patches 0034, 0037): one line per shard log,
``dqemu: shard N counters: posted {...} tb {...} wakeups {...}``, each group a flat JSON
object. dqtest runs read the wake-up counters from it, the benches all of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

_LINE = re.compile(r"dqemu: shard (\d+) counters: (.*)")
_GROUP = re.compile(r"(\w+) (\{[^{}]*\})")


def shard_counters(log_dir: Path) -> dict[int, dict[str, dict[str, int]]]:
    """Each shard's counter groups (``posted``, ``tb``, ``wakeups``) from the shard logs in
    ``log_dir``; a shard whose log has no such line is missing."""
    out: dict[int, dict[str, dict[str, int]]] = {}
    for log in log_dir.glob("shard*.log"):
        for m in _LINE.finditer(log.read_text(errors="replace")):
            groups = {g.group(1): json.loads(g.group(2)) for g in _GROUP.finditer(m.group(2))}
            out[int(m.group(1))] = groups
    return out
