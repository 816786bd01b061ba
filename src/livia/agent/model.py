"""The OpenAI-compatible model: one streamed Chat Completions call, governed by the manager.

Streaming versus retries
------------------------
The manager owns retries and calls the operation afresh for each attempt; the concurrency
slot is held for the whole stream because the stream is consumed *inside* the operation.
Text deltas are forwarded to the caller live (so users see the reply as it is written), and
that is made retry-safe like this:

* a failure *before the first text delta* is an ordinary failed attempt: the manager may
  retry it (429, 5xx, connection errors, ...), and nothing was shown to anyone;
* a failure *after a text delta was forwarded* is re-raised as `StreamInterrupted`, which
  the manager does not retry; the turn ends with an apology instead of repeating text;
* as a belt-and-braces guard, an operation called again after text was forwarded raises
  `StreamInterrupted` at once without calling the model, whatever the manager decided.

With no `on_text` (nobody reads the reply as it is written: an HTTP request that waits
for the whole reply) nothing is shown before the end, so a stream that breaks mid-reply is
an ordinary failed attempt too, and the turn's task is not woken once per delta.

Tool-call deltas are only accumulated, never forwarded, so a retried attempt that produces
tool calls cannot duplicate anything.

Reading the stream
------------------
`livia.agent.wire` sends the request (the SDK's URL, headers and typed errors; aiohttp's
pool) and the event stream is read here, each event decoded with `orjson.loads` into
plain dicts: the SDK's request path and its pydantic chunk models were most of a busy
server's CPU (profile in docs/bench.md), and a reply is dozens of chunks, each read on its
own network read: this loop is the hottest in Livia.

Timeouts
--------
Three bounds, from the widest: `[llm] timeout` covers the whole call (waiting for
capacity, every attempt, the backoff between them); `[llm] attempt_timeout` one attempt;
`[llm] stream_idle_timeout` the wait for each chunk of the stream, the first included
(`IdleTimeout`: one timer per gap, not one per chunk). A
hung or stalled attempt thus gives its concurrency slot back within the smaller bounds and
is retried like any failed attempt (before the first text delta), instead of holding the
slot, and everyone queued behind it, for the whole `timeout`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import orjson
from openai import APIConnectionError, APIError, AsyncOpenAI
from openai.types import CompletionUsage
from pydantic import ValidationError

from livia.agent.failures import ModelTimeout, StreamInterrupted
from livia.agent.idle import IdleTimeout
from livia.agent.prompts import estimate_tokens
from livia.agent.wire import MAX_CONNECTIONS, MOST_CONNECTIONS, TRANSFER_ERRORS, ModelWire
from livia.concurrency import ConcurrencyManager
from livia.config import LlmConfig, Settings
from livia.files.images import url_tokens

log = logging.getLogger(__name__)

#: The key sent to a local OpenAI-compatible server (the simulator) when none is configured.
PLACEHOLDER_API_KEY = "livia-local-no-key"


@dataclass(slots=True)
class ToolCall:
    """A function call the model asked for (`name` is the OpenAI function name)."""

    id: str
    name: str
    arguments: str = ""


@dataclass(slots=True)
class ModelReply:
    """One model step: its text, the tool calls it asked for, and the usage it reported.

    `usage` is read by the concurrency manager to settle the call's token cost.
    """

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: CompletionUsage | None = None
    finish_reason: str | None = None


def make_openai_client(settings: Settings) -> AsyncOpenAI:
    """An `AsyncOpenAI` for `[llm]`: its `base_url`, SDK retries off, the request timeout.

    Without `OPENAI_API_KEY` a placeholder key is used, which is what a local
    OpenAI-compatible server (the simulator, a self-hosted model) expects. Chat streams go
    through `ModelWire` with this client's URL and headers; the SDK sends the rest
    (transcriptions, images).
    """
    llm = settings.llm
    return AsyncOpenAI(
        api_key=settings.openai_api_key or PLACEHOLDER_API_KEY,
        base_url=llm.base_url or None,
        max_retries=0,  # the concurrency manager owns retries
        timeout=httpx2.Timeout(llm.timeout, connect=min(10.0, llm.timeout)),
    )


def model_connections(settings: Settings) -> int:
    """Connections for the model's chat streams: one per slot of the `[llm] api`
    upstream's `max_concurrent`, at least `MAX_CONNECTIONS`, at most `MOST_CONNECTIONS`."""
    policy = settings.policies().get(settings.llm.api)
    slots = policy.max_concurrent if policy is not None else 0
    return max(MAX_CONNECTIONS, min(slots, MOST_CONNECTIONS))


class ModelClient:
    """Streams Chat Completions through the concurrency manager on the `[llm] api` upstream."""

    def __init__(
        self,
        config: LlmConfig,
        manager: ConcurrencyManager,
        client: AsyncOpenAI,
        *,
        connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.config = config
        self.manager = manager
        self.client = client
        self.wire = ModelWire(
            client, connections=connections, connect_timeout=min(10.0, config.timeout)
        )

    async def aclose(self) -> None:
        """Close the chat streams' connections."""
        await self.wire.aclose()

    def estimate_cost(self, messages: Sequence[dict[str, Any]], tools: Sequence[Any]) -> int:
        """Tokens this call may use: the prompt (messages and tool schemas) plus the output cap."""
        prompt = estimate_tokens([_without_images(m) for m in messages])
        prompt += estimate_tokens(list(tools)) if tools else 0
        return prompt + _image_tokens(messages) + self.config.max_output_tokens

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        key: str,
        on_text: Callable[[str], None] | None = None,
        final: bool = False,
    ) -> ModelReply:
        """Run one model step; `on_text` gets each text delta as it arrives (see module doc;
        None: nobody reads the text before the reply is whole).

        `final` asks the model to answer in text (tool_choice "none"): the last step of a turn.
        Raises what the manager raises once retries are spent (an `openai.APIError`,
        `CapacityExhausted`, `StreamInterrupted`, ...).
        """
        forwarded = False
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.config.timeout
        body = self._body(messages, tools, final=final)  # the same for every attempt

        sink: Callable[[str], None] | None = None
        if on_text is not None:
            show = on_text

            def forward(text: str) -> None:
                nonlocal forwarded
                forwarded = True
                show(text)

            sink = forward

        async def attempt() -> ModelReply:
            if forwarded:
                raise StreamInterrupted("the model stream broke after text was sent")
            left = ends - loop.time()
            budget = min(self.config.attempt_timeout or left, left)
            if budget <= 0:
                raise ModelTimeout(self.wire.request, "no time left for another attempt")
            try:
                return await self._stream_once(body, sink, budget=budget)
            except (asyncio.CancelledError, StreamInterrupted):
                raise
            except Exception as exc:
                if forwarded:
                    raise StreamInterrupted(f"the model stream broke mid-reply: {exc}") from exc
                raise

        return await self.manager.run(
            self.config.api,
            attempt,
            key=key,
            cost=self.estimate_cost(messages, tools),
            deadline=self.config.timeout,
            name="chat.completions",
        )

    async def _stream_once(
        self, body: bytes, on_text: Callable[[str], None] | None, *, budget: float
    ) -> ModelReply:
        """One attempt: open the stream and consume it to the end, within `budget` seconds
        and with no more than `[llm] stream_idle_timeout` seconds between two chunks."""
        reply = ModelReply()
        calls: dict[int, ToolCall] = {}
        gap = IdleTimeout(self.config.stream_idle_timeout or None)
        waiting = "response"
        try:
            async with asyncio.timeout(budget) as whole, gap, self.wire.stream(body) as blocks:
                waiting = "first chunk"
                gap.touch()

                def take(chunk: dict[str, Any]) -> None:
                    nonlocal waiting
                    gap.touch()  # an event, not any bytes: keep-alive comments are no progress
                    waiting = "next chunk"
                    _take_chunk(chunk, reply, calls, on_text)

                await _read_events(blocks, self.wire.request, take)
        except TimeoutError:
            # A retryable error for the manager (it is one only before any text was sent).
            if gap.expired and not whole.expired():
                why = f"the stream stalled: no {waiting} for {gap.seconds:g} s"
            else:
                why = f"the attempt took over {budget:.3g} s"
            log.info("model attempt abandoned: %s", why)
            raise ModelTimeout(self.wire.request, why) from None
        reply.tool_calls = [
            ToolCall(id=call.id or f"call_{index}", name=call.name, arguments=call.arguments)
            for index, call in sorted(calls.items())
            if call.name
        ]
        return reply

    def _body(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]], *, final: bool
    ) -> bytes:
        """The request's JSON, as the SDK would send it for a streamed call."""
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": self.config.max_output_tokens,
        }
        if tools:
            body["tools"] = list(tools)
            if final:
                body["tool_choice"] = "none"
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        return json.dumps(body).encode()


#: Seconds spent reading what follows ``[DONE]`` (the body's end) before letting it go.
_DRAIN_SECONDS = 0.1


async def _read_events(
    blocks: AsyncIterator[bytes],
    request: httpx2.Request,
    take: Callable[[dict[str, Any]], None],
) -> None:
    """Hand `take` each JSON object of a Chat Completions event stream (its body's
    `blocks`, split anywhere), up to ``[DONE]``.

    As the SDK's own stream: an ``error`` event raises `openai.APIError`, a broken read
    `APIConnectionError`; after ``[DONE]`` the rest of the body is read briefly (so the
    connection can be reused) and nothing there can spoil a reply that is complete. A plain
    loop with callbacks, not an async generator: it runs once per network read.
    """
    pending = b""
    data: list[bytes] = []
    try:
        async for block in blocks:
            *lines, pending = (pending + block).split(b"\n") if pending else block.split(b"\n")
            for line in lines:
                event = _line(line, data, request)
                if event is None:
                    await _drain(blocks)
                    return
                if event:
                    take(event)
    except TRANSFER_ERRORS as exc:
        raise APIConnectionError(request=request) from exc
    # The body ended without the blank line after its last event (or its last line's end).
    for line in (pending, b""):
        event = _line(line, data, request)
        if event:
            take(event)


def _line(line: bytes, data: list[bytes], request: httpx2.Request) -> dict[str, Any] | None:
    """Take one line of the stream: an event's object when the line ends one, None for
    ``[DONE]``, else {} (a data line is kept in `data`, comments and other fields dropped)."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if line.startswith(b"data:"):
        data.append(line[6:] if line.startswith(b"data: ") else line[5:])
    elif not line and data:  # a blank line ends an event
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        data.clear()
        return _event(payload, request)
    return {}


async def _drain(blocks: AsyncIterator[bytes]) -> None:
    """Read the body's end for at most `_DRAIN_SECONDS`, ignoring whatever goes wrong."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in blocks:
                pass
    except (TimeoutError, *TRANSFER_ERRORS):
        pass


def _event(payload: bytes, request: httpx2.Request) -> dict[str, Any] | None:
    """One event's data as an object: None for ``[DONE]``, {} for what is not an object."""
    if payload.startswith(b"[DONE]"):
        return None
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:  # bad UTF-8, a lone surrogate: replaced, as json does
        event = json.loads(payload.decode("utf-8", "replace"))
    if not isinstance(event, dict):
        return {}
    error = event.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str) or not message:
            message = "An error occurred during streaming"
        raise APIError(message, request, body=error)
    return event


def _take_chunk(
    chunk: dict[str, Any],
    reply: ModelReply,
    calls: dict[int, ToolCall],
    on_text: Callable[[str], None] | None,
) -> None:
    """Add one stream chunk to `reply` (text forwarded to `on_text`, tool calls gathered)."""
    usage = chunk.get("usage")
    if isinstance(usage, dict) and usage:
        try:
            reply.usage = CompletionUsage.model_validate(usage)
        except ValidationError:  # a compatible server's partial usage: taken as it is
            reply.usage = CompletionUsage.model_construct(**usage)
    for choice in (chunk.get("choices") or ())[:1]:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            reply.text += content
            if on_text is not None:
                on_text(content)
        for part in delta.get("tool_calls") or ():
            call = calls.setdefault(int(part.get("index") or 0), ToolCall(id="", name=""))
            if part.get("id"):
                call.id = part["id"]
            function = part.get("function")
            if function:
                call.name += function.get("name") or ""
                call.arguments += function.get("arguments") or ""
        if choice.get("finish_reason"):
            reply.finish_reason = choice["finish_reason"]


def _without_images(message: dict[str, Any]) -> dict[str, Any]:
    """`message` with its image parts left out (they are counted by `_image_tokens`)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    kept = [p for p in content if not (isinstance(p, dict) and p.get("type") == "image_url")]
    return {**message, "content": kept}


def _image_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """The images' cost by OpenAI's tile formula (not by the length of their data URLs)."""
    total = 0
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url") or {}
                total += url_tokens(str(image.get("url") or ""), str(image.get("detail") or "auto"))
    return total
