"""`IdleTimeout`: a timeout on the gaps in a stream, not on its whole length.

`asyncio.timeout(...).reschedule()` on every chunk creates and cancels a timer per chunk
(a reply is dozens of chunks; at 1 000 conversations the timer heap was a tenth of the
loop's time). Here a chunk only notes the time; one timer runs per gap and, when it fires
early because chunks came meanwhile, re-arms itself for the gap since the last one.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

#: A timer that fires this close to its due time counts as due (the loop's clock resolution).
_SLACK = 0.001


class IdleTimeout:
    """Cancel the block, raising `TimeoutError`, once `touch()` has not been called for
    `seconds` (the block's start counts as a touch); `None` never times out.

    Like `asyncio.timeout`, the cancellation is the task's own: a cancellation from
    elsewhere stays a `CancelledError`, and `expired` says whether this timeout fired.
    """

    __slots__ = ("_cancelling", "_handle", "_last", "_loop", "_task", "expired", "seconds")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.expired = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._cancelling = 0

    def touch(self) -> None:
        """Progress: the next gap starts now."""
        if self._loop is not None:
            self._last = self._loop.time()

    async def __aenter__(self) -> IdleTimeout:
        if self.seconds is None:
            return self
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("IdleTimeout must be used inside a task")
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self._last = self._loop.time()
        self._handle = self._loop.call_at(self._last + self.seconds, self._check)
        return self

    def _check(self) -> None:
        assert self._loop is not None and self._task is not None and self.seconds is not None
        due = self._last + self.seconds
        if due - self._loop.time() > _SLACK:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._handle = None
        self.expired = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None
        if self.expired and self._task is not None:
            # Take back this timeout's cancellation whatever the block turned it into (as
            # asyncio.Timeout does); only a cancellation that was ours becomes TimeoutError.
            ours = self._task.uncancel() <= self._cancelling
            if ours and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
