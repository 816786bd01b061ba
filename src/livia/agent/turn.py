"""The agent: one turn is model -> tool calls -> results -> model, streamed as events.

Event order within a turn: `TextDelta`s as the model writes; for each step with tool calls,
one `ToolStarted` per call, then one `ToolFinished` per call as each ends (calls of a step
run concurrently); finally exactly one `TurnDone`. `TurnDone.text` is always the
concatenation of the turn's `TextDelta`s, apology included, so a channel can render either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from openai import AsyncOpenAI

from livia.agent.events import TextDelta, ToolFinished, ToolStarted, TurnDone, TurnEvent
from livia.agent.failures import model_failure
from livia.agent.model import (
    ModelClient,
    ModelReply,
    ToolCall,
    make_openai_client,
    model_connections,
)
from livia.agent.prompts import build_messages, estimate_tokens, system_prompt
from livia.agent.toolbox import Toolbox, ToolOutcome
from livia.concurrency import ConcurrencyManager
from livia.config import Settings
from livia.conversations.types import ChatMessage
from livia.files import FileFailed, FileWork

log = logging.getLogger(__name__)


class Agent:
    """Answers turns with the `[llm]` model and the `[mcp]` tools; satisfies `Responder`.

    Every model call and tool call goes through `manager`; the user's `key` is the
    fairness key for both.
    """

    def __init__(
        self,
        settings: Settings,
        manager: ConcurrencyManager,
        *,
        openai_client: AsyncOpenAI | None = None,
        toolbox: Toolbox | None = None,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self._owns_client = openai_client is None
        self.client = openai_client or make_openai_client(settings)
        self.model = ModelClient(
            settings.llm, manager, self.client, connections=model_connections(settings)
        )
        self.toolbox = toolbox or Toolbox(settings.mcp, manager)
        #: Reads the files people send, draws images (each call through `manager`).
        self.files = FileWork(settings, manager, self.client)

    async def start(self, wait: float = 10.0) -> None:
        """Connect the tool servers in the background (waiting at most `wait` s for them)."""
        await self.toolbox.start(wait=wait)

    async def aclose(self) -> None:
        """Close the tool sessions and the model client (if this agent created it)."""
        await self.toolbox.aclose()
        await self.files.aclose()
        await self.model.aclose()
        if self._owns_client:
            await self.client.close()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def tools(self) -> list[str]:
        """Namespaced names (`server.tool`) of the tools available now."""
        return self.toolbox.tools

    async def respond(
        self,
        history: Sequence[ChatMessage],
        text: str,
        *,
        key: str,
        files: Sequence[Mapping[str, Any]] = (),
        stream: bool = True,
    ) -> AsyncIterator[TurnEvent]:
        """Answer `text` given `history`, streaming events (see the module doc for the order).

        `stream` False: nobody reads the reply as it is written, so each model step's text
        comes as one `TextDelta` when the step ends (and a stream that broke mid-reply may be
        tried again: nobody saw its start).

        `files` are the message's file references (`livia.files.refs`): images join the
        user's message as ``image_url`` parts, transcripts and documents' text as text; the
        reply starts with what was heard and what was refused or cut.
        """
        llm = self.settings.llm
        reply_text = ""
        usage: dict[str, int] = {}
        drawing = _DRAW.match(text) if not files else None
        if drawing is not None:
            async for event in self._draw(drawing.group("what"), key=key):
                yield event
            return
        content: str | list[dict[str, Any]] = text
        if files:
            budget = max(256, llm.history_tokens // 2 - estimate_tokens(text))
            prepared = await self.files.prepare(files, key=key, budget_tokens=budget)
            if prepared.notes:
                reply_text = "\n\n".join(prepared.notes) + "\n\n"
                yield TextDelta(reply_text)
            if prepared.transcripts and text.startswith(PLACEHOLDER_PREFIX):
                text = "(a voice message; answer what it says)"
            words = "\n\n".join([text, *prepared.context])
            content = words
            if prepared.images:
                content = [{"type": "text", "text": words}, *prepared.images]
            elif not prepared.context and text.startswith(PLACEHOLDER_PREFIX):
                yield TurnDone(reply_text.rstrip(), usage=usage)  # nothing left to answer
                return
        messages = build_messages(
            system_prompt(llm.system_prompt), history, text, budget=llm.history_tokens
        )
        if content is not text:
            messages[-1]["content"] = content
        for step in range(llm.max_steps):
            final = step == llm.max_steps - 1
            tools = self.toolbox.openai_tools()
            reply: ModelReply | None = None
            failure: BaseException | None = None
            separated = not reply_text or reply_text[-1].isspace()
            pieces = self._model_step(messages, tools, key=key, final=final, live=stream)
            async for piece in pieces:
                if isinstance(piece, str):
                    if not separated:
                        reply_text += "\n\n"
                        yield TextDelta("\n\n")
                        separated = True
                    reply_text += piece
                    yield TextDelta(piece)
                elif isinstance(piece, ModelReply):
                    reply = piece
                else:
                    failure = piece
            if reply is None:
                found = model_failure(failure or RuntimeError("no reply"))
                log.warning("turn %s: model call failed (%s): %s", key, found.code, _short(failure))
                apology = ("\n\n" if reply_text else "") + found.apology
                yield TextDelta(apology)
                yield TurnDone(reply_text + apology, error=found.code, usage=usage)
                return
            _add_usage(usage, reply)
            if not reply.tool_calls:
                yield TurnDone(reply_text, usage=usage)
                return
            if final:
                break
            messages.append(_assistant_message(reply))
            async for event in self._run_tools(reply.tool_calls, messages, key=key, usage=usage):
                yield event
        apology = (
            f"Sorry — this needed more than {llm.max_steps} steps of tool use, so I stopped. "
            "Ask me to continue, or break the request into smaller parts."
        )
        apology = ("\n\n" if reply_text else "") + apology
        log.warning("turn %s: stopped at the step limit (%d)", key, llm.max_steps)
        yield TextDelta(apology)
        yield TurnDone(reply_text + apology, error="step_limit", usage=usage)

    async def _draw(self, what: str, *, key: str) -> AsyncIterator[TurnEvent]:
        """Draw `what` under `[apis.images]`; the reply shows the image (``/v1/files/...``)."""
        what = what.strip().rstrip(".!")
        try:
            name = await self.files.draw(what, key=key)
        except FileFailed as exc:
            yield TextDelta(str(exc))
            yield TurnDone(str(exc), error="image_failed")
            return
        text = f"Here is {what}:\n\n![{_alt(what)}](/v1/files/{name})"
        yield TextDelta(text)
        yield TurnDone(text, usage={"images": 1})

    async def answer(self, history: Sequence[ChatMessage], text: str, *, key: str) -> TurnDone:
        """Run a whole turn and return its `TurnDone` (for callers that do not stream)."""
        done = TurnDone("", error="internal")
        async for event in self.respond(history, text, key=key, stream=False):
            if isinstance(event, TurnDone):
                done = event
        return done

    async def _model_step(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        key: str,
        final: bool,
        live: bool = True,
    ) -> AsyncIterator[str | ModelReply | BaseException]:
        """One model call, relayed as it streams: text pieces, then the reply or the error.

        `live`: the call runs in its own task (the manager holds the slot while the task
        consumes the stream); pieces cross over through a queue. Closing this generator
        early cancels the call. Not `live`: the text is one piece, once the reply is whole.
        """
        if not live:
            try:
                reply = await self.model.complete(messages, tools, key=key, final=final)
            except Exception as exc:
                yield exc
                return
            if reply.text:
                yield reply.text
            yield reply
            return
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        task = asyncio.create_task(
            self.model.complete(messages, tools, key=key, on_text=queue.put_nowait, final=final)
        )
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (piece := await queue.get()) is not None:
                yield piece
            try:
                yield task.result()
            except Exception as exc:
                yield exc
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, timeout=5.0)

    async def _run_tools(
        self,
        calls: list[ToolCall],
        messages: list[dict[str, Any]],
        *,
        key: str,
        usage: dict[str, int],
    ) -> AsyncIterator[TurnEvent]:
        """Run one step's tool calls concurrently; results join `messages` in call order."""
        parsed: list[tuple[ToolCall, dict[str, Any] | None]] = []
        for call in calls:
            arguments = _parse_arguments(call.arguments)
            parsed.append((call, arguments))
            yield ToolStarted(call.id, self.toolbox.display_name(call.name), arguments or {})
        usage["tool_calls"] = usage.get("tool_calls", 0) + len(calls)

        async def run(index: int, call: ToolCall, arguments: dict[str, Any] | None) -> int:
            if arguments is None:
                tool = self.toolbox.display_name(call.name)
                outcomes[index] = ToolOutcome(
                    tool,
                    False,
                    f"ERROR: the arguments for {tool} were not a JSON object; it was not run.",
                    f"{tool} was not run: the model gave it arguments that were not valid.",
                )
            else:
                outcomes[index] = await self.toolbox.call(call.name, arguments, key=key)
            return index

        outcomes: dict[int, ToolOutcome] = {}
        tasks = [asyncio.create_task(run(i, c, a)) for i, (c, a) in enumerate(parsed)]
        try:
            for next_done in asyncio.as_completed(tasks):
                index = await next_done
                outcome = outcomes[index]
                yield ToolFinished(calls[index].id, outcome.tool, outcome.ok, outcome.summary)
        finally:
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for index, call in enumerate(calls):
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": outcomes[index].text}
            )


#: Text a message with files but no words of its own gets from its channel.
PLACEHOLDER_PREFIX = "(sent "

#: "draw a cat", "Draw me a lighthouse at dusk", "generate an image of ...": Livia draws.
_DRAW = re.compile(
    r"^\s*(?:please\s+)?(?:draw|sketch|paint|(?:generate|create|make)\s+(?:me\s+)?"
    r"(?:an?\s+)?(?:image|picture|drawing|illustration)\s+of)\s+(?:me\s+)?(?P<what>\S.*)",
    re.IGNORECASE | re.DOTALL,
)


def _assistant_message(reply: ModelReply) -> dict[str, Any]:
    """The assistant's tool-calling message, as it goes back to the model."""
    return {
        "role": "assistant",
        "content": reply.text or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"},
            }
            for call in reply.tool_calls
        ],
    }


def _alt(text: str) -> str:
    """`text` as a Markdown image's alt text (no brackets, one line, short)."""
    return re.sub(r"[\[\]\n\r]+", " ", text)[:120]


def _parse_arguments(raw: str) -> dict[str, Any] | None:
    """The call's arguments as a dict (empty for no arguments), or None when not valid JSON."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _add_usage(usage: dict[str, int], reply: ModelReply) -> None:
    usage["model_calls"] = usage.get("model_calls", 0) + 1
    if reply.usage is not None:
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            usage[name] = usage.get(name, 0) + int(getattr(reply.usage, name, 0) or 0)


def _short(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"[:300] if exc is not None else "unknown"
