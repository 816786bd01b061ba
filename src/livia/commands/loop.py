"""The event loop the long-running commands run on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed (not on Windows), as `livia serve` runs on;
    None (asyncio's own) otherwise. At a thousand streams it costs ~15 % less CPU (the
    OpenAI simulator 1.28 → 1.06 ms per message, `livia serve` 3.46 → 2.98)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
