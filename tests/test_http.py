"""The HTTP API over real HTTP: replies, streaming, history, health, and every bad input.

Each test runs the real app and agent against the simulated OpenAI model (`livia_server`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI


def _chat(cid: str = "c1", text: str = "tell me about gardening", **extra: Any) -> dict[str, Any]:
    return {"conversation_id": cid, "user_id": "alice", "text": text, **extra}


def _assert_error(resp: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """The response is the JSON error shape with this status and type, and no trace."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    error = resp.json()["error"]
    assert error["type"] == type_ and error["message"]
    return error


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _sse(client: httpx.AsyncClient, body: dict[str, Any]) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    headers = {"Accept": "text/event-stream"}
    async with client.stream("POST", "/v1/chat", json=body, headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    return events


async def test_chat_reply_history_and_duplicate(livia_server: Any) -> None:
    srv = await livia_server(latency=0.05)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        first = (await client.post("/v1/chat", json=_chat())).json()
        assert first["conversation_id"] == "c1" and first["message_id"]  # generated
        assert "gardening" in first["reply"] and first["error"] is None
        assert first["duplicate"] is False

        body = _chat(text="and roses?", message_id="m-2")
        second = (await client.post("/v1/chat", json=body)).json()
        calls = srv.sim.stats.requests
        again = (await client.post("/v1/chat", json=body)).json()
        assert again == {**second, "duplicate": True}
        assert srv.sim.stats.requests == calls  # no second model call
        # the model saw the first exchange as history for the second message
        sent = [m["content"] for m in srv.model_requests[-1]["messages"][1:]]
        assert sent == ["tell me about gardening", first["reply"], "and roses?"]

        history = (await client.get("/v1/conversations/c1")).json()
        assert history["pending"] == 0
        assert [(m["role"], m["content"]) for m in history["messages"]] == [
            ("user", "tell me about gardening"),
            ("assistant", first["reply"]),
            ("user", "and roses?"),
            ("assistant", second["reply"]),
        ]
        # the same message_id with another text is a conflict, not a silent repeat
        conflict = await client.post("/v1/chat", json={**body, "text": "something else"})
        _assert_error(conflict, 409, "message_id_conflict")


async def test_streamed_reply(livia_server: Any) -> None:
    srv = await livia_server(latency=0.2)
    cid = "T1/C9:1700.01"  # Slack-like ids, slashes included, are fine
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        events = await _sse(client, _chat(cid, text="explain compost", message_id="s1"))
        names = [name for name, _ in events]
        assert names.count("delta") > 3 and names[-1] == "done"
        done = events[-1][1]
        assert done["reply"] == "".join(data["text"] for name, data in events if name == "delta")
        assert (done["message_id"], done["duplicate"], done["error"]) == ("s1", False, None)
        # a streamed repeat gets the stored reply at once, marked duplicate
        repeat = await _sse(client, _chat(cid, text="explain compost", message_id="s1"))
        assert repeat == [("done", {**done, "duplicate": True})]
        history = (await client.get(f"/v1/conversations/{cid}")).json()
        assert history["messages"][-1]["content"] == done["reply"]


async def test_stream_ends_with_an_error_event_on_shutdown(livia_server: Any) -> None:
    srv = await livia_server(latency=5)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        stream = asyncio.create_task(_sse(client, _chat(text="slow one")))
        await _until(lambda: srv.sim.stats.requests == 1)
        await srv.livia.conversations.aclose()
        events = await stream
    assert events[-1][0] == "error" and events[-1][1]["type"] == "not_running"
    assert "answered on restart" in events[-1][1]["message"]


async def test_health_readiness_and_info(livia_server: Any) -> None:
    srv = await livia_server()
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        health = (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["demo"] is False
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        info = (await client.get("/v1/info")).json()
        assert info["demo"] is False and info["slack"] == "off"
        stats = (await client.get("/stats")).json()
        assert "openai" in stats["upstreams"]
    livia = srv.livia
    assert {"settings", "manager", "agent", "store", "conversations", "demo"} <= set(vars(livia))


async def test_bad_inputs_get_their_status_and_a_json_error(livia_server: Any) -> None:
    srv = await livia_server(server={"max_text_bytes": 1000})
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        post = client.post
        as_json = {"Content-Type": "application/json"}
        bad_json = await post("/v1/chat", content=b"{not json", headers=as_json)
        _assert_error(bad_json, 400, "invalid_json")
        not_utf8 = await post("/v1/chat", content=b"\xff\xfe", headers=as_json)
        _assert_error(not_utf8, 400, "invalid_json")
        missing = _assert_error(await post("/v1/chat", json={"text": "hi"}), 422, "invalid_request")
        assert "conversation_id" in missing["message"] and "user_id" in missing["message"]
        typed = await post("/v1/chat", json=_chat(cid=5))  # type: ignore[arg-type]
        assert "conversation_id" in _assert_error(typed, 422, "invalid_request")["message"]
        _assert_error(await post("/v1/chat", json=[1, 2]), 422, "invalid_request")
        _assert_error(await post("/v1/chat", json=_chat(text="   ")), 422, "invalid_request")
        _assert_error(await post("/v1/chat", json=_chat(text="é" * 501)), 413, "text_too_large")
        huge = json.dumps(_chat(text="x" * 2_000_000)).encode()
        _assert_error(
            await post("/v1/chat", content=huge, headers=as_json), 413, "payload_too_large"
        )
        _assert_error(await client.get("/v1/conversations/nope"), 404, "unknown_conversation")
        _assert_error(await client.get("/no/such/path"), 404, "not_found")
        _assert_error(await client.get("/v1/chat"), 405, "method_not_allowed")
    assert srv.sim.stats.requests == 0  # nothing bad reached the model


async def test_token_guards_the_api_but_not_health(livia_server: Any) -> None:
    srv = await livia_server(server={"api_token": "s3cret-token"})
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        _assert_error(await client.post("/v1/chat", json=_chat()), 401, "unauthorized")
        wrong = {"Authorization": "Bearer nope"}
        _assert_error(
            await client.post("/v1/chat", json=_chat(), headers=wrong), 401, "unauthorized"
        )
        _assert_error(await client.get("/v1/conversations/c1"), 401, "unauthorized")
        _assert_error(await client.get("/stats"), 401, "unauthorized")
        # the token is checked before the body is even read
        as_json = {"Content-Type": "application/json"}
        bad = await client.post("/v1/chat", content=b"{bad", headers=as_json)
        _assert_error(bad, 401, "unauthorized")
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        good = {"Authorization": "Bearer s3cret-token"}
        resp = await client.post("/v1/chat", json=_chat(), headers=good)
        assert resp.status_code == 200 and resp.json()["reply"]


async def test_busy_is_503_with_retry_after(livia_server: Any) -> None:
    srv = await livia_server(latency=30, server={"max_active_conversations": 1, "max_queued": 1})
    conversations = srv.livia.conversations
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        running = asyncio.create_task(client.post("/v1/chat", json=_chat("a")))
        await _until(lambda: conversations.stats()["active"] == 1)
        queued = asyncio.create_task(client.post("/v1/chat", json=_chat("b")))
        await _until(lambda: conversations.stats()["accepted"] == 2)
        refused = await client.post("/v1/chat", json=_chat("c"))
        _assert_error(refused, 503, "busy")
        assert int(refused.headers["Retry-After"]) >= 1
        stats = conversations.stats()
        assert (stats["rejected"], stats["active"], stats["queued"]) == (1, 1, 1)
        # a stop answers the open requests at once: 503, kept for the next start
        await conversations.aclose()
        for task in (running, queued):
            _assert_error(await task, 503, "not_running")
    assert [t.status for t in await srv.livia.store.pending()] == ["pending", "pending"]


async def test_internal_errors_are_json_without_a_trace(
    livia_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await livia_server()
    app: FastAPI = srv.app

    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    app.add_api_route("/v1/boom", boom)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        with caplog.at_level(logging.ERROR):
            resp = await client.get("/v1/boom")
    error = _assert_error(resp, 500, "internal_error")
    assert "secret" not in resp.text and error["message"].startswith("internal error")
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


async def test_message_path_is_logged_with_its_ids(
    livia_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await livia_server()
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        with caplog.at_level(logging.INFO, logger="livia"):
            await client.post("/v1/chat", json=_chat("conv-x", message_id="msg-y"))
    lines = [r.getMessage() for r in caplog.records if "msg-y" in r.getMessage()]
    assert len(lines) >= 4  # received, accepted, answering, answered, replied
    assert all("conversation_id=conv-x" in line for line in lines)


async def test_a_stream_says_when_its_model_call_waits_or_is_retried(livia_server: Any) -> None:
    """Issue 11: while the manager waits for a slot or sleeps before a retry, the stream
    carries a `status` event, so a person sees why nothing has come yet."""
    srv = await livia_server(
        latency=1.0,
        sim={"max_concurrent": 1},  # the model takes one request at a time: a 429 for more
        apis={"openai": {"max_concurrent": 1, "backoff_min": 0.2, "backoff_max": 0.5}},
    )
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        first, second = await asyncio.gather(
            _sse(client, _chat("s1", "first question")),
            _sse(client, _chat("s2", "second question")),
        )
    statuses = [data for name, data in [*first, *second] if name == "status"]
    assert any(s["state"] == "waiting" and s["upstream"] == "openai" for s in statuses)
    for events in (first, second):
        assert events[-1][0] == "done" and events[-1][1]["error"] is None
        names = [name for name, _ in events]
        if "status" in names:  # progress comes before the reply it explains
            assert names.index("status") < names.index("delta")
