"""Prometheus metrics: a collector that reads the live app at scrape time.

Nothing is counted twice: the manager and the conversations already keep their
counters, so the collector only translates their snapshots into metric families.
Each app gets its own `CollectorRegistry` (see `metrics_registry`), never the global one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from livia.monitoring.snapshot import (
    conversation_stats,
    loop_stats,
    tool_status,
    upstream_stats,
)

log = logging.getLogger(__name__)

#: (metric suffix, stats key, help) of the per-upstream counters.
UPSTREAM_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("requests", "total_requests", "Calls started through the manager."),
    ("requests_successful", "successful_requests", "Calls that succeeded."),
    ("requests_failed", "failed_requests", "Calls that failed after their last attempt."),
    ("requests_cancelled", "cancelled_requests", "Calls cancelled by their caller."),
    ("attempts", "attempts", "Attempts sent upstream (retries included)."),
    ("retries", "retries", "Attempts that were retries."),
    ("http_429", "http_429", "429 Too Many Requests answers received."),
    ("rate_limit_waits", "rate_limit_waits", "Calls that had to wait for capacity."),
    ("wait_seconds", "total_wait_time", "Seconds spent waiting for capacity."),
    ("capacity_exhausted", "capacity_exhausted", "Calls refused fast: no capacity in time."),
)

#: (metric suffix, stats key, help) of the per-upstream gauges.
UPSTREAM_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("in_flight", "concurrent_requests", "Calls running now."),
    ("peak_in_flight", "peak_concurrent", "Most calls ever running at once."),
    ("waiting", "waiting", "Calls waiting for capacity now."),
    ("backing_off", "backing_off", "Calls sleeping between attempts now."),
    ("max_concurrent", "max_concurrent", "The upstream's concurrency limit."),
    ("success_ratio", "success_rate", "Successful / finished calls (0..1)."),
    ("average_response_seconds", "average_response_time", "Mean latency of successes."),
)

CIRCUIT_STATES = ("closed", "open", "half_open")

#: Conversation keys with a fixed meaning: key -> (metric name, type, help).
CONVERSATION_METRICS: dict[str, tuple[str, str, str]] = {
    "active": ("livia_conversations_active", "gauge", "Conversations being answered now."),
    "queued": ("livia_conversations_queued", "gauge", "Accepted messages not started yet."),
    "waiting_conversations": (
        "livia_conversations_waiting",
        "gauge",
        "Conversations waiting for a free slot.",
    ),
    "max_active": ("livia_conversations_max_active", "gauge", "Conversations answered at once."),
    "max_queued": ("livia_conversations_max_queued", "gauge", "Queued messages before 503."),
    "conversations": ("livia_conversations_known", "gauge", "Conversations with a lane now."),
    "accepted": ("livia_conversations_accepted", "counter", "Messages accepted."),
    "answered": ("livia_conversations_answered", "counter", "Messages answered."),
    "failed": ("livia_conversations_failed", "counter", "Messages whose turn failed."),
    "duplicates": ("livia_conversations_duplicates", "counter", "Repeated message ids."),
    "rejected": ("livia_conversations_rejected", "counter", "Messages refused: queue full."),
    "recovered": ("livia_conversations_recovered", "counter", "Messages resumed after restart."),
    "average_turn_seconds": (
        "livia_conversations_average_turn_seconds",
        "gauge",
        "Mean seconds per answered or failed turn.",
    ),
}

_NAME_SAFE = re.compile(r"[^a-zA-Z0-9_]")


def _number(value: Any) -> float | None:
    """A finite float from a stats value, or None for anything else (bools count as 0/1)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        f = float(value)
        return f if math.isfinite(f) else None
    return None


class LiviaCollector(Collector):
    """Reads `state` (the app's `livia` object) at each scrape and yields metric families.

    `state` is a zero-argument callable so the collector always sees the live object,
    even when the app replaces it (tests, restarts of the lifespan).
    """

    def __init__(self, state: Callable[[], object]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        if state is None:
            return
        instance = getattr(state, "instance_id", None)
        for metric in self._families(state):
            if isinstance(instance, str):  # which replica: sums and splits across a deployment
                metric.samples = [
                    s._replace(labels={**s.labels, "instance": instance}) for s in metric.samples
                ]
            yield metric

    def _families(self, state: object) -> Iterator[Metric]:
        yield from self._upstreams(upstream_stats(state))
        yield from self._coordination(state)
        yield from self._conversations(conversation_stats(state))
        yield from self._tools(tool_status(state))
        yield from self._loop(loop_stats(state))
        demo = GaugeMetricFamily("livia_demo_mode", "1 when answers come from the simulator.")
        demo.add_metric([], 1.0 if getattr(state, "demo", False) else 0.0)
        yield demo

    @staticmethod
    def _coordination(state: object) -> Iterator[Metric]:
        """Where the limits are kept now: shared through Redis, local, or waiting for Redis."""
        describe = getattr(getattr(state, "manager", None), "coordination", None)
        info = describe() if callable(describe) else None
        if not isinstance(info, Mapping):
            return
        backend, current = str(info.get("backend", "")), str(info.get("mode", ""))
        mode = GaugeMetricFamily(
            "livia_coordination_mode",
            "1 for the mode the limits are kept in: shared (Redis), local (this process, or"
            " its share of each limit while Redis is away), waiting (calls wait for Redis).",
            labels=["backend", "mode"],
        )
        for name in ("shared", "local", "waiting"):
            mode.add_metric([backend, name], 1.0 if current == name else 0.0)
        yield mode
        replicas = _number(info.get("replicas"))
        if replicas is not None:
            gauge = GaugeMetricFamily(
                "livia_coordination_replicas", "Replicas last seen sharing the limits."
            )
            gauge.add_metric([], replicas)
            yield gauge

    def _upstreams(self, stats: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        for suffix, key, help_text in UPSTREAM_COUNTERS:
            counter = CounterMetricFamily(f"livia_upstream_{suffix}", help_text, labels=["api"])
            for api, s in stats.items():
                if (v := _number(s.get(key))) is not None:
                    counter.add_metric([api], v)
            yield counter
        for suffix, key, help_text in UPSTREAM_GAUGES:
            gauge = GaugeMetricFamily(f"livia_upstream_{suffix}", help_text, labels=["api"])
            for api, s in stats.items():
                if (v := _number(s.get(key))) is not None:
                    gauge.add_metric([api], v)
            yield gauge
        yield self._latency(stats)
        yield from self._windows(stats)
        circuit = GaugeMetricFamily(
            "livia_upstream_circuit_state",
            "1 for the circuit breaker's current state (closed, open, half_open).",
            labels=["api", "state"],
        )
        for api, s in stats.items():
            current = s.get("circuit_state")
            if isinstance(current, str):
                for name in CIRCUIT_STATES:
                    circuit.add_metric([api, name], 1.0 if current == name else 0.0)
        yield circuit

    @staticmethod
    def _latency(stats: Mapping[str, Mapping[str, Any]]) -> Metric:
        """Recent latency percentiles as a summary; sum and count derive from the mean."""
        name = "livia_upstream_latency_seconds"
        summary = Metric(
            name, "Latency of recent attempts (quantiles over a sliding sample).", "summary"
        )
        for api, s in stats.items():
            for q, key in (
                ("0.5", "latency_p50"),
                ("0.95", "latency_p95"),
                ("0.99", "latency_p99"),
            ):
                if (v := _number(s.get(key))) is not None:
                    summary.add_sample(name, {"api": api, "quantile": q}, v)
            count = _number(s.get("successful_requests"))
            mean = _number(s.get("average_response_time"))
            if count is not None and mean is not None:
                summary.add_sample(f"{name}_count", {"api": api}, count)
                summary.add_sample(f"{name}_sum", {"api": api}, count * mean)
        return summary

    @staticmethod
    def _windows(stats: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        """Per upstream and limit: how much of the window is used, of how much."""
        labels = ["api", "limit"]
        used = GaugeMetricFamily("livia_upstream_window_used", "Used in the window.", labels=labels)
        limit = GaugeMetricFamily(
            "livia_upstream_window_limit", "The window's limit.", labels=labels
        )
        ratio = GaugeMetricFamily(
            "livia_upstream_window_usage_ratio", "used / limit (0..1).", labels=labels
        )
        for api, s in stats.items():
            limits = s.get("limits")
            if not isinstance(limits, Mapping):
                continue
            for lname, w in limits.items():
                if not isinstance(w, Mapping):
                    continue
                u, cap = _number(w.get("used")), _number(w.get("limit"))
                if u is not None:
                    used.add_metric([api, str(lname)], u)
                if cap is not None:
                    limit.add_metric([api, str(lname)], cap)
                if u is not None and cap:
                    ratio.add_metric([api, str(lname)], u / cap)
        yield used
        yield limit
        yield ratio

    @staticmethod
    def _conversations(stats: Mapping[str, Any]) -> Iterator[Metric]:
        for key, (name, kind, help_text) in CONVERSATION_METRICS.items():
            family = (
                CounterMetricFamily(name, help_text)
                if kind == "counter"
                else GaugeMetricFamily(name, help_text)
            )
            if (v := _number(stats.get(key))) is not None:
                family.add_metric([], v)
            yield family
        taken = {name for name, _, _ in CONVERSATION_METRICS.values()}
        for key, value in stats.items():  # any further numbers the conversations report
            name = "livia_conversations_" + _NAME_SAFE.sub("_", str(key))
            if key in CONVERSATION_METRICS or name in taken or isinstance(value, bool):
                continue
            if (v := _number(value)) is not None:
                taken.add(name)
                extra = GaugeMetricFamily(name, f"conversations stats: {key}")
                extra.add_metric([], v)
                yield extra

    @staticmethod
    def _loop(stats: Mapping[str, Any]) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "livia_event_loop_lag_seconds",
            "How late the event loop ran its timers, over the last minute.",
            labels=["quantile"],
        )
        for quantile, key in (("0.5", "lag_p50_ms"), ("0.99", "lag_p99_ms"), ("1", "lag_max_ms")):
            if (v := _number(stats.get(key))) is not None:
                lag.add_metric([quantile], v / 1000)
        yield lag

    @staticmethod
    def _tools(status: Any) -> Iterator[Metric]:
        """Per MCP server: up (1/0) and the number of tools it offers, when reported."""
        up = GaugeMetricFamily(
            "livia_mcp_server_up", "1 when the MCP server is connected.", labels=["server"]
        )
        tools = GaugeMetricFamily(
            "livia_mcp_server_tools", "Tools the server offers.", labels=["server"]
        )
        servers = status.get("servers", status) if isinstance(status, Mapping) else {}
        if isinstance(servers, Mapping):
            for server, info in servers.items():
                if not isinstance(info, Mapping):
                    continue
                flag = (
                    info["state"] == "connected"
                    if "state" in info
                    else next((info[k] for k in ("connected", "up", "ok") if k in info), None)
                )
                if isinstance(flag, bool):
                    up.add_metric([str(server)], 1.0 if flag else 0.0)
                count = info.get("tools")
                n = len(count) if isinstance(count, list | tuple) else _number(count)
                if n is not None:
                    tools.add_metric([str(server)], float(n))
        yield up
        yield tools


def metrics_registry(app: Any) -> CollectorRegistry:
    """The app's own registry (made on first use): the Livia collector plus process metrics.

    Other parts may register more collectors on it; it lives on `app.state`.
    """
    registry: CollectorRegistry | None = getattr(app.state, "livia_metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(LiviaCollector(lambda: getattr(app.state, "livia", None)))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        app.state.livia_metrics_registry = registry
    return registry
