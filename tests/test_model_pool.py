"""The model's HTTP client has a connection for every slot of its upstream (issue 12).

The SDK's aiohttp adapter keeps every connection it opened alive for `keepalive_expiry`
(aiohttp has no count of kept connections), so what bounds it is `max_connections`.
"""

from __future__ import annotations

import httpx2

from livia.agent.model import make_openai_client
from livia.config import Settings


def _limits(settings: Settings) -> httpx2.Limits:
    transport = make_openai_client(settings)._client._transport  # the SDK's aiohttp adapter
    limits: httpx2.Limits = transport.limits
    return limits


def test_every_slot_has_a_connection_and_the_total_is_bounded() -> None:
    many = _limits(Settings(apis={"openai": {"max_concurrent": 1500}}))
    assert many.max_connections == 1500
    wide = _limits(Settings(apis={"openai": {"max_concurrent": 5000}}))
    assert wide.max_connections == 2000  # bounded, however wide the policy
    assert wide.keepalive_expiry == 5.0


def test_small_limits_keep_the_sdk_defaults() -> None:
    assert _limits(Settings()).max_connections == 1000  # openai: 8 at once
