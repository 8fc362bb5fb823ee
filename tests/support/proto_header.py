"""The QEMU series' wire-protocol header (``hw/dqemu/proto.h``), taken out of the patch that
adds it (qemu-patches/0002), for C programs built outside QEMU: the agreement test and the
benches' C shard ends."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATCH = ROOT / "qemu-patches" / "0002-dqemu-wire-protocol-header.patch"
HEADER_PATH = "include/hw/dqemu/proto.h"


def extract_header(patch_text: str) -> str:
    """The header's text: the patch adds it as one new file, so its text is the '+' lines."""
    lines = patch_text.splitlines()
    start = lines.index(f"+++ b/{HEADER_PATH}")
    hunk = lines[start + 1]
    m = re.match(r"@@ -0,0 \+1,(\d+) @@", hunk)
    assert m, f"expected a new-file hunk, got {hunk!r}"
    n = int(m.group(1))
    body = lines[start + 2 : start + 2 + n]
    assert all(line.startswith("+") for line in body)
    return "\n".join(line[1:] for line in body) + "\n"


def write_include_dir(directory: Path) -> Path:
    """Write ``hw/dqemu/proto.h`` under ``directory`` (for ``-I directory``); returns it."""
    (directory / "hw" / "dqemu").mkdir(parents=True, exist_ok=True)
    (directory / "hw" / "dqemu" / "proto.h").write_text(extract_header(PATCH.read_text()))
    return directory
