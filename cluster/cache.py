"""Content-keyed build cache: an entry is a directory named by the hash of its inputs.

An entry exists only when complete: builders write into a temporary sibling and the entry is
renamed into place, so an interrupted build never leaves a half entry behind. A file lock
serialises builders of the same kind across processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def content_key(parts: Iterable[tuple[str, bytes]]) -> str:
    """A stable key over named inputs; the names are part of the key, so order matters."""
    h = hashlib.sha256()
    for name, data in parts:
        h.update(len(name).to_bytes(4, "little") + name.encode())
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:20]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) for the block's duration."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
