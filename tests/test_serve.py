"""`livia serve` as a real process: the demo out of the box, recovery after kill -9, config."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from livia.config import ApiConfig, McpServerConfig, Settings, load_settings
from livia.sim import SimOpenAI, SimOpenAIConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "livia.example.toml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without keys or LIVIA_* settings (a fresh machine), plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("LIVIA_") and k != "OPENAI_API_KEY"
    }
    return {**env, **extra}


@dataclass
class Served:
    """A `livia serve` process and the file its output goes to."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def _serve(cwd: Path, port: int, env: dict[str, str]) -> Iterator[Served]:
    """`livia serve --port PORT` in `cwd`; killed (if still alive) on exit."""
    log = cwd / f"serve-{port}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "livia", "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield Served(proc, log)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


async def _wait_ready(url: str, served: Served, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        while time.monotonic() < deadline:
            if served.proc.poll() is not None:
                raise AssertionError(f"livia serve exited while starting:\n{served.output()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"livia serve was not ready within {timeout} s:\n{served.output()}")


async def test_fresh_checkout_serves_the_demo(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with _serve(tmp_path, port, _clean_env()) as served:
        await _wait_ready(url, served)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            health = (await client.get("/healthz")).json()
            assert health["demo"] is True and "Demo mode" in health["notice"]
            body = {"conversation_id": "d1", "user_id": "me", "text": "hello there"}
            resp = await client.post("/v1/chat", json=body)
            assert resp.status_code == 200 and resp.json()["error"] is None
            assert "demo model" in resp.json()["reply"]
            tools = (await client.get("/v1/info")).json()["tools"]
            assert any(tool.startswith("zapier.") for tool in tools)
            # What start-up built is left out of later garbage collections (issue 12:
            # each full collection walked it all, 120–290 ms with the loop stopped).
            loop = (await client.get("/stats")).json()["loop"]
            assert loop["gc_frozen_objects"] > 10_000, loop
            # Ctrl-C while a message is being answered: the turn may finish, then it stops
            body = {"conversation_id": "d2", "user_id": "me", "text": "one more"}
            in_flight = asyncio.create_task(client.post("/v1/chat", json=body))
            deadline = time.monotonic() + 20
            while (await client.get("/v1/conversations/d2")).status_code == 404:
                assert time.monotonic() < deadline and not in_flight.done()
                await asyncio.sleep(0.05)
            served.proc.send_signal(signal.SIGINT)
            last = await in_flight
            assert last.status_code == 200 and last.json()["error"] is None
        assert served.proc.wait(timeout=20) in (0, 130)
    assert (tmp_path / "var" / "livia.db").exists()  # the default store, created on demand
    log = served.output()
    assert "DEMO MODE" in log and "Traceback" not in log


@pytest.fixture
async def model_servers() -> AsyncIterator[tuple[SimOpenAI, SimOpenAI]]:
    """A model too slow to answer before the crash, and a quick one for after."""
    async with (
        SimOpenAI(SimOpenAIConfig(latency=60)) as slow,
        SimOpenAI(SimOpenAIConfig(latency=0.1)) as fast,
    ):
        yield slow, fast


async def test_message_accepted_before_kill_9_is_answered_after_restart(
    tmp_path: Path, model_servers: tuple[SimOpenAI, SimOpenAI]
) -> None:
    slow, fast = model_servers
    store = f"sqlite:///{tmp_path}/state/livia.db"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    body = {
        "conversation_id": "k9",
        "user_id": "u",
        "text": "remember the milk",
        "message_id": "m1",
    }

    first_run = _clean_env(LIVIA_STORE__URL=store, LIVIA_LLM__BASE_URL=slow.url)
    with _serve(tmp_path, port, first_run) as served:
        await _wait_ready(url, served)
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            pending = asyncio.create_task(client.post("/v1/chat", json=body))
            deadline = time.monotonic() + 20
            while slow.stats.requests < 1:  # accepted, and its model call is under way
                assert time.monotonic() < deadline and not pending.done(), served.output()
                await asyncio.sleep(0.05)
            served.proc.send_signal(signal.SIGKILL)
            served.proc.wait(timeout=10)
            with pytest.raises(httpx.TransportError):
                await pending

    second_run = _clean_env(LIVIA_STORE__URL=store, LIVIA_LLM__BASE_URL=fast.url)
    with _serve(tmp_path, port, second_run) as served:
        await _wait_ready(url, served)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 20
            while True:
                messages = (await client.get("/v1/conversations/k9")).json()["messages"]
                if any(m["role"] == "assistant" for m in messages):
                    break
                assert time.monotonic() < deadline, (
                    f"not answered after restart:\n{served.output()}"
                )
                await asyncio.sleep(0.1)
            assert [m["role"] for m in messages] == ["user", "assistant"]
            assert "remember the milk" in messages[1]["content"]
            again = (await client.post("/v1/chat", json=body)).json()
            assert again["duplicate"] is True and again["reply"] == messages[1]["content"]
    assert fast.stats.requests == 1  # answered once after the restart, never again


def test_a_bad_store_url_is_a_message_not_a_trace(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "livia", "serve", "--port", "0"],
        cwd=tmp_path,
        env=_clean_env(LIVIA_STORE__URL="mysql://db/livia"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "unsupported [store] url" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_store_is_refused_in_one_line(tmp_path: Path) -> None:
    port = _free_port()
    result = subprocess.run(
        [sys.executable, "-m", "livia", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_clean_env(LIVIA_STORE__URL="postgresql://livia:hunter2@127.0.0.1:1/livia"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("livia serve: cannot reach the store postgresql://")
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    with socket.socket() as sock:  # it never took the port
        sock.bind(("127.0.0.1", port))


def test_an_unreachable_redis_is_a_message_not_a_trace(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "livia", "serve", "--port", "0"],
        cwd=tmp_path,
        env=_clean_env(
            LIVIA_COORDINATION__BACKEND="redis",
            LIVIA_COORDINATION__REDIS_URL="redis://127.0.0.1:1/0",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    sections = set(re.findall(r"^#?\s*\[\[?([a-z_.]+)\]?\]", text, flags=re.MULTILINE))
    for name, field in Settings.model_fields.items():
        if name == "apis":
            assert "apis.openai" in sections
            assert set(ApiConfig.model_fields) <= documented
            continue
        assert name in sections, f"[{name}] is not in {EXAMPLE.name}"
        assert field.annotation is not None
        keys = set(field.annotation.model_fields) - {"servers"}  # type: ignore[union-attr]
        assert keys <= documented, f"[{name}] keys missing: {keys - documented}"
    assert "mcp.servers" in sections and set(McpServerConfig.model_fields) <= documented
    # and the file itself loads, with the built-in defaults
    settings = load_settings(EXAMPLE)
    assert settings.server == Settings().server and settings.policies() == Settings().policies()
