"""Hardening (issue 10, items 2–9), each on real parts served on 127.0.0.1.

- who may drive a local Livia from a browser (Host / Origin allow-lists, JSON-only POSTs)
- the security headers of every response, and the pages' Content-Security-Policy
- Slack HTTP events: size cap, signature before parsing, malformed bodies, other teams/apps
- the Slack namespace is closed to the HTTP API
- secrets scrubbed from `/stats`; control characters in ids and in log lines
- bodies that used to crash the parser (deep nesting, lone surrogates)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import ClientSession, ClientTimeout
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from livia.config import Settings
from livia.logs import RedactingFormatter, describe_error, escape_controls, redact, scrub
from livia.sim._serving import UvicornRunner
from livia.sim.slack import sign_request
from tests.test_slack import APP_TOKEN, BOT_TOKEN, LIVIA, SIGNING_SECRET, slack_rig


def _chat(cid: str = "c1", text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"conversation_id": cid, "user_id": "ann", "text": text, **extra}


def _error(resp: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    """The response is the JSON error shape with this status, and no trace."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["message"]
    if type_ is not None:
        assert error["type"] == type_, error
    return error


@pytest.fixture(autouse=True)
def slack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)


# --- item 2: Host and Origin allow-lists, JSON-only POSTs ---------------------------------


async def test_a_web_page_elsewhere_cannot_drive_a_local_livia(livia_server: Any) -> None:
    srv = await livia_server()
    port = srv.url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        # DNS rebinding: evil.example re-pointed at 127.0.0.1; the Host header gives it away.
        rebound = {"Host": f"evil.example:{port}"}
        _error(await client.get("/stats", headers=rebound), 403, "forbidden_host")
        _error(await client.get("/v1/conversations/c1", headers=rebound), 403, "forbidden_host")
        _error(await client.post("/v1/chat", json=_chat(), headers=rebound), 403, "forbidden_host")
        # A cross-site request from a page (the browser names the page's origin).
        evil = {"Origin": "https://evil.example"}
        _error(await client.post("/v1/chat", json=_chat(), headers=evil), 403, "forbidden_origin")
        _error(await client.get("/stats", headers=evil), 403, "forbidden_origin")
        sandboxed = {"Origin": "null"}
        _error(await client.post("/v1/chat", json=_chat(), headers=sandboxed), 403)
        # The "simple" cross-site POST needs no preflight: text/plain, a form, or no type.
        plain = {"Content-Type": "text/plain"}
        body = json.dumps(_chat()).encode()
        refused = await client.post("/v1/chat", content=body, headers=plain)
        assert "application/json" in _error(refused, 415, "unsupported_media_type")["message"]
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        _error(await client.post("/v1/chat", content=b"a=1", headers=form), 415)
        _error(await client.post("/v1/chat", content=body), 415)  # no Content-Type at all
        assert srv.sim.stats.requests == 0  # none of it reached the model

        # What a local user does still works: curl, the page itself, other local pages.
        assert (await client.post("/v1/chat", json=_chat("ok-1"))).status_code == 200
        same_origin = {"Origin": srv.url, "Content-Type": "application/json; charset=utf-8"}
        resp = await client.post("/v1/chat", content=json.dumps(_chat("ok-2")), headers=same_origin)
        assert resp.status_code == 200, resp.text
        local_page = {"Origin": "http://localhost:5173", "Host": f"localhost:{port}"}
        assert (await client.get("/stats", headers=local_page)).status_code == 200
        assert (await client.get("/stats", headers={"Host": f"[::1]:{port}"})).status_code == 200
        assert (await client.get("/stats", headers={"Host": "10.1.2.3"})).status_code == 200
        # File uploads come as multipart: the guard lets them through to the endpoint,
        # which says what an empty form is missing.
        multipart = {"Content-Type": "multipart/form-data; boundary=x"}
        _error(await client.post("/v1/chat", content=b"--x--", headers=multipart), 422)
        # Probes and Slack's signed events answer whatever the Host.
        assert (await client.get("/healthz", headers=rebound)).status_code == 200
        # Refusals carry the security headers too.
        refused = await client.get("/stats", headers=rebound)
        assert refused.headers["x-frame-options"] == "DENY"


async def test_allowed_hosts_and_origins_are_configurable(livia_server: Any) -> None:
    srv = await livia_server(
        server={
            "allowed_hosts": ["livia.example.com", ".corp.example"],
            "allowed_origins": ["https://portal.example.net"],
        }
    )
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:

        async def status(**headers: str) -> int:
            return (await client.get("/stats", headers=headers)).status_code

        assert await status(Host="livia.example.com") == 200
        assert await status(Host="LIVIA.example.com.") == 200
        assert await status(Host="chat.corp.example") == 200
        assert await status(Host="corp.example.evil.test") == 403
        assert await status(Origin="https://portal.example.net") == 200
        assert await status(Origin="https://livia.example.com") == 200  # an allowed host's page
        assert await status(Origin="https://portal.example.net.evil.test") == 403

    srv = await livia_server(server={"allowed_hosts": ["*"], "allowed_origins": ["*"]})
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        headers = {"Host": "anything.test", "Origin": "https://anywhere.test"}
        assert (await client.get("/stats", headers=headers)).status_code == 200


# --- item 3: security headers, CSP that lets the pages' own inline code run ----------------


def _sha256(block: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


async def test_every_response_carries_security_headers(livia_server: Any) -> None:
    srv = await livia_server()
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        for path in ("/", "/dashboard", "/stats", "/healthz", "/no/such/page", "/v1/info"):
            resp = await client.get(path)
            headers = resp.headers
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["referrer-policy"] == "no-referrer", path
            assert headers["x-frame-options"] == "DENY", path
            csp = headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            if path in ("/", "/dashboard"):
                # Only the page's own inline script and style may run: by hash, not
                # 'unsafe-inline', and nothing from another origin.
                assert "unsafe-inline" not in csp and "http" not in csp
                scripts = re.findall(r"<script>(.*?)</script>", resp.text, re.S)
                styles = re.findall(r"<style>(.*?)</style>", resp.text, re.S)
                assert scripts and styles
                script_src = re.search(r"script-src ([^;]+)", csp)
                style_src = re.search(r"style-src ([^;]+)", csp)
                assert script_src and style_src
                # the page's own vendored files ('self': same origin, no other) may load too
                allowed = {_sha256(s) for s in scripts} | ({"'self'"} if path == "/" else set())
                assert set(script_src.group(1).split()) == allowed
                assert set(style_src.group(1).split()) == {_sha256(s) for s in styles}
                assert "connect-src 'self'" in csp


def test_pages_keep_the_token_in_session_storage() -> None:
    """The token is read from and written to sessionStorage; localStorage only loses it."""
    root = Path(__file__).resolve().parents[1] / "src/livia"
    for source in (root / "channels/static/chat.js", root / "monitoring/static/dashboard.js"):
        text = source.read_text(encoding="utf-8")
        assert "sessionStorage.setItem(TOKEN_KEY" in text, source.name
        assert "localStorage.setItem(TOKEN_KEY" not in text, source.name
        assert "localStorage.removeItem(TOKEN_KEY)" in text, source.name


# --- item 4: Slack HTTP events: size cap, signature first, malformed bodies ---------------


async def _post_raw(
    url: str, raw: bytes, headers: dict[str, str] | None = None, *, sign: bool = False
) -> tuple[int, str, str]:
    """POST `raw` bytes to `url`, signed with the app's secret when `sign`."""
    headers = dict(headers or {})
    if sign:
        ts = str(int(time.time()))
        base = b"v0:" + ts.encode() + b":" + raw  # Slack's v0 signature, over the raw bytes
        mac = hmac.new(SIGNING_SECRET.encode(), base, hashlib.sha256)
        headers.update(
            {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v0=" + mac.hexdigest()}
        )
    headers.setdefault("Content-Type", "application/json")
    async with (
        ClientSession(timeout=ClientTimeout(total=30)) as session,
        session.post(url, data=raw, headers=headers) as resp,
    ):
        return resp.status, resp.headers.get("content-type", ""), await resp.text()


async def test_slack_events_check_size_and_signature_before_parsing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with slack_rig(tmp_path) as rig:
        url = rig.events_url
        # Unsigned garbage: 401 with a JSON error, nothing parsed, no trace.
        for raw in (b"{", b"\xff\xfe\x00", b"[1, 2]", b"payload=%7Bnot", b"", b"{}" * 1000):
            status, ctype, text = await _post_raw(url, raw)
            assert status == 401, (raw[:20], status, text)
            assert ctype.startswith("application/json") and "Traceback" not in text
        # Forged headers that used to raise inside the verifier.
        odd = {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"}
        assert (await _post_raw(url, b"{}", odd))[0] == 401
        latin = {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=é"}
        assert (await _post_raw(url, b"{}", latin))[0] == 401
        # Too big: refused before it is read (declared, or streamed without a length).
        began = time.monotonic()
        status, ctype, _ = await _post_raw(url, b"x" * (2 * 1024 * 1024))
        assert status == 413 and ctype.startswith("application/json")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"y" * 65536  # 4 MB in all, no Content-Length

        async with (
            ClientSession(timeout=ClientTimeout(total=30)) as session,
            session.post(url, data=chunks(), headers={"Content-Type": "application/json"}) as r,
        ):
            assert r.status == 413
        assert time.monotonic() - began < 10
        # Signed but malformed: 400 with a JSON error.
        for raw in (b"{not json", b"[1, 2]", b'{"event": "x"}', b"[" * 5000 + b"]" * 5000):
            status, ctype, text = await _post_raw(url, raw, sign=True)
            assert status == 400, (raw[:20], status, text)
            assert ctype.startswith("application/json") and "Traceback" not in text
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert (await _post_raw(url, b"payload=%7Bbad", form, sign=True))[0] == 400
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        await rig.settle()
        assert rig.responder.calls == []

        # And a real, signed event is still answered.
        ts = await rig.mention("C1", "U1", "still here")
        assert [m.text for m in await rig.replies("C1", ts)] == ["You said: **still here**"]


# --- item 5: only this bot's team and app ---------------------------------------------------


async def test_events_of_another_team_or_app_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livia")
    async with slack_rig(tmp_path) as rig:
        sim = rig.sim
        other_team = sim.message_event("C1", "U1", f"<@{LIVIA}> from elsewhere", kind="app_mention")
        other_team["team_id"] = "T0OTHER"
        other_team["authorizations"][0]["team_id"] = "T0OTHER"
        other_team["event"]["team"] = "T0OTHER"
        other_app = sim.message_event("C1", "U1", f"<@{LIVIA}> other app", kind="app_mention")
        other_app["api_app_id"] = "A0OTHER"
        for body in (other_team, other_app):
            status, _ = await rig.send(body)
            assert status == 200  # acknowledged, so Slack does not retry...
        await rig.settle()
        assert rig.responder.calls == []  # ...and never answered
        assert chat_calls(sim) == []
        ignored = [
            r.getMessage() for r in caplog.records if "slack event ignored" in r.getMessage()
        ]
        assert any("T0OTHER" in m for m in ignored) and any("A0OTHER" in m for m in ignored)
        # `auth.test` named the app, so that is what events must carry.
        assert (await rig.channel.whoami()).app_id == sim.app_id

        ts = await rig.mention("C1", "U1", "from home")
        assert [m.text for m in await rig.replies("C1", ts)] == ["You said: **from home**"]


async def test_socket_mode_does_not_authorize_another_team(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livia")
    async with slack_rig(tmp_path, mode="socket") as rig:
        sim = rig.sim
        await sim.wait_connected()
        body = sim.message_event("C1", "U1", f"<@{LIVIA}> over the socket", kind="app_mention")
        body["team_id"] = "T0OTHER"
        body["authorizations"][0]["team_id"] = "T0OTHER"
        body["event"]["team"] = "T0OTHER"
        await sim.wait_ack(await sim.push_event(body))
        await asyncio.sleep(0.2)
        await rig.settle()
        assert rig.responder.calls == []
        assert chat_calls(sim) == []
        messages = [r.getMessage() for r in caplog.records]
        assert any("slack authorize refused" in m and "T0OTHER" in m for m in messages)


def chat_calls(sim: Any) -> list[str]:
    return [c.method for c in sim.calls if c.method.startswith(("chat.", "assistant."))]


async def test_slack_events_in_the_real_app_pass_the_host_guard(
    tmp_path: Path, livia_server: Any
) -> None:
    """Slack reaches Livia through a public name: /slack/events answers whatever the Host
    (the signature is the check), while the rest of the app still refuses that Host."""
    from livia.sim.slack import SimSlack

    sim = SimSlack(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN, app_token=APP_TOKEN)
    api_url = await sim.start()
    try:
        srv = await livia_server(slack={"mode": "http", "api_url": api_url})
        mention, _ = sim.mention("C1", "U1", f"<@{LIVIA}> hi via the public name")
        raw = json.dumps(mention)
        headers = {**sign_request(raw, SIGNING_SECRET), "Host": "livia.example.com"}
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            resp = await client.post("/slack/events", content=raw, headers=headers)
            assert resp.status_code == 200, resp.text
            unsigned = await client.post("/slack/events", content=b"{", headers=headers)
            _error(unsigned, 401, "invalid_signature")
            other = await client.get("/stats", headers={"Host": "livia.example.com"})
            _error(other, 403, "forbidden_host")
        ts = mention["event"]["ts"]
        await sim.wait_for(lambda s: bool(s.bot_replies("C1", ts)), 30)
    finally:
        await sim.stop()


# --- item 6: one namespace per channel ------------------------------------------------------


async def test_http_api_cannot_read_or_write_slack_threads(livia_server: Any) -> None:
    from livia.conversations import IncomingMessage

    srv = await livia_server()
    thread = "slack:T0SIM:C9:1700000000.000100"
    ticket = await srv.livia.conversations.accept(
        IncomingMessage(
            conversation_id=thread,
            user_id="U1",
            text="a Slack question",
            message_id="s1",
            channel="slack",
        )
    )
    await ticket.wait()
    assert await srv.livia.conversations.turns(thread)  # it exists
    calls = srv.sim.stats.requests
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        for cid in (thread, "SLACK:T0SIM:C9:1", "slack:T0SIM:C1:new"):
            written = await client.post("/v1/chat", json=_chat(cid, "answer in the thread"))
            assert "slack" in _error(written, 403, "forbidden")["message"]
        existing = await client.get(f"/v1/conversations/{thread}")
        missing = await client.get("/v1/conversations/slack:T0SIM:C9:nothing-here")
        assert _error(existing, 404, "unknown_conversation")
        assert _error(missing, 404, "unknown_conversation")
        assert existing.json()["error"]["message"].replace(thread, "X") == missing.json()["error"][
            "message"
        ].replace("slack:T0SIM:C9:nothing-here", "X")
    assert srv.sim.stats.requests == calls  # no model call for any of them
    assert len(await srv.livia.conversations.turns(thread)) == 1


# --- item 7: secrets scrubbed from /stats and the dashboard ----------------------------------

LEAKY_KEY = "sk-live-0123456789abcdefABCDEF"
ZAPIER_SECRET = "MjY4ZDk3NGQtNjYwZS00Y2E1LWI2ZjUtZjM0ZGU3"


def _leaky_upstream() -> FastAPI:
    """An OpenAI-compatible model and an MCP server that refuse the key and quote it back."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        message = (
            f"Incorrect API key provided: {auth}. See https://platform.example/keys?key={LEAKY_KEY}"
        )
        error = {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
        return JSONResponse({"error": error}, status_code=401)

    @app.api_route("/api/mcp/s/{secret}/mcp", methods=["GET", "POST", "DELETE"])
    async def mcp(secret: str) -> JSONResponse:
        return JSONResponse({"error": f"bad key {secret}"}, status_code=401)

    return app


@contextlib.asynccontextmanager
async def _served(app: Any) -> AsyncIterator[str]:
    runner = UvicornRunner(app)
    url = await runner.start("127.0.0.1", 0)
    try:
        yield url
    finally:
        await runner.stop()


async def test_stats_never_show_keys_or_mcp_url_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from livia.app import build_app

    monkeypatch.setenv("OPENAI_API_KEY", LEAKY_KEY)
    async with _served(_leaky_upstream()) as upstream:
        mcp_url = f"{upstream}/api/mcp/s/{ZAPIER_SECRET}/mcp"
        settings = Settings(
            store={"url": f"sqlite:///{tmp_path}/livia.db"},
            llm={"base_url": f"{upstream}/v1", "timeout": 10.0},
            mcp={"servers": [{"name": "zapier", "url": mcp_url, "api": "zapier"}]},
            apis={"openai": {"retry_attempts": 1}},
        )
        async with (
            _served(build_app(settings)) as url,
            httpx.AsyncClient(base_url=url, timeout=60) as client,
        ):
            reply = await client.post("/v1/chat", json=_chat())
            assert reply.status_code == 200
            stats = await client.get("/stats")
            dashboard = await client.get("/dashboard")
    for surface in (reply.text, stats.text, dashboard.text):
        assert LEAKY_KEY not in surface and LEAKY_KEY[8:] not in surface
        assert ZAPIER_SECRET not in surface and "/api/mcp/s/" not in surface
    last_error = stats.json()["upstreams"]["openai"]["last_error"]
    # What is left says what went wrong: the kind, the class and the HTTP status.
    assert "AuthenticationError" in last_error and "401" in last_error, last_error
    assert "[redacted]" in last_error


def test_one_redaction_serves_logs_and_surfaces() -> None:
    line = f"POST failed: Authorization: Bearer {LEAKY_KEY} url=https://mcp.zapier.com/api/mcp/s/{ZAPIER_SECRET}/mcp?token=abc"
    for cleaned in (redact(line), scrub(line)):
        assert LEAKY_KEY not in cleaned and ZAPIER_SECRET not in cleaned and "abc" not in cleaned
    assert "https://mcp.zapier.com" in scrub(line) and "/api/" not in scrub(line)
    failure = describe_error(RuntimeError(f"x-api-key sk-proj-{'a1' * 20}\nforged line"))
    assert failure.startswith("RuntimeError: ") and "a1a1a1a1a1" not in failure
    assert "\n" not in failure


# --- item 8: control characters in ids; one record, one line ---------------------------------


async def test_control_characters_in_ids_are_refused(livia_server: Any) -> None:
    srv = await livia_server()
    forged = "c1\r\n12:00:00 ERROR   livia.channels.http: forged"
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        cases = [
            _chat(cid=forged),
            _chat(cid="c\x00"),
            {**_chat(), "user_id": "ann\nroot"},
            _chat(message_id="m\x1b[31m"),
            _chat(cid="c\u2028"),
        ]
        for body in cases:
            error = _error(await client.post("/v1/chat", json=body), 422, "invalid_request")
            assert "control characters" in error["message"]
        # Text may hold new lines: it is what people type.
        ok = await client.post("/v1/chat", json=_chat(text="line one\nline two"))
        assert ok.status_code == 200
    assert srv.sim.stats.requests == 1


def test_a_logged_value_cannot_forge_a_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logger = logging.getLogger("livia.test.forging")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("message id=%s", "m1\r\n12:00:00 ERROR   livia: forged\x00")
        try:
            raise ValueError("bad\n12:00:00 ERROR   livia: forged in a traceback")
        except ValueError:
            logger.exception("failed id=%s", "x\ny")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    records = [line for line in lines if not line.startswith("  ")]
    assert len(records) == 2, lines  # every other line is an indented traceback line
    assert records[0].endswith("id=m1\\r\\n12:00:00 ERROR   livia: forged\\x00")
    assert records[1].endswith("failed id=x\\ny")
    assert not any(line.startswith("12:00:00") for line in lines)
    assert escape_controls("a\u2028b\x7f") == "a\\u2028b\\x7f"


# --- item 9: bodies that used to be 500s ------------------------------------------------------


async def test_deep_nesting_and_lone_surrogates_are_client_errors(livia_server: Any) -> None:
    srv = await livia_server()
    as_json = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        for depth in (1000, 20_000):
            deep = ("[" * depth + "]" * depth).encode()
            _error(
                await client.post("/v1/chat", content=deep, headers=as_json), 400, "invalid_json"
            )
            nested = b'{"conversation_id": "c", "user_id": "u", "text": "hi", "x": '
            nested += b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
            resp = await client.post("/v1/chat", content=nested, headers=as_json)
            assert resp.status_code in (400, 422), resp.text
            _error(resp, resp.status_code)
        lone = b'{"conversation_id": "c", "user_id": "u", "text": "hi \\ud800 there"}'
        error = _error(await client.post("/v1/chat", content=lone, headers=as_json), 422)
        assert "text" in error["message"]
        lone_id = b'{"conversation_id": "c\\udfff", "user_id": "u", "text": "hi"}'
        _error(await client.post("/v1/chat", content=lone_id, headers=as_json), 422)
        paired = '{"conversation_id": "c", "user_id": "u", "text": "\\ud83d\\ude00 ok"}'
        ok = await client.post("/v1/chat", content=paired, headers=as_json)
        assert ok.status_code == 200, ok.text
    assert srv.sim.stats.requests == 1
