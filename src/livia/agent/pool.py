"""Many connections to one upstream without a scan of all of them per request.

httpcore's connection pool walks every connection it holds (asking each whether it has
expired) whenever a request starts or a response closes. With hundreds of streams open at
once that walk was an eighth of a busy server's CPU (profile in docs/bench.md). Several
small pools cost the same connections with a walk a fraction as long.

Invariants: a request goes to the shard with the fewest requests in flight (so no shard
waits for a connection while another has room); a request counts as in flight until its
response is closed or fails; each shard holds at most its share of the connections.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import httpx2

#: Connections one shard holds at most; the walk per request is at most this long.
SHARD_CONNECTIONS = 64


class ShardedTransport(httpx2.AsyncBaseTransport):
    """`httpx2.AsyncHTTPTransport`s that share `limits` between them, least busy first."""

    def __init__(self, limits: httpx2.Limits, *, shard_size: int = SHARD_CONNECTIONS) -> None:
        kept = limits.max_keepalive_connections or limits.max_connections or 1
        count = max(1, math.ceil(kept / shard_size))  # by the connections kept open
        self.shards = [
            httpx2.AsyncHTTPTransport(limits=_share(limits, count)) for _ in range(count)
        ]
        self.in_flight = [0] * count

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        index = min(range(len(self.shards)), key=self.in_flight.__getitem__)
        self.in_flight[index] += 1
        try:
            response = await self.shards[index].handle_async_request(request)
        except BaseException:
            self.in_flight[index] -= 1
            raise
        response.stream = _Counted(response.stream, lambda: self._done(index))
        return response

    def _done(self, index: int) -> None:
        self.in_flight[index] -= 1

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


def _share(limits: httpx2.Limits, count: int) -> httpx2.Limits:
    """One shard's part of `limits` (rounded up: together they may hold a few more)."""

    def part(value: int | None) -> int | None:
        return None if value is None else max(1, math.ceil(value / count))

    return httpx2.Limits(
        max_connections=part(limits.max_connections),
        max_keepalive_connections=part(limits.max_keepalive_connections),
        keepalive_expiry=limits.keepalive_expiry,
    )


class _Counted(httpx2.AsyncByteStream):
    """A response body that calls `done` once, when it is closed."""

    def __init__(
        self, stream: httpx2.AsyncByteStream | httpx2.SyncByteStream, done: Callable[[], None]
    ) -> None:
        self._stream = stream
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:  # type: ignore[union-attr]
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()  # type: ignore[union-attr]
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()
