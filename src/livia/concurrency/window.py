"""Sliding windows of request starts and token spend, with O(1) admission.

A `RequestWindow` remembers only the last `limit` start times (a ring), which is all
that is needed to decide exactly whether one more start fits in any window of the
stated length: it fits when fewer than `limit` starts are remembered, or when the
oldest of the last `limit` starts is at least `seconds` old.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


class RequestWindow:
    """At most `limit` starts in any sliding window of `seconds`.

    Invariants: ``len(starts) <= limit``; ``starts`` is non-decreasing; after
    ``record(t)`` the starts in ``(t - seconds, t]`` number at most ``limit``.
    Memory is bounded by ``limit``; ``wait``/``record`` are O(1).
    """

    __slots__ = ("limit", "name", "seconds", "starts")

    def __init__(self, name: str, limit: int, seconds: float) -> None:
        self.name = name
        self.limit = limit
        self.seconds = seconds
        self.starts: deque[float] = deque(maxlen=limit)

    def wait(self, now: float) -> float:
        """Seconds until one more start fits (0.0 when it fits now)."""
        if len(self.starts) < self.limit:
            return 0.0
        return max(0.0, self.starts[0] + self.seconds - now)

    def wait_for(self, now: float, ahead: int) -> float:
        """A lower bound on the wait of a start with `ahead` starts queued before it."""
        free = self.limit - len(self.starts)
        if ahead < free:
            return 0.0
        rounds, idx = divmod(ahead - free, self.limit)
        if idx >= len(self.starts):  # pragma: no cover - defensive (ring not full yet)
            return rounds * self.seconds
        return max(0.0, self.starts[idx] + self.seconds * (rounds + 1) - now)

    def record(self, now: float) -> None:
        """Count one start at `now` (the caller checked `wait(now) == 0`)."""
        self.starts.append(now)

    def used(self, now: float) -> int:
        """Starts in the window ending at `now` (O(log n): for statistics, not admission)."""
        cutoff = now - self.seconds
        starts = self.starts
        lo, hi = 0, len(starts)
        while lo < hi:
            mid = (lo + hi) // 2
            if starts[mid] <= cutoff:
                lo = mid + 1
            else:
                hi = mid
        return len(starts) - lo


@dataclass(slots=True)
class TokenSpend:
    """One call's token reservation; `tokens` is corrected when usage is known."""

    at: float
    tokens: int


class TokenWindow:
    """At most `limit` tokens reserved in any sliding window of `seconds`.

    Each admitted call reserves its estimate; `settle` replaces it with the real usage.
    A call larger than the whole limit is admitted only into an empty window, so it
    cannot wait forever. Expiry is amortised O(1) per call.
    """

    __slots__ = ("cutoff", "entries", "limit", "seconds", "total")

    def __init__(self, limit: int, seconds: float = 60.0) -> None:
        self.limit = limit
        self.seconds = seconds
        self.entries: deque[TokenSpend] = deque()
        self.total = 0
        self.cutoff = -math.inf  # entries at or before this have left `entries`

    def _expire(self, now: float) -> None:
        cutoff = self.cutoff = max(self.cutoff, now - self.seconds)
        entries = self.entries
        while entries and entries[0].at <= cutoff:
            self.total -= entries.popleft().tokens

    def wait(self, now: float, tokens: int) -> float:
        """Seconds until `tokens` more fit (0.0 when they fit now)."""
        self._expire(now)
        if not self.entries or self.total + tokens <= self.limit:
            return 0.0
        need = self.total + tokens - self.limit
        freed = 0
        for entry in self.entries:
            freed += entry.tokens
            if freed >= need:
                return max(0.0, entry.at + self.seconds - now)
        return max(0.0, self.entries[-1].at + self.seconds - now)

    def record(self, now: float, tokens: int) -> TokenSpend:
        spend = TokenSpend(now, tokens)
        self.entries.append(spend)
        self.total += tokens
        return spend

    def settle(self, spend: TokenSpend, tokens: int) -> None:
        """Replace a reservation with the real usage (no-op once it left the window)."""
        if spend.at > self.cutoff:
            self.total += tokens - spend.tokens
            spend.tokens = tokens

    def used(self, now: float) -> int:
        self._expire(now)
        return self.total
