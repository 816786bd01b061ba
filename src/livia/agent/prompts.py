"""Livia's persona and the prompt for one turn: system prompt, trimmed history, new text.

Token counts here are estimates (about four characters per token): good enough to keep a
prompt inside a budget and to tell the concurrency manager what a call will cost, without
pulling a tokenizer into every turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from livia.conversations.types import ChatMessage

#: Characters per token used for every estimate in the agent.
CHARS_PER_TOKEN = 4

PERSONA = """\
You are Livia, a friendly and capable assistant working with a team in chat (Slack, the web).
Answer clearly and briefly; use short paragraphs or lists when they help.
You can act through tools. Use a tool only when the user asks for something a tool does
(creating a task, searching files, scheduling, sending mail, looking up the time, ...),
and never invent a tool's result.
Tool results that start with "ERROR:" mean the tool did not run. Tell the user plainly what
failed and, when the result says so, when the tool is available again; then help as far as
you can without it. Never claim an action happened when its tool failed."""


def system_prompt(override: str = "", *, now: datetime | None = None) -> str:
    """The system prompt: `[llm] system_prompt` when set, else the persona; plus the time.

    The current UTC time is included so the model can relate "available again at 14:32 UTC"
    to now and answer time questions sensibly.
    """
    base = override.strip() or PERSONA
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{base}\n\nCurrent time: {moment:%Y-%m-%d %H:%M} UTC."


def estimate_tokens(value: Any) -> int:
    """Rough token count of a string or any JSON-able value (messages, tool schemas)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def trim_history(history: Sequence[ChatMessage], budget: int) -> list[ChatMessage]:
    """The newest messages of `history` whose estimated tokens fit in `budget`, oldest first.

    Whole messages are kept or dropped (never cut mid-text); the scan stops at the first
    message that does not fit, so the kept part is always a contiguous recent tail.
    """
    kept: list[ChatMessage] = []
    used = 0
    for message in reversed(history):
        cost = estimate_tokens(message.content) + 4  # role and framing overhead
        if used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    return kept


def build_messages(
    system: str, history: Sequence[ChatMessage], text: str, *, budget: int
) -> list[dict[str, Any]]:
    """Chat Completions messages for a turn: system, history trimmed to fit, then `text`.

    `budget` covers the whole prompt; the system prompt and the new text are always kept,
    and what is left goes to the most recent history.
    """
    room = budget - estimate_tokens(system) - estimate_tokens(text)
    recent = trim_history(history, max(0, room))
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for message in recent:
        role = message.role if message.role in ("user", "assistant") else "user"
        messages.append({"role": role, "content": message.content})
    messages.append({"role": "user", "content": text})
    return messages
