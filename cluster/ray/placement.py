"""Where a VM's shards run on a Ray cluster.

A shard's ``host`` in the spec names a Ray node: its node IP, or the value of a node label
(``ray start --labels dqemu-host=NAME``; any label's value matches). Shards without a host
go where Ray puts them: a placement group reserving the custom resource ``dqemu_shard`` (1
per shard), STRICT_SPREAD one per node. Until the DSM issue lands, shards on different
nodes share no guest RAM, so a VM must keep every shard on one node: its shards are one
placement group of STRICT_PACK bundles, on the node its hosts name if they name one, and a
spec whose hosts name two nodes is refused (``allow_spanning`` turns the spanning plan on
for when DSM exists).

Ray would leave an infeasible group pending forever: the wait is bounded, and the error
says what the cluster has. The matching and the messages are pure (unit-tested without
Ray); :func:`reserve` is the part that talks to Ray.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import DqemuError

SHARD_RESOURCE = "dqemu_shard"
NODE_ID_LABEL = "ray.io/node-id"
HOST_LABEL = "dqemu-host"
PLACEMENT_WAIT = 20.0  # seconds: the group was ready in 0.1 s on a 3-node cluster
EXIT_PLACEMENT = 2  # an infeasible placement is bad input for this cluster


class PlacementError(DqemuError):
    """The spec cannot be placed on this cluster; the message says what the cluster has."""


@dataclass(frozen=True)
class NodeView:
    """One alive Ray node, as placement sees it."""

    node_id: str
    ip: str
    labels: Mapping[str, str] = field(default_factory=dict)
    shards_total: float = 0.0  # its dqemu_shard resource
    shards_free: float = 0.0

    @property
    def name(self) -> str:
        label = self.labels.get(HOST_LABEL)
        return f"{label} ({self.ip})" if label else self.ip

    def matches(self, host: str) -> bool:
        return host == self.ip or any(
            v == host for k, v in self.labels.items() if k != NODE_ID_LABEL
        )


def nodes_from_ray(
    nodes: Sequence[Mapping[str, Any]], available: Mapping[str, Mapping[str, float]]
) -> list[NodeView]:
    """``ray.nodes()`` and the per-node available resources as NodeViews (alive ones)."""
    out = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        nid = n["NodeID"]
        out.append(NodeView(
            node_id=nid, ip=n["NodeManagerAddress"], labels=dict(n.get("Labels") or {}),
            shards_total=float(n.get("Resources", {}).get(SHARD_RESOURCE, 0.0)),
            shards_free=float(available.get(nid, {}).get(SHARD_RESOURCE, 0.0)),
        ))  # fmt: skip
    return sorted(out, key=lambda v: tuple(int(x) for x in v.ip.split(".") if x.isdigit()))


def describe(nodes: Sequence[NodeView]) -> str:
    """What the cluster has, for an error message."""
    if not nodes:
        return "the cluster has no alive node"
    parts = [
        f"{n.name}: {n.shards_free:g} of {n.shards_total:g} {SHARD_RESOURCE} free"
        for n in nodes
        if n.shards_total
    ]
    others = len(nodes) - len(parts)
    if not parts:
        return f"the cluster has {len(nodes)} node(s), none with the {SHARD_RESOURCE} resource"
    tail = f" (and {others} node(s) without {SHARD_RESOURCE})" if others else ""
    return f"the cluster has {'; '.join(parts)}{tail}"


def match_host(host: str, nodes: Sequence[NodeView]) -> NodeView:
    """The one node ``host`` (an IP or a label value) names."""
    found = [n for n in nodes if n.matches(host)]
    if not found:
        raise PlacementError(f"no Ray node is {host!r} (by IP or label): {describe(nodes)}")
    if len(found) > 1:
        names = ", ".join(n.name for n in found)
        raise PlacementError(f"host {host!r} names {len(found)} nodes ({names}): name one")
    return found[0]


@dataclass(frozen=True)
class Request:
    """A placement group to ask Ray for: one bundle per shard, in shard order."""

    strategy: str  # STRICT_PACK (one node) or STRICT_SPREAD
    bundles: tuple[dict[str, float], ...]
    selectors: tuple[dict[str, str], ...]  # per bundle: {} or the named node's id label

    @property
    def shards(self) -> int:
        return len(self.bundles)


def request(
    hosts: Sequence[str | None], nodes: Sequence[NodeView], *, allow_spanning: bool = False
) -> Request:
    """The placement group for shards whose spec hosts are ``hosts`` (by shard id)."""
    named = {k: match_host(h, nodes) for k, h in enumerate(hosts) if h is not None}
    bundle = {SHARD_RESOURCE: 1.0}
    if not allow_spanning:
        where = {n.node_id: n for n in named.values()}
        if len(where) > 1:
            by = ", ".join(f"shard {k} on {n.name}" for k, n in sorted(named.items()))
            raise PlacementError(
                f"the spec puts its shards on {len(where)} nodes ({by}), but until the DSM "
                "issue lands a VM must keep all its shards on one node (they share its guest "
                "RAM): give every shard the same host, or none"
            )
        sel = {NODE_ID_LABEL: next(iter(where))} if where else {}
        node = next(iter(where.values()), None)
        if node is not None and node.shards_total < len(hosts):
            raise PlacementError(
                f"{len(hosts)} shards on {node.name}, which has {node.shards_total:g} "
                f"{SHARD_RESOURCE}: {describe(nodes)}"
            )
        if node is None and not any(n.shards_total >= len(hosts) for n in nodes):
            raise PlacementError(
                f"no node can take all {len(hosts)} shards of the VM (one node per VM "
                f"until the DSM issue lands): {describe(nodes)}"
            )
        return Request("STRICT_PACK", tuple(dict(bundle) for _ in hosts),
                       tuple(dict(sel) for _ in hosts))  # fmt: skip
    taken = [n.node_id for n in named.values()]
    if len(set(taken)) != len(taken):
        raise PlacementError("two shards name the same node, but spread shards need one each")
    free = len([n for n in nodes if n.shards_total >= 1])
    if free < len(hosts):
        raise PlacementError(
            f"{len(hosts)} shards need {len(hosts)} nodes with {SHARD_RESOURCE}, one each: "
            f"{describe(nodes)}"
        )
    sels = tuple({NODE_ID_LABEL: named[k].node_id} if k in named else {} for k in range(len(hosts)))
    return Request("STRICT_SPREAD", tuple(dict(bundle) for _ in hosts), sels)


def not_ready(req: Request, waited: float, nodes: Sequence[NodeView]) -> PlacementError:
    where = "on one node" if req.strategy == "STRICT_PACK" else "one per node"
    return PlacementError(
        f"Ray could not place {req.shards} shard(s) {where} within {waited:g} s "
        f"(1 {SHARD_RESOURCE} each): {describe(nodes)}"
    )


# --- the Ray side -------------------------------------------------------------------------------


def cluster_nodes() -> list[NodeView]:
    import ray
    from ray._private.state import available_resources_per_node

    return nodes_from_ray(ray.nodes(), available_resources_per_node())


@dataclass
class Placement:
    """A reserved placement: the group, and the node of each shard (by shard id)."""

    group: Any  # ray.util.placement_group.PlacementGroup
    nodes: list[NodeView]

    def release(self) -> None:
        from ray.util import remove_placement_group

        remove_placement_group(self.group)


def reserve(
    hosts: Sequence[str | None], *, allow_spanning: bool = False, wait: float = PLACEMENT_WAIT
) -> Placement:
    """Reserve ``dqemu_shard`` for each shard (spec hosts ``hosts``) within ``wait`` s."""
    import ray
    from ray.util import placement_group, placement_group_table, remove_placement_group

    nodes = cluster_nodes()
    req = request(hosts, nodes, allow_spanning=allow_spanning)
    selectors = [dict(s) for s in req.selectors]
    pg = placement_group(
        [dict(b) for b in req.bundles],
        strategy=req.strategy,
        bundle_label_selector=selectors if any(selectors) else None,
    )
    started = time.monotonic()
    try:
        ray.get(pg.ready(), timeout=wait)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise not_ready(req, round(time.monotonic() - started, 1), cluster_nodes()) from None
    except BaseException:
        remove_placement_group(pg)
        raise
    table = placement_group_table(pg)
    by_id = {n.node_id: n for n in cluster_nodes()}
    per_bundle = table["bundles_to_node_id"]
    return Placement(pg, [by_id[per_bundle[i]] for i in range(req.shards)])
