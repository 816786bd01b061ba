"""The model's HTTP: streamed Chat Completions requests over one aiohttp session.

The `openai` SDK stays the authority on *what* is sent and *what* a failure is: the
base URL, the headers (key, organization, project, user agent) and the typed errors
(`RateLimitError` with its response headers, `InternalServerError`, `APIConnectionError`,
...) are the SDK's own. Only the sending is done here: at 1 000 conversations the SDK's
request path (option models, httpx2 over its aiohttp adapter, a read timeout re-armed on
every network read) was over half of a busy server's CPU (profile in docs/bench.md).

A proxy is taken from the environment once (``HTTPS_PROXY`` / ``HTTP_PROXY``, ``NO_PROXY``),
as httpx would: aiohttp's own `trust_env` looks at them, and at ``~/.netrc`` in a thread,
for every request.

The connection pool has a connection for every slot of the upstream's `max_concurrent`
(at least `MAX_CONNECTIONS`, at most `MOST_CONNECTIONS`), each kept alive between calls
for `KEEPALIVE` seconds. There is no read timeout here: the caller bounds the attempt and
the gaps between chunks (`livia.agent.idle`), with one timer per wait rather than one per
read.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import httpx2
import openai

#: Connections the model's client may open: the default, or one per slot of the
#: upstream's `max_concurrent`, up to `MOST_CONNECTIONS`.
MAX_CONNECTIONS = 1000
MOST_CONNECTIONS = 2000
#: Seconds an idle connection is kept for the next call (the SDK's default).
KEEPALIVE = 5.0
#: Most bytes of an error response read to describe it.
MAX_ERROR_BODY = 64 * 1024

#: The SDK's error class for each status (others: `InternalServerError` from 500 up,
#: else `APIStatusError`), as the SDK itself picks them.
_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}
#: Response headers that describe the body as sent, not as aiohttp hands it over.
_DECODED_HEADERS = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})
#: What a broken transfer raises, whatever the HTTP stack: the SDK calls it a connection error.
TRANSFER_ERRORS = (aiohttp.ClientError, ConnectionError)


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (None: go direct), read as httpx and
    urllib read it: ``<SCHEME>_PROXY`` or ``ALL_PROXY``, unless ``NO_PROXY`` covers the host."""
    parts = urlsplit(url)
    if parts.hostname and proxy_bypass(parts.hostname):
        return None
    proxies = getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


class ModelWire:
    """POSTs streamed Chat Completions requests for `client` (an `AsyncOpenAI`).

    The session is opened on first use (it needs the running loop) and closed by
    `aclose`. `request` names the call in errors, as the SDK's own do.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        connections: int = MAX_CONNECTIONS,
        connect_timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.url = str(client.base_url).rstrip("/") + "/chat/completions"
        self.connections = connections
        self.connect_timeout = connect_timeout
        self.request = httpx2.Request("POST", self.url)
        self.proxy = proxy_for(self.url)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        headers = {k: v for k, v in self.client.default_headers.items() if isinstance(v, str)}
        headers.update(self.client.auth_headers)
        headers["Accept"] = "text/event-stream"
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=0, keepalive_timeout=KEEPALIVE
        )
        return aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
        )

    @contextlib.asynccontextmanager
    async def stream(self, body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        """POST `body` (the request's JSON) and yield the response body's blocks as they
        arrive.

        A status of 400 or more raises the SDK's error for it (with the response's
        headers and JSON body); a failed connect or send raises `APIConnectionError`.
        """
        if self._session is None or self._session.closed:
            self._session = self._open()
        try:
            response = await self._session.post(self.url, data=body, proxy=self.proxy)
        except TRANSFER_ERRORS as exc:
            raise openai.APIConnectionError(request=self.request) from exc
        async with response:
            if response.status >= 400:
                raise await self._status_error(response)
            yield response.content.iter_any()

    async def _status_error(self, response: aiohttp.ClientResponse) -> openai.APIStatusError:
        """The SDK's error for a failed response, as `AsyncOpenAI` would build it."""
        content = b""
        try:
            while len(content) < MAX_ERROR_BODY:
                block = await response.content.read(MAX_ERROR_BODY - len(content))
                if not block:
                    break
                content += block
        except TRANSFER_ERRORS:
            pass
        try:
            body: object = json.loads(content) if content else None
        except ValueError:
            body = content.decode("utf-8", "replace")
        data = body.get("error", body) if isinstance(body, dict) else body
        message = f"Error code: {response.status}" + (f" - {body}" if body else "")
        reply = httpx2.Response(
            response.status,
            # aiohttp has decoded the body already: its encoding and length no longer hold
            headers=[
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in response.raw_headers
                if k.lower() not in _DECODED_HEADERS
            ],
            content=content,
            request=self.request,
        )
        status = response.status
        kind = _STATUS_ERRORS.get(status)
        if kind is None:
            kind = openai.InternalServerError if status >= 500 else openai.APIStatusError
        return kind(message, response=reply, body=data)

    async def aclose(self) -> None:
        """Close the connections (the session opens anew on the next call)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
