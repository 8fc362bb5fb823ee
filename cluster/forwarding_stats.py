"""Forwarding counters per mechanism, from the routers' per-type link statistics.

A frame that a router sends to a peer router is one that crossed a shard boundary, so
summing every router's per-type ``tx_msgs`` on its peer links counts the forwarding of
each mechanism exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Message type name -> mechanism, as the console and the tests speak of them.
# IRQ frames come from a local APIC (IPIs); DEV_IRQ frames from the IOAPIC or an MSI write.
MECHANISMS: dict[str, str] = {
    "IRQ": "ipi",
    "DEV_IRQ": "irq",
    "EOI": "eoi",
    "APIC_STATE": "apic_state",
    "GSI": "gsi",
    "PIO_REQ": "pio",
    "MMIO_REQ": "mmio",
    "TB_INVALIDATE": "code_invalidate",
    "MEMMAP_SYNC": "memmap",
    "PCI_CFG_READ": "pci_cfg_read",
    "COMMAND": "command",
    "CLOCK_REQ": "clock",
    # memory_mode "dsm": requests that move or take away a page (docs/dsm.md §12)
    "PAGE_REQ": "page",
    "PAGE_UPGRADE": "page",
    "PAGE_RECALL": "page",
    "PAGE_INVALIDATE": "page",
}


def forwarded(router_stats: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Mechanism -> frames forwarded between shards, over all routers of one VM; and
    ``posted``: the PIO writes among them that went without a reply (docs/shard-design.md,
    "Posted writes"), i.e. PIO_REQ frames less PIO_REPLY frames."""
    out = dict.fromkeys(MECHANISMS.values(), 0)
    replies = 0
    for stats in router_stats:
        for name, link in stats.get("links", {}).items():
            if not name.startswith("shard:"):
                continue
            for tname, counts in link.get("per_type", {}).items():
                mech = MECHANISMS.get(tname)
                if mech is not None:
                    out[mech] += int(counts.get("tx_msgs", 0))
                elif tname == "PIO_REPLY":
                    replies += int(counts.get("tx_msgs", 0))
    out["posted"] = max(0, out["pio"] - replies)
    return out


def format_counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items())
