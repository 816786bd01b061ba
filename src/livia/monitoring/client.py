"""Talking to a running Livia over HTTP, for the terminal clients (`livia chat`, `livia stats`).

Every failure becomes a `ServerError` whose message says what happened and what to do,
so the commands can print one line instead of a stack trace.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2

DEFAULT_URL = "http://127.0.0.1:8080"
#: Where the clients find the server's bearer token (the server reads the same variable).
TOKEN_ENV = "LIVIA_SERVER__API_TOKEN"


class ServerError(Exception):
    """Talking to the server failed; the message is meant for the person at the terminal."""


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer …` from `$LIVIA_SERVER__API_TOKEN`, when it is set."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def open_client(url: str, *, timeout: float = 10.0, read_timeout: float | None = None) -> Any:
    """An `httpx2.Client` for the server at `url`, with the token and bounded timeouts."""
    return httpx2.Client(
        base_url=url.rstrip("/"),
        headers=auth_headers(),
        timeout=httpx2.Timeout(timeout, read=read_timeout if read_timeout else timeout),
    )


@contextmanager
def friendly_errors(url: str) -> Iterator[None]:
    """Turn transport failures into a `ServerError` that names the URL and the fix."""
    try:
        yield
    except httpx2.ConnectError:
        raise ServerError(f"no Livia at {url}; start it with `make run`") from None
    except httpx2.TimeoutException:
        raise ServerError(f"Livia at {url} did not answer in time; is it overloaded?") from None
    except httpx2.HTTPError as exc:
        raise ServerError(f"talking to Livia at {url} failed: {exc}") from None


def raise_for_error(response: Any) -> None:
    """A `ServerError` carrying the server's `{"error": {"type", "message"}}` for 4xx/5xx."""
    if response.status_code < 400:
        return
    if response.status_code == 401:
        hint = (
            "the token in $" + TOKEN_ENV + " was refused"
            if TOKEN_ENV in os.environ
            else f"set {TOKEN_ENV} to the server's api_token"
        )
        raise ServerError(f"the server needs a valid API token: {hint}")
    try:
        response.read()
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError, httpx2.HTTPError):
        message = None
    detail = message or response.reason_phrase or "error"
    raise ServerError(f"the server answered {response.status_code}: {detail}")


def iter_sse(lines: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """Server-sent events from a stream of lines: (event name, JSON-decoded data).

    Comments (keep-alive pings) are skipped; data that is not JSON is returned as text.
    """
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                raw = "\n".join(data)
                try:
                    yield event, json.loads(raw)
                except ValueError:
                    yield event, raw
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:  # a last event without its blank line
        raw = "\n".join(data)
        try:
            yield event, json.loads(raw)
        except ValueError:
            yield event, raw
