"""`dqemu run`'s errors before anything starts: no cluster, an unreachable one."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.errors import DqemuError
from cluster.ray.run import cluster_messages_to_stderr, connect


def test_no_cluster_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(DqemuError, match="no Ray cluster given: set RAY_ADDRESS"):
        connect(None)


def test_an_unreachable_gcs_is_named_at_once() -> None:
    addr = _dead_address()  # nothing listens there now
    with pytest.raises(DqemuError, match=f"cannot reach the Ray cluster's GCS at {addr}"):
        connect(addr)


def _dead_address() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def test_commands_with_an_unreachable_ray_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dqemu list --ray ADDR` still lists this machine's VMs, with a warning; a name not
    found here is an error that names the unreachable cluster."""
    monkeypatch.setenv("DQEMU_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    addr = _dead_address()
    assert main(["list", "--ray", addr]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("NAME")
    assert f"warning: cannot reach the Ray cluster's GCS at {addr}" in err
    assert "listing this machine's VMs only" in err
    monkeypatch.setenv("RAY_ADDRESS", addr)  # the default of --ray
    assert main(["info", "ghost"]) == 2
    _out, err = capsys.readouterr()
    assert f"cannot reach the Ray cluster's GCS at {addr}" in err and "Traceback" not in err


def test_cluster_messages_go_to_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the GCS says to every driver reaches Ray's own printer as an error line, so it
    cannot land in `--json` output on stdout."""
    from ray._private import worker

    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # undone after
    cluster_messages_to_stderr()
    cluster_messages_to_stderr()  # a second join wraps nothing twice
    message = {"lines": ["raylet has lagging heartbeats"], "pid": "raylet", "is_err": False}
    worker.print_to_stdstream(message, ignore_prefix=False)
    out, err = capsys.readouterr()
    assert "lagging heartbeats" in err and "lagging" not in out
