"""The reference timings of DESIGN.md, on a fake clock (looptime): exact, and instant."""

from __future__ import annotations

import asyncio

import pytest

from livia.concurrency import DEFAULT_POLICIES, ApiPolicy, ConcurrencyManager, RetryableError
from tests.probes import Probe

pytestmark = pytest.mark.looptime


async def test_ten_openai_calls_take_two_rounds() -> None:
    manager = ConcurrencyManager()
    probe = Probe(latency=2.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(manager.run("openai", probe.op) for _ in range(10)))
    assert loop.time() - t0 == pytest.approx(4.0, abs=0.01)
    assert probe.peak == 8
    stats = manager.get_stats("openai")
    assert stats["total_requests"] == 10 and stats["successful_requests"] == 10
    assert stats["success_rate"] == 1.0 and stats["concurrent_requests"] == 0
    assert stats["average_response_time"] == pytest.approx(2.0, abs=0.01)


async def test_six_zapier_calls_take_two_rounds() -> None:
    manager = ConcurrencyManager()
    probe = Probe(latency=2.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(manager.run("zapier", probe.op) for _ in range(6)))
    assert loop.time() - t0 == pytest.approx(4.0, abs=0.01)
    assert probe.peak == 3


async def test_upstreams_never_wait_on_each_other() -> None:
    manager = ConcurrencyManager()
    openai, zapier = Probe(latency=2.0), Probe(latency=2.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(
        *(manager.run("openai", openai.op) for _ in range(5)),
        *(manager.run("zapier", zapier.op) for _ in range(3)),
    )
    assert loop.time() - t0 == pytest.approx(2.0, abs=0.01)
    assert (openai.peak, zapier.peak) == (5, 3)


async def test_two_timeouts_then_success_waits_one_then_two_seconds() -> None:
    policy = DEFAULT_POLICIES["openai"].updated(backoff_jitter=0.0)
    manager = ConcurrencyManager({"openai": policy})
    probe = Probe(latency=0.0, failures=[TimeoutError(), TimeoutError()])
    assert await manager.run("openai", probe.op) == "ok"
    assert len(probe.starts) == 3
    gaps = [b - a for a, b in zip(probe.starts, probe.starts[1:], strict=False)]
    assert gaps == pytest.approx([1.0, 2.0], abs=0.01)
    stats = manager.get_stats("openai")
    assert stats["retries"] == 2 and stats["attempts"] == 3 and stats["successful_requests"] == 1


async def test_original_entry_point_still_works() -> None:
    manager = ConcurrencyManager({"x": ApiPolicy(max_concurrent=1)})
    probe = Probe(latency=1.0)
    assert await manager.execute_with_concurrency_control("x", probe.op, "legacy") == "ok"


async def test_unknown_upstream_lists_the_known_ones() -> None:
    manager = ConcurrencyManager()
    with pytest.raises(KeyError, match=r"unknown upstream 'nope'.*openai.*zapier"):
        await manager.run("nope", Probe().op)


async def test_non_retryable_error_is_raised_unchanged_after_one_attempt() -> None:
    manager = ConcurrencyManager({"x": ApiPolicy(retry_attempts=5, backoff_min=0.1)})
    error = ValueError("bad request")
    probe = Probe(failures=[error])
    with pytest.raises(ValueError) as info:
        await manager.run("x", probe.op)
    assert info.value is error and len(probe.starts) == 1


async def test_retries_run_out() -> None:
    manager = ConcurrencyManager(
        {"x": ApiPolicy(retry_attempts=3, backoff_min=0.5, backoff_max=1.0, circuit_failures=0)}
    )
    probe = Probe(failures=[RetryableError("503", status=503)] * 5)
    with pytest.raises(RetryableError):
        await manager.run("x", probe.op)
    assert len(probe.starts) == 3
    stats = manager.get_stats("x")
    assert stats["failed_requests"] == 1 and stats["success_rate"] == 0.0
