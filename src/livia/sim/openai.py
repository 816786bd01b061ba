"""A simulated OpenAI-compatible model server: Livia's demo model and a test upstream.

`SimOpenAI` serves `POST /v1/chat/completions` (plain and streamed, with tool calls and
usage) and `GET /v1/models`, with a configurable latency distribution and the limits an
OpenAI account has: concurrent requests, requests per minute and per hour, tokens per
minute. Over a limit it answers 429 exactly as OpenAI does (error body, `retry-after`,
`retry-after-ms` and `x-ratelimit-*` headers). It can also fail on purpose: answer
500/503, hang until the client gives up, or drop the connection without an answer.

It counts everything a benchmark needs (requests over a limit, 429s sent, peak
concurrency, a timeline of in-flight requests) at `GET /sim/stats`, clears them with
`POST /sim/reset`, and exposes them as `SimOpenAI.stats`.

Limits count requests that were let in (a refused request does not use up quota), in
sliding windows on the monotonic clock, checked and recorded without an `await` in
between, so they hold to the request. A request's token cost is its estimated prompt
tokens plus the completion tokens of the reply it gets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from livia.sim import openai_wire as wire
from livia.sim._serving import BACKLOG, SimServer, base_url, bind_socket
from livia.sim._stats import SimConfigMixin, SimStatsMixin, wants_timeline, zero_counts
from livia.sim.latency import Latency
from livia.sim.limits import SlidingWindow, format_duration
from livia.sim.media import SimEndpoint, SimEndpointLimits, acknowledge, generations, transcriptions
from livia.sim.replies import Reply, completion_tokens, compose_reply, prompt_tokens
from livia.sim.timeline import Timeline

log = logging.getLogger(__name__)

#: Most seconds a request told to time out hangs before the server drops it.
MAX_HANG = 3600.0

#: A request carrying this header draws its fault from its own generator, seeded with
#: `seed` and the header's value, instead of the shared sequence: a client that names each
#: attempt (e.g. "user-3/call-1/attempt-2") gets the same faults whatever order its
#: requests arrive in (the benchmark gives every strategy one failure schedule this way).
FAULT_KEY_HEADER = "X-Sim-Fault-Key"

#: Stream chunks due within this many seconds of each other go out in one write.
_BATCH_WINDOW = 0.005

DEFAULT_MODELS = ("livia-sim", "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1")


@dataclass(frozen=True)
class SimOpenAIConfig(SimConfigMixin):
    """How the simulated model behaves. Limits of 0 are off.

    `latency` is seconds or a spec such as "lognormal:1.5:6" (see `livia.sim.latency`).
    Fault rates are probabilities per request (drawn after admission, from `seed`):
    `fail_rate` answers 500 or 503, `timeout_rate` hangs until the client gives up (at most
    `hang_max` seconds, then the connection is dropped), `drop_rate` closes the connection
    without an answer, `stall_rate` starts a streamed reply and stops it after
    `stall_after` chunks (then hangs like a timeout; a plain reply hangs whole). With
    `enforce_limits` off, requests over a limit are counted but served, which shows how far
    a client would have overshot.
    """

    latency: Latency | float | str = 0.0
    max_concurrent: int = 0
    requests_per_minute: int = 0
    requests_per_hour: int = 0
    tokens_per_minute: int = 0
    fail_rate: float = 0.0
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    stall_rate: float = 0.0
    #: Chunks a stalled stream sends before it stops (1: only the role chunk, no text).
    stall_after: int = 1
    seed: int | None = None
    hang_max: float = 600.0
    enforce_limits: bool = True
    models: tuple[str, ...] = DEFAULT_MODELS
    #: Most request spans the timeline keeps (later requests still count).
    max_timeline: int = 100_000
    #: Keep the bodies of the last this-many chat requests (`requests`, `GET /sim/requests`).
    record: int = 0
    #: Limits of `POST /v1/audio/transcriptions` and `POST /v1/images/generations`.
    transcription: SimEndpointLimits = field(default_factory=SimEndpointLimits)
    images: SimEndpointLimits = field(default_factory=SimEndpointLimits)

    def __post_init__(self) -> None:
        self._check_limits(
            "max_concurrent", "requests_per_minute", "requests_per_hour", "tokens_per_minute"
        )
        for name in ("fail_rate", "timeout_rate", "drop_rate", "stall_rate"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if self.fail_rate + self.timeout_rate + self.drop_rate + self.stall_rate > 1.0 + 1e-9:
            raise ValueError("fail_rate + timeout_rate + drop_rate + stall_rate must not exceed 1")
        if self.stall_after < 0:
            raise ValueError("stall_after must not be negative")
        if not (0 < self.hang_max <= MAX_HANG):
            raise ValueError(f"hang_max must be above 0 and at most {MAX_HANG:g} seconds")
        if not self.models:
            raise ValueError("models must name at least one model")
        if self.max_timeline < 0:
            raise ValueError("max_timeline must not be negative")

    def describe(self) -> str:
        """A one-line summary for logs."""
        parts = [f"latency {self.latency_model}"]
        for label, value in (
            ("max concurrent", self.max_concurrent),
            ("rpm", self.requests_per_minute),
            ("rph", self.requests_per_hour),
            ("tpm", self.tokens_per_minute),
        ):
            if value:
                parts.append(f"{label} {value}")
        for label, rate in (
            ("fail", self.fail_rate),
            ("timeout", self.timeout_rate),
            ("drop", self.drop_rate),
            ("stall", self.stall_rate),
        ):
            if rate:
                parts.append(f"{label} {rate:.0%}")
        if not self.enforce_limits:
            parts.append("limits counted, not enforced")
        return ", ".join(parts)


_OVER_LIMIT_KINDS = ("concurrency", "requests", "tokens")


@dataclass
class SimOpenAIStats(SimStatsMixin):
    """What the simulated model has seen since start or the last reset."""

    #: Chat completion requests that arrived.
    requests: int = 0
    #: Replies sent in full (status 200).
    ok: int = 0
    #: Of those, streamed ones.
    streamed: int = 0
    #: Of those, replies that were tool calls.
    tool_calls: int = 0
    #: 429 responses sent.
    rate_limited: int = 0
    #: Requests that arrived over a limit (refused, or served with limits not enforced).
    over_limit: int = 0
    #: `over_limit` by limit; a request over several limits counts under each.
    over_limit_by: dict[str, int] = field(default_factory=zero_counts(_OVER_LIMIT_KINDS))
    #: 500/503 responses sent on purpose (`fail_rate`).
    failed: int = 0
    #: Connections closed without a response on purpose (`drop_rate`).
    dropped: int = 0
    #: Requests left hanging on purpose (`timeout_rate`).
    timed_out: int = 0
    #: Streams stopped part-way on purpose (`stall_rate`).
    stalled: int = 0
    #: Requests the client abandoned before the reply was complete.
    cancelled: int = 0
    #: Requests refused as malformed (400).
    bad_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timeline: Timeline = field(default_factory=Timeline)

    def _derived(self) -> dict[str, Any]:
        return {"total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why a request is over a limit, and when it would fit."""

    kinds: tuple[str, ...]
    #: Seconds until the request would be let in.
    wait: float
    #: The limit the 429 names: "requests", "tokens" or "concurrency".
    primary: str
    #: The request window that refused it, if one did.
    window: SlidingWindow | None
    message: str


@dataclass(frozen=True, slots=True)
class _Call:
    """One chat completion request, parsed, with the reply it will get."""

    model: str
    reply: Reply
    prompt_tokens: int
    completion_tokens: int
    stream: bool
    include_usage: bool

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> _Call:
        """From a request body that `_invalid` accepted."""
        stream = bool(body.get("stream"))
        max_out = body.get("max_completion_tokens") or body.get("max_tokens")
        reply = compose_reply(body["messages"], body.get("tools"), body.get("tool_choice"))
        reply = acknowledge(body["messages"], reply)
        reply = reply.limited_to(max_out if isinstance(max_out, int) else None)
        return cls(
            model=str(body["model"]),
            reply=reply,
            prompt_tokens=prompt_tokens(body["messages"], body.get("tools")),
            completion_tokens=completion_tokens(reply),
            stream=stream,
            include_usage=stream and bool((body.get("stream_options") or {}).get("include_usage")),
        )

    @property
    def cost(self) -> int:
        """Tokens this request counts against a tokens-per-minute limit."""
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> dict[str, Any]:
        return wire.usage_body(self.prompt_tokens, self.completion_tokens)


class SimOpenAI(SimServer):
    """The simulated OpenAI server; `async with SimOpenAI(config) as sim:` runs it.

    `start()` returns the base URL to give an OpenAI client (".../v1"). The counters are
    in `stats` (see `SimOpenAIStats`), also as JSON at `GET /sim/stats`.
    """

    def __init__(self, config: SimOpenAIConfig | None = None) -> None:
        self.config = config or SimOpenAIConfig()
        self.stats = SimOpenAIStats(timeline=Timeline(self.config.max_timeline))
        self.url = ""
        cfg = self.config
        self._latency = cfg.latency_model
        self._rng = random.Random(cfg.seed)
        self._request_windows: list[tuple[str, SlidingWindow]] = []
        if cfg.requests_per_minute:
            self._request_windows.append(("min", SlidingWindow(cfg.requests_per_minute, 60.0)))
        if cfg.requests_per_hour:
            self._request_windows.append(("hour", SlidingWindow(cfg.requests_per_hour, 3600.0)))
        self._tokens = SlidingWindow(cfg.tokens_per_minute, 60.0) if cfg.tokens_per_minute else None
        #: Running requests' planned end times, for the retry-after of a concurrency 429.
        self._planned_ends: dict[int, float] = {}
        self._ids = itertools.count()
        self._runner: web.AppRunner | None = None
        #: The last `config.record` chat request bodies, oldest first.
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=cfg.record)
        #: The media endpoints (`livia.sim.media`), with their own limits and counters.
        self.transcription = SimEndpoint("transcriptions", cfg.transcription)
        self.images = SimEndpoint("images", cfg.images)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on (host, port) (0: any free port); returns "http://HOST:PORT/v1"."""
        if self._runner is not None:
            raise RuntimeError("SimOpenAI is already running")
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/images/generations", self._generations)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_get("/sim/stats", self._stats)
        app.router.add_get("/sim/requests", self._requests)
        app.router.add_post("/sim/reset", self._reset)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            sock = bind_socket(host, port)
            site = web.SockSite(runner, sock, backlog=BACKLOG)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.url = base_url(host, sock) + "/v1"
        log.info("simulated OpenAI model on %s (%s)", self.url, self.config.describe())
        return self.url

    async def stop(self) -> None:
        """Stop serving; requests still running are cancelled after a short grace period."""
        runner, self._runner = self._runner, None
        if runner is not None:
            try:
                await asyncio.wait_for(runner.cleanup(), 10.0)
            except TimeoutError:
                log.warning("simulated OpenAI did not stop within 10 s")

    def reset(self) -> None:
        """Zero the counters, empty the rate windows and restart the random sequence."""
        self.stats.reset()
        for _, window in self._request_windows:
            window.clear()
        if self._tokens is not None:
            self._tokens.clear()
        self._rng.seed(self.config.seed)
        self.transcription.reset()
        self.images.reset()

    def snapshot(self, *, timeline: bool = True) -> dict[str, Any]:
        """What `GET /sim/stats` returns: counters, limits, window usage and the timeline."""
        now = time.monotonic()
        out = self.stats.as_dict(timeline=timeline)
        cfg = self.config
        out["limits"] = {
            "max_concurrent": cfg.max_concurrent,
            "requests_per_minute": cfg.requests_per_minute,
            "requests_per_hour": cfg.requests_per_hour,
            "tokens_per_minute": cfg.tokens_per_minute,
            "enforced": cfg.enforce_limits,
        }
        out["windows"] = {
            f"requests_last_{label}": window.used(now) for label, window in self._request_windows
        }
        if self._tokens is not None:
            out["windows"]["tokens_last_min"] = self._tokens.used(now)
        out["transcriptions"] = self.transcription.snapshot()
        out["images"] = self.images.snapshot()
        return out

    # --- admission ---------------------------------------------------------------------

    def _check(self, now: float, cost: int, model: str) -> _Refusal | None:
        """Whether a request costing `cost` tokens fits every limit at `now`."""
        cfg = self.config
        found: list[tuple[float, str, SlidingWindow | None, str]] = []
        if cfg.max_concurrent and self.stats.timeline.in_flight >= cfg.max_concurrent:
            wait = self._concurrency_wait(now)
            found.append(
                (
                    wait,
                    "concurrency",
                    None,
                    f"Too many concurrent requests for {model} in organization "
                    f"{wire.ORGANIZATION}: Limit {cfg.max_concurrent}, In flight "
                    f"{self.stats.timeline.in_flight}. Please try again in "
                    f"{format_duration(wait)}.",
                )
            )
        for label, window in self._request_windows:
            if not window.admits(now):
                wait = window.wait(now)
                unit = "per min (RPM)" if label == "min" else "per hour (RPH)"
                found.append(
                    (
                        wait,
                        "requests",
                        window,
                        f"Rate limit reached for {model} in organization {wire.ORGANIZATION} "
                        f"on requests {unit}: Limit {window.limit}, Used {window.used(now)}, "
                        f"Requested 1. Please try again in {format_duration(wait)}. Visit "
                        "https://platform.openai.com/account/rate-limits to learn more.",
                    )
                )
        if self._tokens is not None and not self._tokens.admits(now, cost):
            tokens = self._tokens
            if cost > tokens.limit:
                wait = tokens.seconds
                message = (
                    f"Request too large for {model} in organization {wire.ORGANIZATION} on "
                    f"tokens per min (TPM): Limit {tokens.limit}, Requested {cost}. The input "
                    "or output tokens must be reduced in order to run successfully."
                )
            else:
                wait = tokens.wait(now, cost)
                message = (
                    f"Rate limit reached for {model} in organization {wire.ORGANIZATION} on "
                    f"tokens per min (TPM): Limit {tokens.limit}, Used {tokens.used(now)}, "
                    f"Requested {cost}. Please try again in {format_duration(wait)}. Visit "
                    "https://platform.openai.com/account/rate-limits to learn more."
                )
            found.append((wait, "tokens", None, message))
        if not found:
            return None
        longest = max(found, key=lambda f: f[0])
        refusing = longest[2] or next((f[2] for f in found if f[2] is not None), None)
        return _Refusal(tuple(f[1] for f in found), longest[0], longest[1], refusing, longest[3])

    def _concurrency_wait(self, now: float) -> float:
        """Seconds until the first running request is due to end."""
        if not self._planned_ends:
            return 1.0
        return max(0.001, min(self._planned_ends.values()) - now)

    def _record(self, now: float, cost: int) -> None:
        for _, window in self._request_windows:
            window.add(now)
        if self._tokens is not None:
            self._tokens.add(now, cost)

    def _limit_headers(
        self, now: float, cost: int, refusal: _Refusal | None = None
    ) -> dict[str, str]:
        """The `x-ratelimit-*` headers (and `retry-after*` for a refusal).

        The request headers describe the window that refused the request, else the one
        with the least room; with no request window, a concurrency refusal describes the
        concurrency limit. A reset is the time until the limit has room again.
        """
        headers: dict[str, str] = {}
        window = refusal.window if refusal is not None else None
        if window is None and self._request_windows:
            window = min((w for _, w in self._request_windows), key=lambda w: w.remaining(now))
        if window is not None:
            headers["x-ratelimit-limit-requests"] = str(window.limit)
            headers["x-ratelimit-remaining-requests"] = str(window.remaining(now))
            # When the oldest counted request leaves the window, one more fits.
            headers["x-ratelimit-reset-requests"] = format_duration(window.next_free(now))
        elif refusal is not None and "concurrency" in refusal.kinds:
            headers["x-ratelimit-limit-requests"] = str(self.config.max_concurrent)
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = format_duration(refusal.wait)
        if self._tokens is not None:
            tokens = self._tokens
            if refusal is not None and "tokens" in refusal.kinds:
                token_reset = tokens.wait(now, cost) if cost <= tokens.limit else tokens.seconds
            else:
                token_reset = tokens.next_free(now)
            headers["x-ratelimit-limit-tokens"] = str(tokens.limit)
            headers["x-ratelimit-remaining-tokens"] = str(tokens.remaining(now))
            headers["x-ratelimit-reset-tokens"] = format_duration(token_reset)
        if refusal is not None:
            headers["retry-after"] = str(max(1, math.ceil(refusal.wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(refusal.wait * 1000)))
        return headers

    # --- handlers ----------------------------------------------------------------------

    async def _requests(self, request: web.Request) -> web.Response:
        """The recorded chat request bodies (with ``record`` > 0), oldest first."""
        return web.json_response({"requests": list(self.requests)})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        stats = self.stats
        stats.requests += 1
        try:
            body = await request.json()
        except ValueError:
            return self._bad_request(
                now,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
            )
        problem = _invalid(body)
        if problem is not None:
            return self._bad_request(now, *problem)
        if self.config.record:
            self.requests.append(body)
        call = _Call.from_body(body)

        refusal = self._check(now, call.cost, call.model)
        if refusal is not None:
            stats.over_limit += 1
            for kind in refusal.kinds:
                stats.over_limit_by[kind] += 1
            if self.config.enforce_limits:
                stats.rate_limited += 1
                stats.timeline.instant("rate_limited", now)
                kind = "tokens" if refusal.primary == "tokens" else "requests"
                return web.json_response(
                    wire.error_body(refusal.message, kind, code="rate_limit_exceeded"),
                    status=429,
                    headers=self._limit_headers(now, call.cost, refusal),
                    dumps=wire.dumps,
                )
        self._record(now, call.cost)
        headers = self._limit_headers(now, call.cost)
        headers["x-request-id"] = wire.new_id("req_", 24)
        headers["openai-organization"] = wire.ORGANIZATION
        return await self._run(request, now, headers, call)

    async def _run(
        self, request: web.Request, now: float, headers: dict[str, str], call: _Call
    ) -> web.StreamResponse:
        """Serve an admitted request: a fault, or the reply after the simulated latency."""
        cfg, stats = self.config, self.stats
        span = stats.timeline.begin(now)
        fault_key = request.headers.get(FAULT_KEY_HEADER)
        faults = self._rng if fault_key is None else random.Random(f"{cfg.seed}:{fault_key}")
        draw = faults.random()
        delay = self._latency.sample(self._rng)
        key = next(self._ids)
        self._planned_ends[key] = now + delay
        outcome = "cancelled"
        try:
            if draw < cfg.drop_rate:
                await asyncio.sleep(delay)
                outcome = "dropped"
                stats.dropped += 1
                return _drop(request)
            if draw < cfg.drop_rate + cfg.timeout_rate:
                outcome = "timed_out"
                stats.timed_out += 1
                self._planned_ends[key] = now + cfg.hang_max
                await asyncio.sleep(cfg.hang_max)  # until the client gives up (cancels us)
                return _drop(request)
            if draw < cfg.drop_rate + cfg.timeout_rate + cfg.fail_rate:
                await asyncio.sleep(delay)
                outcome = "failed"
                stats.failed += 1
                return _server_error(faults, headers)
            stall = draw < cfg.drop_rate + cfg.timeout_rate + cfg.fail_rate + cfg.stall_rate
            if stall:
                outcome = "stalled"
                stats.stalled += 1
                self._planned_ends[key] = now + cfg.hang_max
                if not call.stream:
                    await asyncio.sleep(cfg.hang_max)
                    return _drop(request)
            headers["openai-processing-ms"] = str(round(delay * 1000))
            if call.stream:
                stop_after = cfg.stall_after if stall else None
                response, complete = await self._stream(request, headers, delay, call, stop_after)
                if stall:
                    if request.transport is not None:
                        request.transport.close()  # hung up at last: nothing more comes
                    return response
                if not complete:
                    return response  # the client went away mid-stream
                stats.streamed += 1
            else:
                await asyncio.sleep(delay)
                response = web.json_response(
                    wire.completion_body(
                        wire.new_id(), int(time.time()), call.model, call.reply, call.usage()
                    ),
                    headers=headers,
                    dumps=wire.dumps,
                )
            outcome = "ok"
            stats.ok += 1
            stats.prompt_tokens += call.prompt_tokens
            stats.completion_tokens += call.completion_tokens
            if call.reply.tool_calls:
                stats.tool_calls += 1
            return response
        finally:
            self._planned_ends.pop(key, None)
            stats.timeline.end(span, outcome)
            if outcome == "cancelled":
                stats.cancelled += 1

    async def _stream(
        self,
        request: web.Request,
        headers: dict[str, str],
        delay: float,
        call: _Call,
        stop_after: int | None = None,
    ) -> tuple[web.StreamResponse, bool]:
        """Send the reply as server-sent events spread over `delay` seconds.

        Half the delay passes before the first chunk (time to first token), the rest is
        spread evenly over the chunks; chunks due at the same moment go out in one write.
        With `stop_after`, only that many chunks are sent, then the stream stalls for
        `hang_max` seconds (a stalled upstream) until the client gives up.
        Returns the response and whether it was sent in full (False: the client left).
        """
        events = wire.stream_events(
            wire.new_id(),
            int(time.time()),
            call.model,
            call.reply,
            call.usage(),
            include_usage=call.include_usage,
        )
        await asyncio.sleep(delay / 2)
        response = web.StreamResponse(
            status=200,
            headers={
                **headers,
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        step = (delay / 2) / max(1, len(events) - 1)
        begin = time.monotonic()
        buffer = bytearray()
        try:
            await response.prepare(request)
            for i, event in enumerate(events):
                if stop_after is not None and i >= stop_after:
                    await response.write(bytes(buffer))
                    await asyncio.sleep(self.config.hang_max)  # until the client gives up
                    return response, False
                pause = begin + i * step - time.monotonic()
                if pause > _BATCH_WINDOW:
                    if buffer:
                        await response.write(bytes(buffer))
                        buffer.clear()
                    await asyncio.sleep(pause)
                buffer += event
            await response.write(bytes(buffer))
            await response.write_eof()
        except ConnectionError:
            return response, False
        return response, True

    def _bad_request(self, now: float, message: str, param: str | None = None) -> web.Response:
        self.stats.bad_requests += 1
        self.stats.timeline.instant("bad_request", now)
        return web.json_response(
            wire.error_body(message, "invalid_request_error", param=param),
            status=400,
            dumps=wire.dumps,
        )

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        endpoint = self.transcription
        return await endpoint.serve(
            request,
            self._rng,
            self._media_latency,
            self._faults(),
            lambda: transcriptions(endpoint, request),
        )

    async def _generations(self, request: web.Request) -> web.StreamResponse:
        endpoint = self.images
        return await endpoint.serve(
            request,
            self._rng,
            self._media_latency,
            self._faults(),
            lambda: generations(endpoint, request),
        )

    def _media_latency(self) -> float:
        return self._latency.sample(self._rng)

    def _faults(self) -> tuple[float, float, float]:
        cfg = self.config
        return cfg.drop_rate, cfg.timeout_rate, cfg.fail_rate

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(wire.models_body(self.config.models, _CREATED), dumps=wire.dumps)

    async def _model(self, request: web.Request) -> web.Response:
        return web.json_response(
            wire.model_body(request.match_info["model"], _CREATED), dumps=wire.dumps
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            self.snapshot(timeline=wants_timeline(request.query)), dumps=wire.dumps
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(
            wire.error_body(
                f"Invalid URL ({request.method} {request.path})", "invalid_request_error"
            ),
            status=404,
            dumps=wire.dumps,
        )


#: The `created` stamp of the listed models.
_CREATED = 1_700_000_000


def _invalid(body: Any) -> tuple[str, str | None] | None:
    """(message, param) if the request body is not a valid chat completion request."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object.", None
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter", "model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array.", "messages"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"Invalid type for 'messages[{i}]': expected an object with a role.", (
                f"messages[{i}]"
            )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "Invalid type for 'tools': expected an array.", "tools"
    return None


def _drop(request: web.Request) -> web.Response:
    """Close the connection without answering (the returned response is never sent)."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=499)


def _server_error(rng: random.Random, headers: dict[str, str]) -> web.Response:
    """A 500 or a 503, as OpenAI sends them when it has trouble."""
    if rng.random() < 0.5:
        status, message = (
            500,
            ("The server had an error while processing your request. Sorry about that!"),
        )
    else:
        status, message = 503, "The engine is currently overloaded, please try again later."
    with contextlib.suppress(KeyError):
        del headers["openai-processing-ms"]
    return web.json_response(
        wire.error_body(message, "server_error"), status=status, headers=headers, dumps=wire.dumps
    )
