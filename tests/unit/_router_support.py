"""Helpers for router tests: in-process meshes and real router processes (always reaped)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cluster.router import protocol as p
from cluster.router.auth import write_secret_file
from cluster.router.config import config_from_data
from cluster.router.control import ControlError, control_call
from cluster.router.router import Router
from cluster.router.transport import read_frame
from tests.support.shard_client import ShardClient

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"0123456789abcdef0123456789abcdef"


# DQEMU_TEST_TIMEOUT_SCALE stretches every wait_for and the routers' liveness timers: the
# RDMA test host runs these tests under TCG, many times slower than this machine
TIMEOUT_SCALE = float(os.environ.get("DQEMU_TEST_TIMEOUT_SCALE", "1"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# DQEMU_TEST_TRANSPORT=rdma runs the router tests' meshes over RDMA links (inside the RDMA
# test host, tests/integration/test_rdma.py), with DQEMU_TEST_RDMA_DEVICE as the device
TRANSPORT_ENV = "DQEMU_TEST_TRANSPORT"


def transport_config() -> dict[str, Any]:
    """The router config keys that choose the transport the tests run over, and liveness
    timers stretched by DQEMU_TEST_TIMEOUT_SCALE (under TCG a router thread can stall for
    over a second: the default 1 s heartbeat timeout would drop healthy links)."""
    out: dict[str, Any] = {}
    if TIMEOUT_SCALE > 1:
        out.update(
            ping_interval=0.2 * TIMEOUT_SCALE,
            link_timeout=1.0 * TIMEOUT_SCALE,
            handshake_timeout=2.0 * TIMEOUT_SCALE,
        )
    if os.environ.get(TRANSPORT_ENV, "tcp") == "rdma":
        out.update(transport="rdma", rdma_device=os.environ.get("DQEMU_TEST_RDMA_DEVICE", ""))
    return out


def router_config(
    shard: int, ids: list[int], tmp: Path, ports: dict[int, int], vm_id: str = "vm1", **extra: Any
) -> dict[str, Any]:
    extra = {**transport_config(), **extra}
    return {
        "vm_id": vm_id,
        "shard_id": shard,
        "listen": f"127.0.0.1:{ports[shard]}",
        "socket_dir": str(tmp / f"r{shard}"),
        "peers": {str(j): f"127.0.0.1:{ports[j] or 9}" for j in ids if j != shard},
        **extra,
    }


def register_raw(path: Path, shard: int) -> socket.socket:
    """A raw UNIX-socket connection registered as ``shard``'s QEMU (for frame-level tests)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5.0)
    s.connect(str(path))
    s.sendall(
        p.encode_frame(
            p.Register(shard, 1, 0), src=shard, dst=p.DST_ROUTER,
            flags=p.FLAG_WANT_REPLY, request_id=1,
        )
    )  # fmt: skip
    f = read_frame(s)
    assert f.type == p.MSG_REGISTER_OK
    return s


class InProcessMesh:
    """Routers in this process (each with its own threads), wired on 127.0.0.1."""

    def __init__(
        self,
        ids: list[int],
        tmp: Path,
        secrets: dict[int, bytes] | None = None,
        vm_ids: dict[int, str] | None = None,
        **extra: Any,
    ) -> None:
        self.routers: dict[int, Router] = {}
        ports = dict.fromkeys(ids, 0)
        for i in ids:
            data = router_config(i, ids, tmp, ports, (vm_ids or {}).get(i, "vm1"), **extra)
            r = Router(config_from_data(data), (secrets or {}).get(i, SECRET))
            r.start()
            self.routers[i] = r
        for i, r in self.routers.items():
            for j, r2 in self.routers.items():
                if i != j:
                    r.routes.set_route("shard", j, str(r2.listen_addr))
        for r in self.routers.values():
            t = threading.Thread(target=r.serve_forever, name=f"router-{r.id}", daemon=True)
            r._loop_thread = t
            t.start()
        self.clients: list[ShardClient] = []

    def client(self, shard: int, **kw: Any) -> ShardClient:
        c = ShardClient.connect(self.routers[shard].cfg.shard_socket, shard, **kw)
        self.clients.append(c)
        return c

    def wait_links(self, timeout: float = 5.0) -> None:
        def up() -> bool:
            return all(
                all(v["state"] == "up" for v in r.health()["peers"].values())
                for r in self.routers.values()
            )

        wait_for(up, timeout, "all links up")

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for r in self.routers.values():
            r.close()

    def __enter__(self) -> InProcessMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RouterProcess:
    """``python -m cluster.router`` in a subprocess; `kill()` always reaps it."""

    def __init__(self, cfg: dict[str, Any], tmp: Path, secret: bytes = SECRET) -> None:
        self.cfg = cfg
        self.shard = int(cfg["shard_id"])
        self.cfg_path = tmp / f"router{self.shard}.json"
        self.cfg_path.write_text(json.dumps(cfg))
        self.secret_path = tmp / f"secret{self.shard}"
        if not self.secret_path.exists():
            write_secret_file(self.secret_path, secret)
        self.log_path = tmp / f"router{self.shard}.log"
        self.socket_dir = Path(cfg["socket_dir"])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RouterProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cluster.router", "--config", str(self.cfg_path),
                 "--secret-file", str(self.secret_path), "--log-level", "debug"],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )  # fmt: skip
        # a bound for a hang, not a timing check: a router that exits fails at once
        # (control_ready), and on a starved machine the interpreter's start alone took
        # 13-18 s (10 s failed helpers' runs of test_router_liveness and test_router_relay)
        wait_for(self.control_ready, 60.0, f"router {self.shard} control socket")
        return self

    @property
    def shard_socket(self) -> Path:
        return self.socket_dir / "shard.sock"

    @property
    def control_socket(self) -> Path:
        return self.socket_dir / "control.sock"

    def control_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"router {self.shard} exited early:\n{self.log()}")
        try:
            control_call(self.control_socket, "health", timeout=1.0)
            return True
        except (OSError, ControlError):
            return False

    def control(self, cmd: str, **args: Any) -> Any:
        return control_call(self.control_socket, cmd, **args)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a SIGSTOPped router would ignore SIGTERM
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5.0)


@contextlib.contextmanager
def process_mesh(ids: list[int], tmp: Path, **extra: Any) -> Iterator[dict[int, RouterProcess]]:
    ports = {i: free_port() for i in ids}
    procs = {i: RouterProcess(router_config(i, ids, tmp, ports, **extra), tmp) for i in ids}
    try:
        for p in procs.values():
            p.start()
        yield procs
    finally:
        for p in procs.values():
            p.kill()


def wait_mesh_up(procs: dict[int, RouterProcess], timeout: float = 10.0) -> None:
    def up() -> bool:
        for pr in procs.values():
            h = pr.control("health")
            if not all(v["state"] == "up" for v in h["peers"].values()):
                return False
        return True

    wait_for(up, timeout, "router mesh up")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
