"""`/stats`, `/metrics` and `/dashboard`: shapes, Prometheus families, the bearer token."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from livia.concurrency import ApiPolicy, ConcurrencyManager
from livia.config import Settings
from livia.monitoring import LiviaCollector, metrics_registry, monitoring_router, snapshot

UPSTREAM = {
    "total_requests": 10,
    "successful_requests": 8,
    "failed_requests": 2,
    "success_rate": 0.8,
    "concurrent_requests": 3,
    "average_response_time": 0.5,
    "waiting": 4,
    "retries": 5,
    "http_429": 1,
    "rate_limit_waits": 6,
    "total_wait_time": 7.5,
    "capacity_exhausted": 2,
    "latency_p50": 0.4,
    "latency_p95": 0.9,
    "latency_p99": 1.5,
    "circuit_state": "half_open",
    "max_concurrent": 8,
    "limits": {
        "max_concurrent": {"limit": 8, "used": 3, "window_s": 0},
        "requests_per_minute": {"limit": 500, "used": 125, "window_s": 60},
    },
}
CONVERSATIONS = {
    "running": True,
    "active": 2,
    "queued": 1,
    "answered": 40,
    "failed": 3,
    "duplicates": 4,
    "waiting_conversations": 1,
    "brand_new_counter": 9,
}
TOOLS = {
    "zapier": {"state": "connected", "transport": "http", "api": "zapier", "tools": 4},
    "files": {"state": "down", "transport": "stdio", "api": "zapier", "tools": 0},
}


class FakeManager:
    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def get_stats(self) -> dict[str, Any]:
        return self.stats


def make_app(state: Any, *, token: str = "") -> FastAPI:
    app = FastAPI()
    app.include_router(monitoring_router())
    if state is not None and token:
        state.settings = Settings(server={"api_token": token})
    app.state.livia = state
    return app


def fake_state(**changes: Any) -> SimpleNamespace:
    state = SimpleNamespace(
        settings=Settings(),
        manager=FakeManager({"openai": dict(UPSTREAM), "zapier": {"total_requests": 1}}),
        conversations=SimpleNamespace(stats=lambda: dict(CONVERSATIONS)),
        agent=SimpleNamespace(toolbox=SimpleNamespace(status=lambda: TOOLS)),
        demo=True,
    )
    for key, value in changes.items():
        setattr(state, key, value)
    return state


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app(fake_state())) as c:
        yield c


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, **labels: str) -> float:
    """The value of the one sample of `family` with these labels."""
    found = [
        s.value
        for s in fams[family].samples
        if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith("_created")
    ]
    assert len(found) >= 1, f"no {family} sample with {labels}"
    return float(found[0])


# --- /stats ----------------------------------------------------------------------------


def test_stats_shape(client: TestClient) -> None:
    response = client.get("/stats")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "instance",
        "scope",
        "upstreams",
        "conversations",
        "tools",
        "loop",
        "demo",
        "time",
    }
    assert body["upstreams"]["openai"] == UPSTREAM
    assert body["conversations"] == CONVERSATIONS
    assert body["tools"] == TOOLS
    assert body["demo"] is True
    assert abs(body["time"] - time.time()) < 60


async def test_stats_of_a_real_manager_after_calls() -> None:
    """The keys the dashboard and the CLI read are the ones the real manager reports."""
    manager = ConcurrencyManager({"openai": ApiPolicy(max_concurrent=2, requests_per_minute=50)})
    await asyncio.gather(*(manager.run("openai", lambda: asyncio.sleep(0.01)) for _ in range(3)))
    doc = snapshot(SimpleNamespace(manager=manager, demo=False))
    up = doc["upstreams"]["openai"]
    for key in (
        "total_requests",
        "successful_requests",
        "failed_requests",
        "success_rate",
        "concurrent_requests",
        "average_response_time",
        "waiting",
        "retries",
        "http_429",
        "rate_limit_waits",
        "total_wait_time",
        "capacity_exhausted",
        "latency_p50",
        "latency_p95",
        "latency_p99",
        "circuit_state",
        "max_concurrent",
        "limits",
    ):
        assert key in up, key
    assert up["total_requests"] == 3 and up["successful_requests"] == 3
    assert up["limits"]["requests_per_minute"] == {"limit": 50, "used": 3, "window_s": 60.0}
    assert up["circuit_state"] == "closed"
    await manager.aclose()


def test_stats_tolerates_missing_and_broken_sources() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    state = SimpleNamespace(
        manager=SimpleNamespace(get_stats=broken),
        conversations=SimpleNamespace(stats=lambda: {"active": float("nan")}),
    )
    body = snapshot(state)
    assert body["upstreams"] == {} and body["tools"] == {} and body["demo"] is False
    assert body["conversations"] == {"active": None}  # strict JSON: no NaN
    assert snapshot(None)["upstreams"] == {}
    with TestClient(make_app(None)) as c:  # before the app's lifespan has set livia
        assert c.get("/stats").json()["upstreams"] == {}
        assert c.get("/metrics").status_code == 200


# --- /metrics --------------------------------------------------------------------------


def test_metrics_parse_and_carry_every_upstream_family(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = families(response.text)
    api = {"api": "openai"}
    assert sample(fams, "livia_upstream_requests", **api) == 10
    assert sample(fams, "livia_upstream_requests_successful", **api) == 8
    assert sample(fams, "livia_upstream_requests_failed", **api) == 2
    assert fams["livia_upstream_requests"].type == "counter"
    assert sample(fams, "livia_upstream_in_flight", **api) == 3
    assert sample(fams, "livia_upstream_waiting", **api) == 4
    assert fams["livia_upstream_waiting"].type == "gauge"
    assert sample(fams, "livia_upstream_retries", **api) == 5
    assert sample(fams, "livia_upstream_http_429", **api) == 1
    assert sample(fams, "livia_upstream_rate_limit_waits", **api) == 6
    assert sample(fams, "livia_upstream_wait_seconds", **api) == 7.5
    assert sample(fams, "livia_upstream_capacity_exhausted", **api) == 2
    assert sample(fams, "livia_upstream_max_concurrent", **api) == 8
    assert sample(fams, "livia_upstream_success_ratio", **api) == 0.8
    # latency: a summary with quantiles, and sum/count derived from the mean
    latency = fams["livia_upstream_latency_seconds"]
    assert latency.type == "summary"
    quantiles = {
        s.labels["quantile"]: s.value
        for s in latency.samples
        if s.labels.get("api") == "openai" and "quantile" in s.labels
    }
    assert quantiles == {"0.5": 0.4, "0.95": 0.9, "0.99": 1.5}
    counts = {s.name: s.value for s in latency.samples if s.labels == api}
    assert counts["livia_upstream_latency_seconds_count"] == 8
    assert math.isclose(counts["livia_upstream_latency_seconds_sum"], 4.0)
    # window usage per limit
    rpm = {"api": "openai", "limit": "requests_per_minute"}
    assert sample(fams, "livia_upstream_window_used", **rpm) == 125
    assert sample(fams, "livia_upstream_window_limit", **rpm) == 500
    assert sample(fams, "livia_upstream_window_usage_ratio", **rpm) == 0.25
    # circuit state: one-hot
    states = {
        s.labels["state"]: s.value
        for s in fams["livia_upstream_circuit_state"].samples
        if s.labels["api"] == "openai"
    }
    assert states == {"closed": 0, "open": 0, "half_open": 1}
    # a second upstream with only some keys: present where known, absent elsewhere
    assert sample(fams, "livia_upstream_requests", api="zapier") == 1
    assert not [s for s in fams["livia_upstream_waiting"].samples if s.labels["api"] == "zapier"]


def test_metrics_conversations_tools_demo_and_process(client: TestClient) -> None:
    fams = families(client.get("/metrics").text)
    assert sample(fams, "livia_conversations_active") == 2
    assert sample(fams, "livia_conversations_queued") == 1
    assert sample(fams, "livia_conversations_answered") == 40
    assert fams["livia_conversations_answered"].type == "counter"
    assert sample(fams, "livia_conversations_failed") == 3
    assert sample(fams, "livia_conversations_waiting") == 1
    assert sample(fams, "livia_conversations_brand_new_counter") == 9  # unknown keys too
    assert "livia_conversations_running" not in fams  # booleans are not metrics
    assert sample(fams, "livia_mcp_server_up", server="zapier") == 1
    assert sample(fams, "livia_mcp_server_up", server="files") == 0
    assert sample(fams, "livia_mcp_server_tools", server="zapier") == 4
    assert sample(fams, "livia_demo_mode") == 1
    assert "process_cpu_seconds" in fams or "python_info" in fams


def test_metrics_speak_openmetrics_when_asked(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    names = {f.name for f in openmetrics_families(response.text)}
    assert {"livia_upstream_requests", "livia_upstream_latency_seconds"} <= names


def test_each_app_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    one = make_app(fake_state())
    two = make_app(fake_state(manager=FakeManager({"other": {"total_requests": 99}})))
    assert metrics_registry(one) is metrics_registry(one)
    assert metrics_registry(one) is not metrics_registry(two)
    with TestClient(one) as a, TestClient(two) as b:
        assert 'api="other"' not in a.get("/metrics").text
        assert 'livia_upstream_requests_total{api="other"} 99.0' in b.get("/metrics").text
    assert REGISTRY.get_sample_value("livia_demo_mode") is None


def test_collector_reads_the_live_state() -> None:
    stats = {"openai": {"total_requests": 1}}
    collector = LiviaCollector(lambda: SimpleNamespace(manager=FakeManager(stats)))
    first = {m.name: m for m in collector.collect()}["livia_upstream_requests"]
    stats["openai"]["total_requests"] = 5
    second = {m.name: m for m in collector.collect()}["livia_upstream_requests"]
    assert [s.value for s in first.samples] == [1] and [s.value for s in second.samples] == [5]
    assert list(LiviaCollector(lambda: None).collect()) == []


# --- the token -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/stats", "/metrics"])
def test_token_guards_stats_and_metrics(path: str) -> None:
    with TestClient(make_app(fake_state(), token="s3cret")) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = c.get(path, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            error = response.json()["error"]
            assert error["type"] == "unauthorized"
            assert "LIVIA_SERVER__API_TOKEN" in error["message"]
            assert "s3cret" not in response.text
        assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get(path, headers={"authorization": "bearer s3cret"}).status_code == 200


def test_no_token_configured_means_open(client: TestClient) -> None:
    assert client.get("/stats").status_code == 200
    assert client.get("/metrics").status_code == 200


# --- the dashboard page ----------------------------------------------------------------


def test_dashboard_is_public_and_self_contained() -> None:
    with TestClient(make_app(fake_state(), token="s3cret")) as c:
        response = c.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<canvas" in html and 'fetch("/stats"' in html
    assert "localStorage" in html and "Authorization" in html  # sends the token it asks for
    # Nothing to fetch from elsewhere: no external scripts, styles, fonts or images.
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", html)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "@import" not in html and "url(http" not in html
