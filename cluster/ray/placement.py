"""Where a VM's shards run on a Ray cluster.

A shard's ``host`` in the spec names a Ray node: its node IP, or the value of a node label
(``ray start --labels dqemu-host=NAME``; any label's value matches). Every shard reserves
one unit of the custom resource ``dqemu_shard`` on its node, through one placement group
per VM:

- ``memory_mode = "shared"``: the shards share the guest RAM of one node, so the VM keeps
  every shard on one node: STRICT_PACK, on the node its hosts name if they name one (a
  spec whose hosts name two nodes is refused).
- ``memory_mode = "dsm"``: the VM spans nodes. Shards that name a node go there (one
  bundle per named node, pinned by its node-id label, holding one ``dqemu_shard`` per
  shard); every shard that names none gets a node of its own, which no other shard of the
  VM uses: the bundles are STRICT_SPREAD, one per node.

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
    """A placement group to ask Ray for, and which of its bundles each shard takes."""

    strategy: str  # STRICT_PACK (one node) or STRICT_SPREAD (one node per bundle)
    bundles: tuple[dict[str, float], ...]
    selectors: tuple[dict[str, str], ...]  # per bundle: {} or the named node's id label
    bundle_of: tuple[int, ...]  # per shard (by id): the index of its bundle

    @property
    def shards(self) -> int:
        return len(self.bundle_of)


def request(
    hosts: Sequence[str | None], nodes: Sequence[NodeView], *, spanning: bool = False
) -> Request:
    """The placement group for shards whose spec hosts are ``hosts`` (by shard id);
    ``spanning``: the VM may span nodes (``memory_mode = "dsm"``)."""
    named = {k: match_host(h, nodes) for k, h in enumerate(hosts) if h is not None}
    if not spanning:
        return _one_node(hosts, named, nodes)
    # one bundle per named node (its shards' count), then one per shard that names none
    order: list[NodeView] = list({n.node_id: n for n in named.values()}.values())
    count = {n.node_id: sum(1 for m in named.values() if m.node_id == n.node_id) for n in order}
    for n in order:
        if n.shards_total < count[n.node_id]:
            raise PlacementError(
                f"{count[n.node_id]} shards on {n.name}, which has {n.shards_total:g} "
                f"{SHARD_RESOURCE}: {describe(nodes)}"
            )
    free = [k for k in range(len(hosts)) if k not in named]
    others = [n for n in nodes if n.shards_total >= 1 and n.node_id not in count]
    if len(free) > len(others):
        taken = f" besides the {len(order)} the spec names" if order else ""
        raise PlacementError(
            f"{len(free)} shard(s) without a host need {len(free)} node(s) with "
            f'{SHARD_RESOURCE}{taken}, one each (memory_mode "dsm" spreads them): '
            f"{describe(nodes)}"
        )
    index = {n.node_id: i for i, n in enumerate(order)}
    bundle_of = [0] * len(hosts)
    for k in range(len(hosts)):
        bundle_of[k] = index[named[k].node_id] if k in named else len(order) + free.index(k)
    bundles = [{SHARD_RESOURCE: float(count[n.node_id])} for n in order]
    bundles += [{SHARD_RESOURCE: 1.0} for _ in free]
    selectors = [{NODE_ID_LABEL: n.node_id} for n in order] + [{} for _ in free]
    strategy = "STRICT_SPREAD" if len(bundles) > 1 else "STRICT_PACK"
    return Request(strategy, tuple(bundles), tuple(selectors), tuple(bundle_of))


def _one_node(
    hosts: Sequence[str | None], named: Mapping[int, NodeView], nodes: Sequence[NodeView]
) -> Request:
    """Every shard on one node (shared guest RAM): STRICT_PACK."""
    where = {n.node_id: n for n in named.values()}
    if len(where) > 1:
        by = ", ".join(f"shard {k} on {n.name}" for k, n in sorted(named.items()))
        raise PlacementError(
            f"the spec puts its shards on {len(where)} nodes ({by}), but with memory_mode "
            '"shared" a VM keeps all its shards on one node (they share its guest RAM): '
            'give every shard the same host, or none, or set memory_mode = "dsm"'
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
            f'no node can take all {len(hosts)} shards of the VM (memory_mode "shared" '
            f'keeps a VM on one node; "dsm" spans nodes): {describe(nodes)}'
        )
    bundle = {SHARD_RESOURCE: 1.0}
    return Request("STRICT_PACK", tuple(dict(bundle) for _ in hosts),
                   tuple(dict(sel) for _ in hosts), tuple(range(len(hosts))))  # fmt: skip


def not_ready(req: Request, waited: float, nodes: Sequence[NodeView]) -> PlacementError:
    where = "on one node" if req.strategy == "STRICT_PACK" else "over several nodes"
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
    hosts: Sequence[str | None], *, spanning: bool = False, wait: float = PLACEMENT_WAIT
) -> Placement:
    """Reserve ``dqemu_shard`` for each shard (spec hosts ``hosts``) within ``wait`` s;
    ``spanning``: the VM may span nodes (see the module's doc)."""
    import ray
    from ray.util import placement_group, placement_group_table, remove_placement_group

    nodes = cluster_nodes()
    req = request(hosts, nodes, spanning=spanning)
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
    return Placement(pg, [by_id[per_bundle[b]] for b in req.bundle_of])
