"""Honest words for failures: what the user (or the model) is told when an upstream fails.

Every message says what happened and, when known, when to try again; none carries a stack
trace, an internal URL or a secret.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx2
import openai

from livia.concurrency import CapacityExhausted, CircuitOpen, CoordinationUnavailable
from livia.concurrency import retry_after_from as headers_retry_after


class StreamInterrupted(Exception):
    """The model's stream broke after part of the reply had reached the user.

    Not retried: a second attempt would repeat text the user has already seen.
    """


class ModelTimeout(openai.APITimeoutError):
    """A model attempt abandoned at `[llm] attempt_timeout` or `stream_idle_timeout`
    (retryable while no text reached the user); the message says which bound, how long."""

    def __init__(self, request: httpx2.Request, why: str) -> None:
        super().__init__(request=request)
        self.message = why
        self.args = (why,)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class ModelFailure:
    """A failed model call, as the user hears it (`apology`) and as a short code (`code`)."""

    apology: str
    code: str
    retry_after: float | None = None


def root_cause(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (task groups wrap transport errors), else `exc`."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """A one-line, secret-free description of an exception for logs and tool results."""
    leaf = root_cause(exc)
    text = str(leaf).strip().splitlines()[0] if str(leaf).strip() else ""
    name = type(leaf).__name__
    return f"{name}: {text[:200]}" if text else name


def format_wait(seconds: float) -> str:
    """`40 s`, `12 min`, `2 h`: a wait as a person would say it."""
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 90 * 60:
        return f"{math.ceil(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h".replace(".0 h", " h")


def format_clock(moment: datetime, *, now: datetime | None = None) -> str:
    """`14:32 UTC`, with the date too when it is not today (UTC)."""
    moment = moment.astimezone(UTC)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    if moment.date() == today:
        return f"{moment:%H:%M} UTC"
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def available_at(exc: CapacityExhausted) -> datetime:
    """When the exhausted upstream has capacity again."""
    when = getattr(exc, "available_at", None)
    if isinstance(when, datetime):
        return when
    return datetime.now(UTC) + timedelta(seconds=exc.retry_after)


def retry_after_from(exc: BaseException) -> float | None:
    """Seconds an upstream asked us to wait, from its error response's headers, if any (read
    as the manager reads them: `livia.concurrency.retry_after_from`)."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    return None if headers is None else headers_retry_after(headers)


def model_failure(exc: BaseException) -> ModelFailure:
    """What to tell the user when the model upstream failed (after the manager's retries)."""
    exc = root_cause(exc)
    if isinstance(exc, CircuitOpen):
        when = format_clock(available_at(exc))
        return ModelFailure(
            f"Sorry — the model service has been failing, so I'm pausing calls to it until "
            f"{when} (~{format_wait(exc.retry_after)}). Please try again then.",
            "model_unavailable",
            exc.retry_after,
        )
    if isinstance(exc, CoordinationUnavailable):  # Redis away: not the model's limit
        return ModelFailure(
            "Sorry — I cannot reach the service that coordinates my usage limits (Redis), "
            "so I may not call the model right now; please try again in a minute.",
            "coordination_unavailable",
            exc.retry_after,
        )
    if isinstance(exc, CapacityExhausted):
        when = format_clock(available_at(exc))
        in_about = format_wait(exc.retry_after)
        cause = exc.__cause__
        if isinstance(cause, openai.RateLimitError) or "429" in exc.reason:
            what = "the model is rate-limited"
        elif cause is not None or "failing" in exc.reason:
            what = "the model service is failing right now"
        else:
            what = "the model is at its usage limit right now"
        return ModelFailure(
            f"Sorry — {what}; try again in ~{in_about} (at {when}).",
            "model_rate_limited" if "rate-limited" in what else "model_capacity",
            exc.retry_after,
        )
    if isinstance(exc, StreamInterrupted) and isinstance(exc.__cause__, ModelTimeout):
        return ModelFailure(
            "Sorry — the model stopped sending my answer partway, so it is cut off here. "
            "Please ask again.",
            "model_interrupted",
        )
    if isinstance(exc, StreamInterrupted):
        return ModelFailure(
            "Sorry — my answer was cut off because the connection to the model broke. "
            "Please ask again.",
            "model_interrupted",
        )
    if isinstance(exc, openai.RateLimitError):
        wait = retry_after_from(exc)
        hint = f"try again in ~{format_wait(wait)}" if wait else "try again in a minute"
        return ModelFailure(
            f"Sorry — the model is rate-limited; {hint}.", "model_rate_limited", wait
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelFailure(
            "Sorry — the model service refused Livia's credentials; an operator needs to "
            "check the API key.",
            "model_auth",
        )
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return ModelFailure(
                f"Sorry — the model service is having trouble (HTTP {exc.status_code}); "
                "please try again in a minute.",
                "model_unavailable",
                retry_after_from(exc),
            )
        return ModelFailure(
            f"Sorry — the model service rejected the request (HTTP {exc.status_code}). "
            "Try rephrasing, or start a new conversation if this one is very long.",
            "model_rejected",
        )
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return ModelFailure(
            "Sorry — the model took too long to answer; please try again.", "model_timeout"
        )
    if isinstance(exc, openai.APIConnectionError):
        return ModelFailure(
            "Sorry — I couldn't reach the model service; please try again shortly.",
            "model_unreachable",
        )
    if isinstance(exc, openai.APIError):
        return ModelFailure(
            "Sorry — the model service reported an error while answering; please try again.",
            "model_error",
        )
    return ModelFailure(
        "Sorry — something went wrong on my side while answering; please try again.",
        "internal",
    )


def tool_unavailable_notice(api: str, exc: CapacityExhausted) -> str:
    """What the user reads when a tool's upstream has no capacity: one plain sentence,
    "Zapier tools are out of quota until 01:57 UTC (in 51 min)"."""
    when = format_clock(available_at(exc))
    wait = format_wait(exc.retry_after)
    tools = f"{api[:1].upper()}{api[1:]} tools"
    if isinstance(exc, CircuitOpen):
        return f"{tools} are paused after repeated failures until {when} (in {wait})"
    if "429" in exc.reason or "rate limited" in exc.reason:
        return f"{tools} are rate-limited until {when} (in {wait})"
    if "slots busy" in exc.reason:
        return f"{tools} are all busy; one is expected free at {when} (in {wait})"
    if "failing" in exc.reason:
        return f"{tools} are failing; the next try is possible at {when} (in {wait})"
    return f"{tools} are out of quota until {when} (in {wait})"


def tool_out_of_capacity(tool: str, api: str, exc: CapacityExhausted) -> str:
    """The tool result the model sees when the tool's upstream has no capacity: the facts
    first (the user's sentence), then what the model should do with them."""
    when = format_clock(available_at(exc))
    return (
        f"ERROR: {tool_unavailable_notice(api, exc)}; {tool} was not run. "
        f"Tell the user it is unavailable until {when} and offer to help another way."
    )
