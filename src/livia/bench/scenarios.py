"""The benchmark scenarios: who calls which upstream when, against which real limits.

Each scenario names the upstreams (with the limits the simulator really enforces), the
policies the strategies are configured with (the reference ones unless
the scenario is about a wrong configuration), and the users: each user makes its calls
in sequence (a conversation turn) or all at once (a burst). `catalogue(quick)` builds
them; `--quick` uses shorter latencies and fewer calls so the whole report runs in about
a minute on 2 cores.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from livia.bench.strategies import LIMITER, LIVIA, SEMAPHORE, STRATEGY_NAMES
from livia.bench.upstreams import UpstreamSpec
from livia.concurrency import DEFAULT_POLICIES, ApiPolicy

#: Seconds a job may take beyond three times its bound, before it is stopped.
SLACK = 60.0


@dataclass(frozen=True, slots=True)
class UserLoad:
    """The calls one user (one conversation) makes.

    `sequential`: one after the other, like the model calls of a turn; otherwise all at
    once, like a batch job. `start_at` is seconds after the scenario starts. `group`
    labels users whose latencies are compared (the fairness scenario's heavy and light).
    """

    key: str
    calls: tuple[str, ...]
    start_at: float = 0.0
    sequential: bool = True
    group: str = "user"


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario; every strategy in `strategies` runs it on fresh simulators."""

    name: str
    #: What it shows, in a line.
    title: str
    #: What the figures should be, and why (for a person checking them).
    expect: str
    upstreams: tuple[UpstreamSpec, ...]
    policies: Mapping[str, ApiPolicy]
    users: tuple[UserLoad, ...]
    strategies: tuple[str, ...] = STRATEGY_NAMES
    #: Mostly waiting (a per-minute window, long backoffs): run alongside the others.
    background: bool = False

    @property
    def calls(self) -> int:
        return sum(len(u.calls) for u in self.users)

    def spec(self, api: str) -> UpstreamSpec:
        return next(s for s in self.upstreams if s.api == api)

    @property
    def nominal_bound(self) -> float:
        """The bound without failures: max over upstreams of concurrency and rate bounds."""
        bound = 0.0
        for spec in self.upstreams:
            n = sum(u.calls.count(spec.api) for u in self.users)
            if not n:
                continue
            bound = max(bound, math.ceil(n / spec.max_concurrent) * spec.latency)
            for limit, seconds in spec.windows:
                bound = max(bound, (n - 1) // limit * seconds + spec.latency)
        return bound

    @property
    def timeout(self) -> float:
        """Most seconds one job of this scenario may run (every wait has a bound)."""
        serial = sum(
            self.spec(api).latency * self.policies[api].retry_attempts
            for u in self.users
            for api in u.calls
        )
        return max(3 * self.nominal_bound, serial) + SLACK

    @property
    def misconfigured(self) -> bool:
        """Whether a policy allows more than its upstream really does (a 429 storm)."""
        for spec in self.upstreams:
            policy = self.policies[spec.api]
            for configured, real in (
                (policy.max_concurrent, spec.max_concurrent),
                (policy.requests_per_minute, spec.requests_per_minute),
                (policy.requests_per_hour, spec.requests_per_hour),
            ):
                if real and (not configured or configured > real):
                    return True
        return False

    def describe_limits(self) -> str:
        """The real limits, and the configured ones where they allow more."""
        parts = []
        for spec in self.upstreams:
            text = spec.describe()
            policy = self.policies[spec.api]
            if policy.max_concurrent > spec.max_concurrent or (
                spec.requests_per_minute and policy.requests_per_minute > spec.requests_per_minute
            ):
                text += (
                    f" (configured {policy.max_concurrent} at once, "
                    f"{policy.requests_per_minute}/min)"
                )
            parts.append(text)
        return "; ".join(parts)


def seed_for_faults(pattern: str, fail_rate: float, tries: int = 100_000) -> int:
    """A simulator seed whose first requests fail ("F") or succeed ("S") as `pattern` says.

    Mirrors `SimOpenAI`'s draws with a fixed latency: one draw per admitted request
    (below `fail_rate`: it fails) and one more for a failure's status (500 or 503). The
    retry scenario checks the outcome it gets, so a change there shows in its notes.
    """
    for seed in range(tries):
        rng = random.Random(seed)
        for want in pattern:
            fails = rng.random() < fail_rate
            if fails != (want == "F"):
                break
            if fails:
                rng.random()
        else:
            return seed
    raise ValueError(f"no seed below {tries} gives {pattern!r} at fail rate {fail_rate}")


def _openai(latency: float, **changes: Any) -> UpstreamSpec:
    """The OpenAI upstream with its reference limits (8 at once, 500/min, 10 000/hour)."""
    policy = DEFAULT_POLICIES["openai"]
    spec = UpstreamSpec(
        api="openai",
        kind="openai",
        latency=latency,
        max_concurrent=policy.max_concurrent,
        requests_per_minute=policy.requests_per_minute,
        requests_per_hour=policy.requests_per_hour,
    )
    return replace(spec, **changes)


def _zapier(latency: float) -> UpstreamSpec:
    """Zapier MCP with its reference limits (3 at once, 75 tool calls an hour)."""
    policy = DEFAULT_POLICIES["zapier"]
    return UpstreamSpec(
        api="zapier",
        kind="mcp",
        latency=latency,
        max_concurrent=policy.max_concurrent,
        requests_per_hour=policy.requests_per_hour,
    )


def _policies(**changes: ApiPolicy) -> dict[str, ApiPolicy]:
    out = {"openai": DEFAULT_POLICIES["openai"], "zapier": DEFAULT_POLICIES["zapier"]}
    out.update(changes)
    return out


def _singles(api: str, n: int, prefix: str = "user", start_at: float = 0.0) -> list[UserLoad]:
    """`n` users making one call each."""
    return [UserLoad(f"{prefix}-{i}", (api,), start_at=start_at) for i in range(n)]


def _turns(n_users: int, calls: int) -> tuple[UserLoad, ...]:
    """`n_users` users each making `calls` model calls in sequence (a turn)."""
    return tuple(UserLoad(f"user-{i}", ("openai",) * calls) for i in range(n_users))


def catalogue(quick: bool) -> list[Scenario]:
    """Every scenario, sized for `--quick` (about a minute) or for a full run."""
    q = quick
    out: list[Scenario] = []

    out.append(
        Scenario(
            "ref-openai",
            "reference: 10 concurrent OpenAI calls of 2 s, 8 slots",
            "4.0 s: 8 calls, then 2 (ceil(10/8) x 2 s)",
            (_openai(2.0),),
            _policies(),
            tuple(_singles("openai", 10)),
        )
    )
    out.append(
        Scenario(
            "ref-zapier",
            "reference: 6 concurrent Zapier tool calls of 2 s, 3 slots",
            "4.0 s: 3 calls, then 3 (ceil(6/3) x 2 s)",
            (_zapier(2.0),),
            _policies(),
            tuple(_singles("zapier", 6)),
        )
    )
    out.append(
        Scenario(
            "ref-mixed",
            "reference: 5 OpenAI + 3 Zapier calls of 2 s at once",
            "2.0 s: one round, the two upstreams never wait on each other",
            (_openai(2.0), _zapier(2.0)),
            _policies(),
            tuple(_singles("openai", 5) + _singles("zapier", 3, prefix="tool-user")),
        )
    )
    latency = 1.0 if q else 2.0
    out.append(
        Scenario(
            "ref-retry",
            "reference: a call failing twice (HTTP 5xx), then succeeding",
            f"3 attempts of {latency:g} s + waits of 1 s then 2 s = {3 * latency + 3:g} s",
            (
                _openai(
                    latency,
                    fail_rate=0.5,
                    seed=seed_for_faults("FFS", 0.5),
                    faults_per_attempt=False,  # the pattern is the sequence's first draws
                ),
            ),
            _policies(),
            (UserLoad("user-0", ("openai",)),),
        )
    )
    latency, calls = (1.0, 2) if q else (2.0, 3)
    out.append(
        Scenario(
            "8-users",
            f"8 users, each a turn of {calls} model calls of {latency:g} s: before/after",
            f"{calls * latency:g} s for everyone (8 slots) vs {8 * calls * latency:g} s "
            "one at a time: 8x",
            (_openai(latency),),
            _policies(),
            _turns(8, calls),
        )
    )
    latency = 0.5 if q else 1.0
    out.append(
        Scenario(
            "100-users",
            f"100 users, each a turn of 2 model calls of {latency:g} s, 8 slots",
            f"ceil(200/8) x {latency:g} s = {25 * latency:g} s, never over 8 at once",
            (_openai(latency),),
            _policies(),
            _turns(100, 2),
            # One at a time would take 200 x the latency: only in a full run.
            strategies=(LIVIA, SEMAPHORE, LIMITER) if q else STRATEGY_NAMES,
        )
    )
    n, rpm, latency = (24, 16, 0.25) if q else (40, 16, 0.5)
    out.append(
        Scenario(
            "rate-bound",
            f"{n} calls against {rpm} requests/minute: the per-minute window binds",
            f"the last start no earlier than floor(({n}-1)/{rpm}) x 60 s, plus {latency:g} s",
            (_openai(latency, requests_per_minute=rpm),),
            _policies(openai=DEFAULT_POLICIES["openai"].updated(requests_per_minute=rpm)),
            tuple(_singles("openai", n)),
            strategies=(LIVIA, SEMAPHORE, LIMITER),
            background=True,
        )
    )
    n, rpm, latency = (30, 20, 0.25) if q else (50, 20, 0.5)
    out.append(
        Scenario(
            "429-storm",
            f"{n} calls; the upstream really allows {rpm}/min, Livia is configured for 500",
            "one wave of 429s, then the whole upstream waits for the Retry-After: "
            "few wasted requests, bound from the real limit",
            (_openai(latency, requests_per_minute=rpm),),
            _policies(),
            tuple(_singles("openai", n)),
            strategies=(LIVIA, SEMAPHORE, LIMITER),
            background=True,
        )
    )
    n, latency = (24, 0.5) if q else (64, 1.0)
    out.append(
        Scenario(
            "429-storm-slots",
            f"{n} calls; the upstream really runs 4 at once, Livia is configured for 8",
            f"ceil({n}/4) x {latency:g} s from the real limit; 429s show what the "
            "wrong setting costs",
            (_openai(latency, max_concurrent=4),),
            _policies(),
            tuple(_singles("openai", n)),
            background=True,  # the baselines spend ~15 s in backoff
        )
    )
    users, latency = (32, 0.5) if q else (200, 0.5)
    out.append(
        Scenario(
            "flaky",
            f"{users} users x 2 model calls of {latency:g} s; 10 % of requests answer 5xx",
            "every call succeeds after retries; the bound counts the retried attempts "
            "and the backoff a late failure must wait",
            (_openai(latency, fail_rate=0.1, seed=7),),
            _policies(),
            _turns(users, 2),
        )
    )
    heavy, light, latency = (48, 8, 0.5) if q else (96, 16, 1.0)
    out.append(
        Scenario(
            "fairness",
            f"one user bursts {heavy} calls, then {light} users ask for one call each",
            "light users are served in the next round (p95 ~ 2-3 latencies), not after "
            "the burst; the makespan stays at its bound",
            (_openai(latency),),
            _policies(),
            (
                UserLoad("heavy", ("openai",) * heavy, sequential=False, group="heavy"),
                *(
                    UserLoad(f"light-{i}", ("openai",), start_at=latency / 5, group="light")
                    for i in range(light)
                ),
            ),
        )
    )
    return out


def select(scenarios: list[Scenario], names: list[str] | None) -> list[Scenario]:
    """The scenarios named (all when `names` is empty); unknown names raise `ValueError`."""
    if not names:
        return scenarios
    known = {s.name: s for s in scenarios}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]
