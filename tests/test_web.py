"""The web chat page (`GET /`), alone and inside the real app."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from livia.channels.web import web_router
from livia.config import Settings


def page() -> str:
    app = FastAPI()
    app.include_router(web_router())
    with TestClient(app) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def client() -> TestClient:
    app = FastAPI()
    app.include_router(web_router())
    return TestClient(app)


def test_chat_page_is_self_contained() -> None:
    """Its CSS and script are inlined; the only files it loads are this origin's own."""
    html = page()
    assert "<style>" in html and "<script>" in html  # CSS and JS inlined
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', html)
    assert scripts == ["/static/vendor/markdown-it.min.js", "/static/vendor/purify.min.js"]
    assert re.findall(r'<link[^>]+href="([^"]+)"', html) == ["/favicon.ico"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "@import" not in html and "url(http" not in html


def test_vendored_scripts_are_served_under_the_csp() -> None:
    """markdown-it and DOMPurify come from static/vendor (with their licences), allowed
    by the page's CSP as this origin's scripts; the inline script by its hash."""
    with client() as c:
        page_response = c.get("/")
        csp = page_response.headers["content-security-policy"]
        script_src = next(p for p in csp.split("; ") if p.startswith("script-src "))
        assert script_src.startswith("script-src 'self' 'sha256-")
        assert "unsafe" not in csp and "http" not in csp
        vendor = Path(__file__).resolve().parents[1] / "src/livia/channels/static/vendor"
        for name in ("markdown-it.min.js", "purify.min.js"):
            response = c.get(f"/static/vendor/{name}")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/javascript")
            assert response.content == (vendor / name).read_bytes()
            assert "max-age" in response.headers["cache-control"]
        assert c.get("/static/vendor/../web.py").status_code == 404
        assert c.get("/static/vendor/chat.js").status_code == 404
    for licence in ("markdown-it.LICENSE", "dompurify.LICENSE"):
        assert (vendor / licence).stat().st_size > 500
    assert "DOMPurify" in (vendor / "purify.min.js").read_text()[:200]


def test_favicon_is_served() -> None:
    with client() as c:
        response = c.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.content.startswith(b"<svg")


def test_chat_page_talks_to_the_documented_endpoints() -> None:
    html = page()
    assert 'fetch("/v1/chat"' in html and '"text/event-stream"' in html
    for field in ("conversation_id", "user_id", "text", "message_id"):
        assert field in html
    for event in ("delta", "tool_started", "tool_finished", "done", "error"):
        assert f'"{event}"' in html, event
    assert 'fetch("/healthz"' in html and 'id="demo-banner"' in html
    assert 'href="/dashboard"' in html
    assert "livia.userId" in html and "livia.apiToken" in html
    # The conversations come from the server; localStorage is a cache.
    assert "/v1/conversations?user_id=" in html and "/v1/conversations/${" in html
    assert 'method: "DELETE"' in html
    assert '"status"' in html  # the manager's waiting/retrying line, when streamed


def test_static_sources_are_what_is_served() -> None:
    """The page is built from channels/static; each file's content reaches the browser."""
    html = page()
    static = Path(__file__).resolve().parents[1] / "src/livia/channels/static"
    for name in ("chat.css", "chat.js"):
        head = static.joinpath(name).read_text(encoding="utf-8").splitlines()[2]
        assert head in html, name


def test_pages_and_monitoring_in_the_real_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build_app` in demo mode serves the chat page, the dashboard, /stats and /metrics."""
    from livia.app import build_app

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings(store={"url": f"sqlite:///{tmp_path}/livia.db"})
    with TestClient(build_app(settings), base_url="http://127.0.0.1") as client:
        assert client.get("/").status_code == 200
        assert client.get("/favicon.ico").status_code == 200
        assert client.get("/static/vendor/purify.min.js").status_code == 200
        assert client.get("/dashboard").status_code == 200
        assert client.get("/healthz").json()["demo"] is True
        stats = client.get("/stats").json()
        assert stats["demo"] is True
        assert {"openai", "zapier"} <= set(stats["upstreams"])
        assert stats["upstreams"]["openai"]["circuit_state"] == "closed"
        assert "active" in stats["conversations"]
        assert any(s.get("state") == "connected" for s in stats["tools"].values())
        names = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert {"livia_upstream_requests", "livia_conversations_active"} <= names
        assert "livia_mcp_server_up" in names
