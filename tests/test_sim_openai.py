"""The simulated OpenAI server, through real clients on real sockets.

Limits are checked to the request, 429s against OpenAI's exact shape, streaming and tool
calls through the official `openai` client, faults within statistical bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from livia import cli
from livia.commands import sim as sim_command
from livia.sim import (
    FixedLatency,
    LogNormalLatency,
    SimOpenAI,
    SimOpenAIConfig,
    SlidingWindow,
    UniformLatency,
    format_duration,
    parse_duration,
    parse_latency,
)
from livia.sim.replies import compose_reply, for_the_user, stream_pieces

MODEL = "gpt-4o-mini"
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")

CREATE_TASK = {
    "type": "function",
    "function": {
        "name": "create_task",
        "description": "Create a task (to-do) in Todoist.",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "description": "Title of the task."},
                "due_date": {"type": "string", "description": "YYYY-MM-DD"},
            },
            "required": ["title"],
        },
    },
}
SEND_EMAIL = {
    "type": "function",
    "function": {
        "name": "send_email",
        "description": "Send an email from Gmail.",
        "parameters": {
            "type": "object",
            "properties": {
                "to": {"type": "string"},
                "subject": {"type": "string"},
                "body": {"type": "string"},
            },
            "required": ["to", "subject", "body"],
        },
    },
}
SCHEDULE_EVENT = {
    "type": "function",
    "function": {
        "name": "schedule_event",
        "description": "Schedule an event (meeting) in Google Calendar.",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "start": {"type": "string", "format": "date-time"},
                "duration_minutes": {"type": "integer", "default": 30},
            },
            "required": ["title", "start"],
        },
    },
}
SEARCH_FILES = {
    "type": "function",
    "function": {
        "name": "search_files",
        "description": "Search files in Google Drive.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}},
            "required": ["query"],
        },
    },
}
GET_TIME = {
    "type": "function",
    "function": {
        "name": "get_current_time",
        "description": "Get current time in a specific timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
LIST_EVENTS = {
    "type": "function",
    "function": {
        "name": "list_events",
        "description": "Find events in Google Calendar: what is on the calendar.",
        "parameters": {
            "type": "object",
            "properties": {"start_date": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}
ALL_TOOLS = [CREATE_TASK, SEND_EMAIL, SCHEDULE_EVENT, LIST_EVENTS, SEARCH_FILES, GET_TIME]


@contextlib.asynccontextmanager
async def serve(**config: Any) -> AsyncIterator[tuple[SimOpenAI, AsyncOpenAI]]:
    """A running simulator and an official client pointed at it (no SDK retries)."""
    async with SimOpenAI(SimOpenAIConfig(**config)) as sim:
        client = AsyncOpenAI(base_url=sim.url, api_key="x", max_retries=0, timeout=10.0)
        try:
            yield sim, client
        finally:
            await client.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def root(sim: SimOpenAI) -> str:
    return sim.url.removesuffix("/v1")


# --- replies and streaming -------------------------------------------------------------


async def test_plain_reply_quotes_the_user_and_reports_usage() -> None:
    text = "What should I pack for a weekend in Lisbon?"
    async with serve() as (sim, client):
        reply = await client.chat.completions.create(model=MODEL, messages=user(text))
    content = reply.choices[0].message.content or ""
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL
    assert reply.choices[0].finish_reason == "stop"
    assert text in content
    assert content.count(". ") >= 2  # several sentences, so streaming shows
    usage = reply.usage
    assert usage is not None
    assert usage.prompt_tokens == 3 + 4 + math.ceil(len(text) / 4)
    assert usage.completion_tokens == math.ceil(len(content) / 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert sim.stats.ok == 1
    assert sim.stats.prompt_tokens == usage.prompt_tokens


async def test_each_user_gets_their_own_reply() -> None:
    texts = [f"User {i} asks about topic number {i * 7}" for i in range(8)]
    async with serve(latency=0.2) as (sim, client):
        replies = await asyncio.gather(
            *(client.chat.completions.create(model=MODEL, messages=user(t)) for t in texts)
        )
    for text, reply in zip(texts, replies, strict=True):
        content = reply.choices[0].message.content or ""
        assert text in content
        assert all(other not in content for other in texts if other != text)
    assert sim.stats.peak_concurrency > 1


async def test_stream_through_the_official_client_with_usage() -> None:
    text = "Explain how tides work near Brittany"
    async with serve(latency=0.05) as (_, client):
        whole = await client.chat.completions.create(model=MODEL, messages=user(text))
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=user(text),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 10
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishing[-1] == "stop" and finishing.count("stop") == 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == (whole.usage.total_tokens if whole.usage else -1)
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_wire_format() -> None:
    async with SimOpenAI() as sim, httpx2.AsyncClient() as http:
        response = await http.post(
            f"{sim.url}/chat/completions",
            json={"model": MODEL, "messages": user("hello there, how are you?"), "stream": True},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage


async def test_max_completion_tokens_cuts_the_reply() -> None:
    async with serve() as (_, client):
        reply = await client.chat.completions.create(
            model=MODEL,
            messages=user("Tell me a long story about dragons"),
            max_completion_tokens=5,
        )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens <= 5


# --- tool calls ------------------------------------------------------------------------


async def test_tool_call_then_answer_with_the_result() -> None:
    async with serve() as (sim, client):
        messages: list[dict[str, Any]] = user("Please create a task to buy milk")
        first = await client.chat.completions.create(
            model=MODEL, messages=messages, tools=[CREATE_TASK, SEND_EMAIL]
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        calls = choice.message.tool_calls or []
        assert len(calls) == 1
        call = calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "create_task"
        assert json.loads(call.function.arguments) == {"title": "Buy milk"}

        messages.append(choice.message.model_dump(exclude_none=True))
        result = "Task created in Todoist: Buy milk (id 4242)"
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        second = await client.chat.completions.create(
            model=MODEL, messages=messages, tools=[CREATE_TASK, SEND_EMAIL]
        )
    answer = second.choices[0]
    assert answer.finish_reason == "stop"
    assert result in (answer.message.content or "")
    assert "create_task" in (answer.message.content or "")
    assert sim.stats.tool_calls == 1


async def test_streamed_tool_call_deltas() -> None:
    async with serve(latency=0.02) as (_, client):
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=user("Send an email to ana@example.com about the offsite agenda"),
            tools=ALL_TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert len(deltas) >= 3
    assert deltas[0].id and deltas[0].type == "function"
    assert deltas[0].function is not None and deltas[0].function.name == "send_email"
    assert all(d.index == 0 and d.id is None for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    args = json.loads(arguments)
    assert args["to"] == "ana@example.com"
    assert "offsite agenda" in args["subject"].lower()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage is not None


async def test_no_tool_unless_asked_and_tool_choice() -> None:
    async with serve() as (_, client):
        chat = await client.chat.completions.create(
            model=MODEL, messages=user("hello there"), tools=ALL_TOOLS
        )
        assert not chat.choices[0].message.tool_calls
        refused = await client.chat.completions.create(
            model=MODEL,
            messages=user("create a task to buy milk"),
            tools=ALL_TOOLS,
            tool_choice="none",
        )
        assert not refused.choices[0].message.tool_calls
        forced = await client.chat.completions.create(
            model=MODEL,
            messages=user("hello there"),
            tools=ALL_TOOLS,
            tool_choice={"type": "function", "function": {"name": "search_files"}},
        )
    calls = forced.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["search_files"]


@pytest.mark.parametrize(
    ("text", "tool", "expected"),
    [
        ("Remind me to call the dentist", "create_task", {"title": "Call the dentist"}),
        ("Email bob@example.com the Q3 numbers", "send_email", {"to": "bob@example.com"}),
        ("Schedule a meeting with Anna tomorrow", "schedule_event", {}),
        ("what's on my calendar", "list_events", {}),
        ("Do I have any meetings this week?", "list_events", {}),
        ("Add a meeting with Anna to my calendar", "schedule_event", {}),
        ("Search my files for the Q3 budget", "search_files", {"query": "Q3 budget"}),
        ("What time is it in Europe/Paris?", "get_current_time", {"timezone": "Europe/Paris"}),
    ],
)
def test_the_tool_that_fits_the_request(text: str, tool: str, expected: dict[str, Any]) -> None:
    reply = compose_reply(user(text), ALL_TOOLS)
    assert [c.name for c in reply.tool_calls] == [tool]
    args = json.loads(reply.tool_calls[0].arguments)
    assert expected.items() <= args.items()
    if tool == "schedule_event":
        assert "Anna" in args["title"]
        assert args["start"][:4].isdigit() and "T" in args["start"]


def test_tool_errors_are_reported_without_the_instructions_meant_for_the_model() -> None:
    messages: list[dict[str, Any]] = [
        *user("Create a task to call Bob"),
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "zapier__create_task", "arguments": "{}"},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": "ERROR: Zapier tools are out of quota until 01:57 UTC (in 51 min); "
            "zapier.create_task was not run. Tell the user it is unavailable until 01:57 UTC "
            "and offer to help another way.",
        },
    ]
    text = compose_reply(messages, ALL_TOOLS).text or ""
    assert "Zapier tools are out of quota until 01:57 UTC (in 51 min)" in text
    assert "zapier.create_task" in text
    for leaked in ("ERROR", "Tell the user", "offer to help another way", "zapier__"):
        assert leaked not in text, text
    assert (
        for_the_user("ERROR: x failed (Boom); you may retry. Tell the user.") == "X failed (Boom)."
    )


def test_stream_pieces_rebuild_the_text() -> None:
    text = 'You asked: "hi".  Two  spaces, and a trailing one '
    assert "".join(stream_pieces(text)) == text


# --- limits and 429s -------------------------------------------------------------------


async def test_requests_per_minute_sixth_request_gets_openai_429() -> None:
    config = SimOpenAIConfig(requests_per_minute=5)
    async with SimOpenAI(config) as sim, httpx2.AsyncClient() as http:
        body = {"model": MODEL, "messages": user("hi")}
        remaining = []
        for _ in range(5):
            ok = await http.post(f"{sim.url}/chat/completions", json=body)
            assert ok.status_code == 200
            assert ok.headers["x-ratelimit-limit-requests"] == "5"
            remaining.append(ok.headers["x-ratelimit-remaining-requests"])
        refused = await http.post(f"{sim.url}/chat/completions", json=body)
    assert remaining == ["4", "3", "2", "1", "0"]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "requests"
    assert error["param"] is None
    assert error["code"] == "rate_limit_exceeded"
    assert "requests per min (RPM): Limit 5, Used 5" in error["message"]
    headers = refused.headers
    retry_ms = int(headers["retry-after-ms"])
    assert 0 < retry_ms <= 60_000
    assert int(headers["retry-after"]) == math.ceil(retry_ms / 1000)
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    reset = headers["x-ratelimit-reset-requests"]
    assert DURATION.match(reset)
    assert abs(parse_duration(reset) - retry_ms / 1000) <= 0.002
    stats = sim.stats
    assert (stats.requests, stats.ok, stats.rate_limited, stats.over_limit) == (6, 5, 1, 1)
    assert stats.over_limit_by["requests"] == 1


async def test_official_client_raises_rate_limit_error_with_headers() -> None:
    async with serve(requests_per_minute=1) as (_, client):
        await client.chat.completions.create(model=MODEL, messages=user("one"))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=MODEL, messages=user("two"))
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after-ms"]) > 0


async def test_requests_per_hour_is_a_separate_window() -> None:
    async with serve(requests_per_minute=100, requests_per_hour=3) as (sim, client):
        for i in range(3):
            await client.chat.completions.create(model=MODEL, messages=user(f"q{i}"))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=MODEL, messages=user("q3"))
    headers = caught.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "3"  # the window that refused
    assert 3540 < int(headers["retry-after"]) <= 3600
    assert "per hour" in str(caught.value)
    assert sim.stats.rate_limited == 1


async def test_tokens_per_minute_counts_prompt_and_completion() -> None:
    text = "Summarise the plot of Hamlet in a few lines"
    async with serve() as (_, client):
        probe = await client.chat.completions.create(model=MODEL, messages=user(text))
    assert probe.usage is not None
    cost = probe.usage.total_tokens
    tpm = 2 * cost + cost // 2
    config = SimOpenAIConfig(tokens_per_minute=tpm)
    async with SimOpenAI(config) as sim, httpx2.AsyncClient() as http:
        body = {"model": MODEL, "messages": user(text)}
        first = await http.post(f"{sim.url}/chat/completions", json=body)
        second = await http.post(f"{sim.url}/chat/completions", json=body)
        third = await http.post(f"{sim.url}/chat/completions", json=body)
        huge = await http.post(
            f"{sim.url}/chat/completions",
            json={"model": MODEL, "messages": user("x" * 4 * tpm)},
        )
    assert first.headers["x-ratelimit-remaining-tokens"] == str(tpm - cost)
    assert second.status_code == 200
    assert second.headers["x-ratelimit-remaining-tokens"] == str(tpm - 2 * cost)
    assert third.status_code == 429
    assert third.json()["error"]["type"] == "tokens"
    assert third.headers["x-ratelimit-limit-tokens"] == str(tpm)
    assert third.headers["x-ratelimit-remaining-tokens"] == str(tpm - 2 * cost)
    assert 0 < parse_duration(third.headers["x-ratelimit-reset-tokens"]) <= 60
    assert huge.status_code == 429
    assert "Request too large" in huge.json()["error"]["message"]
    assert sim.stats.over_limit_by["tokens"] == 2


async def test_max_concurrent_refuses_the_extra_requests() -> None:
    async with serve(max_concurrent=2, latency=0.5) as (sim, client):
        results = await asyncio.gather(
            *(
                client.chat.completions.create(model=MODEL, messages=user(f"hello {i}"))
                for i in range(5)
            ),
            return_exceptions=True,
        )
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(refused) == 3
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 2
    assert sim.stats.peak_concurrency == 2
    assert sim.stats.over_limit_by["concurrency"] == 3
    retry_ms = int(refused[0].response.headers["retry-after-ms"])
    assert 0 < retry_ms <= 1000  # when the first running request is due to end
    series = sim.stats.timeline.series()
    assert max(level for _, level in series) == 2
    assert series[-1][1] == 0


async def test_limits_counted_but_not_enforced() -> None:
    async with serve(requests_per_minute=2, enforce_limits=False) as (sim, client):
        for i in range(4):
            await client.chat.completions.create(model=MODEL, messages=user(f"q{i}"))
    assert (sim.stats.ok, sim.stats.over_limit, sim.stats.rate_limited) == (4, 2, 0)


def test_sliding_window_is_exact_at_the_edges() -> None:
    window = SlidingWindow(3, 60.0)
    for t in (0.0, 10.0, 20.0):
        assert window.admits(t)
        window.add(t)
    assert not window.admits(59.999)
    assert window.wait(30.0) == pytest.approx(30.0)
    assert window.admits(60.0)  # the request at t=0 left the window at exactly t=60
    assert window.remaining(60.0) == 1
    tokens = SlidingWindow(100, 60.0)
    tokens.add(0.0, 60)
    tokens.add(5.0, 30)
    assert tokens.wait(6.0, 50) == pytest.approx(54.0)  # 40 must leave: the first event
    assert tokens.wait(6.0, 101) == math.inf


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (0.0004, "1ms"),
        (1, "1s"),
        (17.5, "17.5s"),
        (59.9996, "1m0s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
        (7200, "2h0m0s"),
    ],
)
def test_openai_duration_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(math.ceil(seconds * 1000 - 1e-6) / 1000)


# --- faults ----------------------------------------------------------------------------


async def _statuses(url: str, count: int, concurrency: int = 50) -> list[int]:
    body = {"model": MODEL, "messages": user("ping")}
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def one() -> int:
            async with gate, http.post(f"{url}/chat/completions", json=body) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one() for _ in range(count)))


async def test_fail_rate_within_statistical_bounds() -> None:
    async with SimOpenAI(SimOpenAIConfig(fail_rate=0.1, seed=7)) as sim:
        statuses = await _statuses(sim.url, 1000)
    failures = [s for s in statuses if s != 200]
    assert 60 <= len(failures) <= 140
    assert set(failures) == {500, 503}
    assert sim.stats.failed == len(failures)
    assert sim.stats.ok == 1000 - len(failures)


async def test_seed_makes_faults_repeatable() -> None:
    runs = []
    for _ in range(2):
        async with SimOpenAI(SimOpenAIConfig(fail_rate=0.3, seed=42)) as sim:
            runs.append(await _statuses(sim.url, 60, concurrency=1))
    assert runs[0] == runs[1]
    assert 200 in runs[0] and set(runs[0]) != {200}


async def test_drop_closes_the_connection_without_a_response() -> None:
    async with serve(drop_rate=1.0) as (sim, client):
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model=MODEL, messages=user("hi"))
    assert sim.stats.dropped == 1
    assert sim.stats.in_flight == 0


async def test_timeout_hangs_until_the_client_gives_up() -> None:
    async with serve(timeout_rate=1.0) as (sim, client):
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model=MODEL, messages=user("hi"), timeout=0.3)
        for _ in range(500):  # the server notices the client left: at most 5 s
            if not sim.stats.in_flight:
                break
            await asyncio.sleep(0.01)
    assert sim.stats.in_flight == 0
    assert sim.stats.timed_out == 1
    assert [s.outcome for s in sim.stats.timeline.spans] == ["timed_out"]


async def test_a_hang_is_bounded_by_hang_max() -> None:
    async with serve(timeout_rate=1.0, hang_max=0.2) as (sim, client):
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model=MODEL, messages=user("hi"), timeout=10)
    assert sim.stats.timed_out == 1


# --- other endpoints -------------------------------------------------------------------


async def test_models_endpoint() -> None:
    async with serve() as (_, client):
        models = [m.id async for m in client.models.list()]
        one = await client.models.retrieve("gpt-4o-mini")
    assert "livia-sim" in models and MODEL in models
    assert one.id == "gpt-4o-mini"


async def test_stats_and_reset_endpoints() -> None:
    async with serve(requests_per_minute=2) as (sim, client):
        for i in range(3):
            with contextlib.suppress(openai.RateLimitError):
                await client.chat.completions.create(model=MODEL, messages=user(f"q{i}"))
        async with httpx2.AsyncClient() as http:
            stats = (await http.get(f"{root(sim)}/sim/stats")).json()
            light = (await http.get(f"{root(sim)}/sim/stats?timeline=0")).json()
            reset = await http.post(f"{root(sim)}/sim/reset")
            after = (await http.get(f"{root(sim)}/sim/stats")).json()
        # The window was emptied by the reset, so a request fits again.
        await client.chat.completions.create(model=MODEL, messages=user("again"))
    assert stats["requests"] == 3 and stats["ok"] == 2 and stats["rate_limited"] == 1
    assert stats["over_limit"] == 1 and stats["peak_concurrency"] == 1
    assert stats["limits"]["requests_per_minute"] == 2
    assert stats["windows"]["requests_last_min"] == 2
    assert [s["outcome"] for s in stats["timeline"]] == ["ok", "ok", "rate_limited"]
    assert all(s["end"] >= s["start"] for s in stats["timeline"])
    assert stats["inflight"][-1][1] == 0
    assert "timeline" not in light and light["requests"] == 3
    assert reset.status_code == 200
    assert after["requests"] == 0 and after["timeline"] == [] and after["over_limit"] == 0
    assert sim.stats.requests == 1


async def test_bad_requests_and_unknown_paths_get_openai_errors() -> None:
    async with SimOpenAI() as sim, httpx2.AsyncClient() as http:
        garbled = await http.post(f"{sim.url}/chat/completions", content=b"{nope")
        empty = await http.post(
            f"{sim.url}/chat/completions", json={"model": MODEL, "messages": []}
        )
        missing = await http.get(f"{sim.url}/embeddings")
    assert garbled.status_code == 400
    assert garbled.json()["error"]["type"] == "invalid_request_error"
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
    assert missing.status_code == 404 and "Invalid URL" in missing.json()["error"]["message"]
    assert sim.stats.bad_requests == 2


# --- latency ---------------------------------------------------------------------------


def test_latency_specs() -> None:
    assert parse_latency("2") == FixedLatency(2.0)
    assert parse_latency(0.5) == FixedLatency(0.5)
    assert parse_latency("uniform:1:3") == UniformLatency(1.0, 3.0)
    assert parse_latency("lognormal:1.5:6") == LogNormalLatency(1.5, 6.0)
    for bad in ("fast", "lognormal:1", "lognormal:3:1", "uniform:2:1", "-1", "fixed:1:2"):
        with pytest.raises(ValueError):
            parse_latency(bad)


def test_lognormal_latency_has_the_requested_median_and_p99() -> None:
    rng = random.Random(3)
    latency = parse_latency("lognormal:1.5:6")
    samples = sorted(latency.sample(rng) for _ in range(20_000))
    assert samples[10_000] == pytest.approx(1.5, rel=0.05)
    assert samples[19_800] == pytest.approx(6.0, rel=0.12)
    uniform = parse_latency("uniform:1:2")
    assert all(1 <= uniform.sample(rng) <= 2 for _ in range(1000))


async def test_latency_is_applied() -> None:
    async with serve(latency=0.2) as (sim, client):
        await client.chat.completions.create(model=MODEL, messages=user("hi"))
    span = sim.stats.timeline.spans[0]
    assert span.end is not None and span.end - span.start >= 0.19


# --- the command -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sim", "openai", "--latency", "soon"], "invalid latency"),
        (["sim", "openai", "--rpm", "-3"], "must be 0 or more"),
        (["sim", "openai", "--fail-rate", "2"], "between 0 and 1"),
    ],
)
def test_cli_rejects_bad_options(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_cli_rejects_rates_that_do_not_add_up(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(
        ["sim", "openai", "--fail-rate", "0.7", "--drop-rate", "0.5"]
    )
    assert sim_command.run(args) == 2
    err = capsys.readouterr().err
    assert "must not exceed 1" in err and "Traceback" not in err


async def test_cli_serves_until_ctrl_c() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livia",
        "sim",
        "openai",
        "--port",
        "0",
        "--rpm",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            url = (await process.stdout.readline()).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
        async with httpx2.AsyncClient() as http:
            body = {"model": MODEL, "messages": user("hi")}
            assert (await http.post(f"{url}/chat/completions", json=body)).status_code == 200
            assert (await http.post(f"{url}/chat/completions", json=body)).status_code == 429
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            _, err = await process.communicate()
        assert process.returncode == 0
        assert b"Traceback" not in err
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
