"""dqtest, our bare-metal conformance suite, passes on the patched QEMU.

One shard: a plain QEMU process started (and always reaped) by the test. Two and four
shards: through ``dqemu loopback --shards N`` once the shard launcher lands; until then
those cases skip.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from cluster.errors import DqemuError
from loopback.dqtest import (
    DEBUG_EXIT_DEVICE,
    EXIT_PASS,
    DqtestResult,
    build_dqtest,
    parse_dqtest_output,
    run_dqtest,
)
from tests.conftest import REPO, dqemu_cmd, run_dqemu

pytestmark = [pytest.mark.integration]

VCPUS = 4
ITERS = 100
TIMEOUT = 600.0


@pytest.fixture(scope="module")
def qemu() -> Path:
    r = run_dqemu("build-qemu", "--print-path", timeout=3000)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


@pytest.fixture(scope="module")
def kernel() -> Path:
    return build_dqtest()


def multi_shard_ready(qemu: Path, kernel: Path, shards: int) -> bool:
    """Can this tree run dqtest over ``shards`` shards? The launcher must accept the VM and
    the QEMU build must carry the shard series (its ``dqemu-shard`` object)."""
    from loopback.command import register, spec_from_flags
    from loopback.launcher import LoopbackVM

    # Parse real `dqemu loopback` flags, so this stays in step with the CLI.
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    ns = parser.parse_args(
        ["loopback", "--kernel", str(kernel), "--vcpus", str(VCPUS), "--shards", str(shards),
         "--memory", "256M", "--machine", "q35"]
    )  # fmt: skip
    try:
        LoopbackVM(spec_from_flags(ns))
    except DqemuError:
        return False
    objects = subprocess.run(
        [str(qemu), "-object", "help"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    return "dqemu-shard" in objects.split()


def run_sharded(kernel: Path, shards: int, machine: str, append: str) -> tuple[int, str]:
    """dqtest over ``shards`` loopback shards; the devices live on shard 0."""
    argv = dqemu_cmd(
        "loopback", "--kernel", str(kernel), "--append", append,
        "--vcpus", str(VCPUS), "--shards", str(shards), "--memory", "256M",
        "--machine", machine, "--device", f"{DEBUG_EXIT_DEVICE}@0", "--device", "edu@0",
        "--timeout", str(TIMEOUT),
    )  # fmt: skip
    proc = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT + 60, check=False
    )
    return proc.returncode, proc.stdout


def assert_full_pass(r: DqtestResult, output: str) -> None:
    assert r.passed, r.summary() + "\n--- output tail ---\n" + output[-3000:]
    bringup = [c for c in r.checks if c.description.startswith("cpu bring-up")]
    assert len(bringup) == VCPUS - 1 and all(c.ok for c in bringup)
    assert r.info["cpus"]["online"] == str(VCPUS)
    # Every ordered pair of CPUs measured its IPI round trip with every sample.
    rtt = {lat.label: lat for lat in r.latencies_named("ipi_rtt")}
    pairs = {f"cpu{a}-cpu{b}" for a in range(VCPUS) for b in range(VCPUS) if a != b}
    assert set(rtt) == pairs
    assert all(lat.n == ITERS for lat in rtt.values())
    for name in ("pio_cmos", "pio_pit", "mmio_ioapic", "mmio_hpet", "msi_edu", "intx_edu"):
        assert len(r.latencies_named(name)) == VCPUS, name
    for source in ("pit", "hpet"):
        steered = [c for c in r.checks if c.description.startswith(f"irq {source} via ioapic")]
        assert len(steered) == VCPUS, source
    assert not r.skips, r.skips  # the edu device is there, so nothing is skipped
    tsc = r.info["tsc"]
    assert int(tsc["max_backward_ns"]) <= int(tsc["bound_ns"])


@pytest.mark.parametrize(("shards", "machine"), [(1, "q35"), (1, "pc"), (2, "q35"), (4, "q35")])
def test_dqtest_passes(qemu: Path, kernel: Path, shards: int, machine: str) -> None:
    append = f"iters={ITERS}"
    if shards == 1:
        run = run_dqtest(qemu, kernel, append=append, vcpus=VCPUS, machine=machine, timeout=TIMEOUT)
        assert not run.timed_out, f"dqtest timed out\n{run.output[-3000:]}"
        assert run.returncode == EXIT_PASS, (
            f"exit {run.returncode}\n{run.result.summary()}\n{run.stderr[-2000:]}"
        )
        assert_full_pass(run.result, run.output)
        return
    if not multi_shard_ready(qemu, kernel, shards):
        pytest.skip("needs the shard launcher and the shard patch series")
    rc, out = run_sharded(kernel, shards, machine, append)
    assert rc == EXIT_PASS, out[-3000:]
    assert_full_pass(parse_dqtest_output(out), out)


def test_only_option_selects_groups(qemu: Path, kernel: Path) -> None:
    run = run_dqtest(qemu, kernel, append="only=tsc tsc_bound_ns=123456", timeout=TIMEOUT)
    assert run.returncode == EXIT_PASS, run.output[-3000:]
    r = run.result
    assert r.passed, r.summary()
    groups = {c.description.split()[0] for c in r.checks}
    assert groups <= {"tsc", "acpi", "cpu"}, groups
    assert r.info["tsc"]["bound_ns"] == "123456"
    assert r.info["options"]["only"] == "tsc"


def test_build_is_cached(kernel: Path) -> None:
    again = build_dqtest()
    assert again == kernel
    assert kernel.stat().st_size > 0
    assert kernel.read_bytes()[:5] == b"\x7fELF\x01"  # ELF32, as QEMU's multiboot loader needs
