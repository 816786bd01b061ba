"""A circuit breaker: after N failed calls in a row, fail fast for a cool-off, then probe."""

from __future__ import annotations

import logging
from typing import Literal

from livia.concurrency.errors import CircuitOpen

log = logging.getLogger("livia.concurrency")

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed → (failures ≥ threshold) → open → (cool-off passed) → half-open: one probe.

    A successful probe closes the circuit; a failed one opens it again. A threshold of 0
    disables the breaker.
    """

    __slots__ = ("api", "cooloff", "failures", "opened_at", "probing", "state", "threshold")

    def __init__(self, api: str, threshold: int, cooloff: float) -> None:
        self.api = api
        self.threshold = threshold
        self.cooloff = cooloff
        self.state: State = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False

    def before_call(self, now: float) -> bool:
        """Raise `CircuitOpen` when calls must fail fast; True when this call is the probe."""
        if self.state == "closed":
            return False
        if self.state == "open":
            remaining = self.opened_at + self.cooloff - now
            if remaining > 0:
                raise CircuitOpen(
                    self.api,
                    f"circuit open after {self.failures} failed calls in a row",
                    remaining,
                )
            self.state = "half_open"
            self.probing = False
        if self.probing:
            raise CircuitOpen(self.api, "circuit half-open, a probe call is under way", 1.0)
        self.probing = True
        return True

    def success(self, probe: bool) -> None:
        if probe or self.state != "closed":
            log.info("circuit closed api=%s", self.api)
        self.state = "closed"
        self.failures = 0
        self.probing = False

    def failure(self, now: float, probe: bool) -> None:
        """Record a call that failed with an upstream fault (after its retries)."""
        self.failures += 1
        if probe:
            self.probing = False
        if self.threshold and (probe or self.failures >= self.threshold):
            if self.state != "open":
                log.warning(
                    "circuit open api=%s failures=%d cooloff=%.0fs",
                    self.api,
                    self.failures,
                    self.cooloff,
                )
            self.state = "open"
            self.opened_at = now

    def neutral(self, probe: bool) -> None:
        """A call ended in a way that says nothing of the upstream's health (cancelled, 4xx)."""
        if probe:
            self.probing = False
