"""The model's HTTP client keeps a connection alive for every slot of its upstream (issue 12)."""

from __future__ import annotations

from typing import Any

from livia.agent.model import make_openai_client
from livia.config import Settings


def _pool(settings: Settings) -> Any:
    client = make_openai_client(settings)
    return client._client._transport._pool  # httpx's connection pool


def test_every_slot_keeps_its_connection_alive() -> None:
    pool = _pool(Settings(apis={"openai": {"max_concurrent": 500}}))
    assert pool._max_keepalive_connections == 500
    assert pool._max_connections >= 500
    wide = _pool(Settings(apis={"openai": {"max_concurrent": 5000}}))
    assert wide._max_keepalive_connections == wide._max_connections == 2000  # bounded


def test_small_limits_keep_the_sdk_defaults() -> None:
    pool = _pool(Settings())  # openai: 8 at once
    assert (pool._max_connections, pool._max_keepalive_connections) == (1000, 100)
