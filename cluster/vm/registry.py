"""The registry of running VMs on this machine: one directory per VM name.

``/run/dqemu/vms/`` for root, ``$XDG_RUNTIME_DIR/dqemu/vms/`` otherwise (``$DQEMU_RUN_DIR``
overrides both, for tests). A VM's entry ``<name>/`` (mode 0700) holds:

- ``lock``: held with ``flock`` by the VM's launcher for its whole life. The lock, not a
  pid, says whether the VM lives: the kernel drops it when the launcher dies, however it
  dies, and a reused pid cannot fake it.
- ``meta.json``: the launcher's pid, the start time, the spec's source.
- ``control.sock``: the control API (``docs/control.md``), mode 0600.
- ``vm.log``: the launcher's output, for a detached VM.

Claiming a name is ``mkdir``, which is atomic: of two launchers that want one name, one
wins and the other is refused. An entry whose lock is free was left by a launcher that
died; whoever finds it removes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import DqemuError
from cluster.router.control import connect_unix

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NAME_RULE = "1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
CONTROL = "control.sock"
META = "meta.json"
LOCK = "lock"
LOG = "vm.log"


def registry_dir() -> Path:
    override = os.environ.get("DQEMU_RUN_DIR")
    if override:
        base = Path(override)
    elif os.geteuid() == 0:
        base = Path("/run/dqemu")
    else:
        xdg = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/dqemu-{os.geteuid()}"
        base = Path(xdg) / "dqemu"
    return base / "vms"


def _ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise DqemuError(f"VM registry {path} is not owned by this user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise DqemuError(f"bad VM name {name!r}: use {NAME_RULE}", 2)
    return name


def generate_name() -> str:
    return f"vm-{secrets.token_hex(3)}"


@dataclass
class Entry:
    """One VM's registry entry, as another process sees it."""

    name: str
    path: Path

    @property
    def control(self) -> Path:
        return self.path / CONTROL

    @property
    def log(self) -> Path:
        return self.path / LOG

    def connect(self, timeout: float) -> socket.socket:
        """A connection to the VM's control API (``cluster.vm.client.VMHandle``)."""
        return connect_unix(self.control, timeout)

    def meta(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / META).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def alive(self) -> bool:
        """True while the VM's launcher holds the entry's lock."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            # no lock file yet: an entry being created. Young entries count as alive.
            try:
                return time.time() - self.path.stat().st_mtime < 10
            except FileNotFoundError:
                return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)
        return False

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Claim:
    """This process's hold on a VM name, from ``claim()`` until ``release()``."""

    def __init__(self, entry: Entry, lock_fd: int) -> None:
        self.entry = entry
        self._fd = lock_fd

    @property
    def name(self) -> str:
        return self.entry.name

    def write_meta(self, **meta: Any) -> None:
        tmp = self.entry.path / f".{META}.tmp"
        tmp.write_text(json.dumps({"name": self.name, **meta}, indent=1) + "\n")
        tmp.replace(self.entry.path / META)

    def release(self, status: int | None = None, reason: str = "") -> None:
        """Give the name back; with ``status``, keep a record of how the VM ended (and
        its log) under ``.ended/``, where ``dqemu list --all`` shows it."""
        if self._fd < 0:
            return
        if status is not None:
            _record_end(self.entry, status, reason)
        self.entry.remove()
        os.close(self._fd)
        self._fd = -1


def claim(name: str | None) -> Claim:
    """Reserve ``name`` (or a generated one) for this process; refuse a live duplicate."""
    base = registry_dir()
    _ensure_private_dir(base)
    tries = 0
    while True:
        want = check_name(name) if name is not None else generate_name()
        entry = Entry(want, base / want)
        try:
            entry.path.mkdir(mode=0o700)
        except FileExistsError:
            if entry.alive():
                if name is None and tries < 8:
                    tries += 1
                    continue
                pid = entry.meta().get("pid", "?")
                raise DqemuError(
                    f"a VM named {want!r} is already running (launcher pid {pid}); "
                    "choose another name with --name"
                ) from None
            entry.remove()  # left by a launcher that died
            continue
        fd = os.open(entry.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.set_inheritable(fd, False)
        return Claim(entry, fd)


ENDED = ".ended"
KEEP_ENDED = 32


def _record_end(entry: Entry, status: int, reason: str) -> None:
    ended = entry.path.parent / ENDED
    ended.mkdir(mode=0o700, exist_ok=True)
    meta = entry.meta()
    record = {"name": entry.name, "status": status, "reason": reason, "ended": time.time(),
              "started": meta.get("started"), "pid": meta.get("pid")}  # fmt: skip
    tmp = ended / f".{entry.name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(ended / f"{entry.name}.json")
    with contextlib.suppress(FileNotFoundError):
        entry.log.replace(ended / f"{entry.name}.log")
    records = sorted(ended.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for old in records[:-KEEP_ENDED]:
        old.unlink(missing_ok=True)
        old.with_suffix(".log").unlink(missing_ok=True)


def ended_records() -> list[dict[str, Any]]:
    """How recent VMs ended, oldest first."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for p in sorted((registry_dir() / ENDED).glob("*.json"), key=lambda p: p.stat().st_mtime):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(p.read_text()))
    return out


def entries(reap: bool = True) -> tuple[list[Entry], list[Entry]]:
    """Every entry, split into (live, gone); with ``reap`` the gone ones are removed."""
    base = registry_dir()
    live: list[Entry] = []
    gone: list[Entry] = []
    with contextlib.suppress(FileNotFoundError):
        for p in sorted(base.iterdir()):
            if not p.is_dir() or p.name.startswith("."):
                continue
            e = Entry(p.name, p)
            (live if e.alive() else gone).append(e)
    if reap:
        for e in gone:
            e.remove()
    return live, gone


def find(name: str) -> Entry:
    """The live VM called ``name``; a clear error naming the running ones otherwise."""
    live, gone = entries()
    for e in live:
        if e.name == name:
            return e
    running = ", ".join(e.name for e in live) or "none"
    was = ""
    if any(e.name == name for e in gone):
        was = " (its launcher died; the stale entry was removed)"
    for rec in ended_records():
        if rec.get("name") == name:
            was = f" (it ended with exit {rec.get('status')}: {rec.get('reason')})"
    raise DqemuError(f"no VM named {name}{was} (running: {running})", 1)
