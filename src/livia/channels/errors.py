"""The one error shape of the HTTP API: ``{"error": {"type", "message"}}`` with its status."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

if TYPE_CHECKING:
    from livia.app import Livia

__all__ = [
    "ApiError",
    "ErrorBody",
    "ErrorResponse",
    "error_response",
    "errors",
    "read_capped",
    "running_livia",
]


class ErrorBody(BaseModel):
    """What went wrong: a stable `type` for programs, a `message` for people."""

    type: str
    message: str


class ErrorResponse(BaseModel):
    """Every error of the API (4xx and 5xx); never a stack trace."""

    error: ErrorBody


class ApiError(Exception):
    """An error with its HTTP status, rendered as ``{"error": {"type", "message"}}``."""

    def __init__(
        self, status: int, type_: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The JSON response for this error."""
        return error_response(self.status, self.type, self.message, self.headers)


def error_response(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error shape every endpoint uses."""
    return JSONResponse(
        {"error": {"type": type_, "message": message}}, status_code=status, headers=headers
    )


def errors(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses` entries: these statuses answer with `ErrorResponse`."""
    described = {
        400: "Invalid JSON",
        401: "Missing, wrong or revoked credential",
        403: "Not allowed for this caller",
        404: "No such conversation (or not the caller's)",
        409: "Conflict",
        413: "Too large",
        415: "Not application/json",
        422: "Missing or ill-typed fields",
        503: "Busy, starting or stopping; retry (Retry-After)",
        504: "Still working; the reply will be in the history",
    }
    return {
        status: {"model": ErrorResponse, "description": described.get(status, "Error")}
        for status in statuses
    }


def running_livia(request: Request) -> Livia:
    """The app's running Livia; a 503 ``not_ready`` while it starts or stops."""
    livia: Livia | None = getattr(request.app.state, "livia", None)
    if livia is None:
        raise ApiError(503, "not_ready", "Livia is starting or stopping; please retry shortly")
    return livia


async def read_capped(
    request: Request,
    limit: int,
    *,
    more: int = 0,
    wants_more: Callable[[bytes], bool] | None = None,
) -> bytes:
    """The request body, refusing (413) to read past `limit` bytes — or past `limit` +
    `more` when `wants_more(the first limit bytes)` says this body may be that long.

    The declared Content-Length is checked first, then the bytes as they come, so an
    oversized body is never held in memory whole.
    """
    most = limit + more
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > most:
        raise ApiError(413, "payload_too_large", f"the request body is over {most} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit and (wants_more is None or not wants_more(bytes(body[:limit]))):
            raise ApiError(413, "payload_too_large", f"the request body is over {limit} bytes")
        if len(body) > most:
            raise ApiError(413, "payload_too_large", f"the request body is over {most} bytes")
    return bytes(body)
