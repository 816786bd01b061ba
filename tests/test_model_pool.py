"""The model's HTTP client keeps a connection alive for every slot of its upstream (issue 12)."""

from __future__ import annotations

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
