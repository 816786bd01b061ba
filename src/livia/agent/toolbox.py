"""The MCP toolbox: every configured server's tools, namespaced, each call governed.

Tools are named `server.tool` for people (events, logs) and `server__tool` for the model
(OpenAI function names allow no dots). Only tool calls go through the concurrency manager,
on the server's `api` upstream; handshakes and listings do not count against its limits.
A call never raises to the turn: failures, timeouts and exhausted quotas come back as an
error `ToolOutcome` whose text tells the model what happened and when to expect the tool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import mcp_types

from livia.agent.connection import ServerConnection, ServerDown
from livia.agent.failures import (
    describe,
    format_wait,
    tool_out_of_capacity,
    tool_unavailable_notice,
)
from livia.concurrency import CapacityExhausted, ConcurrencyManager
from livia.config import McpConfig

log = logging.getLogger(__name__)

#: Most characters of a tool result handed to the model (results can be huge).
MAX_RESULT_CHARS = 8000

_INVALID_FN_CHARS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model."""

    server: str
    name: str  # the server's own tool name
    function: str  # the OpenAI function name: "server__tool"
    description: str
    input_schema: dict[str, Any]

    @property
    def display(self) -> str:
        """The namespaced name people see: `server.tool`."""
        return f"{self.server}.{self.name}"

    def openai_tool(self) -> dict[str, Any]:
        """The Chat Completions `tools` entry for this tool."""
        schema = dict(self.input_schema)
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        return {
            "type": "function",
            "function": {
                "name": self.function,
                "description": f"[{self.display}] {self.description}"[:1024],
                "parameters": schema,
            },
        }


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool call produced: `text` goes to the model, `summary` to the user's events.

    On failure `text` may also tell the model what to do ("Tell the user ..."); `summary`
    never does: it is a plain sentence for the user.
    """

    tool: str
    ok: bool
    text: str
    summary: str


def function_name(server: str, tool: str) -> str:
    """`server__tool`, made legal for OpenAI (letters, digits, `_`, `-`; at most 64)."""
    return _INVALID_FN_CHARS.sub("_", f"{server}__{tool}")[:64]


class Toolbox:
    """The configured MCP servers, kept connected, and their tools, called under the manager."""

    def __init__(self, config: McpConfig, manager: ConcurrencyManager) -> None:
        self.config = config
        self.manager = manager
        self.servers: dict[str, ServerConnection] = {
            server.name: ServerConnection(server, reconnect_interval=config.reconnect_interval)
            for server in config.servers
        }

    async def start(self, wait: float = 10.0) -> None:
        """Connect to every server in parallel, in the background.

        Waits at most `wait` seconds (and no longer than each server's own timeout) for the
        first attempts, so tools of servers that are up are offered from the first turn; a
        server that is down or slow never holds start-up longer than that.
        """
        for server in self.servers.values():
            server.start()
        if wait > 0 and self.servers:
            await asyncio.gather(
                *(
                    server.wait_first_attempt(min(wait, server.config.timeout))
                    for server in self.servers.values()
                )
            )
        for name, server in self.servers.items():
            if server.state != "connected":
                log.warning(
                    "mcp server %s not connected at start-up (%s); Livia runs without its tools "
                    "and keeps retrying",
                    name,
                    server.last_error or "still connecting",
                )

    async def aclose(self) -> None:
        """Close every server's session (in parallel, each bounded)."""
        await asyncio.gather(*(server.aclose() for server in self.servers.values()))

    async def wait_connected(self, server: str, timeout: float) -> bool:
        """Wait (at most `timeout` s) until `server` is connected; True when it is."""
        return await self.servers[server].wait_connected(timeout)

    def specs(self) -> list[ToolSpec]:
        """The tools available now (connected servers only), in a stable order."""
        specs: list[ToolSpec] = []
        taken: set[str] = set()
        for server in self.servers.values():
            if server.state != "connected":
                continue
            for tool in server.tools:
                fn = function_name(server.name, tool.name)
                suffix = 2
                while fn in taken:  # two names that sanitize alike: keep both callable
                    fn = f"{function_name(server.name, tool.name)[:60]}_{suffix}"
                    suffix += 1
                taken.add(fn)
                specs.append(
                    ToolSpec(server.name, tool.name, fn, tool.description, tool.input_schema)
                )
        return specs

    @property
    def tools(self) -> list[str]:
        """Namespaced names (`server.tool`) of the tools available now."""
        return [spec.display for spec in self.specs()]

    def openai_tools(self) -> list[dict[str, Any]]:
        """The `tools` parameter for Chat Completions."""
        return [spec.openai_tool() for spec in self.specs()]

    def find(self, function: str) -> ToolSpec | None:
        """The tool the model means by `function` (`server__tool`), if it is available."""
        return next((spec for spec in self.specs() if spec.function == function), None)

    def display_name(self, function: str) -> str:
        """`server.tool` for a function name, even when the tool is gone (for events)."""
        spec = self.find(function)
        if spec is not None:
            return spec.display
        server, sep, tool = function.partition("__")
        return f"{server}.{tool}" if sep else function

    def status(self) -> dict[str, dict[str, Any]]:
        """Per server: state (connected/connecting/down), transport, api, tool count, last error."""
        return {name: server.status() for name, server in self.servers.items()}

    async def call(self, function: str, arguments: dict[str, Any], *, key: str) -> ToolOutcome:
        """Call the tool the model named; never raises (except cancellation).

        The call goes through `manager.run` on the server's upstream with `key` as the
        fairness key; no capacity is used for a server that is not connected.
        """
        spec = self.find(function)
        if spec is None:
            shown = self.display_name(function)
            server = self.servers.get(shown.partition(".")[0])
            if server is not None and server.state != "connected":
                return self._server_down(shown, server, key)
            return _failed(
                shown,
                f"ERROR: there is no tool named {shown}; it was not run.",
                f"There is no tool named {shown}.",
            )
        server = self.servers[spec.server]
        tool = spec.display
        started = False

        async def attempt() -> mcp_types.CallToolResult:
            # At most once: tools have side effects (a task created, a mail sent), and a
            # failed call may have run, so nothing the manager would retry escapes from here.
            nonlocal started
            if started:
                raise _NotRetried(RuntimeError("not sent again: the first attempt may have run"))
            started = True
            try:
                return await server.call_tool(spec.name, arguments)
            except Exception as exc:
                raise _NotRetried(exc) from exc

        try:
            result = await self.manager.run(
                server.config.api,
                attempt,
                key=key,
                cost=1,
                deadline=server.config.timeout,
                name=tool,
            )
        except CapacityExhausted as exc:
            log.warning("tool %s unavailable key=%s: %s", tool, key, exc)
            api = server.config.api
            return _failed(
                tool, tool_out_of_capacity(tool, api, exc), tool_unavailable_notice(api, exc)
            )
        except _NotRetried as wrapped:
            return self._failure(tool, server, wrapped.cause, key)
        text = render_result(result)
        if result.is_error:
            log.info("tool %s reported an error key=%s", tool, key)
            return ToolOutcome(tool, False, f"ERROR: {tool} reported: {text}", _summary(text))
        log.info("tool %s ok key=%s", tool, key)
        return ToolOutcome(tool, True, text, _summary(text))

    def _failure(
        self, tool: str, server: ServerConnection, exc: BaseException, key: str
    ) -> ToolOutcome:
        """The outcome of a call that was attempted and failed."""
        if isinstance(exc, ServerDown):
            return self._server_down(tool, server, key)
        if isinstance(exc, TimeoutError):
            log.warning("tool %s timed out after %.0f s key=%s", tool, server.config.timeout, key)
            fact = (
                f"{tool} did not answer within {server.config.timeout:.0f} s and was "
                "abandoned; it may or may not have run"
            )
            return _failed(tool, f"ERROR: {fact}. Tell the user it timed out.", fact + ".")
        reason = describe(exc)
        log.warning("tool %s failed key=%s: %s", tool, key, reason)
        fact = f"{tool} failed ({reason}); you can try again later"
        return _failed(
            tool, f"ERROR: {fact}. Tell the user it did not work.", fact.split(";")[0] + "."
        )

    def _server_down(self, tool: str, server: ServerConnection, key: str) -> ToolOutcome:
        log.warning("tool %s unavailable key=%s: server %s is down", tool, key, server.name)
        every = format_wait(server.reconnect_interval)
        fact = (
            f"{tool} is unavailable: its server ({server.name}) is not connected; Livia "
            f"reconnects every {every}"
        )
        return _failed(
            tool,
            f"ERROR: {fact} ({server.last_error or 'connecting'}). Tell the user to try again "
            "in a little while.",
            fact + ".",
        )


class _NotRetried(Exception):
    """Carries a tool call's failure past the manager, which does not retry this type."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


def render_result(result: mcp_types.CallToolResult) -> str:
    """A tool result as text for the model: its text blocks (or structured content)."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{getattr(block, 'type', 'content')} omitted]")
    text = "\n".join(parts).strip()
    if not text and result.structured_content is not None:
        text = json.dumps(result.structured_content, ensure_ascii=False, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[... {len(text) - MAX_RESULT_CHARS} more characters]"
    return text or "(no output)"


def _failed(tool: str, text: str, notice: str) -> ToolOutcome:
    """A failed call: `text` for the model, `notice` (a plain sentence) for the user."""
    return ToolOutcome(tool, False, text, _summary(notice))


def _summary(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
