"""Redis going away and coming back (issue 10 item 14), and starts counted from when a
request surely left (item 15), against a real redis-server."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from livia.agent.failures import model_failure
from livia.concurrency import (
    ApiPolicy,
    CapacityExhausted,
    ConcurrencyManager,
    CoordinationUnavailable,
    RedisBackend,
)
from livia.monitoring.metrics import metrics_registry
from tests.redis_server import RedisServer, _pings, find_redis_server

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="no redis-server binary")


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    server = RedisServer(find_redis_server() or "")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _restart_same_port(server: RedisServer) -> None:
    """Start redis-server again on the port it had (as after an outage)."""
    args = [
        server.binary, "--port", str(server.port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", server._dir.name, "--loglevel", "warning",
    ]  # fmt: skip
    server.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not _pings(server.port):
        assert time.monotonic() < deadline, "redis-server did not restart"
        time.sleep(0.02)


POLICY = ApiPolicy(
    max_concurrent=4, requests_per_minute=20, retry_attempts=1, max_wait=2.0, circuit_failures=0
)


async def _manager(url: str, on_outage: str) -> ConcurrencyManager:
    # lease_ttl 1.5 s: each replica says it is alive every 0.5 s
    backend = RedisBackend(url, prefix="outage", timeout=0.3, lease_ttl=1.5, on_outage=on_outage)
    await backend.connect()
    return ConcurrencyManager({"openai": POLICY}, backend=backend)


async def _fire(manager: ConcurrencyManager, n: int, deadline: float) -> tuple[int, list[str]]:
    async def op() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    results = await asyncio.gather(
        *(manager.run("openai", op, deadline=deadline) for _ in range(n)), return_exceptions=True
    )
    errors = [type(r).__name__ for r in results if isinstance(r, BaseException)]
    return n - len(errors), errors


def _mode_metrics(manager: Any) -> dict[str, float]:
    """`livia_coordination_mode` as /metrics shows it for a Livia running on `manager`."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    app = SimpleNamespace(state=SimpleNamespace(livia=SimpleNamespace(manager=manager)))
    text = generate_latest(metrics_registry(app)).decode()
    return {
        sample.labels["mode"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "livia_coordination_mode"
        for sample in family.samples
    }


async def test_local_mode_answers_within_its_share_then_rejoins(redis_srv: RedisServer) -> None:
    a = await _manager(redis_srv.url, "local")
    b = await _manager(redis_srv.url, "local")  # a second replica, seen alive in Redis
    waiting = await _manager(redis_srv.url, "wait")
    try:
        assert a.get_stats("openai")["coordination"]["mode"] == "shared"
        ok, _ = await _fire(a, 4, 2.0)
        assert ok == 4
        await asyncio.sleep(0.6)  # every replica has seen the others
        assert a.get_stats("openai")["coordination"]["replicas"] == 3

        redis_srv.stop_process()  # the outage
        ok_a, errors_a = await _fire(a, 20, 1.5)
        ok_b, _ = await _fire(b, 20, 1.5)
        coordination = a.get_stats("openai")["coordination"]
        # share: 20 // 3 = 6 a minute each; a spent 4 of them before the outage
        assert coordination == {
            "backend": "redis",
            "mode": "local",
            "replicas": 3,
            "on_outage": "local",
        }
        assert ok_a == 2 and ok_b == 6 - 2  # b starts with its third of the 4 seen shared
        assert _mode_metrics(a) == {"shared": 0.0, "local": 1.0, "waiting": 0.0}
        assert 4 + ok_a + ok_b <= POLICY.requests_per_minute
        assert set(errors_a) == {"CapacityExhausted"}
        # "wait" replicas start nothing, and say why: Redis, not a usage limit.
        started = time.monotonic()
        with pytest.raises(CoordinationUnavailable) as caught:
            await waiting.run("openai", lambda: asyncio.sleep(0), deadline=1.0)
        assert time.monotonic() - started < 3
        assert waiting.get_stats("openai")["coordination"]["mode"] == "waiting"
        assert _mode_metrics(waiting)["waiting"] == 1.0
        apology = model_failure(caught.value)
        assert "Redis" in apology.apology and "at its usage limit" not in apology.apology, apology

        _restart_same_port(redis_srv)  # Redis is back (empty: no persistence)
        await asyncio.sleep(1.1)  # past the probe interval
        ok_a2, _ = await _fire(a, 1, 5.0)
        assert ok_a2 == 1
        assert a.get_stats("openai")["coordination"]["mode"] == "shared"
        assert _mode_metrics(a)["shared"] == 1.0
        client = aioredis.Redis.from_url(redis_srv.url)
        try:
            counted = await client.zcard("outage:{openai}:requests_per_minute")
        finally:
            await client.aclose()
        assert counted == ok_a + 1  # the local starts were counted into the shared window
        print(
            f"\noutage: local shares a={ok_a} b={ok_b} (+4 before), wait mode refused in "
            f"{time.monotonic() - started:.1f} s, rejoined with {counted} starts counted"
        )
    finally:
        for manager in (a, b, waiting):
            with_timeout = asyncio.wait_for(manager.aclose(), 10)
            await with_timeout


async def test_a_start_counts_from_when_the_request_surely_left(redis_srv: RedisServer) -> None:
    """An attempt whose request leaves 0.5 s after admission (its process starved of CPU,
    here a blocking hook) is counted from its end: the next start it holds back waits a
    whole window (+ margin) from then, so the upstream never sees two inside its window."""
    policy = ApiPolicy(max_concurrent=2, requests_per_minute=1, retry_attempts=1, max_wait=0)
    backend = RedisBackend(redis_srv.url, prefix="lag")
    await backend.connect()
    manager = ConcurrencyManager({"openai": policy}, backend=backend)
    client = aioredis.Redis.from_url(redis_srv.url)
    try:
        admitted = float((await client.time())[0]) + (await client.time())[1] / 1e6

        async def late_send() -> str:
            time.sleep(0.5)  # noqa: ASYNC251 (a blocked loop: the request leaves 0.5 s late)
            return "sent"

        assert await manager.run("openai", late_send) == "sent"
        ((_, score),) = await client.zrange(
            "lag:{openai}:requests_per_minute", 0, -1, withscores=True
        )
        assert score / 1e6 - admitted >= 0.45  # the start moved to when it surely left
        with pytest.raises(CapacityExhausted) as caught:
            await manager.run("openai", lambda: asyncio.sleep(0), deadline=1.0)
        assert caught.value.retry_after >= 60.0 + policy.window_margin - 0.2
    finally:
        await client.aclose()
        await manager.aclose()
