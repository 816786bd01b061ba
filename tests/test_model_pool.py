"""The model's HTTP client keeps a connection alive for every slot of its upstream (issue 12)."""

from __future__ import annotations

import httpx2

from livia.agent.model import make_openai_client
from livia.config import Settings


def _limits(settings: Settings) -> httpx2.Limits:
    transport = make_openai_client(settings)._client._transport  # the SDK's aiohttp adapter
    limits: httpx2.Limits = transport.limits
    return limits


def test_every_slot_keeps_its_connection_alive() -> None:
    limits = _limits(Settings(apis={"openai": {"max_concurrent": 500}}))
    assert limits.max_keepalive_connections == 500
    assert limits.max_connections is not None and limits.max_connections >= 500
    wide = _limits(Settings(apis={"openai": {"max_concurrent": 5000}}))
    assert wide.max_keepalive_connections == wide.max_connections == 2000  # bounded


def test_small_limits_keep_the_sdk_defaults() -> None:
    limits = _limits(Settings())  # openai: 8 at once
    assert (limits.max_connections, limits.max_keepalive_connections) == (1000, 100)
