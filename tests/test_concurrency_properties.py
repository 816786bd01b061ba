"""Property-based tests: over random policies and workloads, the invariants always hold."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import looptime
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from livia.concurrency import ApiPolicy, CapacityExhausted, ConcurrencyManager, RetryableError

NAMED_ERRORS = (CapacityExhausted, RetryableError, ValueError, asyncio.CancelledError)


@dataclass
class Call:
    key: str
    latency: float
    outcomes: list[str]  # per attempt: "ok", "retry", "fatal"
    delay: float  # when it is issued
    cancel_after: float | None


policies = st.builds(
    ApiPolicy,
    max_concurrent=st.integers(1, 6),
    requests_per_minute=st.sampled_from([0, 2, 5, 13]),
    requests_per_hour=st.sampled_from([0, 7, 30]),
    retry_attempts=st.integers(1, 4),
    backoff_min=st.sampled_from([0.0, 0.5, 2.0]),
    backoff_max=st.just(5.0),
    max_wait=st.sampled_from([0.0, 5.0, 90.0, 4000.0]),
    circuit_failures=st.sampled_from([0, 3]),
    circuit_cooloff=st.just(10.0),
)

calls = st.lists(
    st.builds(
        Call,
        key=st.sampled_from(["a", "b", "c"]),
        latency=st.sampled_from([0.0, 0.3, 1.0, 7.0]),
        outcomes=st.lists(st.sampled_from(["ok", "ok", "retry", "fatal"]), min_size=1, max_size=4),
        delay=st.floats(0, 30),
        cancel_after=st.none() | st.floats(0, 20),
    ),
    min_size=1,
    max_size=25,
)


async def scenario(policy: ApiPolicy, work: list[Call]) -> None:
    manager = ConcurrencyManager({"x": policy})
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    active = 0
    peak = 0

    def operation(call: Call):  # type: ignore[no-untyped-def]
        attempt = 0

        async def op() -> str:
            nonlocal attempt, active, peak
            outcome = call.outcomes[min(attempt, len(call.outcomes) - 1)]
            attempt += 1
            starts.append(loop.time())
            active += 1
            peak = max(peak, active)
            try:
                await asyncio.sleep(call.latency)
            finally:
                active -= 1
            if outcome == "retry":
                raise RetryableError("503", status=503)
            if outcome == "fatal":
                raise ValueError("bad request")
            return "ok"

        return op

    async def issue(call: Call) -> object:
        await asyncio.sleep(call.delay)
        task = asyncio.ensure_future(manager.run("x", operation(call), key=call.key))
        if call.cancel_after is not None:
            loop.call_later(call.cancel_after, task.cancel)
        try:
            return await task
        except BaseException as exc:  # collected and checked below
            return exc

    results = await asyncio.gather(*(issue(c) for c in work))
    for result in results:
        assert result == "ok" or isinstance(result, NAMED_ERRORS), repr(result)
    assert peak <= policy.max_concurrent
    starts.sort()
    for _, limit, seconds in policy.windows:
        for i in range(len(starts) - limit):
            assert starts[i + limit] - starts[i] >= seconds - 1e-6, (limit, seconds, starts)
    stats = manager.get_stats("x")
    assert stats["concurrent_requests"] == 0 and stats["waiting"] == 0
    assert stats["limits"]["max_concurrent"]["used"] == 0
    assert stats["attempts"] == len(starts)
    finished = stats["successful_requests"] + stats["failed_requests"]
    assert finished + stats["cancelled_requests"] == len(work)
    await manager.aclose()


@settings(
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow tracing
    max_examples=int(os.environ.get("LIVIA_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(policy=policies, work=calls)
def test_invariants_hold_for_random_workloads(policy: ApiPolicy, work: list[Call]) -> None:
    loop = looptime.new_event_loop(start=0.0, noop_cycles=1000)
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(policy, work), timeout=100_000))
    finally:
        loop.close()
