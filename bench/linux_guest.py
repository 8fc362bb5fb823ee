"""What the benches that boot the Linux test guest over loopback share (boot.py, workload.py).

A run is ``dqemu loopback`` with ``guest:cloud`` and ``dq.run=TEST``; its console is read
as it comes, so that a bench can time the stretch between two of the guest's ``DQ KV``
lines on the host's clock. The shards' counters (patch 0034) come from their logs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from cluster.spec import DATA_PATHS, POSTED_WRITES_MODES, WAKEUP_CUT_KEYS, WAKEUP_CUT_MODES
from loopback.shard_logs import shard_counters

REPO = Path(__file__).resolve().parents[1]
FIGURES = (
    "posted_sent", "announces", "announce_wait_s", "remembered", "invalidates",
    "invalidate_wait_s",
)  # fmt: skip
KV = re.compile(r"DQ KV ([A-Za-z0-9_.-]+)=(.*)")
POWER_DOWN = re.compile(r"^\[\s*(\d+\.\d+)\] reboot: Power down", re.M)


class BenchError(SystemExit):
    """A run that failed, or bad bench arguments: the message names the layout and the
    reason. A SystemExit, so that a bench that does not catch it ends with that message on
    stderr and status 1, without a traceback."""


class Layout(NamedTuple):
    """How a bench's VM is laid out: its shard count and, when sharded, its data path."""

    shards: int
    data_path: str | None = None  # None: one shard, no data path

    @property
    def name(self) -> str:
        return f"shards={self.shards}" + (f" data_path={self.data_path}" if self.data_path else "")


@dataclass
class GuestRun:
    """One boot of the test guest: its wall time, exit status, console, and every ``DQ KV``
    pair with the host time (seconds after launch) at which its line was read."""

    elapsed: float
    returncode: int
    stdout: str
    stderr: str
    kv: dict[str, str] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)

    def between(self, first: str, last: str) -> float | None:
        """Host seconds from the ``first`` key's line to the ``last`` key's, if both came."""
        if first in self.seen and last in self.seen:
            return self.seen[last] - self.seen[first]
        return None


def read_kv(lines: Iterable[tuple[float, str]]) -> tuple[dict[str, str], dict[str, float]]:
    """The ``DQ KV key=value`` pairs of timed console lines, and when each key was first
    seen (a key printed twice keeps its first value and time)."""
    kv: dict[str, str] = {}
    seen: dict[str, float] = {}
    for t, line in lines:
        m = KV.search(line)
        if m and m.group(1) not in kv:
            kv[m.group(1)] = m.group(2).strip()
            seen[m.group(1)] = t
    return kv, seen


def _timed_lines(stream: Iterable[str], t0: float, sink: list[str]) -> Iterator[tuple[float, str]]:
    for line in stream:
        sink.append(line)
        yield time.monotonic() - t0, line


def loopback_cmd(
    test: str, vcpus: int, shards: int, *extra: str, guest_args: str = "", timeout: float = 600
) -> list[str]:
    """The ``dqemu loopback`` command line of one boot (``extra``: more loopback arguments,
    ``guest_args``: more kernel command line after ``dq.run=TEST``)."""
    append = f"dq.run={test} {guest_args}".strip()
    return [
        sys.executable, "-m", "cluster.cli", "loopback", "--kernel", "guest:cloud",
        "--initrd", "guest:cloud", "--append", append, "--vcpus", str(vcpus),
        "--shards", str(shards), "--timeout", str(timeout), *extra,
    ]  # fmt: skip


def boot_guest(
    test: str, vcpus: int, shards: int, *extra: str, guest_args: str = "", timeout: float = 600
) -> GuestRun:
    """Boot the test guest running ``test`` and read its console as it comes."""
    cmd = loopback_cmd(test, vcpus, shards, *extra, guest_args=guest_args, timeout=timeout)
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+") as err:
        t0 = time.monotonic()
        with subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, errors="replace"
        ) as proc:
            assert proc.stdout is not None
            kv, seen = read_kv(_timed_lines(proc.stdout, t0, out))
            returncode = proc.wait()
        elapsed = time.monotonic() - t0
        err.seek(0)
        stderr = err.read()
    return GuestRun(elapsed, returncode, "".join(out), stderr, kv, seen)


def checked(run: GuestRun, what: str, key: str, value: str | None = None) -> GuestRun:
    """``run`` if it exited 0, its test did not fail and it printed ``key`` (equal to
    ``value`` if given); else a BenchError naming ``what`` ran and why it failed."""
    fail = [ln.strip() for ln in run.stdout.splitlines() if ln.startswith("DQ FAIL")]
    if run.returncode == 0 and not fail and key in run.kv and value in (None, run.kv[key]):
        return run
    if run.returncode != 0:
        tail = run.stderr.strip().splitlines()[-1:] or ["no message"]
        why = f"exit {run.returncode}: {tail[0]}"
    else:
        errors = [f"error={run.kv['error']}"] if "error" in run.kv else []
        why = "; ".join(fail + errors) or f"no DQ KV {key}" + (f"={value}" if value else "")
    raise BenchError(f"{what} failed: {why}")


def boot_cpus(vcpus: int, shards: int, *extra: str, timeout: float = 600) -> GuestRun:
    """Boot the test guest with ``dq.run=cpus``; a BenchError unless every vCPU came up."""
    run = boot_guest("cpus", vcpus, shards, *extra, timeout=timeout)
    what = " ".join([f"boot over {shards} shard(s)", *extra])
    return checked(run, what, "online_cpus", str(vcpus))


def guest_seconds(run: GuestRun) -> float | None:
    """The guest kernel's own clock when it powered off (the time stamp of its ``reboot:
    Power down`` line): its boot and test, without the launcher's set-up and teardown of
    the shards, routers and namespaces; None if the line did not come."""
    m = POWER_DOWN.search(run.stdout)
    return float(m.group(1)) if m else None


def boot_once(vcpus: int, shards: int, *extra: str) -> tuple[float, dict[str, float]]:
    """One ``dq.run=cpus`` boot (``extra``: loopback arguments): its wall time and the
    shards' counters, with ``guest_s`` (`guest_seconds`, 0 if unknown) among them."""
    with tempfile.TemporaryDirectory(prefix="dqemu-boot-bench-") as logs:
        run = boot_cpus(vcpus, shards, "--log-dir", logs, *extra)
        counters = summed_counters(Path(logs))
        counters["guest_s"] = guest_seconds(run) or 0.0
        return run.elapsed, counters


def summed_counters(log_dir: Path) -> dict[str, float]:
    """The figures of one run, summed over its shards' logs (loopback/shard_logs.py)."""
    out = dict.fromkeys(FIGURES, 0.0)
    for groups in shard_counters(log_dir).values():
        posted, tb = groups.get("posted", {}), groups.get("tb", {})
        out["posted_sent"] += posted.get("sent", 0)
        out["announces"] += tb.get("announces", 0)
        out["announce_wait_s"] += tb.get("announce_ns", 0) / 1e9
        out["invalidates"] += tb.get("invalidates", 0)
        out["invalidate_wait_s"] += tb.get("invalidate_ns", 0) / 1e9
        out["remembered"] += tb.get("remembered", 0)
    return out


def data_paths(value: str, all_paths: tuple[str, ...] = DATA_PATHS) -> list[str]:
    """``--data-paths``' comma-separated list, checked against ``all_paths``."""
    paths = [x for x in value.split(",") if x]
    if not paths or any(x not in all_paths for x in paths):
        raise BenchError(f"--data-paths takes {', '.join(all_paths)}, comma-separated")
    return paths


def _data_paths_arg(value: str) -> list[str]:
    try:
        return data_paths(value)
    except BenchError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: takes {', '.join(DATA_PATHS)}, comma-separated"
        ) from None


# the VM options the benches can set (None: the spec's default), and their flags
VM_CHOICES = (
    ("posted_writes", POSTED_WRITES_MODES, "auto"),
    *((key, WAKEUP_CUT_MODES, "on") for key in WAKEUP_CUT_KEYS),
)


def add_vm_choices(ap: argparse.ArgumentParser, paths_default: str, what: str) -> None:
    """The benches' ``--data-paths`` (``args.data_paths``: the checked list; ``what``: the
    runs it applies to) and one flag per entry of ``VM_CHOICES`` (``--posted-writes``,
    ``--reply-poll``, ...; None: the spec's default)."""
    ap.add_argument(
        "--data-paths", type=_data_paths_arg, default=paths_default,
        help=f"data paths of {what}, comma-separated ({', '.join(DATA_PATHS)}; "
        f"default: {paths_default})",
    )  # fmt: skip
    for key, modes, default in VM_CHOICES:
        ap.add_argument(
            "--" + key.replace("_", "-"), choices=modes, default=None,
            help=f"the VMs' {key} (docs/spec.md; default: the spec's, {default})",
        )  # fmt: skip


def vm_extra(args: argparse.Namespace) -> dict[str, str]:
    """The VM options given on the bench's command line (see :func:`add_vm_choices`)."""
    return {k: v for k, _, _ in VM_CHOICES if (v := getattr(args, k, None))}


def vm_flags(args: argparse.Namespace, data_path: str | None = None) -> list[str]:
    """The loopback flags for the VM options given and a data path."""
    flags = [x for k, v in vm_extra(args).items() for x in ("--" + k.replace("_", "-"), v)]
    return flags + (["--data-path", data_path] if data_path else [])


def loadavg() -> str:
    return "loadavg: " + Path("/proc/loadavg").read_text().strip()
