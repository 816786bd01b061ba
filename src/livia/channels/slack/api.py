"""Slack Web API calls, each one through the concurrency manager.

slack_sdk's own retry handlers are switched off: a 429 surfaces as `SlackApiError`
(with `.response.status_code` 429 and the `Retry-After` header) for the manager to
classify, wait and retry, so Slack's limits are kept in one place with the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

__all__ = ["ApiRunner", "SlackApi", "error_code", "new_web_client"]

T = TypeVar("T")


class ApiRunner(Protocol):
    """The part of `livia.concurrency.ConcurrencyManager` the Slack channel uses."""

    async def run(
        self,
        api: str,
        operation: Callable[[], Awaitable[T]],
        *,
        key: str | None = ...,
        deadline: float | None = ...,
        name: str | None = ...,
    ) -> T: ...


def new_web_client(token: str, base_url: str, *, timeout: int = 30) -> AsyncWebClient:
    """An `AsyncWebClient` with no retry handlers of its own (the manager retries)."""
    return AsyncWebClient(
        token=token or None, base_url=base_url, timeout=timeout, retry_handlers=[]
    )


def error_code(exc: BaseException) -> str:
    """Slack's error string (`not_allowed`, `ratelimited`...) from a `SlackApiError`, else ''."""
    if isinstance(exc, SlackApiError):
        try:
            return str(exc.response.get("error") or "")
        except Exception:  # a non-JSON body
            return ""
    return ""


class SlackApi:
    """Calls the Slack Web API through `manager` on the `api` upstream.

    One aiohttp session is shared by all calls once `open()` has run (connection reuse);
    before that each call opens its own, which slack_sdk does by default.
    """

    def __init__(self, client: AsyncWebClient, manager: ApiRunner, *, api: str = "slack") -> None:
        self.client = client
        self._manager = manager
        self._api = api
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Share one HTTP session between calls (call from a running event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self.client.session = self._session

    async def close(self) -> None:
        if self._session is not None:
            self.client.session = None
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        *,
        key: str | None = None,
        deadline: float | None = None,
        **args: Any,
    ) -> AsyncSlackResponse:
        """Call Web API `method` (e.g. "chat.postMessage") with `args` as its parameters.

        Raises `SlackApiError` once the manager gives up, or the manager's
        `CapacityExhausted` when no capacity is free within `deadline` seconds.
        """
        client = self.client
        func = getattr(client, method.replace(".", "_"), None)
        operation: Callable[[], Awaitable[AsyncSlackResponse]]
        if func is not None:
            operation = lambda: func(**args)  # noqa: E731
        else:  # a method slack_sdk has no wrapper for
            operation = lambda: client.api_call(method, json=args)  # noqa: E731
        # The manager logs failed attempts and retries; callers log with their context.
        return await self._manager.run(
            self._api, operation, key=key, deadline=deadline, name=method
        )

    async def run(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        key: str | None = None,
        deadline: float | None = None,
        name: str | None = None,
    ) -> T:
        """Run any other call to Slack (an upload, a download) on the same upstream."""
        return await self._manager.run(self._api, operation, key=key, deadline=deadline, name=name)
