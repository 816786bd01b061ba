"""What one benchmark job measured: per-call records and the row the report shows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from livia.bench.upstreams import UpstreamMeasure

#: Attempt outcomes, as the client saw them.
OK, REFUSED, FAILED = "ok", "refused", "failed"


@dataclass(slots=True)
class AttemptRecord:
    """One attempt of a call, in seconds since the job's start."""

    start: float
    end: float = math.nan
    outcome: str = ""


@dataclass(slots=True)
class CallRecord:
    """One call a user made, from the moment it was asked for to its end."""

    user: str
    api: str
    group: str
    submitted: float
    finished: float = math.nan
    ok: bool = False
    error: str = ""
    attempts: list[AttemptRecord] = field(default_factory=list)

    @property
    def latency(self) -> float:
        """Seconds the user waited for this call (queueing and retries included)."""
        return self.finished - self.submitted

    def count(self, outcome: str) -> int:
        """Attempts that ended with `outcome`."""
        return sum(1 for a in self.attempts if a.outcome == outcome)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(slots=True)
class Result:
    """One (scenario, strategy) row: the measured figures next to what was possible."""

    scenario: str
    strategy: str
    calls: int
    succeeded: int
    attempts: int
    limits: str
    bound_s: float
    ideal_s: float
    makespan_s: float
    peak_concurrency: dict[str, int]
    over_limit: int
    http_429: int
    p50_s: float
    p95_s: float
    notes: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None
    upstreams: list[UpstreamMeasure] = field(default_factory=list, repr=False)
    records: list[CallRecord] = field(default_factory=list, repr=False)

    @property
    def against_ideal(self) -> bool:
        """Whether the row is judged against the ideal schedule rather than the bound.

        When a late failure's backoff makes the closed-form bound unreachable for any
        scheduler, the ideal first-come-first-served schedule of the same calls and
        failures is the fair yardstick.
        """
        return self.ideal_s > self.bound_s * 1.01

    @property
    def target_s(self) -> float:
        """The makespan the row is judged against: the bound, or the ideal schedule's."""
        return self.ideal_s if self.against_ideal else self.bound_s

    @property
    def efficiency(self) -> float:
        """The target over the measured makespan (1.0: not a moment lost); what the verdict uses."""
        return self.target_s / self.makespan_s if self.makespan_s > 0 else math.nan

    @property
    def bound_efficiency(self) -> float:
        """The closed-form bound over the measured makespan."""
        return self.bound_s / self.makespan_s if self.makespan_s > 0 else math.nan

    @property
    def ideal_efficiency(self) -> float:
        """The ideal scheduler's makespan over the measured one."""
        return self.ideal_s / self.makespan_s if self.makespan_s > 0 else math.nan

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.calls if self.calls else 1.0

    def to_json(self) -> dict[str, Any]:
        """The row as `--json` writes it (times in seconds, rounded to the millisecond)."""
        out: dict[str, Any] = {
            "name": self.scenario,
            "strategy": self.strategy,
            "calls": self.calls,
            "succeeded": self.succeeded,
            "success_rate": round(self.success_rate, 4),
            "attempts": self.attempts,
            "limits": self.limits,
            "bound_s": _r(self.bound_s),
            "ideal_s": _r(self.ideal_s),
            "makespan_s": _r(self.makespan_s),
            "efficiency": _r(self.efficiency, 4),
            "efficiency_against": "ideal" if self.against_ideal else "bound",
            "bound_efficiency": _r(self.bound_efficiency, 4),
            "ideal_efficiency": _r(self.ideal_efficiency, 4),
            "peak_concurrency": dict(self.peak_concurrency),
            "over_limit": self.over_limit,
            "http_429": self.http_429,
            "p50_s": _r(self.p50_s),
            "p95_s": _r(self.p95_s),
            "notes": self.notes,
        }
        if self.speedup is not None:
            out["speedup"] = round(self.speedup, 2)
        out.update({k: _r(v) for k, v in self.extra.items()})
        return out


def _r(value: float, digits: int = 3) -> float | None:
    return None if math.isnan(value) else round(value, digits)
