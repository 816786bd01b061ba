"""The one error shape of the HTTP API: ``{"error": {"type", "message"}}`` with its status."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel

__all__ = ["ApiError", "ErrorBody", "ErrorResponse", "error_response", "errors"]


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
