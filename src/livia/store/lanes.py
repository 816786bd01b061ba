"""A fixed set of long-lived database connections, handed out first come, first served.

SQLAlchemy's pool checks a connection out and back in (and resets it) around every
use; on the asyncio drivers that costs more than the statement itself. The store's hot
path (accept, complete) instead borrows one of a few connections that stay open.

Invariants: at most `size` connections are open; each is used by one task at a time;
a connection whose use raised (a database error, a cancellation mid-transaction) is
closed and replaced on the next borrow, so a broken connection is never handed out twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)


class Lanes:
    """`size` connections of `engine` with `options` (e.g. AUTOCOMMIT for reads)."""

    def __init__(self, engine: AsyncEngine, size: int, **options: Any) -> None:
        self._engine = engine
        self._options = options
        self._idle: asyncio.Queue[AsyncConnection | None] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(None)  # opened on first use
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[AsyncConnection]:
        """Borrow a connection for the block (waits while all are in use)."""
        conn = await self._idle.get()
        healthy = False
        try:
            if conn is None:
                conn = await self._engine.connect()
                if self._options:
                    await conn.execution_options(**self._options)
            yield conn
            healthy = True
        finally:
            if healthy or conn is None:
                self._idle.put_nowait(conn if healthy else None)
            else:
                self._discard(conn)
                self._idle.put_nowait(None)

    def _discard(self, conn: AsyncConnection) -> None:
        """Close a connection whose state is unknown, without waiting for it here."""
        task = asyncio.get_running_loop().create_task(self._close_one(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_one(conn: AsyncConnection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.invalidate(), 5.0)

    async def close(self) -> None:
        """Close every idle connection (borrowed ones are closed by the engine's dispose)."""
        self._closed = True
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5.0)
        if self._closing:
            await asyncio.wait(self._closing, timeout=5.0)
