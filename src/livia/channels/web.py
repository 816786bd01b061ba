"""The web chat page (`GET /`): talks to `POST /v1/chat` and streams replies as SSE.

The page is one document with its own CSS and script inlined (no CDN, no build step).
Markdown is rendered by markdown-it and sanitised by DOMPurify, both vendored as files
under ``static/vendor`` (with their licences) and served from this origin at
``/static/vendor/…``; the page's Content-Security-Policy lets only its own inline script
(by hash) and scripts of this origin run.

The conversation list and each conversation's messages come from the server
(`GET /v1/conversations`, `GET /v1/conversations/{id}`); the browser's localStorage is
only a cache (and holds the user id), the API token lives in sessionStorage. A banner
shows when `GET /healthz` says the server runs in demo mode.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from livia.monitoring.page import inline_assets, page_csp

STATIC = Path(__file__).with_name("static")
VENDOR = STATIC / "vendor"
#: The vendored browser scripts the page loads (a fixed list: nothing else is served).
VENDOR_SCRIPTS = ("markdown-it.min.js", "purify.min.js")
_DAY = 86_400


def chat_csp(html: str) -> str:
    """`page_csp` of the page, with scripts of this origin (the vendored ones) allowed."""
    return page_csp(html).replace("script-src ", "script-src 'self' ", 1)


def web_router() -> APIRouter:
    """The routes of the web chat page (public; the page asks for the API token if needed)."""
    router = APIRouter(tags=["web"])
    page = inline_assets(STATIC, "chat.html")
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": chat_csp(page)}
    scripts = {name: (VENDOR / name).read_bytes() for name in VENDOR_SCRIPTS}
    icon = (STATIC / "favicon.svg").read_bytes()

    @router.get("/", response_class=HTMLResponse, summary="Web chat")
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    @router.get("/static/vendor/{name}", include_in_schema=False)
    async def vendor_script(name: str) -> Response:
        body = scripts.get(name)
        if body is None:
            raise HTTPException(404, f"no such file: {name}")
        return Response(
            body,
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": f"public, max-age={_DAY}"},
        )

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(
            icon, media_type="image/svg+xml", headers={"Cache-Control": f"public, max-age={_DAY}"}
        )

    return router
