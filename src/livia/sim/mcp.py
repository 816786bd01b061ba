"""A simulated Zapier-like MCP tool server over streamable HTTP (the `mcp` SDK's MCPServer).

`SimMcp` offers the tools in `livia.sim.zapier` with a configurable latency, a limit on
concurrent tool calls and an hourly quota. Over a limit the tool call fails the way
Zapier's does: an error result (`isError: true`) whose text says what happened and, for
the quota, when it resets (also in the result's `_meta`: `retry_after` seconds and
`reset_at`). Counters are at `GET /sim/stats` on the same server, cleared by
`POST /sim/reset`, and in `SimMcp.stats`.

The quota counts tool calls that were let in, in a sliding hour on the monotonic clock;
limits are checked and recorded without an `await` in between, so they hold to the call.
Counted are calls addressed to one of the tools; calls the SDK rejects before that
(unknown tool, arguments of the wrong type) are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent
from starlette.requests import Request
from starlette.responses import JSONResponse

from livia.sim import zapier
from livia.sim._serving import SimServer, UvicornRunner
from livia.sim._stats import SimConfigMixin, SimStatsMixin, wants_timeline, zero_counts
from livia.sim.latency import Latency
from livia.sim.limits import SlidingWindow, format_duration
from livia.sim.timeline import Timeline

log = logging.getLogger(__name__)

_OVER_LIMIT_KINDS = ("concurrency", "quota")


@dataclass(frozen=True)
class SimMcpConfig(SimConfigMixin):
    """How the simulated tool server behaves. Limits of 0 are off.

    `latency` is seconds or a spec such as "lognormal:1:4" (see `livia.sim.latency`),
    drawn per tool call from `seed`.
    """

    latency: Latency | float | str = 0.0
    max_concurrent: int = 0
    quota_per_hour: int = 0
    seed: int | None = None
    #: The server name MCP clients see.
    name: str = "zapier"
    #: Most tool-call spans the timeline keeps (later calls still count).
    max_timeline: int = 100_000

    def __post_init__(self) -> None:
        self._check_limits("max_concurrent", "quota_per_hour")
        if self.max_timeline < 0:
            raise ValueError("max_timeline must not be negative")

    def describe(self) -> str:
        """A one-line summary for logs."""
        parts = [f"latency {self.latency_model}"]
        if self.max_concurrent:
            parts.append(f"max concurrent {self.max_concurrent}")
        if self.quota_per_hour:
            parts.append(f"quota {self.quota_per_hour}/hour")
        return ", ".join(parts)


@dataclass
class SimMcpStats(SimStatsMixin):
    """What the simulated tool server has seen since start or the last reset."""

    #: Tool calls received (refused ones included).
    tool_calls: int = 0
    #: Calls that succeeded.
    ok: int = 0
    #: Calls the tool itself refused (invalid arguments).
    errors: int = 0
    #: Calls refused for a limit (too many concurrent calls, or the hourly quota spent).
    over_limit: int = 0
    #: `over_limit` by limit; a call over both counts under each.
    over_limit_by: dict[str, int] = field(default_factory=zero_counts(_OVER_LIMIT_KINDS))
    #: Calls that the client abandoned before the result.
    cancelled: int = 0
    #: Tool calls by tool name.
    by_tool: dict[str, int] = field(default_factory=dict)
    timeline: Timeline = field(default_factory=Timeline)


class SimMcp(SimServer):
    """The simulated MCP server; `async with SimMcp(config) as sim:` runs it.

    `start()` returns the streamable HTTP endpoint to give an MCP client (".../mcp").
    """

    def __init__(self, config: SimMcpConfig | None = None) -> None:
        self.config = config or SimMcpConfig()
        self.stats = SimMcpStats(timeline=Timeline(self.config.max_timeline))
        self.url = ""
        self._latency = self.config.latency_model
        self._rng = random.Random(self.config.seed)
        quota = self.config.quota_per_hour
        self._quota = SlidingWindow(quota, 3600.0) if quota else None
        self._runner: UvicornRunner | None = None
        #: Events `schedule_event` created, which `list_events` shows.
        self.scheduled: list[dict[str, Any]] = []

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on (host, port) (0: any free port); returns "http://HOST:PORT/mcp"."""
        if self._runner is not None:
            raise RuntimeError("SimMcp is already running")
        server = self._build_server()
        # The session manager inside can run once, so each start builds a fresh app.
        runner = UvicornRunner(server.streamable_http_app(host=host))
        self.url = await runner.start(host, port) + "/mcp"
        self._runner = runner
        log.info("simulated MCP tools on %s (%s)", self.url, self.config.describe())
        return self.url

    async def stop(self) -> None:
        """Stop serving; calls still running are cancelled after a short grace period."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.stop()

    def reset(self) -> None:
        """Zero the counters, refill the quota and restart the random sequence."""
        self.stats.reset()
        if self._quota is not None:
            self._quota.clear()
        self.scheduled.clear()
        self._rng.seed(self.config.seed)

    def snapshot(self, *, timeline: bool = True) -> dict[str, Any]:
        """What `GET /sim/stats` returns: counters, limits, quota and the timeline."""
        out = self.stats.as_dict(timeline=timeline)
        out["limits"] = {
            "max_concurrent": self.config.max_concurrent,
            "quota_per_hour": self.config.quota_per_hour,
        }
        if self._quota is not None:
            now = time.monotonic()
            out["quota"] = {
                "limit": self._quota.limit,
                "used": self._quota.used(now),
                "remaining": self._quota.remaining(now),
                "resets_in": round(self._quota.wait(now), 3),
            }
        return out

    def _build_server(self) -> MCPServer:
        with _root_logging_untouched():
            server: MCPServer = MCPServer(
                self.config.name,
                title="Zapier MCP (simulated)",
                instructions="Simulated Zapier actions: tasks, files, calendar and email.",
                version="1.0",
                log_level="WARNING",
            )
        for name, fn in zapier.TOOLS.items():
            server.add_tool(
                self._guarded(name, fn),
                name=name,
                description=inspect.cleandoc(fn.__doc__ or name).replace("\n", " "),
                structured_output=False,
            )
        server.custom_route("/sim/stats", methods=["GET"])(self._stats_route)
        server.custom_route("/sim/reset", methods=["POST"])(self._reset_route)
        return server

    def _guarded(self, name: str, fn: Callable[..., zapier.ToolOutput]) -> Callable[..., Any]:
        """An async tool with `fn`'s arguments that runs `fn` under the limits and latency."""

        async def tool(**arguments: Any) -> CallToolResult:
            return await self._call(name, fn, arguments)

        # MCPServer reads the argument schema from the signature; keep `fn`'s, less the
        # server's own state (parameters named `_...`).
        signature = inspect.signature(fn, eval_str=True)
        public = [p for p in signature.parameters.values() if not p.name.startswith("_")]
        tool.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=public, return_annotation=CallToolResult
        )
        tool.__name__ = name
        tool.__doc__ = fn.__doc__
        return tool

    # --- calls -------------------------------------------------------------------------

    async def _call(
        self, name: str, fn: Callable[..., zapier.ToolOutput], arguments: dict[str, Any]
    ) -> CallToolResult:
        now = time.monotonic()
        stats = self.stats
        stats.tool_calls += 1
        stats.by_tool[name] = stats.by_tool.get(name, 0) + 1
        refusal = self._check(now)
        if refusal is not None:
            return refusal
        if self._quota is not None:
            self._quota.add(now)
        span = stats.timeline.begin(now)
        outcome = "cancelled"
        try:
            await asyncio.sleep(self._latency.sample(self._rng))
            if "_scheduled" in inspect.signature(fn).parameters:
                arguments = {**arguments, "_scheduled": list(self.scheduled)}
            try:
                text, data = fn(**arguments)
            except ValueError as exc:
                outcome = "error"
                stats.errors += 1
                return _error(f"Error: {exc}")
            outcome = "ok"
            stats.ok += 1
            if name == "schedule_event":
                self.scheduled.append(data)
            return CallToolResult(
                content=[TextContent(type="text", text=text)], structured_content=data
            )
        finally:
            stats.timeline.end(span, outcome)
            if outcome == "cancelled":
                stats.cancelled += 1

    def _check(self, now: float) -> CallToolResult | None:
        """An error result if a call at `now` is over a limit, else None."""
        cfg, stats = self.config, self.stats
        quota_wait = 0.0
        if self._quota is not None and not self._quota.admits(now):
            quota_wait = self._quota.wait(now)
        busy = bool(cfg.max_concurrent) and stats.timeline.in_flight >= cfg.max_concurrent
        if not quota_wait and not busy:
            return None
        stats.over_limit += 1
        if busy:
            stats.over_limit_by["concurrency"] += 1
        if quota_wait:
            stats.over_limit_by["quota"] += 1
            stats.timeline.instant("over_quota", now)
            reset_at = datetime.now(UTC) + timedelta(seconds=quota_wait)
            return _error(
                f"Zapier MCP hourly quota exceeded: all {cfg.quota_per_hour} tool calls allowed "
                f"per hour have been used. The quota resets at {reset_at:%Y-%m-%d %H:%M:%S} UTC "
                f"(in {format_duration(quota_wait)}, retry after {max(1, round(quota_wait))} s); "
                "try again then, or upgrade your Zapier plan for a higher limit.",
                meta={
                    "retry_after": round(quota_wait, 3),
                    "reset_at": reset_at.isoformat(timespec="seconds"),
                },
            )
        stats.timeline.instant("too_many_concurrent", now)
        return _error(
            f"Zapier MCP: too many concurrent requests. {stats.timeline.in_flight} tool calls "
            f"are already running (limit {cfg.max_concurrent}); wait for one to finish and "
            "try again.",
            meta={"retry_after": 1.0},
        )

    # --- admin routes ------------------------------------------------------------------

    async def _stats_route(self, request: Request) -> JSONResponse:
        return JSONResponse(self.snapshot(timeline=wants_timeline(request.query_params)))

    async def _reset_route(self, request: Request) -> JSONResponse:
        self.reset()
        return JSONResponse({"ok": True})


def _error(text: str, meta: dict[str, Any] | None = None) -> CallToolResult:
    """An error result, as Zapier reports a failed action."""
    return CallToolResult(
        content=[TextContent(type="text", text=text)], is_error=True, _meta=meta or None
    )


@contextlib.contextmanager
def _root_logging_untouched() -> Iterator[None]:
    """Keep MCPServer from installing its own root log handler (via `basicConfig`) when
    the host program has not configured logging: library code leaves that to the host."""
    root = logging.getLogger()
    placeholder = None if root.handlers else logging.NullHandler()
    if placeholder is not None:
        root.addHandler(placeholder)
    try:
        yield
    finally:
        if placeholder is not None:
            root.removeHandler(placeholder)
