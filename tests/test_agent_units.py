"""The agent's pure parts: prompt building, history trimming, naming, failure wording."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx2
import mcp_types
import openai
import pytest

from livia.agent import PERSONA, build_messages, model_failure, system_prompt, trim_history
from livia.agent.failures import (
    StreamInterrupted,
    format_clock,
    format_wait,
    tool_out_of_capacity,
    tool_unavailable_notice,
)
from livia.agent.toolbox import function_name, render_result
from livia.concurrency import CapacityExhausted, CircuitOpen
from livia.conversations.types import ChatMessage


def _status_error(cls: type[openai.APIStatusError], status: int, **headers: str) -> Exception:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers, request=request)
    return cls("upstream said no", response=response, body=None)


def test_system_prompt_is_the_persona_unless_overridden() -> None:
    now = datetime(2030, 5, 6, 7, 8, tzinfo=UTC)
    assert system_prompt(now=now).startswith(PERSONA)
    assert "2030-05-06 07:08 UTC" in system_prompt(now=now)
    custom = system_prompt("You are a pirate.", now=now)
    assert custom.startswith("You are a pirate.") and "Livia" not in custom


def test_history_is_trimmed_to_the_budget_newest_kept() -> None:
    history = [
        ChatMessage("user" if i % 2 == 0 else "assistant", f"{i} " + "x" * 396) for i in range(20)
    ]
    kept = trim_history(history, budget=520)  # ~104 tokens per message: five fit
    assert [m.content.split()[0] for m in kept] == ["15", "16", "17", "18", "19"]
    assert trim_history(history, budget=10) == []


def test_build_messages_always_keeps_system_and_new_text() -> None:
    history = [ChatMessage("user", "old " * 5000), ChatMessage("assistant", "recent")]
    messages = build_messages("SYS", history, "hello", budget=300)
    assert messages[0] == {"role": "system", "content": "SYS"}
    assert messages[-1] == {"role": "user", "content": "hello"}
    assert {"role": "assistant", "content": "recent"} in messages
    assert all("old old" not in str(m["content"]) for m in messages)


def test_function_names_are_namespaced_and_legal() -> None:
    assert function_name("zapier", "create_task") == "zapier__create_task"
    assert function_name("srv", "files.search v2") == "srv__files_search_v2"
    assert len(function_name("s" * 32, "t" * 80)) == 64


def test_tool_results_render_text_or_structured_content() -> None:
    text = mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text="done")])
    assert render_result(text) == "done"
    structured = mcp_types.CallToolResult(content=[], structured_content={"id": 7})
    assert render_result(structured) == '{"id": 7}'
    assert render_result(mcp_types.CallToolResult(content=[])) == "(no output)"


def test_waits_and_clock_times_read_naturally() -> None:
    assert format_wait(0.2) == "1 s"
    assert format_wait(40) == "40 s"
    assert format_wait(600) == "10 min"
    assert format_wait(7200) == "2 h"
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert format_clock(now + timedelta(minutes=32), now=now) == "12:32 UTC"
    assert format_clock(now + timedelta(days=1), now=now) == "2030-01-02 12:00 UTC"


def test_a_tool_out_of_quota_says_until_when() -> None:
    exc = CapacityExhausted("zapier", "75 requests per hour used", 1800)
    notice = tool_unavailable_notice("zapier", exc)
    assert (
        notice
        == f"Zapier tools are out of quota until {format_clock(exc.available_at)} (in 30 min)"
    )
    text = tool_out_of_capacity("zapier.create_task", "zapier", exc)
    # the facts first (what the user reads), then what the model is to do with them
    assert text.startswith(f"ERROR: {notice}; zapier.create_task was not run. Tell the user")
    paused = CircuitOpen("zapier", "failing", 30)
    assert "paused after repeated failures" in tool_unavailable_notice("zapier", paused)
    limited = CapacityExhausted(
        "openai", "paused after the upstream answered 429 (rate limited)", 5
    )
    assert "rate-limited until" in tool_unavailable_notice("openai", limited)


def test_model_failures_become_short_honest_apologies() -> None:
    limited = model_failure(_status_error(openai.RateLimitError, 429, **{"retry-after": "40"}))
    assert limited.code == "model_rate_limited"
    assert limited.apology == "Sorry — the model is rate-limited; try again in ~40 s."

    # The wait named is the spent limit's reset, as the manager reads it (requests remain;
    # the tokens are spent until 6m0s from now), not the first reset header found.
    tokens_spent = _status_error(
        openai.RateLimitError,
        429,
        **{
            "x-ratelimit-remaining-requests": "99",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        },
    )
    assert model_failure(tokens_spent).retry_after == 360.0

    down = model_failure(_status_error(openai.InternalServerError, 503))
    assert down.code == "model_unavailable" and "HTTP 503" in down.apology

    auth = model_failure(_status_error(openai.AuthenticationError, 401))
    assert auth.code == "model_auth" and "API key" in auth.apology

    full = model_failure(CapacityExhausted("openai", "tokens_per_minute limit reached", 40))
    assert full.code == "model_capacity"
    assert "~40 s" in full.apology and format_clock(datetime.now(UTC)).split(":")[0] in full.apology

    try:
        raise CapacityExhausted("openai", "rate limited (HTTP 429)", 12) from _status_error(
            openai.RateLimitError, 429
        )
    except CapacityExhausted as exc:
        gave_up = model_failure(exc)
    assert gave_up.code == "model_rate_limited" and "~12 s" in gave_up.apology

    assert model_failure(StreamInterrupted("x")).code == "model_interrupted"
    internal = model_failure(RuntimeError("Traceback: secret stuff"))
    assert internal.code == "internal" and "secret" not in internal.apology


# --- the event stream reader ----------------------------------------------------------------


_REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


class _Body:
    """A streamed response body arriving in `parts` (boundaries anywhere); `consumed` once
    read to its end."""

    def __init__(self, *parts: bytes, after: str = "end") -> None:
        self.parts = parts
        self.after = after
        self.consumed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        if self.after == "hang":
            await asyncio.sleep(3600)
        if self.after == "break":
            raise ConnectionResetError("connection reset by peer")
        self.consumed = True


def _sse(*parts: bytes) -> _Body:
    return _Body(*parts)


async def _events(body: _Body) -> list[dict[str, object]]:
    from livia.agent.model import _read_events

    events: list[dict[str, object]] = []
    await _read_events(aiter(body), _REQUEST, events.append)
    return events


async def test_stream_reader_joins_events_split_anywhere_and_drains_after_done() -> None:
    body = (
        b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
        b'data:{"choices":[{"delta":{"content":"lo"}}]}\r\n\r\n'
        b": a comment\nevent: ignored\n\n"
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,'
        b'"total_tokens":5}}\n\n'
        b"data: [DONE]\n\n"
        b'data: {"choices":[{"delta":{"content":"after done"}}]}\n\n'
    )
    cuts = [0, 7, 8, 30, 61, 62, 100, 150, len(body)]
    response = _sse(*(body[a:b] for a, b in itertools.pairwise(cuts)))
    events = await _events(response)
    assert [e.get("usage", {}).get("total_tokens") for e in events] == [None, None, 5]  # type: ignore[union-attr]
    assert response.consumed  # read to the end: the connection can be reused


async def test_stream_reader_takes_a_last_event_without_its_blank_line() -> None:
    events = await _events(_sse(b'data: {"choices":[{"delta":{"content":"x"}}]}'))
    assert events == [{"choices": [{"delta": {"content": "x"}}]}]


async def test_stream_reader_raises_an_error_event_as_the_sdk_does() -> None:
    body = b'data: {"choices":[]}\n\ndata: {"error":{"message":"overloaded","type":"server"}}\n\n'
    with pytest.raises(openai.APIError, match="overloaded"):
        await _events(_sse(body))


def test_chunks_make_text_tool_calls_usage_and_finish_reason() -> None:
    from livia.agent.model import ModelReply, ToolCall, _take_chunk

    reply, calls, shown = ModelReply(), dict[int, ToolCall](), list[str]()
    chunks = [
        {"choices": [{"delta": {"role": "assistant", "content": "Hi "}}]},
        {"choices": [{"delta": {"content": "there"}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c1",
                                "function": {"name": "add_", "arguments": '{"a":'},
                            }
                        ]
                    }
                }
            ]
        },
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "function": {"name": "task", "arguments": "1}"}}
                        ]
                    }
                }
            ]
        },
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}},
    ]
    for chunk in chunks:
        _take_chunk(chunk, reply, calls, shown.append)
    assert (reply.text, shown, reply.finish_reason) == ("Hi there", ["Hi ", "there"], "tool_calls")
    assert (calls[0].id, calls[0].name, calls[0].arguments) == ("c1", "add_task", '{"a":1}')
    assert reply.usage is not None and reply.usage.total_tokens == 13


def _sse_then(body: bytes, after: str) -> _Body:
    """A stream of `body`, then: the connection breaks ("break") or goes silent ("hang")."""
    return _Body(body, after=after)


@pytest.mark.parametrize("after", ["break", "hang"])
async def test_what_follows_done_cannot_spoil_a_complete_reply(after: str) -> None:
    body = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'
    events = await asyncio.wait_for(_events(_sse_then(body, after)), 10)
    assert events == [{"choices": [{"delta": {"content": "Hi"}}]}]


async def test_a_stream_broken_before_done_is_a_connection_error_as_in_the_sdk() -> None:
    body = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    with pytest.raises(openai.APIConnectionError):
        await _events(_sse_then(body, "break"))


def test_partial_usage_from_a_compatible_server_is_kept_not_refused() -> None:
    from livia.agent.model import ModelReply, ToolCall, _take_chunk

    reply = ModelReply()
    _take_chunk(
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        reply,
        dict[int, ToolCall](),
        lambda _text: None,
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 2
