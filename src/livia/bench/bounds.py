"""What was possible: the lower bound on a job's makespan, and an ideal scheduler's.

`lower_bound` is the closed form, per upstream with its *real* limits:
``max(ceil(A / C) * L, floor((A - 1) / R) * W + L)`` where A is the attempts the upstream
had to serve (successes and 5xx failures: a 429 is the strategy's own waste), C its
concurrency, L its latency and R per W seconds each request window; and per user, the
chain of its calls (a sequential turn, or the longest call of a burst), each call
``attempts * L`` plus the backoff the policy requires after each failure.

`ideal_makespan` replays the same calls, with the same failures, on a perfect scheduler:
zero overhead, first come first served, an attempt starts the moment the real limits
allow, a failed one is ready again after the policy's backoff (without jitter). Where a
late failure must wait its backoff (the flaky scenario), no online scheduler reaches the
closed form; the ideal says what one could.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence

from livia.bench.results import FAILED, OK, CallRecord
from livia.bench.scenarios import Scenario
from livia.concurrency import ApiPolicy


def backoff(policy: ApiPolicy, failures: int) -> float:
    """The wait the policy requires after failure number `failures` (1-based), no jitter."""
    return min(
        policy.backoff_max, max(policy.backoff_min, policy.backoff_min * 2 ** (failures - 1))
    )


def needed_attempts(record: CallRecord) -> int:
    """Attempts the upstream had to serve for this call: at least one, 429 refusals excluded."""
    return max(1, record.count(OK) + record.count(FAILED))


def _by_user(scenario: Scenario, records: Sequence[CallRecord]) -> dict[str, list[CallRecord]]:
    """Each user's records, in the order of its calls."""
    out: dict[str, list[CallRecord]] = {u.key: [] for u in scenario.users}
    for record in sorted(records, key=lambda r: r.submitted):
        out.setdefault(record.user, []).append(record)
    return out


def lower_bound(scenario: Scenario, records: Sequence[CallRecord]) -> float:
    """The closed-form lower bound on the makespan (seconds); see the module docstring."""
    bound = 0.0
    for spec in scenario.upstreams:
        served = sum(needed_attempts(r) for r in records if r.api == spec.api)
        if not served:
            continue
        bound = max(bound, math.ceil(served / spec.max_concurrent) * spec.latency)
        for limit, seconds in spec.windows:
            bound = max(bound, (served - 1) // limit * seconds + spec.latency)
    by_user = _by_user(scenario, records)
    for user in scenario.users:
        lengths = []
        for record in by_user.get(user.key, []):
            spec, policy = scenario.spec(record.api), scenario.policies[record.api]
            failures = record.count(FAILED)
            lengths.append(
                needed_attempts(record) * spec.latency
                + sum(backoff(policy, j) for j in range(1, failures + 1))
            )
        if lengths:
            bound = max(bound, user.start_at + (sum(lengths) if user.sequential else max(lengths)))
    return bound


def ideal_makespan(scenario: Scenario, records: Sequence[CallRecord]) -> float:
    """The makespan of a perfect first-come-first-served scheduler (see the module doc)."""
    by_user = _by_user(scenario, records)
    calls: list[tuple[str, int]] = []  # per call: (api, attempts it needs)
    events: list[tuple[float, int, str, int, int]] = []  # (time, seq, kind, call, attempt)
    seq = 0

    def push(at: float, kind: str, call: int, attempt: int) -> None:
        nonlocal seq
        heapq.heappush(events, (at, seq, kind, call, attempt))
        seq += 1

    next_in_chain: dict[int, int] = {}
    for user in scenario.users:
        ids = []
        for record in by_user.get(user.key, []):
            attempts = needed_attempts(record)
            if attempts:
                ids.append(len(calls))
                calls.append((record.api, attempts))
        if not ids:
            continue
        if user.sequential:
            for a, b in itertools.pairwise(ids):
                next_in_chain[a] = b
            push(user.start_at, "ready", ids[0], 1)
        else:
            for call in ids:
                push(user.start_at, "ready", call, 1)

    queues: dict[str, deque[tuple[int, int]]] = {s.api: deque() for s in scenario.upstreams}
    running = dict.fromkeys(queues, 0)
    starts: dict[str, list[float]] = {api: [] for api in queues}
    end = 0.0
    while events:
        now = events[0][0]
        while events and events[0][0] <= now + 1e-12:
            _, _, kind, call, attempt = heapq.heappop(events)
            api, needed = calls[call] if call >= 0 else ("", 0)
            if kind == "ready":
                queues[api].append((call, attempt))
            elif kind == "end":
                running[api] -= 1
                end = max(end, now)
                if attempt < needed:
                    policy = scenario.policies[api]
                    push(now + backoff(policy, attempt), "ready", call, attempt + 1)
                elif call in next_in_chain:
                    push(now, "ready", next_in_chain[call], 1)
        for spec in scenario.upstreams:
            queue, api = queues[spec.api], spec.api
            while queue and running[api] < spec.max_concurrent:
                free_at = max(
                    (
                        starts[api][-limit] + seconds
                        for limit, seconds in spec.windows
                        if len(starts[api]) >= limit
                    ),
                    default=now,
                )
                if free_at > now + 1e-12:
                    push(free_at, "wake", -1, 0)
                    break
                call, attempt = queue.popleft()
                running[api] += 1
                starts[api].append(now)
                push(now + spec.latency, "end", call, attempt)
    return end
