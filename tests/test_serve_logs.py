"""`livia serve`'s log as a newcomer reads it (issue 11, friction): one message can be
followed through it, no line is repeated by the built-in simulators, and a Slack start-up
error names every missing token in one line, without a class path.

Each test runs a real `livia serve` process in demo mode and reads what it wrote.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.test_serve import _clean_env, _free_port, _serve, _wait_ready


async def test_one_message_can_be_followed_and_no_line_repeats(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with _serve(tmp_path, port, _clean_env()) as served:
        await _wait_ready(url, served)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = {
                "conversation_id": "conv-follow",
                "user_id": "ann",
                "message_id": "msg-follow",
                "text": "Create a task to call Bob",
            }
            resp = await client.post("/v1/chat", json=body)
            assert resp.status_code == 200 and resp.json()["error"] is None
        output = served.output()

    tool_lines = [line for line in output.splitlines() if "tool zapier.create_task ok" in line]
    assert len(tool_lines) == 1, output
    assert "conversation_id=conv-follow" in tool_lines[0]
    assert "message_id=msg-follow" in tool_lines[0]
    assert "key=ann" in tool_lines[0]
    # every line of the turn names the message, from intake to reply
    followed = [line for line in output.splitlines() if "message_id=msg-follow" in line]
    assert len(followed) >= 4, output
    # the simulators embedded in demo mode do not repeat uvicorn's start-up lines
    assert output.count("Started server process") == 1, output
    assert output.count("Application startup complete") == 1, output


def test_a_slack_start_up_error_names_every_missing_token(tmp_path: Path) -> None:
    port = _free_port()
    env = _clean_env(LIVIA_SLACK__MODE="socket")
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        env.pop(name, None)
    with _serve(tmp_path, port, env) as served:
        code = served.proc.wait(timeout=60)
        output = served.output()
    assert code != 0, output
    errors = [line for line in output.splitlines() if "SLACK_" in line]
    assert len(errors) == 1, output
    assert "SLACK_BOT_TOKEN" in errors[0] and "SLACK_APP_TOKEN" in errors[0]
    assert not re.search(r"\blivia(\.\w+)+Error\b", output), output  # no class paths
    assert "Traceback" not in output
