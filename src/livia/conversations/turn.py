"""One turn: ask the responder, stream its events to the listeners, always end with a reply."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Sequence
from typing import Any

from livia.agent.events import Status, TextDelta, TurnDone, TurnEvent
from livia.concurrency.errors import CapacityExhausted
from livia.concurrency.progress import progress_sink
from livia.conversations.types import ChatMessage, EventSink, IncomingMessage, Reply, Responder
from livia.logs import logging_context

log = logging.getLogger(__name__)

#: Seconds a listener may take to take one event before it is dropped (a stalled client).
SINK_TIMEOUT = 5.0


class Listeners:
    """The event sinks of one turn; a sink that fails or stalls is dropped, the turn goes on."""

    def __init__(self, msg: IncomingMessage, timeout: float = SINK_TIMEOUT) -> None:
        self._msg = msg
        self._timeout = timeout
        self._sinks: list[EventSink] = []

    def add(self, sink: EventSink) -> None:
        """Send this turn's next events to `sink` too."""
        self._sinks.append(sink)

    def __bool__(self) -> bool:
        """Whether anyone listens (nobody: the turn's text may come whole, at its end)."""
        return bool(self._sinks)

    async def emit(self, event: TurnEvent) -> None:
        """Hand `event` to every sink, in order, each within the timeout; then let the loop
        run once, so the sinks' readers (an event stream's sender) keep pace with a burst
        of events instead of meeting them all at once in an overflowing buffer."""
        if not self._sinks:
            return
        for sink in list(self._sinks):
            try:
                async with asyncio.timeout(self._timeout):  # no task per event, as wait_for
                    await sink(event)
            except Exception as exc:  # a listener's failure is never the turn's failure
                log.warning(
                    "dropping event listener conversation_id=%s message_id=%s: %s",
                    self._msg.conversation_id,
                    self._msg.message_id,
                    type(exc).__name__,
                )
                self._sinks.remove(sink)
        await asyncio.sleep(0)


async def run_turn(
    responder: Responder,
    history: Sequence[ChatMessage],
    msg: IncomingMessage,
    listeners: Listeners,
    *,
    timeout: float,
) -> Reply:
    """`_run_turn`, with every log line written meanwhile naming the message."""
    with logging_context(conversation_id=msg.conversation_id, message_id=msg.message_id):
        return await _run_turn(responder, history, msg, listeners, timeout=timeout)


async def _run_turn(
    responder: Responder,
    history: Sequence[ChatMessage],
    msg: IncomingMessage,
    listeners: Listeners,
    *,
    timeout: float,
) -> Reply:
    """Answer `msg`; never raises except on cancellation: a failure becomes an apology.

    Every event goes to `listeners` as it happens, and the last is always a `TurnDone`
    (the responder's, or one this adds). The reply text is the `TurnDone` text, or the
    concatenated deltas when the responder ends without one.
    """
    parts: list[str] = []
    done: TurnDone | None = None  # the responder's own
    reports: set[asyncio.Task[None]] = set()

    def on_progress(info: dict[str, Any]) -> None:
        # The manager reports from inside a call: hand the event on without waiting.
        event = Status(
            state=str(info.get("state", "")),
            upstream=str(info.get("upstream", "")),
            attempt=int(info.get("attempt") or 1),
            retry_in=info.get("retry_in"),
            reason=info.get("reason"),
        )
        task = asyncio.get_running_loop().create_task(listeners.emit(event))
        reports.add(task)
        task.add_done_callback(reports.discard)

    token = progress_sink.set(on_progress)
    try:
        async with asyncio.timeout(timeout):
            files = msg.meta.get("files") if msg.meta else None
            extra: dict[str, Any] = {"files": files} if files else {}  # see `Responder`
            if not listeners and _takes_stream(type(responder)):
                extra["stream"] = False  # nobody reads the text as it comes
            async for event in responder.respond(history, msg.text, key=msg.user_id, **extra):
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, TurnDone):
                    done = event
                await listeners.emit(event)
    except TimeoutError:
        done = await _close(listeners, _apology("timeout", f"it took over {timeout:.0f} s"))
    except CapacityExhausted as exc:
        done = await _close(listeners, _apology("capacity_exhausted", str(exc)))
    except Exception as exc:
        log.exception(
            "turn failed conversation_id=%s message_id=%s", msg.conversation_id, msg.message_id
        )
        why = f"an internal error ({type(exc).__name__})"
        done = await _close(listeners, _apology("internal_error", why))
    finally:
        progress_sink.reset(token)
    if reports:  # progress said before the end comes before it
        await asyncio.wait(reports, timeout=1.0)
    if done is None:
        done = await _close(listeners, TurnDone(text="".join(parts)))
    return Reply(msg.conversation_id, msg.message_id, done.text, error=done.error)


@functools.cache
def _takes_stream(kind: type[Responder]) -> bool:
    """Whether a responder class's `respond` takes the `stream` keyword (see `Responder`)."""
    try:
        parameters = inspect.signature(kind.respond).parameters.values()
    except (AttributeError, TypeError, ValueError):
        return False
    return any(p.name == "stream" or p.kind is p.VAR_KEYWORD for p in parameters)


async def _close(listeners: Listeners, done: TurnDone) -> TurnDone:
    """Emit the closing event the responder did not send."""
    await listeners.emit(done)
    return done


def _apology(kind: str, why: str) -> TurnDone:
    return TurnDone(f"Sorry, I could not answer this message: {why}. Please try again.", kind)
