"""The VM plan: every shard's host, QEMU argv, router config and names, from the spec alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.qemu_cmdline import BootFiles
from cluster.spec import parse_cpu_list, parse_spec
from cluster.vm.plan import LOCAL_HOST, VMPlan, make_plan

BOOT = BootFiles(Path("/boot/vmlinuz"), Path("/boot/initrd"), "dq.run=cpus", linux=True)


def _plan(text: str, **kw: object) -> VMPlan:
    return make_plan(parse_spec(text), qemu="/opt/qemu", boot=BOOT, vm_id="t-1", **kw)  # type: ignore[arg-type]


def _shards(*groups: str, extra: str = "") -> str:
    n = sum(len(parse_cpu_list(g)) for g in groups)
    text = f'[vm]\nname = "t"\nvcpus = {n}\nmemory = 256\n{extra}\n'
    for i, g in enumerate(groups):
        text += f'[[shard]]\nid = {i}\nvcpus = "{g}"\n'
    return text


def _opt(argv: tuple[str, ...], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_one_shard_has_no_router_and_owns_the_console() -> None:
    plan = _plan("[vm]\nvcpus = 2\nmemory = 128\n")
    assert not plan.sharded
    (s,) = plan.shards
    assert (s.id, s.host, s.name, s.log, s.qmp, s.serial) == (
        0, LOCAL_HOST, "shard 0", "shard0.log", "shard0.qmp", "console.sock"
    )  # fmt: skip
    assert s.router is None
    assert s.argv[0] == "/opt/qemu"
    assert "unix:shard0.qmp,server=on,wait=off" in _opt(s.argv, "-qmp")
    assert not any("dqemu-shard" in a for a in _opt(s.argv, "-object"))
    assert plan.ram == plan.ram[:1] and plan.ram[0].name == "ram0" and plan.ram[0].mib == 128
    assert plan.cont_order == (0,)
    assert plan.hosts == (LOCAL_HOST,)


def test_two_shards_paths_are_relative_to_the_run_directory() -> None:
    plan = _plan(_shards("0-1", "2-3"), router_port=7100)
    assert plan.sharded and plan.vm_id == "t-1" and plan.name == "t"
    for s in plan.shards:
        for a in s.argv[1:]:
            # nothing of the orchestrator's machine: only the boot files are absolute
            if a.startswith("/"):
                assert a in ("/boot/vmlinuz", "/boot/initrd"), a
        assert s.router is not None
        r = s.router
        assert (r.name, r.log, r.config_file, r.socket_dir) == (
            f"router {s.id}", f"router{s.id}.log", f"router{s.id}.json", f"router{s.id}"
        )  # fmt: skip
        assert any(f"router=router{s.id}/shard.sock" in a for a in _opt(s.argv, "-object"))
        assert any("mem-path=ram0," in a for a in _opt(s.argv, "-object"))
    assert [s.serial for s in plan.shards] == ["console.sock", None]
    assert "null" in _opt(plan.shards[1].argv, "-serial")


def test_router_config_leaves_out_secret_and_peer_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DQEMU_DATA_PATH", raising=False)
    plan = _plan(_shards("0-1", "2-3"), router_port=7100)
    r = plan.shards[1].router
    assert r is not None
    cfg = r.config("/run/x/", "10.213.0.2")
    assert cfg == {
        "vm_id": "t-1",
        "shard_id": 1,
        "listen": "10.213.0.2:7100",
        "socket_dir": "/run/x/router1",
        "peers": {"0": None},
        "routes": {"vcpus": {"0": 0, "1": 0, "2": 1, "3": 1}},
        "data_path": "direct",
    }
    assert "secret" not in str(cfg)
    assert r.config("/run/x", "h", {0: "10.0.0.1:7"})["peers"] == {"0": "10.0.0.1:7"}
    assert r.shard_socket == "router1/shard.sock" and r.control_socket == "router1/control.sock"


def test_router_config_is_accepted_by_the_router() -> None:
    from cluster.router.config import config_from_data

    plan = _plan(_shards("0", "1", "2", "3"))
    for s in plan.shards:
        assert s.router is not None
        cfg = config_from_data(s.router.config("/tmp/r", "127.0.0.1"))
        assert cfg.listen.port == 0
        assert set(cfg.peers) == {0, 1, 2, 3} - {s.id}
        assert all(a is None for a in cfg.peers.values())
        assert cfg.link_timeout == 1.0 and "link_timeout" not in s.router.config("/r", "h")
    slow = _plan(_shards("0", "1", extra="link_timeout = 12.5"))
    for s in slow.shards:
        assert s.router is not None
        assert config_from_data(s.router.config("/tmp/r", "127.0.0.1")).link_timeout == 12.5


def test_four_shards_bsp_last_and_spec_hosts() -> None:
    text = _shards("0", "1", "2", "3", extra='memory_mode = "dsm"').replace(
        '[[shard]]\nid = 2\nvcpus = "2"\n', '[[shard]]\nid = 2\nvcpus = "2"\nhost = "node-b"\n'
    )
    plan = _plan(text)
    assert [s.host for s in plan.shards] == [LOCAL_HOST, LOCAL_HOST, "node-b", LOCAL_HOST]
    assert plan.hosts == (LOCAL_HOST, "node-b")
    assert [s.id for s in plan.shards_on("node-b")] == [2]
    assert plan.bsp_shard == 0 and plan.cont_order == (1, 2, 3, 0)
    for s in plan.shards:
        assert s.router is not None and s.router.peers == tuple(k for k in range(4) if k != s.id)
        assert s.vcpus == (s.id,)


def test_bsp_on_another_shard_is_started_last() -> None:
    text = '[vm]\nvcpus = 2\nmemory = 128\n[[shard]]\nid = 0\nvcpus = "1"\n'
    text += '[[shard]]\nid = 1\nvcpus = "0"\n'
    plan = _plan(text)
    assert plan.bsp_shard == 1 and plan.cont_order == (0, 1)


def test_devices_on_a_non_zero_shard_and_io_shard() -> None:
    text = _shards("0-1", "2-3", extra="io_shard = 1")
    text += '[[device]]\ndrive = "file=/img/d.qcow2,if=none,id=d0"\nshard = 1\n'
    text += '[[device]]\ndevice = "virtio-blk-pci,drive=d0"\nshard = 1\n'
    plan = _plan(text)
    assert plan.io_shard == 1
    assert [s.serial for s in plan.shards] == [None, "console.sock"]
    assert plan.shards[1].devices == (
        "drive file=/img/d.qcow2,if=none,id=d0", "device virtio-blk-pci,drive=d0"
    )  # fmt: skip
    assert plan.shards[0].devices == ()
    # the owner opens the image; the other shard a shadow that never writes it
    assert "file=/img/d.qcow2,if=none,id=d0" in _opt(plan.shards[1].argv, "-drive")
    (shadow,) = _opt(plan.shards[0].argv, "-drive")
    assert "snapshot=on" in shadow and "file.locking=off" in shadow


def test_numa_one_ram_file_per_node() -> None:
    plan = _plan(_shards("0-1", "2-3"))
    assert [(r.name, r.mib) for r in plan.ram] == [("ram0", 128), ("ram1", 128)]
    for s in plan.shards:
        objs = _opt(s.argv, "-object")
        assert any("mem-path=ram1," in o for o in objs)
        assert len(_opt(s.argv, "-numa")) == 2
    flat = _plan(_shards("0-1", "2-3", extra="numa = false"))
    assert [r.name for r in flat.ram] == ["ram0"]


def test_qmp_dir_adds_an_operator_socket() -> None:
    plan = _plan(_shards("0", "1"), qmp_dir="/srv/qmp")
    assert "unix:/srv/qmp/shard1.qmp,server=on,wait=off" in _opt(plan.shards[1].argv, "-qmp")


def test_dsm_has_no_ram_file() -> None:
    plan = _plan(_shards("0-1", "2-3", extra='memory_mode = "dsm"'))
    assert plan.ram == ()
    for s in plan.shards:
        objs = _opt(s.argv, "-object")
        assert not any("mem-path" in o for o in objs)
        assert sum(o.startswith("memory-backend-ram,") for o in objs) == 2


def test_posted_writes_are_on_by_default_where_shards_share_guest_ram() -> None:
    def shm(plan: VMPlan) -> list[str]:
        objs = [o for s in plan.shards for o in _opt(s.argv, "-object") if "dqemu-shard" in o]
        return [o.split("posted-shm=")[1].split(",")[0] for o in objs if "posted-shm=" in o]

    assert shm(_plan(_shards("0-1", "2-3"), run_dir="/run/x")) == ["/run/x/posted.shm"] * 2
    assert shm(_plan(_shards("0-1", "2-3", extra='posted_writes = "off"'))) == []
    assert shm(_plan(_shards("0-1", "2-3", extra='memory_mode = "dsm"'))) == []
