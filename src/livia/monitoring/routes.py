"""The monitoring endpoints: `GET /stats`, `GET /metrics` and `GET /dashboard`."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client.exposition import choose_encoder

from livia.monitoring.auth import monitoring_denied
from livia.monitoring.deployment import deployment
from livia.monitoring.metrics import metrics_registry
from livia.monitoring.page import inline_assets, page_csp
from livia.monitoring.snapshot import snapshot

log = logging.getLogger(__name__)

_NO_STORE = {"Cache-Control": "no-store"}


def monitoring_router() -> APIRouter:
    """The monitoring routes; they read `request.app.state.livia` at each request.

    `/stats` and `/metrics` need the bearer token when `[server] api_token` is set; the
    dashboard page is public and asks for the token itself (kept in sessionStorage).
    """
    router = APIRouter(tags=["monitoring"])
    dashboard_html = inline_assets(Path(__file__).with_name("static"), "dashboard.html")
    dashboard_headers = {"Content-Security-Policy": page_csp(dashboard_html)}

    @router.get("/stats", summary="Live statistics as JSON")
    async def stats(request: Request) -> Response:
        if (denied := await monitoring_denied(request)) is not None:
            return denied
        state = getattr(request.app.state, "livia", None)
        return JSONResponse(snapshot(state), headers=_NO_STORE)

    @router.get("/stats/deployment", summary="Every live replica's statistics, and their sums")
    async def stats_deployment(request: Request) -> Response:
        if (denied := await monitoring_denied(request)) is not None:
            return denied
        state = getattr(request.app.state, "livia", None)
        return JSONResponse(await deployment(state), headers=_NO_STORE)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics(request: Request) -> Response:
        if (denied := await monitoring_denied(request)) is not None:
            return denied
        # Text format 0.0.4 unless the scraper asks for OpenMetrics. Collected on the
        # event loop on purpose: the limiters read the loop's clock.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encode(metrics_registry(request.app))
        return Response(body, media_type=content_type, headers=_NO_STORE)

    @router.get("/dashboard", response_class=HTMLResponse, summary="Live monitoring page")
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(dashboard_html, headers=dashboard_headers)

    return router
