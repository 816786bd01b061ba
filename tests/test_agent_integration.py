"""The agent against real servers on 127.0.0.1: the simulated OpenAI and MCP upstreams, a
stdio MCP server from PyPI (`mcp-server-time`), and a tiny stream-breaking model server.

Timings are checked as ratios of the simulated latency, never as tight absolute bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from aiohttp import web
from mcp.server.mcpserver import MCPServer

from livia.agent import (
    Agent,
    TextDelta,
    Toolbox,
    ToolFinished,
    ToolStarted,
    TurnDone,
    TurnEvent,
)
from livia.concurrency import ApiPolicy, ConcurrencyManager
from livia.config import LlmConfig, McpConfig, McpServerConfig, Settings
from livia.conversations.types import ChatMessage
from livia.sim import SimMcp, SimMcpConfig, SimOpenAI, SimOpenAIConfig

FAST = dict(backoff_min=0.02, backoff_max=0.2, backoff_jitter=0.0)


def policies(**overrides: ApiPolicy) -> dict[str, ApiPolicy]:
    """Roomy test policies with quick backoff, overridden per test."""
    base = {
        "openai": ApiPolicy(max_concurrent=8, retry_attempts=3, **FAST),  # type: ignore[arg-type]
        "zapier": ApiPolicy(max_concurrent=3, retry_attempts=3, **FAST),  # type: ignore[arg-type]
        "local": ApiPolicy(max_concurrent=4, retry_attempts=1),
    }
    base.update(overrides)
    return base


def settings_for(
    model_url: str, servers: Sequence[McpServerConfig] = (), **llm: object
) -> Settings:
    return Settings(
        llm=LlmConfig(base_url=model_url, model="livia-sim", **{"timeout": 10.0, **llm}),  # type: ignore[arg-type]
        mcp=McpConfig(servers=list(servers), reconnect_interval=0.2),
    )


@contextlib.asynccontextmanager
async def running_agent(
    settings: Settings, manager: ConcurrencyManager, *, wait: float = 10.0
) -> AsyncIterator[Agent]:
    agent = Agent(settings, manager)
    await agent.start(wait=wait)
    try:
        yield agent
    finally:
        await agent.aclose()
        await manager.aclose()


async def turn(
    agent: Agent, text: str, *, key: str = "user-1", history: Sequence[ChatMessage] = ()
) -> list[TurnEvent]:
    return [event async for event in agent.respond(history, text, key=key)]


def done_of(events: list[TurnEvent]) -> TurnDone:
    assert isinstance(events[-1], TurnDone)
    assert sum(isinstance(e, TurnDone) for e in events) == 1
    return events[-1]


def assert_well_formed(events: list[TurnEvent]) -> TurnDone:
    """One TurnDone, last; its text is the deltas joined; each tool starts before it ends."""
    done = done_of(events)
    assert done.text == "".join(e.text for e in events if isinstance(e, TextDelta))
    started: dict[str, int] = {}
    for index, event in enumerate(events):
        if isinstance(event, ToolStarted):
            started[event.call_id] = index
        elif isinstance(event, ToolFinished):
            assert started[event.call_id] < index
    return done


async def wait_until(predicate: Callable[[], bool], *, timeout: float) -> None:
    """Poll `predicate` every 20 ms for at most `timeout` seconds."""
    for _ in range(max(1, int(timeout / 0.02))):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the happy paths ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def zapier_agent() -> AsyncIterator[tuple[Agent, SimOpenAI, SimMcp, ConcurrencyManager]]:
    """An agent on the simulated model with the simulated Zapier tools, both at 50 ms."""
    async with (
        SimOpenAI(SimOpenAIConfig(latency=0.05)) as model,
        SimMcp(SimMcpConfig(latency=0.05)) as tools,
    ):
        server = McpServerConfig(name="zapier", url=tools.url, timeout=5.0)
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(model.url, [server]), manager) as agent:
            yield agent, model, tools, manager


async def test_http_tools_are_listed_called_and_reach_the_streamed_reply() -> None:
    async with zapier_agent() as (agent, model, tools, manager):
        assert agent.tools == [
            "zapier.create_task",
            "zapier.search_files",
            "zapier.schedule_event",
            "zapier.list_events",
            "zapier.send_email",
        ]
        events = await turn(agent, "Please create a task to call the dentist")
        stats = manager.get_stats()

    done = assert_well_formed(events)
    assert done.error is None
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["tool_started", "tool_finished"]
    assert kinds[2:-1] == ["text"] * (len(kinds) - 3) and len(kinds) > 5  # streamed, in pieces
    started, finished = events[0], events[1]
    assert isinstance(started, ToolStarted) and isinstance(finished, ToolFinished)
    assert started.tool == "zapier.create_task" and finished.ok
    assert started.arguments["title"] == "Call the dentist"
    assert 'Task created in Todoist: "Call the dentist"' in done.text  # the tool's result
    assert done.usage["model_calls"] == 2 and done.usage["total_tokens"] > 0
    assert tools.stats.tool_calls == 1 and model.stats.streamed == 2
    assert stats["openai"]["successful_requests"] == 2
    assert stats["zapier"]["successful_requests"] == 1


async def test_a_turn_nobody_streams_runs_its_tools_and_ends_with_the_same_text() -> None:
    """`stream=False` (no listener): the same tool call, the same reply text, the text of
    each model step in one delta."""
    async with zapier_agent() as (agent, model, tools, _):
        ask = "Please create a task to call the dentist"
        streamed = await turn(agent, ask)
        whole = [e async for e in agent.respond([], ask, key="user-1", stream=False)]

    done = assert_well_formed(whole)
    assert done.error is None and done.text == assert_well_formed(streamed).text
    assert [e.kind for e in whole] == ["tool_started", "tool_finished", "text", "done"]
    assert 'Task created in Todoist: "Call the dentist"' in done.text
    assert tools.stats.tool_calls == 2 and model.stats.streamed == 4


async def test_a_stdio_server_from_pypi_answers_through_the_agent() -> None:
    server = McpServerConfig(
        name="time",
        command=sys.executable,
        args=["-m", "mcp_server_time", "--local-timezone", "UTC"],
        api="local",
        timeout=20.0,
    )
    async with SimOpenAI(SimOpenAIConfig(latency=0.02)) as model:
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(model.url, [server]), manager, wait=20) as agent:
            assert agent.tools == ["time.get_current_time", "time.convert_time"]
            assert agent.toolbox.status()["time"]["transport"] == "stdio"
            events = await turn(agent, "What time is it now in Europe/Paris?")
            assert manager.get_stats("local")["successful_requests"] == 1

    done = assert_well_formed(events)
    started = next(e for e in events if isinstance(e, ToolStarted))
    finished = next(e for e in events if isinstance(e, ToolFinished))
    assert started.tool == "time.get_current_time"
    assert started.arguments == {"timezone": "Europe/Paris"}
    assert finished.ok
    assert '"timezone": "Europe/Paris"' in done.text and '"datetime":' in done.text


async def test_http_servers_get_their_configured_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`headers` (with `${ENV}` references, e.g. a Zapier token) reach the MCP server."""
    monkeypatch.setenv("LIVIA_TEST_MCP_TOKEN", "s3cret")
    mcp = MCPServer("echo")

    @mcp.tool()
    async def ping() -> str:
        """Answer pong."""
        return "pong"

    inner = mcp.streamable_http_app()
    seen: set[bytes | None] = set()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.add(dict(scope["headers"]).get(b"authorization"))
        await inner(scope, receive, send)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, timeout=10)
        config = McpServerConfig(
            name="echo",
            url=f"http://127.0.0.1:{port}/mcp",
            headers={"Authorization": "Bearer ${LIVIA_TEST_MCP_TOKEN}"},
        )
        manager = ConcurrencyManager(policies())
        toolbox = Toolbox(McpConfig(servers=[config]), manager)
        await toolbox.start(wait=5)
        try:
            outcome = await toolbox.call("echo__ping", {}, key="user-1")
        finally:
            await toolbox.aclose()
            await manager.aclose()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=10)
    assert outcome.ok and outcome.text == "pong" and outcome.tool == "echo.ping"
    assert seen == {b"Bearer s3cret"}


CRASHY_SERVER = """
import os
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("crashy")


@mcp.tool()
async def crash() -> str:
    \"\"\"Exit the server process in the middle of the call.\"\"\"
    os._exit(1)


@mcp.tool()
async def ping() -> str:
    \"\"\"Answer pong.\"\"\"
    return "pong"


mcp.run()
"""


async def test_a_stdio_server_that_dies_mid_call_fails_it_and_is_restarted(
    tmp_path: Path,
) -> None:
    script = tmp_path / "crashy.py"
    script.write_text(CRASHY_SERVER)
    config = McpServerConfig(
        name="crashy", command=sys.executable, args=[str(script)], api="local", timeout=15.0
    )
    manager = ConcurrencyManager(policies())
    toolbox = Toolbox(McpConfig(servers=[config], reconnect_interval=0.2), manager)
    await toolbox.start(wait=20)
    try:
        assert toolbox.tools == ["crashy.crash", "crashy.ping"]
        began = time.monotonic()
        crashed = await toolbox.call("crashy__crash", {}, key="user-1")
        elapsed = time.monotonic() - began
        # The supervisor starts a new process; the next call finds it.
        await wait_until(lambda: toolbox.status()["crashy"]["connects"] == 2, timeout=20)
        pong = await toolbox.call("crashy__ping", {}, key="user-1")
    finally:
        await toolbox.aclose()
        await manager.aclose()
    assert not crashed.ok and "failed" in crashed.summary
    assert elapsed < 5  # at once, not after the 15 s timeout
    assert pong.ok and pong.text == "pong"


# --- concurrency: the manager bounds the tool upstream --------------------------------------


async def test_six_turns_share_three_tool_slots_in_two_rounds() -> None:
    latency = 1.0
    async with (
        SimOpenAI(SimOpenAIConfig(latency=0.02)) as model,
        SimMcp(SimMcpConfig(latency=latency, max_concurrent=3)) as tools,
    ):
        server = McpServerConfig(name="zapier", url=tools.url, timeout=10.0)
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(model.url, [server]), manager) as agent:
            await turn(agent, "Hello")  # warm up: the SDK's first request costs extra
            began = time.monotonic()
            results = await asyncio.gather(
                *(turn(agent, f"Create a task number {i}", key=f"user-{i}") for i in range(6))
            )
            elapsed = time.monotonic() - began
            zapier = manager.get_stats("zapier")

    for events in results:
        done = assert_well_formed(events)
        assert done.error is None and "Task created" in done.text
    assert tools.stats.tool_calls == 6 and tools.stats.ok == 6
    assert tools.stats.peak_concurrency == 3  # never more than 3 at the server ...
    assert tools.stats.over_limit == 0  # ... so it never refused one
    assert zapier["peak_concurrent"] == 3
    # Two rounds of tool latency: three calls start together, three more as they end.
    spans = sorted(tools.stats.timeline.spans, key=lambda s: s.start)
    starts = [s.start - spans[0].start for s in spans]
    tool_phase = max(s.end or 0.0 for s in spans) - spans[0].start
    assert max(starts[:3]) < 0.25 * latency and min(starts[3:]) >= 0.9 * latency, starts
    assert 2 * latency <= tool_phase < 2.5 * latency, tool_phase
    assert elapsed < 3 * latency, elapsed  # the whole six turns, model calls included


# --- degradation ---------------------------------------------------------------------------


async def test_spent_hourly_quota_is_reported_with_a_time_and_chat_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        SimOpenAI(SimOpenAIConfig(latency=0.02)) as model,
        SimMcp(SimMcpConfig(latency=0.02)) as tools,
    ):
        server = McpServerConfig(name="zapier", url=tools.url, timeout=5.0)
        manager = ConcurrencyManager(
            policies(zapier=ApiPolicy(max_concurrent=3, requests_per_hour=2, **FAST))  # type: ignore[arg-type]
        )
        for _ in range(2):  # the hour's quota, spent by earlier calls
            await manager.run("zapier", lambda: asyncio.sleep(0), key="someone-else")
        async with running_agent(settings_for(model.url, [server]), manager) as agent:
            caplog.set_level(logging.INFO, logger="livia.agent")
            began = time.monotonic()
            events = await turn(agent, "Create a task to renew the passport", key="user-7")
            elapsed = time.monotonic() - began
            chat = await turn(agent, "How do I boil an egg?", key="user-7")

    done = assert_well_formed(events)
    finished = next(e for e in events if isinstance(e, ToolFinished))
    expected = datetime.now(UTC) + timedelta(hours=1)
    clocks = {f"{(expected + timedelta(minutes=d)).astimezone(UTC):%H:%M} UTC" for d in (-1, 0, 1)}
    # the card and the reply say it in plain words; the model's instructions stay unseen
    assert not finished.ok
    assert any(
        finished.summary == f"Zapier tools are out of quota until {clock} (in {wait} min)"
        for clock in clocks
        for wait in (59, 60, 61)  # the window has a 0.1 s margin: 3600.1 s is 61 min
    ), finished.summary
    assert "Zapier tools are out of quota until" in done.text
    assert any(clock in done.text for clock in clocks), done.text
    for leaked in ("ERROR", "Tell the user", "offer to help", "zapier__"):
        assert leaked not in done.text and leaked not in finished.summary
    assert done.error is None  # the turn itself worked; the tool did not
    assert tools.stats.tool_calls == 0  # nothing reached the MCP server
    assert elapsed < 5  # failed fast instead of waiting for the hour
    assert any(
        "user-7" in r.getMessage() and "zapier.create_task" in r.getMessage()
        for r in caplog.records
    )
    chat_done = assert_well_formed(chat)
    assert chat_done.error is None and "boil an egg" in chat_done.text


async def test_a_server_down_at_start_up_joins_when_it_comes_back() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with SimOpenAI(SimOpenAIConfig(latency=0.02)) as model:
        server = McpServerConfig(name="zapier", url=url, timeout=3.0)
        manager = ConcurrencyManager(policies())
        began = time.monotonic()
        async with running_agent(settings_for(model.url, [server]), manager, wait=3) as agent:
            assert time.monotonic() - began < 3  # a refused connection does not hold start-up
            status = agent.toolbox.status()["zapier"]
            assert status["state"] == "down" and status["last_error"]
            assert agent.tools == []
            without = await turn(agent, "Create a task to water the plants")
            assert not any(isinstance(e, ToolStarted) for e in without)

            tools = SimMcp(SimMcpConfig(latency=0.02))
            await tools.start(port=port)
            try:
                assert await agent.toolbox.wait_connected("zapier", timeout=10)
                assert "zapier.create_task" in agent.tools
                assert agent.toolbox.status()["zapier"]["connects"] == 1
                with_tools = await turn(agent, "Create a task to water the plants")
            finally:
                await tools.stop()

    assert done_of(without).error is None and done_of(without).text
    done = assert_well_formed(with_tools)
    assert done.error is None and "Task created" in done.text
    assert tools.stats.tool_calls == 1


async def test_a_tool_that_hangs_fails_in_bounded_time() -> None:
    async with (
        SimOpenAI(SimOpenAIConfig(latency=0.02)) as model,
        SimMcp(SimMcpConfig(latency=60.0)) as tools,
    ):
        server = McpServerConfig(name="zapier", url=tools.url, timeout=1.0)
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(model.url, [server]), manager) as agent:
            began = time.monotonic()
            events = await turn(agent, "Create a task to call mum")
            elapsed = time.monotonic() - began

    done = assert_well_formed(events)
    finished = next(e for e in events if isinstance(e, ToolFinished))
    assert not finished.ok and "did not answer within 1 s" in finished.summary
    assert "did not answer within 1 s" in done.text
    assert 1.0 <= elapsed < 4.0
    assert tools.stats.tool_calls == 1  # tried once: a call that may have run is not repeated


async def test_a_server_that_dies_mid_call_fails_the_call_and_is_reconnected() -> None:
    async with SimOpenAI(SimOpenAIConfig(latency=0.02)) as model:
        tools = SimMcp(SimMcpConfig(latency=30.0))
        url = await tools.start()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        server = McpServerConfig(name="zapier", url=url, timeout=20.0)
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(model.url, [server]), manager) as agent:
            began = time.monotonic()
            pending = asyncio.create_task(turn(agent, "Create a task to book flights"))
            await wait_until(lambda: tools.stats.tool_calls > 0, timeout=5)
            await tools.stop()  # the server dies with the call in flight
            events = await asyncio.wait_for(pending, timeout=15)
            elapsed = time.monotonic() - began

            revived = SimMcp(SimMcpConfig(latency=0.02))
            await revived.start(port=port)
            try:
                assert await agent.toolbox.wait_connected("zapier", timeout=10)
                again = await turn(agent, "Create a task to book flights")
            finally:
                await revived.stop()

    finished = next(e for e in events if isinstance(e, ToolFinished))
    assert not finished.ok and elapsed < 10  # bounded, well under the 20 s call timeout
    assert assert_well_formed(events).error is None
    assert "Task created" in assert_well_formed(again).text


async def test_model_429s_and_5xx_are_retried_until_the_turns_succeed() -> None:
    # The model server takes one request at a time (429 with retry-after-ms for the rest)
    # and fails a quarter of them with 500/503; the manager lets three through at once.
    async with SimOpenAI(
        SimOpenAIConfig(latency=0.1, max_concurrent=1, fail_rate=0.25, seed=3)
    ) as model:
        manager = ConcurrencyManager(
            policies(
                openai=ApiPolicy(
                    max_concurrent=3,
                    retry_attempts=12,
                    circuit_failures=0,
                    **FAST,  # type: ignore[arg-type]
                )
            )
        )
        async with running_agent(settings_for(model.url), manager) as agent:
            results = await asyncio.gather(
                *(turn(agent, f"Tell me about topic {i}", key=f"user-{i}") for i in range(4))
            )
            stats = manager.get_stats("openai")

    for events in results:
        done = assert_well_formed(events)
        assert done.error is None and "topic" in done.text
        assert done.text.count("You asked") <= 1  # a retried stream never repeats text
    assert model.stats.rate_limited > 0 and model.stats.failed > 0
    assert model.stats.ok == 4
    assert stats["retries"] >= model.stats.rate_limited + model.stats.failed
    assert stats["successful_requests"] == 4


async def test_a_model_failing_past_its_retries_gets_an_honest_apology() -> None:
    async with SimOpenAI(SimOpenAIConfig(latency=0.01, fail_rate=1.0, seed=1)) as model:
        manager = ConcurrencyManager(
            policies(openai=ApiPolicy(max_concurrent=2, retry_attempts=3, **FAST))  # type: ignore[arg-type]
        )
        async with running_agent(settings_for(model.url), manager) as agent:
            events = await turn(agent, "Hello?")

    done = assert_well_formed(events)
    assert done.error == "model_unavailable"
    assert done.text.startswith("Sorry — the model service is having trouble (HTTP 50")
    assert "Traceback" not in done.text and "\n" not in done.text
    assert model.stats.failed == 3  # every attempt the policy allows, and no more


async def test_a_rate_limit_beyond_the_deadline_says_when_to_come_back() -> None:
    async with SimOpenAI(SimOpenAIConfig(latency=0.01, requests_per_minute=1)) as model:
        manager = ConcurrencyManager(policies())
        settings = settings_for(model.url)
        async with running_agent(settings, manager) as agent:
            first = await turn(agent, "Hi there")
            began = time.monotonic()
            second = await turn(agent, "And again?")
            elapsed = time.monotonic() - began

    assert done_of(first).error is None
    done = assert_well_formed(second)
    assert done.error == "model_rate_limited"
    assert done.text.startswith("Sorry — the model is rate-limited; try again in ~")
    assert " UTC)." in done.text
    assert elapsed < 5  # told at once, not after sleeping out the minute
    assert model.stats.rate_limited == 1


# --- streaming and retries: a stream that breaks after text was sent -----------------------


def _chunk(content: str | None = None, *, usage: bool = False) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": []
        if usage
        else [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@contextlib.asynccontextmanager
async def scripted_model(
    script: Callable[[int, web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[tuple[str, list[int]]]:
    """A model server whose n-th request (0-based) is answered by `script(n, request)`."""
    seen: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(len(seen))
        return await script(seen[-1], request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


async def _stream(
    request: web.Request, pieces: Sequence[str], *, finish: bool
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for piece in pieces:
        await response.write(_chunk(piece))
    if finish:
        await response.write(_chunk(usage=True))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    else:
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()  # the connection breaks mid-reply
    return response


async def test_a_stream_broken_after_text_is_not_retried_and_text_is_not_repeated() -> None:
    async def script(n: int, request: web.Request) -> web.StreamResponse:
        return await _stream(request, ["Hello", " wor"], finish=False)

    async with scripted_model(script) as (url, seen):
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(url), manager) as agent:
            events = await turn(agent, "Say hello")

    done = assert_well_formed(events)
    assert [e.text for e in events if isinstance(e, TextDelta)][:2] == ["Hello", " wor"]
    assert done.error == "model_interrupted"
    assert done.text.startswith("Hello wor\n\nSorry — my answer was cut off")
    assert len(seen) == 1  # not retried: a second attempt would repeat "Hello wor"


async def test_when_nobody_reads_the_stream_a_reply_broken_midway_is_asked_again_whole() -> None:
    """A turn nobody streams (an HTTP request waiting for the whole reply: no listeners)
    shows no text before its end, so a stream broken after its first words is an ordinary
    failed attempt: retried, and the reply is the second attempt's, whole, in one delta."""
    from livia.conversations.turn import Listeners, run_turn
    from livia.conversations.types import IncomingMessage

    async def script(n: int, request: web.Request) -> web.StreamResponse:
        if n % 2 == 0:  # each turn's first attempt breaks
            return await _stream(request, ["Hello", " wor"], finish=False)
        return await _stream(request, ["Hello", " world"], finish=True)

    async with scripted_model(script) as (url, seen):
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(url), manager) as agent:
            events = [e async for e in agent.respond([], "Say hello", key="u", stream=False)]
            assert len(seen) == 2
            msg = IncomingMessage("c", "u", "Say hello", "m1")
            reply = await run_turn(agent, [], msg, Listeners(msg), timeout=30)

    done = assert_well_formed(events)
    assert done.error is None and done.text == "Hello world"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello world"]
    assert reply.error is None and reply.text == "Hello world"  # run_turn: nobody listened
    assert len(seen) == 4  # each turn: the broken attempt, then the whole one


async def test_a_failure_before_the_first_delta_is_retried_transparently() -> None:
    async def script(n: int, request: web.Request) -> web.StreamResponse:
        if n == 0:
            return web.json_response(
                {"error": {"message": "overloaded", "type": "server_error"}}, status=503
            )
        return await _stream(request, ["Hel", "lo!"], finish=True)

    async with scripted_model(script) as (url, seen):
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(url), manager) as agent:
            events = await turn(agent, "Say hello")

    done = assert_well_formed(events)
    assert done.error is None and done.text == "Hello!"
    assert done.usage["total_tokens"] == 7
    assert len(seen) == 2


async def test_a_compressed_429_is_a_rate_limit_retried_after_its_retry_after() -> None:
    """An upstream (or proxy) that gzips its error JSON: still the SDK's RateLimitError,
    with its Retry-After honoured, and retried (aiohttp decoded the body already)."""

    async def script(n: int, request: web.Request) -> web.StreamResponse:
        if n == 0:
            body = {"error": {"message": "slow down", "type": "rate_limit_exceeded"}}
            response = web.json_response(body, status=429, headers={"retry-after": "0.3"})
            response.enable_compression(web.ContentCoding.gzip)
            return response
        return await _stream(request, ["Fine", "."], finish=True)

    async with scripted_model(script) as (url, seen):
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(url), manager) as agent:
            started = asyncio.get_running_loop().time()
            events = await turn(agent, "Say something")
            took = asyncio.get_running_loop().time() - started

    done = assert_well_formed(events)
    assert done.error is None and done.text == "Fine.", done
    assert len(seen) == 2 and took >= 0.3  # retried, after the wait the upstream asked for
    assert manager.get_stats("openai")["http_429"] == 1


async def test_an_event_with_bad_utf8_is_read_with_replacement_not_refused() -> None:
    async def script(n: int, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_chunk("caf"))
        await response.write(b'data: {"choices":[{"delta":{"content":"\xe9!"}}]}\n\n')
        await response.write(_chunk(usage=True) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async with scripted_model(script) as (url, seen):
        manager = ConcurrencyManager(policies())
        async with running_agent(settings_for(url), manager) as agent:
            events = await turn(agent, "Say cafe")

    done = assert_well_formed(events)
    assert done.error is None and done.text == "caf\ufffd!", done
    assert len(seen) == 1


async def test_keep_alive_comments_are_no_progress_for_the_stall_bound() -> None:
    """An upstream stuck after its first chunk but sending `: keep-alive` comments is
    abandoned at `stream_idle_timeout` (0.5 s), not held to `attempt_timeout` (8 s)."""

    async def script(n: int, request: web.Request) -> web.StreamResponse:
        if n > 0:
            return await _stream(request, ["Back", "."], finish=True)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_chunk(""))
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # 20 s of comments, no events
                await response.write(b": keep-alive\n\n")
                await asyncio.sleep(0.1)
        return response

    async with scripted_model(script) as (url, seen):
        manager = ConcurrencyManager(policies())
        settings = settings_for(url, stream_idle_timeout=0.5, attempt_timeout=8.0)
        async with running_agent(settings, manager) as agent:
            started = asyncio.get_running_loop().time()
            events = await turn(agent, "Hello?")
            took = asyncio.get_running_loop().time() - started

    done = assert_well_formed(events)
    assert done.error is None and done.text == "Back.", done
    assert len(seen) == 2 and took < 4.0, took
