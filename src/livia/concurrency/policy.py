"""Per-upstream limits and retry settings: plain data, one `ApiPolicy` per upstream."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class ApiPolicy:
    """How one upstream may be called.

    Every rate limit counts attempt *starts* (retries included) in a sliding window, the
    way upstreams count requests. A limit of 0 switches that limit off.
    """

    max_concurrent: int = 8
    requests_per_minute: int = 0
    requests_per_hour: int = 0
    tokens_per_minute: int = 0
    retry_attempts: int = 3
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    #: Random extra wait added to each backoff, as a fraction of ``backoff_min``.
    backoff_jitter: float = 0.1
    #: Most seconds a call may wait for capacity before it fails fast (0 = no bound).
    max_wait: float = 300.0
    #: Seconds one attempt may run before it is cancelled and counted as a timeout (0 = none).
    attempt_timeout: float = 0.0
    #: Seconds added to every window, so starts are spaced a little wider than the
    #: upstream's own window: a request admitted the instant the window frees may arrive
    #: a few ms after an earlier one that travelled faster, and must still fit.
    window_margin: float = 0.1
    #: Consecutive failed calls that open the circuit (0 = no breaker).
    circuit_failures: int = 5
    #: Seconds the circuit stays open before one probe call is let through.
    circuit_cooloff: float = 30.0

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        for name in ("requests_per_minute", "requests_per_hour", "tokens_per_minute"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (off) or positive")
        if self.retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")
        if not 0 <= self.backoff_min <= self.backoff_max:
            raise ValueError("backoff_min must be between 0 and backoff_max")
        for name in (
            "backoff_jitter",
            "max_wait",
            "attempt_timeout",
            "window_margin",
            "circuit_cooloff",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.circuit_failures < 0:
            raise ValueError("circuit_failures must not be negative")

    @property
    def windows(self) -> tuple[tuple[str, int, float], ...]:
        """The request windows in force, as (name, limit, the upstream's seconds).

        Admission spaces starts over ``seconds + window_margin``.
        """
        out = []
        if self.requests_per_minute:
            out.append(("requests_per_minute", self.requests_per_minute, 60.0))
        if self.requests_per_hour:
            out.append(("requests_per_hour", self.requests_per_hour, 3600.0))
        return tuple(out)

    @property
    def token_window(self) -> float:
        """Seconds of the tokens-per-minute window, `window_margin` included."""
        return 60.0 + self.window_margin

    def updated(self, **changes: Any) -> ApiPolicy:
        """A copy with some fields changed (unknown names raise `TypeError`)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown ApiPolicy field(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)


#: The reference behaviour from DESIGN.md, plus Slack's Web API (Tier 3: ~50/min).
DEFAULT_POLICIES: dict[str, ApiPolicy] = {
    "openai": ApiPolicy(
        max_concurrent=8,
        requests_per_minute=500,
        requests_per_hour=10_000,
        retry_attempts=5,
        backoff_min=1.0,
        backoff_max=60.0,
    ),
    "zapier": ApiPolicy(
        max_concurrent=3,
        requests_per_minute=60,
        requests_per_hour=75,
        retry_attempts=3,
        backoff_min=2.0,
        backoff_max=30.0,
    ),
    "slack": ApiPolicy(
        max_concurrent=4,
        requests_per_minute=50,
        retry_attempts=3,
        backoff_min=1.0,
        backoff_max=30.0,
    ),
}


def default_policies() -> dict[str, ApiPolicy]:
    """A fresh copy of the reference policies."""
    return dict(DEFAULT_POLICIES)
