"""One MCP server: a supervised, self-healing client session and the tools it offers.

Invariants:

* the `mcp` client is entered and exited by one supervisor task per server (the client's
  transport lives in an anyio task group, which must be left by the task that entered it,
  and whose failures cancel that task — never a turn);
* while the server is down its tools are not offered; the supervisor retries every
  `reconnect_interval` seconds and the tools come back when it answers again;
* a session found dropped (by a failed call, or by the periodic tool listing that doubles
  as a liveness check) is replaced at once;
* every MCP request (handshake, listing, tool call) is bounded by the server's `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import httpx2
import mcp_types
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from livia.agent.failures import describe
from livia.config import McpServerConfig

log = logging.getLogger(__name__)

State = Literal["connecting", "connected", "down", "closed"]

#: Longest time a server's tool list may page on (a server that never ends its cursor).
_MAX_LIST_PAGES = 50


@dataclass(frozen=True, slots=True)
class RemoteTool:
    """A tool as the server lists it."""

    name: str
    description: str
    input_schema: dict[str, Any]


class ServerDown(Exception):
    """The server is not connected (down at start-up, or its session dropped)."""


def is_session_lost(exc: BaseException) -> bool:
    """Whether a failed request means the session itself is gone (so reconnect)."""
    if isinstance(exc, MCPError):
        return exc.code == mcp_types.CONNECTION_CLOSED or _never_ran(exc)
    if isinstance(exc, TimeoutError):  # an OSError, but a slow answer is not a lost session
        return False
    return isinstance(
        exc, OSError | httpx2.TransportError | anyio.ClosedResourceError | anyio.BrokenResourceError
    )


def _never_ran(exc: BaseException) -> bool:
    """The server answered that it does not know our session: the request was not run."""
    return isinstance(exc, MCPError) and "session terminated" in exc.message.lower()


class ServerConnection:
    """A supervised connection to one MCP server (streamable HTTP or stdio)."""

    def __init__(self, config: McpServerConfig, *, reconnect_interval: float) -> None:
        self.config = config
        self.reconnect_interval = reconnect_interval
        self.state: State = "connecting"
        self.tools: tuple[RemoteTool, ...] = ()
        self.last_error: str | None = None
        self.connected_since: datetime | None = None
        self.connects = 0
        self._client: Client | None = None
        self._wake = asyncio.Event()  # a dropped session or close(): leave the session now
        self._closing = False
        self._first_attempt = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def transport(self) -> str:
        return "http" if self.config.url else "stdio"

    def start(self) -> None:
        """Start the supervisor (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"mcp:{self.name}")

    async def wait_first_attempt(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until the first connection attempt ended either way."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._first_attempt.wait()
        return self._first_attempt.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until the server is connected; True when it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        return self.state == "connected"

    def mark_lost(self, reason: str) -> None:
        """A request found the session dropped: replace it now instead of at the next failure."""
        if self.state == "connected":
            log.warning("mcp server %s: session lost (%s); reconnecting", self.name, reason)
            self.last_error = reason
            self._set_down()
            self._wake.set()

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """Call `tool` once, bounded by the server's timeout; raises when it cannot be done.

        A session found dropped is handed to the supervisor (which reconnects) and the call
        fails, since the server may have run it. The one exception is the server's own
        "session terminated" answer: the request never ran, so it is sent again once on the
        new session.
        """
        timeout = self.config.timeout
        async with asyncio.timeout(timeout):
            for attempt in range(2):
                client = self._client
                if client is None or self.state != "connected":
                    raise ServerDown(self.last_error or "not connected")
                try:
                    return await client.call_tool(tool, arguments, read_timeout_seconds=timeout)
                except Exception as exc:
                    if not is_session_lost(exc):
                        raise
                    self.mark_lost(describe(exc))
                    if attempt or not _never_ran(exc):
                        raise
                await self._connected.wait()  # bounded by the timeout above
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop the supervisor and close the session (bounded by `timeout`)."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, timeout=2.0)
        self.state = "closed"
        self.tools = ()

    def status(self) -> dict[str, Any]:
        """This server's state for monitoring (no URL, headers or env: they may hold secrets)."""
        return {
            "state": self.state,
            "transport": self.transport,
            "api": self.config.api,
            "tools": len(self.tools),
            "last_error": self.last_error,
            "connected_since": self.connected_since.isoformat() if self.connected_since else None,
            "connects": self.connects,
        }

    # -- supervisor -----------------------------------------------------------------

    async def _supervise(self) -> None:
        """Connect, serve until the session drops or we close, pause, and connect again.

        After a session that worked drops, the next attempt comes after a short pause (at
        most a second); after a failed attempt, after `reconnect_interval`.
        """
        while not self._closing:
            self._wake.clear()
            connects = self.connects
            try:
                await self._serve_once()
            except Exception as exc:
                self.last_error = describe(exc)
                if not self._closing:
                    log.warning(
                        "mcp server %s is down (%s); retrying every %g s",
                        self.name,
                        self.last_error,
                        self.reconnect_interval,
                    )
            finally:
                self._client = None
                self._set_down()
                self._first_attempt.set()
            if self._closing:
                break
            was_connected = self.connects > connects
            pause = min(1.0, self.reconnect_interval) if was_connected else self.reconnect_interval
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _serve_once(self) -> None:
        """One session: handshake and listing under the timeout, then serve until woken."""
        client = Client(
            self._transport(),
            read_timeout_seconds=self.config.timeout,
            cache=None,
        )
        async with contextlib.AsyncExitStack() as stack:
            started = time.monotonic()
            async with asyncio.timeout(self.config.timeout):
                await stack.enter_async_context(client)
                tools = await _list_tools(client)
            self._client = client
            self.tools = tools
            self.state = "connected"
            self.connects += 1
            self.connected_since = datetime.now(UTC)
            self.last_error = None
            self._connected.set()
            self._first_attempt.set()
            log.info(
                "mcp server %s connected over %s in %.2f s: %d tools (%s)",
                self.name,
                self.transport,
                time.monotonic() - started,
                len(tools),
                ", ".join(t.name for t in tools),
            )
            await self._watch(client)

    async def _watch(self, client: Client) -> None:
        """Serve until woken; every `reconnect_interval` s re-list the tools as a liveness check.

        The listing finds a session that died quietly (a stdio server that exited, an HTTP
        server that went away) before a user's call does, and picks up changed tool lists.
        It goes around the manager: listing does not count against the upstream's limits.
        """
        while not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.reconnect_interval):
                    await self._wake.wait()
            if self._wake.is_set():
                return
            try:
                async with asyncio.timeout(self.config.timeout):
                    tools = await _list_tools(client)
            except Exception as exc:
                if isinstance(exc, TimeoutError) or is_session_lost(exc):
                    raise  # the session is gone: the supervisor reconnects
                log.warning("mcp server %s: listing tools failed: %s", self.name, describe(exc))
                continue
            if tools != self.tools and self.state == "connected":
                log.info(
                    "mcp server %s: tools changed: %s",
                    self.name,
                    ", ".join(t.name for t in tools) or "none",
                )
                self.tools = tools

    def _set_down(self) -> None:
        if self.state != "closed":
            self.state = "down"
        self.tools = ()
        self.connected_since = None
        self._connected.clear()

    def _transport(self) -> AbstractAsyncContextManager[Any] | StdioServerParameters:
        """The streamable-HTTP transport (with the configured headers) or stdio parameters."""
        if self.config.command:
            return StdioServerParameters(
                command=self.config.resolved_command(),
                args=list(self.config.args),
                env=self.config.resolved_env() or None,
            )
        return _http_transport(
            self.config.resolved_url(), self.config.resolved_headers(), self.config.timeout
        )


@asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str], timeout: float) -> AsyncIterator[Any]:
    """Streamable HTTP with our headers and timeouts; closes the HTTP client it creates."""
    # Reads may idle on the server's event stream; each request has its own bound anyway.
    http = httpx2.AsyncClient(
        headers=headers or None, timeout=httpx2.Timeout(timeout, read=max(timeout, 300.0))
    )
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams


async def _list_tools(client: Client) -> tuple[RemoteTool, ...]:
    """All the server's tools, following pagination (bounded)."""
    tools: list[RemoteTool] = []
    cursor: str | None = None
    for _ in range(_MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        tools.extend(
            RemoteTool(
                name=tool.name,
                description=tool.description or tool.title or tool.name,
                input_schema=dict(tool.input_schema or {"type": "object", "properties": {}}),
            )
            for tool in page.tools
        )
        cursor = page.next_cursor
        if not cursor:
            break
    return tuple(tools)
