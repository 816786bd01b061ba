"""The whole deployment at a glance: every live replica's published snapshot, and sums.

Each replica publishes its `/stats` snapshot to the shared store with its heartbeat (about
once a second); any replica can then answer for all of them. Counters and gauges (whole
numbers) are summed; ratios, averages and percentiles are per replica only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from livia.monitoring.snapshot import jsonable, scrubbed


def summed(snapshots: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The whole-number leaves of `snapshots`, added up key by key (others left out)."""
    out: dict[str, Any] = {}
    for snap in snapshots:
        _add(out, snap)
    return out


def _add(into: dict[str, Any], value: Mapping[str, Any]) -> None:
    for key, item in value.items():
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            into[key] = into.get(key, 0) + item
        elif isinstance(item, Mapping):
            sub = into.setdefault(key, {})
            if isinstance(sub, dict):
                _add(sub, item)


async def deployment(state: Any) -> dict[str, Any]:
    """``{"instance", "replicas": [...], "totals": {...}}`` from the store's live instances."""
    store = getattr(state, "store", None)
    if store is None:
        return {"instance": None, "replicas": [], "totals": {}}
    replicas = []
    for inst in await store.instances():
        snap = inst.snapshot
        replicas.append(
            {
                "instance": inst.instance_id,
                "pid": inst.pid,
                "started_at": inst.started_at,
                "heartbeat_age": round(inst.heartbeat_age, 3),
                "self": inst.owner == store.owner,
                "conversations": snap.get("conversations", {}),
                "upstreams": snap.get("upstreams", {}),
            }
        )
    totals = summed(
        [{"conversations": r["conversations"], "upstreams": r["upstreams"]} for r in replicas]
    )
    return scrubbed(
        jsonable(
            {
                "instance": getattr(state, "instance_id", None),
                "scope": "deployment",
                "replicas": replicas,
                "totals": totals,
            }
        )
    )
