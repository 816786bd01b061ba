"""Admission, windows, fail-fast, retries, fairness, cancellation and the circuit breaker."""

from __future__ import annotations

import asyncio

import pytest

from livia.concurrency import (
    ApiPolicy,
    CapacityExhausted,
    CircuitOpen,
    ConcurrencyManager,
    Denial,
    Grant,
    MemoryBackend,
    RetryableError,
)
from livia.concurrency.limiter import MemoryLimiter
from tests.probes import Probe

pytestmark = pytest.mark.looptime

#: Windows are spaced this much wider than the upstream's, against network jitter.
MARGIN = ApiPolicy().window_margin


def one(**fields: object) -> ConcurrencyManager:
    return ConcurrencyManager({"x": ApiPolicy(**fields)})  # type: ignore[arg-type]


async def test_burst_of_1000_callers_gets_exactly_the_limit() -> None:
    manager = one(max_concurrent=1000, requests_per_minute=50, max_wait=0.5)
    probe = Probe(latency=0.1)
    results = await asyncio.gather(
        *(manager.run("x", probe.op) for _ in range(1000)), return_exceptions=True
    )
    assert len(probe.starts) == 50
    assert sum(r == "ok" for r in results) == 50
    assert all(isinstance(r, CapacityExhausted) for r in results if r != "ok")


async def test_fail_fast_carries_retry_after_and_says_when() -> None:
    manager = one(requests_per_hour=3, max_wait=30)
    probe = Probe()
    loop = asyncio.get_running_loop()
    for _ in range(3):
        await manager.run("x", probe.op)
    t0 = loop.time()
    with pytest.raises(CapacityExhausted) as info:
        await manager.run("x", probe.op)
    assert loop.time() == t0  # at once, no sleeping
    assert info.value.retry_after == pytest.approx(3600, abs=1)
    assert "3 requests per hour used" in str(info.value)
    assert "available again at" in str(info.value)
    assert manager.get_stats("x")["capacity_exhausted"] == 1
    # the dashboard says when the spent window frees
    hour = manager.get_stats("x")["limits"]["requests_per_hour"]
    assert hour["used"] == 3 and hour["frees_in"] == pytest.approx(3600, abs=1)


async def test_hourly_window_binds_before_the_minute_one() -> None:
    manager = one(max_concurrent=10, requests_per_minute=5, requests_per_hour=7, max_wait=120)
    probe = Probe()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(7):
        await manager.run("x", probe.op)
    # 5 in the first minute, 2 more once the minute window slid: then the hour binds.
    assert probe.starts[5] - t0 == pytest.approx(60 + MARGIN, abs=0.01)
    with pytest.raises(CapacityExhausted) as info:
        await manager.run("x", probe.op)
    assert "per hour" in str(info.value)
    assert info.value.retry_after == pytest.approx(3600 - 60, abs=1)


async def test_deadline_argument_overrides_max_wait() -> None:
    manager = one(requests_per_minute=1, max_wait=600)
    await manager.run("x", Probe().op)
    with pytest.raises(CapacityExhausted):
        await manager.run("x", Probe().op, deadline=10)
    assert await manager.run("x", Probe().op, deadline=61) == "ok"


async def test_retries_count_against_the_window() -> None:
    manager = one(requests_per_minute=3, retry_attempts=5, backoff_min=1, backoff_max=1)
    probe = Probe(failures=[RetryableError("503", status=503)] * 3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await manager.run("x", probe.op) == "ok"
    # attempts 1-3 fill the minute; attempt 4 must wait for the window.
    assert len(probe.starts) == 4
    assert probe.starts[3] - t0 == pytest.approx(60 + MARGIN, abs=0.01)


async def test_backoff_releases_the_slot() -> None:
    manager = one(max_concurrent=1, retry_attempts=2, backoff_min=10, backoff_max=10)
    flaky = Probe(latency=0.0, failures=[RetryableError("503", status=503)])
    quick = Probe(latency=0.1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    slow_call = asyncio.ensure_future(manager.run("x", flaky.op, key="a"))
    await asyncio.sleep(0.01)
    await manager.run("x", quick.op, key="b")
    assert loop.time() - t0 < 1.0  # did not wait behind the 10 s backoff
    assert await slow_call == "ok"


async def test_retry_after_is_honoured_and_pauses_the_whole_upstream() -> None:
    manager = one(max_concurrent=4, retry_attempts=3, backoff_min=0.1, backoff_max=1)
    limited = Probe(failures=[RetryableError("429", status=429, retry_after=5.0)])
    other = Probe()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    first = asyncio.ensure_future(manager.run("x", limited.op, key="a"))
    await asyncio.sleep(0.5)
    await manager.run("x", other.op, key="b")
    assert other.starts[0] - t0 == pytest.approx(5.0, abs=0.01)  # paused, not just the caller
    assert await first == "ok"
    assert limited.starts[1] - limited.starts[0] == pytest.approx(5.0, abs=0.01)
    assert manager.get_stats("x")["http_429"] == 1


async def test_a_second_user_is_served_while_another_has_20_waiting() -> None:
    manager = one(max_concurrent=2)
    probe = Probe(latency=1.0)
    order: list[str] = []

    async def call(key: str) -> None:
        async def op() -> str:
            order.append(key)
            return await probe.op()

        await manager.run("x", op, key=key)

    heavy = [asyncio.ensure_future(call("heavy")) for _ in range(20)]
    await asyncio.sleep(0.1)
    light = asyncio.ensure_future(call("light"))
    await asyncio.gather(*heavy, light)
    assert order.index("light") <= 4  # within the first few slots, not the 21st


async def test_fifo_within_one_key() -> None:
    manager = one(max_concurrent=1)
    seen: list[int] = []

    def op_for(i: int):  # type: ignore[no-untyped-def]
        async def op() -> int:
            seen.append(i)
            await asyncio.sleep(0.1)
            return i

        return op

    await asyncio.gather(*(manager.run("x", op_for(i), key="k") for i in range(10)))
    assert seen == list(range(10))


async def test_cancellation_while_waiting_and_while_running_leaks_no_slot() -> None:
    manager = one(max_concurrent=2)
    probe = Probe(latency=10.0)
    running = [asyncio.ensure_future(manager.run("x", probe.op)) for _ in range(2)]
    waiting = [asyncio.ensure_future(manager.run("x", probe.op)) for _ in range(3)]
    await asyncio.sleep(1)
    assert manager.get_stats("x")["waiting"] == 3
    for task in waiting + running:
        task.cancel()
    await asyncio.gather(*running, *waiting, return_exceptions=True)
    stats = manager.get_stats("x")
    assert stats["concurrent_requests"] == 0 and stats["waiting"] == 0
    assert stats["limits"]["max_concurrent"]["used"] == 0
    assert stats["cancelled_requests"] == 5
    quick = Probe(latency=1.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(manager.run("x", quick.op), manager.run("x", quick.op))
    assert loop.time() - t0 == pytest.approx(1.0, abs=0.01) and quick.peak == 2


async def test_waiting_past_the_deadline_for_a_slot_fails_with_capacity_exhausted() -> None:
    manager = one(max_concurrent=1, max_wait=2)
    busy = asyncio.ensure_future(manager.run("x", Probe(latency=10).op))
    await asyncio.sleep(0.1)
    with pytest.raises(CapacityExhausted) as info:
        await manager.run("x", Probe().op)
    assert "concurrent slots busy" in str(info.value)
    await busy
    assert manager.get_stats("x")["limits"]["max_concurrent"]["used"] == 0


async def test_circuit_breaker_opens_fails_fast_then_probes() -> None:
    manager = one(retry_attempts=1, circuit_failures=3, circuit_cooloff=30)
    boom = RetryableError("502", status=502)
    for _ in range(3):
        with pytest.raises(RetryableError):
            await manager.run("x", Probe(failures=[boom]).op)
    assert manager.get_stats("x")["circuit_state"] == "open"
    untouched = Probe()
    with pytest.raises(CircuitOpen) as info:
        await manager.run("x", untouched.op)
    assert untouched.starts == [] and info.value.retry_after == pytest.approx(30, abs=0.1)
    await asyncio.sleep(30)
    assert await manager.run("x", Probe().op) == "ok"  # the probe
    assert manager.get_stats("x")["circuit_state"] == "closed"


async def test_failed_probe_reopens_the_circuit() -> None:
    manager = one(retry_attempts=1, circuit_failures=1, circuit_cooloff=5)
    boom = RetryableError("503", status=503)
    with pytest.raises(RetryableError):
        await manager.run("x", Probe(failures=[boom]).op)
    await asyncio.sleep(5)
    with pytest.raises(RetryableError):
        await manager.run("x", Probe(failures=[boom]).op)
    with pytest.raises(CircuitOpen):
        await manager.run("x", Probe().op)


async def test_token_budget_is_reserved_then_settled_with_real_usage() -> None:
    manager = one(max_concurrent=10, tokens_per_minute=1000)

    async def op() -> dict[str, object]:
        return {"usage": {"total_tokens": 100}}

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await manager.run("x", op, cost=900)  # reserved 900, settled to 100
    await manager.run("x", op, cost=800)  # fits only because the first was settled
    assert loop.time() == t0
    await manager.run("x", op, cost=900)  # 100 + 100 + 900 > 1000: waits for the window
    assert loop.time() - t0 == pytest.approx(60 + MARGIN, abs=0.01)
    assert manager.get_stats("x")["limits"]["tokens_per_minute"]["used"] == 100


async def test_retry_after_beyond_the_deadline_fails_fast() -> None:
    manager = one(retry_attempts=3, max_wait=10)
    probe = Probe(failures=[RetryableError("429", status=429, retry_after=3600)])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(CapacityExhausted) as info:
        await manager.run("x", probe.op)
    assert loop.time() == t0 and info.value.retry_after == pytest.approx(3600)
    assert "rate limited" in str(info.value)


async def test_stats_reset_keeps_gauges() -> None:
    manager = one(max_concurrent=1)
    await manager.run("x", Probe().op)
    manager.reset_stats()
    stats = manager.get_stats("x")
    assert stats["total_requests"] == 0 and stats["successful_requests"] == 0
    assert stats["limits"]["max_concurrent"]["used"] == 0


class FlakyBackend(MemoryBackend):
    """The memory backend, but admission raises `failures` times (a shared store hiccup)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def limiter(self, api: str, policy: ApiPolicy) -> MemoryLimiter:
        backend = self

        class Flaky(MemoryLimiter):
            async def acquire(self, cost: int) -> Grant | Denial:
                if backend.failures > 0:
                    backend.failures -= 1
                    raise ConnectionError("store unreachable")
                return await super().acquire(cost)

        return Flaky(policy)


async def test_admission_errors_neither_kill_the_queue_nor_wedge_the_breaker() -> None:
    backend = FlakyBackend(failures=1)
    manager = ConcurrencyManager({"x": ApiPolicy(max_concurrent=1)}, backend=backend)
    with pytest.raises(ConnectionError):  # the caller's own admission fails: it is told
        await manager.run("x", Probe().op)
    assert manager.get_stats("x")["failed_requests"] == 1
    busy = asyncio.ensure_future(manager.run("x", Probe(latency=1.0).op))
    await asyncio.sleep(0.1)
    waiting = asyncio.ensure_future(manager.run("x", Probe().op))
    await asyncio.sleep(0.1)
    backend.failures = 2  # the queue's pump meets two failures, then the store is back
    assert await waiting == "ok"
    await busy
    assert manager.get_stats("x")["successful_requests"] == 2


async def test_window_margin_spaces_starts_past_the_upstreams_window() -> None:
    manager = one(requests_per_minute=2, window_margin=0.25)
    probe = Probe()
    for _ in range(3):
        await manager.run("x", probe.op)
    assert probe.starts[2] - probe.starts[0] == pytest.approx(60.25, abs=0.001)


async def test_a_429_waits_what_the_upstream_asked_not_backoff_on_top() -> None:
    manager = one(retry_attempts=2, backoff_min=5, backoff_max=5, backoff_jitter=0)
    probe = Probe(failures=[RetryableError("429", status=429, retry_after=0.5)])
    assert await manager.run("x", probe.op) == "ok"
    assert probe.starts[1] - probe.starts[0] == pytest.approx(0.5, abs=0.001)


async def test_a_429_while_others_run_lowers_concurrency_then_it_grows_back() -> None:
    """The upstream really runs 2 at once; the policy says 4: Livia learns, then recovers."""
    manager = one(max_concurrent=4, retry_attempts=5, backoff_min=0.1)
    running = 0
    peak_after_learning = 0
    refused = 0
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def op() -> str:
        nonlocal running, refused, peak_after_learning
        if running >= 2:
            refused += 1
            raise RetryableError("429", status=429, retry_after=0.01)
        running += 1
        if loop.time() - t0 > 1.5:
            peak_after_learning = max(peak_after_learning, running)
        try:
            await asyncio.sleep(1.0)
        finally:
            running -= 1
        return "ok"

    assert await asyncio.gather(*(manager.run("x", op) for _ in range(12))) == ["ok"] * 12
    assert refused <= 4  # learned in the first round, not re-sent every round
    assert peak_after_learning == 2
    limits = manager.get_stats("x")["limits"]["max_concurrent"]
    assert limits["effective"] < 4  # still growing back, additively


async def test_a_429_with_nothing_else_running_is_a_rate_limit_not_concurrency() -> None:
    manager = one(max_concurrent=4, retry_attempts=2, backoff_min=0.1)
    probe = Probe(failures=[RetryableError("429", status=429, retry_after=1.0)])
    assert await manager.run("x", probe.op) == "ok"
    assert manager.get_stats("x")["limits"]["max_concurrent"]["effective"] == 4
