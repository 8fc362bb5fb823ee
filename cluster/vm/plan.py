"""The plan of a VM: what every shard runs, where, and under which names. Pure data.

``make_plan`` turns a :class:`~cluster.spec.VMSpec` into plain frozen dataclasses, with no
I/O: every shard's host, its QEMU command line, its router's configuration and the names of
its children, logs and sockets. A host (:mod:`cluster.vm.host`) carries a plan out.

Every path of a plan's own (sockets, RAM files, router configs) lies in the shard's *run
directory*, which the host supplies (loopback: a private temporary directory; a Ray node:
its own). A plan made with ``run_dir=""`` names them relative to it, for a host that
starts QEMU in its run directory; loopback gives its run directory, because QEMU runs in
the user's working directory there (relative paths in the spec's devices are the user's).
The host makes the RAM file names in the run directory lead to its guest RAM files. So the
same plan runs on any host. The boot files and the QEMU binary are given by the caller, as
the host will see them, and ``qmp_dir`` (an operator's second QMP socket per shard,
loopback only) is used as given.

A router's configuration leaves out what a host only knows once routers run: the VM
secret (given to the router over a pipe, never on a command line or in a file), its own
listen address (the host's, with the plan's port; 0: any free port) and its peers'
addresses (exchanged after every router reported where it listens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.qemu_cmdline import BootFiles, ShardPaths, numa_nodes, shard_argv
from cluster.router.config import LINK_TIMEOUT
from cluster.spec import VMSpec, posted_writes_enabled

# the host of a shard whose spec names none: this machine
LOCAL_HOST = "local"
# the console (serial) socket of the I/O shard, in its run directory
SERIAL_SOCKET = "console.sock"
# the posted writes' counters, a file every shard maps (docs/shard-design.md, "Posted writes")
POSTED_FILE = "posted.shm"
# the router's socket for its shard, in the router's socket directory
ROUTER_SHARD_SOCKET = "shard.sock"
# the router's control socket, in the same directory
ROUTER_CONTROL_SOCKET = "control.sock"


@dataclass(frozen=True)
class RamFile:
    """One guest RAM backing file (one per NUMA node), shared by every shard of a host."""

    name: str  # in the run directory: "ram0"
    mib: int


@dataclass(frozen=True)
class RouterPlan:
    """One shard's router."""

    name: str  # the child's name: "router 1"
    log: str  # its log file, in the host's log directory: "router1.log"
    config_file: str  # its JSON configuration, in the run directory: "router1.json"
    socket_dir: str  # its socket directory, in the run directory: "router1"
    vm_id: str
    shard_id: int
    listen_port: int  # 0: any free port (the router reports the real one)
    peers: tuple[int, ...]  # the other shards' ids; their addresses come from the hosts
    vcpu_routes: tuple[tuple[int, int], ...]  # (vCPU index, its shard)
    data_path: str = "router"  # the spec's vm.data_path: "router" or "direct"
    transport: str = "tcp"  # the spec's vm.transport: "tcp" or "rdma"
    link_timeout: float = LINK_TIMEOUT  # the spec's vm.link_timeout (s)

    @property
    def shard_socket(self) -> str:
        return f"{self.socket_dir}/{ROUTER_SHARD_SOCKET}"

    @property
    def control_socket(self) -> str:
        return f"{self.socket_dir}/{ROUTER_CONTROL_SOCKET}"

    def config(
        self, run_dir: str, listen_host: str, peers: dict[int, str | None] | None = None
    ) -> dict[str, Any]:
        """The router's JSON configuration (``cluster/router/config.py``), for a router
        started in ``run_dir`` that listens on ``listen_host``. A peer without an address
        (the default) is known, and dialled once ``set-route`` gives its address."""
        got = peers or {}
        return {
            "vm_id": self.vm_id,
            "shard_id": self.shard_id,
            "listen": f"{listen_host}:{self.listen_port}",
            "socket_dir": f"{run_dir.rstrip('/')}/{self.socket_dir}",
            "peers": {str(p): got.get(p) for p in self.peers},
            "routes": {"vcpus": {str(c): s for c, s in self.vcpu_routes}},
            "data_path": self.data_path,
            **({"transport": self.transport} if self.transport != "tcp" else {}),
            **({"link_timeout": self.link_timeout} if self.link_timeout != LINK_TIMEOUT else {}),
        }


@dataclass(frozen=True)
class ShardPlan:
    id: int
    host: str  # the spec shard's host, else LOCAL_HOST
    name: str  # the child's name: "shard 1"
    log: str  # its log file, in the host's log directory: "shard1.log"
    qmp: str  # the orchestrator's QMP socket, in the run directory: "shard1.qmp"
    serial: str | None  # the console socket, on the I/O shard only
    argv: tuple[str, ...]  # QEMU's command line; its own paths in the run directory
    router: RouterPlan | None  # None: an unsharded VM has no router
    vcpus: tuple[int, ...]
    devices: tuple[str, ...]  # the devices it owns, as "KIND ARGS"


@dataclass(frozen=True)
class VMPlan:
    name: str  # the VM's name ("" until one is claimed)
    vm_id: str  # the routers' VM id (their handshakes are bound to it)
    shards: tuple[ShardPlan, ...]
    ram: tuple[RamFile, ...]
    io_shard: int  # owns the serial console and the platform devices
    bsp_shard: int  # runs vCPU 0: its shard is sent ``cont`` last
    timeout: float  # seconds before the orchestrator gives up on the guest

    @property
    def sharded(self) -> bool:
        return len(self.shards) > 1

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every host of the VM, once each, in shard order."""
        return tuple(dict.fromkeys(s.host for s in self.shards))

    def shard(self, shard_id: int) -> ShardPlan:
        return self.shards[shard_id]

    def shards_on(self, host: str) -> tuple[ShardPlan, ...]:
        return tuple(s for s in self.shards if s.host == host)

    def device_owner(self, message: str) -> int | None:
        """The owner shard of the spec device that QEMU's error ``message`` is about: QEMU
        names the option (``-drive ARGS: ...``), with the shadow copy's additions."""
        for s in self.shards:
            if any(f"-{dev}" in message for dev in s.devices):
                return s.id
        return None

    @property
    def cont_order(self) -> tuple[int, ...]:
        """The order to start the vCPUs in: the BSP's shard last, so that every other
        vCPU already waits for its INIT/SIPI when the BSP sends them."""
        return tuple(sorted((s.id for s in self.shards), key=lambda k: k == self.bsp_shard))


def make_plan(
    spec: VMSpec,
    *,
    qemu: str | Path,
    boot: BootFiles,
    vm_id: str,
    router_port: int = 0,
    qmp_dir: str | Path | None = None,
    run_dir: str | Path = "",
) -> VMPlan:
    """The plan of ``spec``'s VM. ``qemu`` and ``boot`` are paths as the hosts see them;
    ``router_port`` is the port every router listens on (0: any free one); with
    ``qmp_dir``, every shard also serves QMP on ``qmp_dir/shardN.qmp``; ``run_dir``: the
    run directory as QEMU finds it ("": its working directory)."""

    def at(name: str) -> Path:
        return Path(run_dir) / name if str(run_dir) else Path(name)

    sharded = len(spec.shards) > 1
    # dsm: every shard has private RAM, so there is no file to make
    ram = (
        tuple(RamFile(f"ram{i}", mib) for i, mib in enumerate(numa_nodes(spec)))
        if spec.memory_mode == "shared"
        else ()
    )
    routes = tuple((c, spec.shard_of_vcpu(c)) for c in range(spec.vcpus))
    shards = []
    for s in spec.shards:
        router = None
        if sharded:
            router = RouterPlan(
                name=f"router {s.id}",
                log=f"router{s.id}.log",
                config_file=f"router{s.id}.json",
                socket_dir=f"router{s.id}",
                vm_id=vm_id,
                shard_id=s.id,
                listen_port=router_port,
                peers=tuple(o.id for o in spec.shards if o.id != s.id),
                vcpu_routes=routes,
                data_path=spec.data_path,
                transport=spec.transport,
                link_timeout=spec.link_timeout,
            )
        serial = SERIAL_SOCKET if s.id == spec.io_shard else None
        qmp = f"shard{s.id}.qmp"
        paths = ShardPaths(
            qmp=at(qmp),
            serial=at(serial) if serial is not None else None,
            ram=tuple(at(r.name) for r in ram),
            router=at(router.shard_socket) if router is not None else None,
            user_qmp=Path(qmp_dir) / qmp if qmp_dir is not None else None,
            posted=at(POSTED_FILE) if sharded and posted_writes_enabled(spec) else None,
        )
        shards.append(
            ShardPlan(
                id=s.id,
                host=s.host or LOCAL_HOST,
                name=f"shard {s.id}",
                log=f"shard{s.id}.log",
                qmp=qmp,
                serial=serial,
                argv=tuple(shard_argv(Path(qemu), spec, s.id, paths, boot)),
                router=router,
                vcpus=s.vcpus,
                devices=tuple(f"{d.kind} {d.args}" for d in spec.devices if d.shard == s.id),
            )
        )
    return VMPlan(
        name=spec.name or "",
        vm_id=vm_id,
        shards=tuple(shards),
        ram=ram,
        io_shard=spec.io_shard,
        bsp_shard=spec.shard_of_vcpu(0),
        timeout=spec.boot.timeout,
    )
