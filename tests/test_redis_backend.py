"""The Redis backend against a real redis-server: the reference behaviours, and limits that
hold across separate OS processes (atomic admission, leases of killed holders, shared 429
pauses). Real time throughout (Redis keeps its own clock), with short latencies.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from livia.concurrency import (
    ApiPolicy,
    CapacityExhausted,
    ConcurrencyManager,
    Denial,
    Grant,
    MemoryBackend,
    RedisBackend,
    RedisUnavailable,
    RetryableError,
    build_manager,
    build_manager_checked,
)
from livia.concurrency.redis_backend import RedisLimiter
from livia.concurrency.window import RequestWindow
from livia.config import Settings
from tests.probes import Probe
from tests.redis_server import RedisServer, find_redis_server

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests sharing the server never meet."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def backend(redis_url: str, prefix: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(redis_url, prefix=prefix)
    await b.connect()
    yield b
    await b.aclose()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    yield c
    await c.aclose()


def policy_margin() -> float:
    """The seconds every window is widened by (ApiPolicy.window_margin, default)."""
    return ApiPolicy().window_margin


def limiter_of(manager: ConcurrencyManager, api: str) -> RedisLimiter:
    limiter = manager._upstream(api).gate.limiter
    assert isinstance(limiter, RedisLimiter)
    return limiter


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll `check` until it is true; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def join(process: Any, timeout: float) -> None:
    """Wait for a child process to end (bounded) without blocking the loop."""
    deadline = time.monotonic() + timeout
    while process.is_alive():
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"worker process still running after {timeout} s")
        await asyncio.sleep(0.05)
    process.join(1)


# --- the reference behaviours of DESIGN.md, through Redis (0.2 s instead of 2 s) ----------

REFERENCE = {
    "openai": ApiPolicy(max_concurrent=8, requests_per_minute=500, requests_per_hour=10_000),
    "zapier": ApiPolicy(max_concurrent=3, requests_per_minute=60, requests_per_hour=75),
}


async def timed(*calls: Awaitable[Any]) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*calls)
    return time.perf_counter() - t0


async def test_ten_calls_on_eight_slots_take_two_rounds(backend: RedisBackend) -> None:
    manager = ConcurrencyManager(REFERENCE, backend=backend)
    probe = Probe(latency=0.2)
    elapsed = await timed(*(manager.run("openai", probe.op) for _ in range(10)))
    assert 0.4 <= elapsed < 0.6, elapsed
    assert probe.peak == 8
    stats = manager.get_stats("openai")
    assert stats["backend"] == "redis"
    assert stats["total_requests"] == stats["successful_requests"] == 10
    assert stats["success_rate"] == 1.0 and stats["concurrent_requests"] == 0
    assert stats["average_response_time"] == pytest.approx(0.2, abs=0.05)
    assert stats["limits"]["requests_per_minute"] == {
        "limit": 500,
        "used": 10,
        "window_s": 60.0,
    }
    assert stats["limits"]["max_concurrent"]["used"] == 0


async def test_six_zapier_calls_take_two_rounds(backend: RedisBackend) -> None:
    manager = ConcurrencyManager(REFERENCE, backend=backend)
    probe = Probe(latency=0.2)
    elapsed = await timed(*(manager.run("zapier", probe.op) for _ in range(6)))
    assert 0.4 <= elapsed < 0.6, elapsed
    assert probe.peak == 3


async def test_upstreams_never_wait_on_each_other(backend: RedisBackend) -> None:
    manager = ConcurrencyManager(REFERENCE, backend=backend)
    openai, zapier = Probe(latency=0.2), Probe(latency=0.2)
    elapsed = await timed(
        *(manager.run("openai", openai.op) for _ in range(5)),
        *(manager.run("zapier", zapier.op) for _ in range(3)),
    )
    assert 0.2 <= elapsed < 0.3, elapsed
    assert (openai.peak, zapier.peak) == (5, 3)


async def test_retries_back_off_without_holding_a_slot(backend: RedisBackend) -> None:
    policy = ApiPolicy(max_concurrent=1, backoff_min=0.1, backoff_max=1.0, backoff_jitter=0.0)
    manager = ConcurrencyManager({"x": policy}, backend=backend)
    flaky = Probe(failures=[TimeoutError(), TimeoutError()])
    other = Probe(latency=0.05)
    results = await asyncio.gather(manager.run("x", flaky.op), manager.run("x", other.op))
    assert results == ["ok", "ok"]
    gaps = [b - a for a, b in zip(flaky.starts, flaky.starts[1:], strict=False)]
    assert gaps == pytest.approx([0.1, 0.2], abs=0.06)
    assert manager.get_stats("x")["retries"] == 2


async def test_hourly_quota_spent_fails_fast_with_the_hour(backend: RedisBackend) -> None:
    manager = ConcurrencyManager({"zapier": ApiPolicy(requests_per_hour=3)}, backend=backend)
    for _ in range(3):
        await manager.run("zapier", Probe().op)
    t0 = time.perf_counter()
    with pytest.raises(CapacityExhausted) as info:
        await manager.run("zapier", Probe().op, deadline=30.0)
    assert time.perf_counter() - t0 < 0.1
    assert 3590 < info.value.retry_after <= 3600 + policy_margin()
    assert "3 requests per hour used" in str(info.value)
    assert manager.get_stats("zapier")["capacity_exhausted"] == 1


async def test_tokens_settle_to_the_real_usage(backend: RedisBackend) -> None:
    manager = ConcurrencyManager({"llm": ApiPolicy(tokens_per_minute=1000)}, backend=backend)

    def answer(tokens: int) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def op() -> dict[str, Any]:
            return {"usage": {"total_tokens": tokens}}

        return op

    await manager.run("llm", answer(100), cost=600)
    assert manager.get_stats("llm")["limits"]["tokens_per_minute"]["used"] == 100
    # 600 more fit only because the first reservation was settled down to 100.
    await manager.run("llm", answer(900), cost=600, deadline=0.0)
    assert manager.get_stats("llm")["limits"]["tokens_per_minute"]["used"] == 1000
    with pytest.raises(CapacityExhausted) as info:
        await manager.run("llm", answer(1), cost=1, deadline=0.5)
    assert "tokens per minute" in str(info.value)
    assert 55 < info.value.retry_after <= 60 + policy_margin()


async def test_estimate_mirrors_the_memory_window(
    backend: RedisBackend, client: aioredis.Redis
) -> None:
    limiter = backend.limiter("w", ApiPolicy(max_concurrent=100, requests_per_minute=5))
    for i in range(5):
        grant = await limiter.acquire(1)
        assert isinstance(grant, Grant)
        await limiter.release(grant)
        if i < 4:
            await asyncio.sleep(0.01)
    key = backend.key("w", "requests_per_minute")
    starts: list[Any] = await client.zrange(key, 0, -1, withscores=True)
    window = RequestWindow("requests_per_minute", 5, 60.0 + policy_margin())
    for _, score in starts:
        window.record(score / 1e6)
    for ahead in range(12):
        sec, usec = await client.time()
        now = sec + usec / 1e6
        expected = window.wait_for(now, ahead) if ahead else window.wait(now)
        denial = await limiter.estimate(1, ahead)
        assert denial is not None and denial.reason == "requests_per_minute"
        assert denial.wait == pytest.approx(expected, abs=0.01), ahead
    assert limiter.usage()["requests_per_minute"]["used"] == 5


async def test_admission_replayed_with_the_same_lease_counts_once(
    backend: RedisBackend, client: aioredis.Redis
) -> None:
    """A client retry of the admission script (its reply was lost) must not count twice."""
    limiter = backend.limiter("r", ApiPolicy(max_concurrent=1, requests_per_minute=1))
    first = await limiter._admit("acquire", "lease-1", 1, 0)
    again = await limiter._admit("acquire", "lease-1", 1, 0)
    assert first[0] == again[0] == 1
    assert await client.zcard(backend.key("r", "leases")) == 1
    assert await client.zcard(backend.key("r", "requests_per_minute")) == 1


async def test_every_key_expires_and_windows_stay_bounded(
    backend: RedisBackend, client: aioredis.Redis, prefix: str
) -> None:
    policy = ApiPolicy(
        max_concurrent=2, requests_per_minute=5, requests_per_hour=50, tokens_per_minute=10**6
    )
    manager = ConcurrencyManager({"k": policy}, backend=backend)
    results = await asyncio.gather(
        *(manager.run("k", Probe(latency=0.01).op, cost=10, deadline=0.5) for _ in range(20)),
        return_exceptions=True,
    )
    assert results.count("ok") == 5
    await limiter_of(manager, "k").pause(0.5)
    keys = [k.decode() async for k in client.scan_iter(match=f"{prefix}:*")]
    assert {k.rpartition(":")[2] for k in keys} >= {
        "requests_per_minute",
        "requests_per_hour",
        "tokens",
        "tokens_sum",
        "pause",
    }
    for key in keys:
        assert await client.pttl(key) > 0, key
    assert await client.zcard(backend.key("k", "requests_per_minute")) == 5


async def test_a_burst_larger_than_the_connection_pool_queues_for_connections(
    redis_url: str, prefix: str
) -> None:
    backend = RedisBackend(redis_url, prefix=prefix, max_connections=4)
    manager = ConcurrencyManager({"x": ApiPolicy(max_concurrent=50)}, backend=backend)
    try:
        probe = Probe(latency=0.01)
        results = await asyncio.gather(*(manager.run("x", probe.op) for _ in range(300)))
        assert results == ["ok"] * 300
        assert probe.peak <= 50
        assert not backend.down
    finally:
        await manager.aclose()


async def test_cancelled_admissions_leave_no_orphan_lease(
    backend: RedisBackend, client: aioredis.Redis
) -> None:
    limiter = backend.limiter("c", ApiPolicy(max_concurrent=1000))
    for spins in range(6):
        tasks = [asyncio.create_task(limiter.acquire(1)) for _ in range(20)]
        for _ in range(spins):
            await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.2)  # the background hand-backs
    members: list[Any] = await client.zrange(backend.key("c", "leases"), 0, -1)
    leases = {m.decode() for m in members}
    assert leases == set(limiter.held)


async def test_usage_includes_other_processes_calls(redis_url: str, prefix: str) -> None:
    policy = ApiPolicy(max_concurrent=4, requests_per_minute=100)
    one, two = (RedisBackend(redis_url, prefix=prefix) for _ in range(2))
    first = ConcurrencyManager({"u": policy}, backend=one)
    second = ConcurrencyManager({"u": policy}, backend=two)
    try:
        await asyncio.gather(*(first.run("u", Probe().op) for _ in range(7)))
        assert second.get_stats("u")["limits"]["requests_per_minute"]["used"] == 0
        await limiter_of(second, "u").refresh()  # the heartbeat does this every few seconds
        assert second.get_stats("u")["limits"]["requests_per_minute"]["used"] == 7
    finally:
        await first.aclose()
        await second.aclose()


# --- failures: Redis away at start-up, or going away later ----------------------------------


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://:secret@127.0.0.1:{port}/0"


async def test_unreachable_redis_fails_clearly_at_start() -> None:
    url = _dead_url()
    backend = RedisBackend(url, timeout=0.5)
    t0 = time.perf_counter()
    with pytest.raises(RedisUnavailable) as info:
        await backend.connect()
    assert time.perf_counter() - t0 < 2.0
    message = str(info.value)
    assert message.startswith("cannot reach Redis at redis://:***@127.0.0.1:")
    assert 'set [coordination] backend = "memory"' in message and "secret" not in message
    # Without connect(), the first call says the same.
    manager = ConcurrencyManager({"x": ApiPolicy()}, backend=backend)
    with pytest.raises(RedisUnavailable):
        await manager.run("x", Probe().op)
    await manager.aclose()
    settings = Settings(coordination={"backend": "redis", "redis_url": url})
    with pytest.raises(RedisUnavailable):
        await build_manager_checked(settings)


async def test_keys_that_are_not_ours_give_a_clear_error(
    backend: RedisBackend, client: aioredis.Redis
) -> None:
    await client.set(backend.key("x", "leases"), "something else")
    limiter = backend.limiter("x", ApiPolicy())
    denial = await limiter.acquire(1)
    assert isinstance(denial, Denial)
    assert denial.reason.startswith(f"Redis at {backend.safe_url} refused the limiter's command")
    assert "WRONGTYPE" in denial.reason and "user_script" not in denial.reason
    fresh = RedisBackend(backend.url, prefix=backend.prefix)
    try:
        with pytest.raises(RedisUnavailable, match=r"WRONGTYPE.*check \[coordination\]"):
            await fresh.limiter("x", ApiPolicy()).acquire(1)
    finally:
        await fresh.aclose()


async def test_redis_going_away_fails_closed_within_the_deadline() -> None:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary")
    server = RedisServer(binary)
    server.start()
    try:
        backend = RedisBackend(server.url, timeout=0.5)
        await backend.connect()
        manager = ConcurrencyManager({"x": ApiPolicy()}, backend=backend)
        await manager.run("x", Probe().op)
        server.stop_process()
        denial = await limiter_of(manager, "x").acquire(1)
        assert isinstance(denial, Denial) and "cannot reach Redis" in denial.reason
        t0 = time.perf_counter()
        with pytest.raises(CapacityExhausted, match="cannot reach Redis"):
            await manager.run("x", Probe().op, deadline=1.2)
        assert time.perf_counter() - t0 < 3.0
        await asyncio.wait_for(manager.aclose(), 5)
    finally:
        server.stop()


async def test_factory_picks_the_configured_backend(redis_url: str, prefix: str) -> None:
    memory = build_manager(Settings())
    assert isinstance(memory.backend, MemoryBackend)
    settings = Settings(
        coordination={"backend": "redis", "redis_url": redis_url, "prefix": prefix},
        apis={"zapier": {"max_concurrent": 2}},
    )
    manager = await build_manager_checked(settings)
    try:
        assert isinstance(manager.backend, RedisBackend)
        assert manager.backend.prefix == prefix
        assert manager.policy("zapier") == settings.policies()["zapier"]
        assert await manager.run("zapier", Probe().op) == "ok"
        assert manager.get_stats("zapier")["backend"] == "redis"
    finally:
        await manager.aclose()


# --- across processes ------------------------------------------------------------------------

SHARED = ApiPolicy(max_concurrent=3, requests_per_minute=50, retry_attempts=1, circuit_failures=0)

#: Count a start and the peak of concurrent operations, across every process.
TRACK_LUA = """
local active = redis.call('INCR', KEYS[1])
redis.call('INCR', KEYS[2])
if active > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], active)
end
return active
"""


def burst_worker(url: str, prefix: str, processes: int, calls: int) -> None:
    asyncio.run(_burst(url, prefix, processes, calls))


async def _burst(url: str, prefix: str, processes: int, calls: int) -> None:
    client = aioredis.Redis.from_url(url, socket_timeout=5)
    backend = RedisBackend(url, prefix=prefix)
    await backend.connect()
    manager = ConcurrencyManager({"shared": SHARED}, backend=backend)
    track = client.register_script(TRACK_LUA)
    active, starts, peak = (f"{prefix}:test:{k}" for k in ("active", "starts", "peak"))

    async def op() -> str:
        await track(keys=[active, starts, peak])
        try:
            await asyncio.sleep(0.02)
        finally:
            await client.decr(active)
        return "ok"

    await client.incr(f"{prefix}:test:ready")

    async def all_ready() -> bool:
        return int(await client.get(f"{prefix}:test:ready") or 0) >= processes

    await eventually(all_ready, 30, "every worker process to be ready")
    results = await asyncio.gather(
        *(manager.run("shared", op, key=f"user{i % 7}", deadline=2.0) for i in range(calls)),
        return_exceptions=True,
    )
    await client.incrby(f"{prefix}:test:ok", results.count("ok"))
    exhausted = sum(isinstance(r, CapacityExhausted) for r in results)
    await client.incrby(f"{prefix}:test:exhausted", exhausted)
    await manager.aclose()
    await client.aclose()


async def test_processes_share_one_atomic_admission(
    redis_url: str, prefix: str, client: aioredis.Redis
) -> None:
    processes, calls = 3, 200
    workers = [
        SPAWN.Process(target=burst_worker, args=(redis_url, prefix, processes, calls))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        await join(worker, 40)
    assert [w.exitcode for w in workers] == [0] * processes

    async def figure(name: str) -> int:
        return int(await client.get(f"{prefix}:test:{name}") or 0)

    assert await figure("starts") == 50  # requests_per_minute, summed over every process
    assert await figure("ok") == 50
    assert await figure("exhausted") == processes * calls - 50
    assert await figure("peak") == 3  # max_concurrent across processes, and all of it used


def holder_worker(url: str, prefix: str, ttl: float) -> None:
    asyncio.run(_hold(url, prefix, ttl))


async def _hold(url: str, prefix: str, ttl: float) -> None:
    client = aioredis.Redis.from_url(url, socket_timeout=5)
    backend = RedisBackend(url, prefix=prefix, lease_ttl=ttl)
    manager = ConcurrencyManager({"shared": SHARED}, backend=backend)

    async def op() -> None:
        await client.incr(f"{prefix}:test:holding")
        await asyncio.sleep(60)  # killed long before

    await asyncio.gather(*(manager.run("shared", op) for _ in range(3)))


async def test_slots_of_a_killed_process_return_within_the_lease_ttl(
    redis_url: str, prefix: str, client: aioredis.Redis
) -> None:
    ttl = 2.0
    worker = SPAWN.Process(target=holder_worker, args=(redis_url, prefix, ttl))
    worker.start()
    backend = RedisBackend(redis_url, prefix=prefix, lease_ttl=ttl)
    manager = ConcurrencyManager({"shared": SHARED}, backend=backend)
    try:

        async def holding() -> bool:
            return int(await client.get(f"{prefix}:test:holding") or 0) == 3

        await eventually(holding, 20, "the worker to hold all 3 slots")
        limiter = limiter_of(manager, "shared")
        # Longer than the TTL: the holder's heartbeat keeps its leases alive.
        await asyncio.sleep(ttl * 1.25)
        denial = await limiter.acquire(1)
        assert isinstance(denial, Denial) and denial.reason == "max_concurrent"
        os.kill(worker.pid or 0, signal.SIGKILL)
        t0 = time.perf_counter()
        await join(worker, 5)
        probe = Probe()
        await manager.run("shared", probe.op, deadline=10.0)
        waited = time.perf_counter() - t0
        assert ttl * 0.6 <= waited <= ttl + 0.3, waited
        assert limiter.usage()["max_concurrent"]["used"] == 0
    finally:
        if worker.is_alive():
            worker.kill()
        await manager.aclose()


def rate_limited_worker(url: str, prefix: str, retry_after: float) -> None:
    asyncio.run(_rate_limited(url, prefix, retry_after))


async def _rate_limited(url: str, prefix: str, retry_after: float) -> None:
    backend = RedisBackend(url, prefix=prefix)
    policy = SHARED.updated(retry_attempts=2, backoff_min=0.0, backoff_jitter=0.0)
    manager = ConcurrencyManager({"shared": policy}, backend=backend)
    error = RetryableError("429 Too Many Requests", retry_after=retry_after, status=429)
    probe = Probe(failures=[error])
    await manager.run("shared", probe.op)
    await manager.aclose()


async def test_a_429_in_one_process_pauses_the_others(
    redis_url: str, prefix: str, client: aioredis.Redis
) -> None:
    retry_after = 1.5
    backend = RedisBackend(redis_url, prefix=prefix)
    manager = ConcurrencyManager({"shared": SHARED}, backend=backend)
    worker = SPAWN.Process(target=rate_limited_worker, args=(redis_url, prefix, retry_after))
    worker.start()
    try:
        pause = backend.key("shared", "pause")

        async def paused() -> bool:
            return bool(await client.exists(pause))

        await eventually(paused, 20, "the other process's 429 pause")
        t0 = time.perf_counter()
        denial = await limiter_of(manager, "shared").acquire(1)
        assert isinstance(denial, Denial) and denial.reason == "paused"
        assert 1.0 < denial.wait <= retry_after
        probe = Probe()
        await manager.run("shared", probe.op, deadline=5.0)
        waited = time.perf_counter() - t0
        assert denial.wait - 0.05 <= waited <= denial.wait + 0.3, (waited, denial.wait)
        await join(worker, 10)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
        await manager.aclose()
