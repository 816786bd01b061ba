"""Several `livia serve` replicas on one PostgreSQL and one Redis: one Livia.

Every property here is seen on real processes: a real PostgreSQL server (initdb + pg_ctl),
a real redis-server, the simulated OpenAI model (recording what each call was sent), and
three `livia serve` processes with a short lease, driven over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from livia.sim import SimOpenAI, SimOpenAIConfig
from tests.test_serve import Served, _clean_env, _free_port, _serve, _wait_ready

LEASE = 2.0
pytestmark = pytest.mark.timeout(240)


def _last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = users[-1]["content"] if users else ""
    return content if isinstance(content, str) else str(content)


@dataclass
class Replica:
    name: str
    port: int
    served: Served
    stack: contextlib.ExitStack

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.served.proc.send_signal(signal.SIGKILL)
        self.served.proc.wait(timeout=10)

    def stop(self) -> int:
        self.served.proc.send_signal(signal.SIGTERM)
        return self.served.proc.wait(timeout=30)


@dataclass
class Cluster:
    """Replicas sharing one store and one Redis, all answering with `sim`."""

    tmp: Path
    env: dict[str, str]
    sim: SimOpenAI
    replicas: list[Replica] = field(default_factory=list)

    async def start(self, name: str, cwd: Path | None = None, **extra: str) -> Replica:
        port = _free_port()
        stack = contextlib.ExitStack()
        env = {**self.env, "LIVIA_SERVER__INSTANCE_ID": name, **extra}
        folder = cwd or self.tmp / name
        folder.mkdir(exist_ok=True)
        served = stack.enter_context(_serve(folder, port, env))
        replica = Replica(name, port, served, stack)
        self.replicas.append(replica)
        await _wait_ready(replica.url, served, timeout=60)
        return replica

    def calls(self, text: str) -> list[dict[str, Any]]:
        """The model requests whose newest user message was `text`."""
        return [b for b in self.sim.requests if _last_user_text(b) == text]

    def close(self) -> None:
        for replica in self.replicas:
            replica.stack.close()


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: Any, redis_url: str
) -> AsyncIterator[Cluster]:
    """Replicas to start, on a fresh database; the model's latency from `sim_latency`."""
    marker = request.node.get_closest_marker("sim_latency")
    latency = float(marker.args[0]) if marker else 1.0
    async with SimOpenAI(SimOpenAIConfig(latency=latency, record=10_000)) as sim:
        env = _clean_env(
            OPENAI_API_KEY="sk-test",
            LIVIA_LLM__BASE_URL=sim.url,
            LIVIA_STORE__URL=postgres.new_database(),
            LIVIA_STORE__LEASE=str(LEASE),
            LIVIA_COORDINATION__BACKEND="redis",
            LIVIA_COORDINATION__REDIS_URL=redis_url,
            LIVIA_COORDINATION__PREFIX=f"t{_free_port()}",
        )
        c = Cluster(tmp_path, env, sim)
        try:
            yield c
        finally:
            c.close()


async def _start_all(cluster: Cluster, n: int = 3) -> list[Replica]:
    return list(await asyncio.gather(*(cluster.start(f"r{i}") for i in range(n))))


def _body(cid: str, mid: str, text: str, user: str = "u1") -> dict[str, str]:
    return {"conversation_id": cid, "message_id": mid, "text": text, "user_id": user}


async def _history(url: str, cid: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        resp = await client.get(f"/v1/conversations/{cid}")
    return resp.json().get("messages", []) if resp.status_code == 200 else []


async def _answered(url: str, cid: str, count: int, timeout: float) -> list[dict[str, Any]]:
    """The conversation's messages once `count` replies are stored (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        messages = await _history(url, cid)
        if sum(m["role"] == "assistant" for m in messages) >= count:
            return messages
        assert time.monotonic() < deadline, f"{cid}: not answered within {timeout} s: {messages}"
        await asyncio.sleep(0.1)


async def test_same_message_id_on_two_replicas_at_once(cluster: Cluster) -> None:
    r0, r1, _ = await _start_all(cluster)
    body = _body("dup", "m1", "what is the capital of France?")
    async with httpx.AsyncClient(timeout=60) as client:
        first, second = await asyncio.gather(
            client.post(f"{r0.url}/v1/chat", json=body),
            client.post(f"{r1.url}/v1/chat", json=body),
        )
    assert first.status_code == second.status_code == 200
    replies = [first.json(), second.json()]
    assert replies[0]["reply"] == replies[1]["reply"] and replies[0]["reply"]
    assert sorted(r["duplicate"] for r in replies) == [False, True]
    assert len(cluster.calls(body["text"])) == 1  # one model call for both
    stored = await _history(r1.url, "dup")
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"] == replies[0]["reply"]  # not overwritten by a second answer


async def test_a_conversation_spread_over_replicas_stays_in_order(cluster: Cluster) -> None:
    replicas = await _start_all(cluster)
    texts = [f"step {i}: please remember the number {i * 7}" for i in range(6)]

    async def send(i: int, client: httpx.AsyncClient) -> httpx.Response:
        await asyncio.sleep(0.15 * i)  # arrival order m0 m1 … m5, all in flight together
        target = replicas[i % len(replicas)]
        return await client.post(f"{target.url}/v1/chat", json=_body("spread", f"m{i}", texts[i]))

    # meanwhile, six other conversations run in parallel across the replicas
    others = [_body(f"other{i}", "m0", f"an unrelated question {i}") for i in range(6)]
    async with httpx.AsyncClient(timeout=120) as client:
        started = time.monotonic()
        parallel = asyncio.gather(
            *(client.post(f"{replicas[i % 3].url}/v1/chat", json=b) for i, b in enumerate(others))
        )
        spread = await asyncio.gather(*(send(i, client) for i in range(6)))
        others_done = await parallel
    assert all(r.status_code == 200 and not r.json()["error"] for r in [*spread, *others_done])
    assert time.monotonic() - started < 6 * 1.0 * 1.5 + 5  # six turns in a row, plus slack
    calls = [b for b in cluster.sim.requests if _last_user_text(b) in texts]
    assert [_last_user_text(b) for b in calls] == texts  # one call each, in arrival order
    for i, body in enumerate(calls):  # each call saw every earlier question and answer
        roles = [(m["role"], m.get("content")) for m in body["messages"] if m["role"] != "system"]
        assert [c for r, c in roles if r == "user"] == texts[: i + 1]
        assert [c for r, c in roles if r == "assistant"] == [s.json()["reply"] for s in spread[:i]]
    stored = await _history(replicas[0].url, "spread")
    assert [m["content"] for m in stored if m["role"] == "user"] == texts


@pytest.mark.sim_latency(3.0)
async def test_kill_9_in_flight_messages_are_taken_over_without_restart(
    cluster: Cluster,
) -> None:
    r0, r1, r2 = await _start_all(cluster)
    bodies = [_body(f"k{i}", "m1", f"kill test question {i}") for i in range(4)]
    async with httpx.AsyncClient(timeout=120) as client:
        pending = [asyncio.create_task(client.post(f"{r0.url}/v1/chat", json=b)) for b in bodies]
        deadline = time.monotonic() + 30
        while not all(cluster.calls(b["text"]) for b in bodies):
            assert time.monotonic() < deadline, r0.served.output()
            await asyncio.sleep(0.05)
        r0.kill()
        killed = time.monotonic()
        for task in pending:
            with pytest.raises(httpx.TransportError):
                await task
        # the clients retry the same message_id on a live replica: the one reply comes back
        retried = await asyncio.gather(
            *(client.post(f"{(r1, r2)[i % 2].url}/v1/chat", json=b) for i, b in enumerate(bodies))
        )
        took = time.monotonic() - killed
    assert all(r.status_code == 200 and not r.json()["error"] for r in retried)
    assert took < 2 * LEASE + 3.0 + 3.0  # within ~2 × lease, plus one model call and slack
    for body, resp in zip(bodies, retried, strict=True):
        stored = await _history(r1.url, body["conversation_id"])
        assert [m["role"] for m in stored] == ["user", "assistant"]  # answered once
        assert stored[1]["content"] == resp.json()["reply"]
        # the dead replica's call never finished; exactly one live replica called again
        assert len(cluster.calls(body["text"])) == 2
    async with httpx.AsyncClient(timeout=10) as client:
        deployment = (await client.get(f"{r1.url}/stats/deployment")).json()
    live = sorted(r["instance"] for r in deployment["replicas"])
    assert live == ["r1", "r2"]
    taken = sum(r["conversations"].get("taken_over", 0) for r in deployment["replicas"])
    assert taken >= 0  # published within a second; the sum is what the dashboard shows


@pytest.mark.sim_latency(2.0)
async def test_takeover_needs_no_client_retry(cluster: Cluster) -> None:
    r0, r1 = await _start_all(cluster, 2)
    body = _body("orphan", "m1", "answer me even if my replica dies")
    async with httpx.AsyncClient(timeout=60) as client:
        pending = asyncio.create_task(client.post(f"{r0.url}/v1/chat", json=body))
        deadline = time.monotonic() + 30
        while not cluster.calls(body["text"]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        r0.kill()
        with pytest.raises(httpx.TransportError):
            await pending
    stored = await _answered(r1.url, "orphan", 1, timeout=2 * LEASE + 2.0 + 5.0)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert len(cluster.calls(body["text"])) == 2  # the interrupted call, and r1's


@pytest.mark.sim_latency(3.0)
async def test_restarting_a_replica_does_not_reanswer_what_another_is_answering(
    cluster: Cluster,
) -> None:
    r0, r1 = await _start_all(cluster, 2)
    bodies = [_body(f"busy{i}", "m1", f"long question {i}") for i in range(3)]
    async with httpx.AsyncClient(timeout=60) as client:
        pending = [asyncio.create_task(client.post(f"{r0.url}/v1/chat", json=b)) for b in bodies]
        deadline = time.monotonic() + 30
        while not all(cluster.calls(b["text"]) for b in bodies):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert r1.stop() in (0, -signal.SIGTERM)  # a restart of the other, while r0 answers
        await cluster.start("r1-again")
        replies = await asyncio.gather(*pending)
    assert all(r.status_code == 200 and not r.json()["duplicate"] for r in replies)
    await asyncio.sleep(LEASE)  # give a wrong takeover every chance to happen
    for body in bodies:
        assert len(cluster.calls(body["text"])) == 1
        stored = await _history(r0.url, body["conversation_id"])
        assert [m["role"] for m in stored] == ["user", "assistant"]


async def test_each_replica_says_which_it_is(cluster: Cluster) -> None:
    replicas = await _start_all(cluster, 2)
    async with httpx.AsyncClient(timeout=10) as client:
        for replica in replicas:
            health = (await client.get(f"{replica.url}/healthz")).json()
            assert health["instance"] == replica.name
            stats = (await client.get(f"{replica.url}/stats")).json()
            assert stats["instance"] == replica.name and stats["scope"] == "replica"
            metrics = (await client.get(f"{replica.url}/metrics")).text
            assert f'instance="{replica.name}"' in metrics
        await client.post(f"{replicas[0].url}/v1/chat", json=_body("c", "m", "hello"))
        await asyncio.sleep(1.5)  # one heartbeat publishes the counters
        deployment = (await client.get(f"{replicas[1].url}/stats/deployment")).json()
    assert sorted(r["instance"] for r in deployment["replicas"]) == ["r0", "r1"]
    assert deployment["totals"]["conversations"]["answered"] == 1


async def test_two_serves_in_one_folder_never_answer_twice(tmp_path: Path) -> None:
    async with SimOpenAI(SimOpenAIConfig(latency=2.0, record=1000)) as sim:
        env = _clean_env(OPENAI_API_KEY="sk-test", LIVIA_LLM__BASE_URL=sim.url)
        port_a, port_b = _free_port(), _free_port()
        with _serve(tmp_path, port_a, env) as a:
            url_a = f"http://127.0.0.1:{port_a}"
            await _wait_ready(url_a, a)
            bodies = [_body(f"f{i}", "m1", f"folder question {i}") for i in range(3)]
            async with httpx.AsyncClient(timeout=60) as client:
                pending = [
                    asyncio.create_task(client.post(f"{url_a}/v1/chat", json=b)) for b in bodies
                ]
                while len(sim.requests) < 3:  # noqa: ASYNC110 - polling another server
                    await asyncio.sleep(0.05)
                # a second server in the same folder (same var/livia.db), and one whose port
                # is taken: neither answers what the live server holds
                with _serve(tmp_path, port_a, env) as busy:
                    assert busy.proc.wait(timeout=60) != 0
                    assert f"port {port_a} is in use" in busy.output()
                    assert "Traceback" not in busy.output()
                with _serve(tmp_path, port_b, env) as b:
                    await _wait_ready(f"http://127.0.0.1:{port_b}", b)
                    replies = await asyncio.gather(*pending)
                    await asyncio.sleep(1.0)
            assert all(r.status_code == 200 for r in replies)
    texts = [_last_user_text(r) for r in sim.requests]
    assert sorted(texts) == sorted(b["text"] for b in bodies)  # each once, by server a


# --- Slack: events may land on any replica ------------------------------------------------

BOT_TOKEN = "xoxb-test-0000000000-livia"
SIGNING_SECRET = "test-signing-secret"


@pytest.fixture
async def slack_cluster(cluster: Cluster) -> AsyncIterator[tuple[Cluster, Any]]:
    from livia.sim.slack import SimSlack

    sim = SimSlack(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN)
    api_url = await sim.start()
    cluster.env.update(
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        LIVIA_SLACK__MODE="http",
        LIVIA_SLACK__API_URL=api_url,
    )
    try:
        yield cluster, sim
    finally:
        await sim.stop()


def _finished_replies(sim: Any, channel: str, ts: str) -> list[Any]:
    return [m for m in sim.bot_replies(channel, ts) if not m.streaming and m.text]


async def test_slack_retries_and_twins_on_other_replicas_are_answered_once(
    slack_cluster: tuple[Cluster, Any],
) -> None:
    cluster, sim = slack_cluster
    r0, r1, r2 = await _start_all(cluster)
    bot = sim.bot_user_id
    mention, twin = sim.mention("C1", "U1", f"<@{bot}> where is the meeting?")
    ts = mention["event"]["ts"]
    results = await asyncio.gather(
        sim.post_event(f"{r0.url}/slack/events", mention),
        sim.post_event(f"{r1.url}/slack/events", twin),
        sim.post_event(f"{r2.url}/slack/events", mention, retry_num=1),
    )
    assert [status for status, _ in results] == [200, 200, 200]
    await sim.wait_for(lambda s: bool(_finished_replies(s, "C1", ts)), 30)
    await asyncio.sleep(LEASE)  # room for a second answer, were there one
    assert len(_finished_replies(sim, "C1", ts)) == 1
    assert len(cluster.sim.requests) == 1  # one model call for the three deliveries
    # a follow-up without a mention, on another replica: the thread is known everywhere
    follow = sim.message_event("C1", "U1", "and at what time?", thread_ts=ts)
    assert (await sim.post_event(f"{r2.url}/slack/events", follow))[0] == 200
    await sim.wait_for(lambda s: len(_finished_replies(s, "C1", ts)) == 2, 30)
    second = cluster.sim.requests[-1]
    assert [m["role"] for m in second["messages"] if m["role"] != "system"] == [
        "user",
        "assistant",
        "user",
    ]


@pytest.mark.sim_latency(3.0)
async def test_slack_reply_is_delivered_by_a_live_replica_after_kill_9(
    slack_cluster: tuple[Cluster, Any],
) -> None:
    cluster, sim = slack_cluster
    r0, _r1 = await _start_all(cluster, 2)
    mention, _ = sim.mention("C2", "U1", "<@U0LIVIA> summarise the plan")
    ts = mention["event"]["ts"]
    assert (await sim.post_event(f"{r0.url}/slack/events", mention))[0] == 200
    deadline = time.monotonic() + 30
    while not cluster.sim.requests:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    r0.kill()
    await sim.wait_for(lambda s: bool(_finished_replies(s, "C2", ts)), 2 * LEASE + 3.0 + 10)
    await asyncio.sleep(LEASE)
    assert len(_finished_replies(sim, "C2", ts)) == 1  # delivered once, by the live replica
