"""Files on the HTTP API: `POST /v1/chat` as multipart (field ``file``, repeatable) or JSON
``"attachments": [{"name", "content_type", "data"}]`` (base64 or a ``data:`` URL), and
`GET /v1/files/generated/NAME` for the images Livia drew.

Accepted files are spooled on disk (`[files] spool_dir`); the message keeps references
only (`livia.files.refs`). A file over `[files] max_bytes` is not kept: the reply says so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from livia.channels.errors import ApiError, errors, read_capped
from livia.config import FilesConfig
from livia.files import Spool, http_refs

if TYPE_CHECKING:
    from livia.app import Livia

#: Room in a request for its fields and multipart framing, beyond the files themselves.
_FORM_SLACK = 256 * 1024
_CHUNK = 256 * 1024

Item = tuple[str, str, bytes | None, int]

#: `POST /v1/chat` as multipart, for the OpenAPI document.
MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["conversation_id"],
    "properties": {
        "conversation_id": {"type": "string"},
        "user_id": {"type": "string"},
        "text": {"type": "string"},
        "message_id": {"type": "string"},
        "stream": {"type": "boolean"},
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "Images, audio or documents ([files] max_bytes each, max_files)",
        },
    },
}


class Attachment(BaseModel):
    """One file in a JSON `POST /v1/chat` body."""

    model_config = ConfigDict(strict=True, extra="ignore")

    name: str = Field(default="file", min_length=1, max_length=256)
    content_type: str = Field(default="", max_length=128)
    data: str = Field(description="The file's bytes in base64, or a data: URL")


def body_room(limits: FilesConfig) -> int:
    """Most bytes the files of one request may take (base64 in JSON, or multipart)."""
    return (limits.max_files + 1) * (limits.max_bytes * 4 // 3 + 4096) + _FORM_SLACK


def decode(attachments: Sequence[Attachment], limits: FilesConfig) -> list[Item]:
    """(name, content_type, bytes or None when over the limit, size) for each attachment."""
    items: list[Item] = []
    for att in attachments:
        data, content_type = att.data, att.content_type
        if data.startswith("data:"):
            head, _, data = data.partition(",")
            if ";base64" not in head:
                raise ApiError(422, "invalid_request", f"attachment {att.name}: not base64")
            content_type = content_type or head[5:].split(";", 1)[0]
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(
                422, "invalid_request", f"attachment {att.name}: data is not valid base64"
            ) from None
        size = len(raw)
        items.append((att.name, content_type, raw if size <= limits.max_bytes else None, size))
    return items


async def read_json_body(request: Request, limit: int, files_room: int) -> bytes:
    """A JSON body: at most `limit` bytes, or `limit` + `files_room` when it carries
    ``"attachments"`` (a valid request names them within its first `limit` bytes, as its
    other fields fit there)."""
    return await read_capped(
        request, limit, more=files_room, wants_more=lambda head: b'"attachments"' in head
    )


async def read_multipart(request: Request, limits: FilesConfig) -> tuple[bytes, list[Item]]:
    """A multipart `POST /v1/chat`: its fields as a JSON body, and its files."""
    declared = request.headers.get("content-length", "")
    room = body_room(limits)
    if declared.isdigit() and int(declared) > room:
        raise ApiError(413, "payload_too_large", f"the request body is over {room} bytes")
    try:
        form = await request.form(max_files=limits.max_files + 5, max_fields=20)
    except Exception as exc:
        raise ApiError(
            400, "invalid_form", f"the multipart body could not be read: {exc}"
        ) from None
    fields: dict[str, Any] = {}
    items: list[Item] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key == "file":
                    items.append(await _read_upload(value, limits.max_bytes))
            elif key == "stream":
                fields["stream"] = value.lower() in ("1", "true", "yes", "on")
            elif key in ("conversation_id", "user_id", "text", "message_id"):
                fields[key] = value
    finally:
        await form.close()
    fields.setdefault("text", "")
    fields["attachments_count"] = len(items)
    return json.dumps(fields).encode(), items


async def _read_upload(upload: UploadFile, limit: int) -> Item:
    name = upload.filename or "file"
    content_type = upload.content_type or ""
    body = bytearray()
    size = 0
    while chunk := await upload.read(_CHUNK):
        size += len(chunk)
        if size <= limit:
            body += chunk
    return name, content_type, bytes(body) if size <= limit else None, size


async def spool(livia: Livia, items: list[Item]) -> list[dict[str, Any]]:
    """The message's file references (accepted files written to the spool)."""
    if not items:
        return []
    files = livia.settings.files
    return await asyncio.to_thread(http_refs, items, files, Spool(files.spool_dir))


def files_router() -> APIRouter:
    """`GET /v1/files/generated/NAME`: an image Livia drew (its random name is the key)."""
    router = APIRouter()

    @router.get(
        "/v1/files/generated/{name}",
        summary="An image Livia drew",
        responses={200: {"content": {"image/png": {}}}, **errors(404, 503)},
    )
    async def generated(request: Request, name: str) -> Response:
        livia: Livia | None = getattr(request.app.state, "livia", None)
        if livia is None:
            raise ApiError(503, "not_ready", "Livia is starting or stopping; please retry shortly")
        path = Spool(livia.settings.files.spool_dir).path(f"generated/{name}")
        if path is None:
            raise ApiError(404, "not_found", "no such image")
        return FileResponse(
            path, media_type="image/png", headers={"Cache-Control": "max-age=86400"}
        )

    return router
