"""The HTTP API users take for granted (issue 11), on a real server.

- FastAPI's own OpenAPI (`/openapi.json`, `/docs`) lists every route, with its request,
  response and error models
- `GET /v1/conversations` (no trailing-slash redirect), newest first; `created_at` on every
  message; `DELETE /v1/conversations/{id}` → 204, then 404
- `"stream": true` in the body of `POST /v1/chat` streams like `Accept: text/event-stream`
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx


def _chat(cid: str, text: str = "hello", user: str = "ann", **extra: Any) -> dict[str, Any]:
    return {"conversation_id": cid, "user_id": user, "text": text, **extra}


def _when(value: str) -> datetime:
    assert value.endswith("Z"), value  # UTC
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_openapi_describes_every_route(livia_server: Any) -> None:
    srv = await livia_server()
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        resp = await client.get("/openapi.json")
        assert resp.status_code == 200
        spec = resp.json()
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert "cdn.jsdelivr.net" in docs.headers["content-security-policy"]
    paths = spec["paths"]
    wanted = {
        "/v1/chat": {"post"},
        "/v1/chat/completions": {"post"},
        "/v1/models": {"get"},
        "/v1/conversations": {"get"},
        "/v1/conversations/{conversation_id}": {"get", "delete"},
        "/v1/me": {"get"},
        "/v1/info": {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/stats": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in wanted.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, paths[path].keys())
    schemas = spec["components"]["schemas"]
    assert {"ErrorResponse", "ChatReply", "ChatCompletion", "ConversationList"} <= set(schemas)
    chat = paths["/v1/chat"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert "conversation_id" in body["required"]  # text, or files in `attachments`
    assert {"text", "attachments", "user_id", "message_id", "stream"} <= set(body["properties"])
    ok = chat["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(ok)
    for status in ("401", "404", "413", "422", "503"):
        error = chat["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorResponse"}, status
    # errors are ours, not FastAPI's default validation shape
    assert "HTTPValidationError" not in json.dumps(paths["/v1/conversations"])
    completions = paths["/v1/chat/completions"]["post"]
    headers = {p["name"] for p in completions["parameters"] if p["in"] == "header"}
    assert headers == {"X-Livia-Conversation", "Idempotency-Key"}
    assert "204" in paths["/v1/conversations/{conversation_id}"]["delete"]["responses"]


async def test_list_read_and_delete_conversations(livia_server: Any) -> None:
    srv = await livia_server(latency=0.05)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        before = datetime.now(UTC)
        for cid in ("c-old", "c-mid", "c-new"):
            assert (await client.post("/v1/chat", json=_chat(cid, f"about {cid}"))).status_code
        await client.post("/v1/chat", json=_chat("c-bob", user="bob"))
        await client.post("/v1/chat", json=_chat("c-old", "back to the old one"))

        # no trailing slash: no redirect, no 404; the trailing slash works too
        resp = await client.get("/v1/conversations?user_id=ann")
        assert resp.status_code == 200
        listed = resp.json()["conversations"]
        assert [c["conversation_id"] for c in listed] == ["c-old", "c-new", "c-mid"]
        first = listed[0]
        assert set(first) >= {"conversation_id", "title", "updated_at", "messages"}
        assert (first["title"], first["messages"]) == ("about c-old", 2)
        assert _when(first["updated_at"]) >= before
        slash = await client.get("/v1/conversations/?user_id=ann")
        assert slash.status_code == 200 and slash.json()["conversations"] == listed
        everyone = (await client.get("/v1/conversations")).json()["conversations"]
        assert len(everyone) == 4  # no auth configured: every user's
        limited = (await client.get("/v1/conversations?limit=1")).json()["conversations"]
        assert [c["conversation_id"] for c in limited] == ["c-old"]

        history = (await client.get("/v1/conversations/c-old")).json()
        times = [_when(m["created_at"]) for m in history["messages"]]
        assert [m["role"] for m in history["messages"]] == ["user", "assistant"] * 2
        assert times == sorted(times) and times[0] >= before

        # delete: 204 with no body, then 404 for reading, listing and deleting again
        gone = await client.delete("/v1/conversations/c-old")
        assert gone.status_code == 204 and gone.content == b""
        again = await client.get("/v1/conversations/c-old")
        assert again.status_code == 404 and again.json()["error"]["type"] == "unknown_conversation"
        assert (await client.delete("/v1/conversations/c-old")).status_code == 404
        listed = (await client.get("/v1/conversations?user_id=ann")).json()["conversations"]
        assert [c["conversation_id"] for c in listed] == ["c-new", "c-mid"]
        bad = await client.get("/v1/conversations?limit=0")
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request"


async def test_a_conversation_with_a_reply_in_progress_is_not_deleted(livia_server: Any) -> None:
    srv = await livia_server(latency=1.0)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        running = asyncio.create_task(client.post("/v1/chat", json=_chat("busy-1")))
        deadline = asyncio.get_running_loop().time() + 10
        while srv.sim.stats.requests == 0:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        busy = await client.delete("/v1/conversations/busy-1")
        assert busy.status_code == 409 and busy.json()["error"]["type"] == "conversation_busy"
        assert (await running).status_code == 200
        assert (await client.delete("/v1/conversations/busy-1")).status_code == 204


async def test_stream_true_in_the_body_streams(livia_server: Any) -> None:
    srv = await livia_server(latency=0.05)
    async with (
        httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
        client.stream(
            "POST", "/v1/chat", json=_chat("s-1", "explain compost", stream=True)
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        names = [
            line.split(":", 1)[1].strip()
            async for line in resp.aiter_lines()
            if line.startswith("event:")
        ]
    assert names.count("delta") > 3 and names[-1] == "done"
