"""Instrumented operations for concurrency tests: they record starts and concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Probe:
    """An upstream stand-in: each call sleeps `latency` s; `failures` are raised first, in order."""

    latency: float = 0.0
    failures: Sequence[BaseException] = ()
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    async def op(self) -> str:
        loop = asyncio.get_running_loop()
        index = len(self.starts)
        self.starts.append(loop.time())
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if index < len(self.failures):
                raise self.failures[index]
            return "ok"
        finally:
            self.active -= 1
            self.ends.append(loop.time())
