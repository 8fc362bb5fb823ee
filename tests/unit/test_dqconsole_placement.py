"""The placement editor: its model (a style-preserving TOML round trip, the spec loader's
own messages) and the screen driven by Textual's Pilot (move a vCPU, save, load)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster.spec import SpecError, load_spec, parse_spec
from dqconsole.app import DQConsole
from dqconsole.placement import Placement, PlacementError, cpu_ranges
from dqconsole.screens.placement import PlacementGrid, PlacementScreen

SPEC = """\
# a 4-vCPU VM over two shards  (this comment must survive)
[vm]
name = "place-me"
vcpus = 4          # four
memory = "256M"
io_shard = 0

[boot]
kernel = "guest:cloud"   # the built test guest

# shard 0 is the I/O shard
[[shard]]
id = 0
vcpus = "0-1"  # BSP and one more

[[shard]]
id   = 1            # odd spacing stays
vcpus = [2, 3]

[[device]]
device = "e1000,netdev=n0"
shard = 1  # the NIC's owner
"""


def spec_file(tmp_path: Path, text: str = SPEC) -> Path:
    p = tmp_path / "vm.toml"
    p.write_text(text)
    return p


def test_cpu_ranges() -> None:
    assert cpu_ranges([5, 0, 2, 1]) == "0-2,5"
    assert cpu_ranges([3]) == "3"
    assert cpu_ranges([]) == ""


def test_untouched_round_trip_is_byte_identical(tmp_path: Path) -> None:
    p = spec_file(tmp_path)
    Placement.load(p).save()
    assert p.read_text() == SPEC


def test_move_and_save_keep_comments_and_layout(tmp_path: Path) -> None:
    p = spec_file(tmp_path)
    pl = Placement.load(p)
    assert [(i.key, i.shard) for i in pl.items()] == [
        ("vcpu:0", 0), ("vcpu:1", 0), ("vcpu:2", 1), ("vcpu:3", 1), ("device:0", 1), ("io", 0)
    ]  # fmt: skip
    assert pl.move("vcpu:1", 1) is None
    assert pl.move("device:0", 0) is None
    pl.save()
    text = p.read_text()
    # every comment, and the spacing of lines not edited, survive
    for line in SPEC.splitlines():
        if "#" in line and "vcpus" not in line and "shard = 1" not in line:
            assert line in text
    assert 'vcpus = "0"  # BSP and one more' in text  # the string form and its comment
    assert "vcpus = [1, 2, 3]" in text  # the array form
    assert "shard = 0  # the NIC's owner" in text
    spec = load_spec(p)  # the loader reads back what the editor wrote
    assert [s.vcpus for s in spec.shards] == [(0,), (1, 2, 3)]
    assert spec.devices[0].shard == 0


def test_moves_are_judged_by_the_spec_loader(tmp_path: Path) -> None:
    p = spec_file(tmp_path)
    pl = Placement.load(p)
    pl.move("vcpu:0", 1)
    err = pl.move("vcpu:1", 1)  # shard 0 is left with nothing to run
    assert err is not None
    # the very message (and line) the loader gives for the same text
    with pytest.raises(SpecError) as loader:
        parse_spec(pl.text(), origin=str(p), base=p.parent)
    assert err == str(loader.value)
    assert err == f"{p}:14: shard[0].vcpus: a shard must run at least one vCPU"
    with pytest.raises(PlacementError, match=r"not saved: .*at least one vCPU"):
        pl.save()
    assert p.read_text() == SPEC  # nothing written
    assert pl.move("vcpu:1", 0) is None  # moving one back makes it valid again
    pl.save()
    assert [s.vcpus for s in load_spec(p).shards] == [(1,), (0, 2, 3)]


def test_iommu_rule_message_comes_from_the_loader(tmp_path: Path) -> None:
    nic = 'device = "e1000,netdev=n0"\nshard = 1'
    text = SPEC.replace(nic, 'device = "intel-iommu"\nshard = 0')
    p = spec_file(tmp_path, text)
    pl = Placement.load(p)
    assert pl.error is None
    err = pl.move("device:0", 1)
    assert err is not None and "intel-iommu must be on the I/O shard (0, vm.io_shard)" in err
    assert err.startswith(f"{p}:22: device[0].shard: ")


def test_specs_without_a_placement_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PlacementError, match="no \\[\\[shard\\]\\] tables"):
        Placement.load(spec_file(tmp_path, '[vm]\nvcpus = 2\nmemory = "64M"\n'))
    with pytest.raises(PlacementError, match="not valid TOML"):
        Placement.load(spec_file(tmp_path, "[vm\n"))
    with pytest.raises(PlacementError, match="cannot read spec"):
        Placement.load(tmp_path / "missing.toml")


def test_pilot_moves_a_vcpu_and_saves(tmp_path: Path) -> None:
    p = spec_file(tmp_path)

    async def main() -> None:
        app = DQConsole(place=p)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, PlacementScreen)
            grid = screen.query_one(PlacementGrid)
            assert grid.has_focus
            await pilot.press("down", "right")  # vCPU 1: shard 0 -> shard 1
            assert screen.placement.error is None
            assert "not saved" in str(screen.query_one("#placement-message").render())
            await pilot.press("up", "1")  # vCPU 0 too: shard 0 runs nothing now
            assert "a shard must run at least one vCPU" in str(screen.placement.error)
            await pilot.press("ctrl+s")  # refused while invalid
            assert p.read_text() == SPEC
            await pilot.press("0", "ctrl+s")
            assert not screen.placement.dirty

    asyncio.run(main())
    assert [s.vcpus for s in load_spec(p).shards] == [(0,), (1, 2, 3)]
    assert "# shard 0 is the I/O shard" in p.read_text()
