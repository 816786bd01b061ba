"""A local Slack: the Web API and the Socket Mode protocol on 127.0.0.1, for tests and demos.

`SimSlack` is a real HTTP server (aiohttp). It serves the Web API methods Livia uses
under `/api/` with Slack-shaped `{"ok": ...}` JSON, records every call, keeps the
messages it was sent (so threads can be read back with `conversations.replies`), and
can inject failures (e.g. a 429 with `Retry-After`). `apps.connections.open` hands out
a `ws://` URL whose websocket speaks Slack's envelope protocol: `hello` on connect,
`events_api` envelopes pushed with an `envelope_id`, acknowledgements recorded by id.
It can also deliver Events API callbacks over HTTP, signed like Slack (`v0` HMAC).

    sim = SimSlack(signing_secret="s3cret")
    api_url = await sim.start(port=0)          # "http://127.0.0.1:PORT/api/"
    body = sim.message_event("C1", "U1", "<@U0LIVIA> hi", kind="app_mention")
    status, _ = await sim.post_event("http://127.0.0.1:8080/slack/events", body)
    await sim.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, WSMsgType, web

from livia.sim.slack_files import SimSlackFiles

__all__ = ["SimCall", "SimMessage", "SimSlack", "sign_request"]

log = logging.getLogger(__name__)


def sign_request(
    body: bytes | str, signing_secret: str, timestamp: float | None = None
) -> dict[str, str]:
    """Slack's request-signing headers for `body`: `v0=` HMAC-SHA256 of `v0:{ts}:{body}`."""
    raw = body.decode("utf-8") if isinstance(body, bytes) else body
    ts = str(int(time.time() if timestamp is None else timestamp))
    digest = hmac.new(
        signing_secret.encode("utf-8"), f"v0:{ts}:{raw}".encode(), hashlib.sha256
    ).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/json",
    }


@dataclass(frozen=True, slots=True)
class SimCall:
    """One Web API call the simulator answered."""

    method: str
    args: dict[str, Any]
    at: float  # time.monotonic() when it arrived
    status: int = 200
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass(slots=True)
class SimMessage:
    """A message the simulated workspace holds."""

    channel: str
    ts: str
    text: str
    user: str | None = None
    bot_id: str | None = None
    thread_ts: str | None = None
    streaming: bool = False

    def as_event(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.user:
            out["user"] = self.user
        if self.bot_id:
            out["bot_id"] = self.bot_id
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        return out


@dataclass(slots=True)
class _Fault:
    error: str
    status: int
    retry_after: float | None
    times: int


@dataclass(slots=True)
class _Socket:
    ws: web.WebSocketResponse
    ticket: str
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class SimSlack:
    """A simulated Slack workspace with one app installed (see the module docstring).

    `latency` delays every Web API answer; `unsupported` names methods answered with
    `unknown_method` (e.g. the streaming methods, to exercise fallbacks);
    `status_in_channels=False` makes `assistant.threads.setStatus` refuse non-DM channels.
    When `bot_token` / `app_token` are set, calls must carry them.
    """

    def __init__(
        self,
        *,
        team_id: str = "T0SIM",
        bot_user_id: str = "U0LIVIA",
        bot_id: str = "B0LIVIA",
        app_id: str = "A0LIVIA",
        bot_token: str | None = None,
        app_token: str | None = None,
        signing_secret: str = "sim-signing-secret",
        latency: float = 0.0,
        unsupported: Iterable[str] = (),
        status_in_channels: bool = True,
    ) -> None:
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.latency = latency
        self.unsupported = set(unsupported)
        self.status_in_channels = status_in_channels
        self.calls: list[SimCall] = []
        self.messages: dict[str, list[SimMessage]] = {}
        self.statuses: list[tuple[str, str, str]] = []  # (channel, thread_ts, status)
        self.acks: dict[str, dict[str, Any]] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._sockets: list[_Socket] = []
        self._tickets: set[str] = set()
        self._changed = asyncio.Condition()
        self._last_ts = 0
        self._event_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._base = ""
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._connections_open,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
            "assistant.threads.setStatus": self._set_status,
            "conversations.replies": self._replies,
        }
        #: Shared files, downloads and uploads (`livia.sim.slack_files`).
        self.files = SimSlackFiles(self)
        self._handlers.update(self.files.handlers())

    # -- server -------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The Web API base URL ("http://127.0.0.1:PORT/api/"), once started."""
        return f"{self._base}/api/"

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Serve on `host:port` (0 = any free port); returns the Web API base URL."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket-mode/{ticket}", self._socket_mode)
        self.files.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self._base = f"http://{host}:{bound}"
        log.info("simulated Slack on %s", self._base)
        return self.api_url

    async def stop(self) -> None:
        """Close the websockets and the server."""
        for sock in list(self._sockets):
            with contextlib.suppress(Exception):
                await sock.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test controls ------------------------------------------------------------------

    def fail(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        status: int | None = None,
        retry_after: float | None = 1.0,
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls of `method` with `error` (429 + Retry-After for
        "ratelimited", else HTTP 200 with `ok: false` unless `status` says otherwise)."""
        code = status if status is not None else (429 if error == "ratelimited" else 200)
        fault = _Fault(error, code, retry_after if code == 429 else None, times)
        self._faults.setdefault(method, []).append(fault)

    def calls_to(self, *methods: str) -> list[SimCall]:
        """The recorded calls of these methods, in order."""
        return [c for c in self.calls if c.method in methods]

    def thread(self, channel: str, thread_ts: str) -> list[SimMessage]:
        """A thread's messages (parent first), as the workspace holds them."""
        return sorted(
            (
                m
                for m in self.messages.get(channel, [])
                if m.ts == thread_ts or m.thread_ts == thread_ts
            ),
            key=lambda m: _ts_key(m.ts),
        )

    def bot_replies(self, channel: str, thread_ts: str) -> list[SimMessage]:
        """Livia's messages in a thread."""
        return [
            m
            for m in self.thread(channel, thread_ts)
            if m.bot_id == self.bot_id and m.ts != thread_ts
        ]

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str | None = None,
        bot_id: str | None = None,
        thread_ts: str | None = None,
    ) -> SimMessage:
        """Put a message in the workspace (no event is sent); returns it with its ts."""
        msg = SimMessage(
            channel=channel,
            ts=self._new_ts(),
            text=text,
            user=user,
            bot_id=bot_id,
            thread_ts=thread_ts,
        )
        self.messages.setdefault(channel, []).append(msg)
        return msg

    async def wait_for(self, predicate: Callable[[SimSlack], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate(self)` holds (re-checked on every call, post and ack)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- events -------------------------------------------------------------------------

    def event_body(
        self, event: Mapping[str, Any], *, event_id: str | None = None
    ) -> dict[str, Any]:
        """An Events API `event_callback` body around `event`, as Slack sends it."""
        return {
            "token": "sim-verification-token",
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "event": dict(event),
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._event_ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }

    def message_event(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        kind: str = "message",
        thread_ts: str | None = None,
        channel_type: str | None = None,
        event_id: str | None = None,
        ts: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A person posts `text`: the message is stored and its event body returned.

        `kind` is "message" or "app_mention"; pass `ts` to build the second event of a
        message already posted (Slack sends both for a mention).
        """
        if ts is None:
            ts = self.add_message(channel, text, user=user, thread_ts=thread_ts).ts
        event: dict[str, Any] = {
            "type": kind,
            "user": user,
            "text": text,
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
            "team": self.team_id,
            "client_msg_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{channel}/{ts}")),
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        if kind == "message":
            event["channel_type"] = channel_type or _channel_type(channel)
        event.update(extra)
        return self.event_body(event, event_id=event_id)

    def mention(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A message mentioning Livia: the `app_mention` and `message` bodies Slack sends."""
        body = self.message_event(channel, user, text, kind="app_mention", thread_ts=thread_ts)
        ts = body["event"]["ts"]
        return body, self.message_event(channel, user, text, thread_ts=thread_ts, ts=ts)

    async def post_event(
        self,
        url: str,
        body: Mapping[str, Any],
        *,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
        signing_secret: str | None = None,
        timestamp: float | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, str]:
        """Deliver `body` to an HTTP events endpoint, signed; returns (status, response text)."""
        raw = json.dumps(body)
        headers = sign_request(raw, signing_secret or self.signing_secret, timestamp)
        if retry_num:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason
        async with (
            ClientSession(timeout=ClientTimeout(total=timeout)) as session,
            session.post(url, data=raw.encode("utf-8"), headers=headers) as resp,
        ):
            return resp.status, await resp.text()

    # -- socket mode --------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Open Socket Mode connections."""
        return sum(1 for s in self._sockets if not s.closed.is_set())

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self.wait_for(lambda sim: sim.connections > 0, timeout)

    async def push_event(
        self, body: Mapping[str, Any], *, retry_attempt: int = 0, retry_reason: str = ""
    ) -> str:
        """Send an `events_api` envelope to the newest connection; returns its envelope_id."""
        live = [s for s in self._sockets if not s.closed.is_set()]
        if not live:
            raise RuntimeError("no Socket Mode connection is open")
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "payload": dict(body),
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": retry_reason,
        }
        await live[-1].ws.send_str(json.dumps(envelope))
        return envelope_id

    async def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The acknowledgement the app sent for `envelope_id` (waits for it)."""
        await self.wait_for(lambda sim: envelope_id in sim.acks, timeout)
        return self.acks[envelope_id]

    async def request_reconnect(self) -> None:
        """Ask the connected apps to reconnect, as Slack does before rotating servers."""
        for sock in self._sockets:
            if not sock.closed.is_set():
                await sock.ws.send_str(
                    json.dumps({"type": "disconnect", "reason": "refresh_requested"})
                )

    async def _socket_mode(self, request: web.Request) -> web.StreamResponse:
        ticket = request.match_info["ticket"]
        if ticket not in self._tickets:
            return web.json_response({"ok": False, "error": "invalid_ticket"}, status=401)
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        await ws.prepare(request)
        sock = _Socket(ws=ws, ticket=ticket)
        self._sockets.append(sock)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": self.connections,
                    "debug_info": {"host": "sim-slack", "approximate_connection_time": 18060},
                    "connection_info": {"app_id": self.app_id},
                }
            )
        )
        await self._notify()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("envelope_id"):
                    self.acks[str(data["envelope_id"])] = data
                    await self._notify()
        finally:
            sock.closed.set()
            await self._notify()
        return ws

    # -- Web API ------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                with contextlib.suppress(ValueError):
                    data = await request.json()
                    if isinstance(data, dict):
                        args.update(data)
            else:
                args.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        token = token or str(args.pop("token", "") or "")
        args.pop("token", None)
        if self.latency:
            await asyncio.sleep(self.latency)
        status, payload, headers = self._answer(method, args, token)
        self.calls.append(
            SimCall(
                method=method,
                args=args,
                at=time.monotonic(),
                status=status,
                error=None if payload.get("ok") else str(payload.get("error")),
            )
        )
        await self._notify()
        return web.json_response(payload, status=status, headers=headers)

    def file_share(
        self,
        channel: str,
        user: str,
        text: str,
        files: list[dict[str, Any]],
        *,
        thread_ts: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A message with file shares mentioning Livia: the `app_mention` and the
        `message` (subtype file_share) bodies Slack sends, both with the same files."""
        body = self.message_event(
            channel, user, text, kind="app_mention", thread_ts=thread_ts, files=files
        )
        ts = body["event"]["ts"]
        twin = self.message_event(
            channel, user, text, thread_ts=thread_ts, ts=ts, subtype="file_share", files=files
        )
        return body, twin

    def _record(
        self, method: str, args: dict[str, Any], status: int, payload: Mapping[str, Any]
    ) -> None:
        self.calls.append(
            SimCall(
                method=method,
                args=args,
                at=time.monotonic(),
                status=status,
                error=None if payload.get("ok") else str(payload.get("error")),
            )
        )

    def _answer_fault(self, method: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """A planned fault's answer for `method`, or (0, {}, {}) when none is due."""
        faults = self._faults.get(method)
        if faults:
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(max(0, round(fault.retry_after)))
            return fault.status, {"ok": False, "error": fault.error}, headers
        return 0, {}, {}

    def _answer(
        self, method: str, args: dict[str, Any], token: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        faulted = self._answer_fault(method)
        if faulted[0]:
            return faulted
        handler = self._handlers.get(method)
        if handler is None or method in self.unsupported:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if expected is not None and token != expected:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        try:
            return 200, handler(args), {}
        except _ApiError as exc:
            return 200, {"ok": False, "error": exc.code}, {}

    def _new_ts(self) -> str:
        micros = max(int(time.time() * 1_000_000), self._last_ts + 1)
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _find(self, channel: str, ts: str) -> SimMessage:
        for msg in self.messages.get(channel, []):
            if msg.ts == ts:
                return msg
        raise _ApiError("message_not_found")

    def _own(self, args: Mapping[str, Any]) -> SimMessage:
        msg = self._find(_required(args, "channel"), _required(args, "ts"))
        if msg.bot_id != self.bot_id:
            raise _ApiError("cant_update_message")
        return msg

    def _post(self, args: Mapping[str, Any], text: str, *, streaming: bool = False) -> SimMessage:
        channel = _required(args, "channel")
        if len(text) > 40_000:
            raise _ApiError("msg_too_long")
        thread_ts = str(args["thread_ts"]) if args.get("thread_ts") else None
        msg = self.add_message(
            channel, text, user=self.bot_user_id, bot_id=self.bot_id, thread_ts=thread_ts
        )
        msg.streaming = streaming
        return msg

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://sim.slack.com/",
            "team": "Simulated Workspace",
            "user": "livia",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "is_enterprise_install": False,
        }

    def _connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        ws_base = self._base.replace("http://", "ws://", 1)
        return {"ok": True, "url": f"{ws_base}/socket-mode/{ticket}"}

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        text = str(args.get("text") or args.get("markdown_text") or "")
        if not text and not args.get("blocks"):
            raise _ApiError("no_text")
        msg = self._post(args, text)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts, "message": msg.as_event()}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self._own(args)
        if msg.streaming:
            raise _ApiError("message_is_streaming")
        text = str(args.get("text") or args.get("markdown_text") or "")
        if len(text) > 40_000:
            raise _ApiError("msg_too_long")
        msg.text = text
        return {"ok": True, "channel": msg.channel, "ts": msg.ts, "text": text}

    def _delete(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self._own(args)
        self.messages[msg.channel].remove(msg)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _start_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _required(args, "channel")
        _required(args, "thread_ts")
        if not channel.startswith("D") and not (
            args.get("recipient_user_id") and args.get("recipient_team_id")
        ):
            raise _ApiError("missing_recipient_user_id")
        msg = self._post(args, str(args.get("markdown_text") or ""), streaming=True)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _append_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self._own(args)
        if not msg.streaming:
            raise _ApiError("message_not_in_streaming_state")
        msg.text += str(_required(args, "markdown_text"))
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _stop_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self._own(args)
        if not msg.streaming:
            raise _ApiError("message_not_in_streaming_state")
        msg.text += str(args.get("markdown_text") or "")
        msg.streaming = False
        return {"ok": True, "channel": msg.channel, "ts": msg.ts, "message": msg.as_event()}

    def _set_status(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _required(args, "channel_id")
        thread_ts = _required(args, "thread_ts")
        if not self.status_in_channels and not channel.startswith("D"):
            raise _ApiError("not_allowed")
        self.statuses.append((channel, thread_ts, str(args.get("status") or "")))
        return {"ok": True}

    def _replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _required(args, "channel")
        thread = self.thread(channel, _required(args, "ts"))
        if not thread:
            raise _ApiError("thread_not_found")
        limit = int(args.get("limit") or 1000)
        page = thread[:limit]
        messages = [m.as_event() for m in page]
        return {"ok": True, "messages": messages, "has_more": len(thread) > limit}


class _ApiError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _required(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if not value:
        raise _ApiError("invalid_arguments")
    return str(value)


def _channel_type(channel: str) -> str:
    return {"D": "im", "G": "group"}.get(channel[:1], "channel")


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds or 0), int(micros or 0)
