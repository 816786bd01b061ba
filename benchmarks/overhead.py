"""Per-call overhead of a call that does not wait: Livia's manager vs common baselines.

Every strategy runs the same no-op operation sequentially (so nothing ever waits) and
the figure is wall time per call minus the bare await of the operation, measured in
the same run. "flat" repeats Livia's figure after 100 000 calls sit in the window, to
show the cost does not grow with traffic (no per-call scan of a timestamp list).

Run: `python -m benchmarks.overhead` (or `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Awaitable, Callable

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from livia.concurrency import ApiPolicy, ConcurrencyManager

Op = Callable[[], Awaitable[int]]


async def noop() -> int:
    return 1


async def time_calls(call: Callable[[], Awaitable[object]], n: int) -> float:
    """Seconds per call of `call`, best of three runs of `n` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            await call()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


async def measure(n: int) -> dict[str, float]:
    bare = await time_calls(noop, n)
    sem = asyncio.Semaphore(8)

    async def with_semaphore() -> int:
        async with sem:
            return await noop()

    limiter = AsyncLimiter(10**9, 60)

    async def with_aiolimiter_tenacity() -> int:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(5),
            wait=wait_exponential(multiplier=1, max=60),
            retry=retry_if_exception_type(TimeoutError),
            reraise=True,
        ):
            with attempt:
                async with limiter, sem:
                    return await noop()
        raise AssertionError("unreachable")

    policy = ApiPolicy(
        max_concurrent=8, requests_per_minute=10**9, requests_per_hour=10**9, retry_attempts=5
    )
    manager = ConcurrencyManager({"openai": policy})

    async def with_livia() -> int:
        return await manager.run("openai", noop, key="user")

    results = {
        "bare await": bare,
        "asyncio.Semaphore": await time_calls(with_semaphore, n),
        "semaphore + aiolimiter + tenacity": await time_calls(with_aiolimiter_tenacity, n),
        "livia ConcurrencyManager": await time_calls(with_livia, n),
    }
    # Fill the windows with 100 000 more starts, then measure again: it must stay flat.
    for _ in range(100_000):
        await manager.run("openai", noop)
    results["livia, 100 000 calls in the window"] = await time_calls(with_livia, n)
    return {k: v - bare if k != "bare await" else v for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="calls per measurement")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = asyncio.run(measure(args.n))
    print(
        f"Per-call overhead ({platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}), best of 3 × {args.n} calls:"
    )
    base = results["asyncio.Semaphore"]
    for name, value in results.items():
        ratio = f"{value / base:5.1f}× semaphore" if name != "bare await" else "(subtracted)"
        print(f"  {name:40s} {value * 1e6:8.2f} µs   {ratio}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({k: v * 1e6 for k, v in results.items()}, fh, indent=2)


if __name__ == "__main__":
    main()
