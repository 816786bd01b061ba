"""The dispatcher: FIFO per conversation, parallel across, bounded, idempotent, durable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from livia.agent.events import TextDelta, TurnDone, TurnEvent
from livia.conversations import (
    Busy,
    ChatMessage,
    ConversationError,
    Conversations,
    IncomingMessage,
    MessageIdConflict,
    NotRunning,
    Reply,
    UnknownConversation,
)
from livia.store import Store


@dataclass
class EchoResponder:
    """Answers ``echo: <text>`` after `delay` s (and after `gate` opens), recording each call.

    The dispatcher's input, not a mock of Livia's code. `fail_on` texts raise inside the
    turn, to exercise the apology path.
    """

    delay: float = 0.0
    gate: asyncio.Event | None = None
    fail_on: frozenset[str] = frozenset()
    calls: list[tuple[str, str, list[ChatMessage]]] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    async def respond(
        self, history: Sequence[ChatMessage], text: str, *, key: str
    ) -> AsyncIterator[TurnEvent]:
        self.calls.append((key, text, list(history)))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if text in self.fail_on:
                raise RuntimeError("the responder broke")
            yield TextDelta("echo: ")
            yield TextDelta(text)
            yield TurnDone(f"echo: {text}")
        finally:
            self.active -= 1

    def texts(self) -> list[str]:
        """The texts the responder was asked about, in call order."""
        return [text for _, text, _ in self.calls]


def _msg(cid: str, mid: str, text: str | None = None, user: str = "u1") -> IncomingMessage:
    return IncomingMessage(cid, user, text or f"{cid}/{mid}", mid)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The same dispatcher tests on SQLite and on PostgreSQL."""
    s = Store(store_url)
    await s.open()
    yield s
    await s.close()


async def _started(responder: EchoResponder, store: Store, **kw: int) -> Conversations:
    conv = Conversations(responder, store, **kw)
    await conv.start()
    return conv


async def test_fifo_per_conversation_parallel_across(store: Store) -> None:
    responder = EchoResponder(delay=0.2)
    conv = await _started(responder, store, max_active=8)
    msgs = [_msg(f"c{c}", f"m{i}") for i in range(3) for c in range(4)]
    t0 = time.monotonic()
    replies = await asyncio.gather(*(conv.submit(m) for m in msgs))
    makespan = time.monotonic() - t0
    assert [r.text for r in replies] == [f"echo: {m.text}" for m in msgs]
    for c in range(4):
        seen = [t for t in responder.texts() if t.startswith(f"c{c}/")]
        assert seen == [f"c{c}/m0", f"c{c}/m1", f"c{c}/m2"]
    assert responder.peak == 4  # one per conversation, all four at once
    assert makespan < 12 * 0.2 * 0.6  # about three serial rounds (0.6 s), far from twelve
    await conv.aclose()


async def test_history_passed_to_the_responder(store: Store) -> None:
    responder = EchoResponder()
    conv = await _started(responder, store)
    await conv.submit(_msg("c", "1", "hello", user="alice"))
    await conv.submit(_msg("c", "2", "again", user="alice"))
    key, text, history = responder.calls[1]
    assert (key, text) == ("alice", "again")
    assert history == [ChatMessage("user", "hello"), ChatMessage("assistant", "echo: hello")]
    assert await conv.history("c") == [
        *history,
        ChatMessage("user", "again"),
        ChatMessage("assistant", "echo: again"),
    ]
    with pytest.raises(UnknownConversation):
        await conv.history("nope")
    await conv.aclose()


async def test_bounded_active_conversations(store: Store) -> None:
    responder = EchoResponder(delay=0.05)
    conv = await _started(responder, store, max_active=2)
    await asyncio.gather(*(conv.submit(_msg(f"c{i}", "m")) for i in range(6)))
    assert responder.peak == 2
    assert conv.stats()["answered"] == 6
    await conv.aclose()


async def test_round_robin_across_waiting_conversations(store: Store) -> None:
    gate = asyncio.Event()
    responder = EchoResponder(delay=0.02, gate=gate)
    conv = await _started(responder, store, max_active=1)
    long = [await conv.accept(_msg("a", f"{i}")) for i in range(3)]
    short = await conv.accept(_msg("b", "0"))  # while a/0 holds the only slot
    gate.set()
    await asyncio.gather(*(t.wait() for t in [*long, short]))
    assert responder.texts() == ["a/0", "b/0", "a/1", "a/2"]
    await conv.aclose()


async def test_busy_beyond_max_queued(store: Store) -> None:
    gate = asyncio.Event()
    responder = EchoResponder(gate=gate)
    conv = await _started(responder, store, max_active=1, max_queued=2)
    tickets = [await conv.accept(_msg("c", f"{i}")) for i in range(3)]  # 1 running, 2 queued
    with pytest.raises(Busy) as err:
        await conv.accept(_msg("c", "3"))
    assert err.value.retry_after >= 1
    assert "(2 messages waiting)" in str(err.value)
    assert "(1 message waiting)" in str(Busy(5, 1))  # not "1 messages"
    assert conv.stats()["rejected"] == 1 and conv.stats()["queued"] == 2
    # a repeat of an accepted message is not refused
    assert (await conv.accept(_msg("c", "1"))).duplicate
    gate.set()
    replies = [await t.wait() for t in tickets]
    assert [r.text for r in replies] == ["echo: c/0", "echo: c/1", "echo: c/2"]
    await conv.aclose()


async def test_repeat_after_answer_returns_the_stored_reply(store: Store) -> None:
    responder = EchoResponder()
    conv = await _started(responder, store)
    first = await conv.submit(_msg("c", "m1", "hi"))
    again = await conv.submit(_msg("c", "m1", "hi"))
    assert again == Reply("c", "m1", first.text, duplicate=True)
    assert len(responder.calls) == 1
    with pytest.raises(MessageIdConflict):
        await conv.submit(_msg("c", "m1", "something else"))
    assert conv.stats()["duplicates"] == 1
    await conv.aclose()


async def test_repeat_in_progress_waits_for_the_same_answer(store: Store) -> None:
    gate = asyncio.Event()
    responder = EchoResponder(gate=gate)
    conv = await _started(responder, store)
    tasks = [asyncio.create_task(conv.submit(_msg("c", "m1", "hi"))) for _ in range(5)]
    await asyncio.sleep(0.05)
    gate.set()
    replies = await asyncio.gather(*tasks)
    assert len(responder.calls) == 1
    assert {r.text for r in replies} == {"echo: hi"}
    assert sorted(r.duplicate for r in replies) == [False, True, True, True, True]
    await conv.aclose()


async def test_events_stream_to_the_listener(store: Store) -> None:
    conv = await _started(EchoResponder(), store)
    events: list[TurnEvent] = []

    async def sink(event: TurnEvent) -> None:
        events.append(event)

    await conv.submit(_msg("c", "m", "yo"), on_event=sink)
    assert events == [TextDelta("echo: "), TextDelta("yo"), TurnDone("echo: yo")]
    await conv.aclose()


class BurstResponder:
    """Streams `parts` deltas of `size` characters back to back (a fast model's burst)."""

    def __init__(self, parts: int, size: int) -> None:
        self.parts, self.size = parts, size

    async def respond(
        self, history: Sequence[ChatMessage], text: str, *, key: str
    ) -> AsyncIterator[TurnEvent]:
        for _ in range(self.parts):
            yield TextDelta("x" * self.size)
        yield TurnDone("x" * self.size * self.parts)


async def test_a_burst_of_events_meets_a_reader_that_keeps_pace(store: Store) -> None:
    """An event stream's sender gets the loop between the turn's events: a 2 MB burst
    passes through its 256 KB buffer, which would overflow if the turn ran it all first."""
    from livia.channels.http import StreamBuffer

    conv = Conversations(BurstResponder(parts=200, size=10_000), store)
    await conv.start()
    buffer = StreamBuffer()
    sent: list[tuple[str, str]] = []

    async def sender() -> None:  # what an event stream's response does
        while True:
            await buffer.wait()
            sent.extend(buffer.drain())

    reading = asyncio.create_task(sender())
    reply = await conv.submit(_msg("c", "m", "go"), on_event=buffer.put)
    await asyncio.sleep(0)
    reading.cancel()
    assert not buffer.overflowed and len(sent) == 200, (buffer.overflowed, len(sent))
    assert len(reply.text) == 2_000_000
    await conv.aclose()


async def test_a_broken_listener_does_not_break_the_turn(store: Store) -> None:
    conv = await _started(EchoResponder(), store)

    async def sink(event: TurnEvent) -> None:
        raise ConnectionError("client went away")

    reply = await conv.submit(_msg("c", "m", "yo"), on_event=sink)
    assert reply.text == "echo: yo" and reply.error is None
    await conv.aclose()


async def test_responder_failure_becomes_an_apology(store: Store) -> None:
    responder = EchoResponder(fail_on=frozenset({"boom"}))
    conv = await _started(responder, store)
    events: list[TurnEvent] = []

    async def sink(event: TurnEvent) -> None:
        events.append(event)

    reply = await conv.submit(_msg("c", "m", "boom"), on_event=sink)
    assert reply.error == "internal_error" and "Sorry" in reply.text
    assert "Traceback" not in reply.text and "the responder broke" not in reply.text
    assert isinstance(events[-1], TurnDone) and events[-1].error == "internal_error"
    stats = conv.stats()
    assert (stats["failed"], stats["answered"]) == (1, 0)
    # the conversation goes on
    assert (await conv.submit(_msg("c", "m2", "fine"))).text == "echo: fine"
    await conv.aclose()


async def test_turn_timeout_is_an_apology(store: Store) -> None:
    conv = Conversations(EchoResponder(delay=5), store, turn_timeout=0.1)
    await conv.start()
    reply = await conv.submit(_msg("c", "m"))
    assert reply.error == "timeout"
    await conv.aclose()


async def test_graceful_close_lets_the_turn_in_progress_finish(store: Store) -> None:
    responder = EchoResponder(delay=0.2)
    conv = await _started(responder, store, max_active=1)
    first = await conv.accept(_msg("c", "1"))
    second = await conv.accept(_msg("c", "2"))
    for _ in range(100):
        if responder.active:
            break
        await asyncio.sleep(0.01)
    await conv.aclose(grace=5)
    assert (await first.wait()).text == "echo: c/1"
    with pytest.raises(NotRunning):
        await second.wait()
    assert responder.texts() == ["c/1"]
    assert [t.message_id for t in await store.pending()] == ["2"]  # kept for the next start


class _Recorder:
    """A channel's ReplyDelivery that records what it was asked to deliver."""

    def __init__(self) -> None:
        self.delivered: list[tuple[IncomingMessage, Reply]] = []

    async def deliver(self, message: IncomingMessage, reply: Reply) -> None:
        self.delivered.append((message, reply))


async def test_accepted_messages_survive_a_restart(store_url: str) -> None:
    url = store_url
    gate = asyncio.Event()  # never opened: the first run dies before answering
    async with Store(url) as store:
        conv = await _started(EchoResponder(gate=gate), store)
        msgs = [
            IncomingMessage("t1", "u", text, mid, channel="slack", meta={"thread_ts": "9.9"})
            for mid, text in (("e1", "first"), ("e2", "second"))
        ]
        tickets = [await conv.accept(m) for m in msgs]
        await conv.aclose()
        with pytest.raises(NotRunning):
            await tickets[0].wait()
        with pytest.raises(NotRunning):
            await conv.accept(_msg("t1", "e3"))

    async with Store(url) as store:
        responder = EchoResponder()
        conv = Conversations(responder, store)
        recorder = _Recorder()
        conv.register_delivery("slack", recorder)
        await conv.start()
        for _ in range(100):
            if len(recorder.delivered) == 2:
                break
            await asyncio.sleep(0.02)
        assert responder.texts() == ["first", "second"]
        assert [(m.message_id, m.meta, r.text) for m, r in recorder.delivered] == [
            ("e1", {"thread_ts": "9.9"}, "echo: first"),
            ("e2", {"thread_ts": "9.9"}, "echo: second"),
        ]
        assert (await conv.history("t1"))[-1] == ChatMessage("assistant", "echo: second")
        assert conv.stats()["recovered"] == 2
        # the recovered message is a duplicate now: no second model call
        again = await conv.submit(msgs[0])
        assert again.duplicate and len(responder.calls) == 2
        await conv.aclose()


async def test_abandoned_wait_is_delivered_instead(store: Store) -> None:
    gate = asyncio.Event()
    conv = await _started(EchoResponder(gate=gate), store)
    recorder = _Recorder()
    conv.register_delivery("http", recorder)
    ticket = await conv.accept(_msg("c", "m", "hi"))
    with pytest.raises(TimeoutError):
        await ticket.wait(timeout=0.01)
    gate.set()
    for _ in range(100):
        if recorder.delivered:
            break
        await asyncio.sleep(0.01)
    assert [r.text for _, r in recorder.delivered] == ["echo: hi"]
    await conv.aclose()


async def test_stats_shape(store: Store) -> None:
    conv = await _started(EchoResponder(), store, max_active=3, max_queued=7)
    await conv.submit(_msg("a", "1"))
    await conv.submit(_msg("b", "1"))
    await conv.submit(_msg("b", "2"))
    stats = conv.stats()
    assert stats["running"] is True
    assert (stats["active"], stats["queued"], stats["max_active"], stats["max_queued"]) == (
        0,
        0,
        3,
        7,
    )
    assert (stats["accepted"], stats["answered"], stats["conversations"]) == (3, 3, 2)
    assert stats["average_turn_seconds"] >= 0
    await conv.aclose()
    assert conv.stats()["running"] is False


async def test_a_reply_that_cannot_be_stored_is_never_delivered_and_is_answered_again(
    tmp_path: Path,
) -> None:
    """Issue 10, item 11: commit first. A reply the store refuses (disk full) reaches no
    waiter and no channel; once the disk has room the message is answered again, once."""
    from tests.test_serve_hardening import _fill, _tiny_tmpfs

    big = "y" * 200_000  # new pages: a full disk refuses them
    with _tiny_tmpfs(tmp_path / "disk", "3m") as disk:
        store = Store(f"sqlite:///{disk}/livia.db", lease=2.0)
        await store.open()
        gate = asyncio.Event()
        responder = EchoResponder(gate=gate)
        conv = Conversations(responder, store, scan_interval=0.2)
        recorder = _Recorder()
        conv.register_delivery("slack", recorder)
        await conv.start()
        try:
            msg = IncomingMessage("t", "u", big, "e1", channel="slack")
            ticket = await conv.accept(msg)
            filler = _fill(disk)
            gate.set()
            with pytest.raises(ConversationError):
                await ticket.wait(timeout=30)
            assert recorder.delivered == []  # not stored: not delivered
            assert (await store.get("t", "e1")).status == "pending"  # type: ignore[union-attr]
            filler.unlink()  # room again: the message is answered (and delivered) once
            for _ in range(300):
                if recorder.delivered:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            assert [m.message_id for m, _ in recorder.delivered] == ["e1"]
            assert len(responder.calls) == 2  # the unstored answer, then the kept one
            stored = await store.get("t", "e1")
            assert stored is not None and stored.status == "answered"
        finally:
            await conv.aclose()
            await store.close()


async def test_a_history_read_the_store_drops_is_tried_again_and_answered_once(
    postgres: Any,
) -> None:
    """The database drops the connections a message's history is read on, just before the
    read: it is tried again and the message answered once, seeing the history. (Before,
    the failed read ended the conversation's worker and the message stayed claimed by this
    live process, unanswered until it restarted.)"""
    import asyncpg

    url = postgres.new_database()
    store = Store(url, lease=10.0)
    await store.open()
    responder = EchoResponder()
    conv = Conversations(responder, store, scan_interval=60.0)
    await conv.start()
    try:
        for i in range(1, 7):  # five history reads: every read connection is open
            await conv.submit(_msg("t", str(i)))
        admin = await asyncpg.connect(url)
        try:  # the read connections: their last statement was a SELECT
            dropped = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND query LIKE 'SELECT%'"
            )
        finally:
            await admin.close()
        assert dropped >= 1
        ticket = await conv.accept(_msg("t", "7"))  # the next read is its history's
        reply = await ticket.wait(timeout=20)
        assert reply.text == "echo: t/7" and reply.error is None
        assert responder.texts().count("t/7") == 1
        _, _, history = responder.calls[-1]
        assert [m.content for m in history][-2:] == ["t/6", "echo: t/6"]
        stored = await store.get("t", "7")
        assert stored is not None and stored.status == "answered"
    finally:
        await conv.aclose()
        await store.close()
