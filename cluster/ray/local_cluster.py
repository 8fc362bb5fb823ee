"""A Ray cluster on one machine for trying the cluster mode: ``dqemu cluster up/down``.

A head and N worker nodes, each in its own network namespace (``dqr-<name>-head``,
``dqr-<name>-node<i>``) with its own address on a bridge ``dqr-<name>`` in the machine's own
namespace, which has the bridge's ``.1``: so the host reaches the head's GCS and dashboard,
and routers on different nodes talk between different IPs, as between hosts. Each node has
its own Ray ``--temp-dir``, a bounded ``--num-cpus``, ``--memory`` and
``--object-store-memory``, and a label ``dqemu-host=<node name>``; each worker offers the
custom resource ``dqemu_shard``. Ray's token auth is on: the token is generated into the
cluster's state directory and handed to every node (``RAY_AUTH_MODE=token``,
``RAY_AUTH_TOKEN_PATH``).

Everything made is recorded in ``state.json`` *before* it is made, so ``down`` (and a
failed or interrupted ``up``) removes all of it: every process in the cluster's namespaces
and any left with its temp dir on its command line (SIGTERM, then SIGKILL), the namespaces,
the bridge, the temp dirs. Never ``ray stop``: it kills every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from cluster.errors import DqemuError
from cluster.vm.registry import registry_dir
from loopback import netns
from loopback.stale import reap_stale

NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")
SUBNET_BASE = "10.214"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
SHARD_RESOURCE = "dqemu_shard"
HOST_LABEL = "dqemu-host"
TOKEN_FILE = "auth_token"
STATE_FILE = "state.json"
MAX_NODES = 16
START_ATTEMPTS = 3  # see _make
START_TIMEOUT = 240.0  # one `ray start`; the head took 8-21 s on an idle machine
STOP_GRACE = 3.0  # gcs_server and raylets ignore SIGTERM for 6-7 s: do not wait that long


@dataclass
class Node:
    name: str  # "head", "node1", ...
    netns: str
    ip: str
    temp_dir: str
    port: str  # the veth on the bridge
    started: bool = False


@dataclass
class ClusterState:
    name: str
    subnet: str  # "10.214.K"
    bridge: str
    nodes: list[Node] = field(default_factory=list)
    made_bridge: bool = False
    made_ns: list[str] = field(default_factory=list)
    up: bool = False

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    @property
    def temp_root(self) -> str:
        return f"/tmp/dqr-{self.name}"

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ClusterState:
        nodes = [Node(**n) for n in data.pop("nodes", [])]  # type: ignore[attr-defined]
        return cls(**data, nodes=nodes)  # type: ignore[arg-type]


def clusters_dir() -> Path:
    return registry_dir().parent / "clusters"


def state_dir(name: str) -> Path:
    return clusters_dir() / name


def token_path(name: str) -> Path:
    return state_dir(name) / TOKEN_FILE


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise DqemuError(f"cluster name {name!r}: use 1-8 lower-case letters or digits")


def ray_env(name: str) -> dict[str, str]:
    """What every Ray process of cluster ``name`` (node, driver, `ray status`) needs."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path(name))}


def env_lines(st: ClusterState) -> list[str]:
    """What `up` prints: shell lines for `eval`, and the dashboard's URL."""
    env = {"RAY_ADDRESS": st.address, **ray_env(st.name)}
    return [f"export {k}={v}" for k, v in env.items()] + [
        f"# dashboard: {st.dashboard}  (ray job submit --address {st.dashboard})",
    ]


# --- the state file --------------------------------------------------------------------------


def load_state(name: str) -> ClusterState | None:
    path = state_dir(name) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DqemuError(f"cluster {name}: cannot read {path}: {exc}") from None
    return ClusterState.from_json(data)


def save_state(st: ClusterState) -> None:
    path = state_dir(st.name) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(st), indent=1) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def locked(name: str) -> Iterator[Path]:
    """The cluster's state directory (made 0700), held against a concurrent up/down."""
    d = state_dir(name)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DqemuError(
                f"cluster {name}: another `dqemu cluster` command is at work on it"
            ) from None
        yield d
    finally:
        os.close(fd)


# --- addresses -------------------------------------------------------------------------------


def used_subnets(addresses: list[str]) -> set[int]:
    """The third octets K of 10.214.K.0/24 that any of ``addresses`` (CIDR) falls in."""
    out = set()
    for a in addresses:
        iface = ipaddress.ip_interface(a)
        if iface.version != 4:
            continue
        for k in range(256):
            net = ipaddress.ip_network(f"{SUBNET_BASE}.{k}.0/24")
            if iface.network.overlaps(net):
                out.add(k)
    return out


def free_subnet(addresses: list[str]) -> str:
    used = used_subnets(addresses)
    for k in range(256):
        if k not in used:
            return f"{SUBNET_BASE}.{k}"
    raise DqemuError(f"no free /24 left in {SUBNET_BASE}.0.0/16 for the cluster's bridge")


def host_addresses() -> list[str]:
    res = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False)
    return [line.split()[3] for line in res.stdout.splitlines() if len(line.split()) > 3]


def plan(name: str, workers: int, subnet: str) -> ClusterState:
    """The cluster's names and addresses (nothing is made)."""
    st = ClusterState(name=name, subnet=subnet, bridge=f"dqr-{name}")
    for i in range(workers + 1):
        node = "head" if i == 0 else f"node{i}"
        st.nodes.append(Node(
            name=node, netns=f"dqr-{name}-{node}", ip=f"{subnet}.{i + 2}",
            temp_dir=f"{st.temp_root}/{node}", port=f"dqr{name}{'h' if i == 0 else i}",
        ))  # fmt: skip
    return st


# --- up ----------------------------------------------------------------------------------------


@dataclass
class Sizes:
    cpus: int = 1
    memory_mib: int = 2048  # Ray's logical `memory` resource
    object_store_mib: int = 100
    shards_per_node: int = 4


def ray_start_argv(st: ClusterState, node: Node, sizes: Sizes) -> list[str]:
    argv = [
        sys.executable, "-m", "ray.scripts.scripts", "start",
        "--node-ip-address", node.ip, "--temp-dir", node.temp_dir,
        "--num-cpus", str(sizes.cpus), "--memory", str(sizes.memory_mib << 20),
        "--object-store-memory", str(sizes.object_store_mib << 20),
        "--disable-usage-stats", "--labels", f"{HOST_LABEL}={node.name}",
    ]  # fmt: skip
    if node is st.head:
        argv += ["--head", "--port", str(GCS_PORT), "--dashboard-host", node.ip,
                 "--dashboard-port", str(DASHBOARD_PORT),
                 "--ray-client-server-port", str(CLIENT_PORT)]  # fmt: skip
    else:
        argv += ["--address", st.address, "--resources",
                 json.dumps({SHARD_RESOURCE: sizes.shards_per_node})]  # fmt: skip
    return argv


def up(name: str, workers: int, sizes: Sizes, say: Callable[[str], None] = print) -> ClusterState:
    """Bring the cluster up; on any failure or interruption remove what was made, and raise."""
    check_name(name)
    if not 1 <= workers <= MAX_NODES:
        raise DqemuError(f"--nodes {workers}: give 1..{MAX_NODES} worker nodes")
    reason = netns.available()
    if reason:
        raise DqemuError(f"cannot make the cluster's network namespaces: {reason}")
    with locked(name) as d:
        old = load_state(name)
        if old is not None and old.up and _alive(old):
            raise DqemuError(
                f"cluster {name} is already up (RAY_ADDRESS={old.address}); "
                "`dqemu cluster down` first"
            )
        if old is not None:
            say(f"dqemu: removing what is left of an earlier cluster {name}")
            _teardown(old)
        st = plan(name, workers, free_subnet(host_addresses()))
        tok = d / TOKEN_FILE
        tok.unlink(missing_ok=True)
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            _make(st, sizes, d, say)
        except BaseException:
            say(f"dqemu: cluster {name} did not come up; removing what was made")
            _teardown(st)
            _remove_state(d)
            raise
        return st


def _make(st: ClusterState, sizes: Sizes, d: Path, say: Callable[[str], None]) -> None:
    save_state(st)
    st.made_bridge = True  # recorded before it is made: a half-made one is removed too
    save_state(st)
    _ip("link", "add", st.bridge, "type", "bridge")
    _ip("addr", "add", f"{st.subnet}.1/24", "dev", st.bridge)
    _ip("link", "set", st.bridge, "up")
    for node in st.nodes:
        st.made_ns.append(node.netns)
        save_state(st)
        _ip("netns", "add", node.netns)
        try:
            netns.attach_host(node.netns, f"{node.ip}/24", st.bridge, node.port, None)
        except netns.NetnsError as exc:
            raise DqemuError(f"cluster network: {exc}") from None
    env = {**os.environ, **ray_env(st.name), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    for node in st.nodes:
        Path(node.temp_dir).mkdir(parents=True, exist_ok=True)
        log = d / f"{node.name}.start.log"
        say(f"dqemu: starting Ray {node.name} at {node.ip} ({node.netns})")
        node.started = True
        save_state(st)
        for attempt in range(START_ATTEMPTS):
            try:
                _ray_start(node, ray_start_argv(st, node, sizes), env, log)
                break
            except _StartTimedOut as exc:
                # Ray waits a fixed 30 s for a new node to register: on a loaded machine
                # that is not always enough. Clear what this attempt started, and retry.
                stop_processes(_processes(netns.pids_in(node.netns)))
                if attempt + 1 == START_ATTEMPTS:
                    raise DqemuError(str(exc)) from None
                say(f"dqemu: {exc}; starting it again")
    st.up = True
    save_state(st)


def _ip(*args: str) -> None:
    try:
        netns.ip(*args)
    except netns.NetnsError as exc:
        raise DqemuError(f"cluster network: {exc}") from None


def _ray_start(node: Node, argv: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            code = proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise DqemuError(
                f"Ray {node.name} did not start within {START_TIMEOUT:g} s (log: {log})"
            ) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        text = log.read_text(errors="replace")
        why = f"Ray {node.name} failed to start (exit {code}): {_tail(text)}"
        if "timed out during startup" in text:
            raise _StartTimedOut(why)
        raise DqemuError(why)


class _StartTimedOut(Exception):
    """`ray start` gave up waiting for its node to register with the GCS."""


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rror" in ln or "timed out" in ln]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


# --- down --------------------------------------------------------------------------------------


def down(name: str, say: Callable[[str], None] = print) -> bool:
    """Remove cluster ``name`` and everything it left. False if there was none."""
    check_name(name)
    if not state_dir(name).exists():
        return False
    with locked(name) as d:
        st = load_state(name)
        if st is not None:
            stopped = _teardown(st)
            if stopped:
                say(f"dqemu: stopped {stopped} process(es) of cluster {name}")
            # what its killed actors could not remove: shipped boot files, a VM
            # controller's directory (their processes are gone now)
            for left in reap_stale():
                say(f"dqemu: removed {left}, left by a process that no longer runs")
        _remove_state(d)
    return True


def _remove_state(d: Path) -> None:
    """The state directory, the lock last (it is held until the caller lets it go)."""
    for p in d.iterdir():
        if p.name != "lock":
            p.unlink(missing_ok=True)
    shutil.rmtree(d, ignore_errors=True)


def cluster_processes(st: ClusterState) -> list[psutil.Process]:
    """Every process of the cluster: those in its namespaces, and any (a log monitor left
    by a SIGKILLed raylet) whose command line names one of its temp dirs."""
    pids: set[int] = set()
    for ns in st.made_ns:
        pids.update(netns.pids_in(ns))
    root = st.temp_root + "/"
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any(root in arg for arg in cmd):
            pids.add(proc.pid)
    pids.discard(os.getpid())
    return _processes(pids)


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out.append(psutil.Process(pid))
    return out


def _alive(st: ClusterState) -> bool:
    return bool(cluster_processes(st))


def stop_processes(procs: list[psutil.Process], grace: float = STOP_GRACE) -> int:
    """SIGTERM (SIGCONT to a stopped one), wait ``grace`` s, then SIGKILL and reap."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
            p.resume()
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5.0)
    return len(procs)


def _teardown(st: ClusterState) -> int:
    """Stop every process, then delete namespaces, bridge and temp dirs. Never raises."""
    stopped = 0
    for _ in range(3):  # a dying raylet may still start a worker: sweep until none is left
        procs = cluster_processes(st)
        if not procs:
            break
        stopped += stop_processes(procs)
        time.sleep(0.2)
    present = set(netns.list_namespaces())
    for ns in reversed(st.made_ns):
        if ns in present:
            with contextlib.suppress(netns.NetnsError):
                netns.ip("netns", "del", ns)
    if st.made_bridge and Path(f"/sys/class/net/{st.bridge}").exists():
        with contextlib.suppress(netns.NetnsError):
            netns.ip("link", "del", st.bridge)
    shutil.rmtree(st.temp_root, ignore_errors=True)
    st.up = False
    return stopped


def status(name: str) -> tuple[ClusterState, dict[str, bool]] | None:
    """The recorded cluster and, per node, whether its raylet runs."""
    st = load_state(name)
    if st is None:
        return None
    running = {}
    for node in st.nodes:
        pids = netns.pids_in(node.netns)
        names = set()
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                names.add(psutil.Process(pid).name())
        running[node.name] = "raylet" in names
    return st, running
