"""Admission to one upstream: an immediate start when possible, else a fair queue.

Waiters are grouped by `key` (whose call it is); keys take turns (round-robin) and each
key's own waiters go first-in, first-out. One pump per gate starts waiters as the
limiter allows, so a slot or window opening is used at once and never by two callers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from livia.concurrency.errors import CapacityExhausted, CoordinationUnavailable
from livia.concurrency.limiter import Denial, Grant, Limiter, describe, loop_time
from livia.concurrency.policy import ApiPolicy
from livia.concurrency.stats import ApiStats

log = logging.getLogger("livia.concurrency")

#: Longest the pump waits for a slot without re-checking (a release wakes it sooner).
MAX_IDLE = 1.0
#: How often a pump re-checks a shared limiter whose slots are held by other processes.
SHARED_POLL = 0.05


@dataclass(eq=False, slots=True)
class Waiter:
    key: str
    cost: int
    future: asyncio.Future[Grant] = field(repr=False)


class Gate:
    """Fair, deadline-bounded admission to one upstream's limiter."""

    def __init__(self, api: str, policy: ApiPolicy, limiter: Limiter, stats: ApiStats) -> None:
        self.api = api
        self.policy = policy
        self.limiter = limiter
        self.stats = stats
        self._queues: OrderedDict[str, deque[Waiter]] = OrderedDict()
        self._pump_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def enter(self, key: str, cost: int, deadline: float) -> Grant:
        """Wait (at most `deadline` s) for permission to start one attempt.

        Raises `CapacityExhausted` at once when the limits cannot allow a start in time.
        """
        if not self._queues:
            first = await self.limiter.acquire(cost)
            if isinstance(first, Grant):
                return first
            ahead = 0
        else:
            ahead = self._ahead(key)
            first = await self.limiter.estimate(cost, ahead) or Denial(0.0, "max_concurrent")
        if first.wait > deadline:
            self.stats.capacity_exhausted += 1
            log.warning(
                "capacity exhausted api=%s key=%s reason=%s retry_after=%.1fs",
                self.api,
                key,
                first.reason,
                first.wait,
            )
            error = CoordinationUnavailable if first.outage else CapacityExhausted
            raise error(self.api, describe(first.reason, self.policy), first.wait)
        return await self._wait(key, cost, deadline, first)

    async def _wait(self, key: str, cost: int, deadline: float, first: Denial) -> Grant:
        loop = asyncio.get_running_loop()
        waiter = Waiter(key, cost, loop.create_future())
        self._queues.setdefault(key, deque()).append(waiter)
        self.stats.waiting += 1
        self.stats.rate_limit_waits += 1
        log.debug(
            "waiting api=%s key=%s reason=%s ahead_wait=%.3fs",
            self.api,
            key,
            first.reason,
            first.wait,
        )
        self._ensure_pump()
        started = loop_time()
        try:
            await asyncio.wait((waiter.future,), timeout=None if math.isinf(deadline) else deadline)
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            self.stats.waiting -= 1
            self.stats.total_wait_time += loop_time() - started
        if waiter.future.done() and not waiter.future.cancelled():
            return waiter.future.result()
        self._abandon(waiter)
        self.stats.capacity_exhausted += 1
        estimate = await self.limiter.estimate(cost, self._ahead(key))
        retry_after = estimate.wait if estimate and estimate.wait > 0 else max(1.0, deadline)
        reason = estimate.reason if estimate else "max_concurrent"
        log.warning(
            "gave up waiting api=%s key=%s after=%.1fs reason=%s", self.api, key, deadline, reason
        )
        if estimate is not None and estimate.outage:
            raise CoordinationUnavailable(
                self.api, f"no call could start for {deadline:.0f} s: {reason}", retry_after
            )
        raise CapacityExhausted(
            self.api,
            f"no capacity within {deadline:.0f} s ({describe(reason, self.policy)})",
            retry_after,
        )

    async def leave(self, grant: Grant) -> None:
        """Hand back a slot after an attempt ends, and wake the queue."""
        await self.limiter.release(grant)
        if self._queues and self._wake is not None:
            self._wake.set()

    def _abandon(self, waiter: Waiter) -> None:
        """Take a waiter out of line; hand back a grant it was given but will not use."""
        if waiter.future.done() and not waiter.future.cancelled():
            grant = waiter.future.result()
            task = asyncio.ensure_future(self.limiter.release(grant))
            self._releasing.add(task)  # keep a reference until it is done
            task.add_done_callback(self._released)
            return
        waiter.future.cancel()
        queue = self._queues.get(waiter.key)
        if queue is not None:
            try:
                queue.remove(waiter)
            except ValueError:
                pass
            if not queue:
                del self._queues[waiter.key]
        self.notify()  # the head of the line may have changed

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("releasing an unused slot failed api=%s: %s", self.api, task.exception())
        self.notify()

    def _ahead(self, key: str) -> int:
        """How many waiters round-robin serves before a new waiter of `key`."""
        mine = len(self._queues.get(key, ()))
        return mine + sum(min(len(q), mine) for k, q in self._queues.items() if k != key)

    def notify(self) -> None:
        """Capacity may have changed (a slot was released): let the pump look again."""
        if self._wake is not None and self._queues:
            self._wake.set()

    def _ensure_pump(self) -> None:
        if self._pump_task is None or self._pump_task.done():
            self._wake = asyncio.Event()
            self._pump_task = asyncio.get_running_loop().create_task(
                self._pump(), name=f"livia-gate-{self.api}"
            )

    def _next(self) -> Waiter | None:
        while self._queues:
            key, queue = next(iter(self._queues.items()))
            if queue and not queue[0].future.done():
                return queue[0]
            if queue:
                queue.popleft()
            if not queue:
                del self._queues[key]
        return None

    def _served(self, waiter: Waiter) -> None:
        queue = self._queues[waiter.key]
        if queue[0] is waiter:
            queue.popleft()
        else:
            queue.remove(waiter)
        if queue:
            self._queues.move_to_end(waiter.key)
        else:
            del self._queues[waiter.key]

    def _upcoming(self, n: int) -> list[Waiter]:
        """The next `n` waiters in the order round-robin serves them (the first is `_next`)."""
        out: list[Waiter] = []
        queues = list(self._queues.values())
        depth = 0
        while len(out) < n:
            found = False
            for queue in queues:
                if depth < len(queue):
                    found = True
                    if not queue[depth].future.done():
                        out.append(queue[depth])
                        if len(out) == n:
                            break
            if not found:
                break
            depth += 1
        return out

    async def _admit(self, waiter: Waiter) -> Grant | Denial:
        try:
            return await self.limiter.acquire(waiter.cost)
        except Exception as exc:  # e.g. a shared backend unreachable: keep trying, bounded
            log.warning("admission failed api=%s: %s; retrying in %.0fs", self.api, exc, MAX_IDLE)
            return Denial(MAX_IDLE, "backend unavailable")

    async def _pump(self) -> None:
        wake = self._wake
        assert wake is not None
        while (waiter := self._next()) is not None:
            # A shared limiter admits as many waiters as it last had free slots in one
            # round trip (they are judged in turn, in round-robin order).
            room = getattr(self.limiter, "room", None)
            batch = self._upcoming(room()) if room is not None else [waiter]
            if len(batch) > 1:
                results = await asyncio.gather(*(self._admit(w) for w in batch))
            else:
                results = [await self._admit(waiter)]
                batch = [waiter]
            denial: Denial | None = None
            for each, result in zip(batch, results, strict=True):
                if isinstance(result, Grant):
                    if each.future.done():  # its caller gave up while we asked
                        await self.limiter.release(result)
                        continue
                    self._served(each)
                    each.future.set_result(result)
                elif denial is None:
                    denial = result
            if denial is None:
                continue
            result = denial
            if result.slot_only:
                timeout = SHARED_POLL if self.limiter.shared else MAX_IDLE
            else:  # a known time (bounded by the window); releases and departures wake it
                timeout = max(result.wait, 0.0005)
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except TimeoutError:
                pass

    async def aclose(self) -> None:
        if self._pump_task is not None and not self._pump_task.done():
            self._pump_task.cancel()
            try:
                await self._pump_task
            except asyncio.CancelledError:
                pass
        for queue in self._queues.values():
            for waiter in queue:
                waiter.future.cancel()
        self._queues.clear()
