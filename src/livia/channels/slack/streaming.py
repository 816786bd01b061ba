"""Showing one reply in a Slack thread while the model writes it.

Progress first: the assistant thread status (`assistant.threads.setStatus`, "is
thinking…") where Slack allows it, else a "Thinking…" placeholder message. Then the
text: streamed with `chat.startStream` / `chat.appendStream` / `chat.stopStream` (which
render Markdown themselves), or, where those are not available, written into the
placeholder with `chat.update` (converted to mrkdwn) at most once per `min_interval`.

`on_event` never waits on Slack: it only buffers and wakes a pump task, so a slow or
rate-limited Slack never holds up the model (nor the model's concurrency slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from slack_sdk.errors import SlackApiError

from livia.agent.events import TextDelta, ToolFinished, ToolStarted, TurnEvent
from livia.channels.slack.api import SlackApi, error_code
from livia.channels.slack.handling import Target
from livia.channels.slack.mrkdwn import split_text, strip_own_images, to_mrkdwn

__all__ = ["UNSUPPORTED_ERRORS", "Capabilities", "ReplyStream", "post_reply"]

log = logging.getLogger(__name__)

#: Errors meaning "this method cannot be used here", remembered so it is not tried again.
UNSUPPORTED_ERRORS = frozenset(
    {
        "unknown_method",
        "not_allowed",
        "not_allowed_token_type",
        "missing_scope",
        "method_not_supported_for_channel_type",
        "feature_not_enabled",
        "channel_type_not_supported",
        "not_implemented",
    }
)
#: Most characters of one message written with `text` (Slack truncates far beyond this).
MESSAGE_LIMIT = 3500
THINKING = "_Thinking…_"
NO_ANSWER = "I have no answer to that, sorry."


@dataclass(slots=True)
class Capabilities:
    """What the workspace turned out to support, learnt from errors (one per channel object).

    A channel id in `no_status` / `no_stream` means "don't try there again"; "*" means
    "nowhere" (e.g. `unknown_method`: this Slack has no such method at all).
    """

    no_status: set[str] = field(default_factory=set)
    no_stream: set[str] = field(default_factory=set)

    def status_ok(self, channel: str) -> bool:
        return "*" not in self.no_status and channel not in self.no_status

    def stream_ok(self, channel: str) -> bool:
        return "*" not in self.no_stream and channel not in self.no_stream

    def learn(self, which: set[str], channel: str, exc: BaseException) -> None:
        code = error_code(exc)
        if code == "unknown_method":
            which.add("*")
        elif code in UNSUPPORTED_ERRORS:
            which.add(channel)


async def post_reply(
    api: SlackApi, target: Target, markdown: str, *, deadline: float | None = 60.0
) -> list[str]:
    """Post `markdown` as mrkdwn in the target thread (split when long); the message ts list."""
    out: list[str] = []
    for part in split_text(to_mrkdwn(markdown or NO_ANSWER), MESSAGE_LIMIT):
        resp = await api.call(
            "chat.postMessage",
            key=target.user,
            deadline=deadline,
            channel=target.channel,
            thread_ts=target.thread_ts,
            text=part,
        )
        out.append(str(resp.get("ts") or ""))
    return out


class ReplyStream:
    """Renders one turn's events into the target thread; `begin`, `on_event`*, `finish`.

    Slack calls for progress (status, appends, interim updates) wait at most
    `progress_deadline` seconds for capacity and are skipped otherwise (the text stays
    buffered for the next flush); the final write waits up to `final_deadline`, and
    `finish` as a whole is bounded by `finish_timeout`.
    """

    def __init__(
        self,
        api: SlackApi,
        target: Target,
        caps: Capabilities,
        *,
        min_interval: float = 1.0,
        progress_deadline: float = 2.0,
        final_deadline: float = 60.0,
        finish_timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._target = target
        self._caps = caps
        self._min_interval = min_interval
        self._progress_deadline = progress_deadline
        self._final_deadline = final_deadline
        self._finish_timeout = finish_timeout
        self._clock = clock
        self._text = ""  # Markdown received so far
        self._sent = 0  # characters of _text already streamed
        self._shown = ""  # what the placeholder shows (update mode)
        self._mode: Literal["stream", "update"] = "update"
        self._ts: str | None = None  # the reply message
        self._broken = False  # a stream call failed after the stream started
        self._status_on = False
        self._tool: str | None = None
        self._tool_shown: str | None = None
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._final: tuple[str, str | None] = ("", None)
        self._task: asyncio.Task[None] | None = None

    @property
    def ts(self) -> str | None:
        """The ts of the reply message, once there is one."""
        return self._ts

    @property
    def mode(self) -> str:
        return self._mode

    def _log(self, what: str, exc: BaseException) -> None:
        t = self._target
        log.warning(
            "slack reply %s failed: channel=%s thread=%s error=%s",
            what,
            t.channel,
            t.thread_ts,
            error_code(exc) or type(exc).__name__,
        )

    async def _call(self, method: str, *, final: bool = False, **args: object) -> dict[str, object]:
        deadline = self._final_deadline if final else self._progress_deadline
        resp = await self._api.call(method, key=self._target.user, deadline=deadline, **args)
        return dict(resp.data) if isinstance(resp.data, dict) else {}

    async def begin(self) -> None:
        """Show progress at once and start the pump; never raises on Slack errors."""
        t = self._target
        if self._caps.status_ok(t.channel):
            try:
                await self._call(
                    "assistant.threads.setStatus",
                    channel_id=t.channel,
                    thread_ts=t.thread_ts,
                    status="is thinking…",
                )
                self._status_on = True
            except SlackApiError as exc:
                self._caps.learn(self._caps.no_status, t.channel, exc)
                log.info(
                    "slack status unavailable: channel=%s error=%s", t.channel, error_code(exc)
                )
            except Exception as exc:
                self._log("status", exc)
        if not self._status_on:
            try:
                resp = await self._call(
                    "chat.postMessage", channel=t.channel, thread_ts=t.thread_ts, text=THINKING
                )
                self._ts = str(resp.get("ts") or "") or None
                self._shown = THINKING
            except Exception as exc:
                self._log("placeholder", exc)
        # With a placeholder on screen, edit it; with a status, stream a new message.
        self._mode = "stream" if self._ts is None and self._caps.stream_ok(t.channel) else "update"
        self._task = asyncio.create_task(
            self._pump(), name=f"slack-reply-{t.channel}-{t.thread_ts}"
        )

    async def on_event(self, event: TurnEvent) -> None:
        """An `EventSink`: buffer the event and wake the pump (returns at once)."""
        if isinstance(event, TextDelta):
            self._text += strip_own_images(event.text)
        elif isinstance(event, ToolStarted):
            self._tool = event.tool
        elif isinstance(event, ToolFinished):
            self._tool = None
        else:
            return
        self._wake.set()

    async def finish(self, text: str, error: str | None = None) -> None:
        """Write the final reply (`text` is the whole reply, or the apology when `error`)."""
        self._final = (strip_own_images(text) or NO_ANSWER, error)
        self._done.set()
        self._wake.set()
        if self._task is None:
            await self.begin()
        assert self._task is not None
        try:
            async with asyncio.timeout(self._finish_timeout):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            log.error(
                "slack reply not written within %.0f s: channel=%s thread=%s",
                self._finish_timeout,
                self._target.channel,
                self._target.thread_ts,
            )

    def cancel(self) -> None:
        """Stop the pump at once, without a Slack call (the handler itself is cancelled)."""
        if self._task is not None:
            self._task.cancel()

    async def abandon(self) -> None:
        """Stop without a reply (the message was a duplicate): remove the progress shown."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        t = self._target
        with contextlib.suppress(Exception):
            if self._status_on:
                await self._call(
                    "assistant.threads.setStatus",
                    channel_id=t.channel,
                    thread_ts=t.thread_ts,
                    status="",
                )
            elif self._ts and self._shown == THINKING:
                await self._call("chat.delete", channel=t.channel, ts=self._ts)

    async def _pump(self) -> None:
        last = float("-inf")
        while not self._done.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self._done.is_set():
                break
            pause = last + self._min_interval - self._clock()
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._done.wait()
                if self._done.is_set():
                    break
            last = self._clock()
            await self._flush_progress()
        await self._flush_final()

    async def _flush_progress(self) -> None:
        t = self._target
        try:
            if self._tool != self._tool_shown and self._tool and self._status_on and not self._text:
                await self._call(
                    "assistant.threads.setStatus",
                    channel_id=t.channel,
                    thread_ts=t.thread_ts,
                    status=f"is using {self._tool}…",
                )
                self._tool_shown = self._tool
            if self._mode == "stream":
                await self._stream_more()
            else:
                await self._update_progress()
        except SlackApiError as exc:
            self._log("progress", exc)
        except Exception as exc:  # CapacityExhausted: skip this flush, keep the text
            log.debug("slack progress skipped: %s", exc)

    async def _stream_more(self) -> None:
        t = self._target
        pending = self._text[self._sent :]
        if not pending or self._broken:
            return
        if self._ts is None:
            try:
                resp = await self._call(
                    "chat.startStream",
                    channel=t.channel,
                    thread_ts=t.thread_ts,
                    markdown_text=pending,
                    recipient_user_id=t.user,
                    recipient_team_id=t.team or None,
                )
            except SlackApiError as exc:
                self._caps.learn(self._caps.no_stream, t.channel, exc)
                log.info(
                    "slack streaming unavailable: channel=%s error=%s", t.channel, error_code(exc)
                )
                self._mode = "update"
                await self._update_progress()
                return
            self._ts = str(resp.get("ts") or "") or None
        else:
            try:
                await self._call(
                    "chat.appendStream", channel=t.channel, ts=self._ts, markdown_text=pending
                )
            except SlackApiError as exc:
                self._broken = True
                self._log("chat.appendStream", exc)
                return
        self._sent += len(pending)

    async def _update_progress(self) -> None:
        t = self._target
        if self._text:
            shown = to_mrkdwn(self._text)
            if len(shown) > MESSAGE_LIMIT:
                shown = shown[: MESSAGE_LIMIT - 2] + " …"
        elif self._tool:
            shown = f"_Thinking… (using `{self._tool}`)_"
        else:
            return
        if shown == self._shown:
            return
        if self._ts is None:
            resp = await self._call(
                "chat.postMessage", channel=t.channel, thread_ts=t.thread_ts, text=shown
            )
            self._ts = str(resp.get("ts") or "") or None
        else:
            await self._call("chat.update", channel=t.channel, ts=self._ts, text=shown)
        self._shown = shown

    async def _flush_final(self) -> None:
        text, error = self._final
        t = self._target
        try:
            if self._mode == "stream" and self._ts is not None:
                await self._stop_stream(text, error)
            else:
                await self._write_final(text)
        except Exception as exc:
            self._log("final write", exc)
            if self._status_on:
                with contextlib.suppress(Exception):
                    await self._call(
                        "assistant.threads.setStatus",
                        channel_id=t.channel,
                        thread_ts=t.thread_ts,
                        status="",
                    )
            raise
        log.info(
            "slack replied: channel=%s thread=%s ts=%s mode=%s error=%s",
            t.channel,
            t.thread_ts,
            self._ts,
            self._mode,
            error or "-",
        )

    async def _stop_stream(self, text: str, error: str | None) -> None:
        t = self._target
        streamed = self._text[: self._sent]
        follows = text.startswith(streamed) and not self._broken
        rest = text[len(streamed) :] if follows else ""
        assert self._ts is not None
        try:
            await self._call(
                "chat.stopStream",
                final=True,
                channel=t.channel,
                ts=self._ts,
                markdown_text=rest or None,
            )
        except SlackApiError as exc:
            self._log("chat.stopStream", exc)
            follows = False
        if not follows:
            # The reply is not what was streamed (an apology after a failure, a broken
            # stream): replace the message with the whole final text.
            parts = split_text(to_mrkdwn(text), MESSAGE_LIMIT)
            if not await self._update_final(parts[0]):
                await post_reply(self._api, t, text, deadline=self._final_deadline)
                return
            for part in parts[1:]:
                await self._post_final(part)

    async def _write_final(self, text: str) -> None:
        parts = split_text(to_mrkdwn(text), MESSAGE_LIMIT)
        if self._ts is None or not await self._update_final(parts[0]):
            resp = await self._post_final(parts[0])
            self._ts = str(resp.get("ts") or "") or None
        for part in parts[1:]:
            await self._post_final(part)

    async def _update_final(self, text: str) -> bool:
        """Replace the reply message's text; False (logged) if Slack refuses."""
        assert self._ts is not None
        try:
            await self._call(
                "chat.update", final=True, channel=self._target.channel, ts=self._ts, text=text
            )
        except SlackApiError as exc:
            self._log("chat.update", exc)
            return False
        return True

    async def _post_final(self, text: str) -> dict[str, object]:
        """Post `text` (mrkdwn) in the target thread, as part of the final reply."""
        t = self._target
        return await self._call(
            "chat.postMessage", final=True, channel=t.channel, thread_ts=t.thread_ts, text=text
        )
