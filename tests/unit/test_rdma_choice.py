"""Choosing the RDMA transport: the spec, the router config, the CLI, and the clear refusal
where no RDMA device is usable (this machine: its kernel has no RDMA). The RDMA link itself
is tested inside the RDMA test host (tests/integration/test_rdma.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.qemu_cmdline import BootFiles, with_rdma_device
from cluster.router.config import ConfigError, config_from_data
from cluster.router.router import Router
from cluster.spec import SpecError, default_data_path, parse_spec
from cluster.vm.plan import make_plan
from tests.unit._router_support import SECRET, router_config

REPO = Path(__file__).resolve().parents[2]
HAS_RDMA = os.path.isdir("/sys/class/infiniband") and any(Path("/sys/class/infiniband").iterdir())
no_rdma_here = pytest.mark.skipif(HAS_RDMA, reason="this machine has an RDMA device")

SPEC = """\
[vm]
vcpus = 2
memory = 256
{extra}
[boot]
kernel = "guest:cloud"
[[shard]]
id = 0
vcpus = "0"
[[shard]]
id = 1
vcpus = "1"
"""


def test_spec_transport() -> None:
    assert parse_spec(SPEC.format(extra="")).transport == "tcp"
    spec = parse_spec(SPEC.format(extra='transport = "rdma"'))
    assert spec.transport == "rdma"
    boot = BootFiles(Path("/k"), None, "", linux=True)
    plan = make_plan(spec, qemu="/q", boot=boot, vm_id="t-1")  # type: ignore[arg-type]
    assert all(s.router.config("/run", "127.0.0.1")["transport"] == "rdma" for s in plan.shards)
    with pytest.raises(SpecError, match=r"vm\.transport: 'ib' is not one of tcp, rdma"):
        parse_spec(SPEC.format(extra='transport = "ib"'), origin="vm.toml")
    # the direct path over RDMA: the shards' own queue pairs, on their routers' devices
    spec = parse_spec(SPEC.format(extra='transport = "rdma"\ndata_path = "direct"'))
    assert (spec.transport, spec.data_path) == ("rdma", "direct")
    plan = make_plan(spec, qemu="/q", boot=boot, vm_id="t-1")  # type: ignore[arg-type]
    cfg = plan.shards[0].router.config("/run", "127.0.0.1")
    assert (cfg["transport"], cfg["data_path"]) == ("rdma", "direct")
    argv = with_rdma_device(plan.shards[1].argv, "rxe7")
    assert next(a for a in argv if a.startswith("dqemu-shard,")).endswith(",rdma-device=rxe7")
    with pytest.raises(ValueError, match="no dqemu-shard object"):
        with_rdma_device(["qemu", "-m", "1G"], "rxe0")


def test_router_config_transport(tmp_path: Path) -> None:
    base = router_config(1, [1, 2], tmp_path, {1: 0, 2: 0})
    cfg = config_from_data({**base, "transport": "rdma", "rdma_device": "rxe0"})
    assert (cfg.transport, cfg.rdma_device, cfg.rdma_port, cfg.rdma_gid_index) == (
        "rdma",
        "rxe0",
        1,
        0,
    )
    assert config_from_data(cfg.to_dict()) == cfg
    for bad, msg in (
        ({"transport": "udp"}, "transport must be one of tcp, rdma"),
        ({"transport": "rdma", "rdma_port": 0}, "rdma_port must be an integer 1..255"),
        ({"rdma_gid_index": "x"}, "rdma_gid_index must be an integer"),
    ):
        with pytest.raises(ConfigError, match=msg):
            config_from_data({**base, **bad})


@no_rdma_here
def test_router_refuses_rdma_without_a_device(tmp_path: Path) -> None:
    cfg = config_from_data(
        {**router_config(1, [1, 2], tmp_path, {1: 0, 2: 0}), "transport": "rdma"}
    )
    r = Router(cfg, SECRET)
    with pytest.raises(OSError, match="no RDMA device: this kernel has no RDMA support"):
        r.start()
    assert not cfg.socket_dir.exists()  # refused before anything was made


@no_rdma_here
def test_engine_add_rdma_without_a_device() -> None:
    from cluster.router.dataloop import DataLoop

    engine = DataLoop(1, 0, 0.5, lambda *a: None).engine
    a, b = socket.socketpair()
    with a, b, pytest.raises(OSError, match="no RDMA device"):
        engine.add_rdma(a.fileno(), 2, None, 1, 0)


def dqemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip


@no_rdma_here
def test_cli_refuses_rdma_before_the_vm_starts(tmp_path: Path) -> None:
    # a kernel file that exists: the check comes before any QEMU, router or guest image
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 64)
    r = dqemu("loopback", "--kernel", str(kernel), "--vcpus", "2", "--shards", "2",
              "--transport", "rdma", "--timeout", "5")  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        'dqemu: error: transport "rdma" cannot run here: no RDMA device: this kernel has no '
        "RDMA support (/sys/class/infiniband is missing; CONFIG_INFINIBAND is off or ib_core "
        "is not loaded)"
    ]


@no_rdma_here
def test_rdma_check_says_there_is_none() -> None:
    r = dqemu("rdma-check")
    assert r.returncode != 0
    assert "no RDMA device" in r.stderr and "Traceback" not in r.stderr


def test_flags_over_a_spec_are_checked_as_the_spec(tmp_path: Path) -> None:
    from cluster.spec import load_spec

    plain = tmp_path / "plain.toml"
    plain.write_text(SPEC.format(extra=""))
    direct = tmp_path / "direct.toml"
    direct.write_text(SPEC.format(extra='data_path = "direct"'))
    # no data_path in the file: --transport rdma takes the default path (direct)
    spec = load_spec(plain, {"transport": "rdma"})
    assert (spec.transport, spec.data_path) == ("rdma", default_data_path())
    assert load_spec(plain, {"transport": "rdma", "data_path": "router"}).data_path == "router"
    # a file that asks for direct links keeps them: the shards' own queue pairs
    assert load_spec(direct, {"transport": "rdma"}).data_path == "direct"
    assert load_spec(plain, {"transport": "rdma", "data_path": "direct"}).data_path == "direct"
    with pytest.raises(SpecError, match=r"^--memory-mode \(over .*\): 'big' is not one of"):
        load_spec(plain, {"memory_mode": "big"})
    assert load_spec(plain, {"data_path": "router"}).data_path == "router"
