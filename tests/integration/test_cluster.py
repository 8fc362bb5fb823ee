"""`dqemu cluster up/down`, the node actor and placement on a real Ray cluster of network
namespaces on this machine (one `cluster up --nodes 3` for the module: Ray takes about
1 GB and a lot of CPU to start)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cluster.ray import local_cluster as lc
from loopback import netns
from loopback.stale import reap_stale, stale_rundirs
from tests.conftest import REPO, TEST_ENV, dqemu_cmd, run_dqemu
from tests.support.ray_result import parse_result

pytestmark = pytest.mark.integration

NAME = f"t{os.getpid() % 100000}"


def _nothing_left(name: str, st: lc.ClusterState) -> list[str]:
    left = [f"netns {ns}" for ns in netns.list_namespaces() if ns.startswith(f"dqr-{name}-")]
    if Path(f"/sys/class/net/{st.bridge}").exists():
        left.append(f"bridge {st.bridge}")
    for p in psutil.process_iter(["cmdline"]):
        if any(st.temp_root + "/" in a for a in p.info.get("cmdline") or []):
            left.append(f"process {p.pid} {' '.join(p.info['cmdline'])[:100]}")
    if Path(st.temp_root).exists():
        left.append(st.temp_root)
    if lc.state_dir(name).exists():
        left.append(str(lc.state_dir(name)))
    # the directories of its node actors and controllers whose process is gone (a stale
    # launcher's run directory from another test is not the cluster's)
    left += [str(d) for d in stale_rundirs(Path(tempfile.gettempdir()))
             if "-boot-" in d.name or "-vm-" in d.name]  # fmt: skip
    return left


@pytest.fixture(scope="module")
def cluster() -> Iterator[lc.ClusterState]:
    if netns.available():
        pytest.skip(netns.available() or "")
    r = run_dqemu("cluster", "up", "--name", NAME, "--nodes", "3", timeout=900)
    try:
        assert r.returncode == 0, r.stderr
        st = lc.load_state(NAME)
        assert st is not None
        assert f"export RAY_ADDRESS={st.address}" in r.stdout.splitlines()
        assert "http://" in r.stdout and ":8265" in r.stdout
        yield st
    finally:
        down = run_dqemu("cluster", "down", "--name", NAME, timeout=300)
        assert down.returncode == 0, down.stderr
    assert not _nothing_left(NAME, st)


def _driver(st: lc.ClusterState, check: str, *args: str) -> dict[str, object]:
    env = {**TEST_ENV, **lc.ray_env(st.name), "RAY_ADDRESS": st.address}
    proc = subprocess.run(
        ["ip", "netns", "exec", st.head.netns, str(REPO / ".venv/bin/python"),
         "-m", "tests.support.ray_checks", check, *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return parse_result(proc.stdout)


def test_nodes_have_their_own_ip_labels_and_resources(cluster: lc.ClusterState) -> None:
    env = {**TEST_ENV, **lc.ray_env(cluster.name), "RAY_ADDRESS": cluster.address}
    ray = str(REPO / ".venv/bin/ray")
    deadline = time.monotonic() + 120
    while True:  # the autoscaler's view, which `ray status` shows, lags the GCS by seconds
        out = subprocess.run([ray, "status"], capture_output=True, text=True, env=env,
                             timeout=120, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr
        if "0.0/12.0 dqemu_shard" in out.stdout or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "0.0/12.0 dqemu_shard" in out.stdout  # 4 on each of the 3 workers
    # without the token, Ray refuses (token auth stays on)
    bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    bare["HOME"] = "/nonexistent"  # no ~/.ray/auth_token either
    out = subprocess.run([ray, "status"], capture_output=True, text=True, env=bare,
                         timeout=120, check=False)  # fmt: skip
    assert out.returncode != 0
    r = run_dqemu("cluster", "status", "--name", cluster.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("raylet running") == 4
    # a second `up` of the same cluster is refused, and leaves it running
    again = run_dqemu("cluster", "up", "--name", cluster.name, "--nodes", "1")
    assert again.returncode == 2 and "already up" in again.stderr
    assert "Traceback" not in again.stderr


def test_node_actors_run_routers_that_mesh_across_nodes(cluster: lc.ClusterState) -> None:
    got = _driver(cluster, "mesh")
    info = got["info"]
    assert isinstance(info, list)
    assert [i["ip"] for i in info] == [cluster.nodes[1].ip, cluster.nodes[2].ip]
    assert info[0]["netns"] != info[1]["netns"]  # different network namespaces
    addrs = got["addrs"]
    assert isinstance(addrs, list)
    assert addrs[0].startswith(cluster.nodes[1].ip + ":") and not addrs[0].endswith(":0")
    assert addrs[1].startswith(cluster.nodes[2].ip + ":")
    assert got["linked"], "the routers did not link up across nodes"
    assert got["procs"] == [["router 0", None, True], ["router 1", None, True]]
    assert got["killed_actor_router_gone"], "a router outlived its killed node actor"
    assert got["peer_down"]
    assert got["left_on_b"] == 0
    # node1's actor made a run directory for its router (LoopbackHost.make_rundir) and was
    # killed: like a SIGKILLed launcher's, it stays until the next reap on the host (the
    # next VM's, `dqemu cleanup`, `cluster down`). Reap it here: the tests after this one
    # found a dead maker's /tmp/dqemu-<pid>-* (ci22: test_up_interrupted_leaves_nothing)
    actor = int(info[0]["pid"])
    left = sorted(Path(tempfile.gettempdir()).glob(f"dqemu-{actor}-*"))
    assert left, "the killed node actor's run directory was not found"
    assert _wait_for(lambda: not psutil.pid_exists(actor), 60), f"node actor {actor} still runs"
    reap_stale()
    assert not [d for d in left if d.exists()], left


def test_placement_on_the_cluster(cluster: lc.ClusterState) -> None:
    got = _driver(cluster, "place")
    unknown, spans, held = got["unknown"], got["spans"], got["held"]
    assert isinstance(unknown, list) and isinstance(spans, list) and isinstance(held, list)
    assert "no Ray node is 'node9'" in unknown[0] and "node1 (" in unknown[0]
    assert 'with memory_mode "shared" a VM keeps all its shards on one node' in spans[0]
    assert got["spread"] == ["node3", "node1"]  # a dsm VM: on the nodes its hosts name
    assert "could not place 3 shard(s) on one node within" in held[0]
    assert "node2 (" in held[0] and "2 of 4 dqemu_shard free" in held[0]
    assert held[1] < 30
    assert got["pinned"] == ["node2", "node2"]
    assert got["packed"] == 1


def test_up_interrupted_leaves_nothing() -> None:
    """Ctrl-C while the head starts: what was made is removed, and the exit is 130."""
    if netns.available():
        pytest.skip(netns.available() or "")
    name = f"i{os.getpid() % 100000}"
    proc = subprocess.Popen(
        dqemu_cmd("cluster", "up", "--name", name, "--nodes", "1"), cwd=REPO, env=TEST_ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        st = None
        while time.monotonic() < deadline:
            st = lc.load_state(name) if lc.state_dir(name).exists() else None
            if st is not None and st.head.started:
                break
            time.sleep(0.1)
        assert st is not None and st.head.started
        time.sleep(3)  # the head's processes are starting
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = _nothing_left(name, st) if st is not None else []
        if left or lc.state_dir(name).exists():  # never leave a cluster to the next tests
            run_dqemu("cluster", "down", "--name", name)
    assert proc.returncode == 130, err
    assert "did not come up; removing what was made" in err
    assert "Traceback" not in err
    assert not left


SPEC = """
[vm]
name = "{name}"
vcpus = 2
memory = "256M"

[boot]
kernel = "guest:cloud"
initrd = "guest:cloud"
append = "dq.run=cpus"
timeout = 600

[[shard]]
id = 0
vcpus = "0"
host = "{host0}"

[[shard]]
id = 1
vcpus = "1"
{host1}
"""


def test_ray_job_submit_runs_a_vm_on_the_named_node(
    built: None, cluster: lc.ClusterState, tmp_path: Path
) -> None:
    """`ray job submit -- dqemu run SPEC`: the guest boots over two shards on node2 (the
    host one shard names; the other follows it), sees both vCPUs and powers off."""
    spec = tmp_path / "job.toml"
    spec.write_text(SPEC.format(name="job", host0="node2", host1=""))
    env = {**TEST_ENV, **lc.ray_env(cluster.name)}
    proc = subprocess.run(
        [str(REPO / ".venv/bin/ray"), "job", "submit", "--address", cluster.dashboard,
         "--", str(REPO / ".venv/bin/dqemu"), "run", str(spec)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=1200, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert "DQ PASS cpus" in out, out[-4000:]
    assert "DQ KV online_cpus=2" in out
    assert "shard(s) on node2 (" in out
    assert "succeeded" in out, out[-2000:]
    assert proc.returncode == 0, out[-2000:]


def _vm_children(ns: str) -> list[str]:
    """The QEMU shards and routers that run in a node's namespace."""
    out = []
    for pid in netns.pids_in(ns):
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if "qemu-system" in cmd or "cluster.router" in cmd:
            out.append(f"{pid} {cmd[:80]}")
    return out


def _wait_for(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.5)
    return False


def _spec(name: str, hosts: list[str | None], memory_mode: str, boot: str, memory: str) -> str:
    """A VM of a shard per vCPU, on ``hosts``, with the ``[boot]`` lines ``boot``."""
    shards = "".join(
        f'\n[[shard]]\nid = {k}\nvcpus = "{k}"\n' + (f'host = "{h}"\n' if h else "")
        for k, h in enumerate(hosts)
    )
    return (
        f'[vm]\nname = "{name}"\nvcpus = {len(hosts)}\nmemory = "{memory}"\n'
        f'memory_mode = "{memory_mode}"\n\n[boot]\n{boot}\n{shards}'
    )


def _dqtest_spec(name: str, hosts: list[str | None], memory_mode: str, append: str) -> str:
    """dqtest's VM (built here, shipped by the driver): a shard per vCPU, on ``hosts``."""
    from loopback.dqtest import build_dqtest

    boot = f'kernel = "{build_dqtest()}"\nappend = "{append}"\ntimeout = 300'
    return _spec(name, hosts, memory_mode, boot, "64M")


WAITING = "# waiting for input on the console"


def _shared_files(pid: int) -> set[str]:
    """The files a process maps shared (rw-s, and any /dev/shm file or memory-backend
    memfd): guest RAM that two shards shared would be one of them."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split(maxsplit=5)
        if len(f) == 6 and f[4] != "0" and (f[1].endswith("s") or "/dev/shm/" in f[5]
                                            or "memfd:memory-backend" in f[5]):  # fmt: skip
            out.add(f"{f[3]}:{f[4]} {f[5]}")
    return out


class _Lines:
    """A command whose output lines (stdout and stderr) are read as they come, with the
    time each came (monotonic): nothing polls."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    def said(self, word: str) -> float | None:
        """When a line with ``word`` came, or None."""
        return next((t for t, line in self.lines if word in line), None)

    def text(self) -> str:
        return "".join(line for _t, line in self.lines)

    def kill(self) -> None:
        """SIGKILL the command if it still runs (a test's way out), and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def end(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        finally:
            self.reader.join(timeout=10)
        return code


def _dqemu_run(cluster: lc.ClusterState, spec: Path) -> _Lines:
    """`dqemu run SPEC` as a driver in the head's namespace."""
    env = {**TEST_ENV, **lc.ray_env(cluster.name), "RAY_ADDRESS": cluster.address}
    return _Lines(["ip", "netns", "exec", cluster.head.netns, *dqemu_cmd("run", str(spec))], env)


def _job_submit(cluster: lc.ClusterState, spec: Path) -> _Lines:
    """`ray job submit -- dqemu run SPEC` from this machine: it follows the job's logs."""
    ray, dqemu = str(REPO / ".venv/bin/ray"), str(REPO / ".venv/bin/dqemu")
    argv = [ray, "job", "submit", "--address", cluster.dashboard, "--", dqemu, "run", str(spec)]
    return _Lines(argv, {**TEST_ENV, **lc.ray_env(cluster.name)})


def test_ray_job_submit_runs_a_dsm_vm_over_three_nodes(
    built: None, cluster: lc.ClusterState, tmp_path: Path
) -> None:
    """`ray job submit -- dqemu run` of a 3-shard DSM spec: shard 0 on node3 and shard 1
    on node1 (their hosts), shard 2 (no host) spread onto the node left, node2. While it
    runs (dqtest waits for a byte on its console), each node's namespace runs one shard,
    the three share no guest-RAM mapping, and `dqemu list` shows one shard per node;
    then the guest sees its 3 vCPUs, passes its memory checks over the DSM and powers
    off: exit 0."""
    spec = tmp_path / "span.toml"
    append = "only=mem iters=50 atomic_iters=100 wait_input=1"
    spec.write_text(_dqtest_spec("span3", ["node3", "node1", None], "dsm", append))
    t0 = time.monotonic()
    job = _job_submit(cluster, spec)
    try:
        _span3_while_it_runs(cluster, job, "span3", WAITING, "# input received")
        code = job.end(600)
    finally:
        job.kill()
    out = job.text()
    print(f"3-shard dsm VM over 3 nodes: {time.monotonic() - t0:.1f} s from submit to end")
    assert "# cpus online=3" in out and "dqtest: PASS" in out, out[-3000:]
    assert "not ok" not in out, out[-3000:]
    ips = {n.name: n.ip for n in cluster.nodes}
    assert f"shard 0 on node3 ({ips['node3']}), shard 1 on node1 ({ips['node1']}), " in out
    assert "guest powered off (every shard exited 0)" in out, out[-2000:]
    assert "succeeded" in out and code == 0, out[-2000:]
    for n in cluster.nodes[1:]:
        assert _wait_for(lambda n=n: not _vm_children(n.netns), 60), _vm_children(n.netns)


def _span3_while_it_runs(
    cluster: lc.ClusterState, job: _Lines, vm: str, waiting: str, received: str,
    timeout: float = 600,
) -> None:  # fmt: skip
    """The checks of the 3-node VM ``vm`` while its guest waits (it said ``waiting``), then
    the line that ends the wait (the guest then says ``received``)."""
    running = _wait_for(lambda: job.said(waiting) or job.proc.poll() is not None, timeout)
    assert running and job.said(waiting), f"the guest did not wait:\n{job.text()[-3000:]}"
    nodes = {n.name: n for n in cluster.nodes[1:]}
    where = {"node3": 0, "node1": 1, "node2": 2}
    pids = {}
    for name, shard in where.items():
        qemus = _in_netns(nodes[name].netns, "qemu-system")
        assert len(qemus) == 1, (name, qemus)  # one shard per node
        cmd = " ".join(psutil.Process(qemus[0]).cmdline())
        assert f"dqemu-shard,id=dqemu,shard={shard}," in cmd, (name, cmd[:300])
        pids[name] = qemus[0]
    spaces = {os.stat(f"/proc/{pid}/ns/net").st_ino for pid in pids.values()}
    assert len(spaces) == 3  # three network namespaces
    maps = {name: _shared_files(pid) for name, pid in pids.items()}
    assert not any("/dev/shm/" in m or "memory-backend" in m for f in maps.values() for m in f)
    for a in maps:
        for b in maps:
            assert a == b or not maps[a] & maps[b], (a, b, maps[a] & maps[b])
    got = _driver(cluster, "span", vm, received)  # lets the guest go on once it has looked
    assert got["received"], "the guest did not get the line sent to its console"
    rows = {r["name"]: r for r in json.loads(got["list"][1])}  # type: ignore[index]
    hosts = [s["host"] for s in rows[vm]["shards"]]
    assert hosts == [f"{n} ({nodes[n].ip})" for n in where], hosts
    assert rows[vm]["state"] == "running"
    info = json.loads(got["info"][1])  # type: ignore[index]
    assert [s["host"] for s in info["shards"]] == hosts


@pytest.mark.dsmlinux
def test_ray_job_submit_boots_linux_over_three_dsm_nodes(
    built: None, cluster: lc.ClusterState, tmp_path: Path
) -> None:
    """The acceptance's first item with the Linux test guest: `ray job submit -- dqemu run`
    of a 3-shard DSM spec (shard 0 on node3, shard 1 on node1, shard 2 spread onto node2)
    boots Linux. While it runs (``dq.wait=1``: the guest's init waits for a line on its
    console), each node's namespace runs one shard, the three share no guest-RAM mapping
    and `dqemu list` shows one shard per node; then the guest sees its 3 vCPUs
    (``dq.run=cpus``) and powers off: exit 0. Minutes (every page a vCPU touches crosses
    the network), hence ``dsmlinux``: `make test-dsm`, not CI."""
    spec = tmp_path / "linux3.toml"
    boot = ('kernel = "guest:cloud"\ninitrd = "guest:cloud"\n'
            'append = "dq.run=cpus dq.wait=1"\ntimeout = 2400')  # fmt: skip
    spec.write_text(_spec("linux3", ["node3", "node1", None], "dsm", boot, "256M"))
    t0 = time.monotonic()
    job = _job_submit(cluster, spec)
    try:
        _span3_while_it_runs(cluster, job, "linux3", "DQ KV waiting=1", "DQ KV waited=1", 2400)
        waited = time.monotonic() - t0
        code = job.end(2400)
    finally:
        job.kill()
    out = job.text()
    print(f"Linux over 3 dsm nodes: {waited:.1f} s from submit to its init's wait, "
          f"{time.monotonic() - t0:.1f} s to the end")  # fmt: skip
    assert "DQ PASS cpus" in out, out[-4000:]
    assert "DQ KV online_cpus=3" in out and "DQ KV cpu_online_list=0-2" in out, out[-4000:]
    ips = {n.name: n.ip for n in cluster.nodes}
    assert f"shard 0 on node3 ({ips['node3']}), shard 1 on node1 ({ips['node1']}), " in out
    assert "guest powered off (every shard exited 0)" in out, out[-2000:]
    assert "succeeded" in out and code == 0, out[-2000:]
    for n in cluster.nodes[1:]:
        assert _wait_for(lambda n=n: not _vm_children(n.netns), 60), _vm_children(n.netns)


SLEEP_SPEC = SPEC.replace("dq.run=cpus", "dq.run=sleep")


def _in_netns(ns: str, word: str) -> list[int]:
    """The pids of a node's namespace whose command line has ``word``."""
    out = []
    for pid in netns.pids_in(ns):
        with contextlib.suppress(psutil.Error):
            if word in " ".join(psutil.Process(pid).cmdline()):
                out.append(pid)
    return out


def _vm_qemus(ns: str, vm: str) -> dict[int, int]:
    """The QEMU shards of VM ``vm`` (booting a kernel the driver shipped) in a node's
    namespace: shard -> pid."""
    out = {}
    for pid in _in_netns(ns, f"-boot-{vm}-"):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(psutil.Process(pid).cmdline())
            if "qemu-system" in cmd:  # (a VM of one shard runs a plain QEMU)
                at = cmd.split("dqemu-shard,id=dqemu,shard=")
                out[int(at[1].split(",")[0]) if len(at) > 1 else 0] = pid
    return out


def test_a_lost_node_ends_its_vms_at_once_and_leaves_nothing(
    built: None, cluster: lc.ClusterState, tmp_path: Path
) -> None:
    """node1's raylet is SIGKILLed under two running VMs: "span" (dsm: shard 0 on node2,
    shard 1 on node1) and "one" (both shards on node1). node1's actor sees its raylet
    die, kills the VMs' processes there at once and says so on its lifeline; each VM's
    controller (on the head) ends its VM, node2's shard included, with a message naming
    the node and the shards, without waiting for Ray to call the actor unavailable
    (about 3 s). The figures are printed, not asserted: that the message is the
    lifeline's (not Ray's) is what shows the VMs were not waiting for Ray. (A node actor
    killed alone: the mesh test.) node1 stays dead: the tests after this one use node2."""
    node, other = cluster.nodes[1], cluster.nodes[2]
    drivers = {}
    for name, mode, host0 in (("span", "dsm", "node2"), ("one", "shared", "node1")):
        spec = tmp_path / f"{name}.toml"
        spec.write_text(_dqtest_spec(name, [host0, "node1"], mode, "only=mem wait_input=1"))
        drivers[name] = _dqemu_run(cluster, spec)
    try:
        running = _wait_for(lambda: all(d.said(WAITING) or d.proc.poll() is not None
                                        for d in drivers.values()), 600)  # fmt: skip
        assert running and all(d.said(WAITING) for d in drivers.values()), {
            n: d.text()[-2000:] for n, d in drivers.items()}  # fmt: skip
        assert len(_vm_children(node.netns)) == 6  # span's shard 1, one's 2; a router each
        assert len(_vm_children(other.netns)) == 2  # span's shard 0 and its router
        # a 2-shard spec with explicit hosts lands on those nodes
        assert _vm_qemus(other.netns, "span").keys() == {0}
        assert _vm_qemus(node.netns, "span").keys() == {1}
        assert _vm_qemus(node.netns, "one").keys() == {0, 1}
        assert (f"VM span: shard 0 on node2 ({other.ip}), shard 1 on node1 ({node.ip});"
                in drivers["span"].text())  # fmt: skip
        assert len(_in_netns(node.netns, "NodeActor")) == 1
        raylets = _in_netns(node.netns, "/raylet")
        assert len(raylets) == 1
        t0 = time.monotonic()
        os.kill(raylets[0], signal.SIGKILL)
        gone: dict[str, float] = {}  # when each node ran none of the VMs' processes
        while time.monotonic() - t0 < 300 and (
            len(gone) < 2 or any(d.proc.poll() is None for d in drivers.values())
        ):
            for n in (node, other):
                if n.name not in gone and not _vm_children(n.netns):
                    gone[n.name] = time.monotonic() - t0
            time.sleep(0.05)
        codes = {name: d.end(300) for name, d in drivers.items()}
        for name, d in drivers.items():
            said = d.said("dqemu: error:")
            print(f"VM {name}: after node1's raylet's SIGKILL, the error came in "
                  f"{'-' if said is None else f'{said - t0:.2f}'} s; processes gone: "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(gone.items())))  # fmt: skip
    finally:
        for d in drivers.values():
            d.kill()
    for name, ran in (("span", "shard(s) 1 of VM span"), ("one", "shard(s) 0, 1 of VM one")):
        out = drivers[name].text()
        assert codes[name] == 4, out[-3000:]
        # the lifeline's message: Ray's would say the actor "is gone or does not answer"
        assert f"node node1 ({node.ip}) lost: its raylet ended" in out, out[-3000:]
        assert ran in out and "Traceback" not in out
    assert _wait_for(lambda: not _vm_children(node.netns), 60), _vm_children(node.netns)
    assert _wait_for(lambda: not _vm_children(other.netns), 60), _vm_children(other.netns)
    assert _wait_for(lambda: not _in_netns(node.netns, "NodeActor"), 60)
    assert len(_in_netns(other.netns, "NodeActor")) == 1  # it stays, for the next VM


def test_ray_vms_in_the_commands_and_job_stop_destroys_the_vm(
    built: None, cluster: lc.ClusterState, tmp_path: Path
) -> None:
    """A VM run by `ray job submit` from the user's own kernel and initrd files (shipped
    through the object store): `dqemu list/info/suspend/qmp/resume/stats` and dqconsole's
    client see it through $RAY_ADDRESS; `ray job stop` destroys it and nothing is left."""
    from cluster.guest_images import ensure_guest

    node = cluster.nodes[2]
    img = ensure_guest("cloud")
    mine = tmp_path / "mine"
    mine.mkdir()
    kernel, initrd = mine / "vmlinuz", mine / "initrd.img"
    kernel.write_bytes(img.kernel.read_bytes())
    initrd.write_bytes(img.initrd.read_bytes())
    spec = tmp_path / "stop.toml"
    spec.write_text(SLEEP_SPEC.format(name="stop", host0="node2", host1="")
                    .replace('kernel = "guest:cloud"', f'kernel = "{kernel}"')
                    .replace('initrd = "guest:cloud"', f'initrd = "{initrd}"'))  # fmt: skip
    env = {**TEST_ENV, **lc.ray_env(cluster.name)}
    ray = str(REPO / ".venv/bin/ray")
    addr = ("--address", cluster.dashboard)
    sub = subprocess.run(
        [ray, "job", "submit", *addr, "--no-wait", "--", str(REPO / ".venv/bin/dqemu"),
         "run", str(spec)],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    job = next(w.strip("'") for w in sub.stdout.split() if w.strip("'").startswith("raysubmit_"))

    def logs() -> str:
        r = subprocess.run([ray, "job", "logs", *addr, job], capture_output=True, text=True,
                           env=env, timeout=120, check=False)  # fmt: skip
        return r.stdout

    def ended() -> bool:  # a job that failed (a spec error, say) will never print the line
        r = subprocess.run([ray, "job", "status", *addr, job], capture_output=True, text=True,
                           env=env, timeout=120, check=False)  # fmt: skip
        return any(w in r.stdout for w in ("FAILED", "SUCCEEDED", "STOPPED"))

    assert _wait_for(lambda: "DQ KV sleeping=1" in logs() or ended(), 900), logs()[-3000:]
    assert "DQ KV sleeping=1" in logs(), f"the job ended before the guest slept:\n{logs()[-3000:]}"
    assert len(_vm_children(node.netns)) == 4
    # the shards boot the shipped copies, in the VM's own directory on the node
    booted = [a for pid in _in_netns(node.netns, "qemu-system")
              for a in psutil.Process(pid).cmdline() if "-boot-stop-" in a]  # fmt: skip
    assert len(booted) == 4 and str(mine) not in " ".join(booted), booted
    # at the node's normal priority, not at the nice 15 of Ray's workers
    nice = {c: psutil.Process(int(c.split()[0])).nice() for c in _vm_children(node.netns)}
    assert set(nice.values()) == {0}, nice
    got = _driver(cluster, "commands", "stop")
    # (this machine's registry may hold other engineers' loopback VMs)
    listed = {r["name"]: (r["state"], len(r["shards"])) for r in json.loads(got["list"][1])}  # type: ignore[index]
    assert listed["stop"] == ("running", 2)
    assert "lost" not in listed  # its controller went with its end
    info = json.loads(got["info"][1])  # type: ignore[index]
    assert [s["host"] for s in info["shards"]] == [f"node2 ({node.ip})"] * 2
    assert got["suspend"][:2] == [0, "stop: every shard is paused\n"]  # type: ignore[index]
    assert json.loads(got["paused"][1])["status"] == "paused"  # type: ignore[index]
    assert got["resume"][:2] == [0, "stop: every shard is running\n"]  # type: ignore[index]
    assert got["stats"][0] == 0  # type: ignore[index]
    code, _o, err = got["missing"]  # type: ignore[misc]
    assert code == 1 and "none on the Ray cluster at" in err and "running there: stop" in err
    assert got["console_info"] == "running" and got["console_serial"]
    assert "stop" in got["console_list"]  # type: ignore[operator]
    subprocess.run([ray, "job", "stop", *addr, job], capture_output=True, text=True, env=env,
                   timeout=300, check=False)  # fmt: skip
    # SIGTERM: the driver destroys the VM
    assert _wait_for(lambda: not _vm_children(node.netns), 120), _vm_children(node.netns)
    assert len(_in_netns(node.netns, "NodeActor")) == 1  # it stays, for the next VM
    shipped = Path(booted[0]).parent
    assert _wait_for(lambda: not shipped.exists(), 60), shipped  # removed with the VM


def _worker_logs_say(node: lc.Node, words: str) -> bool:
    """Whether a Ray worker's log on ``node`` (its actors' stderr) has ``words``."""
    for f in Path(node.temp_dir).glob("session_*/logs/worker-*"):
        with contextlib.suppress(OSError):
            if words in f.read_text(errors="replace"):
                return True
    return False


def test_a_dead_controller_node_actor_or_driver_ends_the_vm(
    built: None, cluster: lc.ClusterState, tmp_path: Path
) -> None:
    """Three dqtest VMs wait on node2 and node3 (node1 is dead), then each loses a part:
    "ctl" (node3) its controller (SIGKILL of its process): node3's actor sees the VM's
    lifeline close and stops its shard at once, not after its 30 s lease; "intr" (node3)
    its driver, by Ctrl-C: the driver destroys the VM, exit 130; "act" (dsm, shard 0 on
    node2, shard 1 on node3) node2's node actor (SIGKILL): the VM ends everywhere, exit 4,
    naming the node and the shard. Nothing of them is left on any node. Figures are
    printed, not asserted; the actor's own message is what shows the lease did not act."""
    node2, node3 = cluster.nodes[2], cluster.nodes[3]
    drivers = {}
    for name, mode, hosts in (("ctl", "shared", ["node3"]), ("intr", "shared", ["node3"]),
                              ("act", "dsm", ["node2", "node3"])):  # fmt: skip
        spec = tmp_path / f"{name}.toml"
        spec.write_text(_dqtest_spec(name, list(hosts), mode, "only=mem wait_input=1"))
        drivers[name] = _dqemu_run(cluster, spec)
    try:
        running = _wait_for(lambda: all(d.said(WAITING) or d.proc.poll() is not None
                                        for d in drivers.values()), 600)  # fmt: skip
        assert running and all(d.said(WAITING) for d in drivers.values()), {
            n: d.text()[-2000:] for n, d in drivers.items()}  # fmt: skip
        assert _vm_qemus(node3.netns, "ctl").keys() == {0}
        assert _vm_qemus(node3.netns, "intr").keys() == {0}
        assert _vm_qemus(node2.netns, "act").keys() == {0}
        assert _vm_qemus(node3.netns, "act").keys() == {1}
        shipped = {Path(a).parent for pid in _vm_qemus(node3.netns, "ctl").values()
                   for a in psutil.Process(pid).cmdline() if "-boot-ctl-" in a}  # fmt: skip
        assert len(shipped) == 1
        # the controller: its pid is on the driver's "where it runs" line
        line = next(ln for ln in drivers["ctl"].text().splitlines() if "its controller: pid" in ln)
        controller = int(line.split("its controller: pid ")[1].split()[0])
        assert "VMController" in " ".join(psutil.Process(controller).cmdline())
        t0 = time.monotonic()
        os.kill(controller, signal.SIGKILL)
        assert _wait_for(lambda: not _vm_qemus(node3.netns, "ctl"), 120)
        print(f"VM ctl: its shard was gone {time.monotonic() - t0:.2f} s after its "
              "controller's SIGKILL")  # fmt: skip
        assert _wait_for(lambda: _worker_logs_say(
            node3, "dqemu: VM ctl: its controller's lifeline closed"), 60)  # fmt: skip
        assert not _worker_logs_say(node3, "VM ctl: no call from its orchestrator")
        assert _wait_for(lambda: not any(d.exists() for d in shipped), 60), shipped
        assert drivers["ctl"].end(300) == 4
        assert "VM ctl: its controller (actor dqemu/dqemu-vm-ctl) is gone" in drivers[
            "ctl"].text()  # fmt: skip
        # Ctrl-C of a driver destroys its VM
        drivers["intr"].proc.send_signal(signal.SIGINT)
        assert drivers["intr"].end(300) == 130, drivers["intr"].text()[-2000:]
        assert not _vm_qemus(node3.netns, "intr")
        # a node actor killed alone: the VM ends everywhere, naming the node and the shard
        actors = _in_netns(node2.netns, "NodeActor")
        assert len(actors) == 1
        t0 = time.monotonic()
        os.kill(actors[0], signal.SIGKILL)
        assert drivers["act"].end(300) == 4
        said = drivers["act"].said("dqemu: error:")
        print(f"VM act: the error came {'-' if said is None else f'{said - t0:.2f}'} s "
              "after node2's actor's SIGKILL")  # fmt: skip
    finally:
        for d in drivers.values():
            d.kill()
    out = drivers["act"].text()
    assert (f"node node2 ({node2.ip}) lost: its dQEMU actor ended (its connection closed); "
            "shard(s) 0 of VM act ran there") in out, out[-3000:]  # fmt: skip
    for d in drivers.values():
        assert "Traceback" not in d.text(), d.text()[-3000:]
    for n in (node2, node3):
        assert _wait_for(lambda n=n: not _vm_children(n.netns), 60), _vm_children(n.netns)
    assert _wait_for(lambda: not _in_netns(cluster.head.netns, "VMController"), 120)
    # what the SIGKILLed controller (ctl) and node actor (act) could not remove, the next
    # reap on their host removes (the next VM's there, a launcher's or `dqemu cleanup`)
    tmp = Path(tempfile.gettempdir())
    left = sorted(tmp.glob("dqemu-*-vm-ctl-*")) + sorted(tmp.glob("dqemu-*-boot-act-*"))
    assert left, "the killed processes' directories were not found"
    reap_stale()
    assert not [d for d in left if d.exists()]


def test_a_node_whose_processes_are_all_killed_ends_its_vm(
    built: None, cluster: lc.ClusterState, tmp_path: Path
) -> None:
    """Every process in node3's namespace (its raylet, node actor, the VM's router and
    shard, Ray's agents) is SIGKILLed at once under a running dsm VM whose shard 0 is on
    node2 (whose node actor, killed by the test before, Ray makes anew for this VM) and
    shard 1 on node3: the VM ends everywhere, exit 4, with a message naming node3 and
    shard 1, and nothing of it is left on node2. Runs last: node3 stays dead."""
    node2, node3 = cluster.nodes[2], cluster.nodes[3]
    spec = tmp_path / "whole.toml"
    spec.write_text(_dqtest_spec("whole", ["node2", "node3"], "dsm", "only=mem wait_input=1"))
    driver = _dqemu_run(cluster, spec)
    try:
        running = _wait_for(lambda: driver.said(WAITING) or driver.proc.poll() is not None, 600)
        assert running and driver.said(WAITING), driver.text()[-3000:]
        assert _vm_qemus(node2.netns, "whole").keys() == {0}
        assert _vm_qemus(node3.netns, "whole").keys() == {1}
        pids = netns.pids_in(node3.netns)
        assert any("/raylet" in " ".join(psutil.Process(p).cmdline()) for p in pids)
        t0 = time.monotonic()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        code = driver.end(300)
        said = driver.said("dqemu: error:")
        print(f"VM whole: the error came {'-' if said is None else f'{said - t0:.2f}'} s "
              "after the SIGKILL of node3's processes")  # fmt: skip
    finally:
        driver.kill()
    out = driver.text()
    assert code == 4, out[-3000:]
    assert f"node node3 ({node3.ip}) lost" in out, out[-3000:]
    assert "shard(s) 1 of VM whole ran there" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert _wait_for(lambda: not _vm_children(node2.netns), 60), _vm_children(node2.netns)
    assert _wait_for(lambda: not _in_netns(cluster.head.netns, "VMController"), 120)
