"""`dqemu run`'s errors before anything starts: no cluster, an unreachable one."""

from __future__ import annotations

import socket

import pytest

from cluster.errors import DqemuError
from cluster.ray.run import connect


def test_no_cluster_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(DqemuError, match="no Ray cluster given: set RAY_ADDRESS"):
        connect(None)


def test_an_unreachable_gcs_is_named_at_once() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DqemuError, match=f"cannot reach the Ray cluster's GCS at 127.0.0.1:{port}"):
        connect(f"127.0.0.1:{port}")
