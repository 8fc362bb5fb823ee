"""Where dQEMU keeps what it builds and downloads: outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PATCH_DIR = REPO_ROOT / "qemu-patches"
GUESTS_DIR = REPO_ROOT / "guests"


def cache_root() -> Path:
    """``$DQEMU_CACHE``, else /var/cache/dqemu for root, else ~/.cache/dqemu."""
    env = os.environ.get("DQEMU_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/dqemu")
    return Path.home() / ".cache" / "dqemu"
