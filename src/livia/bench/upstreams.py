"""The simulated upstreams a benchmark job runs against, and one attempt against each.

Every job starts its own simulators on 127.0.0.1 (port 0), configured with the
upstream's *real* limits, so strategies never share a limit or a counter and every
request over a limit is refused (429) and counted by the simulator.

An attempt is one real HTTP request:

- the model: a raw ``POST /v1/chat/completions`` with one pooled `aiohttp` session
  (~0.5 ms of CPU per request, client and simulator together, against ~3 ms with
  `httpx2` and ~8 ms with the official `openai` client: too much for 2 cores);
- Zapier: a ``tools/call`` through the official MCP client over streamable HTTP
  (~4 ms of CPU per call, fine for the few tool calls the scenarios make).

Failures become exceptions both Livia and the baselines understand: a
`RetryableError` carrying the HTTP status and the wait the upstream asked for
(``Retry-After`` / ``retry-after-ms`` / ``x-ratelimit-reset-*``), or `UpstreamError`
for what no retry can fix. The MCP simulator refuses an over-limit call with an error
result (``isError`` plus ``_meta.retry_after``) before running it, so it is retried
like an HTTP 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import aiohttp

from livia.concurrency import RetryableError, retry_after_from

if TYPE_CHECKING:
    from mcp.client.client import Client

    from livia.sim.mcp import SimMcp
    from livia.sim.openai import SimOpenAI

log = logging.getLogger("livia.bench")

#: Statuses worth another attempt (the same set as `livia.concurrency.retry`).
RETRYABLE_STATUS = frozenset({408, 409, 429})

#: Most seconds one attempt may take before the client gives up on it.
ATTEMPT_TIMEOUT = 120.0

#: Connections the model client may open (above any concurrency a scenario uses).
POOL_SIZE = 512

#: The chat completion every model attempt sends: small, so the simulator's reply is cheap.
_CHAT_BODY = json.dumps(
    {
        "model": "livia-sim",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
).encode()


class UpstreamError(Exception):
    """An upstream answered with an error no retry can fix (a 4xx other than 408/409/429)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def status_error(status: int, headers: Mapping[str, str], text: str) -> Exception:
    """The exception for an HTTP error answer: retryable (with the wait asked for) or not."""
    message = f"HTTP {status}: {text[:200]}"
    if status in RETRYABLE_STATUS or status >= 500:
        return RetryableError(message, retry_after=retry_after_from(headers), status=status)
    return UpstreamError(message, status=status)


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One simulated upstream: its policy name, protocol, latency and *real* limits.

    The real limits are what the simulator enforces; the policy a strategy is configured
    with may differ (the 429-storm scenarios configure more than the upstream allows).
    `requests_per_hour` is the MCP simulator's hourly quota. Limits of 0 are off.
    """

    api: str
    kind: Literal["openai", "mcp"]
    latency: float
    max_concurrent: int
    requests_per_minute: int = 0
    requests_per_hour: int = 0
    fail_rate: float = 0.0
    seed: int | None = None
    #: Faults drawn per attempt from `seed` and the attempt's name (user, call, attempt
    #: number), so every strategy meets the same failures whatever order its requests
    #: arrive in; False: from one sequence in arrival order (`seed_for_faults` patterns).
    faults_per_attempt: bool = True

    @property
    def windows(self) -> tuple[tuple[int, float], ...]:
        """The request windows the upstream enforces, as (limit, seconds)."""
        out = []
        if self.requests_per_minute:
            out.append((self.requests_per_minute, 60.0))
        if self.requests_per_hour:
            out.append((self.requests_per_hour, 3600.0))
        return tuple(out)

    def describe(self) -> str:
        """The real limits in a few words, e.g. "openai 8 at once, 500/min, 10000/hour"."""
        parts = [f"{self.api} {self.max_concurrent} at once"]
        if self.requests_per_minute:
            parts.append(f"{self.requests_per_minute}/min")
        if self.requests_per_hour:
            parts.append(f"{self.requests_per_hour}/hour")
        if self.fail_rate:
            parts.append(f"{self.fail_rate:.0%} 5xx")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One request as the simulator saw it, in seconds since the job's start."""

    start: float
    end: float
    outcome: str
    ran: bool


@dataclass(slots=True)
class UpstreamMeasure:
    """What one simulator counted during a job."""

    api: str
    limit: int
    #: Requests that arrived (refused ones included).
    requests: int = 0
    #: Requests refused for a limit (HTTP 429, or the MCP error result).
    refused: int = 0
    #: Requests that arrived over a limit (the simulator's own count).
    over_limit: int = 0
    #: Requests answered 5xx on purpose (`fail_rate`).
    failed: int = 0
    #: The most requests that ran at once.
    peak: int = 0
    spans: list[SpanRecord] = field(default_factory=list)


class SimUpstream:
    """A simulator plus the client a job uses to call it; `attempt` sends one request."""

    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Start the simulator and the client; `stack` stops them (in the same task)."""
        raise NotImplementedError

    async def attempt(self, name: str) -> None:
        """One request; returns when it succeeded, raises when it did not.

        `name` says which attempt of which call this is ("user-3/1/2": user-3's call 1,
        attempt 2), the same for every strategy.
        """
        raise NotImplementedError

    def reset(self) -> None:
        """Zero the simulator's counters and windows (just before a measurement)."""
        raise NotImplementedError

    def measure(self, t0: float) -> UpstreamMeasure:
        """The simulator's counters, with spans in seconds since `t0` (monotonic)."""
        raise NotImplementedError


def _spans(sim: SimOpenAI | SimMcp, t0: float) -> list[SpanRecord]:
    return [
        SpanRecord(s.start - t0, (s.end if s.end is not None else s.start) - t0, s.outcome, s.ran)
        for s in sim.stats.timeline.spans
    ]


class OpenAIUpstream(SimUpstream):
    """The simulated OpenAI-compatible model, called with raw POSTs over `aiohttp`."""

    sim: SimOpenAI
    session: aiohttp.ClientSession
    url: str

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        from livia.sim.openai import SimOpenAI, SimOpenAIConfig

        spec = self.spec
        self.sim = SimOpenAI(
            SimOpenAIConfig(
                latency=spec.latency,
                max_concurrent=spec.max_concurrent,
                requests_per_minute=spec.requests_per_minute,
                requests_per_hour=spec.requests_per_hour,
                fail_rate=spec.fail_rate,
                seed=spec.seed,
            )
        )
        await stack.enter_async_context(self.sim)
        self.url = self.sim.url + "/chat/completions"
        connector = aiohttp.TCPConnector(limit=POOL_SIZE, limit_per_host=POOL_SIZE)
        self.session = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT),
                headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench"},
            )
        )
        await self.warm_up()

    async def warm_up(self) -> None:
        """Open the pooled connections a running service would already have.

        `GET /v1/models` costs no latency and no quota, so the first measured requests do
        not pay for TCP connection set-up.
        """
        models = self.sim.url + "/models"

        async def one() -> None:
            async with self.session.get(models) as response:
                await response.read()

        await asyncio.gather(*(one() for _ in range(max(1, self.spec.max_concurrent))))

    async def attempt(self, name: str) -> None:
        from livia.sim.openai import FAULT_KEY_HEADER

        headers = {FAULT_KEY_HEADER: name} if self.spec.faults_per_attempt else None
        async with self.session.post(self.url, data=_CHAT_BODY, headers=headers) as response:
            body = await response.read()
            if response.status == 200:
                return
            raise status_error(response.status, response.headers, body.decode(errors="replace"))

    def reset(self) -> None:
        self.sim.reset()

    def measure(self, t0: float) -> UpstreamMeasure:
        stats = self.sim.stats
        return UpstreamMeasure(
            api=self.spec.api,
            limit=self.spec.max_concurrent,
            requests=stats.requests,
            refused=stats.rate_limited,
            over_limit=stats.over_limit,
            failed=stats.failed,
            peak=stats.peak_concurrency,
            spans=_spans(self.sim, t0),
        )


class McpUpstream(SimUpstream):
    """The simulated Zapier MCP server, called through the official MCP client."""

    sim: SimMcp
    client: Client

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        from mcp.client.client import Client

        from livia.sim.mcp import SimMcp, SimMcpConfig

        spec = self.spec
        self.sim = SimMcp(
            SimMcpConfig(
                latency=spec.latency,
                max_concurrent=spec.max_concurrent,
                quota_per_hour=spec.requests_per_hour,
                seed=spec.seed,
                name=spec.api,
            )
        )
        await stack.enter_async_context(self.sim)
        self.client = await stack.enter_async_context(
            Client(self.sim.url, read_timeout_seconds=ATTEMPT_TIMEOUT)
        )
        await self.client.list_tools()  # a connected toolbox has listed its tools already

    async def attempt(self, name: str) -> None:
        result = await self.client.call_tool(
            "create_task", {"title": f"Benchmark task {name}"}, ATTEMPT_TIMEOUT
        )
        if not result.is_error:
            return
        text = " ".join(getattr(block, "text", "") for block in result.content)[:200]
        retry_after = (result.meta or {}).get("retry_after")
        if isinstance(retry_after, int | float):
            # Refused for a limit before it ran: safe to retry, like an HTTP 429.
            raise RetryableError(text, retry_after=float(retry_after), status=429)
        raise UpstreamError(text)

    def reset(self) -> None:
        self.sim.reset()

    def measure(self, t0: float) -> UpstreamMeasure:
        stats = self.sim.stats
        return UpstreamMeasure(
            api=self.spec.api,
            limit=self.spec.max_concurrent,
            requests=stats.tool_calls,
            refused=stats.over_limit,
            over_limit=stats.over_limit,
            failed=0,
            peak=stats.peak_concurrency,
            spans=_spans(self.sim, t0),
        )


def make_upstream(spec: UpstreamSpec) -> SimUpstream:
    """The simulator (and client) for `spec`."""
    return OpenAIUpstream(spec) if spec.kind == "openai" else McpUpstream(spec)
