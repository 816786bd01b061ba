"""The web chat page and the dashboard, driven in a real headless chromium over CDP.

Chromium is installed by `scripts/ensure-chromium.sh` when missing (Debian's package);
the tests skip only when that fails. Set `LIVIA_SCREENSHOTS=docs/img` to also write
the README screenshots (`web-chat.png`, `dashboard.png`) there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
import websockets
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.conftest import fake_livia_app

pytestmark = [pytest.mark.browser, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[1]
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_TIMEOUT = 30.0
CALL_TIMEOUT = 15.0


# --- chromium --------------------------------------------------------------------------


def ensure_chromium() -> str:
    """The chromium binary, installed by the project script if needed (or skip the test)."""
    script = ROOT / "scripts" / "ensure-chromium.sh"
    try:
        done = subprocess.run(
            [str(script)], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium is not installed and {script.name} failed: {exc}")
    path = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not path:
        pytest.skip(
            f"chromium is not installed and could not be installed: {done.stderr.strip()[-400:]}"
        )
    return path


@pytest.fixture(scope="module")
def chromium() -> Iterator[str]:
    """A headless chromium for this module; yields its DevTools websocket URL."""
    exe = ensure_chromium()
    # Chromium helper processes may still write the profile as it exits: ignore leftovers.
    with tempfile.TemporaryDirectory(prefix="livia-chromium-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp) / "profile"
        log_path = Path(tmp) / "chromium.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdout=log,
                stderr=log,
            )
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + START_TIMEOUT
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-800:]
                    pytest.fail(f"chromium did not start (exit {proc.poll()}):\n{tail}")
                time.sleep(0.05)
            port, path = port_file.read_text().splitlines()[:2]
            yield f"ws://127.0.0.1:{port}{path}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class CdpError(RuntimeError):
    """A DevTools call failed."""


class Page:
    """One browser tab over the DevTools protocol (flat sessions on the browser socket)."""

    def __init__(self, ws: Any, session: str, calls: Callable[..., Any]) -> None:
        self.ws = ws
        self.session = session
        self._call = calls
        self.errors: list[str] = []  # uncaught JS exceptions
        self.new_tab: Callable[[], Awaitable[Page]] | None = None  # set by open_page

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(method, params, session=self.session)
        return result

    async def js(self, expression: str) -> Any:
        """Evaluate `expression` in the page (promises awaited) and return its JSON value."""
        out = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in out:
            raise CdpError(f"{expression!r} threw: {out['exceptionDetails']}")
        return out["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout: float = 10.0) -> Any:
        """Poll `expression` until it is truthy; fail after `timeout` s saying what was awaited."""
        deadline = time.monotonic() + timeout
        probe = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"
        while True:
            try:
                value = await self.js(probe)
            except CdpError as exc:  # the page is not there yet (mid-navigation): poll again
                value, thrown = None, exc
            else:
                thrown = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; JS errors: {self.errors}"
                    + (f"; last: {thrown}" if thrown else "")
                )
            await asyncio.sleep(0.1)

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for(
            f"location.href.startsWith({json.dumps(url)}) && document.readyState === 'complete'",
            f"{url} to load",
        )

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = await self.wait_for(
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
                if (!e) return null; e.scrollIntoView({{block: 'nearest'}});
                const r = e.getBoundingClientRect();
                return r.width ? {{x: r.x + r.width / 2, y: r.y + r.height / 2}} : null; }})()""",
            f"{selector} to be visible",
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="left",
                clickCount=1,
            )

    async def type(self, text: str) -> None:
        await self.call("Input.insertText", text=text)

    async def screenshot(self) -> bytes:
        """The viewport as PNG bytes."""
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


@contextlib.asynccontextmanager
async def open_page(ws_url: str, width: int = 1280, height: int = 860) -> AsyncIterator[Page]:
    """A new tab in a fresh browser context (its own localStorage), closed afterwards."""
    async with websockets.connect(ws_url, max_size=64 * 2**20, open_timeout=10) as ws:
        ids = itertools.count(1)
        pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        pages: dict[str, Page] = {}

        async def call(method: str, params: dict[str, Any], session: str | None = None) -> Any:
            n = next(ids)
            pending[n] = asyncio.get_running_loop().create_future()
            message: dict[str, Any] = {"id": n, "method": method, "params": params}
            if session:
                message["sessionId"] = session
            await ws.send(json.dumps(message))
            try:
                return await asyncio.wait_for(pending[n], CALL_TIMEOUT)
            finally:
                pending.pop(n, None)

        async def read() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in pending:
                    fut = pending[msg["id"]]
                    if "error" in msg:
                        fut.set_exception(CdpError(str(msg["error"])))
                    else:
                        fut.set_result(msg.get("result", {}))
                elif msg.get("method") == "Runtime.exceptionThrown":
                    page = pages.get(msg.get("sessionId", ""))
                    if page is not None:
                        details = msg["params"]["exceptionDetails"]
                        page.errors.append(
                            details.get("exception", {}).get("description") or details["text"]
                        )

        reader = asyncio.create_task(read())
        try:
            context = (await call("Target.createBrowserContext", {}))["browserContextId"]

            async def new_tab() -> Page:
                """Another tab in the same browser context (it shares localStorage)."""
                target = (
                    await call(
                        "Target.createTarget", {"url": "about:blank", "browserContextId": context}
                    )
                )["targetId"]
                attached = await call(
                    "Target.attachToTarget", {"targetId": target, "flatten": True}
                )
                page = pages[attached["sessionId"]] = Page(ws, attached["sessionId"], call)
                page.new_tab = new_tab
                await page.call("Runtime.enable")
                await page.call("Page.enable")
                await page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                return page

            yield await new_tab()
            await call("Target.disposeBrowserContext", {"browserContextId": context})
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def keep_screenshot(data: bytes, path: Path, *, readme: bool = False) -> None:
    """Save a screenshot (checked to be a real, non-trivial PNG) to `path`.

    With `readme`, also to `$LIVIA_SCREENSHOTS/<name>` when that is set (regenerating
    the README images).
    """
    assert data.startswith(b"\x89PNG") and len(data) > 10_000, "a blank or broken screenshot"
    path.write_bytes(data)
    target = os.environ.get("LIVIA_SCREENSHOTS")
    if readme and target:
        out = Path(target) if Path(target).is_absolute() else ROOT / target
        out.mkdir(parents=True, exist_ok=True)
        (out / path.name).write_bytes(data)


async def canvas_ink(page: Page, selector: str) -> list[int]:
    """For each canvas matching `selector`: how many pixels were drawn (non-transparent)."""
    ink: list[int] = await page.js(
        f"""[...document.querySelectorAll({json.dumps(selector)})].map((c) => {{
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
              return n; }})"""
    )
    return ink


# --- a fake Livia with the conversations API -----------------------------------------------

MARKDOWN_REPLY = """## Plan for *Friday*

| task | owner |
|---|---|
| Review Q3 | **Ann** |

```python
print("hi")
```

<script>window.xss = 1</script><img src=x onerror="window.xss = 2"> [a link](https://example.com)"""


def conversations_app(*, api_token: str = "", latency: float = 0.05) -> Any:
    """The web page's routes plus a small in-memory Livia speaking the HTTP contract.

    `POST /v1/chat` runs each message once, as a background turn (it goes on when the
    stream is cut, like the real server); a repeated message_id waits for that turn and
    streams its stored reply. `GET/DELETE /v1/conversations[/{id}]` follow DESIGN.md.
    The text picks the behaviour: "interrupt" ends the stream with an `error` event
    (not_running) and "drop" cuts it, the reply being stored a moment later; "slow" sends
    a `status` event and waits; "task" runs a tool; "fail" is a model failure; "markdown"
    answers in Markdown; "!413" and "!503" are refused.
    """
    from livia.channels.web import web_router

    app = FastAPI()
    app.include_router(web_router())
    app.state.chat_bodies = []  # every POST /v1/chat body, in order
    app.state.runs = []  # message ids the "model" ran for
    app.state.deleted = []
    turns: dict[str, list[dict[str, Any]]] = {}
    app.state.turns = turns

    def denied(request: Request) -> Response | None:
        if api_token and request.headers.get("authorization") != f"Bearer {api_token}":
            error = {"type": "unauthorized", "message": "missing or wrong API token"}
            return JSONResponse({"error": error}, status_code=401)
        return None

    def now() -> str:
        return datetime.now(UTC).isoformat()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "demo": True}

    async def run(turn: dict[str, Any]) -> None:
        text, events = turn["text"], turn["events"]
        app.state.runs.append(turn["message_id"])
        reply, error = f"You said: **{text}**", None
        await asyncio.sleep(latency)
        if "slow" in text:
            await events.put(("status", {"message": "Waiting for the model: retry 2 of 5 in 4 s"}))
            await asyncio.sleep(2.5)
        if "task" in text:
            call = {"call_id": "t1", "tool": "zapier.create_task"}
            await events.put(
                ("tool_started", {**call, "arguments": {"title": "Call Bob", "due": "Friday"}})
            )
            await asyncio.sleep(latency)
            await events.put(("tool_finished", {**call, "ok": True, "summary": "Task created"}))
            reply = "Done: I used zapier__create_task for you."
        if "fail" in text:
            reply, error = (
                "Sorry — I couldn't reach the model service; please try again shortly.",
                "model_unreachable",
            )
        if "markdown" in text:
            reply = MARKDOWN_REPLY
        for word in reply.split(" ")[:3]:
            await events.put(("delta", {"text": word + " "}))
            await asyncio.sleep(latency)
        if "interrupt" in text:
            await events.put(
                (
                    "error",
                    {
                        "type": "not_running",
                        "message": "Livia is stopping; the message is kept and answered"
                        " after the restart",
                    },
                )
            )
        if "drop" in text:
            await events.put(("drop", {}))
        if "interrupt" in text or "drop" in text:
            await asyncio.sleep(2.0)  # finished "during the shutdown"
        else:
            for word in reply.split(" ")[3:]:
                await events.put(("delta", {"text": word + " "}))
        turn.update(reply=reply, error=error, done=True)
        turn["finished"].set()
        await events.put(
            (
                "done",
                {
                    "conversation_id": turn["conversation_id"],
                    "message_id": turn["message_id"],
                    "reply": reply,
                    "error": error,
                    "duplicate": False,
                },
            )
        )

    @app.post("/v1/chat")
    async def chat(request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        body = await request.json()
        app.state.chat_bodies.append(body)
        text, conv = str(body["text"]), str(body["conversation_id"])
        if text.startswith("!413"):
            error = {"type": "text_too_large", "message": "text is 70000 bytes; the limit is 65536"}
            return JSONResponse({"error": error}, status_code=413)
        if text.startswith("!503"):
            error = {
                "type": "busy",
                "message": "Livia is busy (1 messages waiting); please retry in 7 s",
            }
            return JSONResponse({"error": error}, status_code=503, headers={"Retry-After": "7"})
        history = turns.setdefault(conv, [])
        turn = next((t for t in history if t["message_id"] == body["message_id"]), None)
        if turn is None:
            turn = {
                "conversation_id": conv,
                "message_id": body["message_id"],
                "user_id": body["user_id"],
                "text": text,
                "created_at": now(),
                "done": False,
                "finished": asyncio.Event(),
                "events": asyncio.Queue(),
            }
            history.append(turn)
            turn["task"] = asyncio.create_task(run(turn))
            events: asyncio.Queue[Any] = turn["events"]
        else:  # a repeat: the stored (or in-progress) reply, no second run
            events = asyncio.Queue()

            async def later() -> None:
                await turn["finished"].wait()
                await events.put(
                    (
                        "done",
                        {
                            "conversation_id": conv,
                            "message_id": turn["message_id"],
                            "reply": turn["reply"],
                            "error": turn["error"],
                            "duplicate": True,
                        },
                    )
                )

            turn.setdefault("repeats", []).append(asyncio.create_task(later()))

        async def stream() -> AsyncIterator[str]:
            while True:
                name, data = await events.get()
                if name == "drop":
                    return
                yield f"event: {name}\ndata: {json.dumps(data)}\n\n"
                if name in ("done", "error"):
                    return

        return StreamingResponse(stream(), media_type="text/event-stream")

    def listed(conv: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for t in turns.get(conv, []):
            base = {"message_id": t["message_id"], "created_at": t["created_at"]}
            out.append({**base, "role": "user", "content": t["text"], "user_id": t["user_id"]})
            if t["done"]:
                out.append(
                    {**base, "role": "assistant", "content": t["reply"], "error": t["error"]}
                )
        return out

    @app.get("/v1/conversations")
    async def conversations(request: Request, user_id: str = "") -> Response:
        if (refused := denied(request)) is not None:
            return refused
        rows = [
            {
                "conversation_id": c,
                "title": ts[0]["text"][:40],
                "updated_at": ts[-1]["created_at"],
                "messages": len(listed(c)),
            }
            for c, ts in turns.items()
            if ts and (not user_id or ts[0]["user_id"] == user_id)
        ]
        rows.sort(key=lambda r: r["updated_at"], reverse=True)
        return JSONResponse({"conversations": rows})

    @app.get("/v1/conversations/{conversation_id}")
    async def conversation(conversation_id: str, request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        if not turns.get(conversation_id):
            error = {
                "type": "unknown_conversation",
                "message": f"no conversation {conversation_id}",
            }
            return JSONResponse({"error": error}, status_code=404)
        pending = sum(not t["done"] for t in turns[conversation_id])
        return JSONResponse(
            {
                "conversation_id": conversation_id,
                "messages": listed(conversation_id),
                "pending": pending,
            }
        )

    @app.delete("/v1/conversations/{conversation_id}")
    async def delete(conversation_id: str, request: Request) -> Response:
        if (refused := denied(request)) is not None:
            return refused
        if not turns.pop(conversation_id, None):
            error = {
                "type": "unknown_conversation",
                "message": f"no conversation {conversation_id}",
            }
            return JSONResponse({"error": error}, status_code=404)
        app.state.deleted.append(conversation_id)
        return Response(status_code=204)

    return app


async def send(page: Page, text: str) -> None:
    """Types `text` into the message box and presses Send."""
    await page.click("#input")
    await page.type(text)
    await page.click("#send")


DONE = (
    'document.querySelectorAll(\'.msg.assistant[data-state="done"],'
    ' .msg.assistant[data-state="error"]\').length'
)


# --- tests -----------------------------------------------------------------------------


async def test_chat_page_streams_replies_in_tabs(
    chromium: str, live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    url = live_server(fake_livia_app(demo=True))
    async with open_page(chromium) as page:
        await page.goto(url + "/")
        await page.wait_for("document.querySelector('#thread .empty')", "the empty state")
        await page.wait_for("!document.getElementById('demo-banner').hidden", "the demo banner")
        assert await page.js("document.querySelector('a[href=\"/dashboard\"]') !== null")

        # First conversation: a question that uses a tool.
        await page.click("#input")
        await page.type("What time is it in Tokyo?")
        await page.click("#send")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"done\"]')", "the first reply"
        )
        reply = await page.js("document.querySelector('.msg.assistant .content').innerText")
        assert "It is 14:05 in Tokyo right now." in reply
        assert await page.js("document.querySelector('.msg.assistant code').textContent") == (
            "14:05"
        )
        tools = await page.js(
            "[...document.querySelectorAll('.tool')].map((t) => [t.dataset.state,"
            " t.querySelector('.name').textContent, t.querySelector('.summary').textContent])"
        )
        assert tools == [["ok", "time.get_current_time", "14:05 in Tokyo"]]
        first_tab_title = await page.js("document.querySelector('.tab .title').textContent")
        assert first_tab_title.startswith("What time is it")

        # Second conversation in a new tab, answered on its own conversation_id.
        await page.click("#new-tab")
        await page.wait_for("document.querySelectorAll('.tab').length === 2", "a second tab")
        await page.click("#input")
        await page.type("Hello Livia")
        await page.click("#send")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"done\"]')", "the second reply"
        )
        assert "Hello Livia" in await page.js("document.querySelector('#thread').innerText")
        saved = await page.js("JSON.parse(localStorage.getItem('livia.conversations'))")
        assert len({c["id"] for c in saved}) == 2
        assert [len(c["messages"]) for c in saved] == [2, 2]
        assert (await page.js("localStorage.getItem('livia.userId')")).startswith('"web-')

        # Back to the first tab: its conversation is still there.
        await page.click(".tab:first-child .title")
        await page.wait_for(
            "document.querySelector('#thread').innerText.includes('What time is it in Tokyo?')",
            "the first conversation to come back",
        )
        await page.click("#input")
        await page.type("And what time is it in Paris?")
        await page.click("#send")
        await page.wait_for(
            "document.querySelectorAll('.msg.assistant[data-state=\"done\"]').length === 2",
            "the follow-up reply in the first tab",
        )
        assert "14:05 in Paris" in await page.js("document.querySelector('#thread').innerText")
        assert page.errors == []
        keep_screenshot(await page.screenshot(), tmp_path / "web-chat.png")


async def test_chat_page_resumes_a_reply_cut_by_a_reload(
    chromium: str, live_server: Callable[[Any], str]
) -> None:
    """A reload mid-reply looks for the stored reply on the server: never a second POST."""
    app = conversations_app(latency=0.4)
    url = live_server(app)
    async with open_page(chromium) as page:
        await page.goto(url + "/")
        await send(page, "Hello before the reload")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"streaming\"]')", "streaming"
        )
        await page.call("Page.reload")
        await page.wait_for(f"{DONE} === 1", "the stored reply after the reload")
        assert "Hello before the reload" in await page.js(
            "document.querySelector('.msg.assistant .content').innerText"
        )
        assert len(app.state.chat_bodies) == 1 and len(app.state.runs) == 1
        assert page.errors == []


async def test_two_tabs_keep_each_others_conversations(
    chromium: str, live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    """Issue 11, bug 1: the list and the messages come from the server; the cache is a cache."""
    app = conversations_app()
    url = live_server(app)
    async with open_page(chromium) as tab_a:
        assert tab_a.new_tab is not None
        tab_b = await tab_a.new_tab()
        await tab_a.goto(url + "/")
        await tab_b.goto(url + "/")  # both open before either sends: the old bug
        await tab_a.call("Page.bringToFront")  # a hidden tab draws nothing (no frames)
        await send(tab_a, "Hello from tab A")
        await tab_a.wait_for(f"{DONE} === 1", "tab A's reply")
        await tab_b.call("Page.bringToFront")
        await asyncio.sleep(
            0.5
        )  # the sync a tab makes when it comes to the front (a person is slower)
        await tab_b.click("#new-tab")  # tab B still shows the empty chat it loaded with
        await asyncio.sleep(0.3)
        await send(tab_b, "Hello from tab B")
        await tab_b.wait_for(f"{DONE} === 1", "tab B's reply")

        await tab_a.call("Page.bringToFront")
        await tab_a.call("Page.reload")
        await tab_a.wait_for("window.liviaChat && window.liviaChat.listed", "the server's list")
        both = (
            "(() => { const t = [...document.querySelectorAll('.tab .title')]"
            ".map(e => e.textContent); return t.includes('Hello from tab A')"
            " && t.includes('Hello from tab B'); })()"
        )
        await tab_a.wait_for(both, "both tabs' conversations listed after the reload")
        titles = await tab_a.js(
            "[...document.querySelectorAll('.tab .title')].map(t => t.textContent)"
        )
        assert {"Hello from tab A", "Hello from tab B"} <= set(titles), titles
        await tab_a.click(".tab[title^='Hello from tab A'] .title")
        await tab_a.wait_for(
            "document.getElementById('thread').innerText.includes('You said: Hello from tab A')",
            "tab A's conversation with its reply",
        )

        # With no cache at all, everything comes back from the server.
        await tab_a.js("localStorage.removeItem('livia.conversations')")
        await tab_a.call("Page.reload")
        await tab_a.wait_for("document.querySelectorAll('.tab').length >= 2", "the tabs again")
        await tab_a.click(".tab[title^='Hello from tab B'] .title")
        await tab_a.wait_for(
            "document.getElementById('thread').innerText.includes('You said: Hello from tab B')",
            "tab B's conversation loaded from the server",
        )
        text = await tab_a.js("document.getElementById('thread').innerText")
        assert "Hello from tab B" in text and "Hello from tab A" not in text
        keep_screenshot(await tab_a.screenshot(), tmp_path / "two-tabs.png")

        # Deleting (× twice) removes it on the server; the other tab drops it on reload.
        conv_b = await tab_a.js(
            "document.querySelector('.tab[aria-selected=\"true\"]').dataset.conversation"
        )
        await tab_a.click(".tab[aria-selected='true'] .close")
        await tab_a.wait_for("document.querySelector('.tab.confirm')", "the delete confirmation")
        await tab_a.click(".tab[aria-selected='true'] .close")
        for _ in range(100):  # the DELETE reaches the server
            if conv_b in app.state.deleted:
                break
            await asyncio.sleep(0.05)
        assert app.state.deleted == [conv_b]
        await tab_b.call("Page.bringToFront")
        await tab_b.call("Page.reload")
        await tab_b.wait_for("window.liviaChat && window.liviaChat.listed", "tab B's list")
        ids = await tab_b.js(
            "[...document.querySelectorAll('.tab')].map(t => t.dataset.conversation)"
        )
        assert conv_b not in ids
        assert tab_a.errors == [] and tab_b.errors == []


async def test_reply_finished_during_shutdown_reaches_the_page(
    chromium: str, live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    """Issue 11, bug 2: an `error` event or a cut stream: the page polls for the stored reply."""
    app = conversations_app()
    url = live_server(app)
    async with open_page(chromium) as page:
        await page.goto(url + "/")
        await send(page, "Please interrupt this one")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"waiting\"] .status')",
            "the page to wait for the stored reply",
        )
        status = await page.js("document.querySelector('.msg.assistant .status').textContent")
        assert "restarting" in status and "kept" in status, status
        keep_screenshot(await page.screenshot(), tmp_path / "waiting.png")
        await page.wait_for(f"{DONE} === 1", "the stored reply", 15)
        assert "You said: Please interrupt this one" in await page.js(
            "document.querySelector('.msg.assistant .content').innerText"
        )
        assert not await page.js("document.querySelector('.msg.assistant .error').textContent")

        # A stream cut without a word (the connection dropped): the same.
        await send(page, "and drop this one")
        await page.wait_for(f"{DONE} === 2", "the second stored reply", 15)
        assert await page.js("window.liviaChat.polls") >= 2
        # Never re-sent: one POST and one run per message.
        assert [b["text"] for b in app.state.chat_bodies] == [
            "Please interrupt this one",
            "and drop this one",
        ]
        assert len(app.state.runs) == 2

        # A reload shows both (from the server even without the cache).
        await page.js("localStorage.removeItem('livia.conversations')")
        await page.call("Page.reload")
        await page.wait_for(f"{DONE} === 2", "both replies after a reload")
        assert "You said: and drop this one" in await page.js(
            "document.getElementById('thread').innerText"
        )
        assert len(app.state.chat_bodies) == 2
        assert page.errors == []


async def test_stop_retry_queue_and_status(
    chromium: str, live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    """Issue 11: Stop, Retry with the same message_id, a queued message, the status line."""
    app = conversations_app()
    url = live_server(app)
    async with open_page(chromium) as page:
        await page.goto(url + "/")
        await send(page, "a slow question")
        await page.wait_for(
            "document.querySelector('.msg.assistant .status:not([hidden])')", "the status line"
        )
        assert "retry 2 of 5" in await page.js(
            "document.querySelector('.msg.assistant .status').textContent"
        )
        assert await page.js("!document.getElementById('stop').hidden")
        # Typed while the reply streams: queued, shown as queued, sent after.
        await send(page, "a queued question")
        await page.wait_for(
            "document.querySelector('.msg.user[data-state=\"queued\"] .meta')", "the queued mark"
        )
        assert "queued" in await page.js(
            "document.querySelector('.msg.user[data-state=\"queued\"] .meta').textContent"
        )
        assert len(app.state.chat_bodies) == 1
        keep_screenshot(await page.screenshot(), tmp_path / "status-queued.png")

        await page.click("#stop")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"stopped\"]')", "stopped"
        )
        assert await page.js(
            "!document.querySelector('.msg.assistant[data-state=\"stopped\"] .retry').hidden"
        )
        # The queued message goes out once the first one is stopped.
        await page.wait_for(f"{DONE} === 1", "the queued message's reply", 15)
        assert app.state.chat_bodies[1]["text"] == "a queued question"

        await page.click(".msg.assistant[data-state='stopped'] .retry")
        await page.wait_for(f"{DONE} === 2", "the retried reply", 15)
        first, _, retried = app.state.chat_bodies
        assert retried["message_id"] == first["message_id"]  # answered once
        assert app.state.runs.count(first["message_id"]) == 1
        text = await page.js("document.getElementById('thread').innerText")
        assert text.index("You said: a slow question") < text.index("a queued question")
        assert page.errors == []


async def test_composer_keeps_the_message_and_says_why(
    chromium: str, live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    """Issue 11: after 413, 503 and 401 the message stays in the box; a wrong token is named."""
    app = conversations_app(api_token="right-token")
    url = live_server(app)
    async with open_page(chromium, width=390, height=844) as page:
        await page.goto(url + "/")
        await page.js("sessionStorage.setItem('livia.apiToken', 'wrong-token')")
        await page.call("Page.reload")
        await page.wait_for("!document.getElementById('notice').hidden", "the wrong-token notice")
        assert "token of this tab is wrong" in await page.js(
            "document.getElementById('notice').textContent"
        )
        await send(page, "hello there")
        await page.wait_for("document.getElementById('token-dialog').open", "the token dialog")
        assert "not accepted" in await page.js("document.getElementById('token-error').textContent")
        await page.click("#token-dialog button[value=cancel]")
        await page.wait_for("!document.getElementById('notice').hidden", "the notice")
        notice = await page.js("document.getElementById('notice').textContent")
        assert "token is wrong" in notice, notice
        assert await page.js("document.getElementById('input').value") == "hello there"
        assert await page.js("document.querySelectorAll('.msg').length") == 0

        await page.js("sessionStorage.setItem('livia.apiToken', 'right-token')")
        await page.js("document.getElementById('input').value = ''")
        long_text = "!413 " + "x" * 50
        await send(page, long_text)
        await page.wait_for(
            "document.getElementById('notice').textContent.includes('too long')", "413"
        )
        assert await page.js("document.getElementById('input').value") == long_text

        await page.js("document.getElementById('input').value = ''")
        await send(page, "!503 now")
        await page.wait_for("document.getElementById('notice').textContent.includes('busy')", "503")
        notice = await page.js("document.getElementById('notice').textContent")
        assert "7 seconds" in notice and "messages waiting" not in notice, notice
        assert await page.js("document.getElementById('input').value") == "!503 now"
        keep_screenshot(await page.screenshot(), tmp_path / "refused-narrow.png")
        assert page.errors == []


async def test_replies_render_markdown_tools_and_errors(
    chromium: str, live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    """Issue 11: Markdown (vendored, sanitised, copy button), tool arguments, error sentences."""
    app = conversations_app()
    url = live_server(app)
    async with open_page(chromium) as page:
        await page.goto(url + "/")
        # The vendored scripts ran under the page's CSP (script-src 'self' + the hash).
        assert await page.js("typeof window.markdownit === 'function' && !!window.DOMPurify")
        icon = await page.js(
            "fetch('/favicon.ico').then(r => [r.status, r.headers.get('content-type')])"
        )
        assert icon[0] == 200 and icon[1].startswith("image/svg+xml")

        await send(page, "show me markdown")
        await page.wait_for(f"{DONE} === 1", "the Markdown reply")
        content = ".msg.assistant .content"
        assert (
            await page.js(f"document.querySelector('{content} h2').textContent")
            == "Plan for Friday"
        )
        assert await page.js(f"document.querySelector('{content} h2 em').textContent") == "Friday"
        assert (
            await page.js(f"document.querySelector('{content} table td strong').textContent")
            == "Ann"
        )
        assert await page.js(f"document.querySelector('{content} a').rel") == "noopener noreferrer"
        # Sanitised: no script, no handler ran; the raw HTML is shown as text at most.
        assert (
            await page.js(f"document.querySelector('{content} script, {content} [onerror]')")
            is None
        )
        await asyncio.sleep(0.3)
        assert await page.js("window.xss === undefined")
        # A copy button on the code block.
        await page.js(
            "window.copied = null;"
            " navigator.clipboard.writeText = async (t) => { window.copied = t; }"
        )
        await page.click(f"{content} .codeblock .copy")
        await page.wait_for("window.copied", "the copied code")
        assert await page.js("window.copied") == 'print("hi")'
        assert await page.js(f"document.querySelector('{content} .copy').textContent") == "Copied"

        await send(page, "create a task")
        await page.wait_for(f"{DONE} === 2", "the tool reply")
        tool = await page.js(
            "[...document.querySelectorAll('.tool')].map(t =>"
            " [t.querySelector('.name').textContent, t.querySelector('.args').textContent])"
        )
        assert tool == [["zapier.create_task", "title: Call Bob · due: Friday"]]
        thread = await page.js("document.getElementById('thread').innerText")
        assert "zapier.create_task for you" in thread and "zapier__" not in thread

        await send(page, "this will fail")
        await page.wait_for(f"{DONE} === 3", "the failed reply")
        error = await page.js(
            "document.querySelector('.msg.assistant[data-state=\"error\"] .error').textContent"
        )
        assert error.startswith("Livia could not reach the model service."), error
        assert "model_unreachable" not in await page.js("document.body.innerText")
        assert await page.js(
            "!document.querySelector('.msg.assistant[data-state=\"error\"] .retry').hidden"
        )
        # Retry after a stored failure asks again as a new message.
        await page.click(".msg.assistant[data-state='error'] .retry")
        await page.wait_for(f"{DONE} === 4", "the retried question")
        assert app.state.chat_bodies[-1]["text"] == "this will fail"
        assert app.state.chat_bodies[-1]["message_id"] != app.state.chat_bodies[-2]["message_id"]
        assert (await page.js("document.querySelector('.tab').title")).endswith("· 4 messages")
        keep_screenshot(await page.screenshot(), tmp_path / "markdown-tools.png")
        assert page.errors == []


async def test_narrow_screens(
    chromium: str, live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    """Issue 11: at 390 px the tabs keep readable titles and no header button is off screen."""
    url = live_server(conversations_app())
    dashboard = live_server(fake_livia_app())
    async with open_page(chromium, width=390, height=844) as page:
        await page.goto(url + "/")
        for text in ("What is on my calendar?", "Create a task for Bob", "Hello there Livia"):
            await send(page, text)
            await page.wait_for(f"{DONE} === 1", "a reply")
            await page.click("#new-tab")
            await page.wait_for("document.querySelectorAll('.msg').length === 0", "a new tab")
        await page.click(".tab:first-child .title")
        await page.wait_for(f"{DONE} === 1", "the first conversation")
        widths = await page.js(
            "[...document.querySelectorAll('.tab .title')]"
            ".map(t => t.getBoundingClientRect().width)"
        )
        assert min(widths[:3]) > 80, widths  # not 3 letters
        assert (await page.js("document.querySelector('.tab').title")).endswith("· 1 message")
        rights = await page.js(
            "[...document.querySelectorAll('.topbar > button, .topbar > a')]"
            ".map(e => e.getBoundingClientRect().right)"
        )
        assert rights and max(rights) <= 390, rights
        assert await page.js("document.documentElement.scrollWidth") <= 390
        keep_screenshot(await page.screenshot(), tmp_path / "chat-390.png")

        await page.goto(dashboard + "/dashboard")
        await page.wait_for("window.liviaDashboard && window.liviaDashboard.polls >= 1", "a poll")
        rights = await page.js(
            "[...document.querySelectorAll('.topbar button, .topbar a')]"
            ".map(e => e.getBoundingClientRect().right)"
        )
        assert rights and max(rights) <= 390, rights
        keep_screenshot(await page.screenshot(), tmp_path / "dashboard-390.png")


async def test_chat_page_asks_for_the_token(
    chromium: str, live_server: Callable[[Any], str]
) -> None:
    url = live_server(fake_livia_app(demo=False, api_token="s3cret-token"))
    async with open_page(chromium) as page:
        await page.goto(url + "/")
        await page.wait_for("document.querySelector('#thread .empty')", "the page")
        assert await page.js("document.getElementById('demo-banner').hidden")
        await page.click("#input")
        await page.type("hi")
        await page.click("#send")
        await page.wait_for("document.getElementById('token-dialog').open", "the token dialog")
        await page.click("#token-input")
        await page.type("s3cret-token")
        await page.click("#token-dialog button[value=save]")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"done\"]')", "the reply"
        )
        # The token lives in this tab's sessionStorage, never in localStorage.
        assert await page.js("sessionStorage.getItem('livia.apiToken')") == "s3cret-token"
        assert await page.js("localStorage.getItem('livia.apiToken')") is None
        assert page.errors == []


async def test_dashboard_draws_live_charts(
    chromium: str, live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    url = live_server(fake_livia_app(demo=True, latency=1.0))

    async def load() -> None:
        """Twelve users at once: more than openai's 8 slots, so some wait."""
        async with httpx2.AsyncClient(base_url=url, timeout=30) as client:

            async def one(i: int) -> None:
                text = "what time is it?" if i % 2 else f"hello {i}"
                body = {"conversation_id": f"c{i}", "user_id": f"u{i}", "text": text}
                (await client.post("/v1/chat", json=body)).raise_for_status()

            for _ in range(2):
                await asyncio.gather(*(one(i) for i in range(12)))

    async with open_page(chromium, height=1500) as page:
        await page.goto(url + "/dashboard")
        await page.wait_for("window.liviaDashboard && window.liviaDashboard.polls >= 1", "a poll")
        traffic = asyncio.create_task(load())
        await page.wait_for(
            "window.liviaDashboard.lastStats.upstreams.openai.waiting > 0"
            " || window.liviaDashboard.lastStats.upstreams.openai.concurrent_requests > 0",
            "the dashboard to see calls in flight",
        )
        await asyncio.wait_for(traffic, 30)
        polls = await page.js("window.liviaDashboard.polls")
        await page.wait_for(f"window.liviaDashboard.polls >= {polls + 2}", "two more polls")

        names = await page.js(
            "[...document.querySelectorAll('[data-upstream]')].map(e => e.dataset.upstream)"
        )
        assert {"openai", "zapier", "slack"} <= set(names)
        assert await page.js("document.getElementById('k-answered').textContent") == "24"
        assert not await page.js("document.getElementById('demo-badge').hidden")
        # Every chart drew: axes at least, and the series of each point polled.
        ink = await canvas_ink(page, "canvas.chart")
        assert len(ink) == 2 + 2 * len(names) and all(n > 500 for n in ink), ink
        points = await page.js(
            "[...document.querySelectorAll('canvas.chart')].map(c => Number(c.dataset.points))"
        )
        assert all(p >= 3 for p in points), points
        bars = await page.js(
            "[...document.querySelectorAll('[data-upstream=openai] .bar .bar-label b')]"
            ".map(b => b.textContent)"
        )
        assert "24 / 500" in bars
        assert page.errors == []
        keep_screenshot(await page.screenshot(), tmp_path / "dashboard.png")


async def test_dashboard_asks_for_the_token(
    chromium: str, live_server: Callable[[Any], str]
) -> None:
    url = live_server(fake_livia_app(api_token="dash-token"))
    async with open_page(chromium) as page:
        await page.goto(url + "/dashboard")
        await page.wait_for("document.getElementById('token-dialog').open", "the token dialog")
        assert await page.js("window.liviaDashboard.polls") == 0
        await page.click("#token-input")
        await page.type("dash-token")
        await page.click("#token-dialog button[value=save]")
        await page.wait_for("window.liviaDashboard.polls >= 1", "a poll with the token")
        assert await page.js("sessionStorage.getItem('livia.apiToken')") == "dash-token"
        assert await page.js("localStorage.getItem('livia.apiToken')") is None
        assert page.errors == []


async def test_real_app_in_demo_mode(
    chromium: str,
    live_server: Callable[[Any], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real app (`livia.app.build_app`) in demo mode: chat with a tool, then the dashboard.

    These are the README screenshots.
    """
    from livia.app import build_app
    from livia.config import Settings

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings(store={"url": f"sqlite:///{tmp_path}/livia.db"})
    assert settings.demo_mode
    url = live_server(build_app(settings))

    async with open_page(chromium) as page:
        await page.goto(url + "/")
        await page.wait_for("!document.getElementById('demo-banner').hidden", "the demo banner")
        await page.click("#input")
        await page.type("Hi Livia! What can you do?")
        await page.click("#send")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"done\"]')", "a reply", 30
        )
        await page.click("#new-tab")
        await page.click("#input")
        await page.type("Create a task to review the Q3 report by Friday")
        await page.click("#send")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"done\"]')",
            "the reply after the tool",
            30,
        )
        tools = await page.js(
            "[...document.querySelectorAll('.tool')].map((t) => [t.dataset.state,"
            " t.querySelector('.name').textContent])"
        )
        assert len(tools) == 1 and tools[0][0] == "ok" and "create_task" in tools[0][1], tools
        assert await page.js("document.querySelector('.tool .args').textContent")
        assert await page.js("document.querySelector('.msg.assistant .content').innerText")
        assert "__" not in await page.js("document.getElementById('thread').innerText")
        assert await page.js("typeof window.markdownit === 'function' && !!window.DOMPurify")
        assert page.errors == []
        keep_screenshot(await page.screenshot(), tmp_path / "web-chat.png", readme=True)

        # The real GET /v1/conversations[/{id}]: with no cache, both come back.
        await page.js("localStorage.removeItem('livia.conversations')")
        await page.call("Page.reload")
        await page.wait_for("window.liviaChat && window.liviaChat.listed", "the server's list")
        await page.wait_for("document.querySelectorAll('.tab').length === 2", "both conversations")
        await page.wait_for(f"{DONE} === 1", "the active conversation's messages")
        assert "Create a task to review the Q3 report" in await page.js(
            "document.getElementById('thread').innerText"
        )
        assert page.errors == []

    stop = asyncio.Event()

    async def traffic() -> None:
        """Rounds of sixteen users at once (more than the model's 8 slots) until `stop`."""
        async with httpx2.AsyncClient(base_url=url, timeout=60) as client:

            async def one(i: int, r: int) -> None:
                text = f"Create a task number {i}" if i % 4 == 0 else f"Hello from user {i}"
                body = {"conversation_id": f"load-{r}-{i}", "user_id": f"u{i}", "text": text}
                (await client.post("/v1/chat", json=body)).raise_for_status()

            for r in range(10):  # bounded: at most ten rounds of ~2 s
                await asyncio.gather(*(one(i, r) for i in range(16)))
                if stop.is_set():
                    return

    async with open_page(chromium, height=1400) as page:
        await page.goto(url + "/dashboard")
        await page.wait_for("window.liviaDashboard && window.liviaDashboard.polls >= 1", "a poll")
        polls = await page.js("window.liviaDashboard.polls")
        load = asyncio.create_task(traffic())
        try:
            # Some seconds of history, so the charts show a shape.
            await page.wait_for(f"window.liviaDashboard.polls >= {polls + 8}", "8 polls", 20)
            await page.wait_for(
                "window.liviaDashboard.lastStats.upstreams.openai.waiting > 0",
                "calls waiting for the model's slots",
                20,
            )
            names = await page.js(
                "[...document.querySelectorAll('[data-upstream]')].map(e => e.dataset.upstream)"
            )
            assert {"openai", "zapier"} <= set(names)
            assert "connected" in await page.js("document.getElementById('tools').innerText")
            assert all(n > 500 for n in await canvas_ink(page, "canvas.chart"))
            keep_screenshot(await page.screenshot(), tmp_path / "dashboard.png", readme=True)
        finally:
            stop.set()
            await asyncio.wait_for(load, 60)
        assert page.errors == []


def test_readme_screenshots_are_committed() -> None:
    """The README images exist and are PNGs (regenerate: see this module's docstring)."""
    for name in ("web-chat.png", "dashboard.png"):
        assert (ROOT / "docs" / "img" / name).read_bytes().startswith(b"\x89PNG"), name


async def test_a_reply_finished_across_a_restart_reaches_the_page(
    chromium: str, tmp_path: Path
) -> None:
    """Issue 11, bug 2 with real processes: SIGTERM while the page streams a reply; the
    stream ends (error: the message is kept), the page waits without re-sending, and the
    reply the restarted server gives to the kept message appears, also after a reload."""
    import signal

    from livia.sim import SimOpenAI, SimOpenAIConfig
    from tests.test_serve import _clean_env, _free_port, _serve, _wait_ready

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    async with (
        SimOpenAI(SimOpenAIConfig(latency=12.0)) as slow,
        SimOpenAI(SimOpenAIConfig(latency=0.2)) as fast,
        open_page(chromium) as page,
    ):

        def env(model: SimOpenAI) -> dict[str, str]:
            return _clean_env(
                LIVIA_STORE__URL=f"sqlite:///{tmp_path}/livia.db", LIVIA_LLM__BASE_URL=model.url
            )

        with _serve(tmp_path, port, env(slow)) as served:
            await _wait_ready(url, served)
            await page.goto(url + "/")
            await send(page, "Hello across a restart")
            for _ in range(200):  # the turn is at the (slow) model
                if slow.stats.requests:
                    break
                await asyncio.sleep(0.05)
            assert slow.stats.requests == 1, served.output()
            served.proc.send_signal(signal.SIGTERM)
            await page.wait_for(
                "document.querySelector('.msg.assistant[data-state=\"waiting\"] .status')",
                "the page to wait for the kept message's reply",
                20,
            )
            status = await page.js("document.querySelector('.msg.assistant .status').textContent")
            served.proc.wait(timeout=30)
        with _serve(tmp_path, port, env(fast)) as served:
            await _wait_ready(url, served)
            await page.wait_for(f"{DONE} === 1", "the reply after the restart", 45)
            reply = await page.js("document.querySelector('.msg.assistant .content').innerText")
            assert reply.strip(), served.output()
            assert await page.js("window.liviaChat.sent") == 1  # never re-sent
            assert fast.stats.requests >= 1  # answered by the restarted server
            await page.call("Page.reload")
            await page.wait_for(f"{DONE} === 1", "the reply after a reload")
            assert (
                await page.js("document.querySelector('.msg.assistant .content').innerText")
                == reply
            )
            assert page.errors == []
    print(f"\nwhile stopping, the page said: {status!r}")


async def test_a_user_key_acts_as_its_user(chromium: str, livia_server: Callable[..., Any]) -> None:
    """With per-user keys (`livia keys create ann`), the page asks for the key, then sends,
    lists and shows conversations as that key's user (`GET /v1/me`)."""
    running = await livia_server(latency=0.05)
    _key, secret = await running.livia.identity.create_key("ann")
    async with open_page(chromium) as page:
        await page.goto(running.url + "/")
        await send(page, "Hello as Ann")
        await page.wait_for("document.getElementById('token-dialog').open", "the token dialog")
        await page.click("#token-input")
        await page.type(secret)
        await page.click("#token-dialog button[value=save]")
        await page.wait_for(f"{DONE} === 1", "the reply")
        assert await page.js("document.getElementById('who').textContent") == "you are ann"
        listed = await running.livia.store.list_user_conversations(user_id="ann", limit=10)
        assert [c.title for c in listed] == ["Hello as Ann"]

        await page.js("localStorage.removeItem('livia.conversations')")
        await page.call("Page.reload")
        await page.wait_for("window.liviaChat && window.liviaChat.listed", "ann's list")
        await page.wait_for(f"{DONE} === 1", "ann's conversation from the server")
        assert "Hello as Ann" in await page.js("document.getElementById('thread').innerText")
        assert page.errors == []
