"""Where one upstream's limits are kept: the `Limiter` protocol and the in-memory backend.

A limiter answers one question atomically — may one more attempt start now? — and if
yes records the start (slot, request windows, tokens) in the same step, so no burst of
callers can all pass a check before any of them is recorded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from livia.concurrency.policy import ApiPolicy
from livia.concurrency.window import RequestWindow, TokenSpend, TokenWindow


@dataclass(slots=True)
class Grant:
    """Permission for one attempt; hand it back with `Limiter.release`."""

    cost: int
    lease: Any = None  # the backend's handle (a token reservation, a Redis lease id)


@dataclass(frozen=True, slots=True)
class Denial:
    """No start now. `wait` is a lower bound on the seconds until one may fit.

    `reason` names the binding limit; "max_concurrent" means only a slot is missing, which
    frees when a running call ends (not at a known time).
    """

    wait: float
    reason: str
    #: True when the shared limits cannot be reached (no call may start), not a limit.
    outage: bool = False

    @property
    def slot_only(self) -> bool:
        return self.reason == "max_concurrent"


class AdaptiveConcurrency:
    """How many attempts may run now: the policy's figure, lowered when the upstream says less.

    A 429 that arrives while other attempts are still running means the upstream's real
    concurrency is below the policy's: the cap drops to what was running. Each success
    raises it by 1/cap (about one slot per round of calls) back to the policy's figure. A
    429 with nothing else running is a rate limit, not a concurrency one: the cap stays.
    Invariant: ``1 <= limit <= ceiling``.
    """

    __slots__ = ("cap", "ceiling")

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.cap = float(ceiling)

    @property
    def limit(self) -> int:
        return max(1, int(self.cap))

    def throttled(self, running: int) -> None:
        if running > 0:
            self.cap = max(1.0, min(self.cap, float(running)))

    def succeeded(self) -> None:
        if self.cap < self.ceiling:
            self.cap = min(float(self.ceiling), self.cap + 1.0 / self.cap)


class Limiter(Protocol):
    """One upstream's limits, local or shared."""

    #: True when other processes share these limits (then slots free without local notice).
    shared: bool

    async def acquire(self, cost: int) -> Grant | Denial: ...

    async def estimate(self, cost: int, ahead: int) -> Denial | None: ...

    async def release(self, grant: Grant) -> None: ...

    async def settle(self, grant: Grant, tokens: int) -> None: ...

    async def pause(self, seconds: float) -> None: ...

    def throttled(self) -> None:
        """The upstream answered 429: lower the concurrency cap if others were running."""

    def succeeded(self) -> None:
        """An attempt succeeded: let the concurrency cap grow back."""

    def usage(self) -> dict[str, dict[str, float]]: ...

    async def aclose(self) -> None: ...


class Backend(Protocol):
    """Makes the limiter of each upstream."""

    name: str

    def limiter(self, api: str, policy: ApiPolicy) -> Limiter: ...

    async def aclose(self) -> None: ...


def loop_time() -> float:
    """The running loop's clock (a fake clock in tests replaces it)."""
    return asyncio.get_running_loop().time()


def describe(reason: str, policy: ApiPolicy) -> str:
    """A person's words for a binding limit."""
    if reason == "requests_per_minute":
        return f"{policy.requests_per_minute} requests per minute used"
    if reason == "requests_per_hour":
        return f"{policy.requests_per_hour} requests per hour used"
    if reason == "tokens_per_minute":
        return f"{policy.tokens_per_minute} tokens per minute used"
    if reason == "max_concurrent":
        return f"all {policy.max_concurrent} concurrent slots busy"
    if reason == "paused":
        return "paused after the upstream answered 429 (rate limited)"
    return reason


class MemoryLimiter:
    """This process's record of one upstream's slots, windows, tokens and 429 pause.

    Invariants: ``in_flight <= max_concurrent``; every window holds at most its limit of
    starts in any sliding interval; nothing starts before ``paused_until``.
    """

    shared = False

    def __init__(self, policy: ApiPolicy) -> None:
        self.policy = policy
        self.in_flight = 0
        self.windows = [
            RequestWindow(name, limit, secs + policy.window_margin)
            for name, limit, secs in policy.windows
        ]
        self.tokens = (
            TokenWindow(policy.tokens_per_minute, policy.token_window)
            if policy.tokens_per_minute
            else None
        )
        self.paused_until = 0.0
        self.adaptive = AdaptiveConcurrency(policy.max_concurrent)

    def _check(self, now: float, cost: int, ahead: int) -> Denial | None:
        wait, reason = 0.0, ""
        if self.paused_until > now:
            wait, reason = self.paused_until - now, "paused"
        for window in self.windows:
            w = window.wait_for(now, ahead) if ahead else window.wait(now)
            if w > wait:
                wait, reason = w, window.name
        if self.tokens is not None:
            w = self.tokens.wait(now, cost)
            if w > wait:
                wait, reason = w, "tokens_per_minute"
        if reason:
            return Denial(wait, reason)
        if not ahead and self.in_flight >= self.adaptive.limit:
            return Denial(0.0, "max_concurrent")
        return None

    async def acquire(self, cost: int) -> Grant | Denial:
        now = loop_time()
        denial = self._check(now, cost, 0)
        if denial is not None:
            return denial
        self.in_flight += 1
        for window in self.windows:
            window.record(now)
        spend = self.tokens.record(now, cost) if self.tokens is not None else None
        return Grant(cost, spend)

    async def estimate(self, cost: int, ahead: int) -> Denial | None:
        return self._check(loop_time(), cost, ahead)

    async def release(self, grant: Grant) -> None:
        self.in_flight -= 1

    async def settle(self, grant: Grant, tokens: int) -> None:
        if self.tokens is not None and isinstance(grant.lease, TokenSpend):
            self.tokens.settle(grant.lease, tokens)

    async def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, loop_time() + seconds)

    def throttled(self) -> None:
        self.adaptive.throttled(self.in_flight)

    def succeeded(self) -> None:
        self.adaptive.succeeded()

    def usage(self) -> dict[str, dict[str, float]]:
        try:
            now = loop_time()
        except RuntimeError:
            return {}
        out: dict[str, dict[str, float]] = {
            "max_concurrent": {
                "limit": self.policy.max_concurrent,
                "used": self.in_flight,
                "window_s": 0,
                "effective": self.adaptive.limit,
            }
        }
        for window, (_, _, seconds) in zip(self.windows, self.policy.windows, strict=True):
            used = window.used(now)
            out[window.name] = {"limit": window.limit, "used": used, "window_s": seconds}
            if used >= window.limit:  # spent: when the next start is allowed again
                out[window.name]["frees_in"] = round(window.wait(now), 1)
        if self.tokens is not None:
            out["tokens_per_minute"] = {
                "limit": self.tokens.limit,
                "used": self.tokens.used(now),
                "window_s": 60.0,
            }
        return out

    async def aclose(self) -> None:
        return None


class MemoryBackend:
    """Limits kept in this process: the default, and the fastest."""

    name = "memory"

    def limiter(self, api: str, policy: ApiPolicy) -> MemoryLimiter:
        return MemoryLimiter(policy)

    async def aclose(self) -> None:
        return None
