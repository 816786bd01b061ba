"""Many users at once over real HTTP: order, bounds, makespan, and upstream bursts absorbed."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx

LATENCY = 1.5  # seconds per model call: generous against HTTP, SQLite and SDK overheads
CONCURRENCY = 8
CONVERSATIONS = 10
PER_CONVERSATION = 4


def _text(cid: str, k: int) -> str:
    return f"{cid} question {k}"


async def test_forty_messages_in_ten_conversations(livia_server: Any) -> None:
    srv = await livia_server(latency=LATENCY, apis={"openai": {"max_concurrent": CONCURRENCY}})
    cids = [f"conv{c}" for c in range(CONVERSATIONS)]
    bodies = [
        {"conversation_id": cid, "user_id": f"user-{cid}", "text": _text(cid, k)}
        for k in range(PER_CONVERSATION)
        for cid in cids
    ]
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as client:
        t0 = time.monotonic()
        responses = await asyncio.gather(*(client.post("/v1/chat", json=b) for b in bodies))
        makespan = time.monotonic() - t0
        histories = {
            cid: (await client.get(f"/v1/conversations/{cid}")).json()["messages"] for cid in cids
        }

    # every message answered, with its own reply (the simulated model quotes the text)
    for body, resp in zip(bodies, responses, strict=True):
        assert resp.status_code == 200
        data = resp.json()
        assert data["error"] is None and body["text"] in data["reply"]
    assert len(srv.model_requests) == len(bodies)  # one model call per message, no more

    # per conversation, the model got the messages in arrival order, each with the ones
    # before it (and their replies) as history
    for cid in cids:
        arrival = [m["content"] for m in histories[cid] if m["role"] == "user"]
        assert sorted(arrival) == [_text(cid, k) for k in range(PER_CONVERSATION)]
        seen = [
            [m["content"] for m in req["messages"] if m["role"] == "user"]
            for req in srv.model_requests
            if req["messages"][-1]["content"].startswith(f"{cid} ")
        ]
        assert [users[-1] for users in seen] == arrival
        assert all(users == arrival[: i + 1] for i, users in enumerate(seen))

    # the model never saw more than the configured concurrency, and no capacity was wasted
    assert srv.sim.stats.peak_concurrency <= CONCURRENCY
    chain = PER_CONVERSATION * LATENCY  # one conversation is answered serially
    rounds = math.ceil(len(bodies) / CONCURRENCY) * LATENCY  # the model's capacity
    bound = max(chain, rounds)
    ratio = makespan / bound
    print(
        f"\n40 messages / 10 conversations: makespan {makespan:.2f} s, bound {bound:.2f} s, "
        f"ratio {ratio:.3f}, model peak {srv.sim.stats.peak_concurrency}"
    )
    # 1.07-1.12 on an idle machine; make test runs files on three workers sharing 2 cores
    assert ratio <= 1.3


async def test_model_429_and_5xx_bursts_are_absorbed(livia_server: Any) -> None:
    srv = await livia_server(
        latency=0.2,
        # the model takes 3 at once and fails 20 % of requests; Livia is told 8 (wrong)
        sim={"max_concurrent": 3, "fail_rate": 0.2, "seed": 7},
        apis={
            "openai": {
                "max_concurrent": 8,
                "retry_attempts": 10,
                "backoff_min": 0.05,
                "backoff_max": 0.4,
                "circuit_failures": 0,
            }
        },
    )
    bodies = [
        {"conversation_id": f"b{c}", "user_id": f"u{c}", "text": f"b{c} item {k}"}
        for k in range(2)
        for c in range(8)
    ]
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/chat", json=b) for b in bodies))
    for body, resp in zip(bodies, responses, strict=True):
        data = resp.json()
        assert resp.status_code == 200 and data["error"] is None, data
        assert body["text"] in data["reply"]
    stats = srv.sim.stats
    print(
        f"\nbursts: {stats.rate_limited} x 429 and {stats.failed} x 5xx absorbed, "
        f"{stats.ok} replies"
    )
    assert stats.rate_limited > 0 and stats.failed > 0
    assert srv.livia.manager.get_stats("openai")["retries"] > 0
