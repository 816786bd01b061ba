"""`livia chat` at a real terminal (a pty) and against the real app: editing, history, commands."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fake_livia_app

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("LIVIA_") and k != "OPENAI_API_KEY"
    }
    return {**env, "XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm", "COLUMNS": "100"}


class Terminal:
    """`livia chat ARGS` on a pseudo-terminal: type keys, wait for text on the screen."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import pty  # noqa: F401 - only where ptys exist

        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "livia", "chat", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.output = b""

    @property
    def screen(self) -> str:
        return self.output.decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.screen.count(text) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen {count}x; the screen:\n{self.screen}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed its side
                    chunk = b""
                if not chunk:
                    assert self.proc.poll() is None or text in self.screen, self.screen
                    time.sleep(0.05)
                self.output += chunk

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self.master)


def test_line_editing_history_and_local_commands(
    live_server: Callable[[Any], str], tmp_path: Path
) -> None:
    app = fake_livia_app(demo=True)
    url = live_server(app)
    term = Terminal(["--url", url, "--conversation", "t1"], _env(tmp_path))
    try:
        term.wait_for("you ›")
        assert "demo mode" in term.screen  # the server said so
        assert "new conversation t1" in term.screen  # the fake app has no history: 404
        term.type("/help\r")
        term.wait_for("start a new conversation")
        term.type("/frobnicate\r")
        term.wait_for("unknown command /frobnicate")
        term.type("hello there\r")
        term.wait_for("Hello! You said")
        term.wait_for("you ›", count=4)
        # Up recalls the last line; Left/Backspace edit it in place (readline)
        term.type("\x1b[A\x1b[D\x1b[D\x7f\x7fxx\r")
        term.wait_for("Hello! You said", count=2)
        term.wait_for("you ›", count=5)
        term.type("/quit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    texts = [body["text"] for body in app.state.chat_bodies]
    assert texts == ["hello there", "hello txxre"]  # no /help, /frobnicate or /quit
    assert "^[[A" not in term.screen
    history = (tmp_path / "state" / "livia" / "chat_history").read_text()
    assert "hello there" in history and "/help" in history


async def test_a_given_conversation_shows_its_earlier_messages(
    livia_server: Any, tmp_path: Path
) -> None:
    srv = await livia_server(latency=0.01)
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        for text in ("first question", "second question"):
            body = {"conversation_id": "c1", "user_id": "ann", "text": text}
            resp = await client.post("/v1/chat", json=body)
            assert resp.status_code == 200 and resp.json()["error"] is None
    calls = len(srv.model_requests)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livia",
        "chat",
        "--url",
        srv.url,
        "--conversation",
        "c1",
        "--user",
        "ann",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(tmp_path),
    )
    async with asyncio.timeout(30):
        out_bytes, err = await process.communicate(b"/help\n/history\n/quit\n")
    out = out_bytes.decode()
    assert process.returncode == 0, out + err.decode()
    assert "earlier in c1:" in out
    assert out.index("you › first question") < out.index("you › second question")
    assert out.count("livia › ") >= 2
    assert out.count("earlier in c1:") == 2  # at the start and for /history
    assert "demo mode" not in out.splitlines()[0]  # a model endpoint is configured
    assert len(srv.model_requests) == calls  # /help and /history never reach the model
