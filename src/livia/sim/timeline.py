"""Which requests were in flight when: spans, the in-flight count and its peak.

Benchmarks plot concurrency over time from this, and tests check that a client never
had more requests running than a limit allows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Span:
    """One request: when it arrived, when it ended (None while running) and how."""

    start: float
    end: float | None = None
    outcome: str = "running"
    #: False for a request refused on arrival (it was never in flight).
    ran: bool = True


class Timeline:
    """In-flight bookkeeping for one simulated server.

    Invariants: `in_flight` equals the number of spans begun and not yet ended (rejected
    requests are recorded as zero-length spans and never count), and `peak` is the largest
    value `in_flight` has had since the last `reset()`. At most `max_spans` spans are kept
    (later ones still count, `spans_dropped` says how many were not kept), so memory stays
    bounded however long the simulator runs.
    """

    def __init__(
        self, max_spans: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_spans = max_spans
        self.clock = clock
        self.t0 = clock()
        self.started_at = time.time()
        self.spans: list[Span] = []
        self.spans_dropped = 0
        self.in_flight = 0
        self.peak = 0

    def begin(self, now: float | None = None) -> Span:
        """A request starts running; the caller must `end()` it exactly once."""
        span = Span(self.clock() if now is None else now)
        self.in_flight += 1
        if self.in_flight > self.peak:
            self.peak = self.in_flight
        self._keep(span)
        return span

    def end(self, span: Span, outcome: str) -> None:
        """A running request is over."""
        span.end = self.clock()
        span.outcome = outcome
        self.in_flight -= 1

    def instant(self, outcome: str, now: float | None = None) -> None:
        """A request answered without running (e.g. refused with 429)."""
        t = self.clock() if now is None else now
        self._keep(Span(t, t, outcome, ran=False))

    def _keep(self, span: Span) -> None:
        if len(self.spans) < self.max_spans:
            self.spans.append(span)
        else:
            self.spans_dropped += 1

    def series(self) -> list[tuple[float, int]]:
        """(seconds since t0, requests in flight) after each change, in time order.

        Computed from the kept spans; requests still running at a `reset()` are not in
        them, so right after a reset the series can start below `in_flight`.
        """
        changes: list[tuple[float, int]] = []
        for span in self.spans:
            if not span.ran:
                continue
            changes.append((span.start, 1))
            if span.end is not None:
                changes.append((span.end, -1))
        changes.sort(key=lambda c: (c[0], c[1]))
        out: list[tuple[float, int]] = []
        level = 0
        for t, step in changes:
            level += step
            out.append((round(t - self.t0, 6), level))
        return out

    def spans_json(self) -> list[dict[str, Any]]:
        """The kept spans as JSON-ready dicts, times in seconds since t0."""
        t0 = self.t0
        return [
            {
                "start": round(s.start - t0, 6),
                "end": None if s.end is None else round(s.end - t0, 6),
                "outcome": s.outcome,
                "ran": s.ran,
            }
            for s in self.spans
        ]

    def reset(self) -> None:
        """Start a new measurement; requests still running keep counting in `in_flight`."""
        self.t0 = self.clock()
        self.started_at = time.time()
        self.spans = []
        self.spans_dropped = 0
        self.peak = self.in_flight
