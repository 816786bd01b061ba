"""What the Slack channel remembers: threads Livia takes part in, and events already taken.

`SlackMemory` is the small interface the channel needs. `InMemorySlackMemory` keeps it in
the process (bounded); `StoreSlackMemory` keeps it in Livia's store, so it survives
restarts and is shared by every replica: a thread is Livia's when it is marked so or its
conversation has turns, and first sightings are the store's atomic idempotency marks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from livia.store import Store

__all__ = ["InMemorySlackMemory", "SlackMemory", "StoreSlackMemory"]


class SlackMemory(Protocol):
    """Thread membership and first-sighting marks for the Slack channel."""

    async def remember_thread(self, conversation_id: str) -> None:
        """Record that Livia takes part in this thread's conversation."""
        ...

    async def knows_thread(self, conversation_id: str) -> bool:
        """True when Livia was addressed in this thread before."""
        ...

    async def first_sighting(self, mark: str) -> bool:
        """Record `mark`; True only the first time it is seen (atomic)."""
        ...


class InMemorySlackMemory:
    """`SlackMemory` in dicts: bounded in size, marks expire after `mark_ttl` seconds.

    Invariants: at most `max_threads` threads and `max_marks` marks are kept (oldest
    dropped first); `first_sighting` checks and records with no await in between, so two
    tasks of one event loop can never both see a mark as new.
    """

    def __init__(
        self,
        *,
        max_threads: int = 100_000,
        max_marks: int = 100_000,
        mark_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threads: OrderedDict[str, None] = OrderedDict()
        self._marks: OrderedDict[str, float] = OrderedDict()
        self._max_threads = max_threads
        self._max_marks = max_marks
        self._mark_ttl = mark_ttl
        self._clock = clock

    async def remember_thread(self, conversation_id: str) -> None:
        self._threads[conversation_id] = None
        self._threads.move_to_end(conversation_id)
        while len(self._threads) > self._max_threads:
            self._threads.popitem(last=False)

    async def knows_thread(self, conversation_id: str) -> bool:
        return conversation_id in self._threads

    async def first_sighting(self, mark: str) -> bool:
        return self.first_sighting_now(mark)

    def first_sighting_now(self, mark: str) -> bool:
        """`first_sighting` without the coroutine (for callers that must not yield)."""
        now = self._clock()
        while self._marks:
            oldest, at = next(iter(self._marks.items()))
            if now - at < self._mark_ttl and len(self._marks) < self._max_marks:
                break
            del self._marks[oldest]
        if mark in self._marks:
            return False
        self._marks[mark] = now
        return True


class StoreSlackMemory:
    """`SlackMemory` over Livia's `Store`, with an in-process layer in front.

    The in-process layer answers at once (and keeps two deliveries racing within this
    process apart without touching the database); the store makes marks survive a
    restart, and its history says which threads Livia answered in before.
    """

    def __init__(
        self, store: Store, *, mark_ttl: float = 86_400.0, thread_ttl: float = 90 * 86_400.0
    ) -> None:
        self._store = store
        self._mark_ttl = mark_ttl
        self._thread_ttl = thread_ttl
        self._local = InMemorySlackMemory(mark_ttl=min(mark_ttl, 3600.0))

    async def remember_thread(self, conversation_id: str) -> None:
        # Shared through the store: the next event of this thread may reach another replica
        # before this one has stored a turn (an assistant thread has none yet).
        await self._local.remember_thread(conversation_id)
        await self._store.mark(f"slack:thread:{conversation_id}", ttl=self._thread_ttl)

    async def knows_thread(self, conversation_id: str) -> bool:
        if await self._local.knows_thread(conversation_id):
            return True
        known = await self._store.marked(f"slack:thread:{conversation_id}") or bool(
            await self._store.turns(conversation_id, limit=1)
        )
        if known:
            await self._local.remember_thread(conversation_id)
        return known

    async def first_sighting(self, mark: str) -> bool:
        if not self._local.first_sighting_now(mark):
            return False
        return not await self._store.seen(f"slack:{mark}", ttl=self._mark_ttl)
