"""Socket Mode: Bolt's async handler on slack_sdk's aiohttp client, with the
`apps.connections.open` call (the one Web API call the client makes itself) sent
through the concurrency manager like every other Slack call.
"""

from __future__ import annotations

import time
from typing import Any

from slack_bolt.adapter.socket_mode.async_base_handler import AsyncBaseSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app, send_async_response
from slack_bolt.async_app import AsyncApp
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest

from livia.channels.slack.api import SlackApi

__all__ = ["GovernedSocketModeClient", "SocketModeHandler"]


class GovernedSocketModeClient(SocketModeClient):
    """slack_sdk's aiohttp Socket Mode client whose URL requests go through `api`."""

    def __init__(self, api: SlackApi, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._api = api

    async def issue_new_wss_url(self) -> str:
        token = self.app_token
        resp = await self._api.call("apps.connections.open", app_token=token)
        return str(resp["url"])


class SocketModeHandler(AsyncBaseSocketModeHandler):
    """Feeds Socket Mode envelopes to the Bolt app and acknowledges them by envelope_id.

    Must be created inside a running event loop (the client starts tasks at once).
    """

    app: AsyncApp
    client: GovernedSocketModeClient

    def __init__(
        self, app: AsyncApp, api: SlackApi, app_token: str, *, ping_interval: float = 10
    ) -> None:
        self.app = app
        self.client = GovernedSocketModeClient(
            api,
            app_token=app_token,
            logger=app.logger,
            web_client=api.client,
            ping_interval=ping_interval,
        )
        self.client.socket_mode_request_listeners.append(self.handle)

    async def handle(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
        """Dispatch one envelope; Bolt acks at once (listeners run after the ack)."""
        start = time.time()
        response = await run_async_bolt_app(self.app, req)
        await send_async_response(client, req, response, start)
