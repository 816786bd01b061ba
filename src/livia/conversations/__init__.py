"""Conversations: ordered, bounded, idempotent and durable answering of channel messages."""

from livia.conversations.dispatcher import Conversations, Ticket
from livia.conversations.errors import (
    Busy,
    ConversationError,
    MessageIdConflict,
    NotRunning,
    UnknownConversation,
)
from livia.conversations.types import (
    ChatMessage,
    EventSink,
    IncomingMessage,
    Reply,
    ReplyDelivery,
    Responder,
)

__all__ = [
    "Busy",
    "ChatMessage",
    "ConversationError",
    "Conversations",
    "EventSink",
    "IncomingMessage",
    "MessageIdConflict",
    "NotRunning",
    "Reply",
    "ReplyDelivery",
    "Responder",
    "Ticket",
    "UnknownConversation",
]
