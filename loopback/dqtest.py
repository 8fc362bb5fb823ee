"""dqtest, the bare-metal conformance suite and forwarding microbenchmark (guests/dqtest).

Three pieces:

* :func:`build_dqtest` builds the multiboot kernel with ``make`` into the content-keyed
  cache (``$DQEMU_CACHE`` or ``/var/cache/dqemu``, under ``dqtest/<key>/dqtest.elf``).
* :func:`parse_dqtest_output` turns its serial output (TAP-like lines, ``# lat`` latency
  lines, ``# skip`` lines and the final ``dqtest: PASS n/n`` / ``dqtest: FAIL k/n``) into a
  :class:`DqtestResult`.
* :func:`run_dqtest` boots it with the loopback launcher over any number of shards, with
  a timeout; the launcher reaps everything it started.

Exit convention (isa-debug-exit at 0xf4): the kernel writes 0x10 on PASS and 0x11 on FAIL,
so QEMU exits with 33 (:data:`EXIT_PASS`) or 35 (:data:`EXIT_FAIL`). See
guests/dqtest/README.md for the output format and the command-line options.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.cache import content_key, locked
from cluster.errors import DqemuError
from cluster.paths import GUESTS_DIR, cache_root
from cluster.spec import VMSpec, even_placement, flag_reader, spec_from_data
from loopback.launcher import EXIT_TIMEOUT, LoopbackVM
from loopback.shard_logs import shard_counters

DQTEST_DIR = GUESTS_DIR / "dqtest"
KERNEL_NAME = "dqtest.elf"
EXIT_PASS = 33  # (0x10 << 1) | 1
EXIT_FAIL = 35  # (0x11 << 1) | 1
DEBUG_EXIT_DEVICE = "isa-debug-exit,iobase=0xf4,iosize=4"
# ISA device whose interrupt lines the guest drives by port writes (dqtest's isairq group)
ISA_IRQ_DEVICE = "pc-testdev"
# VGA for the CRTC index/data check (vga group); no option ROM: the firmware leaves it alone
VGA_DEVICE = "VGA,romfile="


# ---------------------------------------------------------------------------------------
# build


def _toolchain_id() -> bytes:
    """First lines of ``gcc --version`` and ``ld --version``: a new toolchain rebuilds."""
    out = []
    for tool in ("gcc", "ld", "objcopy"):
        try:
            proc = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise DqemuError(f"{tool} not found: building dqtest needs gcc and binutils") from exc
        out.append(proc.stdout.splitlines()[0] if proc.stdout else tool)
    return "\n".join(out).encode()


def source_files(src_dir: Path = DQTEST_DIR) -> list[Path]:
    """Every input of the build: the Makefile and everything under src/, in stable order."""
    files = [src_dir / "Makefile"]
    files += sorted(p for p in (src_dir / "src").rglob("*") if p.is_file())
    return files


def dqtest_key(src_dir: Path = DQTEST_DIR) -> str:
    parts = [("toolchain", _toolchain_id())]
    for path in source_files(src_dir):
        parts.append((str(path.relative_to(src_dir)), path.read_bytes()))
    return content_key(parts)


def dqtest_cache_dir() -> Path:
    return cache_root() / "dqtest"


def build_dqtest(src_dir: Path = DQTEST_DIR, cache_dir: Path | None = None) -> Path:
    """Return the built ``dqtest.elf``, running ``make`` first if its cache entry is missing.

    The entry is keyed by the sources and the toolchain, built in a temporary sibling and
    renamed into place, so an interrupted build leaves nothing behind.
    """
    cache = cache_dir if cache_dir is not None else dqtest_cache_dir()
    entry = cache / dqtest_key(src_dir)
    kernel = entry / KERNEL_NAME
    if kernel.exists():
        return kernel
    with locked(cache / ".lock"):
        if kernel.exists():
            return kernel
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            proc = subprocess.run(
                ["make", "-C", str(src_dir), f"BUILD={tmp}", "-j2"],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise DqemuError(f"building dqtest failed (make exit {proc.returncode}):\n{tail}")
            built = tmp / KERNEL_NAME
            if not built.is_file():
                raise DqemuError(f"building dqtest produced no {KERNEL_NAME}")
            # Keep only the image (and the ELF64 with symbols, for debugging).
            for p in tmp.iterdir():
                if p.name not in (KERNEL_NAME, "dqtest64.elf"):
                    p.unlink()
            os.chmod(tmp, 0o755)
            tmp.rename(entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return kernel


# ---------------------------------------------------------------------------------------
# parse

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1bc")
_CHECK = re.compile(r"^(not ok|ok) (\d+)(?: - (.*?))?(?:\s+# (TODO|SKIP)\b\s*(.*))?$")
_LAT = re.compile(r"^# lat (\S+) (\S+)((?: \w+=\d+)*)\s*$")
_SKIP = re.compile(r"^# skip (\S+) - (.*)$")
_PLAN = re.compile(r"^1\.\.(\d+)$")
_FINAL = re.compile(r"^dqtest: (PASS|FAIL) (\d+)/(\d+)")
_KV = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True)
class Check:
    number: int
    ok: bool
    description: str
    directive: str | None = None  # "TODO" (known defect) or "SKIP"
    reason: str = ""

    @property
    def counts_as_failure(self) -> bool:
        """TAP semantics: a failing TODO check is reported but does not fail the run."""
        return not self.ok and self.directive != "TODO"


@dataclass(frozen=True)
class Latency:
    name: str  # e.g. "ipi_rtt"
    label: str  # e.g. "cpu0-cpu1"
    values: dict[str, int]

    @property
    def n(self) -> int:
        return self.values.get("n", 0)

    def get(self, key: str) -> int | None:
        return self.values.get(key)


@dataclass(frozen=True)
class Skip:
    name: str
    reason: str


@dataclass
class DqtestResult:
    checks: list[Check] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    info: dict[str, dict[str, str]] = field(default_factory=dict)
    plan: int | None = None
    status: str | None = None  # "PASS", "FAIL", or None when the run did not finish
    status_count: int | None = None  # PASS: checks passed; FAIL: checks failed
    status_total: int | None = None
    problems: list[str] = field(default_factory=list)  # inconsistencies in the output
    # "# ..." lines printed right after a failing check (e.g. "# got cpu0=0 cpu1=2 ..."),
    # by check number
    diagnostics: dict[int, list[str]] = field(default_factory=dict)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.counts_as_failure]

    @property
    def todo_failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.directive == "TODO"]

    @property
    def complete(self) -> bool:
        return self.status is not None

    @property
    def passed(self) -> bool:
        """PASS printed, no failing check, and the output is self-consistent."""
        return self.status == "PASS" and not self.failures and not self.problems

    def latency(self, name: str, label: str) -> Latency | None:
        for lat in self.latencies:
            if lat.name == name and lat.label == label:
                return lat
        return None

    def latencies_named(self, name: str) -> list[Latency]:
        return [lat for lat in self.latencies if lat.name == name]

    def summary(self) -> str:
        lines = [f"dqtest: {self.status or 'INCOMPLETE'} {len(self.checks)} checks"]
        for c in self.failures:
            lines.append(f"  not ok {c.number} - {c.description}")
            lines += [f"    {d}" for d in self.diagnostics.get(c.number, [])]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _clean(line: str) -> str:
    return _ANSI.sub("", line).replace("\r", "").strip()


def parse_dqtest_output(text: str) -> DqtestResult:
    """Parse dqtest's serial output. Lines that are not dqtest's (firmware banners, QEMU
    messages) are ignored; inconsistencies (bad numbering, a plan or final count that does
    not match the checks) are collected in ``problems`` and make ``passed`` false."""
    r = DqtestResult()
    for raw in text.splitlines():
        line = _clean(raw)
        if not line:
            continue
        if line.startswith("# ") and r.checks and not r.checks[-1].ok:
            r.diagnostics.setdefault(r.checks[-1].number, []).append(line)
        if m := _CHECK.match(line):
            r.checks.append(
                Check(
                    number=int(m.group(2)),
                    ok=m.group(1) == "ok",
                    description=(m.group(3) or "").strip(),
                    directive=m.group(4),
                    reason=(m.group(5) or "").strip(),
                )
            )
        elif m := _LAT.match(line):
            values = {k: int(v) for k, v in _KV.findall(m.group(3))}
            r.latencies.append(Latency(m.group(1), m.group(2), values))
        elif m := _SKIP.match(line):
            r.skips.append(Skip(m.group(1), m.group(2).strip()))
        elif m := _PLAN.match(line):
            r.plan = int(m.group(1))
        elif m := _FINAL.match(line):
            r.status = m.group(1)
            r.status_count = int(m.group(2))
            r.status_total = int(m.group(3))
        elif line.startswith("# ") and "=" in line:
            # "# calib pit tsc_khz=2600000 ..." -> info["calib pit"] = {"tsc_khz": "2600000", ...}
            words = line[2:].split()
            head = []
            for w in words:
                if "=" in w:
                    break
                head.append(w.rstrip(":"))
            kv = dict(_KV.findall(line))
            if head and kv:
                r.info.setdefault(" ".join(head), {}).update(kv)
    _validate(r)
    return r


def _validate(r: DqtestResult) -> None:
    for i, c in enumerate(r.checks, start=1):
        if c.number != i:
            r.problems.append(f"check numbered {c.number} where {i} was expected")
            break
    if r.status is None:
        r.problems.append("no final 'dqtest: PASS/FAIL' line (the run did not finish)")
        return
    total = len(r.checks)
    if r.plan is not None and r.plan != total:
        r.problems.append(f"plan 1..{r.plan} but {total} checks were printed")
    if r.status_total != total:
        r.problems.append(f"final line counts {r.status_total} checks but {total} were printed")
    failed = len(r.failures)
    if r.status == "PASS" and (failed or r.status_count != total - len(r.todo_failures)):
        r.problems.append(f"PASS with {failed} failing checks")
    if r.status == "FAIL" and r.status_count != failed:
        r.problems.append(f"FAIL counts {r.status_count} failures but {failed} were printed")


# ---------------------------------------------------------------------------------------
# run: through the loopback launcher, over any number of shards


@dataclass
class DqtestRun:
    returncode: int | None  # None: the launcher gave up after the timeout
    output: str
    stderr: str  # the launcher's one-line reason
    result: DqtestResult
    forwarded: dict[str, int]
    # per shard, its wake-up counters as it logged them at exit (patches 0037, 0038):
    # replies_polled, replies_slept, served_in_rx, replies_handed_off, replies_read,
    # rx_woken_empty, irqs_in_rx, config_local, halts_polled, halts_slept
    wakeups: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def dqtest_spec(
    kernel: Path,
    *,
    shards: int = 1,
    append: str = "",
    vcpus: int = 4,
    memory_mib: int = 256,
    machine: str = "q35",
    msi_device: bool = True,
    disk: Path | None = None,
    timeout: float = 300,
    data_path: str | None = None,
    memory_mode: str | None = None,
    vm_extra: Mapping[str, Any] | None = None,
    shard_extra: Mapping[int, Mapping[str, Any]] | None = None,
) -> VMSpec:
    """dqtest's VM: debug-exit, edu (MSI/INTx) and an IDE disk on ``disk`` (if given) on
    shard 0; pc-testdev (ISA IRQ lines) and a VGA on the last shard, which is not the
    platform shard when there are several. ``vm_extra`` and ``shard_extra`` (by shard id)
    add spec keys to ``[vm]`` and to ``[[shard]]`` tables."""
    placement = [
        {"id": i, "vcpus": c, **(shard_extra or {}).get(i, {})}
        for i, c in enumerate(even_placement(vcpus, shards))
    ]
    devices = [{"device": DEBUG_EXIT_DEVICE, "shard": 0}]
    if msi_device:
        devices.append({"device": "edu", "shard": 0})
    devices.append({"device": ISA_IRQ_DEVICE, "shard": shards - 1})
    devices.append({"device": VGA_DEVICE, "shard": shards - 1})
    if disk is not None:
        devices.append({"drive": f"file={disk},if=none,id=dqdisk,format=raw", "shard": 0})
        devices.append({"device": "ide-hd,drive=dqdisk,bus=ide.0", "shard": 0})
    data = {
        "vm": {"vcpus": vcpus, "memory": memory_mib, "machine": machine}
        | ({"data_path": data_path} if data_path else {})
        | ({"memory_mode": memory_mode} if memory_mode else {})
        | dict(vm_extra or {}),
        "boot": {"kernel": str(kernel), "append": append, "timeout": timeout},
        "shard": placement,
        "device": devices,
    }
    return spec_from_data(data, flag_reader({}), Path.cwd())


def run_dqtest(
    kernel: Path,
    *,
    qemu: Path | None = None,
    shards: int = 1,
    timeout: float = 300,
    append: str = "",
    vcpus: int = 4,
    memory_mib: int = 256,
    machine: str = "q35",
    msi_device: bool = True,
    ide_disk: bool = True,
    data_path: str | None = None,
    memory_mode: str | None = None,
    vm_extra: Mapping[str, Any] | None = None,
    shard_extra: Mapping[int, Mapping[str, Any]] | None = None,
) -> DqtestRun:
    """Boot dqtest with the loopback launcher and parse its output; nothing outlives it.
    With ``ide_disk`` the VM has a scratch IDE disk (1 MiB, deleted afterwards)."""
    console = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="dqtest-") as tmp:
        disk = None
        if ide_disk:
            disk = Path(tmp) / "disk.img"
            with disk.open("wb") as f:
                f.truncate(1 << 20)
        spec = dqtest_spec(
            kernel, shards=shards, append=append, vcpus=vcpus, memory_mib=memory_mib,
            machine=machine, msi_device=msi_device, disk=disk, timeout=timeout,
            data_path=data_path, memory_mode=memory_mode,
            vm_extra=vm_extra, shard_extra=shard_extra,
        )  # fmt: skip
        logs = Path(tmp) / "logs"
        logs.mkdir()
        vm = LoopbackVM(spec, qemu=qemu, console=console, log_dir=logs).run()
        wakeups = shard_wakeups(logs)
    text = console.getvalue().decode(errors="replace")
    return DqtestRun(
        returncode=None if vm.exit_code == EXIT_TIMEOUT else vm.exit_code,
        output=text,
        stderr=vm.reason,
        result=parse_dqtest_output(text),
        forwarded=vm.forwarded,
        wakeups=wakeups,
    )


def shard_wakeups(log_dir: Path) -> dict[int, dict[str, int]]:
    """Each shard's wake-up counters from the logs a run kept in ``log_dir``."""
    return {s: c["wakeups"] for s, c in shard_counters(log_dir).items() if "wakeups" in c}
