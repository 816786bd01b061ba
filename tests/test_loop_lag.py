"""The event-loop lag monitor (issue 12): what it measures, and where it shows."""

from __future__ import annotations

import asyncio
import gc
import time
from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from livia.monitoring import monitoring_router
from livia.monitoring.loop_lag import LoopLag


async def test_a_blocked_loop_shows_as_lag() -> None:
    monitor = LoopLag(interval=0.02, window=5.0).start()
    try:
        await asyncio.sleep(0.2)
        quiet = monitor.stats()
        time.sleep(0.25)  # noqa: ASYNC251 (the stall being measured)
        await asyncio.sleep(0.1)
        stalled = monitor.stats()
    finally:
        monitor.stop()
    assert not monitor.running
    assert quiet["samples"] >= 5
    assert quiet["lag_max_ms"] < 150, quiet  # a shared machine: generous
    assert stalled["lag_max_ms"] >= 200 and stalled["lag_worst_ms"] >= 200, stalled
    assert stalled["lag_p50_ms"] < 150, stalled


async def test_garbage_collections_are_timed_while_running() -> None:
    monitor = LoopLag().start()
    try:
        before = monitor.stats()
        rings = []
        for _ in range(50_000):  # cyclic garbage: only the collector frees it
            ring: list[object] = []
            ring.append(ring)
            rings.append(ring)
        del rings, ring
        gc.collect()
        after = monitor.stats()
    finally:
        monitor.stop()
    assert after["gc_pause_worst_ms"] > 0 and after["gc_pause_total_ms"] > 0, after
    assert after["gc_collections"][2] > before["gc_collections"][2]
    assert monitor._on_gc not in gc.callbacks  # stop() unhooks it


def test_the_window_is_bounded() -> None:
    monitor = LoopLag(interval=0.1, window=1.0)
    for i in range(100):
        monitor.record(i / 1000)
    stats = monitor.stats()
    assert stats["samples"] == 10
    assert stats["lag_max_ms"] == 99.0 and stats["lag_worst_ms"] == 99.0
    assert LoopLag().stats()["lag_p99_ms"] is None


def test_stats_and_metrics_show_the_lag() -> None:
    monitor = LoopLag()
    for ms in [1] * 98 + [40, 900]:
        monitor.record(ms / 1000)
    app = FastAPI()
    app.include_router(monitoring_router())
    app.state.livia = SimpleNamespace(loop_lag=monitor, demo=False)
    with TestClient(app) as client:
        loop = client.get("/stats").json()["loop"]
        text = client.get("/metrics").text
    assert loop["lag_p50_ms"] == 1.0 and loop["lag_p99_ms"] == 900.0, loop
    assert loop["lag_max_ms"] == 900.0
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name.endswith("loop_lag_seconds")
    ]
    values = {s.labels["quantile"]: s.value for s in family.samples}
    assert values == {"0.5": 0.001, "0.99": 0.9, "1": 0.9}
