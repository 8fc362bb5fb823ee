"""Issue 12 acceptance: the relay attack on a running VM.

A 2-shard loopback VM runs the SMP workload. Meanwhile a stranger with no secret, in shard
0's network namespace, connects to both routers and passes each one's handshake on to the
other (tests/unit/_stranger.py). It must fail to authenticate (so it never gets to inject
the forged COMMAND QUIT it holds ready), the routers must keep their one working link, and
the guest must finish its workload and power off normally (exit 0).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopback.launcher import ROUTER_PORT
from loopback.netns import SUBNET
from tests.conftest import REPO, TEST_ENV, dqemu_cmd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("built", "no_leftovers")]

GUEST = ("--kernel", "guest:cloud", "--initrd", "guest:cloud", "--timeout", "900")


def _wait_links_up(proc: subprocess.Popen[str], logs: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    want = {"router0.log": "link to shard 1 up", "router1.log": "link to shard 0 up"}
    while True:
        texts = {n: (logs / n).read_text() if (logs / n).exists() else "" for n in want}
        if all(w in texts[n] for n, w in want.items()) and (logs / "pids.json").exists():
            return
        assert proc.poll() is None, "the VM ended before its routers were linked"
        assert time.monotonic() < deadline, f"router links not up: {texts}"
        time.sleep(0.2)


def test_relay_attack_on_running_vm(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            dqemu_cmd("loopback", *GUEST, "--vcpus", "2", "--shards", "2",
                      "--log-dir", str(logs), "--append", "dq.run=smp dq.cpus=2"),
            cwd=REPO, env=TEST_ENV, stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
    try:
        _wait_links_up(proc, logs)
        router0 = json.loads((logs / "pids.json").read_text())["router 0"]
        ns = subprocess.run(
            ["ip", "netns", "identify", str(router0)],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        assert ns, f"router 0 (pid {router0}) is in no named namespace"
        attack = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.unit._stranger",
             f"{SUBNET}.1:{ROUTER_PORT}", f"{SUBNET}.2:{ROUTER_PORT}"],
            cwd=REPO, env=TEST_ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert attack.returncode == 0, attack.stderr[-2000:]
        result = json.loads(attack.stdout.splitlines()[-1])
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    # the stranger was refused by both routers and never could inject its QUIT
    assert not result["authenticated"] and not result["injected_quit"], result
    assert "AUTH_OK" not in result["from_a"] + result["from_b"], result
    r0, r1 = (logs / "router0.log").read_text(), (logs / "router1.log").read_text()
    assert "shard 1 dialed shard 0, but shard 0 is the one that dials" in r0
    assert "refused us" in r1 or "refused peer" in r1
    # one link each way for the whole run: nothing was swapped in
    assert r0.count("link to shard 1 up") == 1 and r1.count("link to shard 0 up") == 1
    assert "replaced" not in r0 + r1
    # and the guest ran on undisturbed
    assert code == 0, stderr[-3000:]
    assert any(ln.strip() == "DQ PASS smp" for ln in stdout.splitlines()), stdout[-3000:]
