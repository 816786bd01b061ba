"""Batched admission (issue 12): concurrent callers of one process share script calls
(round trips) to Redis, and every limit still holds exactly."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from livia.concurrency import ApiPolicy, ConcurrencyManager, Denial, RedisBackend
from livia.concurrency.redis_backend import RedisLimiter
from tests.probes import Probe

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def _limiter(manager: ConcurrencyManager, api: str) -> RedisLimiter:
    limiter = manager._upstream(api).gate.limiter
    assert isinstance(limiter, RedisLimiter)
    return limiter


async def _script_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


@pytest.mark.parametrize("slots", [64, 16])
async def test_64_callers_share_round_trips_and_slots_hold(redis_url: str, slots: int) -> None:
    """64 callers that never wait, or queue for 16 slots (the pump admits several waiters
    per round trip): fewer script calls than attempts, never more than `slots` at once."""
    backend = RedisBackend(redis_url, prefix=f"b{uuid.uuid4().hex[:8]}")
    await backend.connect()
    manager = ConcurrencyManager({"x": ApiPolicy(max_concurrent=slots)}, backend=backend)
    client = aioredis.Redis.from_url(redis_url)
    probe = Probe(latency=0.001)
    try:
        before = await _script_calls(client)

        async def caller() -> None:
            for _ in range(20):
                assert await manager.run("x", probe.op) == "ok"

        await asyncio.gather(*(caller() for _ in range(64)))
        trips = await _script_calls(client) - before
        assert probe.peak <= slots
        assert trips <= 64 * 20 * (0.5 if slots == 64 else 0.8), f"{trips} calls, 1280 attempts"
        assert await client.zcard(backend.key("x", "leases")) == 0  # every slot handed back
        limiter = _limiter(manager, "x")
        assert limiter.batches < limiter.batched_admits
    finally:
        await client.aclose()
        await manager.aclose()


async def test_batched_windows_admit_exactly_their_limit(redis_url: str) -> None:
    """200 callers at once against 30 a minute: exactly 30 start, in batches."""
    backend = RedisBackend(redis_url, prefix=f"b{uuid.uuid4().hex[:8]}")
    await backend.connect()
    policy = ApiPolicy(max_concurrent=7, requests_per_minute=30, retry_attempts=1)
    manager = ConcurrencyManager({"w": policy}, backend=backend)
    probe = Probe(latency=0.01)
    try:
        results = await asyncio.gather(
            *(manager.run("w", probe.op, deadline=0.5) for _ in range(200)),
            return_exceptions=True,
        )
        assert results.count("ok") == 30
        assert probe.peak <= 7
        assert _limiter(manager, "w").usage()["requests_per_minute"]["used"] == 30
    finally:
        await manager.aclose()


async def test_a_failed_batch_answers_every_caller(redis_url: str) -> None:
    """Redis refusing the batch (keys that are not Livia's) answers each caller with the
    reason (a denial: Redis was reached before), none hangs."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(redis_url)
    backend = RedisBackend(redis_url, prefix=prefix)
    await backend.connect()
    await client.set(backend.key("z", "leases"), "not a sorted set")
    limiter = backend.limiter("z", ApiPolicy(max_concurrent=4))
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(limiter.acquire(1) for _ in range(10)), return_exceptions=True), 5
        )
        assert all(isinstance(r, Denial) and "WRONGTYPE" in r.reason for r in results), results
    finally:
        await client.aclose()
        await backend.aclose()
