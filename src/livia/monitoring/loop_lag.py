"""How late the event loop runs: one timer every 100 ms, and how late each one fired.

A coroutine that blocks the loop (CPU-bound work, a blocking call) delays every other
request by as long; this is the figure that shows it. The timer is a bare
`loop.call_at` callback (no task), so it costs a few microseconds ten times a second.
The garbage collector stops the loop too (its full collections took 120–290 ms under load
before `livia serve` froze its start-up objects): its pauses are timed beside the lag.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from typing import Any

#: Seconds between two timers.
INTERVAL = 0.1
#: Seconds of samples the percentiles are taken over.
WINDOW = 60.0


class LoopLag:
    """A sliding window of event-loop lag samples (seconds late each timer fired).

    Invariants: at most ``window / interval`` samples are kept, the newest last; one timer
    is pending while running, none once stopped.
    """

    def __init__(self, interval: float = INTERVAL, window: float = WINDOW) -> None:
        if interval <= 0 or window < interval:
            raise ValueError("interval must be positive and window at least one interval")
        self.interval = interval
        self.window = window
        self._samples: deque[float] = deque(maxlen=max(1, round(window / interval)))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.worst = 0.0  # the largest lag since start, not only in the window
        self.started_at = 0.0
        self.gc_worst = 0.0  # the longest garbage collection since start, in seconds
        self.gc_total = 0.0
        #: Objects left out of collections (`gc.freeze`), as told by `note_frozen`
        #: (counting them walks them all: too slow for every `/stats`).
        self.gc_frozen = 0
        self._gc_began = 0.0

    def start(self) -> LoopLag:
        """Start measuring on the running loop (idempotent); returns self."""
        if self._handle is None:
            self._loop = asyncio.get_running_loop()
            self.started_at = time.time()
            self._schedule(self._loop.time())
            gc.callbacks.append(self._on_gc)
        return self

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            if self._on_gc in gc.callbacks:
                gc.callbacks.remove(self._on_gc)

    def note_frozen(self, count: int) -> None:
        """`count` start-up objects were just frozen (`gc.freeze`): shown as
        `gc_frozen_objects`; the pauses so far (start-up's, and the deliberate collection
        before freezing, which nobody waited on) are forgotten."""
        self.gc_frozen = count
        self.gc_worst = self.gc_total = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_began = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_began
        self.gc_total += pause
        self.gc_worst = max(self.gc_worst, pause)

    @property
    def running(self) -> bool:
        return self._handle is not None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = max(0.0, now - self._due)
        self._samples.append(lag)
        if lag > self.worst:
            self.worst = lag
        self._schedule(now)

    def record(self, lag: float) -> None:
        """Add a sample by hand (tests)."""
        self._samples.append(lag)
        self.worst = max(self.worst, lag)

    def stats(self) -> dict[str, Any]:
        """p50, p99 and max lag (ms) over the last `window` s, and the worst since start."""
        samples = sorted(self._samples)
        n = len(samples)

        def pct(q: float) -> float | None:
            if not n:
                return None
            return round(samples[min(n - 1, int(q * n))] * 1000, 2)

        return {
            "lag_p50_ms": pct(0.50),
            "lag_p99_ms": pct(0.99),
            "lag_max_ms": round(samples[-1] * 1000, 2) if n else None,
            "lag_worst_ms": round(self.worst * 1000, 2),
            "samples": n,
            "interval_ms": round(self.interval * 1000, 1),
            "window_s": self.window,
            "gc_pause_worst_ms": round(self.gc_worst * 1000, 2),
            "gc_pause_total_ms": round(self.gc_total * 1000, 1),
            "gc_collections": [generation["collections"] for generation in gc.get_stats()],
            "gc_frozen_objects": self.gc_frozen,
        }
