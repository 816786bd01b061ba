"""What one turn of the agent emits, in order, for channels to render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply text, in order."""

    text: str
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ToolStarted:
    """The model asked for a tool; the call is under way."""

    call_id: str
    tool: str  # namespaced: "server.tool"
    arguments: dict[str, Any] = field(default_factory=dict)
    kind: Literal["tool_started"] = "tool_started"


@dataclass(frozen=True, slots=True)
class ToolFinished:
    """A tool call ended; `ok` is False when it failed, timed out or is out of quota."""

    call_id: str
    tool: str
    ok: bool
    summary: str = ""
    kind: Literal["tool_finished"] = "tool_finished"


@dataclass(frozen=True, slots=True)
class TurnDone:
    """The turn is over. `text` is the whole reply (an honest apology when `error` is set)."""

    text: str
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    kind: Literal["done"] = "done"


@dataclass(frozen=True, slots=True)
class Status:
    """Progress a person should see while nothing else happens: an upstream call waits for
    capacity (`state` "waiting") or sleeps before a retry ("retrying", `retry_in` s)."""

    state: str
    upstream: str
    attempt: int = 1
    retry_in: float | None = None
    reason: str | None = None
    kind: Literal["status"] = "status"


TurnEvent = TextDelta | ToolStarted | ToolFinished | TurnDone | Status
