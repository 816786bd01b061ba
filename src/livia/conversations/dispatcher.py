"""The dispatcher: per-conversation FIFO, parallel across conversations, bounded, durable —
in one process or across many sharing one store.

Invariants (the store's claims and leases make them hold across processes):

- A message is written to the store's inbox before `accept` returns; its reply is stored
  before any waiter sees it or any channel gets it.
- Messages of one conversation are answered one at a time, in arrival order, by whichever
  process holds the conversation's oldest pending message; each sees every earlier
  question and answer. Different conversations run in parallel, at most `max_active` at
  once in this process. A process answering a conversation goes on with its next message
  in the same transaction that stores a reply; when others wait for a slot it lets its
  slot go after each message (round robin).
- At most `max_queued` accepted messages wait in this process; beyond that `accept`
  raises `Busy` (a retry hint) instead of growing a queue. A message is claimed at intake
  only while a slot is free; otherwise any process with a free slot takes it.
- A message_id is answered once, whichever process receives it: a repeat returns the
  stored reply, or waits for the reply in progress (here or in another process), marked
  ``duplicate=True``; the responder is not asked again.
- A process whose heartbeat stops (dead, or cut off from the store) loses its claims
  after the store's lease; live processes take its messages over continuously. A process
  that cannot renew its lease stops its turns before the lease runs out.
- The process that accepted a message delivers its reply to the channel; when it is gone
  the one that answered (or any live one) does, once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from livia.conversations.errors import Busy, MessageIdConflict, NotRunning, UnknownConversation
from livia.conversations.locks import KeyedLocks
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

T = TypeVar("T")

_Key = tuple[str, str]  # (conversation_id, message_id)

#: Most message ids one poll of the store asks about.
_POLL_BATCH = 500


@dataclass(eq=False)
class _Job:
    """One accepted message on its way to a reply, as this process knows it."""

    turn: StoredTurn
    listeners: Listeners
    future: asyncio.Future[Reply]
    #: Tickets still waiting for the reply; 0 means nobody will read it (deliver it).
    waiters: int = 0
    #: True while this process holds the message's claim.
    claimed: bool = False
    #: Its conversation's first message: there is no earlier turn to read.
    first: bool = False

    @classmethod
    def of(cls, turn: StoredTurn) -> _Job:
        """A job for `turn`, its reply not yet known."""
        return cls(turn, Listeners(turn.message()), asyncio.get_running_loop().create_future())


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
        poll_interval: float = 0.1,
        scan_interval: float | None = None,
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
        self._poll_interval = poll_interval
        lease = store.lease
        # Takeover within lease + lease/4; messages left unclaimed while every slot here was
        # busy are taken at once when a slot frees (the scan is woken), so this can be slow.
        self._scan_interval = scan_interval if scan_interval is not None else lease / 4
        self._heartbeat_interval = min(1.0, lease / 4)
        self._deliveries: dict[str, ReplyDelivery] = {}
        #: Every unfinished message this process knows: accepted here, claimed here or waited on.
        self._jobs: dict[_Key, _Job] = {}
        self._ready: deque[_Job] = deque()  # claimed, waiting for a slot
        self._watching: dict[int, _Job] = {}  # by seq: answered (or to be taken) elsewhere
        self._workers: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._intake = KeyedLocks()
        self._wake_scan = asyncio.Event()
        self._wake_watch = asyncio.Event()
        self._active = 0
        self._reserved = 0  # accepts between the capacity check and the store's answer
        self._running = False
        #: Monotonic time until which this process's lease certainly holds.
        self._lease_until = 0.0
        self._fenced = False
        #: False while the store refuses writes (disk full, database down): not ready.
        self._store_ok = True
        #: Messages whose reply could not be stored: their claims are given back (and the
        #: messages answered again) once the store takes writes.
        self._unstored: set[int] = set()
        self._counts = dict.fromkeys(
            (
                "accepted",
                "answered",
                "failed",
                "duplicates",
                "rejected",
                "recovered",
                "taken_over",
                "answered_elsewhere",
                "fenced",
            ),
            0,
        )
        self._conversations = 0
        self._turn_seconds = 0.0  # total, over answered + failed
        self._avg_turn = 5.0  # moving average, for the Busy retry hint
        #: Called each heartbeat for the snapshot published to the other processes.
        self.snapshot: Callable[[], dict[str, Any]] | None = None

    # -- life cycle ---------------------------------------------------------------------

    def register_delivery(self, channel: str, delivery: ReplyDelivery) -> None:
        """Deliver `channel`'s replies nobody waits for (after a restart, or a takeover) here."""
        self._deliveries[channel] = delivery

    @property
    def running(self) -> bool:
        """True between `start()` and `aclose()`."""
        return self._running

    @property
    def store_ok(self) -> bool:
        """False while the store's last write failed (messages cannot be kept: not ready)."""
        return self._store_ok

    @property
    def instance_id(self) -> str:
        """This process's name in the deployment."""
        return self._store.instance_id

    async def start(self) -> None:
        """Open for intake and begin taking over what no live process holds.

        Takeover is continuous (every `scan_interval`), not only now: a dead process's
        messages are answered here within about its lease.
        """
        if self._running:
            return
        self._conversations = await self._store.count_conversations()
        self._lease_until = time.monotonic() + self._store.lease * 0.8
        self._running = True
        for name, loop in (
            ("heartbeat", self._heartbeat_loop),
            ("takeover", self._scan_loop),
            ("watch", self._watch_loop),
        ):
            self._background.append(asyncio.create_task(loop(), name=f"conversations-{name}"))
        await self._scan_once()

    async def aclose(self, grace: float = 0.0) -> None:
        """Stop intake, let turns in progress finish for up to `grace` seconds, then cancel.

        Nothing is lost: unanswered messages stay in the inbox (the store gives this
        process's claims back when it closes) and their waiters get `NotRunning` (a 503
        to retry) instead of hanging.
        """
        self._running = False
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)
        self._background.clear()
        workers = list(self._workers)
        if workers and grace > 0:
            await asyncio.wait(workers, timeout=grace)
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.wait(workers, timeout=10.0)
        for job in self._jobs.values():
            if not job.future.done():
                job.future.set_exception(
                    NotRunning(
                        "Livia is shutting down; the message is kept and answered on restart"
                        " (or by another replica)"
                    )
                )
                job.future.exception()  # retrieved: no "never retrieved" warning
        self._jobs.clear()
        self._ready.clear()
        self._watching.clear()

    # -- intake -------------------------------------------------------------------------

    @property
    def _waiting(self) -> int:
        return len(self._ready) + len(self._watching) + self._reserved

    async def accept(self, msg: IncomingMessage, on_event: EventSink | None = None) -> Ticket:
        """Write `msg` to the inbox and queue it; returns once it is durably accepted.

        Raises `Busy` when `max_queued` messages already wait, `NotRunning` before
        `start()`, `MessageIdConflict` when the message_id was used for another text.
        A repeat's ticket is marked `duplicate` and gets no events.
        """
        if not self._running:
            raise NotRunning()
        key = (msg.conversation_id, msg.message_id)
        job = self._jobs.get(key)
        if job is not None:
            return self._repeat(job, msg)
        if self._waiting >= self.max_queued:
            self._counts["rejected"] += 1
            retry = math.ceil((self._waiting + 1) / self.max_active) * self._avg_turn
            log.warning(
                "busy: refusing conversation_id=%s message_id=%s queued=%d",
                msg.conversation_id,
                msg.message_id,
                self._waiting,
            )
            raise Busy(min(retry, 300.0), self._waiting)
        claim = not self._fenced and self._active + len(self._ready) < self.max_active
        self._reserved += 1  # before the first await: the bound holds under bursts
        try:
            # In call order per conversation: concurrent accepts of one conversation reach
            # the store (and so get their place in it) in the order they were made.
            async with self._intake.hold(msg.conversation_id, timeout=self._reply_timeout):
                turn, created, first = await self._store_write(self._store.accept(msg, claim=claim))
        finally:
            self._reserved -= 1
        if not created:
            if turn.text != msg.text:
                raise MessageIdConflict(msg.conversation_id, msg.message_id)
            job = self._jobs.get(key)
            if job is None:  # answered already, or accepted earlier (here or elsewhere)
                job = self._answered(turn) if turn.done else self._track(turn)
            return self._repeat(job, msg)
        job = self._track(turn, first=first)
        if on_event is not None:
            job.listeners.add(on_event)
        job.waiters += 1
        self._counts["accepted"] += 1
        self._conversations += first
        log.info(
            "accepted conversation_id=%s message_id=%s user_id=%s claimed=%s queued=%d active=%d",
            msg.conversation_id,
            msg.message_id,
            msg.user_id,
            job.claimed,
            self._waiting,
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
        """A finished job around a stored reply (not tracked)."""
        job = _Job.of(turn)
        job.future.set_result(turn.to_reply())
        return job

    def _track(self, turn: StoredTurn, *, first: bool = False) -> _Job:
        """Track a pending turn: queue it when this process holds its claim, else watch it."""
        job = _Job.of(turn)
        job.first = first
        self._jobs[turn.key] = job
        if turn.owner == self._store.owner:
            job.claimed = True
            self._enqueue(job)
        else:
            self._watch(job)
        return job

    def _take(self, turn: StoredTurn) -> _Job:
        """This process now holds `turn`'s claim: its job (tracked already, or new)."""
        job = self._jobs.get(turn.key)
        if job is None:
            job = _Job.of(turn)
            self._jobs[turn.key] = job
        self._watching.pop(turn.seq, None)
        job.turn = turn
        job.claimed = True
        if turn.accepted_by != self._store.owner:  # accepted by another process (or run)
            self._counts["recovered"] += 1
        return job

    def _watch(self, job: _Job) -> None:
        job.claimed = False
        self._watching[job.turn.seq] = job
        self._wake_watch.set()

    # -- scheduling ---------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        self._ready.append(job)
        self._pump()

    def _pump(self) -> None:
        """Start claimed messages while active slots are free."""
        while self._running and self._ready and self._active < self.max_active:
            job = self._ready.popleft()
            self._active += 1
            cid = job.turn.conversation_id
            task = asyncio.create_task(self._work(job), name=f"conversation:{cid}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _work(self, job: _Job) -> None:
        """Answer `job`, then its conversation's next messages while nobody else waits."""
        current: _Job | None = job
        try:
            while current is not None and self._running:
                following = await self._answer(current)
                if following is not None and (self._ready or self._unclaimed_here()):
                    if not self._ready:  # others wait unclaimed: take one in before us
                        await self._quietly(self._claim(1))
                    self._ready.append(following)  # take turns
                    following = None
                current = following
        except asyncio.CancelledError:
            if current is not None and self._fenced and current.claimed:
                self._watch(current)  # the claim is being given back; someone answers it
            raise
        finally:
            self._active -= 1
            if self._running:
                self._pump()
                if self._watching and self._active + len(self._ready) < self.max_active:
                    self._wake_scan.set()

    async def _answer(self, job: _Job) -> _Job | None:
        """Answer one claimed message and store the reply; the next claimed job, if any."""
        turn = job.turn
        msg = turn.message()
        started = time.monotonic()
        log.info(
            "answering conversation_id=%s message_id=%s attempt=%d",
            msg.conversation_id,
            msg.message_id,
            turn.attempts,
        )
        if job.first:
            history: list[ChatMessage] | Exception = _prior_history(turn.meta)
        else:
            history = await self._retrying(
                "read the history", msg, lambda: self._history_before(turn)
            )
        if isinstance(history, Exception):  # cannot read it now: answered later
            self._answer_later(job, history, "the conversation so far could not be read")
            return None
        reply = await run_turn(
            self._responder, history, msg, job.listeners, timeout=self._turn_timeout
        )
        elapsed = time.monotonic() - started
        delivers = msg.channel in self._deliveries
        local = turn.accepted_by == self._store.owner
        # The reply needs no delivery (HTTP reads it back) or a waiter here takes it.
        delivered = not delivers or (local and job.waiters > 0)
        done = await self._store_reply(reply, delivered=delivered)
        if isinstance(done, Exception):  # cannot store it now: not delivered, answered later
            self._answer_later(job, done, "the reply could not be kept")
            return None
        if not done.stored:
            self._counts["fenced"] += 1
            log.warning(
                "reply discarded: another process took over conversation_id=%s message_id=%s",
                msg.conversation_id,
                msg.message_id,
            )
            self._watch(job)
            return None
        self._jobs.pop(turn.key, None)
        self._counts["failed" if reply.error else "answered"] += 1
        if not local:
            self._counts["taken_over"] += 1
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
        if delivers and not delivered:
            if local:
                await self._deliver_and_mark(turn.seq, msg, reply)
            elif not done.acceptor_alive:
                taken = await self._quietly(self._store.take_delivery(turn.seq))
                if taken is not None:
                    await self._deliver_and_mark(turn.seq, msg, reply)
        if done.next is None:
            return None
        return self._take(done.next)

    def _answer_later(self, job: _Job, failure: Exception, what: str) -> None:
        """Give up on answering `job` now (the store failed): its claim is given back at the
        next scan that reaches the store, and whoever takes it answers it then. Its waiters
        hear why; asking again with the same message_id finds the reply once it exists."""
        self._jobs.pop(job.turn.key, None)
        self._unstored.add(job.turn.seq)
        self._wake_scan.set()
        if not job.future.done():
            error = NotRunning(
                f"the message store is unavailable, so {what}; "
                "the message is kept and answered once the store recovers"
            )
            error.__cause__ = failure
            job.future.set_exception(error)
            job.future.exception()

    async def _store_write(self, write: Any) -> Any:
        """Await one store write, noting whether the store takes writes (readiness)."""
        from livia.store import StoreError

        try:
            result = await write
        except StoreError:
            self._store_ok = False
            raise
        self._store_ok = True
        return result

    async def _store_reply(self, reply: Reply, *, delivered: bool) -> Any:
        """`store.complete` with retries while the lease lasts; the last `StoreError` when
        it never worked."""
        return await self._retrying(
            "store the reply",
            reply,
            lambda: self._store_write(
                self._store.complete(reply, delivered=delivered, claim_next=True)
            ),
        )

    async def _retrying(
        self, what: str, msg: IncomingMessage | Reply, attempt: Callable[[], Awaitable[T]]
    ) -> T | Exception:
        """`attempt()` again after a `StoreError`, backing off, while the lease lasts (so
        a blip of the store costs a moment, not the message); the last `StoreError` when it
        never worked."""
        from livia.store import StoreError

        delay = 0.05
        while True:
            try:
                return await attempt()
            except StoreError as exc:
                if not self._running or time.monotonic() + delay > self._lease_until:
                    log.error(
                        "could not %s conversation_id=%s message_id=%s: %s",
                        what,
                        msg.conversation_id,
                        msg.message_id,
                        exc,
                    )
                    return exc
                log.warning("retrying to %s in %.2f s: %s", what, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _deliver_and_mark(self, seq: int, msg: IncomingMessage, reply: Reply) -> None:
        await self._deliver(msg, reply)
        await self._quietly(self._store.mark_delivered(seq))

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

    async def _quietly(self, awaitable: Any) -> Any:
        """Await a store call whose failure must not break the caller (it is logged)."""
        try:
            return await awaitable
        except Exception as exc:
            log.warning("store call failed: %s", exc)
            return None

    async def _history_before(self, turn: StoredTurn) -> list[ChatMessage]:
        turns = await self._store.turns(
            turn.conversation_id, before_seq=turn.seq, limit=self._history_turns
        )
        earlier = turns[0].meta if turns else turn.meta
        return _prior_history(earlier) + _as_messages(turns)

    # -- background: heartbeat, takeover, watching other processes ------------------------

    async def _sleep(self, event: asyncio.Event, seconds: float) -> None:
        """Wait until `event` is set or `seconds` pass; clears the event."""
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
        event.clear()

    async def _heartbeat_loop(self) -> None:
        lease = self._store.lease
        while True:
            sent = time.monotonic()
            try:
                snapshot = self.snapshot() if self.snapshot is not None else None
                await asyncio.wait_for(self._store.heartbeat(snapshot), max(0.5, lease / 2))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("store heartbeat failed: %s", exc)
                self._store_ok = False
            else:
                self._lease_until = sent + lease * 0.8
                if not self._unstored:  # else the next scan's release tells
                    self._store_ok = True
                if self._fenced:
                    await self._unfence()
            if time.monotonic() > self._lease_until and not self._fenced:
                self._fence()
            await asyncio.sleep(self._heartbeat_interval)

    def _fence(self) -> None:
        """The lease can no longer be trusted: stop every turn before another process may
        start it, and give the claims back once the store answers again."""
        self._fenced = True
        claimed = [job for job in self._jobs.values() if job.claimed]
        log.error(
            "lost contact with the store for over %.1f s: stopping %d claimed message(s) "
            "so that no other process answers them twice",
            self._store.lease * 0.8,
            len(claimed),
        )
        for job in self._ready:
            self._watch(job)
        self._ready.clear()
        for task in list(self._workers):
            task.cancel()

    async def _unfence(self) -> None:
        try:
            released = await self._store.release()
        except Exception as exc:
            log.warning("could not give claims back yet: %s", exc)
            return
        self._fenced = False
        log.warning("store reachable again: %d claim(s) given back for retaking", released)
        self._wake_scan.set()

    async def _scan_loop(self) -> None:
        scans = 0
        while True:
            await self._sleep(self._wake_scan, self._scan_interval)
            scans += 1
            try:
                await self._scan_once(reap=scans % 5 == 0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("takeover scan failed: %s", exc)

    async def _scan_once(self, *, reap: bool = True) -> None:
        """Claim what no live process holds, up to the free slots; deliver orphaned replies."""
        if not self._running or self._fenced:
            return
        if self._unstored:  # turns the store failed (`_answer_later`): let them be retaken
            seqs = list(self._unstored)
            released = await self._store_write(self._store.release(seqs))
            self._unstored.difference_update(seqs)
            log.info("store writable again: %d unstored message(s) to answer again", released)
        if reap:
            await self._store.reap_local_dead()
        await self._claim(self.max_active - self._active - len(self._ready))
        for turn in await self._store.take_deliveries(list(self._deliveries)):
            log.info(
                "delivering a reply whose channel process is gone conversation_id=%s message_id=%s",
                turn.conversation_id,
                turn.message_id,
            )
            await self._deliver_and_mark(turn.seq, turn.message(), turn.to_reply())

    async def _claim(self, limit: int) -> None:
        """Claim up to `limit` messages no live process holds and queue them here."""
        if limit <= 0:
            return
        for turn in await self._store.claim_ready(limit):
            if turn.accepted_by != self._store.owner:
                log.info(
                    "taking over conversation_id=%s message_id=%s attempt=%d",
                    turn.conversation_id,
                    turn.message_id,
                    turn.attempts,
                )
            self._enqueue(self._take(turn))

    def _unclaimed_here(self) -> bool:
        """True when a message accepted here waits with nobody holding it."""
        return any(job.turn.owner is None for job in self._watching.values())

    async def _watch_loop(self) -> None:
        while True:
            if not self._watching:
                await self._sleep(self._wake_watch, 5.0)
                continue
            try:
                await self._poll_watched()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching replies failed: %s", exc)
            await asyncio.sleep(self._poll_interval)

    async def _poll_watched(self) -> None:
        """Hand out the replies other processes stored for messages waited on here."""
        seqs = list(self._watching)
        for start in range(0, len(seqs), _POLL_BATCH):
            for turn in await self._store.get_many(seqs[start : start + _POLL_BATCH]):
                job = self._watching.get(turn.seq)
                if job is None or not turn.done:
                    continue
                del self._watching[turn.seq]
                self._jobs.pop(turn.key, None)
                self._counts["answered_elsewhere"] += 1
                reply = turn.to_reply()
                if not job.future.done():
                    job.future.set_result(reply)
                mine = turn.accepted_by == self._store.owner
                if mine and not turn.delivered and turn.channel in self._deliveries:
                    if job.waiters <= 0:
                        await self._deliver(turn.message(), reply)
                    await self._quietly(self._store.mark_delivered(turn.seq))

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
        """This process's counters and gauges for monitoring (cheap: no I/O)."""
        finished = self._counts["answered"] + self._counts["failed"]
        return {
            "instance": self._store.instance_id,
            "running": self._running,
            "active": self._active,
            "queued": len(self._ready) + len(self._watching),
            "claimed_waiting": len(self._ready),
            "waiting_conversations": len(self._ready),
            "waiting_elsewhere": len(self._watching),
            "max_active": self.max_active,
            "max_queued": self.max_queued,
            "lease_ok": not self._fenced,
            "store_ok": self._store_ok,
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
