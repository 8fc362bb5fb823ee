"""Leftovers of launchers that died without their teardown (SIGKILL, a crash), and
``dqemu cleanup``. Ray's node actors and VM controllers make their directories the same
way (:func:`new_rundir`): the next VM on that host reaps them (a node actor's host makes
its run directory as a launcher does), and so does ``dqemu cluster down``.

A SIGKILLed launcher's children die with it (PR_SET_PDEATHSIG), but its network
namespaces (with their ``/run/netns`` mounts), its run directory and any RAM file not yet
unlinked stay. Every launcher reaps them when it starts, and ``dqemu cleanup`` does on
demand: only what a launcher that no longer runs made (:mod:`loopback.owner`), never a
live one's. A run directory is judged only if it was made in this boot and pid namespace
(its ``owner`` file says so): one seen from elsewhere (the RDMA test host sees this
machine's /tmp) or without that file is left alone, and ``dqemu cleanup`` names it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from loopback import netns
from loopback.owner import made_here, maker_alive, mark_own

SHM_DIR = Path("/dev/shm")
# the launcher's run directory, dqemu-<pid>-<random> in the temporary directory
RUNDIR_PREFIX = "dqemu-{pid}-"
_RUNDIR_RE = re.compile(r"^dqemu-(\d+)-[A-Za-z0-9_.-]+$")
# the guest RAM files, dqemu-<pid>-<hex>-ram<node> in /dev/shm
_SHM_RE = re.compile(r"^dqemu-(\d+)-[0-9a-f]+-ram\d+$")


def new_rundir(label: str = "") -> Path:
    """A run directory of this process: private (0700), named ``dqemu-<pid>-<label>...``
    and marked as made here, so that once this process is gone, whatever ended it, the next
    launcher or node actor on this host (or ``dqemu cleanup``) removes it."""
    rundir = Path(tempfile.mkdtemp(prefix=RUNDIR_PREFIX.format(pid=os.getpid()) + label))
    os.chmod(rundir, 0o700)
    mark_own(rundir)
    return rundir


def _matching(where: Path, pattern: re.Pattern[str]) -> list[tuple[Path, int]]:
    """The entries of ``where`` (no symlinks) named by ``pattern``, with their maker's pid."""
    try:
        entries = list(where.iterdir())
    except OSError:
        return []
    out = []
    for p in entries:
        m = pattern.match(p.name)
        if m and not p.is_symlink():
            out.append((p, int(m.group(1))))
    return out


def _stale_files(where: Path, pattern: re.Pattern[str]) -> list[Path]:
    return [p for p, pid in _matching(where, pattern) if not maker_alive(pid, p)]


def stale_rundirs(tmp: Path) -> list[Path]:
    return [
        d
        for d, pid in _matching(tmp, _RUNDIR_RE)
        if d.is_dir() and made_here(d) and not maker_alive(pid, d)
    ]


def foreign_rundirs(tmp: Path | None = None) -> list[str]:
    """Run directories that cleanup leaves alone because their pid cannot be judged here:
    made in another boot or pid namespace, or by a launcher that recorded no owner."""
    where = tmp or Path(tempfile.gettempdir())
    return [str(d) for d, _ in _matching(where, _RUNDIR_RE) if d.is_dir() and not made_here(d)]


def reap_stale(tmp: Path | None = None, shm: Path | None = None) -> list[str]:
    """Remove what dead launchers left: namespaces, run directories, RAM files. Returns
    their names."""
    removed = list(netns.cleanup_stale()) if netns.available() is None else []
    for d in stale_rundirs(tmp or Path(tempfile.gettempdir())):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    for f in _stale_files(shm or SHM_DIR, _SHM_RE):
        f.unlink(missing_ok=True)
        removed.append(str(f))
    return removed


def _run(ns: argparse.Namespace) -> int:
    removed = reap_stale()
    for name in removed:
        print(f"dqemu: removed {name}", file=sys.stderr)
    for name in foreign_rundirs():
        print(
            f"dqemu: left {name}: not made in this boot and pid namespace "
            "(its launcher's pid cannot be judged here)",
            file=sys.stderr,
        )
    print(f"dqemu: {len(removed)} leftover(s) of dead launchers removed", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cleanup",
        help="remove what dead launchers left behind",
        description="Remove the network namespaces, run directories and /dev/shm RAM files "
        "of loopback launchers that no longer run (e.g. SIGKILLed); a running launcher's "
        "are never touched.",
    )
    p.set_defaults(func=_run)
