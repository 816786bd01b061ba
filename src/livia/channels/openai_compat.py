"""The OpenAI-compatible API: `POST /v1/chat/completions` and `GET /v1/models`.

So the official `openai` SDKs and chat front-ends that speak it (Open WebUI, LibreChat, …)
can use Livia — her tools, limits and fairness included: every request goes through the
same dispatcher as `POST /v1/chat` (`Conversations.accept`), so ordering per conversation,
back-pressure (503 with Retry-After) and idempotency hold here too.

- One model, ``livia``.
- ``user`` names the user (with a user key: the key's user, or a 403 when it names
  another; the operator and local callers default to ``openai``).
- A conversation id from the ``X-Livia-Conversation`` header (or ``metadata.
  conversation_id``) continues that conversation on the server: only the last user message
  is new, the history is Livia's own. Without one the request is stateless: the earlier
  messages are the context (system messages are not used: Livia has her own) and the
  last user message is answered, in a conversation of its own (its id is in the
  response's ``X-Livia-Conversation`` header).
- ``Idempotency-Key`` is the message id: a repeat (with the same last message) returns
  the first reply without a second model call; a different message with the same key is
  a 409.
- ``stream: true``: ``chat.completion.chunk`` server-sent events, then ``data: [DONE]``;
  a failure mid-stream is one ``data: {"error": {...}}`` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette import ServerSentEvent

from livia.agent.events import TextDelta, TurnEvent
from livia.channels.access import act_as, authenticate, may_write
from livia.channels.errors import ApiError, errors, read_capped, running_livia
from livia.channels.http import (
    BoundedBuffer,
    _conversation_error,
    _describe,
    event_stream,
    printable_id,
    valid_unicode,
)
from livia.channels.schema import inline_json_schema
from livia.conversations import ConversationError, IncomingMessage, Reply, Ticket

if TYPE_CHECKING:
    from livia.app import Livia

__all__ = ["MODEL_ID", "openai_router"]

log = logging.getLogger(__name__)

#: The one model this API serves.
MODEL_ID = "livia"
#: The user of requests that name none (operator or local callers).
DEFAULT_USER = "openai"
#: Conversation ids of stateless requests start with this.
STATELESS_PREFIX = "oai-"
#: Header naming the conversation (request) / the conversation used (response).
CONVERSATION_HEADER = "X-Livia-Conversation"
#: Seconds one write to a stream may wait for the client before it is dropped.
_PING_SECONDS = 15
_BODY_SLACK = 64 * 1024


class ChatCompletionMessage(BaseModel):
    """One message of the request: ``content`` is text or a list of parts (text used)."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(BaseModel):
    """The body of `POST /v1/chat/completions` (other OpenAI fields are accepted, unused)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description=f'Always "{MODEL_ID}"')
    messages: list[ChatCompletionMessage] = Field(min_length=1)
    stream: bool = False
    user: str | None = Field(default=None, min_length=1, max_length=256)
    metadata: dict[str, Any] | None = Field(
        default=None, description="metadata.conversation_id: like the X-Livia-Conversation header"
    )
    stream_options: dict[str, Any] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class LiviaDetails(BaseModel):
    """Livia's own fields: where the exchange is stored."""

    conversation_id: str
    message_id: str
    duplicate: bool = Field(description="True when this is the stored reply to a repeat")
    error: str | None = Field(description="Why the reply is an apology (e.g. model_unreachable)")


class ChatCompletion(BaseModel):
    """The answer of `POST /v1/chat/completions` without ``stream``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = MODEL_ID
    choices: list[Choice]
    usage: Usage
    livia: LiviaDetails


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "livia"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class _Prepared(BaseModel):
    """A request turned into one message for the dispatcher."""

    conversation_id: str
    message_id: str
    user_id: str
    text: str
    prior: list[dict[str, str]]
    stream: bool
    include_usage: bool


def _text(message: ChatCompletionMessage, *, strict: bool) -> str:
    """The text of a message; with `strict`, a non-text part is a 422."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif strict:
            kind = part.get("type", "unknown")
            raise ApiError(
                422,
                "invalid_request",
                f"messages[-1].content: parts of type {kind!r} are not supported here; "
                "send text (files go to POST /v1/chat)",
            )
    return "\n".join(pieces)


def _checked_id(name: str, value: str) -> str:
    if not value or len(value) > 256:
        raise ApiError(422, "invalid_request", f"{name}: must be 1 to 256 characters")
    try:
        return printable_id(value)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"{name}: {exc}") from None


def _parse(body: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body is nested too deeply") from None
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _describe(exc)) from None


async def _prepare(
    request: Request, livia: Livia, req: ChatCompletionRequest, user_id: str
) -> _Prepared:
    """Where the message goes and what it says, from the body and the headers."""
    if req.model != MODEL_ID:
        raise ApiError(
            404, "model_not_found", f"no model {req.model!r}: the only model is {MODEL_ID!r}"
        )
    *earlier, last = req.messages
    text = _text(last, strict=True)
    if last.role != "user" or not text.strip():
        raise ApiError(
            422, "invalid_request", "messages: the last message must be a user message with text"
        )
    limit = livia.settings.server.max_text_bytes
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ApiError(
            413,
            "text_too_large",
            f"the last message is {size} bytes; the limit is {limit} ([server] max_text_bytes)",
        )
    prior = []
    for i, message in enumerate(earlier):
        content = _text(message, strict=False)
        if message.role in ("user", "assistant") and content.strip():
            prior.append({"role": message.role, "content": content})
        for checked in (content, message.role):
            try:
                valid_unicode(checked)
            except ValueError as exc:
                raise ApiError(422, "invalid_request", f"messages.{i}: {exc}") from None
    try:
        valid_unicode(text)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"messages.{len(earlier)}: {exc}") from None
    metadata = req.metadata or {}
    named = request.headers.get(CONVERSATION_HEADER) or metadata.get("conversation_id")
    if named is not None and not isinstance(named, str):
        raise ApiError(422, "invalid_request", "metadata.conversation_id: must be a string")
    key = request.headers.get("idempotency-key")
    if key is not None:
        key = _checked_id("Idempotency-Key", key)
    if named:
        conversation_id = _checked_id(CONVERSATION_HEADER, named)
        stored = await livia.store.conversation(conversation_id)
        if stored is not None and stored.messages > 0:
            prior = []  # the conversation's own history is the context
    elif key is not None:  # a repeat must land in the same conversation
        digest = hashlib.sha256(f"{user_id}\0{key}".encode()).hexdigest()[:32]
        conversation_id = STATELESS_PREFIX + digest
    else:
        conversation_id = STATELESS_PREFIX + uuid.uuid4().hex
    options = req.stream_options or {}
    return _Prepared(
        conversation_id=conversation_id,
        message_id=key or uuid.uuid4().hex,
        user_id=user_id,
        text=text,
        prior=prior,
        stream=req.stream,
        include_usage=bool(options.get("include_usage")),
    )


def _completion_id(conversation_id: str, message_id: str) -> str:
    """The same id for the same message (so a repeat's answer is the first one)."""
    digest = hashlib.sha256(f"{conversation_id}\0{message_id}".encode()).hexdigest()[:29]
    return f"chatcmpl-{digest}"


class _TextBuffer(BoundedBuffer[str]):
    """The reply text a stream has not sent yet; past the limit the rest comes from the
    stored reply (what is held is still sent)."""

    async def put(self, event: TurnEvent) -> None:
        if isinstance(event, TextDelta) and event.text:
            self.hold(event.text, len(event.text.encode("utf-8", "surrogatepass")))

    def drain(self) -> str:
        return "".join(self.take())


def _error_payload(exc: BaseException, prepared: _Prepared) -> dict[str, Any]:
    if isinstance(exc, ConversationError):
        err = _conversation_error(exc)
        return {"error": {"type": err.type, "message": err.message}}
    return {
        "error": {
            "type": "timeout",
            "message": "the reply is taking too long; it will be in the conversation's "
            f"history: GET /v1/conversations/{prepared.conversation_id}",
        }
    }


async def _chunks(
    ticket: Ticket, buffer: _TextBuffer, prepared: _Prepared, created: int
) -> AsyncIterator[ServerSentEvent]:
    """The reply as ``chat.completion.chunk`` events, then ``[DONE]``."""
    base = {
        "id": _completion_id(prepared.conversation_id, prepared.message_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_ID,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> ServerSentEvent:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return ServerSentEvent(json.dumps({**base, "choices": [choice]}))

    yield chunk({"role": "assistant", "content": ""})
    sent: list[str] = []
    reply_task = asyncio.ensure_future(ticket.wait())
    try:
        while not reply_task.done():
            waiter = asyncio.ensure_future(buffer.wait())
            await asyncio.wait({waiter, reply_task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if text := buffer.drain():
                sent.append(text)
                yield chunk({"content": text})
        if text := buffer.drain():
            sent.append(text)
            yield chunk({"content": text})
        try:
            reply: Reply = reply_task.result()
        except (TimeoutError, ConversationError) as exc:
            yield ServerSentEvent(json.dumps(_error_payload(exc, prepared)))
            return
        so_far = "".join(sent)
        if reply.text.startswith(so_far) and len(reply.text) > len(so_far):
            yield chunk({"content": reply.text[len(so_far) :]})  # a repeat, or a slow reader
        yield chunk({}, "stop")
        if prepared.include_usage:
            usage = Usage().model_dump()
            yield ServerSentEvent(json.dumps({**base, "choices": [], "usage": usage}))
        yield ServerSentEvent("[DONE]")
    finally:
        if not reply_task.done():
            reply_task.cancel()


def openai_router() -> APIRouter:
    """The OpenAI-compatible routes; they read `request.app.state.livia` per request."""
    router = APIRouter(tags=["openai"])

    @router.get(
        "/v1/models",
        summary="The models (OpenAI-compatible): one, livia",
        response_model=ModelList,
        responses=errors(401, 403, 503),
    )
    async def models(request: Request) -> Response:
        await authenticate(request)
        return JSONResponse({"object": "list", "data": [_model(request)]})

    @router.get(
        "/v1/models/{model_id}",
        summary="One model (OpenAI-compatible)",
        response_model=Model,
        responses=errors(401, 403, 404, 503),
    )
    async def model(model_id: str, request: Request) -> Response:
        await authenticate(request)
        if model_id != MODEL_ID:
            raise ApiError(404, "model_not_found", f"no model {model_id!r}: the only one is livia")
        return JSONResponse(_model(request))

    @router.post(
        "/v1/chat/completions",
        summary="Chat completions (OpenAI-compatible), streamed or not",
        response_model=ChatCompletion,
        responses={
            200: {
                "content": {
                    "text/event-stream": {
                        "schema": {
                            "type": "object",
                            "description": "chat.completion.chunk events, then data: [DONE]",
                            "properties": {
                                "event": {"type": "string"},
                                "data": {"type": "string"},
                                "id": {"type": "string"},
                            },
                            "required": ["data"],
                        }
                    }
                },
                "headers": {
                    CONVERSATION_HEADER: {
                        "description": "The conversation the exchange is stored in",
                        "schema": {"type": "string"},
                    }
                },
            },
            **errors(400, 401, 403, 404, 409, 413, 415, 422, 503, 504),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": inline_json_schema(ChatCompletionRequest)}
                },
            },
            "parameters": [
                {
                    "name": CONVERSATION_HEADER,
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 256},
                    "description": "Continue this conversation (its history is the context)",
                },
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 256},
                    "description": "A repeat returns the first reply, without a model call",
                },
            ],
        },
    )
    async def completions(request: Request) -> Response:
        principal = await authenticate(request)  # before the body is read
        livia = running_livia(request)
        limit = livia.settings.server.max_text_bytes
        req = _parse(await read_capped(request, limit * 32 + _BODY_SLACK))
        user_id = act_as(principal, req.user, default=DEFAULT_USER)
        _checked_id("user", user_id)
        prepared = await _prepare(request, livia, req, user_id)
        await may_write(
            livia, principal, prepared.conversation_id, user_id, "openai", prepared.text
        )
        msg = IncomingMessage(
            conversation_id=prepared.conversation_id,
            user_id=user_id,
            text=prepared.text,
            message_id=prepared.message_id,
            channel="openai",
            meta={"prior_history": prepared.prior} if prepared.prior else {},
        )
        log.info(
            "openai message conversation_id=%s message_id=%s user_id=%s bytes=%d stream=%s"
            " prior=%d",
            msg.conversation_id,
            msg.message_id,
            msg.user_id,
            len(msg.text.encode("utf-8", "surrogatepass")),
            prepared.stream,
            len(prepared.prior),
        )
        headers = {CONVERSATION_HEADER: prepared.conversation_id}
        if prepared.stream:
            buffer = _TextBuffer()
            ticket = await livia.conversations.accept(msg, on_event=buffer.put)
            created = await _created(livia, ticket)
            return event_stream(
                _chunks(ticket, buffer, prepared, created),
                livia.settings.server.stream_send_timeout,
                headers,
            )
        ticket = await livia.conversations.accept(msg)
        try:
            reply = await ticket.wait()
        except TimeoutError:
            payload = _error_payload(TimeoutError(), prepared)["error"]
            raise ApiError(504, payload["type"], payload["message"], headers) from None
        created = await _created(livia, ticket)
        body = ChatCompletion(
            id=_completion_id(reply.conversation_id, reply.message_id),
            created=created,
            choices=[Choice(message=AssistantMessage(content=reply.text))],
            usage=Usage(),
            livia=LiviaDetails(
                conversation_id=reply.conversation_id,
                message_id=reply.message_id,
                duplicate=reply.duplicate,
                error=reply.error,
            ),
        )
        return JSONResponse(body.model_dump(), headers=headers)

    return router


def _model(request: Request) -> dict[str, Any]:
    livia = running_livia(request)
    return Model(id=MODEL_ID, created=int(livia.started_at)).model_dump()


async def _created(livia: Livia, ticket: Ticket) -> int:
    """When the message was received (the same for a repeat), in epoch seconds."""
    message = ticket.message
    turn = await livia.store.get(message.conversation_id, message.message_id)
    return int(turn.received_at) if turn is not None else int(time.time())
