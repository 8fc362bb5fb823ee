"""The router's data loop: queued sends flushed in order, busy-poll knobs, liveness config."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.router import protocol as p
from cluster.router.config import ConfigError, config_from_data
from tests.unit._router_support import InProcessMesh, router_config, wait_for


def test_backlog_flushed_in_order(tmp_path: Path) -> None:
    """A shard that does not read for a while: the router queues what the socket does not
    take (no thread, no blocking) and flushes it in order once the shard reads again."""
    with InProcessMesh([1, 2], tmp_path, busy_poll_us=0) as m:
        m.wait_links()
        c1 = m.client(1)
        c2 = m.client(2, threaded=False)  # reads only inside recv()
        n = 60_000
        chunk = b"".join(
            p.encode_frame(p.Gsi(i, 1), src=1, dst=2) for i in range(1000)
        )  # fmt: skip
        for _ in range(n // 1000):
            c1.send_raw(chunk)
        r2 = m.routers[2]
        wait_for(
            lambda: r2.stats()["links"]["local"]["backlog_bytes"] > 0,
            what="a backlog towards the non-reading shard",
        )
        seen = 0
        while seen < n:
            f = c2.recv(5.0)
            assert f is not None, f"only {seen} of {n} frames arrived"
            assert isinstance(f.msg, p.Gsi) and f.msg.gsi == seen % 1000
            seen += 1
        wait_for(lambda: r2.stats()["links"]["local"]["backlog_bytes"] == 0, what="drained")


def test_busy_poll_stats(tmp_path: Path) -> None:
    with InProcessMesh([1, 2], tmp_path, busy_poll_us=300, busy_poll_cpu=0.25) as m:
        m.wait_links()
        c1, c2 = m.client(1), m.client(2)
        c2.on(p.MSG_PIO_REQ, lambda f: p.PioReply(1, 0))
        for _ in range(200):
            c1.request(2, p.PioReq(1, 1, 0, 0, 0))
        dl = m.routers[1].stats()["data_loop"]
        assert dl["busy_poll_us"] == 300 and dl["cpu_cap"] == 0.25
        assert dl["spin_hits"] + dl["spin_misses"] > 0
        assert 300 / 8 <= dl["window_us"] <= 300


def test_liveness_config(tmp_path: Path) -> None:
    base = router_config(1, [1, 2], tmp_path, {1: 0, 2: 7002})
    cfg = config_from_data(base)
    assert (cfg.ping_interval, cfg.link_timeout) == (0.2, 1.0)
    assert cfg.shard_heartbeat == "auto" and cfg.busy_poll_us == 200 and cfg.busy_poll_cpu == 0.5
    assert config_from_data({**base, "shard_heartbeat": True}).shard_heartbeat == "on"
    again = config_from_data(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    for key, value, needle in [
        ("shard_heartbeat", "maybe", "shard_heartbeat must be one of auto, on, off"),
        ("busy_poll_us", -1, "busy_poll_us must be"),
        ("busy_poll_cpu", 0, "busy_poll_cpu must be"),
        ("busy_poll_cpu", 2, "busy_poll_cpu must be"),
        ("link_timeout", 0.1, "link_timeout must be longer than ping_interval"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            config_from_data({**base, key: value})


def test_shard_down_survives_a_link_flap(tmp_path: Path) -> None:
    """Router 2's shard is gone; when the 1-2 link is re-made, router 2 says so again."""
    with InProcessMesh([1, 2], tmp_path) as m:
        m.wait_links()
        c1 = m.client(1)
        seen: list[tuple[int, int, int]] = []
        c1.on_link_state = lambda shard, state, reason: seen.append((shard, state, reason))
        c2 = m.client(2, heartbeat=True)
        c2.close()
        r1 = m.routers[1]
        exited = (2, p.LINK_DOWN, p.ERR_SHARD_EXITED)
        wait_for(lambda: exited in seen, what="shard 1 told that shard 2 exited")
        assert [d["cause"] for d in r1.health()["down"] if d["shard"] == 2] == ["shard exited"]
        r1.peers[2].close("test: link flap")
        flap = [(2, p.LINK_DOWN, p.ERR_LINK_DOWN), (2, p.LINK_UP, 0), exited]
        wait_for(lambda: seen[-3:] == flap, what=f"link down, up, shard 2 down again: {seen}")
        assert [d["cause"] for d in r1.health()["down"] if d["shard"] == 2] == ["shard exited"]


def test_frames_right_after_register_are_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a shard has REGISTER_OK, frames to it are routed: none is dropped as sent to
    a shard that is not connected (the data path routes to a link before it sends what
    was queued on it). The hand-over to the data loop is slowed down to make it show."""
    with InProcessMesh([1, 2], tmp_path) as m:
        m.wait_links()
        c1 = m.client(1)
        r2 = m.routers[2]
        add = r2._data.add

        def slow_add(*args: Any, **kw: Any) -> None:
            time.sleep(0.05)
            add(*args, **kw)

        monkeypatch.setattr(r2._data, "add", slow_add)
        burst = b"".join(p.encode_frame(p.Gsi(i, 1), src=1, dst=2) for i in range(200))
        for _ in range(3):
            c2 = m.client(2, threaded=False)
            c1.send_raw(burst)
            for i in range(200):
                f = c2.recv(5.0)
                assert f is not None and isinstance(f.msg, p.Gsi) and f.msg.gsi == i
            c2.close()
            wait_for(lambda: r2.local is None, what="router 2 saw its shard go")
        assert r2.stats()["links"]["shard:1"]["dropped"] == 0
