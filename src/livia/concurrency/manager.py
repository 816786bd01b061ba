"""The concurrency manager: the one place every upstream call goes through.

For each attempt it waits for admission (a slot, room in every window, no 429 pause),
runs the operation, and hands the slot back before any backoff sleep. It retries what is
worth retrying, fails fast with a date when capacity will not return in time, and keeps
live statistics.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity.wait import wait_base

from livia.concurrency.breaker import CircuitBreaker
from livia.concurrency.errors import CapacityExhausted, UnknownApi
from livia.concurrency.gate import Gate
from livia.concurrency.limiter import Backend, MemoryBackend, loop_time
from livia.concurrency.policy import DEFAULT_POLICIES, ApiPolicy
from livia.concurrency.progress import WAIT_REPORT_AFTER, progress_sink, report
from livia.concurrency.retry import backoff_strategy, backoff_wait, classify
from livia.concurrency.stats import ApiStats
from livia.logs import describe_error

log = logging.getLogger("livia.concurrency")

T = TypeVar("T")
Operation = Callable[[], Awaitable[T]]

#: The key of calls that name no user.
ANONYMOUS = "-"


@dataclass(slots=True)
class Upstream:
    """Everything the manager keeps for one upstream."""

    name: str
    policy: ApiPolicy
    gate: Gate
    stats: ApiStats
    breaker: CircuitBreaker
    backoff: wait_base


def usage_tokens(result: Any) -> int | None:
    """Total tokens an upstream result reports (OpenAI's `usage`), if any."""
    usage = result.get("usage") if isinstance(result, Mapping) else getattr(result, "usage", None)
    if usage is None:
        return None
    total = (
        usage.get("total_tokens")
        if isinstance(usage, Mapping)
        else getattr(usage, "total_tokens", None)
    )
    return total if isinstance(total, int) else None


class ConcurrencyManager:
    """Bounds, paces, retries and measures every call to each upstream.

    Guarantees, per upstream: at most `max_concurrent` attempts run at once; in any
    sliding minute/hour no more attempts start than the policy allows (retries count);
    a call sleeping in backoff holds no slot; a 429 pauses the whole upstream until the
    reset it names; waiters of different keys take turns.
    """

    def __init__(
        self,
        policies: Mapping[str, ApiPolicy] | None = None,
        *,
        backend: Backend | None = None,
    ) -> None:
        self.backend: Backend = backend or MemoryBackend()
        self._upstreams: dict[str, Upstream] = {}
        for name, policy in (DEFAULT_POLICIES if policies is None else policies).items():
            self.add_api(name, policy)

    def add_api(self, name: str, policy: ApiPolicy) -> None:
        """Declare (or replace) an upstream."""
        stats = ApiStats()
        limiter = self.backend.limiter(name, policy)
        self._upstreams[name] = Upstream(
            name=name,
            policy=policy,
            gate=Gate(name, policy, limiter, stats),
            stats=stats,
            breaker=CircuitBreaker(name, policy.circuit_failures, policy.circuit_cooloff),
            backoff=backoff_strategy(policy),
        )

    @property
    def apis(self) -> list[str]:
        return list(self._upstreams)

    def policy(self, api: str) -> ApiPolicy:
        return self._upstream(api).policy

    def _upstream(self, api: str) -> Upstream:
        try:
            return self._upstreams[api]
        except KeyError:
            raise UnknownApi(api, sorted(self._upstreams)) from None

    async def run(
        self,
        api: str,
        operation: Operation[T],
        *,
        key: str | None = None,
        cost: int = 1,
        deadline: float | None = None,
        name: str | None = None,
    ) -> T:
        """Run `operation` against `api` under its policy and return its result.

        `operation` is called afresh for every attempt. `key` names whose call it is
        (fairness), `cost` its token estimate, `deadline` the most seconds it may wait
        for capacity (default: the policy's `max_wait`). Raises `CapacityExhausted`
        when capacity will not be free in time, or the last error when retries run out.
        """
        up = self._upstream(api)
        policy = up.policy
        stats = up.stats
        key = key or ANONYMOUS
        limit = policy.max_wait if deadline is None else deadline
        start = loop_time()
        give_up = start + limit if limit > 0 else math.inf
        stats.total_requests += 1
        try:
            probe = up.breaker.before_call(start) if up.breaker.state != "closed" else False
        except CapacityExhausted:
            stats.failed_requests += 1
            stats.capacity_exhausted += 1
            raise
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    if progress_sink.get() is None:
                        grant = await up.gate.enter(key, cost, give_up - loop_time())
                    else:  # someone watches: say so when the wait is noticeable
                        grant = await self._enter_reporting(up, key, cost, give_up, attempt)
                except Exception:  # CapacityExhausted, or the backend unreachable
                    stats.failed_requests += 1
                    up.breaker.neutral(probe)
                    raise
                stats.attempts += 1
                stats.concurrent_requests += 1
                if stats.concurrent_requests > stats.peak_concurrent:
                    stats.peak_concurrent = stats.concurrent_requests
                began = loop_time()
                try:
                    if policy.attempt_timeout:
                        async with asyncio.timeout(policy.attempt_timeout):
                            result = await operation()
                    else:
                        result = await operation()
                except Exception as exc:
                    stats.concurrent_requests -= 1
                    await up.gate.leave(grant)
                    wait = await self._after_failure(up, exc, attempt, give_up, key, name, probe)
                    report(
                        "retrying",
                        up.name,
                        attempt=attempt + 1,
                        of=policy.retry_attempts,
                        retry_in=round(wait, 1),
                        reason=classify(exc).kind,
                    )
                    stats.backing_off += 1
                    try:
                        await asyncio.sleep(wait)
                    finally:
                        stats.backing_off -= 1
                    continue
                except BaseException:
                    stats.concurrent_requests -= 1
                    await up.gate.leave(grant)
                    raise
                ended = loop_time()
                stats.concurrent_requests -= 1
                await up.gate.leave(grant)
                if policy.tokens_per_minute:
                    tokens = usage_tokens(result)
                    if tokens is not None:
                        await up.gate.limiter.settle(grant, tokens)
                up.gate.limiter.succeeded()
                stats.successful_requests += 1
                stats.total_response_time += ended - began
                stats.latencies.append(ended - began)
                if probe or up.breaker.failures:
                    up.breaker.success(probe)
                return result
        except asyncio.CancelledError:
            stats.cancelled_requests += 1
            up.breaker.neutral(probe)
            raise

    async def _enter_reporting(
        self, up: Upstream, key: str, cost: int, give_up: float, attempt: int
    ) -> Any:
        """`gate.enter`, reporting a wait for capacity that lasts over WAIT_REPORT_AFTER."""
        entering = asyncio.ensure_future(up.gate.enter(key, cost, give_up - loop_time()))
        try:
            done, _ = await asyncio.wait({entering}, timeout=WAIT_REPORT_AFTER)
            if not done:
                report("waiting", up.name, attempt=attempt, waiting=up.gate.waiting)
            return await entering
        finally:
            if not entering.done():
                entering.cancel()

    async def _after_failure(
        self,
        up: Upstream,
        exc: Exception,
        attempt: int,
        give_up: float,
        key: str,
        name: str | None,
        probe: bool,
    ) -> float:
        """Record a failed attempt; return the wait before the next one, or raise."""
        stats, policy = up.stats, up.policy
        now = loop_time()
        failure = classify(exc)
        what = name or "call"
        if failure.rate_limited:
            stats.http_429 += 1
        if not failure.retryable or attempt >= policy.retry_attempts:
            stats.failed_requests += 1
            stats.last_error = _last_error(failure.kind, exc, failure.status)
            if failure.retryable:
                up.breaker.failure(now, probe)
            elif failure.status:
                up.breaker.success(probe)  # the upstream answered: it is up
            else:
                up.breaker.neutral(probe)
            log.warning(
                "failed api=%s op=%s key=%s attempt=%d/%d kind=%s error=%s",
                up.name,
                what,
                key,
                attempt,
                policy.retry_attempts,
                failure.kind,
                _short(exc),
            )
            raise exc
        if failure.rate_limited and failure.retry_after is not None:
            # The upstream said when: that is the wait (for the whole upstream, below);
            # backoff on top would only leave capacity unused.
            wait = failure.retry_after
        else:
            wait = backoff_wait(up.backoff, attempt, policy.backoff_max)
            if failure.retry_after is not None:
                wait = max(wait, failure.retry_after)
        if failure.rate_limited:
            up.gate.limiter.throttled()
            await up.gate.limiter.pause(wait)
        if now + wait > give_up:
            stats.failed_requests += 1
            stats.capacity_exhausted += 1
            stats.last_error = _last_error(failure.kind, exc, failure.status)
            up.breaker.neutral(probe)
            log.warning(
                "giving up api=%s op=%s key=%s: next attempt in %.1fs is past the deadline",
                up.name,
                what,
                key,
                wait,
            )
            reason = (
                "rate limited (HTTP 429)" if failure.rate_limited else f"failing ({failure.kind})"
            )
            raise CapacityExhausted(up.name, reason, wait) from exc
        stats.retries += 1
        log.info(
            "retry api=%s op=%s key=%s attempt=%d/%d kind=%s wait=%.2fs",
            up.name,
            what,
            key,
            attempt,
            policy.retry_attempts,
            failure.kind,
            wait,
        )
        return wait

    async def execute_with_concurrency_control(
        self, api: str, operation: Operation[T], operation_name: str = ""
    ) -> T:
        """The original entry point, kept so existing callers work: `run` without options."""
        return await self.run(api, operation, name=operation_name or None)

    def get_stats(self, api: str | None = None) -> dict[str, Any]:
        """Live figures per upstream (or for one upstream when `api` is given)."""
        if api is not None:
            return self._snapshot(self._upstream(api))
        return {name: self._snapshot(up) for name, up in self._upstreams.items()}

    def _snapshot(self, up: Upstream) -> dict[str, Any]:
        out = up.stats.snapshot()
        out["waiting"] = up.gate.waiting
        out["max_concurrent"] = up.policy.max_concurrent
        out["circuit_state"] = up.breaker.state
        out["limits"] = up.gate.limiter.usage()
        out["backend"] = self.backend.name
        out["coordination"] = self.coordination()
        return out

    def coordination(self) -> dict[str, Any]:
        """Where the limits are kept and how: ``{"backend", "mode", "replicas"}``; mode is
        "local" (this process alone, or its share while Redis is away), "shared" or
        "waiting" (Redis is away and calls wait for it)."""
        describe_backend = getattr(self.backend, "coordination", None)
        if describe_backend is not None:
            return dict(describe_backend())
        return {"backend": self.backend.name, "mode": "local", "replicas": 1}

    def reset_stats(self, api: str | None = None) -> None:
        """Zero the counters (gauges of calls in flight and waiting are kept)."""
        for up in [self._upstream(api)] if api else self._upstreams.values():
            up.stats.reset()

    async def aclose(self) -> None:
        """Stop the queues (waiters are cancelled) and close the backend."""
        for up in self._upstreams.values():
            await up.gate.aclose()
            await up.gate.limiter.aclose()
        await self.backend.aclose()

    async def __aenter__(self) -> ConcurrencyManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _last_error(kind: str, exc: BaseException, status: int) -> str:
    """What `/stats` shows of a failure: its kind, class and status, and its message
    scrubbed of keys and URLs (an SDK error may quote the `Authorization` header)."""
    return f"{kind}: {describe_error(exc, status=status or None)}"


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return text[:200] + ("…" if len(text) > 200 else "")
