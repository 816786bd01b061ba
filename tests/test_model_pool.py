"""The model's chat streams (`ModelWire`): a connection for every slot of their upstream
(issue 12), the SDK's headers, and the environment's proxy.

aiohttp keeps every connection it opened alive for `KEEPALIVE` seconds (it has no count
of kept connections), so what bounds them is the connector's limit.
"""

from __future__ import annotations

from typing import Any

from livia.agent.model import make_openai_client, model_connections
from livia.agent.wire import KEEPALIVE, ModelWire
from livia.config import Settings


def test_every_slot_has_a_connection_and_the_total_is_bounded() -> None:
    assert model_connections(Settings(apis={"openai": {"max_concurrent": 1500}})) == 1500
    assert model_connections(Settings(apis={"openai": {"max_concurrent": 5000}})) == 2000
    assert model_connections(Settings()) == 1000  # openai: 8 at once


async def test_the_wire_opens_its_pool_with_that_bound_and_the_sdks_headers() -> None:
    settings = Settings(llm={"base_url": "http://127.0.0.1:9/v1"})
    wire = ModelWire(make_openai_client(settings), connections=1500)
    session = wire._open()
    try:
        assert session.connector is not None and session.connector.limit == 1500
        assert session.connector._keepalive_timeout == KEEPALIVE
        assert session.headers["Authorization"].startswith("Bearer ")
        assert session.headers["User-Agent"].startswith("AsyncOpenAI/Python")
        assert wire.url == "http://127.0.0.1:9/v1/chat/completions"
    finally:
        await session.close()


async def test_the_environments_proxy_carries_the_chat_streams(monkeypatch: Any) -> None:
    """HTTP_PROXY is honoured as httpx would (read once): the model's host does not even
    resolve, so only the proxy (the simulator, answering absolute-form requests) can answer."""
    from livia.agent.model import ModelClient
    from livia.concurrency import ConcurrencyManager
    from livia.sim import SimOpenAI, SimOpenAIConfig

    async with SimOpenAI(SimOpenAIConfig(record=1)) as sim:
        for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", sim.url.removesuffix("/v1"))
        settings = Settings(llm={"base_url": "http://model.invalid/v1"})
        manager = ConcurrencyManager(settings.policies())
        model = ModelClient(settings.llm, manager, make_openai_client(settings))
        try:
            reply = await model.complete(
                [{"role": "user", "content": "hello"}], [], key="u", on_text=lambda _: None
            )
        finally:
            await model.aclose()
        assert reply.text and len(sim.requests) == 1
        monkeypatch.setenv("NO_PROXY", "model.invalid")
        assert ModelWire(make_openai_client(settings)).proxy is None
