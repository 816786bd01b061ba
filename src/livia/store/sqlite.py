"""The SQLite store: the durable inbox, the conversation history and idempotency marks.

One table holds every accepted message and, once answered, its reply: a row is the inbox
entry while its status is ``pending`` and a history entry afterwards. Writing the row is
what "accepted" means, so a message acknowledged to a channel survives a crash of the
process (kill -9) and is answered on the next start.

The database runs in WAL mode with ``synchronous=NORMAL`` (SQLite's recommended pairing):
a commit is in the WAL before it returns, so it survives any crash of Livia itself; only
an OS crash or power cut can lose the last moments' commits. ``FULL`` would add an fsync
to every accepted message and every reply (milliseconds each, serialised), which a burst
of messages would feel as latency.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import aiosqlite

from livia.conversations.types import IncomingMessage, Reply

log = logging.getLogger(__name__)

Status = Literal["pending", "answered", "failed"]

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    text TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending',
    reply TEXT,
    error TEXT,
    received_at REAL NOT NULL,
    answered_at REAL,
    UNIQUE (conversation_id, message_id)
);
CREATE INDEX IF NOT EXISTS messages_pending ON messages (status) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS marks (
    key TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
"""
_COLUMNS = (
    "seq, conversation_id, message_id, user_id, channel, text, meta, status, reply, error,"
    " received_at, answered_at"
)


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """One accepted message and, once answered, its reply."""

    seq: int  # arrival order (global, so also within a conversation)
    conversation_id: str
    message_id: str
    user_id: str
    channel: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    status: Status = "pending"
    reply: str | None = None
    error: str | None = None
    received_at: float = 0.0
    answered_at: float | None = None

    @property
    def done(self) -> bool:
        """True once a reply (or an apology) is stored."""
        return self.status != "pending"

    def message(self) -> IncomingMessage:
        """The message as the channel handed it in."""
        return IncomingMessage(
            conversation_id=self.conversation_id,
            user_id=self.user_id,
            text=self.text,
            message_id=self.message_id,
            channel=self.channel,
            meta=dict(self.meta),
        )

    def to_reply(self, *, duplicate: bool = False) -> Reply:
        """The stored reply (only meaningful once `done`)."""
        return Reply(
            conversation_id=self.conversation_id,
            message_id=self.message_id,
            text=self.reply or "",
            error=self.error,
            duplicate=duplicate,
        )


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative`` / ``sqlite:////absolute`` URL (or ``:memory:``).

    Raises `StoreError` for any other scheme.
    """
    prefix = "sqlite://"
    if not url.startswith(prefix):
        raise StoreError(
            f"unsupported [store] url {url!r}: use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    rest = url[len(prefix) :]
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise StoreError(f"[store] url {url!r}: expected three slashes, as in sqlite:///var/x.db")
    return rest[1:]


class Accepted(NamedTuple):
    """What `Store.accept` did with a message."""

    turn: StoredTurn
    #: False when the message_id was already there (a repeat).
    created: bool
    #: True when this is the first message of its conversation.
    first: bool


class Store:
    """Conversations' durable state in one SQLite file (see the module docstring).

    Open with ``await store.open()`` (or ``async with Store(url)``); every method after
    `close()` raises `StoreError`.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._db: aiosqlite.Connection | None = None

    @property
    def is_open(self) -> bool:
        """True between `open()` and `close()`."""
        return self._db is not None

    async def open(self) -> None:
        """Create the parent directory and the schema if needed; switch on WAL."""
        if self._db is not None:
            return
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the directory for {self.path}: {exc}") from None
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from None
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(_SCHEMA)
            await db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            await db.execute("DELETE FROM marks WHERE expires < ?", (time.time(),))
        except sqlite3.Error as exc:
            await db.close()
            raise StoreError(f"cannot use the store {self.path}: {exc}") from None
        self._db = db
        log.info("store open path=%s", self.path)

    async def close(self) -> None:
        """Close the database; safe to call twice."""
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[StoredTurn]:
        async with self._conn().execute(sql, params) as cur:
            rows = await cur.fetchall()
        return [_turn(row) for row in rows]

    async def accept(self, msg: IncomingMessage) -> Accepted:
        """Write `msg` to the inbox unless its message_id is already there.

        A new message costs one statement. For a repeat, `turn` is the message as it
        stands (pending, or done with its reply) and `created` is False.
        """
        async with self._conn().execute(
            "INSERT INTO messages (conversation_id, message_id, user_id, channel, text, meta,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (conversation_id, message_id) DO NOTHING"
            f" RETURNING {_COLUMNS}, NOT EXISTS (SELECT 1 FROM messages AS earlier"
            "  WHERE earlier.conversation_id = messages.conversation_id"
            "  AND earlier.seq < messages.seq)",
            (
                msg.conversation_id,
                msg.message_id,
                msg.user_id,
                msg.channel,
                msg.text,
                json.dumps(msg.meta),
                time.time(),
            ),
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            return Accepted(_turn(row[:-1]), created=True, first=bool(row[-1]))
        turn = await self.get(msg.conversation_id, msg.message_id)
        if turn is None:  # pragma: no cover - rows are never deleted
            raise StoreError(f"message {msg.message_id} vanished from the store")
        return Accepted(turn, created=False, first=False)

    async def complete(self, reply: Reply) -> None:
        """Store the reply to a pending message: ``failed`` when it carries an error."""
        status: Status = "failed" if reply.error else "answered"
        await self._conn().execute(
            "UPDATE messages SET status = ?, reply = ?, error = ?, answered_at = ?"
            " WHERE conversation_id = ? AND message_id = ?",
            (status, reply.text, reply.error, time.time(), reply.conversation_id, reply.message_id),
        )

    async def get(self, conversation_id: str, message_id: str) -> StoredTurn | None:
        """One turn by its ids, or None."""
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = ? AND message_id = ?",
            (conversation_id, message_id),
        )
        return rows[0] if rows else None

    async def pending(self) -> list[StoredTurn]:
        """Every accepted message without a reply yet, in arrival order."""
        return await self._fetch(
            f"SELECT {_COLUMNS} FROM messages WHERE status = 'pending' ORDER BY seq"
        )

    async def turns(
        self, conversation_id: str, *, before_seq: int | None = None, limit: int = 1000
    ) -> list[StoredTurn]:
        """The last `limit` turns of a conversation (before `before_seq`), oldest first."""
        bound = before_seq if before_seq is not None else 2**62
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = ? AND seq < ?"
            " ORDER BY seq DESC LIMIT ?",
            (conversation_id, bound, limit),
        )
        rows.reverse()
        return rows

    async def count_conversations(self) -> int:
        """How many distinct conversations the store holds."""
        async with self._conn().execute(
            "SELECT COUNT(DISTINCT conversation_id) FROM messages"
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def seen(self, key: str, *, ttl: float = 86_400.0) -> bool:
        """Mark `key` as seen for `ttl` seconds; True when it already was (a repeat).

        Atomic, so two deliveries of one event (Slack retries) never both see False.
        """
        now = time.time()
        async with self._conn().execute(
            "INSERT INTO marks (key, expires) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET expires = excluded.expires WHERE marks.expires < ?",
            (key, now + ttl, now),
        ) as cur:
            return cur.rowcount != 1


def _turn(row: sqlite3.Row | tuple[Any, ...]) -> StoredTurn:
    """A row of `_COLUMNS` as a `StoredTurn`."""
    (seq, cid, mid, uid, channel, text, meta, status, reply, error, received, answered) = row
    return StoredTurn(
        seq=seq,
        conversation_id=cid,
        message_id=mid,
        user_id=uid,
        channel=channel,
        text=text,
        meta=json.loads(meta or "{}"),
        status=status,
        reply=reply,
        error=error,
        received_at=received,
        answered_at=answered,
    )
