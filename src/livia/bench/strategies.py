"""How a benchmark job sends its calls: Livia's manager, or one of the baselines.

A strategy gets the policies a deployment would configure (which may be more generous
than what the upstream really allows) and runs each call — a zero-argument callable
doing one attempt, called again for each retry — under its own rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from livia.concurrency import ApiPolicy, ConcurrencyManager

#: One attempt of a call: returns when it succeeded, raises when it did not.
Attempt = Callable[[], Awaitable[None]]

LIVIA = "livia"
SERIAL = "serial"
SEMAPHORE = "semaphore+tenacity"
LIMITER = "semaphore+aiolimiter+tenacity"

#: Every strategy, in the order reports list them.
STRATEGY_NAMES: tuple[str, ...] = (LIVIA, SERIAL, SEMAPHORE, LIMITER)


class Strategy(Protocol):
    """Runs calls to upstreams under some discipline."""

    name: str

    async def call(self, api: str, attempt: Attempt, key: str) -> None:
        """Run one call (retrying as the strategy does); raise when it finally fails."""
        ...

    async def aclose(self) -> None:
        """Release what the strategy holds."""
        ...


class LiviaStrategy:
    """Every call through `ConcurrencyManager.run`, keyed by user for fairness."""

    name = LIVIA

    def __init__(self, policies: Mapping[str, ApiPolicy], deadline: float) -> None:
        self.manager = ConcurrencyManager(policies)
        self.deadline = deadline

    async def call(self, api: str, attempt: Attempt, key: str) -> None:
        await self.manager.run(api, attempt, key=key, deadline=self.deadline, name="bench")

    async def aclose(self) -> None:
        await self.manager.aclose()


def make_strategy(name: str, policies: Mapping[str, ApiPolicy], deadline: float) -> Strategy:
    """The strategy called `name`, configured with `policies`.

    `deadline` bounds how long a call may wait for capacity (Livia fails fast past it).
    """
    from livia.bench import baselines

    if name == LIVIA:
        return LiviaStrategy(policies, deadline)
    if name == SERIAL:
        return baselines.SerialStrategy(policies)
    if name == SEMAPHORE:
        return baselines.SemaphoreStrategy(policies)
    if name == LIMITER:
        return baselines.LimiterStrategy(policies)
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}")
