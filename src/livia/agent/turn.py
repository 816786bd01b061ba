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
from collections.abc import AsyncIterator, Sequence
from typing import Any

from openai import AsyncOpenAI

from livia.agent.events import TextDelta, ToolFinished, ToolStarted, TurnDone, TurnEvent
from livia.agent.failures import model_failure
from livia.agent.model import ModelClient, ModelReply, ToolCall, make_openai_client
from livia.agent.prompts import build_messages, system_prompt
from livia.agent.toolbox import Toolbox, ToolOutcome
from livia.concurrency import ConcurrencyManager
from livia.config import Settings
from livia.conversations.types import ChatMessage

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
        self.model = ModelClient(settings.llm, manager, self.client)
        self.toolbox = toolbox or Toolbox(settings.mcp, manager)

    async def start(self, wait: float = 10.0) -> None:
        """Connect the tool servers in the background (waiting at most `wait` s for them)."""
        await self.toolbox.start(wait=wait)

    async def aclose(self) -> None:
        """Close the tool sessions and the model client (if this agent created it)."""
        await self.toolbox.aclose()
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
        self, history: Sequence[ChatMessage], text: str, *, key: str
    ) -> AsyncIterator[TurnEvent]:
        """Answer `text` given `history`, streaming events (see the module doc for the order)."""
        llm = self.settings.llm
        messages = build_messages(
            system_prompt(llm.system_prompt), history, text, budget=llm.history_tokens
        )
        reply_text = ""
        usage: dict[str, int] = {}
        for step in range(llm.max_steps):
            final = step == llm.max_steps - 1
            tools = self.toolbox.openai_tools()
            reply: ModelReply | None = None
            failure: BaseException | None = None
            separated = not reply_text or reply_text[-1].isspace()
            async for piece in self._model_step(messages, tools, key=key, final=final):
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

    async def answer(self, history: Sequence[ChatMessage], text: str, *, key: str) -> TurnDone:
        """Run a whole turn and return its `TurnDone` (for callers that do not stream)."""
        done = TurnDone("", error="internal")
        async for event in self.respond(history, text, key=key):
            if isinstance(event, TurnDone):
                done = event
        return done

    async def _model_step(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, key: str, final: bool
    ) -> AsyncIterator[str | ModelReply | BaseException]:
        """One model call, relayed as it streams: text pieces, then the reply or the error.

        The call runs in its own task (the manager holds the slot while the task consumes
        the stream); pieces cross over through a queue. Closing this generator early
        cancels the call.
        """
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
