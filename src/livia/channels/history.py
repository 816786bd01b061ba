"""Conversations on the server: list the caller's, read one, delete one; and `GET /v1/me`.

A user key sees only its user's conversations; anyone else's is absent (404, the same
body as a missing one). The operator and local callers see everyone's and may filter by
``?user_id=``. Times are ISO 8601 in UTC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from livia.channels.access import (
    FOREIGN_PREFIXES,
    act_as,
    authenticate,
    readable,
)
from livia.channels.errors import ApiError, errors, running_livia
from livia.conversations import UnknownConversation
from livia.identity import iso_time

if TYPE_CHECKING:
    from livia.store import ConversationInfo, StoredTurn

__all__ = ["history_json", "history_router"]


class ConversationSummary(BaseModel):
    """One conversation as listed."""

    conversation_id: str
    title: str = Field(description="The start of its first message")
    user_id: str = Field(description="Who started it (it belongs to them)")
    created_at: str
    updated_at: str
    messages: int = Field(description="How many messages were sent in it")


class ConversationList(BaseModel):
    """`GET /v1/conversations`: newest activity first."""

    conversations: list[ConversationSummary]


class HistoryMessage(BaseModel):
    """A question (role user) or its answer (role assistant)."""

    role: Literal["user", "assistant"]
    content: str
    message_id: str
    created_at: str = Field(description="When it was received (user) or answered (assistant)")
    user_id: str | None = Field(default=None, description="Who asked (user messages)")
    error: str | None = Field(default=None, description="Why the answer is an apology")


class ConversationHistory(BaseModel):
    """`GET /v1/conversations/{id}`: every message, oldest first."""

    conversation_id: str
    messages: list[HistoryMessage]
    pending: int = Field(description="Messages still waiting for their answer")


class Me(BaseModel):
    """`GET /v1/me`: who the credential of this request is."""

    auth: Literal["operator", "user", "local"] = Field(
        description="operator: [server] api_token; user: a user key; local: nothing "
        "configured, a request from this machine"
    )
    user_id: str | None = Field(description="The key's user (null: may act for any user)")
    key_id: str | None


def _summary(info: ConversationInfo) -> dict[str, Any]:
    return {
        "conversation_id": info.conversation_id,
        "title": info.title,
        "user_id": info.user_id,
        "created_at": iso_time(info.created_at),
        "updated_at": iso_time(info.updated_at),
        "messages": info.messages,
    }


def history_json(conversation_id: str, turns: list[StoredTurn]) -> dict[str, Any]:
    """The body of `GET /v1/conversations/{id}` for these turns."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        messages.append(
            {
                "role": "user",
                "content": turn.text,
                "message_id": turn.message_id,
                "user_id": turn.user_id,
                "created_at": iso_time(turn.received_at),
            }
        )
        if turn.done:
            messages.append(
                {
                    "role": "assistant",
                    "content": turn.reply or "",
                    "message_id": turn.message_id,
                    "error": turn.error,
                    "created_at": iso_time(turn.answered_at or turn.received_at),
                }
            )
    pending = sum(not t.done for t in turns)
    return {"conversation_id": conversation_id, "messages": messages, "pending": pending}


def history_router() -> APIRouter:
    """The conversation routes; they read `request.app.state.livia` per request."""
    router = APIRouter(tags=["conversations"])

    async def list_conversations(
        request: Request,
        user_id: str | None = Query(
            default=None,
            min_length=1,
            max_length=256,
            description="Only this user's (the operator, or a server without credentials); "
            "with a user key, the key's user or a 403",
        ),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> Response:
        principal = await authenticate(request)
        livia = running_livia(request)
        owner = act_as(principal, user_id, default="") or None
        found = await livia.store.list_user_conversations(
            user_id=owner, exclude_prefixes=FOREIGN_PREFIXES, limit=limit
        )
        return JSONResponse({"conversations": [_summary(info) for info in found]})

    router.add_api_route(
        "/v1/conversations",
        list_conversations,
        methods=["GET"],
        summary="The caller's conversations, newest first",
        response_model=ConversationList,
        responses=errors(401, 403, 422, 503),
    )
    router.add_api_route(
        "/v1/conversations/",
        list_conversations,
        methods=["GET"],
        include_in_schema=False,
    )

    @router.get(
        "/v1/conversations/{conversation_id:path}",
        summary="A conversation's history",
        response_model=ConversationHistory,
        responses=errors(401, 403, 404, 503),
    )
    async def conversation(conversation_id: str, request: Request) -> Response:
        principal = await authenticate(request)
        livia = running_livia(request)
        await readable(livia, principal, conversation_id)
        turns = await livia.conversations.turns(conversation_id)
        return JSONResponse(history_json(conversation_id, turns))

    @router.delete(
        "/v1/conversations/{conversation_id:path}",
        summary="Delete a conversation and its messages",
        status_code=204,
        response_class=Response,
        responses=errors(401, 403, 404, 409, 503),
    )
    async def delete_conversation(conversation_id: str, request: Request) -> Response:
        principal = await authenticate(request)
        livia = running_livia(request)
        await readable(livia, principal, conversation_id)
        outcome = await livia.store.delete_idle_conversation(conversation_id)
        if outcome == "missing":
            raise UnknownConversation(conversation_id)
        if outcome == "busy":
            raise ApiError(
                409,
                "conversation_busy",
                f"conversation {conversation_id!r} has a message waiting for its reply; "
                "delete it once the reply is there",
            )
        return Response(status_code=204)

    @router.get(
        "/v1/me",
        summary="Who this request's credential is",
        response_model=Me,
        responses=errors(401, 403, 503),
    )
    async def me(request: Request) -> Response:
        principal = await authenticate(request)
        return JSONResponse(
            {"auth": principal.kind, "user_id": principal.user_id, "key_id": principal.key_id}
        )

    return router
