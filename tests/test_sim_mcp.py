"""The simulated Zapier-like MCP server, through the real `mcp` 2.x client over HTTP."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp_types import CallToolResult, TextContent
from openai import AsyncOpenAI

from livia import cli
from livia.sim import SimMcp, SimMcpConfig, SimOpenAI

TOOL_ARGS: dict[str, dict[str, Any]] = {
    "create_task": {"title": "Buy milk", "due_date": "2025-03-14", "priority": "high"},
    "search_files": {"query": "quarterly budget", "max_results": 3},
    "schedule_event": {
        "title": "Team sync",
        "start": "2025-03-14T15:00:00+01:00",
        "duration_minutes": 45,
        "attendees": ["ana@example.com"],
    },
    "list_events": {"start_date": "2025-03-14", "days": 1},
    "send_email": {"to": "bob@example.com", "subject": "Hello", "body": "See you soon."},
}
EXPECTED_TEXT = {
    "create_task": 'Task created in Todoist: "Buy milk"',
    "search_files": 'in Google Drive matching "quarterly budget"',
    "schedule_event": (
        'Event scheduled in Google Calendar: "Team sync" on Fri 14 Mar 2025, 15:00-15:45'
    ),
    "list_events": "2 events in Google Calendar from Fri 14 Mar to Fri 14 Mar 2025: "
    "Fri 14 Mar 09:30-09:45 UTC: Team stand-up (Google Meet); ",
    "send_email": 'Email sent with Gmail to bob@example.com: subject "Hello"',
}


def text_of(result: CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


def root(sim: SimMcp) -> str:
    return sim.url.removesuffix("/mcp")


async def test_start_returns_the_mcp_endpoint_and_lists_the_tools() -> None:
    async with SimMcp() as sim, Client(sim.url) as client:
        listed = await client.list_tools()
    assert sim.url.startswith("http://127.0.0.1:") and sim.url.endswith("/mcp")
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == set(TOOL_ARGS)
    required = {name: tool.input_schema.get("required") for name, tool in tools.items()}
    assert required == {
        "create_task": ["title"],
        "search_files": ["query"],
        "schedule_event": ["title", "start"],
        "list_events": None,
        "send_email": ["to", "subject", "body"],
    }
    for tool in tools.values():
        assert tool.description and len(tool.description) > 30
        assert all("description" in p for p in tool.input_schema["properties"].values())


@pytest.mark.parametrize("tool", sorted(TOOL_ARGS))
async def test_each_tool_answers_realistically(tool: str) -> None:
    async with SimMcp() as sim, Client(sim.url) as client:
        result = await client.call_tool(tool, TOOL_ARGS[tool])
    assert not result.is_error
    assert EXPECTED_TEXT[tool] in text_of(result)
    assert isinstance(result.structured_content, dict) and result.structured_content
    assert sim.stats.ok == 1 and sim.stats.by_tool == {tool: 1}


async def test_list_events_shows_what_schedule_event_added() -> None:
    async with SimMcp() as sim, Client(sim.url) as client:
        await client.call_tool("schedule_event", TOOL_ARGS["schedule_event"])
        listed = await client.call_tool("list_events", {"start_date": "2025-03-14", "days": 1})
        only = await client.call_tool("list_events", {"start_date": "2025-03-14", "query": "sync"})
        sim.reset()
        after_reset = await client.call_tool("list_events", {"start_date": "2025-03-14"})
    assert "Fri 14 Mar 14:00-14:45 UTC: Team sync" in text_of(listed)  # 15:00+01:00
    assert text_of(only).startswith("1 event in Google Calendar") and "Team sync" in text_of(only)
    assert "Team sync" not in text_of(after_reset)


async def test_invalid_arguments_are_an_error_result() -> None:
    async with SimMcp() as sim, Client(sim.url) as client:
        result = await client.call_tool(
            "schedule_event", {"title": "Lunch", "start": "next tuesday-ish"}
        )
    assert result.is_error
    assert "ISO 8601" in text_of(result)
    assert sim.stats.errors == 1 and sim.stats.ok == 0


async def test_hourly_quota_fails_like_zapier_with_the_reset_time() -> None:
    async with SimMcp(SimMcpConfig(quota_per_hour=3)) as sim, Client(sim.url) as client:
        results = [await client.call_tool("create_task", {"title": f"Task {i}"}) for i in range(4)]
        async with httpx2.AsyncClient() as http:
            stats = (await http.get(f"{root(sim)}/sim/stats")).json()
    assert [r.is_error for r in results] == [False, False, False, True]
    message = text_of(results[-1])
    assert "hourly quota exceeded" in message and "resets at" in message
    assert results[-1].meta is not None
    assert 3500 < results[-1].meta["retry_after"] <= 3600
    reset_at = datetime.fromisoformat(results[-1].meta["reset_at"])
    assert reset_at.tzinfo is not None
    assert stats["tool_calls"] == 4 and stats["ok"] == 3
    assert stats["over_limit"] == 1 and stats["over_limit_by"]["quota"] == 1
    assert stats["quota"]["remaining"] == 0 and stats["quota"]["used"] == 3
    assert [s["outcome"] for s in stats["timeline"]] == ["ok", "ok", "ok", "over_quota"]


async def test_max_concurrent_refuses_the_extra_calls() -> None:
    config = SimMcpConfig(max_concurrent=2, latency=0.5)
    async with SimMcp(config) as sim, Client(sim.url) as client:
        results = await asyncio.gather(
            *(client.call_tool("search_files", {"query": f"report {i}"}) for i in range(5))
        )
    errors = [text_of(r) for r in results if r.is_error]
    assert len(errors) == 3
    assert all("too many concurrent requests" in e for e in errors)
    assert sim.stats.peak_concurrency == 2
    assert sim.stats.over_limit == 3 and sim.stats.over_limit_by["concurrency"] == 3
    assert sim.stats.ok == 2 and sim.stats.in_flight == 0


async def test_stats_and_reset_over_http() -> None:
    async with SimMcp(SimMcpConfig(quota_per_hour=1)) as sim:
        async with Client(sim.url) as client:
            await client.call_tool("send_email", TOOL_ARGS["send_email"])
            refused = await client.call_tool("send_email", TOOL_ARGS["send_email"])
        assert refused.is_error
        async with httpx2.AsyncClient() as http:
            light = (await http.get(f"{root(sim)}/sim/stats?timeline=0")).json()
            reset = await http.post(f"{root(sim)}/sim/reset")
            after = (await http.get(f"{root(sim)}/sim/stats")).json()
        async with Client(sim.url) as client:
            again = await client.call_tool("send_email", TOOL_ARGS["send_email"])
    assert light["tool_calls"] == 2 and light["by_tool"] == {"send_email": 2}
    assert light["peak_concurrency"] == 1 and "timeline" not in light
    assert reset.status_code == 200
    assert after["tool_calls"] == 0 and after["quota"]["remaining"] == 1
    assert not again.is_error  # the quota was refilled by the reset


async def test_restart_after_stop() -> None:
    sim = SimMcp()
    first = await sim.start()
    await sim.stop()
    second = await sim.start()
    try:
        async with Client(second) as client:
            assert len((await client.list_tools()).tools) == len(TOOL_ARGS)
    finally:
        await sim.stop()
    assert first.endswith("/mcp") and second.endswith("/mcp")


async def test_the_demo_model_drives_the_tools_end_to_end() -> None:
    """The demo path: the simulated model asks for a tool, MCP runs it, the model reports it."""
    async with SimOpenAI() as model, SimMcp() as tools, Client(tools.url) as mcp:
        listed = await mcp.list_tools()
        functions = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.input_schema,
                },
            }
            for t in listed.tools
        ]
        llm = AsyncOpenAI(base_url=model.url, api_key="x", max_retries=0)
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": "Please create a task to renew my passport"}
        ]
        first = await llm.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=functions
        )
        call = (first.choices[0].message.tool_calls or [])[0]
        assert call.function.name == "create_task"
        result = await mcp.call_tool(call.function.name, json.loads(call.function.arguments))
        assert not result.is_error
        messages.append(first.choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": text_of(result)})
        final = await llm.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=functions
        )
        await llm.close()
    answer = final.choices[0].message.content or ""
    assert 'Task created in Todoist: "Renew my passport"' in answer
    assert tools.stats.ok == 1 and model.stats.tool_calls == 1


def test_cli_rejects_bad_mcp_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["sim", "mcp", "--quota-per-hour", "lots"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--quota-per-hour" in err and "whole number" in err and "Traceback" not in err
