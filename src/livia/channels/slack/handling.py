"""Plain functions that decide what to do with a Slack event: testable without Slack.

The flow for one `app_mention` or `message` event is
`parse_event` -> `ignore_reason` (bots, edits, joins, allow-lists, unaddressed threads)
-> `to_incoming` (the conversations layer's `IncomingMessage`), with `prior_history`
turning a thread Livia has not seen (from `conversations.replies`) into earlier turns.
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from livia.conversations.types import IncomingMessage

__all__ = [
    "ACCEPTED_SUBTYPES",
    "SlackMessage",
    "Target",
    "clean_text",
    "conversation_id",
    "estimate_tokens",
    "ignore_reason",
    "parse_event",
    "prior_history",
    "to_incoming",
]

#: Message subtypes that are a person saying something; every other subtype (edits,
#: deletions, joins, topic changes, bot messages...) is ignored.
ACCEPTED_SUBTYPES: frozenset[str | None] = frozenset({None, "file_share", "thread_broadcast"})

_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


def conversation_id(team: str, channel: str, thread_ts: str) -> str:
    """One Slack thread is one conversation."""
    return f"slack:{team}:{channel}:{thread_ts}"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a reply goes: a thread in a channel, on behalf of one user."""

    team: str
    channel: str
    thread_ts: str
    user: str


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """A person's message from an `app_mention` or `message` event, with its envelope ids."""

    kind: Literal["app_mention", "message"]
    team: str
    channel: str
    channel_type: str  # "channel" | "group" | "im" | "mpim" | "" (app_mention carries none)
    user: str
    text: str
    ts: str
    thread_ts: str | None
    event_id: str
    client_msg_id: str | None
    subtype: str | None = None
    bot_id: str | None = None
    #: The message's file shares, as Slack sent them (name, mimetype, size, url_private...).
    files: tuple[Mapping[str, Any], ...] = ()

    @property
    def thread_root(self) -> str:
        """The ts of the thread's parent (the message itself when it starts the thread)."""
        return self.thread_ts or self.ts

    @property
    def in_thread(self) -> bool:
        """True for a reply inside an existing thread."""
        return bool(self.thread_ts) and self.thread_ts != self.ts

    @property
    def is_dm(self) -> bool:
        return self.channel_type == "im" or (not self.channel_type and self.channel.startswith("D"))

    @property
    def conversation_id(self) -> str:
        return conversation_id(self.team, self.channel, self.thread_root)

    @property
    def message_id(self) -> str:
        """Stable across the `app_mention` and `message` events of one message, and retries."""
        return self.client_msg_id or f"{self.channel}:{self.ts}"

    @property
    def target(self) -> Target:
        return Target(
            team=self.team, channel=self.channel, thread_ts=self.thread_root, user=self.user
        )

    def mentions(self, user_id: str) -> bool:
        return any(m == user_id for m in _MENTION.findall(self.text))


def parse_event(body: Mapping[str, Any]) -> SlackMessage | None:
    """Read an Events API callback body; None when it is not a message-like event."""
    event = body.get("event")
    if not isinstance(event, Mapping):
        return None
    kind = event.get("type")
    if kind not in ("app_mention", "message"):
        return None
    # Edits carry the new message inside; they are ignored, but parse the outer one.
    return SlackMessage(
        kind=kind,
        team=str(body.get("team_id") or event.get("team") or ""),
        channel=str(event.get("channel") or ""),
        channel_type=str(event.get("channel_type") or ""),
        user=str(event.get("user") or ""),
        text=str(event.get("text") or ""),
        ts=str(event.get("ts") or ""),
        thread_ts=str(event["thread_ts"]) if event.get("thread_ts") else None,
        event_id=str(body.get("event_id") or ""),
        client_msg_id=str(event["client_msg_id"]) if event.get("client_msg_id") else None,
        subtype=str(event["subtype"]) if event.get("subtype") else None,
        bot_id=str(event["bot_id"]) if event.get("bot_id") else None,
        files=tuple(f for f in event.get("files") or () if isinstance(f, Mapping)),
    )


def ignore_reason(
    msg: SlackMessage,
    *,
    bot_user_id: str,
    thread_known: bool,
    allowed_channels: Collection[str] = (),
    allowed_users: Collection[str] = (),
) -> str | None:
    """Why Livia must not answer `msg`, or None when she should.

    Checked before any model call: bots (Livia included), edits/deletions/joins and other
    subtypes, the allow-lists (empty = everyone; DMs are governed by `allowed_users`),
    and channel messages that neither mention Livia nor belong to a thread she is in.
    """
    if msg.bot_id or msg.subtype == "bot_message":
        return "bot message"
    if msg.subtype not in ACCEPTED_SUBTYPES:
        return f"subtype {msg.subtype}"
    if not msg.user or not msg.ts or not msg.channel:
        return "no user, ts or channel"
    if msg.user == bot_user_id:
        return "own message"
    if allowed_users and msg.user not in allowed_users:
        return "user not allowed"
    if allowed_channels and not msg.is_dm and msg.channel not in allowed_channels:
        return "channel not allowed"
    if msg.is_dm or msg.kind == "app_mention" or msg.mentions(bot_user_id):
        return None
    if msg.in_thread and thread_known:
        return None
    return "not addressed to Livia"


def clean_text(text: str, bot_user_id: str) -> str:
    """The text the model sees: Livia's own mention removed, Slack escapes undone."""
    text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text) if bot_user_id else text
    return html.unescape(re.sub(r"[ \t]{2,}", " ", text)).strip()


def to_incoming(
    msg: SlackMessage,
    *,
    bot_user_id: str,
    history: list[dict[str, str]] | None = None,
    files: list[dict[str, Any]] | None = None,
) -> IncomingMessage:
    """The conversations layer's view of `msg`; `meta` holds what delivery needs later,
    and `files` the references of its file shares (`livia.files.slack_refs`)."""
    meta: dict[str, Any] = {
        "team": msg.team,
        "channel": msg.channel,
        "channel_type": msg.channel_type,
        "thread_ts": msg.thread_root,
        "ts": msg.ts,
        "user": msg.user,
        "event_id": msg.event_id,
    }
    if history:
        meta["prior_history"] = history
    if files:
        meta["files"] = files
    empty = f"(sent {len(files)} file{'s' if len(files) != 1 else ''})" if files else ""
    return IncomingMessage(
        conversation_id=msg.conversation_id,
        user_id=msg.user,
        text=clean_text(msg.text, bot_user_id) or empty or "(empty message)",
        message_id=msg.message_id,
        channel="slack",
        meta=meta,
    )


def estimate_tokens(text: str) -> int:
    """A cheap upper-ish estimate (~4 characters a token, plus per-message overhead)."""
    return len(text) // 4 + 4


def prior_history(
    messages: Iterable[Mapping[str, Any]],
    *,
    bot_user_id: str,
    bot_id: str = "",
    before_ts: str,
    budget_tokens: int,
) -> list[dict[str, str]]:
    """Turn a thread read with `conversations.replies` into earlier turns for the model.

    Messages at or after `before_ts` (the one being answered) are dropped. People's
    messages become `user` turns prefixed with who wrote them; Livia's become
    `assistant` turns; other bots' messages are kept as context under their name. The
    thread's first message is always kept, then the newest that fit in `budget_tokens`.
    """
    turns: list[dict[str, str]] = []
    for m in messages:
        ts = str(m.get("ts") or "")
        if not ts or _ts_key(ts) >= _ts_key(before_ts):
            continue
        if m.get("subtype") not in ACCEPTED_SUBTYPES and m.get("subtype") != "bot_message":
            continue
        text = clean_text(str(m.get("text") or ""), bot_user_id)
        if not text:
            continue
        if m.get("user") == bot_user_id or (bot_id and m.get("bot_id") == bot_id):
            turns.append({"role": "assistant", "content": text})
        else:
            who = m.get("user") or m.get("username") or m.get("bot_id") or "someone"
            turns.append({"role": "user", "content": f"<@{who}>: {text}"})
    if not turns:
        return []
    first, rest = turns[0], turns[1:]
    budget = budget_tokens - estimate_tokens(first["content"])
    if budget < 0:
        return []
    kept: list[dict[str, str]] = []
    for turn in reversed(rest):
        cost = estimate_tokens(turn["content"])
        if cost > budget:
            break
        kept.append(turn)
        budget -= cost
    return [first, *reversed(kept)]


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    try:
        return int(seconds), int(micros or 0)
    except ValueError:
        return 0, 0
