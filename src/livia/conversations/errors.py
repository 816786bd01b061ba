"""What the conversations layer refuses, each with what to do about it."""

from __future__ import annotations


class ConversationError(Exception):
    """Base of the errors a channel turns into a message for the user."""


class Busy(ConversationError):
    """Too many messages are waiting; retry after `retry_after` seconds (HTTP: 503)."""

    def __init__(self, retry_after: float, queued: int) -> None:
        self.retry_after = max(1.0, float(retry_after))
        self.queued = queued
        super().__init__(
            f"Livia is busy ({queued} message{'' if queued == 1 else 's'} waiting); "
            f"please retry in {self.retry_after:.0f} s"
        )


class NotRunning(ConversationError):
    """The dispatcher is not started or is shutting down; accepted messages are kept."""

    def __init__(self, detail: str = "Livia is not running") -> None:
        super().__init__(f"{detail}; please retry shortly")


class UnknownConversation(ConversationError, LookupError):
    """No message of this conversation was ever accepted."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        super().__init__(f"unknown conversation {conversation_id!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class MessageIdConflict(ConversationError):
    """A message_id was reused for a different text in the same conversation."""

    def __init__(self, conversation_id: str, message_id: str) -> None:
        self.conversation_id = conversation_id
        self.message_id = message_id
        super().__init__(
            f"message_id {message_id!r} was already used in conversation {conversation_id!r} "
            "for a different text; use a new message_id for a new message"
        )
