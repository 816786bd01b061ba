"""The bearer credential that guards the monitoring endpoints (`/stats`, `/metrics`).

Monitoring is the operator's: when `[server] api_token` is set only it is accepted; when
it is not but users' keys exist, any valid key is; with neither, the endpoints are open
(to this machine: the Host/Origin guard).
"""

from __future__ import annotations

import hmac
import logging

from fastapi import Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


def expected_token(request: Request) -> str:
    """The configured `[server] api_token`, or "" when the server is open."""
    state = getattr(request.app.state, "livia", None)
    settings = getattr(state, "settings", None)
    secret = getattr(getattr(settings, "server", None), "api_token", None)
    if secret is None:
        return ""
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
    return str(value or "")


def unauthorized(request: Request) -> JSONResponse | None:
    """A 401 response when a token is configured and the request lacks it; else None.

    Returned rather than raised so the JSON error shape does not depend on which
    exception handlers the app installs.
    """
    token = expected_token(request)
    if not token:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    log.info("refused %s %s: missing or wrong bearer token", request.method, request.url.path)
    return _unauthorized(
        "this endpoint needs `Authorization: Bearer <token>` with the "
        "server's api_token (LIVIA_SERVER__API_TOKEN)"
    )


async def monitoring_denied(request: Request) -> JSONResponse | None:
    """A 401 response unless the request may read monitoring data (see the module doc)."""
    if (refused := unauthorized(request)) is not None or expected_token(request):
        return refused
    identity = getattr(getattr(request.app.state, "livia", None), "identity", None)
    if identity is None or not await identity.keys_exist():
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and await identity.verify(given.strip()) is not None:
        return None
    log.info("refused %s %s: missing or wrong key", request.method, request.url.path)
    return _unauthorized(
        "this endpoint needs `Authorization: Bearer <key>` with a user key "
        "(livia keys create USER) or an api_token (LIVIA_SERVER__API_TOKEN)"
    )


def _unauthorized(message: str) -> JSONResponse:
    """The 401 the monitoring endpoints answer, in the API's error shape."""
    return JSONResponse(
        {"error": {"type": "unauthorized", "message": message}},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )
