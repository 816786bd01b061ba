"""The `/stats` document: one JSON-ready snapshot of everything the app can report.

Each source is optional and may fail on its own; a broken source yields an empty
section (and a log line) rather than a broken endpoint.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from livia.logs import scrub

log = logging.getLogger(__name__)


def _call(obj: object, method: str) -> Any:
    """`obj.method()`, or None when the object or method is missing or the call fails."""
    fn: Callable[[], Any] | None = getattr(obj, method, None)
    if fn is None or not callable(fn):
        return None
    try:
        value = fn()
    except Exception:
        log.exception("stats source %s.%s() failed", type(obj).__name__, method)
        return None
    if inspect.isawaitable(value):  # a sync snapshot is the contract; never block on it
        if inspect.iscoroutine(value):
            value.close()
        log.warning("%s.%s() is async; monitoring expects a plain call", type(obj).__name__, method)
        return None
    return value


def jsonable(value: Any) -> Any:
    """`value` made safe for strict JSON: non-finite floats become None, odd types str."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump())
    if hasattr(value, "__dataclass_fields__"):
        return jsonable({k: getattr(value, k) for k in value.__dataclass_fields__})
    return str(value)


def upstream_stats(state: object) -> dict[str, dict[str, Any]]:
    """The manager's `get_stats()`: upstream name -> its counters (empty without a manager).

    When the state names the upstreams it uses (`upstreams_in_use`), only those are shown,
    plus any other that has seen calls: a policy nothing calls (Slack's while Slack is
    off) is no part of this deployment.
    """
    raw = _call(getattr(state, "manager", None), "get_stats")
    if not isinstance(raw, Mapping):
        return {}
    stats = {str(k): dict(v) for k, v in raw.items() if isinstance(v, Mapping)}
    in_use = getattr(state, "upstreams_in_use", None)
    if isinstance(in_use, set | frozenset):
        stats = {k: v for k, v in stats.items() if k in in_use or v.get("total_requests")}
    return stats


def conversation_stats(state: object) -> dict[str, Any]:
    """The conversations' `stats()` (empty when absent)."""
    raw = _call(getattr(state, "conversations", None), "stats")
    return dict(raw) if isinstance(raw, Mapping) else {}


def tool_status(state: object) -> Any:
    """The agent's `toolbox.status()`: per MCP server, whether it is up and its tools."""
    toolbox = getattr(getattr(state, "agent", None), "toolbox", None)
    raw = _call(toolbox, "status")
    return raw if raw is not None else {}


def loop_stats(state: object) -> dict[str, Any]:
    """The event loop's lag (`livia.monitoring.loop_lag.LoopLag.stats`), empty when absent."""
    raw = _call(getattr(state, "loop_lag", None), "stats")
    return dict(raw) if isinstance(raw, Mapping) else {}


def scrubbed(value: Any) -> Any:
    """A JSON-ready `value` with every string scrubbed (`livia.logs.scrub`): no key, token
    or URL path (an MCP URL may carry its key) reaches `/stats` or the dashboard."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrubbed(v) for v in value]
    return value


def _instance(state: object) -> str | None:
    """The replica's instance id (None without a running Livia)."""
    value = getattr(state, "instance_id", None)
    return value if isinstance(value, str) else None


def snapshot(state: object) -> dict[str, Any]:
    """The `/stats` JSON: upstreams, conversations, tools, demo flag and the server time.

    `time` is Unix seconds, so a poller can turn counter deltas into rates. Every string
    in it is scrubbed of secrets, and URLs are shown as scheme and host only.
    """
    return scrubbed(
        jsonable(
            {
                "instance": _instance(state),
                "scope": "replica",  # this process's counters; /stats/deployment sums them
                "upstreams": upstream_stats(state),
                "conversations": conversation_stats(state),
                "tools": tool_status(state),
                "loop": loop_stats(state),
                "demo": bool(getattr(state, "demo", False)),
                "time": time.time(),
            }
        )
    )
