"""Forwarding counters from the routers' per-type link stats."""

from __future__ import annotations

from cluster.forwarding_stats import forwarded


def _router(per_type: dict[str, int]) -> dict:
    return {
        "links": {
            "local": {"per_type": {"PIO_REQ": {"tx_msgs": 999}}},  # not a shard link
            "shard:1": {"per_type": {t: {"tx_msgs": n} for t, n in per_type.items()}},
        }
    }


def test_posted_writes_are_pio_requests_without_a_reply() -> None:
    # shard 0's router sent 10 PIO_REQ (4 of them posted) and 2 replies to shard 1's requests;
    # shard 1's router sent 2 PIO_REQ and the 6 replies to shard 0's requests
    out = forwarded(
        [
            _router({"PIO_REQ": 10, "PIO_REPLY": 2, "IRQ": 3}),
            _router({"PIO_REQ": 2, "PIO_REPLY": 6}),
        ]
    )
    assert out["pio"] == 12 and out["ipi"] == 3
    assert out["posted"] == 4


def test_no_pio_no_posted() -> None:
    assert forwarded([])["posted"] == 0
