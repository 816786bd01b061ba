"""Sliding-window limits, as upstreams enforce them, and OpenAI's reset-duration format."""

from __future__ import annotations

import math
import re
from collections import deque


class SlidingWindow:
    """At most `limit` units (requests or tokens) may start in any `seconds`-long window.

    Invariants: `_events` holds (time, cost) in arrival order, `_used` is the sum of their
    costs, and after `_expire(now)` every event is younger than `seconds` (an event at
    exactly ``now - seconds`` has left the window). Times come from the caller (monotonic
    seconds), which keeps the class deterministic and testable. Checking and recording are
    separate calls; callers on one event loop make them without an `await` in between, so
    admission is atomic. Expiry is amortised O(1) per event.
    """

    __slots__ = ("_events", "_used", "limit", "seconds")

    def __init__(self, limit: int, seconds: float) -> None:
        if limit < 1:
            raise ValueError("a window's limit must be at least 1")
        if seconds <= 0:
            raise ValueError("a window's length must be positive")
        self.limit = limit
        self.seconds = seconds
        self._events: deque[tuple[float, int]] = deque()
        self._used = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.seconds
        events = self._events
        while events and events[0][0] <= horizon:
            self._used -= events.popleft()[1]

    def used(self, now: float) -> int:
        """Units counted in the window ending at `now`."""
        self._expire(now)
        return self._used

    def remaining(self, now: float) -> int:
        """Units that may still start at `now`."""
        return max(0, self.limit - self.used(now))

    def admits(self, now: float, cost: int = 1) -> bool:
        """Whether `cost` more units fit at `now`."""
        return self.used(now) + cost <= self.limit

    def add(self, now: float, cost: int = 1) -> None:
        """Count `cost` units as started at `now` (whether or not they fit)."""
        self._expire(now)
        self._events.append((now, cost))
        self._used += cost

    def wait(self, now: float, cost: int = 1) -> float:
        """Seconds from `now` until `cost` more units fit (0 if they fit now, inf if never)."""
        if cost > self.limit:
            return math.inf
        excess = self.used(now) + cost - self.limit
        if excess <= 0:
            return 0.0
        freed = 0
        for started, units in self._events:
            freed += units
            if freed >= excess:
                return max(0.0, started + self.seconds - now)
        return 0.0  # unreachable: the events sum to more than `excess`

    def next_free(self, now: float) -> float:
        """Seconds until the oldest counted unit leaves the window (0 if it is empty)."""
        self._expire(now)
        if not self._events:
            return 0.0
        return max(0.0, self._events[0][0] + self.seconds - now)

    def clear(self) -> None:
        """Forget every counted unit."""
        self._events.clear()
        self._used = 0


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's `x-ratelimit-reset-*` headers write it (Go's format).

    Rounded up to whole milliseconds: 0.02 -> "20ms", 1 -> "1s", 17.5 -> "17.5s",
    360 -> "6m0s", 3723.5 -> "1h2m3.5s".
    """
    if not math.isfinite(seconds):
        seconds = 24 * 3600.0
    ms = math.ceil(round(seconds * 1000, 6))
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in an OpenAI/Go duration such as "1h2m3.5s" or "20ms" (the inverse of
    `format_duration`). Raises `ValueError` on anything else."""
    text = text.strip()
    pos, total = 0, 0.0
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * scale[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total
