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
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import websockets

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
            value = await self.js(probe)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; JS errors: {self.errors}"
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
            target = (
                await call(
                    "Target.createTarget", {"url": "about:blank", "browserContextId": context}
                )
            )["targetId"]
            session = (await call("Target.attachToTarget", {"targetId": target, "flatten": True}))[
                "sessionId"
            ]
            page = pages[session] = Page(ws, session, call)
            await page.call("Runtime.enable")
            await page.call("Page.enable")
            await page.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield page
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
    """A reload mid-reply asks again with the same message_id (answered once server-side)."""
    app = fake_livia_app(latency=1.0)
    url = live_server(app)
    async with open_page(chromium) as page:
        await page.goto(url + "/")
        await page.click("#input")
        await page.type("Hello before the reload")
        await page.click("#send")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"streaming\"]')", "streaming"
        )
        await page.call("Page.reload")
        await page.wait_for(
            "document.querySelector('.msg.assistant[data-state=\"done\"]')",
            "the resumed reply",
        )
        assert "Hello before the reload" in await page.js(
            "document.querySelector('.msg.assistant .content').innerText"
        )
        first, second = app.state.chat_bodies
        assert first["message_id"] == second["message_id"]
        assert first["conversation_id"] == second["conversation_id"]
        assert page.errors == []


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
        assert await page.js("document.querySelector('.msg.assistant .content').innerText")
        assert page.errors == []
        keep_screenshot(await page.screenshot(), tmp_path / "web-chat.png", readme=True)

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
