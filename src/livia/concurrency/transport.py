"""An `httpx2` transport that sends every request through the concurrency manager.

Hand it to any SDK built on `httpx2` (the `openai` client, the `mcp` client) and each
HTTP request becomes one governed call: it waits for a slot and room in the windows,
429/5xx answers are retried with backoff (honouring `Retry-After`), and the figures show
up in `get_stats()`. Turn the SDK's own retries off (`max_retries=0`) so the manager
alone decides.

The response body is read inside the governed call, so the slot covers the whole
exchange; a streamed body therefore arrives in one piece. To stream and stay governed,
consume the stream inside `manager.run` instead (as `livia.agent` does).

Whose call it is (fairness) and its token estimate come from `call_context(...)`:

    with call_context(key="user-42", cost=1200):
        await client.chat.completions.create(...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import httpx2

from livia.concurrency.manager import ConcurrencyManager
from livia.concurrency.retry import RETRYABLE_STATUS, RetryableError, retry_after_from


@dataclass(frozen=True, slots=True)
class CallContext:
    key: str | None = None
    cost: int = 1
    deadline: float | None = None


_CONTEXT: ContextVar[CallContext | None] = ContextVar("livia_call_context", default=None)
_NO_CONTEXT = CallContext()


@contextlib.contextmanager
def call_context(
    *, key: str | None = None, cost: int = 1, deadline: float | None = None
) -> Iterator[None]:
    """Name the user, token estimate and deadline of the governed requests made inside."""
    token = _CONTEXT.set(CallContext(key, cost, deadline))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class _RetryableResponse(RetryableError):
    """A 429/5xx answer the manager may retry; carries the response for the last attempt."""

    def __init__(self, response: httpx2.Response) -> None:
        super().__init__(
            f"HTTP {response.status_code}",
            retry_after=retry_after_from(response.headers),
            status=response.status_code,
        )
        self.response = response


class GovernedTransport(httpx2.AsyncBaseTransport):
    """Sends each request through `manager.run(api, ...)`; see the module docstring."""

    def __init__(
        self,
        manager: ConcurrencyManager,
        api: str,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        manager.policy(api)  # unknown upstream: fail now, with the known names
        self.manager = manager
        self.api = api
        self.transport = transport or httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        ctx = _CONTEXT.get() or _NO_CONTEXT

        async def attempt() -> httpx2.Response:
            response = await self.transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
            status = response.status_code
            if status in RETRYABLE_STATUS or status >= 500:
                raise _RetryableResponse(response)
            return response

        try:
            return await self.manager.run(
                self.api,
                attempt,
                key=ctx.key,
                cost=ctx.cost,
                deadline=ctx.deadline,
                name=f"{request.method} {request.url.path}",
            )
        except _RetryableResponse as exc:
            return exc.response  # retries ran out: the SDK sees the real last answer

    async def aclose(self) -> None:
        await self.transport.aclose()


def governed_client(
    manager: ConcurrencyManager, api: str, **client_options: object
) -> httpx2.AsyncClient:
    """An `httpx2.AsyncClient` whose every request is governed by `manager` on `api`."""
    return httpx2.AsyncClient(transport=GovernedTransport(manager, api), **client_options)  # type: ignore[arg-type]
