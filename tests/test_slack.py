"""Slack acceptance: the real Bolt app behind a real HTTP server (and Socket Mode), the
simulated Slack Web API, the real concurrency manager, conversations layer and store.

Most tests answer with `ScriptedResponder` (deterministic, one "model" call through
the manager's openai upstream); the concurrency and failure tests use the real agent
against the simulated OpenAI server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from livia.agent import Agent
from livia.agent.events import TextDelta, TurnDone, TurnEvent
from livia.channels.slack import SlackChannel, SlackSetupError
from livia.concurrency import ConcurrencyManager
from livia.config import Settings
from livia.conversations import ChatMessage, Conversations, Responder
from livia.sim.openai import SimOpenAI, SimOpenAIConfig
from livia.sim.slack import SimMessage, SimSlack
from livia.store import Store

BOT_TOKEN = "xoxb-test-0000000000-livia"
APP_TOKEN = "xapp-test-0000000000-livia"
SIGNING_SECRET = "test-signing-secret"
LIVIA = "U0LIVIA"

log = logging.getLogger(__name__)


@dataclass
class ScriptedResponder:
    """Answers "You said: **<text>**" after one `latency`-second "model" call on openai.

    The reply streams as a few deltas, `delta_gap` seconds apart; every call is recorded
    with the history it was given.
    """

    manager: ConcurrencyManager
    latency: float = 0.0
    delta_gap: float = 0.0
    calls: list[tuple[str, str, list[ChatMessage]]] = field(default_factory=list)

    async def respond(
        self, history: Sequence[ChatMessage], text: str, *, key: str
    ) -> AsyncIterator[TurnEvent]:
        self.calls.append((key, text, list(history)))
        await self.manager.run("openai", lambda: asyncio.sleep(self.latency), key=key)
        pieces = ["You said: ", "**", text, "**"]
        for piece in pieces:
            if self.delta_gap:
                await asyncio.sleep(self.delta_gap)
            yield TextDelta(piece)
        yield TurnDone("".join(pieces))

    def texts(self) -> list[str]:
        return [text for _, text, _ in self.calls]


@contextlib.asynccontextmanager
async def serve_here(app: FastAPI, *, lifespan: str = "off") -> AsyncIterator[str]:
    """Serve `app` with uvicorn in this event loop on a free port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn has no "started" event
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


@dataclass
class Rig:
    """One running Livia-in-Slack: simulator, manager, store, conversations, channel."""

    sim: SimSlack
    channel: SlackChannel
    conversations: Conversations
    manager: ConcurrencyManager
    store: Store
    responder: Any
    events_url: str = ""

    async def send(self, body: dict[str, Any], **kwargs: Any) -> tuple[int, str]:
        """Deliver an Events API body over signed HTTP."""
        return await self.sim.post_event(self.events_url, body, **kwargs)

    async def mention(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> str:
        """A person mentions Livia: both events Slack sends are delivered; returns the ts."""
        mention, message = self.sim.mention(
            channel, user, f"<@{LIVIA}> {text}", thread_ts=thread_ts
        )
        for body in (mention, message):
            status, _ = await self.send(body)
            assert status == 200
        return str(mention["event"]["ts"])

    async def replies(
        self, channel: str, thread_ts: str, count: int = 1, timeout: float = 10.0
    ) -> list[SimMessage]:
        """Wait for `count` finished replies by Livia in the thread."""

        def done(sim: SimSlack) -> bool:
            replies = sim.bot_replies(channel, thread_ts)
            finished = [m for m in replies if not m.streaming and "Thinking" not in m.text]
            return len(finished) >= count

        await self.sim.wait_for(done, timeout)
        return self.sim.bot_replies(channel, thread_ts)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until the channel has no event left in hand."""
        assert await self.channel.wait_idle(timeout)


def make_settings(tmp_path: Path, *, model_url: str = "", **sections: Any) -> Settings:
    """Settings for a rig: a store in `tmp_path`, the model at `model_url` if given."""
    return Settings(
        store={"url": f"sqlite:///{tmp_path}/livia.db"},
        llm={"base_url": model_url, "timeout": 10.0},
        **sections,
    )


@pytest.fixture(autouse=True)
def slack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)


@contextlib.asynccontextmanager
async def slack_rig(
    tmp_path: Path,
    *,
    mode: str = "http",
    sim: SimSlack | None = None,
    settings: Settings | None = None,
    agent: bool = False,
    min_update_interval: float = 1.0,
    max_queued: int = 1000,
    **slack: Any,
) -> AsyncIterator[Rig]:
    """Start everything; `agent=True` answers with the real agent (`settings.llm`)."""
    sim = sim or SimSlack(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN, app_token=APP_TOKEN)
    api_url = await sim.start()
    settings = settings or make_settings(tmp_path)
    settings = settings.model_copy(
        update={
            "slack": settings.slack.model_copy(update={"api_url": api_url, "mode": mode, **slack})
        }
    )
    manager = ConcurrencyManager(settings.policies())
    store = Store(settings.store.url)
    await store.open()
    responder: Responder
    if agent:
        responder = Agent(settings, manager)
        await responder.start()
    else:
        responder = ScriptedResponder(manager)
    conversations = Conversations(responder, store, max_queued=max_queued)
    channel = SlackChannel(
        settings, conversations, manager, store=store, min_update_interval=min_update_interval
    )
    await conversations.start()
    await channel.start()
    rig = Rig(sim, channel, conversations, manager, store, responder)
    try:
        if mode == "http":
            app = FastAPI()
            app.include_router(channel.router)
            async with serve_here(app) as base:
                rig.events_url = f"{base}/slack/events"
                yield rig
        else:
            yield rig
    finally:
        await channel.aclose()
        await conversations.aclose()
        if isinstance(responder, Agent):
            await responder.aclose()
        await store.close()
        await manager.aclose()
        await sim.stop()


def chat_calls(sim: SimSlack) -> list[str]:
    """The methods Livia called to write in Slack (status, messages, streams)."""
    return [c.method for c in sim.calls if c.method.startswith(("chat.", "assistant."))]


# --- HTTP events ------------------------------------------------------------------------


async def test_mention_is_answered_in_its_thread(tmp_path: Path) -> None:
    async with slack_rig(tmp_path) as rig:
        mention, message = rig.sim.mention("C1", "U1", f"<@{LIVIA}> hello there")
        began = time.monotonic()
        status, _ = await rig.send(mention)
        ack_seconds = time.monotonic() - began
        assert status == 200
        assert (await rig.send(message))[0] == 200  # the same message as a `message` event
        ts = mention["event"]["ts"]

        replies = await rig.replies("C1", ts)

        assert [m.text for m in replies] == ["You said: **hello there**"]
        assert replies[0].thread_ts == ts
        assert rig.responder.texts() == ["hello there"]
        # Progress, then the answer streamed into one message in the thread.
        assert rig.sim.statuses[0] == ("C1", ts, "is thinking…")
        methods = chat_calls(rig.sim)
        assert methods[0] == "assistant.threads.setStatus"
        assert "chat.startStream" in methods and methods[-1] == "chat.stopStream"
        start = rig.sim.calls_to("chat.startStream")[0].args
        assert start["recipient_user_id"] == "U1" and start["recipient_team_id"] == "T0SIM"
        # Every Web API call went through the manager's slack upstream.
        await rig.settle()
        assert rig.manager.get_stats("slack")["total_requests"] == len(rig.sim.calls)
        assert ack_seconds < 3.0  # Slack's window; the turn runs after the ack
        log.info("mention acknowledged in %.3f s", ack_seconds)


async def test_retried_event_is_answered_once(tmp_path: Path) -> None:
    responder_latency = 0.5
    async with slack_rig(tmp_path) as rig:
        rig.responder.latency = responder_latency
        mention, _ = rig.sim.mention("C1", "U1", f"<@{LIVIA}> only once")
        ts = mention["event"]["ts"]
        assert (await rig.send(mention))[0] == 200
        # Slack retries while the first delivery is still being answered...
        assert (await rig.send(mention, retry_num=1))[0] == 200
        await rig.replies("C1", ts)
        # ...and again after it was answered.
        assert (await rig.send(mention, retry_num=2, retry_reason="http_error"))[0] == 200
        await rig.settle()

        assert rig.responder.texts() == ["only once"]
        assert len(rig.sim.bot_replies("C1", ts)) == 1
        assert len(rig.sim.calls_to("chat.startStream")) == 1


async def test_follow_up_in_thread_is_answered_without_mention(tmp_path: Path) -> None:
    async with slack_rig(tmp_path) as rig:
        ts = await rig.mention("C1", "U1", "first question")
        await rig.replies("C1", ts)

        follow_up = rig.sim.message_event("C1", "U2", "and a follow-up", thread_ts=ts)
        assert (await rig.send(follow_up))[0] == 200
        replies = await rig.replies("C1", ts, count=2)

        assert [m.text for m in replies] == [
            "You said: **first question**",
            "You said: **and a follow-up**",
        ]
        # The thread is the context: the follow-up's history is the first exchange.
        _, _, history = rig.responder.calls[1]
        assert [(m.role, m.content) for m in history] == [
            ("user", "first question"),
            ("assistant", "You said: **first question**"),
        ]
        # A thread Livia has seen is never read back from Slack.
        assert rig.sim.calls_to("conversations.replies") == []


async def test_direct_messages_are_answered(tmp_path: Path) -> None:
    async with slack_rig(tmp_path) as rig:
        body = rig.sim.message_event("D42", "U7", "hi in private", channel_type="im")
        assert (await rig.send(body))[0] == 200
        ts = body["event"]["ts"]
        replies = await rig.replies("D42", ts)
        assert [m.text for m in replies] == ["You said: **hi in private**"]

        # An assistant thread (Slack's AI app view) is Livia's from its start: not read back.
        root = rig.sim.add_message("D42", "How can I help?", user=LIVIA, bot_id="B0LIVIA").ts
        started = {
            "type": "assistant_thread_started",
            "assistant_thread": {"user_id": "U7", "channel_id": "D42", "thread_ts": root},
        }
        assert (await rig.send(rig.sim.event_body(started)))[0] == 200
        await rig.settle()
        body = rig.sim.message_event("D42", "U7", "in the thread", thread_ts=root)
        assert (await rig.send(body))[0] == 200
        await rig.replies("D42", root, count=1)
        assert rig.sim.calls_to("conversations.replies") == []


async def test_bots_edits_joins_strangers_and_other_threads_are_ignored(tmp_path: Path) -> None:
    async with slack_rig(tmp_path, allowed_channels=["C1", "C3"], allowed_users=["U1"]) as rig:
        sim = rig.sim
        root = sim.add_message("C1", "people talking", user="U1").ts
        ignored = [
            # Livia's own message, and another bot's mentioning her.
            sim.message_event("C1", LIVIA, f"<@{LIVIA}> echo", bot_id="B0LIVIA"),
            sim.message_event(
                "C1", "", f"<@{LIVIA}> beep", bot_id="B0OTHER", subtype="bot_message"
            ),
            # An edit, a deletion and a join.
            sim.message_event("C1", "U1", f"<@{LIVIA}> edited", subtype="message_changed"),
            sim.message_event("C1", "U1", "", subtype="message_deleted"),
            sim.message_event("C1", "U1", "<@U1> has joined the channel", subtype="channel_join"),
            # A mention in a channel that is not allowed, and by a user who is not.
            sim.message_event("C2", "U1", f"<@{LIVIA}> over here", kind="app_mention"),
            sim.message_event("C1", "U9", f"<@{LIVIA}> me too", kind="app_mention"),
            # A reply in a thread that never mentioned Livia.
            sim.message_event("C1", "U1", "just chatting", thread_ts=root),
            # A channel message that does not mention her.
            sim.message_event("C1", "U1", "no mention"),
        ]
        for body in ignored:
            assert (await rig.send(body))[0] == 200
        await rig.settle()
        sentinel = await rig.mention("C3", "U1", "sentinel")
        await rig.replies("C3", sentinel)

        assert rig.responder.texts() == ["sentinel"]  # no model call for any of the others
        assert all(c.args.get("channel", c.args.get("channel_id")) == "C3" for c in sim.calls[1:])


async def test_forged_and_replayed_requests_are_refused(tmp_path: Path) -> None:
    async with slack_rig(tmp_path) as rig:
        body = rig.sim.message_event("C1", "U1", f"<@{LIVIA}> forged", kind="app_mention")
        forged = await rig.send(body, signing_secret="not-the-secret")
        replayed = await rig.send(body, timestamp=time.time() - 600)  # older than 5 minutes
        assert forged[0] == 401
        assert replayed[0] == 401
        await rig.settle()
        assert rig.responder.calls == []

        status, text = await rig.send(
            {"type": "url_verification", "challenge": "c-123", "token": "t"}
        )
        assert status == 200
        assert "c-123" in text


async def test_unseen_thread_is_read_once_as_context(tmp_path: Path) -> None:
    async with slack_rig(tmp_path) as rig:
        sim = rig.sim
        root = sim.add_message("C1", "Our deploy failed at step 3", user="U1").ts
        sim.add_message("C1", "logs say *permission denied*", user="U2", thread_ts=root)
        sim.add_message("C1", "x" * 40_000, user="U2", thread_ts=root)  # over any budget
        sim.add_message("C1", "it worked yesterday", user="U1", thread_ts=root)

        await rig.mention("C1", "U2", "what should we check?", thread_ts=root)
        await rig.replies("C1", root)
        follow_up = sim.message_event("C1", "U1", "thanks, and then?", thread_ts=root)
        assert (await rig.send(follow_up))[0] == 200
        await rig.replies("C1", root, count=2)

        assert len(sim.calls_to("conversations.replies")) == 1  # read once, then remembered
        turns = await rig.store.turns(f"slack:T0SIM:C1:{root}")
        prior = turns[0].meta["prior_history"]
        assert prior == [
            {"role": "user", "content": "<@U1>: Our deploy failed at step 3"},
            {"role": "user", "content": "<@U1>: it worked yesterday"},
        ]  # the first message and the newest that fit; the huge one is left out
        assert turns[0].text == "what should we check?"
        # The model saw the thread's context before the first question, and again after.
        first_history = [(m.role, m.content) for m in rig.responder.calls[0][2]]
        assert first_history == [(m["role"], m["content"]) for m in prior]
        second_history = [m.content for m in rig.responder.calls[1][2]]
        assert second_history[:2] == [m["content"] for m in prior]
        assert "what should we check?" in second_history


async def test_streaming_falls_back_to_throttled_placeholder_updates(tmp_path: Path) -> None:
    sim = SimSlack(
        signing_secret=SIGNING_SECRET,
        bot_token=BOT_TOKEN,
        unsupported={"chat.startStream", "chat.appendStream", "chat.stopStream"},
        status_in_channels=False,
    )
    async with slack_rig(tmp_path, sim=sim, min_update_interval=0.5) as rig:
        rig.responder.delta_gap = 0.4  # four deltas over 1.6 s
        ts = await rig.mention("C1", "U1", "use markdown")
        await rig.replies("C1", ts)
        await rig.settle()

        replies = rig.sim.bot_replies("C1", ts)
        assert [m.text for m in replies] == ["You said: *use markdown*"]  # placeholder, edited
        posts = rig.sim.calls_to("chat.postMessage")
        assert [c.args["text"] for c in posts] == ["_Thinking…_"]
        updates = rig.sim.calls_to("chat.update")
        assert 2 <= len(updates) <= 5, [c.args for c in updates]
        interim = [c.at for c in updates[:-1]]
        gaps = [b - a for a, b in itertools.pairwise(interim)]
        assert all(gap >= 0.45 for gap in gaps), gaps  # at most one interim update per interval
        # What is missing was learnt, so later replies do not try it again.
        assert rig.channel.capabilities.no_status == {"C1"}
        second = await rig.mention("C1", "U2", "again")
        await rig.replies("C1", second)
        assert len(rig.sim.calls_to("assistant.threads.setStatus")) == 1


async def test_without_stream_methods_the_answer_is_posted_then_updated(tmp_path: Path) -> None:
    sim = SimSlack(
        signing_secret=SIGNING_SECRET,
        bot_token=BOT_TOKEN,
        unsupported={"chat.startStream", "chat.appendStream", "chat.stopStream"},
    )
    async with slack_rig(tmp_path, sim=sim, min_update_interval=0.3) as rig:
        rig.responder.delta_gap = 0.2
        ts = await rig.mention("C1", "U1", "no streams here")
        await rig.replies("C1", ts)
        await rig.settle()

        replies = rig.sim.bot_replies("C1", ts)
        assert [m.text for m in replies] == ["You said: *no streams here*"]
        assert len(rig.sim.calls_to("chat.startStream")) == 1  # tried once, then learnt
        assert "*" in rig.channel.capabilities.no_stream
        assert rig.sim.calls_to("chat.postMessage") and rig.sim.calls_to("chat.update")
        second = await rig.mention("C1", "U1", "still no streams")
        await rig.replies("C1", second)
        assert len(rig.sim.calls_to("chat.startStream")) == 1


async def test_a_busy_livia_says_so_in_the_thread(tmp_path: Path) -> None:
    async with slack_rig(tmp_path, max_queued=0) as rig:
        ts = await rig.mention("C1", "U1", "are you there?")
        [reply] = await rig.replies("C1", ts)
        assert reply.text.startswith("Sorry, I can't take this message right now: Livia is busy")
        assert "retry in" in reply.text
        assert rig.responder.calls == []


async def test_slack_rate_limit_is_retried_by_the_manager(tmp_path: Path) -> None:
    async with slack_rig(tmp_path) as rig:
        rig.sim.fail("chat.stopStream", "ratelimited", retry_after=1)
        ts = await rig.mention("C1", "U1", "through a 429")
        replies = await rig.replies("C1", ts)
        assert [m.text for m in replies] == ["You said: **through a 429**"]
        stops = rig.sim.calls_to("chat.stopStream")
        assert [c.status for c in stops] == [429, 200]
        assert stops[1].at - stops[0].at >= 0.95  # Retry-After honoured
        stats = rig.manager.get_stats("slack")
        assert stats["http_429"] == 1 and stats["retries"] == 1


async def test_model_failure_ends_the_reply_with_the_agents_apology(tmp_path: Path) -> None:
    async with SimOpenAI(SimOpenAIConfig(latency=0.05, fail_rate=1.0, seed=1)) as model:
        settings = make_settings(
            tmp_path, model_url=model.url, apis={"openai": {"retry_attempts": 1}}
        )
        async with slack_rig(tmp_path, settings=settings, agent=True) as rig:
            ts = await rig.mention("C1", "U1", "please fail")
            replies = await rig.replies("C1", ts)

            assert len(replies) == 1
            assert replies[0].text.startswith("Sorry"), replies[0].text
            turns = await rig.store.turns(f"slack:T0SIM:C1:{ts}")
            assert turns[0].error  # stored as a failed turn, and said so to the user
            assert turns[0].reply == replies[0].text


# --- many people at once ----------------------------------------------------------------


async def test_eight_people_at_once_are_answered_in_about_one_model_round(tmp_path: Path) -> None:
    latency = 1.5  # L: each model call
    async with SimOpenAI(SimOpenAIConfig(latency=latency, max_concurrent=8)) as model:
        settings = make_settings(tmp_path, model_url=model.url)
        assert settings.policies()["openai"].max_concurrent == 8
        async with slack_rig(tmp_path, settings=settings, agent=True) as rig:
            people = [(f"C{i % 3}", f"U{i}") for i in range(8)]
            bodies = [
                rig.sim.mention(ch, user, f"<@{LIVIA}> hello from {user}") for ch, user in people
            ]
            began = time.monotonic()
            await asyncio.gather(*(rig.send(b) for pair in bodies for b in pair))
            threads = [(m["event"]["channel"], m["event"]["ts"]) for m, _ in bodies]
            await asyncio.gather(*(rig.replies(ch, ts, timeout=30) for ch, ts in threads))
            elapsed = time.monotonic() - began

            for (_, user), (ch, ts) in zip(people, threads, strict=True):
                [reply] = rig.sim.bot_replies(ch, ts)
                assert reply.text, (user, reply)
            stats = model.stats.as_dict(timeline=False)
            log.info(
                "8 mentions answered in %.2f s (L=%.1f s; one at a time would be %.1f s)",
                elapsed,
                latency,
                8 * latency,
            )
            print(f"\n8 people at once: {elapsed:.2f} s (L={latency} s, serial {8 * latency} s)")
            assert elapsed < 2 * latency + 1.0
            assert stats["peak_concurrency"] >= 8
            assert rig.manager.get_stats("slack")["http_429"] == 0


# --- Socket Mode ------------------------------------------------------------------------


async def test_socket_mode_envelopes_are_acked_and_answered(tmp_path: Path) -> None:
    async with slack_rig(tmp_path, mode="socket") as rig:
        sim = rig.sim
        await sim.wait_connected()
        assert sim.calls_to("apps.connections.open")  # through the manager, with the app token
        mention, message = sim.mention("C1", "U1", f"<@{LIVIA}> over the socket")
        ts = mention["event"]["ts"]

        began = time.monotonic()
        envelope = await sim.push_event(mention)
        ack = await sim.wait_ack(envelope)
        ack_seconds = time.monotonic() - began
        second = await sim.push_event(message)
        retried = await sim.push_event(mention, retry_attempt=1, retry_reason="timeout")
        await sim.wait_ack(second)
        await sim.wait_ack(retried)

        replies = await rig.replies("C1", ts)
        await rig.settle()
        assert ack == {"envelope_id": envelope}
        assert ack_seconds < 3.0
        assert [m.text for m in replies] == ["You said: **over the socket**"]
        assert rig.responder.texts() == ["over the socket"]

        # Livia's own reply, echoed back as Slack does, is ignored.
        own = sim.message_event("C1", LIVIA, replies[0].text, thread_ts=ts, bot_id="B0LIVIA")
        await sim.wait_ack(await sim.push_event(own))
        await rig.settle()
        assert rig.responder.texts() == ["over the socket"]


async def test_socket_mode_reconnects_when_slack_asks(tmp_path: Path) -> None:
    async with slack_rig(tmp_path, mode="socket") as rig:
        sim = rig.sim
        await sim.wait_connected()
        await sim.request_reconnect()
        await sim.wait_for(lambda s: len(s.calls_to("apps.connections.open")) >= 2, 10)
        await sim.wait_for(lambda s: s.connections >= 1, 10)
        ts = await _push_mention(sim, "after reconnect")
        replies = await rig.replies("C1", ts)
        assert [m.text for m in replies] == ["You said: **after reconnect**"]


async def _push_mention(sim: SimSlack, text: str) -> str:
    mention, _ = sim.mention("C1", "U1", f"<@{LIVIA}> {text}")
    async with asyncio.timeout(10):
        while True:
            try:
                await sim.wait_ack(await sim.push_event(mention), timeout=2)
                break
            except (RuntimeError, TimeoutError):  # the new connection is not up yet
                await asyncio.sleep(0.1)
    return str(mention["event"]["ts"])


# --- order, restarts, wiring ------------------------------------------------------------


async def test_messages_of_one_thread_are_answered_in_order(tmp_path: Path) -> None:
    async with slack_rig(tmp_path) as rig:
        rig.responder.latency = 0.3
        ts = await rig.mention("C1", "U1", "one")
        for text in ("two", "three", "four"):
            body = rig.sim.message_event("C1", "U1", text, thread_ts=ts)
            assert (await rig.send(body))[0] == 200
        replies = await rig.replies("C1", ts, count=4)
        assert [m.text for m in replies] == [
            f"You said: **{t}**" for t in ("one", "two", "three", "four")
        ]
        assert rig.responder.texts() == ["one", "two", "three", "four"]


async def test_a_message_taken_before_a_restart_is_answered_after_it(tmp_path: Path) -> None:
    sim = SimSlack(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN)
    api_url = await sim.start()
    settings = make_settings(tmp_path).model_copy(
        update={"slack": Settings().slack.model_copy(update={"mode": "http", "api_url": api_url})}
    )
    try:
        # First run: the message is accepted, then Livia stops before answering.
        async with Store(settings.store.url) as store:
            manager = ConcurrencyManager(settings.policies())
            stuck = ScriptedResponder(manager, latency=60.0)
            conversations = Conversations(stuck, store)
            channel = SlackChannel(settings, conversations, manager, store=store, close_timeout=0.5)
            await conversations.start()
            await channel.start()
            mention, _ = sim.mention("C1", "U1", f"<@{LIVIA}> remember me")
            ts = mention["event"]["ts"]
            task = channel.accept(mention)
            assert task is not None
            await sim.wait_for(lambda s: len(s.statuses) == 1, 5)
            await asyncio.sleep(0.1)  # the model call is under way
            await conversations.aclose()
            await channel.aclose()
            await manager.aclose()
            assert sim.bot_replies("C1", ts) == []

        # Second run on the same store: the inbox is recovered and the reply delivered.
        async with Store(settings.store.url) as store:
            manager = ConcurrencyManager(settings.policies())
            responder = ScriptedResponder(manager)
            conversations = Conversations(responder, store)
            channel = SlackChannel(settings, conversations, manager, store=store)
            await conversations.start()
            await channel.start()
            try:
                replies = await Rig(sim, channel, conversations, manager, store, responder).replies(
                    "C1", ts
                )
                assert [m.text for m in replies] == ["You said: *remember me*"]  # posted as mrkdwn
                # Slack retrying the old event now is recognised from the store.
                assert await channel.handle_event(mention) is None
                assert responder.texts() == ["remember me"]
                assert len(sim.bot_replies("C1", ts)) == 1
            finally:
                await channel.aclose()
                await conversations.aclose()
                await manager.aclose()
    finally:
        await sim.stop()


async def test_the_app_serves_slack_events_when_mode_is_http(tmp_path: Path) -> None:
    from livia.app import build_app

    sim = SimSlack(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN)
    api_url = await sim.start()
    try:
        async with SimOpenAI(SimOpenAIConfig(latency=0.1)) as model:
            settings = make_settings(
                tmp_path, model_url=model.url, slack={"mode": "http", "api_url": api_url}
            )
            app = build_app(settings)
            async with serve_here(app, lifespan="on") as base:
                mention, message = sim.mention("C1", "U1", f"<@{LIVIA}> hello")
                for body in (mention, message):
                    status, _ = await sim.post_event(f"{base}/slack/events", body)
                    assert status == 200
                ts = mention["event"]["ts"]
                await sim.wait_for(
                    lambda s: any(not m.streaming for m in s.bot_replies("C1", ts)), 15
                )
                [reply] = sim.bot_replies("C1", ts)
                assert reply.text
                forged = await sim.post_event(f"{base}/slack/events", mention, signing_secret="x")
                assert forged[0] == 401
    finally:
        await sim.stop()


async def test_start_fails_fast_and_says_which_token_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = SimSlack(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN, app_token=APP_TOKEN)
    api_url = await sim.start()
    manager = ConcurrencyManager()

    async def start(mode: str) -> None:
        settings = make_settings(tmp_path, slack={"mode": mode, "api_url": api_url})
        async with Store(settings.store.url) as store:
            channel = SlackChannel(
                settings, Conversations(ScriptedResponder(manager), store), manager
            )
            try:
                await channel.start()
            finally:
                await channel.aclose()

    try:
        monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-not-the-token")
        began = time.monotonic()
        with pytest.raises(SlackSetupError, match="SLACK_APP_TOKEN"):
            await start("socket")
        assert time.monotonic() - began < 5.0  # no reconnect loop until a timeout
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-not-the-token")
        with pytest.raises(SlackSetupError, match=r"invalid_auth.*SLACK_BOT_TOKEN"):
            await start("http")
        monkeypatch.delenv("SLACK_SIGNING_SECRET")
        with pytest.raises(SlackSetupError, match="SLACK_SIGNING_SECRET"):
            await start("http")
    finally:
        await manager.aclose()
        await sim.stop()
