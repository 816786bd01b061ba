"""The web chat page (`GET /`): talks to `POST /v1/chat` and streams replies as SSE.

The page is one self-contained document (no CDN, no build step; its Content-Security-Policy
lets only its own inline script and style run); it keeps a user id and the open
conversations in the browser's localStorage (the API token only in sessionStorage), and
shows a banner when
`GET /healthz` says the server runs in demo mode.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from livia.monitoring.page import inline_assets, page_csp

STATIC = Path(__file__).with_name("static")


def web_router() -> APIRouter:
    """The route of the web chat page (public; the page asks for the API token if needed)."""
    router = APIRouter(tags=["web"])
    page = inline_assets(STATIC, "chat.html")
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": page_csp(page)}

    @router.get("/", response_class=HTMLResponse, summary="Web chat")
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    return router
