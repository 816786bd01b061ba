"""The baselines Livia is measured against, written the way a competent engineer would.

All three retry with tenacity exactly as the policy says (the same number of attempts,
the same exponential backoff with jitter), retry only what is worth retrying (HTTP
408/409/429/5xx, timeouts, connection errors), and honour the wait the upstream asks
for (``Retry-After`` and friends): the SDKs they would otherwise use do the same.

- `SerialStrategy`: the bot before the concurrency manager. One call at a time for the
  whole process (a global lock), retries included.
- `SemaphoreStrategy`: an `asyncio.Semaphore` of ``max_concurrent`` per upstream; the
  semaphore is taken per attempt, so a call sleeping between attempts holds no slot. No
  rate limit.
- `LimiterStrategy`: the same plus one `aiolimiter.AsyncLimiter` per request window of
  the policy (per minute, per hour), taken per attempt after the semaphore, so an
  attempt starts as soon as it has both.

What they lack, by construction: a 429 pauses only the caller that got it (not the
whole upstream), waiters are served first come first served (not per user), and
aiolimiter is a leaky bucket: after a full burst it lets one more call through every
``period / rate`` seconds, which a sliding-window upstream refuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from livia.bench.strategies import LIMITER, SEMAPHORE, SERIAL, Attempt
from livia.concurrency import ApiPolicy, RetryableError

#: Most seconds a baseline waits for an upstream's Retry-After (bounds every wait).
MAX_RETRY_AFTER = 3600.0


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed: 408/409/429/5xx, timeouts, lost connections."""
    if isinstance(exc, RetryableError):
        return True
    return isinstance(exc, TimeoutError | ConnectionError | aiohttp.ClientConnectionError)


class wait_retry_after(wait_base):
    """The `fallback` wait, raised to what the upstream asked for (``retry_after``)."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.fallback(retry_state))
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        asked = getattr(exc, "retry_after", None)
        if isinstance(asked, int | float) and asked > wait:
            wait = min(float(asked), MAX_RETRY_AFTER)
        return wait


def retrying(policy: ApiPolicy) -> AsyncRetrying:
    """Tenacity configured as the policy says: attempts, exponential backoff, jitter."""
    backoff: wait_base = wait_exponential(
        multiplier=policy.backoff_min, min=policy.backoff_min, max=policy.backoff_max
    )
    if policy.backoff_jitter > 0 and policy.backoff_min > 0:
        backoff = backoff + wait_random(0, policy.backoff_min * policy.backoff_jitter)
    return AsyncRetrying(
        stop=stop_after_attempt(policy.retry_attempts),
        wait=wait_retry_after(backoff),
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )


class SerialStrategy:
    """One call at a time in the whole process, retries and their waits included."""

    name = SERIAL

    def __init__(self, policies: Mapping[str, ApiPolicy]) -> None:
        self.policies = dict(policies)
        self._lock = asyncio.Lock()

    async def call(self, api: str, attempt: Attempt, key: str) -> None:
        async with self._lock:
            async for trial in retrying(self.policies[api]):
                with trial:
                    await attempt()

    async def aclose(self) -> None:
        return None


class SemaphoreStrategy:
    """A semaphore of `max_concurrent` per upstream, taken per attempt, plus tenacity."""

    name = SEMAPHORE

    def __init__(self, policies: Mapping[str, ApiPolicy]) -> None:
        self.policies = dict(policies)
        self._slots = {api: asyncio.Semaphore(p.max_concurrent) for api, p in policies.items()}

    async def call(self, api: str, attempt: Attempt, key: str) -> None:
        slots = self._slots[api]
        async for trial in retrying(self.policies[api]):
            with trial:
                async with slots:
                    await attempt()

    async def aclose(self) -> None:
        return None


class LimiterStrategy:
    """`SemaphoreStrategy` plus an aiolimiter `AsyncLimiter` per request window."""

    name = LIMITER

    def __init__(self, policies: Mapping[str, ApiPolicy]) -> None:
        self.policies = dict(policies)
        self._slots = {api: asyncio.Semaphore(p.max_concurrent) for api, p in policies.items()}
        self._limiters = {
            api: [AsyncLimiter(limit, seconds) for _, limit, seconds in p.windows]
            for api, p in policies.items()
        }

    async def call(self, api: str, attempt: Attempt, key: str) -> None:
        slots, limiters = self._slots[api], self._limiters[api]
        async for trial in retrying(self.policies[api]):
            with trial:
                async with slots:
                    for limiter in limiters:
                        await limiter.acquire()
                    await attempt()

    async def aclose(self) -> None:
        return None
