"""The dispatcher: per-conversation FIFO, parallel across conversations, bounded, durable.

Invariants:

- Messages of one conversation are answered one at a time, in arrival order; different
  conversations are answered in parallel, at most `max_active` at once. When others are
  waiting for a slot, a conversation gives its slot up after each message (round robin),
  so one long conversation cannot hold a slot for ever.
- At most `max_queued` accepted messages wait to start; beyond that `accept` raises
  `Busy` (a retry hint) instead of growing a queue.
- A message is written to the store's inbox before `accept` returns, and its reply is
  stored before any waiter sees it. `start()` re-queues what the last run left pending.
- A message_id is answered once: a repeat returns the stored reply, or waits for the
  reply in progress, marked ``duplicate=True``; the responder is not asked again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livia.conversations.errors import Busy, MessageIdConflict, NotRunning, UnknownConversation
from livia.conversations.turn import Listeners, run_turn
from livia.conversations.types import (
    ChatMessage,
    EventSink,
    IncomingMessage,
    Reply,
    ReplyDelivery,
    Responder,
)

if TYPE_CHECKING:
    from livia.store import Store, StoredTurn

log = logging.getLogger(__name__)

_Key = tuple[str, str]  # (conversation_id, message_id)


@dataclass(eq=False)
class _Job:
    """One accepted message on its way to a reply."""

    turn: StoredTurn
    listeners: Listeners
    future: asyncio.Future[Reply]
    #: Tickets still waiting for the reply; 0 means nobody will read it (deliver it).
    waiters: int = 0

    @classmethod
    def of(cls, turn: StoredTurn) -> _Job:
        """A job for `turn`, its reply not yet known."""
        return cls(turn, Listeners(turn.message()), asyncio.get_running_loop().create_future())


@dataclass(eq=False)
class _Lane:
    """One conversation's jobs; `running` while a worker holds an active slot for it."""

    jobs: deque[_Job] = field(default_factory=deque)
    running: bool = False
    ready: bool = False  # waiting in the ready queue for a slot


class Ticket:
    """The handle on an accepted message: `wait()` for its reply."""

    def __init__(self, job: _Job, *, duplicate: bool, timeout: float) -> None:
        self._job = job
        self.duplicate = duplicate
        self._timeout = timeout

    @property
    def message(self) -> IncomingMessage:
        """The message as stored (a repeat gets the original)."""
        return self._job.turn.message()

    async def wait(self, timeout: float | None = None) -> Reply:
        """The reply; raises `TimeoutError` after `timeout` (the message is still answered).

        Cancelling the wait does not cancel the turn; an abandoned reply is handed to the
        channel's `ReplyDelivery` instead.
        """
        job = self._job
        try:
            reply = await asyncio.wait_for(
                asyncio.shield(job.future), self._timeout if timeout is None else timeout
            )
        except BaseException:
            if not job.future.done():
                job.waiters -= 1
            raise
        return dataclasses.replace(reply, duplicate=True) if self.duplicate else reply


class Conversations:
    """Answers messages in order per conversation, in parallel across them (see module doc)."""

    def __init__(
        self,
        responder: Responder,
        store: Store,
        *,
        max_active: int = 64,
        max_queued: int = 1000,
        turn_timeout: float = 600.0,
        reply_timeout: float = 900.0,
        history_turns: int = 50,
    ) -> None:
        if max_active < 1 or max_queued < 0:
            raise ValueError("max_active must be >= 1 and max_queued >= 0")
        self._responder = responder
        self._store = store
        self.max_active = max_active
        self.max_queued = max_queued
        self._turn_timeout = turn_timeout
        self._reply_timeout = reply_timeout
        self._history_turns = history_turns
        self._deliveries: dict[str, ReplyDelivery] = {}
        self._lanes: dict[str, _Lane] = {}
        self._ready: deque[str] = deque()
        self._inflight: dict[_Key, _Job] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._active = 0
        self._queued = 0  # accepted (or being accepted) and not started
        self._running = False
        self._counts = dict.fromkeys(
            ("accepted", "answered", "failed", "duplicates", "rejected", "recovered"), 0
        )
        self._conversations = 0
        self._turn_seconds = 0.0  # total, over answered + failed
        self._avg_turn = 5.0  # moving average, for the Busy retry hint

    # -- life cycle ---------------------------------------------------------------------

    def register_delivery(self, channel: str, delivery: ReplyDelivery) -> None:
        """Deliver `channel`'s replies nobody waits for (recovered after a restart) here."""
        self._deliveries[channel] = delivery

    @property
    def running(self) -> bool:
        """True between `start()` and `aclose()`."""
        return self._running

    async def start(self) -> None:
        """Open for intake and re-queue what the last run accepted but did not answer."""
        if self._running:
            return
        pending = await self._store.pending()
        self._conversations = await self._store.count_conversations()
        self._running = True
        for turn in pending:
            job = self._new_job(turn)
            self._queued += 1
            self._enqueue(job)
        self._counts["recovered"] += len(pending)
        if pending:
            log.info(
                "recovering %d pending message(s) from the inbox in %d conversation(s)",
                len(pending),
                len({t.conversation_id for t in pending}),
            )

    async def aclose(self, grace: float = 0.0) -> None:
        """Stop intake, let turns in progress finish for up to `grace` seconds, then cancel.

        Nothing is lost: unanswered messages stay in the inbox for the next start, and
        their waiters get `NotRunning` (a 503 to retry) instead of hanging.
        """
        self._running = False
        workers = list(self._workers)
        if workers and grace > 0:
            await asyncio.wait(workers, timeout=grace)
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.wait(workers, timeout=10.0)
        for job in self._inflight.values():
            if not job.future.done():
                job.future.set_exception(
                    NotRunning(
                        "Livia is shutting down; the message is kept and answered on restart"
                    )
                )
                job.future.exception()  # retrieved: no "never retrieved" warning
        self._inflight.clear()
        self._lanes.clear()
        self._ready.clear()
        self._queued = 0

    # -- intake -------------------------------------------------------------------------

    async def accept(self, msg: IncomingMessage, on_event: EventSink | None = None) -> Ticket:
        """Write `msg` to the inbox and queue it; returns once it is durably accepted.

        Raises `Busy` when `max_queued` messages already wait, `NotRunning` before
        `start()`, `MessageIdConflict` when the message_id was used for another text.
        A repeat's ticket is marked `duplicate` and gets no events.
        """
        if not self._running:
            raise NotRunning()
        key = (msg.conversation_id, msg.message_id)
        job = self._inflight.get(key)
        if job is not None:
            return self._repeat(job, msg)
        if self._queued >= self.max_queued:
            self._counts["rejected"] += 1
            retry = math.ceil((self._queued + 1) / self.max_active) * self._avg_turn
            log.warning(
                "busy: refusing conversation_id=%s message_id=%s queued=%d",
                msg.conversation_id,
                msg.message_id,
                self._queued,
            )
            raise Busy(min(retry, 300.0), self._queued)
        self._queued += 1  # reserved before the first await: the bound holds under bursts
        try:
            turn, created, first = await self._store.accept(msg)
        except BaseException:
            self._queued -= 1
            raise
        if not created:
            self._queued -= 1
            job = self._inflight.get(key)
            if job is not None:  # accepted by a concurrent call meanwhile
                return self._repeat(job, msg)
            if turn.done:
                return self._repeat(self._answered(turn), msg)
            self._queued += 1  # pending yet not in flight (its reply failed to store): retry it
        job = self._new_job(turn)
        if on_event is not None:
            job.listeners.add(on_event)
        job.waiters += 1
        self._counts["accepted"] += 1
        self._conversations += first
        self._enqueue(job)
        log.info(
            "accepted conversation_id=%s message_id=%s user_id=%s queued=%d active=%d",
            msg.conversation_id,
            msg.message_id,
            msg.user_id,
            self._queued,
            self._active,
        )
        return Ticket(job, duplicate=False, timeout=self._reply_timeout)

    async def submit(self, msg: IncomingMessage, on_event: EventSink | None = None) -> Reply:
        """Accept `msg` and wait for its reply (see `accept`)."""
        ticket = await self.accept(msg, on_event)
        return await ticket.wait()

    def _repeat(self, job: _Job, msg: IncomingMessage) -> Ticket:
        """A ticket on the reply to an earlier message with this message_id."""
        if job.turn.text != msg.text:
            raise MessageIdConflict(msg.conversation_id, msg.message_id)
        self._counts["duplicates"] += 1
        job.waiters += 1
        log.info(
            "duplicate conversation_id=%s message_id=%s answered=%s",
            msg.conversation_id,
            msg.message_id,
            job.future.done(),
        )
        return Ticket(job, duplicate=True, timeout=self._reply_timeout)

    def _answered(self, turn: StoredTurn) -> _Job:
        """A finished job around a stored reply (not registered as in flight)."""
        job = _Job.of(turn)
        job.future.set_result(turn.to_reply())
        return job

    def _new_job(self, turn: StoredTurn) -> _Job:
        """A job for a pending turn, registered as in flight (repeats wait for it)."""
        job = _Job.of(turn)
        self._inflight[(turn.conversation_id, turn.message_id)] = job
        return job

    # -- scheduling ---------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        cid = job.turn.conversation_id
        lane = self._lanes.setdefault(cid, _Lane())
        lane.jobs.append(job)
        if len(lane.jobs) > 1 and lane.jobs[-2].turn.seq > job.turn.seq:
            lane.jobs = deque(sorted(lane.jobs, key=lambda j: j.turn.seq))  # keep arrival order
        if not lane.running and not lane.ready:
            lane.ready = True
            self._ready.append(cid)
        self._pump()

    def _pump(self) -> None:
        """Start waiting conversations while active slots are free."""
        while self._running and self._ready and self._active < self.max_active:
            cid = self._ready.popleft()
            lane = self._lanes[cid]
            lane.ready, lane.running = False, True
            self._active += 1
            task = asyncio.create_task(self._work(cid, lane), name=f"conversation:{cid}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _work(self, cid: str, lane: _Lane) -> None:
        """Answer the lane's messages in order; yield the slot when others wait for one."""
        try:
            while lane.jobs and self._running:
                job = lane.jobs.popleft()
                self._queued -= 1
                await self._answer(job)
                if lane.jobs and self._ready:
                    lane.ready = True
                    self._ready.append(cid)
                    break
        finally:
            lane.running = False
            self._active -= 1
            if not lane.jobs and not lane.ready and self._lanes.get(cid) is lane:
                del self._lanes[cid]
            self._pump()

    async def _answer(self, job: _Job) -> None:
        turn = job.turn
        msg = turn.message()
        started = time.monotonic()
        log.info("answering conversation_id=%s message_id=%s", msg.conversation_id, msg.message_id)
        history = await self._history_before(turn)
        reply = await run_turn(
            self._responder, history, msg, job.listeners, timeout=self._turn_timeout
        )
        elapsed = time.monotonic() - started
        try:
            await self._store.complete(reply)
        except Exception:
            log.exception(
                "could not store the reply conversation_id=%s message_id=%s",
                msg.conversation_id,
                msg.message_id,
            )
        self._inflight.pop((turn.conversation_id, turn.message_id), None)
        self._counts["failed" if reply.error else "answered"] += 1
        self._turn_seconds += elapsed
        self._avg_turn = 0.8 * self._avg_turn + 0.2 * elapsed
        log.info(
            "answered conversation_id=%s message_id=%s seconds=%.2f error=%s",
            msg.conversation_id,
            msg.message_id,
            elapsed,
            reply.error,
        )
        if not job.future.done():
            job.future.set_result(reply)
        if job.waiters <= 0:
            await self._deliver(msg, reply)

    async def _deliver(self, msg: IncomingMessage, reply: Reply) -> None:
        delivery = self._deliveries.get(msg.channel)
        if delivery is None:
            return  # e.g. HTTP: the reply is in the history
        try:
            await asyncio.wait_for(delivery.deliver(msg, reply), 60.0)
        except Exception:
            log.exception(
                "delivery failed channel=%s conversation_id=%s message_id=%s",
                msg.channel,
                msg.conversation_id,
                msg.message_id,
            )

    async def _history_before(self, turn: StoredTurn) -> list[ChatMessage]:
        turns = await self._store.turns(
            turn.conversation_id, before_seq=turn.seq, limit=self._history_turns
        )
        earlier = turns[0].meta if turns else turn.meta
        return _prior_history(earlier) + _as_messages(turns)

    # -- reading ------------------------------------------------------------------------

    async def turns(self, conversation_id: str) -> list[StoredTurn]:
        """Every turn of a conversation, oldest first; `UnknownConversation` when none."""
        turns = await self._store.turns(conversation_id)
        if not turns:
            raise UnknownConversation(conversation_id)
        return turns

    async def history(self, conversation_id: str) -> list[ChatMessage]:
        """The conversation so far: each message, then its reply once there is one."""
        return _as_messages(await self.turns(conversation_id))

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for monitoring (cheap: no I/O)."""
        finished = self._counts["answered"] + self._counts["failed"]
        return {
            "running": self._running,
            "active": self._active,
            "queued": self._queued,
            "waiting_conversations": len(self._ready),
            "max_active": self.max_active,
            "max_queued": self.max_queued,
            **self._counts,
            "conversations": self._conversations,
            "average_turn_seconds": self._turn_seconds / finished if finished else 0.0,
        }


def _prior_history(meta: dict[str, Any]) -> list[ChatMessage]:
    """Context a channel read before Livia joined (a Slack thread's earlier messages)."""
    prior = meta.get("prior_history") or []
    return [
        ChatMessage(str(m["role"]), str(m["content"]))
        for m in prior
        if isinstance(m, dict) and m.get("role") in ("user", "assistant") and m.get("content")
    ]


def _as_messages(turns: list[StoredTurn]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for turn in turns:
        out.append(ChatMessage("user", turn.text))
        if turn.done and turn.reply is not None:
            out.append(ChatMessage("assistant", turn.reply))
    return out
