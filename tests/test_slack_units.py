"""Slack channel pieces without Bolt: mrkdwn, event decisions, thread context, memory,
request signing, and the reply renderer against the simulated Web API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from livia.agent.events import TextDelta, ToolFinished, ToolStarted
from livia.channels.slack.api import SlackApi, error_code, new_web_client
from livia.channels.slack.handling import (
    SlackMessage,
    Target,
    clean_text,
    ignore_reason,
    parse_event,
    prior_history,
    to_incoming,
)
from livia.channels.slack.memory import InMemorySlackMemory, StoreSlackMemory
from livia.channels.slack.mrkdwn import split_text, to_mrkdwn
from livia.channels.slack.streaming import Capabilities, ReplyStream
from livia.concurrency import ConcurrencyManager
from livia.conversations import IncomingMessage, Reply
from livia.sim.slack import SimSlack, sign_request
from livia.store import Store

BOT = "U0LIVIA"

# --- mrkdwn -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("[the docs](https://example.com/a?b=1)", "<https://example.com/a?b=1|the docs>"),
        ("![chart](https://x.test/c.png)", "<https://x.test/c.png|chart>"),
        ("[https://x.test](https://x.test)", "<https://x.test>"),
        ("# Title", "*Title*"),
        ("### A **bold** heading ###", "*A bold heading*"),
        ("- one\n- two\n  - nested", "• one\n• two\n    ◦ nested"),
        ("* star\n+ plus", "• star\n• plus"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("- [x] done\n- [ ] todo", "☑ done\n☐ todo"),
        ("> quoted **text**", "> quoted *text*"),
        ("---", "──────────"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("hi <@U123> in <#C9> <!here>", "hi <@U123> in <#C9> <!here>"),
        ("use `**x** < y` here", "use `**x** &lt; y` here"),
        ("2 * 3 * 4", "2 * 3 * 4"),
        ("snake_case_name", "snake_case_name"),
    ],
)
def test_markdown_becomes_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_code_blocks_are_kept_verbatim() -> None:
    markdown = "Run:\n```python\nx = a**b  # **not bold**\nif x < 3: pass\n```\nDone **now**."
    assert to_mrkdwn(markdown) == (
        "Run:\n```\nx = a**b  # **not bold**\nif x &lt; 3: pass\n```\nDone *now*."
    )


def test_unterminated_fence_is_closed_and_tables_become_code() -> None:
    assert to_mrkdwn("```\ncode") == "```\ncode\n```"
    table = "| a | b |\n|---|:-:|\n| 1 | 2 |\nafter"
    assert to_mrkdwn(table) == "```\n| a | b |\n|---|:-:|\n| 1 | 2 |\n```\nafter"


def test_split_text_keeps_parts_small_and_fences_balanced() -> None:
    text = "intro\n```\n" + "\n".join(f"line {i}" for i in range(400)) + "\n```\noutro"
    parts = split_text(text, 500)
    assert len(parts) > 5
    assert all(len(p) <= 500 for p in parts)
    assert all(p.count("```") % 2 == 0 for p in parts)
    assert parts[0].startswith("intro") and parts[-1].endswith("outro")
    assert split_text("short", 500) == ["short"]
    assert all(len(p) <= 100 for p in split_text("x" * 1000, 100))


# --- deciding ---------------------------------------------------------------------------


def body(event: dict[str, Any], event_id: str = "Ev1") -> dict[str, Any]:
    return {"team_id": "T1", "event_id": event_id, "type": "event_callback", "event": event}


def msg(**event: Any) -> SlackMessage:
    base = {"type": "message", "channel": "C1", "channel_type": "channel", "user": "U1"}
    base.update({"ts": "100.000001", "text": "hi"})
    parsed = parse_event(body({**base, **event}))
    assert parsed is not None
    return parsed


def reason(m: SlackMessage, *, known: bool = False, **kw: Any) -> str | None:
    return ignore_reason(m, bot_user_id=BOT, thread_known=known, **kw)


def test_ids_of_a_message() -> None:
    m = msg(text=f"<@{BOT}> hi", thread_ts="99.000001", client_msg_id="abc")
    assert m.conversation_id == "slack:T1:C1:99.000001"
    assert m.message_id == "abc"
    assert m.target == Target("T1", "C1", "99.000001", "U1")
    top = msg()
    assert top.conversation_id == "slack:T1:C1:100.000001"
    assert top.message_id == "C1:100.000001"
    assert not top.in_thread
    assert parse_event(body({"type": "reaction_added"})) is None


def test_what_is_answered() -> None:
    assert reason(msg(type="app_mention", channel_type=None)) is None
    assert reason(msg(text=f"hey <@{BOT}>")) is None
    assert reason(msg(channel="D1", channel_type="im")) is None
    assert reason(msg(thread_ts="99.000001"), known=True) is None
    assert reason(msg(subtype="thread_broadcast", thread_ts="99.1"), known=True) is None
    assert reason(msg(subtype="file_share", text=f"<@{BOT}> look")) is None


def test_what_is_ignored() -> None:
    mention = f"<@{BOT}> hi"
    assert reason(msg(text=mention, bot_id="B1")) == "bot message"
    assert reason(msg(text=mention, subtype="bot_message")) == "bot message"
    assert reason(msg(text=mention, user=BOT)) == "own message"
    assert reason(msg(text=mention, subtype="message_changed")) == "subtype message_changed"
    assert reason(msg(subtype="message_deleted")) == "subtype message_deleted"
    assert reason(msg(subtype="channel_join")) == "subtype channel_join"
    assert reason(msg(thread_ts="99.000001")) == "not addressed to Livia"
    assert reason(msg()) == "not addressed to Livia"
    assert reason(msg(text=mention), allowed_channels={"C2"}) == "channel not allowed"
    assert reason(msg(text=mention), allowed_users={"U2"}) == "user not allowed"
    # DMs are governed by the user allow-list only.
    assert reason(msg(channel="D1", channel_type="im"), allowed_channels={"C2"}) is None


def test_incoming_message_carries_what_delivery_needs() -> None:
    m = msg(text=f"<@{BOT}>  what &amp; why &lt;3", thread_ts="99.000001", client_msg_id="m1")
    history = [{"role": "user", "content": "<@U2>: earlier"}]
    incoming = to_incoming(m, bot_user_id=BOT, history=history)
    assert incoming.text == "what & why <3"
    assert incoming.channel == "slack"
    assert incoming.message_id == "m1"
    assert incoming.meta["channel"] == "C1" and incoming.meta["thread_ts"] == "99.000001"
    assert incoming.meta["prior_history"] == history
    assert "prior_history" not in to_incoming(m, bot_user_id=BOT).meta
    assert clean_text(f"<@{BOT}>", BOT) == ""


def test_prior_history_roles_order_and_budget() -> None:
    messages = [
        {"ts": "1.0", "user": "U1", "text": "root question"},
        {"ts": "2.0", "user": BOT, "bot_id": "B0", "text": "an earlier answer"},
        {"ts": "3.0", "user": "U2", "text": "y" * 400},
        {
            "ts": "4.0",
            "bot_id": "B9",
            "username": "deploybot",
            "subtype": "bot_message",
            "text": "ok",
        },
        {"ts": "5.0", "user": "U1", "subtype": "channel_join", "text": "joined"},
        {"ts": "6.0", "user": "U3", "text": f"<@{BOT}> the message being answered"},
        {"ts": "7.0", "user": "U3", "text": "after it"},
    ]
    full = prior_history(messages, bot_user_id=BOT, before_ts="6.0", budget_tokens=10_000)
    assert full == [
        {"role": "user", "content": "<@U1>: root question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": "<@U2>: " + "y" * 400},
        {"role": "user", "content": "<@deploybot>: ok"},
    ]
    tight = prior_history(messages, bot_user_id=BOT, before_ts="6.0", budget_tokens=40)
    assert tight == [full[0], full[3]]  # the root, then the newest that fit
    assert prior_history(messages, bot_user_id=BOT, before_ts="6.0", budget_tokens=1) == []


# --- memory -----------------------------------------------------------------------------


async def test_in_memory_marks_are_first_once_bounded_and_expire() -> None:
    now = [0.0]
    memory = InMemorySlackMemory(max_marks=3, mark_ttl=10.0, clock=lambda: now[0])
    assert await memory.first_sighting("a")
    assert not await memory.first_sighting("a")
    for mark in "bcd":
        assert await memory.first_sighting(mark)
    assert await memory.first_sighting("a")  # evicted by size
    now[0] = 11.0
    assert await memory.first_sighting("d")  # expired
    results = await asyncio.gather(*(memory.first_sighting("race") for _ in range(50)))
    assert results.count(True) == 1


async def test_store_memory_survives_a_restart(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    async with Store(url) as store:
        memory = StoreSlackMemory(store)
        assert await memory.first_sighting("event:Ev1")
        assert not await memory.first_sighting("event:Ev1")
        assert not await memory.knows_thread("slack:T1:C1:1.0")
        await store.accept(IncomingMessage("slack:T1:C1:1.0", "U1", "hi", "m1", "slack"))
    async with Store(url) as store:
        memory = StoreSlackMemory(store)  # a new process
        assert not await memory.first_sighting("event:Ev1")
        assert await memory.knows_thread("slack:T1:C1:1.0")


# --- signing ----------------------------------------------------------------------------


def test_sim_signatures_are_what_slack_sdk_verifies() -> None:
    raw = '{"type":"event_callback"}'
    headers = sign_request(raw, "secret")
    verifier = SignatureVerifier("secret")
    ts, sig = headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    assert verifier.is_valid(raw, ts, sig)
    assert not SignatureVerifier("other").is_valid(raw, ts, sig)
    old = sign_request(raw, "secret", timestamp=time.time() - 600)
    assert not verifier.is_valid(raw, old["X-Slack-Request-Timestamp"], old["X-Slack-Signature"])


# --- the renderer, against the simulated Web API ----------------------------------------


@pytest.fixture
async def slack_api() -> AsyncIterator[tuple[SimSlack, SlackApi]]:
    sim = SimSlack()
    url = await sim.start()
    manager = ConcurrencyManager()
    api = SlackApi(new_web_client("xoxb-unit-test-token", url), manager)
    await api.open()
    yield sim, api
    await api.close()
    await manager.aclose()
    await sim.stop()


TARGET = Target(team="T0SIM", channel="C1", thread_ts="100.000001", user="U1")


async def test_slack_errors_reach_the_manager_in_a_form_it_classifies(
    slack_api: tuple[SimSlack, SlackApi],
) -> None:
    sim, api = slack_api
    sim.fail("chat.postMessage", "internal_error", status=503)
    resp = await api.call("chat.postMessage", channel="C1", text="hi")  # retried after 503
    assert resp["ok"]
    assert [c.status for c in sim.calls_to("chat.postMessage")] == [503, 200]
    sim.fail("chat.postMessage", "channel_not_found")  # a plain refusal: not retried
    with pytest.raises(SlackApiError) as caught:
        await api.call("chat.postMessage", channel="C404", text="hi")
    assert error_code(caught.value) == "channel_not_found"
    assert len(sim.calls_to("chat.postMessage")) == 3


async def test_stream_shows_tool_progress_and_the_whole_reply(
    slack_api: tuple[SimSlack, SlackApi],
) -> None:
    sim, api = slack_api
    stream = ReplyStream(api, TARGET, Capabilities(), min_interval=0.05)
    await stream.begin()
    await stream.on_event(ToolStarted("c1", "time.now"))
    await asyncio.sleep(0.1)
    await stream.on_event(ToolFinished("c1", "time.now", ok=True))
    for piece in ["It is ", "**14:05**", " in Tokyo."]:
        await stream.on_event(TextDelta(piece))
        await asyncio.sleep(0.07)
    await stream.finish("It is **14:05** in Tokyo.")

    [reply] = sim.bot_replies("C1", "100.000001")
    assert reply.text == "It is **14:05** in Tokyo." and not reply.streaming
    assert [s for _, _, s in sim.statuses] == ["is thinking…", "is using time.now…"]
    assert stream.mode == "stream"


async def test_reply_that_differs_from_the_stream_replaces_it(
    slack_api: tuple[SimSlack, SlackApi],
) -> None:
    sim, api = slack_api
    stream = ReplyStream(api, TARGET, Capabilities(), min_interval=0.01)
    await stream.begin()
    await stream.on_event(TextDelta("Partial answ"))
    await asyncio.sleep(0.05)
    await stream.finish("Sorry, the model failed. Please try again.", error="model_error")
    [reply] = sim.bot_replies("C1", "100.000001")
    assert reply.text == "Sorry, the model failed. Please try again."


async def test_long_replies_are_split_into_several_messages(
    slack_api: tuple[SimSlack, SlackApi],
) -> None:
    sim, api = slack_api
    caps = Capabilities(no_status={"*"}, no_stream={"*"})
    stream = ReplyStream(api, TARGET, caps, min_interval=0.01)
    await stream.begin()
    long = "\n\n".join(f"Paragraph {i}: " + "words " * 100 for i in range(20))
    await stream.finish(long)
    replies = sim.bot_replies("C1", "100.000001")
    assert len(replies) >= 3
    assert all(len(m.text) <= 3500 for m in replies)
    assert replies[0].text.startswith("Paragraph 0") and "Paragraph 19" in replies[-1].text


async def test_abandon_removes_the_placeholder(slack_api: tuple[SimSlack, SlackApi]) -> None:
    sim, api = slack_api
    stream = ReplyStream(api, TARGET, Capabilities(no_status={"*"}), min_interval=0.01)
    await stream.begin()
    assert [m.text for m in sim.bot_replies("C1", "100.000001")] == ["_Thinking…_"]
    await stream.abandon()
    assert sim.bot_replies("C1", "100.000001") == []


async def test_delivery_after_restart_posts_in_the_thread(
    slack_api: tuple[SimSlack, SlackApi],
) -> None:
    from livia.channels.slack import SlackDelivery

    sim, api = slack_api
    message = IncomingMessage(
        "slack:T0SIM:C1:100.000001",
        "U1",
        "hi",
        "m1",
        "slack",
        meta={"team": "T0SIM", "channel": "C1", "thread_ts": "100.000001", "user": "U1"},
    )
    await SlackDelivery(api).deliver(message, Reply(message.conversation_id, "m1", "**Late** hi"))
    [reply] = sim.bot_replies("C1", "100.000001")
    assert reply.text == "*Late* hi"


# --- the app manifest -------------------------------------------------------------------


def test_manifest_declares_the_scopes_and_events_livia_uses() -> None:
    import re
    from pathlib import Path

    manifest = (Path(__file__).parent.parent / "slack-app-manifest.yaml").read_text()
    items = set(re.findall(r"^\s*-\s*([a-z_:.]+)", manifest, flags=re.MULTILINE))
    scopes = {"app_mentions:read", "chat:write", "channels:history", "groups:history"}
    scopes |= {"im:history", "mpim:history", "assistant:write"}
    events = {"app_mention", "message.channels", "message.groups", "message.im", "message.mpim"}
    assert scopes | events | {"assistant_thread_started"} <= items
    assert "socket_mode_enabled: true" in manifest
