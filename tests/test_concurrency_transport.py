"""The governed transport: the official openai client, every request through the manager."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

from livia.concurrency import ApiPolicy, CapacityExhausted, ConcurrencyManager
from livia.concurrency.transport import call_context, governed_client
from livia.sim import SimOpenAI, SimOpenAIConfig


async def test_openai_client_is_bounded_and_retried_through_the_transport() -> None:
    # The server allows 2 at once (429 beyond); Livia is configured for 2 and retries.
    async with SimOpenAI(SimOpenAIConfig(latency=0.3, max_concurrent=2, fail_rate=0.0)) as sim:
        manager = ConcurrencyManager(
            {"openai": ApiPolicy(max_concurrent=2, retry_attempts=3, backoff_min=0.05)}
        )
        client = AsyncOpenAI(
            base_url=sim.url,
            api_key="sk-test",
            max_retries=0,
            http_client=governed_client(manager, "openai"),
        )

        async def ask(i: int) -> str:
            with call_context(key=f"user-{i % 3}", cost=50):
                reply = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {i}"}]
                )
            return reply.choices[0].message.content or ""

        replies = await asyncio.gather(*(ask(i) for i in range(6)))
        assert all(f"hello {i}" in r for i, r in enumerate(replies))
        assert sim.stats.peak_concurrency == 2 and sim.stats.rate_limited == 0
        stats = manager.get_stats("openai")
        assert stats["successful_requests"] == 6 and stats["peak_concurrent"] == 2
        await client.close()


async def test_a_429_beyond_the_deadline_fails_fast_with_the_date() -> None:
    # The server allows 2 requests a minute; Livia was told more. The 3rd call gets a 429
    # whose Retry-After lies beyond the caller's deadline, so it fails fast, not sleeps.
    async with SimOpenAI(SimOpenAIConfig(requests_per_minute=2)) as sim:
        manager = ConcurrencyManager(
            {"openai": ApiPolicy(max_concurrent=4, retry_attempts=3, backoff_min=0.01)}
        )
        client = AsyncOpenAI(
            base_url=sim.url,
            api_key="x",
            max_retries=0,
            http_client=governed_client(manager, "openai"),
        )

        async def ask() -> object:
            with call_context(deadline=5):
                return await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )

        await ask()
        await ask()
        with pytest.raises(CapacityExhausted) as info:
            await ask()
        assert info.value.retry_after > 5 and "rate limited" in str(info.value)
        stats = manager.get_stats("openai")
        assert stats["http_429"] == 1 and sim.stats.rate_limited == 1
        await client.close()
