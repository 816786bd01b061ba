"""The data that crosses the conversations layer: messages in, replies out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from livia.agent.events import TurnEvent


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One entry of a conversation's history, in the model's roles."""

    role: str  # "user" | "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message a channel accepted: answered once, in order within its conversation."""

    conversation_id: str
    user_id: str
    text: str
    message_id: str
    channel: str = "http"  # "http" | "slack" | ...
    #: Channel data needed to deliver the reply later (Slack channel and thread ts, ...).
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one message."""

    conversation_id: str
    message_id: str
    text: str
    error: str | None = None
    duplicate: bool = False  # True when this is the stored reply to a repeated message_id


class Responder(Protocol):
    """What answers one turn (the agent): history so far plus the new text -> events.

    It may get two more keywords: ``files``, the message's file references, when it has
    some; and, only if its `respond` declares it, ``stream=False`` when nobody reads the
    reply as it is written (its text may then come in fewer, larger deltas).
    """

    def respond(
        self, history: Sequence[ChatMessage], text: str, *, key: str
    ) -> AsyncIterator[TurnEvent]: ...


#: Called with each event of a turn as it happens (streaming to a channel).
EventSink = Callable[[TurnEvent], Awaitable[None]]


class ReplyDelivery(Protocol):
    """A channel's way to deliver a reply whose original requester is gone (after restart)."""

    async def deliver(self, message: IncomingMessage, reply: Reply) -> None: ...
