"""The QEMU series' wire-protocol header (``hw/dqemu/proto.h``), taken out of the patch that
adds it (qemu-patches/0002), for C programs built outside QEMU: the agreement test and the
benches' C shard ends; and the series' RDMA direct link (qemu-patches/0045) for those ends."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATCH = ROOT / "qemu-patches" / "0002-dqemu-wire-protocol-header.patch"
HEADER_PATH = "include/hw/dqemu/proto.h"
RDMA_PATCH = ROOT / "qemu-patches" / "0045-dqemu-rdma-direct.patch"
# what hw/dqemu/rdma.c includes from QEMU (bench/qemu_shim.h stands in for all of them)
RDMA_QEMU_INCLUDES = (
    "qemu/osdep.h", "qapi/error.h", "qemu/atomic.h", "qemu/thread.h", "qemu/timer.h",
    "qemu/bswap.h", "qemu/cutils.h", "qemu/memalign.h",
)  # fmt: skip


def extract_new_file(patch_text: str, path: str) -> str:
    """The text of a file that the patch adds whole (its one new-file hunk's '+' lines)."""
    lines = patch_text.splitlines()
    start = lines.index(f"+++ b/{path}")
    hunk = lines[start + 1]
    m = re.match(r"@@ -0,0 \+1,(\d+) @@", hunk)
    assert m, f"expected a new-file hunk, got {hunk!r}"
    n = int(m.group(1))
    body = lines[start + 2 : start + 2 + n]
    assert all(line.startswith("+") for line in body)
    return "\n".join(line[1:] for line in body) + "\n"


def extract_header(patch_text: str) -> str:
    """The header's text, out of the patch that adds it."""
    return extract_new_file(patch_text, HEADER_PATH)


def write_include_dir(directory: Path) -> Path:
    """Write ``hw/dqemu/proto.h`` under ``directory`` (for ``-I directory``); returns it."""
    (directory / "hw" / "dqemu").mkdir(parents=True, exist_ok=True)
    (directory / "hw" / "dqemu" / "proto.h").write_text(extract_header(PATCH.read_text()))
    return directory


def write_rdma_sources(directory: Path) -> Path:
    """The series' RDMA direct link (``hw/dqemu/rdma.c`` and its header, from the patch that
    adds them) under ``directory``, with ``bench/qemu_shim.h`` standing in for the QEMU
    utility headers it includes, so that a bench's C shard end runs the shards' own link
    code. Call :func:`write_include_dir` on the same directory too. Returns ``rdma.c``."""
    text = RDMA_PATCH.read_text()
    (directory / "hw" / "dqemu").mkdir(parents=True, exist_ok=True)
    (directory / "hw" / "dqemu" / "rdma.h").write_text(
        extract_new_file(text, "include/hw/dqemu/rdma.h")
    )
    for name in RDMA_QEMU_INCLUDES:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text('#include "qemu_shim.h"\n')
    shutil.copy(ROOT / "bench" / "qemu_shim.h", directory / "qemu_shim.h")
    source = directory / "rdma.c"
    source.write_text(extract_new_file(text, "hw/dqemu/rdma.c"))
    return source
