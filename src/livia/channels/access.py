"""Who may do what over HTTP: the caller of a request, and whose conversations they reach.

OWASP API1 (broken object-level authorisation) is the bar: a user key acts as its user
alone (naming another ``user_id`` is a 403); a conversation belongs to the user who
started it, and to everyone else it is absent (404, the same body as a missing one) for
reading, writing and deleting. The operator (`[server] api_token`) and, when nothing is
configured, callers on this machine may act for anyone. ``slack:`` conversations belong to
the Slack channel alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from livia.channels.errors import ApiError, running_livia
from livia.conversations import UnknownConversation
from livia.identity import Identity, Principal, Unauthenticated

if TYPE_CHECKING:
    from livia.app import Livia

__all__ = ["FOREIGN_PREFIXES", "act_as", "authenticate", "foreign_prefix", "may_write", "readable"]

#: Conversation-id prefixes owned by other channels: the HTTP API neither reads nor writes
#: them (a Slack thread is answered only for what was said in Slack).
FOREIGN_PREFIXES = ("slack:",)


def foreign_prefix(conversation_id: str) -> str | None:
    """The prefix of another channel's namespace that `conversation_id` is in (whatever
    its case), or None when the HTTP API may use it."""
    lowered = conversation_id.lower()
    return next((p for p in FOREIGN_PREFIXES if lowered.startswith(p)), None)


def identity_of(livia: Livia) -> Identity:
    """The running Livia's `Identity` (built on first use)."""
    found: Identity | None = getattr(livia, "identity", None)
    if found is None:
        token = livia.settings.server.api_token.get_secret_value()
        found = Identity(livia.store, token)
        livia.identity = found
    return found


async def authenticate(request: Request) -> Principal:
    """The caller of `request`; a 401 (or 403 local-only) `ApiError` when it may not call."""
    livia = running_livia(request)
    peer = request.client.host if request.client is not None else None
    try:
        return await identity_of(livia).principal(request.headers.get("authorization"), peer)
    except Unauthenticated as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        raise ApiError(exc.status, exc.type, exc.message, headers) from None


def act_as(principal: Principal, requested: str | None, *, default: str | None = None) -> str:
    """The user a request acts as: the key's user, or (operator, local) the one it names.

    A key naming another user is a 403; the operator or a local caller naming nobody gets
    `default`, or a 422 when there is none.
    """
    if principal.user_id is not None:
        if requested is not None and requested != principal.user_id:
            raise ApiError(
                403,
                "forbidden",
                f"this key belongs to user {principal.user_id!r} and cannot act as "
                f"{requested!r} (leave user_id out, or use the operator's api_token)",
            )
        return principal.user_id
    if requested is not None:
        return requested
    if default is not None:
        return default
    raise ApiError(422, "invalid_request", "user_id: Field required")


async def readable(livia: Livia, principal: Principal, conversation_id: str) -> None:
    """Raise `UnknownConversation` (404) unless `principal` may read the conversation."""
    if foreign_prefix(conversation_id) is not None:  # another channel's: as if absent
        raise UnknownConversation(conversation_id)
    if principal.any_user:
        return
    info = await livia.store.conversation(conversation_id)
    if info is None or not principal.may_use(info.user_id):
        raise UnknownConversation(conversation_id)


async def may_write(
    livia: Livia, principal: Principal, conversation_id: str, user_id: str, channel: str, text: str
) -> None:
    """Check that `principal` may add a message to the conversation, starting it (as
    `user_id`'s) when it is new; `UnknownConversation` (404) when it is someone else's.

    A user's new conversation is reserved atomically before its first message is
    accepted, so two users racing for one id cannot both write into it.
    """
    if (prefix := foreign_prefix(conversation_id)) is not None:
        raise ApiError(
            403,
            "forbidden",
            f"conversation ids starting with {prefix!r} belong to that channel; the HTTP API "
            "cannot write into them (use another conversation_id)",
        )
    if principal.any_user:
        return
    owner = await livia.store.reserve_conversation(conversation_id, user_id, channel, text)
    if not principal.may_use(owner):
        raise UnknownConversation(conversation_id)
