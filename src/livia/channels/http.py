"""The HTTP channel: `POST /v1/chat` (JSON or server-sent events), history, health, errors.

Every error a client sees is JSON ``{"error": {"type", "message"}}`` with a fitting
status; a stack trace never leaves the process (it is logged instead).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from livia import __version__
from livia.agent.events import TurnDone, TurnEvent
from livia.channels.access import act_as, authenticate, may_write
from livia.channels.errors import ApiError, error_response, errors, running_livia
from livia.channels.schema import inline_json_schema
from livia.channels.uploads import (
    MULTIPART_SCHEMA,
    Attachment,
    body_room,
    decode,
    read_json_body,
    read_multipart,
    spool,
)
from livia.conversations import (
    Busy,
    ConversationError,
    IncomingMessage,
    MessageIdConflict,
    NotRunning,
    Reply,
    Ticket,
    UnknownConversation,
)
from livia.store import StoreError

if TYPE_CHECKING:
    from livia.app import Livia

log = logging.getLogger(__name__)

#: Room in a request body for the ids and JSON escaping, beyond the text itself.
_BODY_SLACK = 64 * 1024
#: Seconds between keep-alive comments on an event stream.
_PING_SECONDS = 15


class ChatRequest(BaseModel):
    """The body of `POST /v1/chat`."""

    model_config = ConfigDict(strict=True, extra="ignore")

    conversation_id: str = Field(min_length=1, max_length=256)
    user_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Who speaks. Required, except with a user key: then the key's user "
        "(naming another user is a 403).",
    )
    text: str = Field(default="", description="What the user says (may be empty with files)")
    attachments: list[Attachment] = Field(
        default_factory=list,
        description="Files (images, audio, documents); or send multipart with `file` fields",
    )
    message_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Idempotency: a repeat returns the stored reply without a second model call",
    )
    stream: bool = Field(
        default=False, description="Stream the reply as server-sent events (like Accept)"
    )

    #: Files a multipart request carried (its fields are parsed as this model).
    attachments_count: SkipJsonSchema[int] = Field(default=0, exclude=True)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return valid_unicode(value)

    @model_validator(mode="after")
    def _says_something(self) -> ChatRequest:
        files = len(self.attachments) + self.attachments_count
        if not self.text.strip():
            if not files:
                raise ValueError("text must not be empty (send text, files, or both)")
            self.text = f"(sent {files} file{'s' if files != 1 else ''})"
        return self

    @field_validator("conversation_id", "user_id", "message_id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        return printable_id(value) if value is not None else None


class _NamedChatRequest(ChatRequest):
    """`ChatRequest` from a caller that may act for anyone: it must name the user."""

    user_id: str = Field(min_length=1, max_length=256)


class InfoReply(BaseModel):
    """`GET /v1/info`: what this Livia runs on."""

    version: str
    demo: bool
    notice: str | None
    model: str
    tools: list[str]
    slack: str


class ChatReply(BaseModel):
    """The answer of `POST /v1/chat` (the ``done`` event of a stream carries the same)."""

    conversation_id: str
    message_id: str
    reply: str
    error: str | None = Field(description="Why the reply is an apology (e.g. model_unreachable)")
    duplicate: bool = Field(description="True when this is the stored reply to a repeat")


#: Characters an id may not hold: C0/C1 controls (CR, LF, NUL…), DEL, the Unicode line and
#: paragraph separators, and lone surrogates (not Unicode at all).
_BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def printable_id(value: str) -> str:
    """`value` when it holds no control character (they would forge log lines); else a
    ValueError (422)."""
    if (bad := _BAD_ID_CHAR.search(value)) is not None:
        raise ValueError(f"must not contain control characters (found U+{ord(bad.group()):04X})")
    return value


def valid_unicode(value: str) -> str:
    """`value` when it is valid Unicode (JSON's ``\\ud800`` escapes can make a lone
    surrogate, which no encoder accepts); else a ValueError (422)."""
    if _SURROGATE.search(value) is not None:
        raise ValueError("must be valid Unicode (it holds an unpaired surrogate)")
    return value


def _reply_json(reply: Reply) -> dict[str, Any]:
    return {
        "conversation_id": reply.conversation_id,
        "message_id": reply.message_id,
        "reply": reply.text,
        "error": reply.error,
        "duplicate": reply.duplicate,
    }


def _parse_chat(body: bytes, max_text_bytes: int, *, named: bool = True) -> ChatRequest:
    """The request in `body`; `named`: the caller may act for anyone, so user_id is required."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body is nested too deeply") from None
    try:
        req = (_NamedChatRequest if named else ChatRequest).model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _describe(exc)) from None
    size = len(req.text.encode("utf-8"))
    if size > max_text_bytes:
        raise ApiError(
            413,
            "text_too_large",
            f"text is {size} bytes; the limit is {max_text_bytes} ([server] max_text_bytes)",
        )
    return req


def _describe(exc: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts) or "invalid request"


def _multipart_schema() -> dict[str, Any]:
    """The multipart form of `POST /v1/chat`: the JSON body's fields (same constraints),
    with files as repeated ``file`` parts instead of base64 ``attachments``."""
    fields = inline_json_schema(ChatRequest)["properties"]
    fields.pop("attachments", None)
    props = {
        **MULTIPART_SCHEMA["properties"],
        **fields,
        "file": MULTIPART_SCHEMA["properties"]["file"],
    }
    return {**MULTIPART_SCHEMA, "properties": props}


def api_router() -> APIRouter:
    """The chat API and health endpoints; they read `request.app.state.livia` per request."""
    router = APIRouter()

    @router.post(
        "/v1/chat",
        summary="Send a message; get the reply (JSON or event stream)",
        response_model=ChatReply,
        responses={
            200: {
                "content": {
                    "text/event-stream": {
                        "schema": {
                            "type": "object",
                            "description": "events delta, tool_started, tool_finished, then "
                            "done (a ChatReply) or error (an ErrorBody)",
                            "properties": {
                                "event": {
                                    "type": "string",
                                    "enum": [
                                        "delta",
                                        "tool_started",
                                        "tool_finished",
                                        "status",
                                        "done",
                                        "error",
                                    ],
                                },
                                "data": {"type": "string"},
                                "id": {"type": "string"},
                            },
                            "required": ["data"],
                        }
                    }
                }
            },
            **errors(400, 401, 403, 404, 409, 413, 415, 422, 503, 504),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": inline_json_schema(ChatRequest)},
                    "multipart/form-data": {"schema": _multipart_schema()},
                },
            }
        },
    )
    async def chat(request: Request) -> Response:
        principal = await authenticate(request)  # before the body is read
        livia = running_livia(request)
        limit = livia.settings.server.max_text_bytes
        uploads = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            body, uploads = await read_multipart(request, livia.settings.files)
        else:
            room = body_room(livia.settings.files)
            body = await read_json_body(request, limit * 6 + _BODY_SLACK, room)
        req = _parse_chat(body, limit, named=principal.user_id is None)
        user_id = act_as(principal, req.user_id)
        await may_write(livia, principal, req.conversation_id, user_id, "http", req.text)
        if uploads is None:
            uploads = decode(req.attachments, livia.settings.files)
        files = await spool(livia, uploads)
        msg = IncomingMessage(
            conversation_id=req.conversation_id,
            user_id=user_id,
            text=req.text,
            message_id=req.message_id or uuid.uuid4().hex,
            channel="http",
            meta={"files": files} if files else {},
        )
        stream = req.stream or "text/event-stream" in request.headers.get("accept", "")
        log.info(
            "http message conversation_id=%s message_id=%s user_id=%s bytes=%d stream=%s",
            msg.conversation_id,
            msg.message_id,
            msg.user_id,
            len(msg.text.encode()),
            stream,
        )
        if stream:
            queue = StreamBuffer()
            ticket = await livia.conversations.accept(msg, on_event=queue.put)
            return event_stream(_events(ticket, queue), livia.settings.server.stream_send_timeout)
        ticket = await livia.conversations.accept(msg)
        try:
            reply = await ticket.wait()
        except TimeoutError:
            raise _still_working(msg) from None
        log.info(
            "http reply conversation_id=%s message_id=%s duplicate=%s error=%s",
            reply.conversation_id,
            reply.message_id,
            reply.duplicate,
            reply.error,
        )
        return JSONResponse(_reply_json(reply))

    @router.get(
        "/v1/info",
        summary="What this Livia runs on",
        response_model=InfoReply,
        responses=errors(401, 403, 503),
    )
    async def info(request: Request) -> Response:
        await authenticate(request)
        livia = running_livia(request)
        return JSONResponse(
            {
                "version": __version__,
                "demo": livia.demo,
                "notice": livia.notice,
                "model": livia.settings.llm.model,
                "tools": list(livia.agent.tools),
                "slack": livia.settings.slack.mode,
            }
        )

    @router.get("/healthz", summary="Liveness (open, no token)")
    async def healthz(request: Request) -> Response:
        livia: Livia | None = getattr(request.app.state, "livia", None)
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "instance": livia.instance_id if livia else None,
                "demo": bool(livia and livia.demo),
                "notice": livia.notice if livia else None,
            }
        )

    @router.get("/readyz", summary="Readiness: the store is open and messages are answered")
    async def readyz(request: Request) -> Response:
        livia: Livia | None = getattr(request.app.state, "livia", None)
        checks = {
            "store": bool(livia and livia.store.is_open and livia.conversations.store_ok),
            "conversations": bool(livia and livia.conversations.running),
        }
        if all(checks.values()):
            return JSONResponse({"ready": True, "checks": checks})
        failing = ", ".join(name for name, ok in checks.items() if not ok)
        return JSONResponse(
            {
                "ready": False,
                "checks": checks,
                "error": {"type": "not_ready", "message": f"not ready: {failing}"},
            },
            status_code=503,
        )

    return router


def _still_working(msg: IncomingMessage) -> ApiError:
    return ApiError(
        504,
        "timeout",
        "the reply is taking too long; it will be in the conversation's history: "
        f"GET /v1/conversations/{msg.conversation_id}",
    )


def _event_json(event: TurnEvent) -> str:
    data = dataclasses.asdict(event)
    data.pop("kind", None)
    return json.dumps(data)


#: Bytes of events a stream may hold for a client that reads slower than the turn
#: produces them; past it the stream's deltas are dropped (the ``done`` event still
#: carries the whole reply).
STREAM_BUFFER_BYTES = 256 * 1024
#: Seconds one write to an event stream may wait for the client to read; a client that
#: does not drain within it is disconnected (its reply stays in the history).
STREAM_SEND_TIMEOUT = 30.0

T = TypeVar("T")


class BoundedBuffer(Generic[T]):
    """What a stream has not sent yet, at most `limit` bytes; holding never blocks the turn.

    Invariant: the items held take at most `limit` bytes. An item that would pass the limit
    is not held and marks the buffer `overflowed` (for good): the stream then ends with the
    stored reply instead.
    """

    def __init__(self, limit: int = STREAM_BUFFER_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self.overflowed = False
        self._items: collections.deque[T] = collections.deque()
        self._ready = asyncio.Event()

    def hold(self, item: T, size: int) -> bool:
        """Hold `item` of `size` bytes; False (and `overflowed`) when it does not fit."""
        if self.overflowed:
            return False
        if self.size + size > self.limit:
            self.overflowed = True
            self._ready.set()
            return False
        self._items.append(item)
        self.size += size
        self._ready.set()
        return True

    def take(self) -> list[T]:
        """The items held, oldest first (the buffer is then empty)."""
        items = list(self._items)
        self._items.clear()
        self.size = 0
        self._ready.clear()
        return items

    async def wait(self) -> None:
        """Until an item is held (or the buffer overflowed)."""
        await self._ready.wait()


class StreamBuffer(BoundedBuffer[tuple[str, str]]):
    """One event stream's pending events (name, JSON), as sent.

    An event that would pass the limit drops what is held, and `put` raises so the turn
    stops sending events to this stream (the reply is still stored, and sent in ``done``).
    """

    async def put(self, event: TurnEvent) -> None:
        """Hold `event` for the stream (a `TurnDone` is not sent: ``done`` is the stored reply)."""
        if isinstance(event, TurnDone) or self.overflowed:
            return
        data = _event_json(event)
        if not self.hold((_EVENT_NAMES[event.kind], data), len(data)):
            self.take()
            self._ready.set()
            raise BufferError(f"event stream over {self.limit} bytes unread")

    def drain(self) -> list[tuple[str, str]]:
        """The events held, oldest first (the buffer is then empty)."""
        return self.take()


_EVENT_NAMES = {
    "text": "delta",
    "tool_started": "tool_started",
    "tool_finished": "tool_finished",
    "status": "status",
}


def event_stream(
    events: AsyncIterator[ServerSentEvent],
    send_timeout: float = STREAM_SEND_TIMEOUT,
    headers: dict[str, str] | None = None,
) -> EventSourceResponse:
    """The response for a stream of events: keep-alive pings, and a client that does not
    read within `send_timeout` (``[server] stream_send_timeout``) is disconnected rather
    than buffered for."""
    return EventSourceResponse(
        events, headers=headers, ping=_PING_SECONDS, send_timeout=send_timeout
    )


async def _events(ticket: Ticket, queue: StreamBuffer) -> AsyncIterator[ServerSentEvent]:
    """The turn's events as SSE, then ``done`` with the stored reply (or ``error``).

    Every stream ends with one of them, shutdown included: a turn that cannot finish
    before Livia stops gets an ``error`` saying the message is kept and where to read
    its reply later.
    """
    reply_task = asyncio.ensure_future(ticket.wait())
    try:
        while not reply_task.done():
            getter = asyncio.ensure_future(queue.wait())
            await asyncio.wait({getter, reply_task}, return_when=asyncio.FIRST_COMPLETED)
            getter.cancel()
            for name, data in queue.drain():
                yield ServerSentEvent(data, event=name)
        for name, data in queue.drain():
            yield ServerSentEvent(data, event=name)
        if queue.overflowed:
            log.warning(
                "event stream fell behind: deltas dropped conversation_id=%s message_id=%s",
                ticket.message.conversation_id,
                ticket.message.message_id,
            )
        try:
            reply = reply_task.result()
        except (TimeoutError, ConversationError) as exc:
            err = (
                _conversation_error(exc)
                if isinstance(exc, ConversationError)
                else _still_working(ticket.message)
            )
            message = err.message
            if isinstance(exc, NotRunning):
                message += (
                    "; fetch the reply later with "
                    f"GET /v1/conversations/{ticket.message.conversation_id}"
                )
            payload = {"type": err.type, "message": message}
            yield ServerSentEvent(json.dumps(payload), event="error")
            return
        yield ServerSentEvent(json.dumps(_reply_json(reply)), event="done")
    finally:
        if not reply_task.done():
            reply_task.cancel()


# -- errors -----------------------------------------------------------------------------


def _conversation_error(exc: ConversationError) -> ApiError:
    if isinstance(exc, Busy):
        retry = str(max(1, round(exc.retry_after)))
        return ApiError(503, "busy", str(exc), {"Retry-After": retry})
    if isinstance(exc, NotRunning):
        if isinstance(exc.__cause__, StoreError):  # the reply could not be stored
            return ApiError(503, "storage_unavailable", str(exc), {"Retry-After": "5"})
        return ApiError(503, "not_running", str(exc), {"Retry-After": "5"})
    if isinstance(exc, UnknownConversation):
        return ApiError(404, "unknown_conversation", str(exc))
    if isinstance(exc, MessageIdConflict):
        return ApiError(409, "message_id_conflict", str(exc))
    return ApiError(400, "conversation_error", str(exc))


_STATUS_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def install_error_handling(app: FastAPI) -> None:
    """Map every failure to the JSON error shape; unexpected ones to a logged 500."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_conversation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConversationError)
        return _conversation_error(exc).response()

    async def on_store_error(request: Request, exc: Exception) -> Response:
        log.error("store error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            503,
            "storage_unavailable",
            "the message store is unavailable; please retry shortly",
            {"Retry-After": "5"},
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        type_ = _STATUS_TYPES.get(status, "http_error")
        return error_response(status, type_, message, dict(exc.headers or {}))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "invalid_request", _describe(exc))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(ConversationError, on_conversation_error)
    app.add_exception_handler(StoreError, on_store_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_middleware(CatchAll)


class CatchAll:
    """ASGI middleware: an unexpected exception becomes a JSON 500; its trace goes to the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = error_response(
                    500, "internal_error", "internal error; it has been logged"
                )
                await response(scope, receive, send)
