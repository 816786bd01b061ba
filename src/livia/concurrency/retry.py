"""Which failures are worth another attempt, and how long to wait before it.

Retryable: timeouts, connection errors, and HTTP 408/409/429/5xx, whether they come from
the `openai` SDK, `httpx2`, `slack_sdk`, `aiohttp` or our own `RetryableError`. The wait
is tenacity's exponential strategy with jitter, raised to at least what the upstream
asked for (`Retry-After`, `retry-after-ms`, `x-ratelimit-reset-*`).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Any, cast

from tenacity import RetryCallState, wait_exponential, wait_random
from tenacity.wait import wait_base

from livia.concurrency.policy import ApiPolicy

RETRYABLE_STATUS = frozenset({408, 409, 429})


class RetryableError(Exception):
    """Raise from an operation to ask for another attempt (after `retry_after` s, if set)."""

    def __init__(self, message: str = "", *, retry_after: float | None = None, status: int = 0):
        super().__init__(message or "retryable failure")
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True, slots=True)
class Failure:
    """What the manager learned from one failed attempt."""

    retryable: bool
    status: int = 0  # HTTP status, when there was one
    retry_after: float | None = None  # the upstream's own minimum wait, in seconds
    kind: str = "error"  # "timeout", "connection", "http_429", "http_5xx", ...

    @property
    def rate_limited(self) -> bool:
        return self.status == 429


@cache
def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exception types of the HTTP stacks we use (imported lazily)."""
    found: list[type[BaseException]] = [ConnectionError]
    try:
        import httpx2

        found += [httpx2.TransportError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import openai

        found += [openai.APIConnectionError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import aiohttp

        found += [aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def _status_and_headers(exc: BaseException) -> tuple[int, Mapping[str, str] | None]:
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    if response is not None:
        status = status or getattr(response, "status_code", None) or getattr(response, "status", 0)
    headers = getattr(response, "headers", None) if response is not None else None
    try:
        return int(status or 0), headers
    except (TypeError, ValueError):
        return 0, headers


def classify(exc: BaseException) -> Failure:
    """Decide whether `exc` is worth another attempt and what wait the upstream asked for."""
    if isinstance(exc, RetryableError):
        return Failure(
            True, exc.status, exc.retry_after, f"http_{exc.status}" if exc.status else "retryable"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Failure(True, kind="timeout")
    status, headers = _status_and_headers(exc)
    if status:
        hint = retry_after_from(headers) if headers is not None else None
        if status in RETRYABLE_STATUS or status >= 500:
            return Failure(True, status, hint, f"http_{status}")
        return Failure(False, status, None, f"http_{status}")
    name = type(exc).__name__
    if isinstance(exc, _transport_errors()) or "Timeout" in name:
        return Failure(True, kind="timeout" if "Timeout" in name else "connection")
    return Failure(False, kind=name)


_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Parse OpenAI's reset durations ("6m0s", "20ms", "1h2m3.5s", "1.5") into seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(v + u for v, u in parts) != text:
        return None
    return sum(float(v) * _UNIT[u] for v, u in parts)


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """The minimum wait an HTTP response asks for, in seconds, or None if it names none."""
    get = headers.get
    value = get("retry-after-ms") or get("Retry-After-Ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = get("retry-after") or get("Retry-After")
    if value:
        seconds = parse_duration(value)
        if seconds is not None:
            return seconds
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    waits = []
    for kind in ("requests", "tokens"):
        reset = get(f"x-ratelimit-reset-{kind}")
        remaining = get(f"x-ratelimit-remaining-{kind}")
        if reset and (remaining is None or remaining.strip() == "0"):
            seconds = parse_duration(reset)
            if seconds is not None:
                waits.append(seconds)
    return max(waits) if waits else None


def backoff_strategy(policy: ApiPolicy) -> wait_base:
    """Tenacity's exponential wait (min → max, doubling) plus a little random jitter."""
    strategy: wait_base = wait_exponential(
        multiplier=policy.backoff_min, min=policy.backoff_min, max=policy.backoff_max
    )
    if policy.backoff_jitter > 0 and policy.backoff_min > 0:
        strategy = strategy + wait_random(0, policy.backoff_min * policy.backoff_jitter)
    return strategy


def backoff_wait(strategy: wait_base, attempt: int, ceiling: float) -> float:
    """The wait after failed attempt number `attempt` (1-based), capped at `ceiling`."""
    state = RetryCallState(cast(Any, None), None, (), {})
    state.attempt_number = attempt
    wait = float(strategy(state))
    return min(ceiling, wait) if math.isfinite(ceiling) else wait
