"""`/stats`, `/metrics`, the dashboard and `livia stats` show the upstreams this deployment
uses (issue 11, friction): with `[slack] mode = "off"`, no Slack row and no Slack slots.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from livia import cli
from livia.app import build_app
from livia.concurrency import ConcurrencyManager
from livia.config import Settings, StoreConfig
from livia.monitoring.snapshot import upstream_stats


def test_a_demo_with_slack_off_shows_only_the_model_and_tools(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    live_server: Callable[[Any], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings(store=StoreConfig(url=f"sqlite:///{tmp_path / 'livia.db'}"))
    assert settings.slack.mode == "off"
    url = live_server(build_app(settings))
    stats = httpx.get(f"{url}/stats", timeout=10).json()
    metrics = httpx.get(f"{url}/metrics", timeout=10).text

    assert list(stats["upstreams"]) == ["openai", "zapier"]
    # the dashboard's "of N slots" is the sum of what /stats lists: 8 + 3, no Slack's 4
    assert sum(s["max_concurrent"] for s in stats["upstreams"].values()) == 11
    assert 'api="openai"' in metrics and 'api="slack"' not in metrics

    assert cli.main(["stats", "--once", "--url", url]) == 0
    table = capsys.readouterr().out
    assert "openai" in table and "zapier" in table and "slack" not in table


async def test_an_upstream_outside_the_deployment_shows_once_it_has_calls() -> None:
    manager = ConcurrencyManager()  # the reference policies: openai, zapier, slack
    state = SimpleNamespace(manager=manager, upstreams_in_use=frozenset({"openai"}))
    try:
        assert list(upstream_stats(state)) == ["openai"]
        await manager.run("slack", lambda: _noop(), key="k")
        assert list(upstream_stats(state)) == ["openai", "slack"]
        # without the set (another embedding of the manager), every upstream is shown
        assert list(upstream_stats(SimpleNamespace(manager=manager))) == [
            "openai",
            "zapier",
            "slack",
        ]
    finally:
        await manager.aclose()


async def _noop() -> None:
    return None
