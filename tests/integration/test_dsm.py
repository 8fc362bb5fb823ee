"""memory_mode = "dsm" (issue 17, docs/dsm.md): every shard has private guest RAM, kept
coherent page by page through PAGE_* frames.

dqtest's memory-model groups (message passing, atomic counters, store buffering,
cross-modifying code) over two shards, while no shard process maps a guest RAM file, and
page frames crossed the routers (the "page" mechanism of the forwarding counts). The Linux
test guest boots over two dsm shards too, but too slowly for CI yet (docs/dsm.md, "What is
built").
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster.vm.stats import StatsView
from loopback.dqtest import EXIT_PASS, build_dqtest, dqtest_spec, parse_dqtest_output
from loopback.launcher import LoopbackVM
from tests.conftest import run_dqemu
from tests.support.dqtest_run import run_passing_dqtest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]


@pytest.fixture(scope="module")
def qemu() -> Path:
    r = run_dqemu("build-qemu", "--print-path", timeout=3000)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


def shard_ram_maps(stop: threading.Event, seen: dict[int, list[str]]) -> None:
    """Until ``stop``: the mappings of every QEMU this process started that could be
    shared guest RAM (a RAM file in /dev/shm, or a memory backend's memfd)."""
    me = psutil.Process()
    while not stop.wait(0.5):
        for child in me.children(recursive=True):
            try:
                if "qemu-system" not in child.name():
                    continue
                maps = Path(f"/proc/{child.pid}/maps").read_text()
            except (psutil.Error, OSError):
                continue
            seen[child.pid] = [
                line
                for line in maps.splitlines()
                if "/dev/shm/" in line or "memfd:memory-backend" in line
            ]


def test_dqtest_memory_model_over_two_dsm_shards(qemu: Path) -> None:
    spec = dqtest_spec(
        build_dqtest(), shards=2, vcpus=2, timeout=900, memory_mode="dsm",
        append="only=mem,litmus,xmc litmus_iters=200 atomic_iters=2000 xmc_rounds=10",
    )  # fmt: skip
    console = io.BytesIO()
    stop = threading.Event()
    seen: dict[int, list[str]] = {}
    watcher = threading.Thread(target=shard_ram_maps, args=(stop, seen), daemon=True)
    watcher.start()
    try:
        vm = LoopbackVM(spec, qemu=qemu, console=console).run()
    finally:
        stop.set()
        watcher.join()
    text = console.getvalue().decode(errors="replace")
    result = parse_dqtest_output(text)
    assert vm.exit_code == EXIT_PASS and not result.failures, f"{vm.reason}\n{text[-3000:]}"
    groups = {c.description.split()[0] for c in result.checks}
    assert {"mem", "litmus", "xmc"} <= groups, groups
    # both shards were seen running, and neither mapped a RAM file
    assert len(seen) == 2, seen
    assert all(not maps for maps in seen.values()), seen
    assert vm.forwarded["page"] > 0, vm.forwarded
    # every shard's PAGE_STATS reached its router, read before teardown (docs/dsm.md §12)
    pages = {s["shard_id"]: s.get("page") for s in vm.router_stats}
    assert sorted(pages) == [0, 1] and all(pages.values()), pages
    merged = StatsView().snapshot({s["shard_id"]: s for s in vm.router_stats})
    page = merged["mechanisms"]["page"]
    c = page["counters"]
    assert c["read_faults"] + c["write_faults"] + c["upgrades"] > 0, c
    assert c["pages_in"] > 0 and c["pages_out"] > 0, c
    assert c["bytes_in"] > c["pages_in"] * 4096, c
    assert sum(page["shards"][k]["counters"]["resident_pages"] for k in ("0", "1")) > 0, page
    assert any(v["read_fault"]["count"] or v["write_fault"]["count"] for v in pages.values()), pages


# docs/dsm.md §13.2: every holder action on either shard waits 0.5 ms (the home's entry
# stays busy and the holder keeps using its copy meanwhile), and each shard's receive
# thread waits 0.3 ms before it installs a page (the page stays in flight)
RACE_KNOBS = {"test_dsm_delay": "hold:500+install:300"}


@pytest.mark.dsmlinux  # minutes on a loaded machine (204 s at load 9): make test-dsm
def test_forced_races_over_two_dsm_shards(qemu: Path) -> None:
    """The four races of docs/dsm.md §6, forced by the shard's test-dsm-delay knob in one
    dqtest run over two dsm shards with two vCPUs each: message passing, atomic counters
    from every CPU and store buffering (two shards write one page: 6.1; an upgrade crosses
    the invalidation of its read copy: 6.2; a vCPU faults on a page another vCPU of its
    shard already asked for: 6.3), and edu's DMA into a page that a CPU of the other shard keeps
    writing (6.4). Every check passes, and each race's counter moved."""
    spec = dqtest_spec(
        build_dqtest(), shards=2, vcpus=4, timeout=900, memory_mode="dsm",
        append="only=mem,litmus,dma iters=20 atomic_iters=300 litmus_iters=50",
        shard_extra={0: RACE_KNOBS, 1: RACE_KNOBS},
    )  # fmt: skip
    vm, result = run_passing_dqtest(spec, qemu)
    groups = {c.description.split()[0] for c in result.checks}
    assert {"mem", "litmus", "dma"} <= groups and not result.skips, (groups, result.skips)
    merged = StatsView().snapshot({s["shard_id"]: s for s in vm.router_stats})
    page = merged["mechanisms"]["page"]
    c = page["counters"]
    print("page counters:", c)
    assert c["deferred_hold"] > 0, c  # the knob held pages
    assert c["home_queued"] > 0, c  # 6.1: a request found its page busy at the home
    assert c["need_data"] > 0, c  # 6.2: an invalidation crossed an upgrade
    assert c["joined_faults"] > 0, c  # 6.3: a fault on a page in flight
    # 6.4: faults of edu's DMA (shard 0's main thread, not a vCPU) on pages CPU 3 holds
    assert page["shards"]["0"]["counters"]["dma_pages"] > 0, page["shards"]


def shard_qemu(shard: int) -> psutil.Process | None:
    """This process's QEMU of shard ``shard``, if it runs."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "qemu-system" in child.name() and any(
                f"shard={shard}," in a for a in child.cmdline()
            ):
                return child
        except psutil.Error:
            continue
    return None


def test_lost_dsm_shard_stops_the_vm(qemu: Path) -> None:
    """A shard that homes and holds pages is killed while both shards move pages: the VM
    stops with exit 4 naming it, and no vCPU of shard 0 stays blocked in a fault that can
    no longer be served (the run ends instead of waiting for its timeout)."""
    spec = dqtest_spec(
        build_dqtest(), shards=2, vcpus=2, timeout=600, memory_mode="dsm",
        append="only=mem iters=100000000 timeout_ms=3600000",
    )  # fmt: skip
    console = io.BytesIO()
    done: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: done.update(vm=LoopbackVM(spec, qemu=qemu, console=console).run())
    )
    runner.start()
    try:
        victim = None
        while runner.is_alive() and (victim is None or b"# options" not in console.getvalue()):
            victim = shard_qemu(1)
            time.sleep(0.2)
        assert victim is not None and runner.is_alive(), console.getvalue()[-2000:]
        time.sleep(1.0)  # let the message-passing check move pages both ways
        victim.kill()
    finally:
        runner.join(timeout=300)
    assert not runner.is_alive(), "the VM did not stop after shard 1 was killed"
    vm = done["vm"]
    assert vm.exit_code == 4, (vm.exit_code, vm.reason)
    assert "shard 1" in vm.reason, vm.reason
