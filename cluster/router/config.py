"""Router configuration from a TOML or JSON file.

Example (TOML)::

    vm_id = "vm1"
    shard_id = 1
    listen = "10.213.0.1:7101"       # TCP address for peer routers
    socket_dir = "/run/dqemu/vm1-1"  # private dir: shard.sock + control.sock
    [peers]                          # every other shard of the VM: shard id -> host:port
    2 = "10.213.0.2:7102"            # (JSON null: not known yet; set-route gives it)
    [routes.vcpus]                   # optional: vCPU index -> shard
    0 = 1
    1 = 2
    [routes.devices]                 # optional: device name -> owner shard
    ioapic = 1

Optional tuning keys: ``ping_interval`` (s, default 0.2: heartbeat PING period),
``link_timeout`` (s, 1.0: liveness timeout, a link silent this long is dead),
``handshake_timeout`` (s, 2.0: the whole link set-up, however slowly the peer sends),
``features`` (int, default all known),
``shard_heartbeat`` ("auto" (default): ping the local shard once it has sent its router a
PING or PONG; "on": from REGISTER; "off": never), ``busy_poll_us`` (us, default 200; 0 = no
busy polling) and ``busy_poll_cpu`` (fraction of one CPU that spinning may use, default 0.5);
see `dataloop.py` and docs/protocol.md "Liveness". ``data_path`` ("router" (default):
every frame between shards goes through the routers; "direct": the routers hand their shards
authenticated direct links, docs/protocol.md "Direct shard links").
``transport`` ("tcp" (default) or "rdma": peer links are RC queue pairs set up over the
authenticated TCP connection, docs/protocol.md "RDMA links"), with ``rdma_device`` (default
"": the first device with an active port), ``rdma_port`` (1) and ``rdma_gid_index`` (0: on
rxe, the link-local RoCE v2 GID).
The secret is NOT part of the config; see `auth.py`.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.router import protocol as p
from cluster.router.routing import Address, check_shard_id

SHARD_SOCKET = "shard.sock"
CONTROL_SOCKET = "control.sock"
_VM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
_KNOWN_KEYS = {
    "vm_id",
    "shard_id",
    "listen",
    "socket_dir",
    "peers",
    "routes",
    "ping_interval",
    "link_timeout",
    "handshake_timeout",
    "features",
    "shard_heartbeat",
    "busy_poll_us",
    "busy_poll_cpu",
    "data_path",
    "transport",
    "rdma_device",
    "rdma_port",
    "rdma_gid_index",
}
SHARD_HEARTBEAT_MODES = ("auto", "on", "off")
DATA_PATHS = ("router", "direct")
TRANSPORTS = ("tcp", "rdma")


class ConfigError(ValueError):
    """Bad configuration; the message is one line naming the file and the problem."""


LINK_TIMEOUT = 1.0  # s: a link silent this long is dead (the default of link_timeout)


@dataclass
class RouterConfig:
    vm_id: str
    shard_id: int
    listen: Address
    socket_dir: Path
    # None: a peer whose address is not known yet (``set-route shard K HOST:PORT`` gives it)
    peers: dict[int, Address | None] = field(default_factory=dict)
    routes: dict[str, dict[Any, Any]] = field(default_factory=dict)
    ping_interval: float = 0.2
    link_timeout: float = LINK_TIMEOUT
    handshake_timeout: float = 2.0
    features: int = p.FEATURES_KNOWN
    shard_heartbeat: str = "auto"
    busy_poll_us: float = 200.0
    busy_poll_cpu: float = 0.5
    data_path: str = "router"
    transport: str = "tcp"
    rdma_device: str = ""
    rdma_port: int = 1
    rdma_gid_index: int = 0

    @property
    def shard_socket(self) -> Path:
        return self.socket_dir / SHARD_SOCKET

    @property
    def control_socket(self) -> Path:
        return self.socket_dir / CONTROL_SOCKET

    def to_dict(self) -> dict[str, Any]:
        """The config as data that `config_from_data` accepts (for writing config files)."""
        out: dict[str, Any] = {
            "vm_id": self.vm_id,
            "shard_id": self.shard_id,
            "listen": str(self.listen),
            "socket_dir": str(self.socket_dir),
            "peers": {str(k): str(v) if v is not None else None for k, v in self.peers.items()},
            "ping_interval": self.ping_interval,
            "link_timeout": self.link_timeout,
            "handshake_timeout": self.handshake_timeout,
            "shard_heartbeat": self.shard_heartbeat,
            "busy_poll_us": self.busy_poll_us,
            "busy_poll_cpu": self.busy_poll_cpu,
            "data_path": self.data_path,
            "transport": self.transport,
            "rdma_device": self.rdma_device,
            "rdma_port": self.rdma_port,
            "rdma_gid_index": self.rdma_gid_index,
        }
        if self.routes:
            out["routes"] = {
                sec: {str(k): v for k, v in m.items()} for sec, m in self.routes.items()
            }
        return out


def _positive(data: dict[str, Any], key: str, default: float) -> float:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ConfigError(f"{key} must be a positive number of seconds, not {v!r}")
    return float(v)


def _small_int(data: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{key} must be an integer {lo}..{hi}, not {v!r}")
    return v


def config_from_data(data: Any) -> RouterConfig:
    if not isinstance(data, dict):
        raise ConfigError("the config must be a table/object at top level")
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KNOWN_KEYS))})")
    for key in ("vm_id", "shard_id", "listen", "socket_dir"):
        if key not in data:
            raise ConfigError(f"missing required key {key!r}")
    vm_id = data["vm_id"]
    if not isinstance(vm_id, str) or not _VM_ID_RE.match(vm_id):
        raise ConfigError(
            f"vm_id {vm_id!r} must be 1-32 characters of letters, digits, '.', '_' or '-'"
        )
    try:
        shard_id = check_shard_id(data["shard_id"], "shard_id")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(data["listen"], str):
        raise ConfigError(f"listen must be a 'host:port' string, not {data['listen']!r}")
    try:
        listen = Address.parse(data["listen"])
    except ValueError as e:
        raise ConfigError(f"listen: {e}") from None
    if not isinstance(data["socket_dir"], str) or not data["socket_dir"]:
        raise ConfigError("socket_dir must be a non-empty path string")
    socket_dir = Path(data["socket_dir"])
    peers_raw = data.get("peers", {})
    if not isinstance(peers_raw, dict):
        raise ConfigError("peers must be a table of shard id -> 'host:port'")
    peers: dict[int, Address | None] = {}
    for k, v in peers_raw.items():
        try:
            sid = check_shard_id(k, "peer shard id")
        except ValueError as e:
            raise ConfigError(f"peers: {e}") from None
        if sid == shard_id:
            raise ConfigError(f"peers: shard {sid} is this router's own shard_id")
        if v is None:
            peers[sid] = None  # known, its address comes later (set-route)
            continue
        if not isinstance(v, str):
            raise ConfigError(
                f"peers: shard {sid}: address must be a 'host:port' string (or null: not known yet)"
            )
        try:
            addr = peers[sid] = Address.parse(v)
        except ValueError as e:
            raise ConfigError(f"peers: shard {sid}: {e}") from None
        if addr.port == 0:
            raise ConfigError(f"peers: shard {sid}: port 0 is not a peer address")
    routes = data.get("routes", {})
    if not isinstance(routes, dict) or not all(isinstance(m, dict) for m in routes.values()):
        raise ConfigError("routes must be a table of tables (vcpus, apic_ids, devices)")
    hb = data.get("shard_heartbeat", "auto")
    if hb is True or hb is False:
        hb = "on" if hb else "off"
    if hb not in SHARD_HEARTBEAT_MODES:
        raise ConfigError(f"shard_heartbeat must be one of auto, on, off, not {hb!r}")
    bp_us = data.get("busy_poll_us", 200.0)
    if isinstance(bp_us, bool) or not isinstance(bp_us, int | float) or not 0 <= bp_us <= 1e5:
        raise ConfigError(f"busy_poll_us must be a number of microseconds 0..100000, not {bp_us!r}")
    bp_cpu = data.get("busy_poll_cpu", 0.5)
    if isinstance(bp_cpu, bool) or not isinstance(bp_cpu, int | float) or not 0 < bp_cpu <= 1:
        raise ConfigError(f"busy_poll_cpu must be a fraction of one CPU in (0, 1], not {bp_cpu!r}")
    data_path = data.get("data_path", "router")
    if data_path not in DATA_PATHS:
        raise ConfigError(f"data_path must be one of {', '.join(DATA_PATHS)}, not {data_path!r}")
    transport = data.get("transport", "tcp")
    if transport not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    rdma_device = data.get("rdma_device", "")
    if not isinstance(rdma_device, str):
        raise ConfigError(f"rdma_device must be a device name string, not {rdma_device!r}")
    rdma_port = _small_int(data, "rdma_port", 1, 1, 255)
    rdma_gid = _small_int(data, "rdma_gid_index", 0, 0, 255)
    features = data.get("features", p.FEATURES_KNOWN)
    if isinstance(features, bool) or not isinstance(features, int) or features < 0:
        raise ConfigError(f"features must be a non-negative integer, not {features!r}")
    cfg = RouterConfig(
        vm_id=vm_id,
        shard_id=shard_id,
        listen=listen,
        socket_dir=socket_dir,
        peers=peers,
        routes=routes,
        ping_interval=_positive(data, "ping_interval", 0.2),
        link_timeout=_positive(data, "link_timeout", LINK_TIMEOUT),
        handshake_timeout=_positive(data, "handshake_timeout", 2.0),
        features=features,
        shard_heartbeat=hb,
        busy_poll_us=float(bp_us),
        busy_poll_cpu=float(bp_cpu),
        data_path=data_path,
        transport=transport,
        rdma_device=rdma_device,
        rdma_port=rdma_port,
        rdma_gid_index=rdma_gid,
    )
    if cfg.link_timeout <= cfg.ping_interval:
        raise ConfigError("link_timeout must be longer than ping_interval")
    # check the routes now, so a bad entry is a config error rather than a start-up crash
    from cluster.router.routing import RoutingTable

    try:
        RoutingTable(shard_id, {**dict(peers), shard_id: None}).load(routes)
    except (ValueError, LookupError) as e:
        raise ConfigError(f"routes: {e}") from None
    return cfg


def load_config(path: str | Path) -> RouterConfig:
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as e:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config {path}: invalid {kind}: {msg}") from None
    try:
        return config_from_data(data)
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e}") from None
