"""The model's HTTP client keeps a connection alive for every slot of its upstream (issue 12)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from livia.agent.model import make_openai_client
from livia.config import Settings


class _Pool:
    """The model client's connection pools (httpx's, one per shard), summed."""

    def __init__(self, settings: Settings) -> None:
        transport = make_openai_client(settings)._client._transport
        self.pools = [shard._pool for shard in transport.shards]
        self.max_connections = sum(p._max_connections for p in self.pools)
        self.max_keepalive = sum(p._max_keepalive_connections for p in self.pools)


def test_every_slot_keeps_its_connection_alive() -> None:
    pool = _Pool(Settings(apis={"openai": {"max_concurrent": 500}}))
    assert 500 <= pool.max_keepalive < 500 + len(pool.pools)
    assert pool.max_connections >= 500
    wide = _Pool(Settings(apis={"openai": {"max_concurrent": 5000}}))
    assert 2000 <= wide.max_keepalive == wide.max_connections < 2000 + len(wide.pools)  # bounded


def test_small_limits_keep_the_sdk_defaults() -> None:
    pool = _Pool(Settings())  # openai: 8 at once
    assert (pool.max_connections, pool.max_keepalive) == (1000, 100)


# --- the sharded transport, against a real server ------------------------------------------


def _slow_app() -> Any:
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.get("/slow")
    async def slow() -> StreamingResponse:
        async def body() -> Any:
            for _ in range(5):
                await asyncio.sleep(0.05)
                yield b"data: {}\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    return app


async def test_requests_spread_over_shards_and_are_counted_until_closed(
    live_server: Callable[[Any], str],
) -> None:
    import asyncio

    import httpx2

    from livia.agent.pool import ShardedTransport

    url = live_server(_slow_app())
    transport = ShardedTransport(httpx2.Limits(max_keepalive_connections=100), shard_size=16)
    assert len(transport.shards) == 7
    peak = [0] * 7
    async with httpx2.AsyncClient(transport=transport, timeout=30) as client:

        async def one() -> bytes:
            async with client.stream("GET", f"{url}/slow") as response:
                for i, n in enumerate(transport.in_flight):
                    peak[i] = max(peak[i], n)
                return await response.aread()

        bodies = await asyncio.gather(*(one() for _ in range(70)))
        assert all(body.count(b"data:") == 5 for body in bodies)
        assert transport.in_flight == [0] * 7  # every closed response gave its count back
        assert max(peak) <= 11 and min(peak) >= 9  # least busy first: 70 over 7 shards

        # abandoned mid-body (a client gone, a timeout) and refused: counted back too
        tasks = [asyncio.create_task(one()) for _ in range(20)]
        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(httpx2.ConnectError):
            await client.get("http://127.0.0.1:1/")
        assert transport.in_flight == [0] * 7
