"""`SlackChannel`: the Bolt app, its two transports (Socket Mode, HTTP events) and the
path from a Slack event to a streamed reply in the thread.

Listeners are thin: Bolt acknowledges at once (`process_before_response=False`, so the
3-second window is always met), the listener hands the event body to `handle_event`,
which runs in a task the channel tracks. The decisions live in `handling`, the
rendering in `streaming`, and every Web API call goes through the concurrency manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from slack_bolt.adapter.starlette.async_handler import to_starlette_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from livia.channels.errors import ApiError, read_capped
from livia.channels.slack.api import ApiRunner, SlackApi, error_code, new_web_client
from livia.channels.slack.handling import (
    SlackMessage,
    Target,
    conversation_id,
    ignore_reason,
    parse_event,
    prior_history,
    to_incoming,
)
from livia.channels.slack.memory import InMemorySlackMemory, SlackMemory, StoreSlackMemory
from livia.channels.slack.socket import SocketModeHandler
from livia.channels.slack.streaming import Capabilities, ReplyStream, post_reply
from livia.channels.slack.uploads import DRAWN, upload_file
from livia.config import Settings
from livia.conversations import (
    ConversationError,
    Conversations,
    IncomingMessage,
    NotRunning,
    Reply,
    Ticket,
)
from livia.conversations.locks import KeyedLocks
from livia.files import Spool, slack_refs

if TYPE_CHECKING:
    from livia.store import Store

__all__ = ["SlackChannel", "SlackDelivery", "SlackIdentity", "SlackSetupError"]

log = logging.getLogger(__name__)


class SlackSetupError(RuntimeError):
    """Slack cannot start: a token is missing or refused. The message says which and what to do."""


@dataclass(frozen=True, slots=True)
class SlackIdentity:
    """Who Livia is in this workspace, from `auth.test`."""

    team_id: str
    user_id: str
    bot_id: str
    enterprise_id: str | None = None
    team: str = ""
    #: The app's id, when `auth.test` names it (then events must carry the same
    #: `api_app_id`).
    app_id: str = ""
    #: An org-wide install answers in every workspace of its enterprise.
    enterprise_install: bool = False

    def foreign(self, body: Mapping[str, Any]) -> str | None:
        """Why an Events API `body` is not for this bot (another team or app), or None."""
        if body.get("type") in ("url_verification", "ssl_check"):
            return None  # no team yet: Slack checking the URL itself
        app = body.get("api_app_id")
        if self.app_id and app != self.app_id:
            return f"api_app_id={app!r} is not this app ({self.app_id})"
        team, enterprise = _team_of(body)
        if self.enterprise_install and self.enterprise_id and enterprise == self.enterprise_id:
            return None
        if not team or team != self.team_id:
            return f"team_id={team!r} is not this bot's team ({self.team_id})"
        return None


def _team_of(body: Mapping[str, Any]) -> tuple[str, str]:
    """The (team id, enterprise id) an Events API or interactive body was sent for."""
    auths = body.get("authorizations")
    first = auths[0] if isinstance(auths, list) and auths and isinstance(auths[0], Mapping) else {}
    team_field = body.get("team")
    team = (
        body.get("team_id")
        or first.get("team_id")
        or (team_field.get("id") if isinstance(team_field, Mapping) else team_field)
        or ""
    )
    enterprise_field = body.get("enterprise")
    enterprise = (
        body.get("enterprise_id")
        or first.get("enterprise_id")
        or (enterprise_field.get("id") if isinstance(enterprise_field, Mapping) else None)
        or ""
    )
    return str(team), str(enterprise)


#: The largest Slack request body read (Slack's own are a few KB); larger ones get 413
#: before a byte is parsed.
MAX_EVENT_BYTES = 1024 * 1024


def _slack_error(status: int, type_: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status)


def _parse_body(text: str, content_type: str) -> dict[str, Any]:
    """The body as Bolt will read it (JSON, or a form with a JSON `payload`); ValueError
    when it is not a JSON object."""
    if content_type == "application/json" or text.startswith("{"):
        data: Any = json.loads(text)
    else:
        params = dict(parse_qsl(text, keep_blank_values=True))
        data = json.loads(params["payload"]) if "payload" in params else params
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    if "event" in data and not isinstance(data["event"], dict):
        raise ValueError("`event` is not an object")
    return data


class SlackDelivery:
    """`ReplyDelivery` for Slack: posts a reply whose requester is gone (after a restart)."""

    def __init__(self, api: SlackApi) -> None:
        self._api = api

    async def deliver(self, message: IncomingMessage, reply: Reply) -> None:
        meta = message.meta
        target = Target(
            team=str(meta.get("team", "")),
            channel=str(meta["channel"]),
            thread_ts=str(meta.get("thread_ts") or meta["ts"]),
            user=str(meta.get("user") or message.user_id),
        )
        await post_reply(self._api, target, reply.text)
        log.info(
            "slack delivered late reply: channel=%s thread=%s", target.channel, target.thread_ts
        )


class _QuietTokenWarnings(logging.Filter):
    """Drops Bolt's notes that its own token is unused: Livia passes tokens on purpose
    through `authorize` (Bolt reads SLACK_BOT_TOKEN from the environment regardless)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "token` will be unused" not in record.getMessage()


def _bolt_logger() -> logging.Logger:
    logger = logging.getLogger("livia.channels.slack.bolt")
    if not any(isinstance(f, _QuietTokenWarnings) for f in logger.filters):
        logger.addFilter(_QuietTokenWarnings())
    return logger


class SlackChannel:
    """Livia in Slack: answers mentions, DMs and follow-ups in threads she is part of.

    `router` serves `POST /slack/events` (HTTP mode; mount it when `[slack] mode` is
    "http"); `start()` learns the bot's identity (`auth.test`) and, in Socket Mode,
    connects; `aclose()` disconnects and waits (bounded) for replies under way.
    `handle_event(body)` is the whole path for one Events API body, usable without Bolt.
    """

    def __init__(
        self,
        settings: Settings,
        conversations: Conversations,
        manager: ApiRunner,
        *,
        store: Store | None = None,
        memory: SlackMemory | None = None,
        min_update_interval: float = 1.0,
        turn_timeout: float = 900.0,
        connect_timeout: float = 30.0,
        close_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.config = settings.slack
        self.mode = settings.slack.mode
        self._conversations = conversations
        self._bot_token = settings.slack_bot_token
        self._app_token = settings.slack_app_token
        self._signing_secret = settings.slack_signing_secret
        if memory is None:
            memory = StoreSlackMemory(store) if store is not None else InMemorySlackMemory()
        self._memory: SlackMemory = memory
        self._min_update_interval = min_update_interval
        self._turn_timeout = turn_timeout
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._history_tokens = settings.llm.history_tokens
        self._allowed_channels = frozenset(settings.slack.allowed_channels)
        self._allowed_users = frozenset(settings.slack.allowed_users)

        self.api = SlackApi(
            new_web_client(self._bot_token, settings.slack.api_url), manager, api=settings.slack.api
        )
        self.capabilities = Capabilities()
        self.delivery = SlackDelivery(self.api)
        self._identity: SlackIdentity | None = None
        self._identity_lock = asyncio.Lock()
        self._in_order = KeyedLocks()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._socket: SocketModeHandler | None = None
        self._closed = False

        self.app = self._build_bolt_app()
        self.router = APIRouter()
        self.router.add_api_route(
            "/slack/events", self._http_events, methods=["POST"], include_in_schema=False
        )
        conversations.register_delivery("slack", self.delivery)

    # -- Bolt ---------------------------------------------------------------------------

    def _build_bolt_app(self) -> AsyncApp:
        channel = self

        async def authorize(
            enterprise_id: str | None, team_id: str | None
        ) -> AuthorizeResult | None:
            me = await channel.whoami()
            ours = team_id == me.team_id or (
                me.enterprise_install
                and bool(me.enterprise_id)
                and enterprise_id == me.enterprise_id
            )
            if not ours:  # the bot token is this workspace's alone
                log.warning(
                    "slack authorize refused: team=%s enterprise=%s is not this bot's (%s)",
                    team_id,
                    enterprise_id,
                    me.team_id,
                )
                return None
            return AuthorizeResult(
                enterprise_id=me.enterprise_id or enterprise_id,
                team_id=me.team_id or team_id,
                bot_user_id=me.user_id,
                bot_id=me.bot_id,
                bot_token=channel._bot_token,
            )

        async def on_message(body: dict[str, Any], request: AsyncBoltRequest) -> None:
            # Socket Mode's retry_attempt arrives as the same header (0 on a first try).
            retry = request.headers.get("x-slack-retry-num", [""])[0]
            if retry not in ("", "0"):
                log.info("slack retry received: event=%s retry=%s", body.get("event_id"), retry)
            channel.accept(body)

        async def on_assistant_thread(body: dict[str, Any]) -> None:
            await channel.note_assistant_thread(body)

        async def on_other(body: dict[str, Any]) -> None:
            log.debug("slack event ignored: type=%s", (body.get("event") or {}).get("type"))

        app = AsyncApp(
            name="livia",
            logger=_bolt_logger(),
            # Bolt's client only serves its per-request context; Livia calls through `api`.
            client=new_web_client("", self.config.api_url),
            signing_secret=self._signing_secret,
            authorize=authorize,  # type: ignore[arg-type]  # None: "not installed here"
            process_before_response=False,
        )
        app.event("app_mention")(on_message)
        app.event("message")(on_message)
        app.event("assistant_thread_started")(on_assistant_thread)
        app.event(re.compile(r".*"))(on_other)  # ack everything else quietly (no 404s)
        return app

    async def _http_events(self, request: Request) -> Response:
        """`POST /slack/events`: at most `MAX_EVENT_BYTES` read (413), the signature checked
        on the raw bytes before anything is parsed (401), a malformed signed body refused
        (400), another team's or app's event acknowledged and dropped; then Bolt."""
        try:
            raw = await read_capped(request, MAX_EVENT_BYTES)
        except ApiError:
            return _slack_error(413, "payload_too_large", f"over {MAX_EVENT_BYTES} bytes")
        if not self._signed(raw, request.headers):
            log.info("slack request refused: bad, missing or expired signature")
            return _slack_error(
                401, "invalid_signature", "the Slack signature is missing, wrong or too old"
            )
        try:
            text = raw.decode("utf-8")
            body = _parse_body(text, request.headers.get("content-type", ""))
        except (ValueError, KeyError, RecursionError) as exc:
            log.warning("slack request refused: malformed signed body (%s)", type(exc).__name__)
            return _slack_error(400, "invalid_body", "the body is not a Slack event (JSON object)")
        try:
            me = await self.whoami()
        except SlackSetupError as exc:
            log.error("slack event not handled: %s", exc)
            return _slack_error(503, "slack_unavailable", "Livia cannot reach Slack right now")
        if (why := me.foreign(body)) is not None:
            log.warning("slack event ignored: event=%s %s", body.get("event_id"), why)
            return Response(status_code=200)  # acknowledged, so Slack does not retry
        bolt_request = AsyncBoltRequest(
            body=text,
            query=request.query_params,  # type: ignore[arg-type]
            headers=request.headers,  # type: ignore[arg-type]
        )
        try:
            return to_starlette_response(await self.app.async_dispatch(bolt_request))
        except Exception:
            log.exception("slack event could not be dispatched: event=%s", body.get("event_id"))
            return _slack_error(400, "invalid_body", "the body could not be processed")

    def _signed(self, raw: bytes, headers: Mapping[str, str]) -> bool:
        """True when `raw` carries Slack's valid, fresh (5 min) signature."""
        timestamp = headers.get("x-slack-request-timestamp", "")
        signature = headers.get("x-slack-signature", "")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            return False
        if not (signature.isascii() and self._signing_secret):
            return False
        try:
            verifier = SignatureVerifier(self._signing_secret)
            return verifier.is_valid(raw, timestamp, signature)
        except (ValueError, TypeError, UnicodeDecodeError):
            return False  # e.g. a body that is not UTF-8: Slack never signs one

    # -- life cycle ---------------------------------------------------------------------

    async def whoami(self) -> SlackIdentity:
        """The bot's identity, from one `auth.test` (cached)."""
        if self._identity is not None:
            return self._identity
        async with self._identity_lock:
            if self._identity is None:
                if not self._bot_token:
                    raise SlackSetupError(
                        "SLACK_BOT_TOKEN is not set: copy the Bot User OAuth Token (xoxb-…)"
                    )
                try:
                    resp = await self.api.call("auth.test")
                except SlackApiError as exc:
                    raise SlackSetupError(
                        f"Slack refused the bot token ({error_code(exc) or exc}): "
                        "check SLACK_BOT_TOKEN"
                    ) from None
                except Exception as exc:
                    raise SlackSetupError(
                        f"could not reach the Slack Web API at {self.config.api_url} "
                        f"({type(exc).__name__}: {exc}); check the network and [slack] api_url"
                    ) from None
                self._identity = SlackIdentity(
                    team_id=str(resp.get("team_id") or ""),
                    user_id=str(resp.get("user_id") or ""),
                    bot_id=str(resp.get("bot_id") or ""),
                    enterprise_id=resp.get("enterprise_id") or None,
                    team=str(resp.get("team") or ""),
                    app_id=str(resp.get("app_id") or ""),
                    enterprise_install=bool(resp.get("is_enterprise_install")),
                )
            return self._identity

    async def start(self) -> None:
        """Check the tokens, learn who Livia is, and connect (Socket Mode)."""
        if self.mode == "off":
            return
        missing = [] if self._bot_token else ["SLACK_BOT_TOKEN (the Bot User OAuth Token, xoxb-…)"]
        if self.mode == "http" and not self._signing_secret:
            missing.append(
                "SLACK_SIGNING_SECRET (Basic Information → App Credentials → Signing Secret)"
            )
        if self.mode == "socket" and not self._app_token:
            missing.append("SLACK_APP_TOKEN (an app-level token, xapp-…, with connections:write)")
        if missing:
            mode = "Socket Mode" if self.mode == "socket" else "HTTP mode"
            raise SlackSetupError(
                f"{mode} needs {' and '.join(missing)}; "
                f"{'they are' if len(missing) > 1 else 'it is'} not set "
                '(or set [slack] mode = "off")'
            )
        await self.api.open()
        me = await self.whoami()
        if self.mode == "socket":
            self._socket = SocketModeHandler(self.app, self.api, self._app_token)
            try:
                async with asyncio.timeout(self._connect_timeout):
                    # Ask for the URL here first: a refused app token fails at once,
                    # instead of in slack_sdk's reconnect loop.
                    self._socket.client.wss_uri = await self._socket.client.issue_new_wss_url()
                    await self._socket.connect_async()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await self._socket.close_async()
                self._socket = None
                raise SlackSetupError(
                    "could not connect to Slack Socket Mode "
                    f"({error_code(exc) or type(exc).__name__}): "
                    "check SLACK_APP_TOKEN and that Socket Mode is enabled for the app"
                ) from None
        log.info("slack ready: mode=%s team=%s bot_user=%s", self.mode, me.team_id, me.user_id)

    @property
    def in_hand(self) -> int:
        """Events being handled now (accepted from Slack, reply not yet written)."""
        return len(self._tasks)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no event is in hand; False when `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                while self._tasks:
                    await asyncio.wait(set(self._tasks))
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Disconnect, let replies under way finish (up to `close_timeout`), then cancel."""
        self._closed = True
        if self._socket is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._close_timeout):
                    await self._socket.close_async()
            self._socket = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self._close_timeout)
        await self.api.close()

    # -- events -------------------------------------------------------------------------

    def accept(self, body: Mapping[str, Any]) -> asyncio.Task[Reply | None] | None:
        """Start handling an Events API body in a tracked task (returns at once)."""
        if self._closed:
            log.warning("slack event dropped while closing: event=%s", body.get("event_id"))
            return None
        return self._spawn(self.handle_event(body), name=f"slack-event-{body.get('event_id', '')}")

    def _spawn(
        self, coro: Coroutine[Any, Any, Reply | None], name: str
    ) -> asyncio.Task[Reply | None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def handle_event(self, body: Mapping[str, Any]) -> Reply | None:
        """Answer one event if it is addressed to Livia; None when ignored or a duplicate."""
        msg = parse_event(body)
        if msg is None:
            return None
        try:
            if (why := (await self.whoami()).foreign(body)) is not None:
                log.warning("slack event ignored: event=%s %s", msg.event_id, why)
                return None
            return await self._handle(msg)
        except Exception:
            log.exception(
                "slack event failed: event=%s channel=%s thread=%s",
                msg.event_id,
                msg.channel,
                msg.thread_root,
            )
            return None

    async def note_assistant_thread(self, body: Mapping[str, Any]) -> None:
        """A user opened an assistant thread with Livia: it is hers, nothing to read back."""
        thread = (body.get("event") or {}).get("assistant_thread") or {}
        channel, thread_ts = thread.get("channel_id"), thread.get("thread_ts")
        if (why := (await self.whoami()).foreign(body)) is not None:
            log.warning("slack event ignored: event=%s %s", body.get("event_id"), why)
            return
        if channel and thread_ts:
            team = body.get("team_id") or ""
            await self._memory.remember_thread(conversation_id(team, channel, thread_ts))
            log.info("slack assistant thread started: channel=%s thread=%s", channel, thread_ts)

    async def _handle(self, msg: SlackMessage) -> Reply | None:
        me = await self.whoami()
        # One conversation's events are taken in arrival order: the lock is requested
        # before anything can suspend, so a follow-up is only judged after the mention
        # before it was recorded and accepted.
        async with self._in_order.hold(msg.conversation_id, timeout=self._turn_timeout):
            taken = await self._take(msg, me)
        if taken is None:
            return None
        ticket, stream = taken
        try:
            reply = await ticket.wait(timeout=self._turn_timeout)
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except NotRunning:
            # Shutting down: the message stays in the inbox and is answered after the
            # restart (through `SlackDelivery`), so take the progress away instead.
            log.info("slack reply deferred to restart: event=%s", msg.event_id)
            await stream.abandon()
            return None
        except TimeoutError:
            # The turn goes on; the conversations layer hands its reply to `SlackDelivery`.
            log.warning(
                "slack reply late: event=%s channel=%s thread=%s",
                msg.event_id,
                msg.channel,
                msg.thread_root,
            )
            await stream.finish(LATE, error="late")
            return None
        await stream.finish(reply.text, reply.error)
        await self._upload_drawn(msg, reply.text)
        return reply

    async def _upload_drawn(self, msg: SlackMessage, text: str) -> None:
        """Post the images Livia drew for this reply (``/v1/files/generated/...``) into the
        thread: files.getUploadURLExternal, the bytes, files.completeUploadExternal."""
        for alt, name in DRAWN.findall(text):
            path = Spool(self.settings.files.spool_dir).path(name)
            if path is None:
                continue
            data = await asyncio.to_thread(path.read_bytes)
            try:
                await upload_file(
                    self.api,
                    data,
                    filename=path.name,
                    title=alt or "image",
                    channel=msg.channel,
                    thread_ts=msg.thread_root,
                    key=msg.user,
                )
            except Exception as exc:
                log.warning(
                    "slack image upload failed: channel=%s thread=%s error=%s",
                    msg.channel,
                    msg.thread_root,
                    error_code(exc) or type(exc).__name__,
                )
                await post_reply(
                    self.api,
                    msg.target,
                    "Sorry, I drew the image but couldn't upload it to Slack "
                    "(does the app have the files:write scope?).",
                )

    async def _take(
        self, msg: SlackMessage, me: SlackIdentity
    ) -> tuple[Ticket, ReplyStream] | None:
        """Decide, deduplicate, show progress and hand the message to the conversations."""

        def why_not(thread_known: bool) -> str | None:
            return ignore_reason(
                msg,
                bot_user_id=me.user_id,
                thread_known=thread_known,
                allowed_channels=self._allowed_channels,
                allowed_users=self._allowed_users,
            )

        # Cheap checks first: most channel traffic is not for Livia and costs no lookup.
        reason = why_not(True)
        known = False
        if reason is None and msg.in_thread:
            known = await self._memory.knows_thread(msg.conversation_id)
            reason = why_not(known)
        if reason is not None:
            log.debug(
                "slack event ignored: event=%s channel=%s thread=%s reason=%s",
                msg.event_id,
                msg.channel,
                msg.thread_root,
                reason,
            )
            return None
        if msg.event_id and not await self._memory.first_sighting(f"event:{msg.event_id}"):
            log.info("slack duplicate event ignored: event=%s", msg.event_id)
            return None
        if not await self._memory.first_sighting(f"msg:{msg.team}:{msg.message_id}"):
            # The same message as an `app_mention` and a `message` event, or a retry.
            log.info(
                "slack duplicate message ignored: event=%s message=%s", msg.event_id, msg.message_id
            )
            return None
        log.info(
            "slack message accepted: event=%s channel=%s thread=%s user=%s",
            msg.event_id,
            msg.channel,
            msg.thread_root,
            msg.user,
        )
        await self._memory.remember_thread(msg.conversation_id)
        stream = ReplyStream(
            self.api, msg.target, self.capabilities, min_interval=self._min_update_interval
        )
        await stream.begin()
        try:
            history = await self._thread_history(msg, me) if msg.in_thread and not known else []
            files = slack_refs(msg.files, self.settings.files) if msg.files else None
            incoming = to_incoming(msg, bot_user_id=me.user_id, history=history, files=files)
            ticket = await self._conversations.accept(incoming, on_event=stream.on_event)
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except Exception as exc:  # refused (busy, not running) or the store failed
            log.warning(
                "slack message refused: event=%s channel=%s thread=%s error=%s",
                msg.event_id,
                msg.channel,
                msg.thread_root,
                exc,
                exc_info=not isinstance(exc, ConversationError),
            )
            await stream.finish(_apology(exc), error=type(exc).__name__)
            return None
        if ticket.duplicate:
            log.info("slack reply already given: event=%s message=%s", msg.event_id, msg.message_id)
            await stream.abandon()
            return None
        return ticket, stream

    async def _thread_history(self, msg: SlackMessage, me: SlackIdentity) -> list[dict[str, str]]:
        """The thread so far, read once (a thread Livia has not seen), capped to a budget."""
        try:
            resp = await self.api.call(
                "conversations.replies",
                key=msg.user,
                deadline=5.0,
                channel=msg.channel,
                ts=msg.thread_root,
                limit=50,
            )
        except Exception as exc:
            log.warning(
                "slack thread history unavailable: channel=%s thread=%s error=%s",
                msg.channel,
                msg.thread_root,
                error_code(exc) or type(exc).__name__,
            )
            return []
        messages = resp.get("messages") or []
        return prior_history(
            messages,
            bot_user_id=me.user_id,
            bot_id=me.bot_id,
            before_ts=msg.ts,
            budget_tokens=self._history_tokens,
        )


#: Shown when the reply takes longer than the channel waits; the reply is posted when ready.
LATE = "This is taking longer than usual. I'll post the answer in this thread when it's ready."


def _apology(exc: BaseException) -> str:
    """What the user reads when the message could not be taken on."""
    if isinstance(exc, ConversationError):  # says what happened and when to retry
        return f"Sorry, I can't take this message right now: {exc}."
    return (
        "Sorry, something went wrong on my side and I couldn't take this message. "
        "Please try again in a minute."
    )
