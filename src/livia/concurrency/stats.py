"""Live statistics of one upstream: counters, gauges and recent latency percentiles."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

#: How many recent attempt latencies the percentiles are computed over.
LATENCY_SAMPLES = 2048


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, by nearest rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


def _defaults() -> dict[str, Any]:
    fresh = ApiStats()
    return {f.name: getattr(fresh, f.name) for f in fields(ApiStats)}


@dataclass(slots=True)
class ApiStats:
    """Counters for one upstream. Calls are what callers asked for; attempts what was sent."""

    total_requests: int = 0  # calls started
    successful_requests: int = 0
    failed_requests: int = 0
    cancelled_requests: int = 0
    attempts: int = 0
    retries: int = 0
    http_429: int = 0
    rate_limit_waits: int = 0  # calls that had to wait for capacity
    total_wait_time: float = 0.0
    capacity_exhausted: int = 0
    concurrent_requests: int = 0  # in flight now
    peak_concurrent: int = 0
    waiting: int = 0  # waiting for capacity now
    backing_off: int = 0  # sleeping between attempts now (holding no slot)
    total_response_time: float = 0.0  # summed over successful attempts
    last_error: str = ""
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def reset(self) -> None:
        """Zero the counters in place; gauges (in flight, waiting, backing off) are kept."""
        keep = {"concurrent_requests", "waiting", "backing_off", "latencies"}
        for name, value in _defaults().items():
            if name not in keep:
                setattr(self, name, value)
        self.peak_concurrent = self.concurrent_requests
        self.latencies.clear()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view; the first six keys are the reference ones from DESIGN.md."""
        finished = self.successful_requests + self.failed_requests
        lat = sorted(self.latencies)
        return {
            "total_requests": self.total_requests,
            "successful_requests": self.successful_requests,
            "failed_requests": self.failed_requests,
            "success_rate": (self.successful_requests / finished) if finished else 1.0,
            "concurrent_requests": self.concurrent_requests,
            "average_response_time": (
                self.total_response_time / self.successful_requests
                if self.successful_requests
                else 0.0
            ),
            "in_flight": self.concurrent_requests,
            "peak_concurrent": self.peak_concurrent,
            "waiting": self.waiting,
            "backing_off": self.backing_off,
            "cancelled_requests": self.cancelled_requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "http_429": self.http_429,
            "rate_limit_waits": self.rate_limit_waits,
            "total_wait_time": round(self.total_wait_time, 6),
            "capacity_exhausted": self.capacity_exhausted,
            "latency_p50": percentile(lat, 0.50),
            "latency_p95": percentile(lat, 0.95),
            "latency_p99": percentile(lat, 0.99),
            "last_error": self.last_error,
        }
