"""The store: the durable inbox, conversation history and idempotency marks, for one process
or many (SQLite for one host, PostgreSQL for several), over SQLAlchemy Core async.

A row of ``messages`` is the inbox entry while its status is ``pending`` and a history
entry afterwards; writing it is what "accepted" means, so an acknowledged message
survives a crash. Several processes share one store safely:

- **Claims.** A pending message is answered by the process that claimed it (``owner``).
  Only the oldest pending message of a conversation can be claimed, so a conversation is
  answered one message at a time, in arrival order, whichever process holds it; and each
  message sees every earlier question *and* answer.
- **Leases.** A claim holds while its owner's ``instances`` row keeps a fresh heartbeat
  (``heartbeat_at + lease`` ahead of the database's clock). A dead owner's messages become
  claimable again; a live owner's never are. Writing a reply succeeds only for the
  current owner (fencing), so a stalled process cannot overwrite a reply.
- **Order of intake.** Accepting a message locks its conversation's row, so messages of
  one conversation get increasing ``seq`` in commit order, on every backend.
- **Delivery.** The process that accepted a message (``accepted_by``) delivers its reply
  to the channel; when it is gone, another claims the delivery, and ``delivered`` records
  that it happened.

Time for leases comes from the database's clock, never from a host's. SQLite runs in WAL
mode with ``synchronous=NORMAL`` and ``BEGIN IMMEDIATE`` for writes (one writer at a time,
in this process and across processes on the same file).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from livia.conversations.types import IncomingMessage, Reply
from livia.store import migrate
from livia.store.lanes import Lanes
from livia.store.urls import StoreError, parse_store_url

log = logging.getLogger(__name__)

#: Statements parsed once: building a `text()` re-scans its SQL for parameters each time.
_sql = functools.lru_cache(maxsize=512)(text)
#: What a failed database call raises: SQLAlchemy's errors, the driver's own (statements
#: sent to asyncpg directly) and the socket's.
_DB_ERRORS = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")

Status = Literal["pending", "answered", "failed"]

_COLUMNS = (
    "seq, conversation_id, message_id, user_id, channel, text, meta, status, reply, error,"
    " received_at, answered_at, owner, accepted_by, delivered, attempts, answered_by"
)
#: The database's clock, in epoch seconds.
_NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
}
#: Longest a title taken from a conversation's first message.
_TITLE_CHARS = 80


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
    #: The process answering it now (a claim), or None.
    owner: str | None = None
    #: The process that accepted it from its channel (it delivers the reply).
    accepted_by: str | None = None
    delivered: bool = False
    #: How many times it was claimed (more than one: taken over from a dead process).
    attempts: int = 0
    #: The instance id of the process that answered it.
    answered_by: str | None = None

    @property
    def done(self) -> bool:
        """True once a reply (or an apology) is stored."""
        return self.status != "pending"

    @property
    def key(self) -> tuple[str, str]:
        """(conversation_id, message_id): the message's identity."""
        return (self.conversation_id, self.message_id)

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


class Accepted(NamedTuple):
    """What `Store.accept` did with a message."""

    turn: StoredTurn
    #: False when the message_id was already there (a repeat).
    created: bool
    #: True when this is the first message of its conversation.
    first: bool


@dataclass(frozen=True, slots=True)
class Completion:
    """What `Store.complete` did: whether the reply was stored, and what comes next."""

    #: False when this process no longer owned the message (another took it over).
    stored: bool
    #: The answered row (None when not stored).
    turn: StoredTurn | None = None
    #: True when the process that accepted the message is alive (it delivers the reply).
    acceptor_alive: bool = False
    #: The conversation's next message, now claimed by this process, if any.
    next: StoredTurn | None = None


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """One conversation as listed: who started it, its title and size."""

    conversation_id: str
    user_id: str
    channel: str
    title: str
    created_at: float
    updated_at: float
    messages: int


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """A store as `livia check` and `livia db` describe it."""

    display: str
    #: The schema version in the database (None: empty, never migrated).
    current: str | None
    #: The newest version this Livia knows.
    head: str
    #: Processes with a fresh heartbeat.
    live_processes: int

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@dataclass(frozen=True, slots=True)
class Instance:
    """A live Livia process as the store sees it."""

    owner: str
    instance_id: str
    pid: int
    started_at: float
    heartbeat_age: float
    snapshot: dict[str, Any]


def _host_key() -> str:
    """Hostname, boot and pid namespace: processes with the same key can see each other's pids."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "|".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


class Store:
    """Conversations' durable state, shared by every process on the same database.

    Open with ``await store.open()`` (or ``async with Store(url)``): it migrates the schema
    and registers this process (`owner`). `close()` gives back this process's claims so
    others take them at once. Every method after `close()` raises `StoreError`.
    """

    def __init__(
        self,
        url: str,
        *,
        lease: float = 10.0,
        instance_id: str = "",
        same_host_reaping: bool = True,
    ) -> None:
        self.url = url
        self._parsed = parse_store_url(url)
        self.backend = self._parsed.backend
        #: The SQLite file ("" on PostgreSQL).
        self.path = self._parsed.path
        #: Where the data lives, safe to print.
        self.display = self._parsed.path or self._parsed.display
        self.lease = lease
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        #: This process's identity in claims: unique per start, even with a fixed instance_id.
        self.owner = f"{self.instance_id}/{uuid.uuid4().hex[:10]}"
        self._host_key = _host_key()
        #: Judge processes on this host by their pid too (off: by heartbeats alone, as
        #: for other hosts; the takeover benchmark measures that path).
        self._same_host_reaping = same_host_reaping
        self._engine: AsyncEngine | None = None
        self._writes: Lanes | None = None
        self._reads: Lanes | None = None
        self._beats: Lanes | None = None
        self._statements: Lanes | None = None
        self._now = _NOW[self.backend]
        self._memory = self.path == ":memory:"

    # -- life cycle ---------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True between `open()` and `close()`."""
        return self._engine is not None

    async def open(self, *, migrate_schema: bool = True) -> None:
        """Connect, bring the schema up to date and register this process."""
        if self._engine is not None:
            return
        if self.backend == "sqlite" and not self._memory:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the directory for {self.path}: {exc}") from None
        engine = self._create_engine()
        try:
            if migrate_schema:
                await migrate.upgrade(engine.execution_options(livia_write=True))
            else:
                current = await migrate.current_revision(engine)
                if current != migrate.head_revision():
                    raise StoreError(
                        f"the store {self.display} is at schema {current or 'none'}, "
                        f"not {migrate.head_revision()}: run `livia db upgrade`"
                    )
        except StoreError:
            await engine.dispose()
            raise
        except _DB_ERRORS as exc:
            await engine.dispose()
            raise StoreError(f"cannot use the store {self.display}: {_reason(exc)}") from None
        self._engine = engine
        if self._memory:  # one database per connection: everything shares the only one
            self._writes = self._reads = self._beats = Lanes(engine, 1, livia_write=True)
        else:
            # SQLite takes one writer at a time: writers queue here, not in its busy loop.
            writers = 8 if self.backend == "postgresql" else 1
            self._writes = Lanes(engine, writers, livia_write=True)
            # PostgreSQL: the hot path's writes are single statements, sent without a
            # BEGIN/COMMIT round trip each.
            self._statements = (
                Lanes(engine, writers, isolation_level="AUTOCOMMIT")
                if self.backend == "postgresql"
                else None
            )
            self._reads = Lanes(engine, 4, isolation_level="AUTOCOMMIT")
            # Its own connection: a heartbeat never queues behind the work (a busy
            # process must not look dead to the others).
            self._beats = Lanes(engine, 1, livia_write=True)
        try:
            await self.heartbeat()
            await self._housekeeping()
            await self.reap_local_dead()
        except BaseException:
            await self.close()
            raise
        log.info("store open %s owner=%s", self.display, self.owner)

    @classmethod
    async def check(cls, url: str) -> None:
        """Reach the database at `url` once (no schema change); `StoreError` says why not."""
        store = cls(url)
        if store.backend == "sqlite":
            return  # a file: created on open; open says what is wrong with the path
        engine = store._create_engine()
        try:
            async with engine.connect() as conn:
                await conn.execute(_sql("SELECT 1"))
        except _DB_ERRORS as exc:
            raise StoreError(f"cannot reach the store {store.display}: {_reason(exc)}") from None
        finally:
            await engine.dispose()

    @classmethod
    async def inspect(cls, url: str) -> StoreInfo:
        """What is at `url`, without changing it: schema version and live processes."""
        store = cls(url)
        fresh = store.backend == "sqlite" and not store._memory
        if fresh and not await asyncio.to_thread(Path(store.path).exists):
            return StoreInfo(store.display, None, migrate.head_revision(), 0)
        engine = store._create_engine()
        try:
            current = await migrate.current_revision(engine)
            live = 0
            if current is not None and current >= "0002":
                async with engine.connect() as conn:
                    live = int(
                        (
                            await conn.execute(
                                _sql(
                                    "SELECT COUNT(*) FROM instances"
                                    f" WHERE heartbeat_at + lease > {store._now}"
                                )
                            )
                        ).scalar_one()
                    )
        except _DB_ERRORS as exc:
            raise StoreError(f"cannot reach the store {store.display}: {_reason(exc)}") from None
        finally:
            await engine.dispose()
        return StoreInfo(store.display, current, migrate.head_revision(), live)

    @classmethod
    async def upgrade(cls, url: str) -> tuple[str | None, str | None]:
        """Migrate the schema at `url` to the newest version; (version before, after)."""
        store = cls(url)
        if store.backend == "sqlite" and not store._memory:
            Path(store.path).parent.mkdir(parents=True, exist_ok=True)
        engine = store._create_engine()
        try:
            return await migrate.upgrade(engine.execution_options(livia_write=True))
        except _DB_ERRORS as exc:
            raise StoreError(f"cannot upgrade the store {store.display}: {_reason(exc)}") from None
        finally:
            await engine.dispose()

    def _create_engine(self) -> AsyncEngine:
        url = self._parsed.engine_url
        if self.backend == "postgresql":
            return create_async_engine(url, pool_size=16, max_overflow=8)
        engine = create_async_engine(url, connect_args={"timeout": 30.0})

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we say BEGIN ourselves (below)
            cursor = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            options = conn.get_execution_options()
            if options.get("isolation_level") == "AUTOCOMMIT":
                return  # a read: one statement, no transaction around it
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("livia_write") else "BEGIN")

        return engine

    async def close(self) -> None:
        """Give back this process's claims, leave the instance list and disconnect."""
        if self._engine is None:
            return
        try:
            async with self._write() as conn:
                await conn.execute(
                    _sql(
                        "UPDATE messages SET owner = NULL WHERE owner = :me AND status = 'pending'"
                    ),
                    {"me": self.owner},
                )
                await conn.execute(
                    _sql("DELETE FROM instances WHERE owner = :me"), {"me": self.owner}
                )
        except StoreError as exc:
            log.warning("store close: could not give back claims: %s", exc)
        finally:
            engine, self._engine = self._engine, None
            every = (self._writes, self._reads, self._beats, self._statements)
            lanes = {id(x): x for x in every if x is not None}
            self._writes = self._reads = self._beats = self._statements = None
            for lane in lanes.values():
                await lane.close()
            await engine.dispose()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- plumbing -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self, lanes: Lanes | None, what: str) -> AsyncIterator[AsyncConnection]:
        if lanes is None:
            raise StoreError("the store is closed")
        try:
            async with lanes.hold() as conn, conn.begin():
                yield conn
        except _DB_ERRORS as exc:
            raise StoreError(f"{what} failed ({self.display}): {_reason(exc)}") from None

    def _write(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite); errors become `StoreError`."""
        return self._transaction(self._writes, "store write")

    def _beat_write(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A write on the heartbeat's own connection (not queued behind the work)."""
        return self._transaction(self._beats, "heartbeat")

    def _single(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A connection for a write that is one statement: autocommit on PostgreSQL (no
        BEGIN/COMMIT round trips), a write transaction on SQLite."""
        return self._statement() if self._statements is not None else self._write()

    @contextlib.asynccontextmanager
    async def _statement(self) -> AsyncIterator[AsyncConnection]:
        """A PostgreSQL connection in autocommit: each statement is its own transaction."""
        if self._statements is None:
            raise StoreError("the store is closed")
        try:
            async with self._statements.hold() as conn:
                yield conn
        except _DB_ERRORS as exc:
            raise StoreError(f"store write failed ({self.display}): {_reason(exc)}") from None

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (autocommit: each statement stands alone)."""
        if self._memory:  # the one shared connection is transactional
            async with self._transaction(self._reads, "store read") as conn:
                yield conn
            return
        if self._reads is None:
            raise StoreError("the store is closed")
        try:
            async with self._reads.hold() as conn:
                yield conn
        except _DB_ERRORS as exc:
            raise StoreError(f"store read failed ({self.display}): {_reason(exc)}") from None

    async def _fetch(self, sql: str, params: dict[str, Any] | None = None) -> list[StoredTurn]:
        async with self._read() as conn:
            rows = await _rows(conn, sql, params or {})
        return [_turn(row) for row in rows]

    def _alive(self, column: str) -> str:
        """SQL: the process named in `column` has a fresh heartbeat."""
        return (
            f"EXISTS (SELECT 1 FROM instances AS i WHERE i.owner = {column}"
            f" AND i.heartbeat_at + i.lease > {self._now})"
        )

    def _undelivered_orphan(self, alias: str = "messages") -> str:
        """SQL: the message in `alias` is answered, its reply not delivered, and nobody alive
        holds its delivery (its acceptor, or whoever took the delivery, is gone)."""
        return (
            f"{alias}.status <> 'pending' AND {alias}.delivered = 0"
            f" AND ({alias}.accepted_by IS NULL OR NOT {self._alive(alias + '.accepted_by')})"
        )

    def _claimable(self, alias: str = "messages") -> str:
        """SQL: the message in `alias` is pending and nobody alive holds it."""
        return (
            f"{alias}.status = 'pending' AND ({alias}.owner IS NULL"
            f" OR NOT {self._alive(alias + '.owner')})"
        )

    # -- intake -------------------------------------------------------------------------

    async def accept(self, msg: IncomingMessage, *, claim: bool = False) -> Accepted:
        """Write `msg` to the inbox unless its message_id is already there.

        With `claim`, this process also claims the message when it is its conversation's
        oldest pending one (``turn.owner == store.owner``). For a repeat, `turn` is the
        message as it stands (pending, or done with its reply) and `created` is False.
        """
        now = time.time()
        params = {
            "cid": msg.conversation_id,
            "mid": msg.message_id,
            "uid": msg.user_id,
            "channel": msg.channel,
            "text": msg.text,
            "meta": json.dumps(msg.meta),
            "title": " ".join(msg.text.split())[:_TITLE_CHARS],
            "now": now,
            "me": self.owner,
            "claim": 1 if claim else 0,
        }
        if self.backend == "postgresql":
            return await self._accept_one_statement(params)
        async with self._write() as conn:
            # Locks the conversation's row: intake of one conversation is serialised, so
            # seq follows commit order; its counters say whether this is the oldest
            # pending message (then it can be claimed right here).
            messages, pending = (
                await conn.execute(
                    _sql(
                        "INSERT INTO conversations (conversation_id, user_id, channel, title,"
                        " created_at, updated_at, messages, pending)"
                        " VALUES (:cid, :uid, :channel, :title, :now, :now, 1, 1)"
                        " ON CONFLICT (conversation_id) DO UPDATE SET"
                        " messages = conversations.messages + 1,"
                        " pending = conversations.pending + 1, updated_at = :now"
                        " RETURNING messages, pending"
                    ),
                    params,
                )
            ).one()
            params["owner"] = self.owner if claim and pending == 1 else None
            params["attempts"] = 0 if params["owner"] is None else 1
            row = (
                await conn.execute(
                    _sql(
                        "INSERT INTO messages (conversation_id, message_id, user_id, channel,"
                        " text, meta, received_at, accepted_by, owner, claimed_at, attempts)"
                        " VALUES (:cid, :mid, :uid, :channel, :text, :meta, :now, :me,"
                        " :owner, :now, :attempts)"
                        " ON CONFLICT (conversation_id, message_id) DO NOTHING"
                        f" RETURNING {_COLUMNS}"
                    ),
                    params,
                )
            ).first()
            if row is None:
                return await _repeat(conn, params)
        return Accepted(_turn(row), created=True, first=messages == 1)

    async def _accept_one_statement(self, params: dict[str, Any]) -> Accepted:
        """`accept` on PostgreSQL in one statement: the conversation's row is upserted (and
        locked) first — the message's insert reads from it — so seq follows commit order."""
        head = "(:claim = 1 AND conv.pending = 1)"
        async with self._statement() as conn:
            (row,) = await _rows(
                conn,
                (
                    "WITH conv AS (INSERT INTO conversations (conversation_id, user_id,"
                    " channel, title, created_at, updated_at, messages, pending)"
                    " VALUES (:cid, :uid, :channel, :title, :now, :now, 1, 1)"
                    " ON CONFLICT (conversation_id) DO UPDATE SET"
                    " messages = conversations.messages + 1,"
                    " pending = conversations.pending + 1, updated_at = :now"
                    " RETURNING messages, pending),"
                    " ins AS (INSERT INTO messages (conversation_id, message_id, user_id,"
                    " channel, text, meta, received_at, accepted_by, owner, claimed_at,"
                    " attempts)"
                    " SELECT CAST(:cid AS TEXT), CAST(:mid AS TEXT), CAST(:uid AS TEXT),"
                    " CAST(:channel AS TEXT), CAST(:text AS TEXT), CAST(:meta AS TEXT),"
                    " CAST(:now AS DOUBLE PRECISION), CAST(:me AS TEXT),"
                    f" CASE WHEN {head} THEN CAST(:me AS TEXT) END,"
                    f" CAST(:now AS DOUBLE PRECISION), CASE WHEN {head} THEN 1 ELSE 0 END"
                    " FROM conv ON CONFLICT (conversation_id, message_id) DO NOTHING"
                    f" RETURNING {_COLUMNS})"
                    " SELECT ins.*, conv.messages FROM conv LEFT JOIN ins ON TRUE"
                ),
                params,
            )
            if row[0] is not None:
                return Accepted(_turn(row), created=True, first=row[-1] == 1)
            return await _repeat(conn, params)

    # -- answering ----------------------------------------------------------------------

    async def claim_ready(self, limit: int) -> list[StoredTurn]:
        """Claim up to `limit` messages nobody alive holds, each its conversation's oldest
        pending one (a dead process's messages, or ones left unclaimed at intake)."""
        if limit <= 0:
            return []
        lock = " FOR UPDATE OF m SKIP LOCKED" if self.backend == "postgresql" else ""
        sql = (
            "UPDATE messages SET owner = :me, claimed_at = :now, attempts = attempts + 1"
            " WHERE seq IN (SELECT m.seq FROM messages AS m"
            f"  WHERE {self._claimable('m')}"
            "  AND NOT EXISTS (SELECT 1 FROM messages AS e WHERE e.conversation_id ="
            "   m.conversation_id AND e.status = 'pending' AND e.seq < m.seq)"
            f"  ORDER BY m.seq LIMIT :limit{lock})"
            f" AND {self._claimable()}"
            f" RETURNING {_COLUMNS}"
        )
        async with self._single() as conn:
            rows = await _rows(conn, sql, {"me": self.owner, "now": time.time(), "limit": limit})
        return sorted((_turn(r) for r in rows), key=lambda t: t.seq)

    async def complete(
        self, reply: Reply, *, delivered: bool = True, claim_next: bool = False
    ) -> Completion:
        """Store the reply to a message this process owns: ``failed`` when it carries an error.

        Fenced: nothing is written unless this process still owns the pending message.
        With `claim_next`, the conversation's next pending message is claimed in the same
        transaction (so no other process can slip in between).
        """
        status: Status = "failed" if reply.error else "answered"
        params = {
            "cid": reply.conversation_id,
            "mid": reply.message_id,
            "status": status,
            "reply": reply.text,
            "error": reply.error,
            "now": time.time(),
            "me": self.owner,
            "instance": self.instance_id,
            "delivered": 1 if delivered else 0,
        }
        if self.backend == "postgresql":
            return await self._complete_one_statement(params, claim_next=claim_next)
        async with self._write() as conn:
            row = (
                await conn.execute(
                    _sql(
                        "UPDATE messages SET status = :status, reply = :reply, error = :error,"
                        " answered_at = :now, answered_by = :instance, delivered = :delivered"
                        " WHERE conversation_id = :cid AND message_id = :mid"
                        " AND status = 'pending' AND owner = :me"
                        f" RETURNING {_COLUMNS}"
                    ),
                    params,
                )
            ).first()
            if row is None:
                return Completion(stored=False)
            # The conversation's row lock orders this against a concurrent intake: either
            # that message counts here (and is claimed below), or it saw this one answered
            # and claimed itself.
            left = (
                await conn.execute(
                    _sql(
                        "UPDATE conversations SET pending = pending - 1, updated_at = :now"
                        " WHERE conversation_id = :cid RETURNING pending"
                    ),
                    params,
                )
            ).scalar()
            turn = _turn(row)
            alive = turn.accepted_by == self.owner
            if turn.accepted_by is not None and not alive:
                alive = bool(
                    (
                        await conn.execute(
                            _sql(f"SELECT {self._alive(':acceptor')}"),
                            {"acceptor": turn.accepted_by},
                        )
                    ).scalar()
                )
            following = await self._claim_next(conn, params) if claim_next and left else None
        return Completion(stored=True, turn=turn, acceptor_alive=alive, next=following)

    async def _complete_one_statement(
        self, params: dict[str, Any], *, claim_next: bool
    ) -> Completion:
        """`complete` on PostgreSQL: the fenced reply, the conversation's count (its row lock
        orders this against an intake) and the acceptor's liveness in one statement; then,
        when messages wait, the next one claimed in a second (a fresh snapshot sees an
        intake that committed meanwhile)."""
        async with self._statement() as conn:
            rows = await _rows(
                conn,
                (
                    "WITH done AS (UPDATE messages SET status = :status, reply = :reply,"
                    " error = :error, answered_at = :now, answered_by = :instance,"
                    " delivered = :delivered WHERE conversation_id = :cid"
                    " AND message_id = :mid AND status = 'pending' AND owner = :me"
                    f" RETURNING {_COLUMNS}),"
                    " conv AS (UPDATE conversations SET pending = pending - 1,"
                    " updated_at = :now WHERE conversation_id = :cid"
                    " AND EXISTS (SELECT 1 FROM done) RETURNING pending)"
                    f" SELECT done.*, conv.pending, {self._alive('done.accepted_by')}"
                    " FROM done LEFT JOIN conv ON TRUE"
                ),
                params,
            )
            if not rows:
                return Completion(stored=False)
            row = rows[0]
            turn = _turn(row)
            left, alive = row[-2], bool(row[-1]) or turn.accepted_by == self.owner
            following = await self._claim_next(conn, params) if claim_next and left else None
        return Completion(stored=True, turn=turn, acceptor_alive=alive, next=following)

    async def _claim_next(self, conn: AsyncConnection, params: dict[str, Any]) -> StoredTurn | None:
        """Claim the conversation's oldest pending message (``:cid``) if nobody alive holds it."""
        rows = await _rows(
            conn,
            "UPDATE messages SET owner = :me, claimed_at = :now, attempts = attempts + 1"
            " WHERE seq = (SELECT MIN(seq) FROM messages AS h"
            "  WHERE h.conversation_id = :cid AND h.status = 'pending')"
            f" AND {self._claimable()}"
            f" RETURNING {_COLUMNS}",
            params,
        )
        return _turn(rows[0]) if rows else None

    async def release(self, seqs: Iterable[int] | None = None) -> int:
        """Give back this process's claims (all, or those in `seqs`) for others to take."""
        sql = "UPDATE messages SET owner = NULL WHERE owner = :me AND status = 'pending'"
        params: dict[str, Any] = {"me": self.owner}
        if seqs is not None:
            wanted = list(seqs)
            if not wanted:
                return 0
            names = [f"s{i}" for i in range(len(wanted))]
            sql += f" AND seq IN ({', '.join(':' + n for n in names)})"
            params.update(zip(names, wanted, strict=True))
        async with self._write() as conn:
            return int((await conn.execute(_sql(sql), params)).rowcount or 0)

    # -- delivery -----------------------------------------------------------------------

    async def take_deliveries(self, channels: Sequence[str], limit: int = 20) -> list[StoredTurn]:
        """Claim the delivery of answered, undelivered replies whose acceptor is gone."""
        if not channels or limit <= 0:
            return []
        names = {f"c{i}": ch for i, ch in enumerate(channels)}
        within = ", ".join(":" + n for n in names)

        def orphan(alias: str) -> str:
            return f"{self._undelivered_orphan(alias)} AND {alias}.channel IN ({within})"

        sql = (
            "UPDATE messages SET accepted_by = :me WHERE seq IN (SELECT m.seq FROM messages AS m"
            f" WHERE {orphan('m')} ORDER BY m.seq LIMIT :limit) AND {orphan('messages')}"
            f" RETURNING {_COLUMNS}"
        )
        async with self._single() as conn:
            rows = (
                await conn.execute(_sql(sql), {"me": self.owner, "limit": limit, **names})
            ).all()
        return sorted((_turn(r) for r in rows), key=lambda t: t.seq)

    async def take_delivery(self, seq: int) -> StoredTurn | None:
        """Claim one answered reply's delivery when its acceptor is gone (None otherwise).

        A delivery this process took already is not taken again: the takeover scan
        (`take_deliveries`) and the turn that stored the reply both ask, and only the first
        may post it."""
        sql = (
            "UPDATE messages SET accepted_by = :me WHERE seq = :seq"
            f" AND {self._undelivered_orphan()}"
            f" RETURNING {_COLUMNS}"
        )
        async with self._single() as conn:
            row = (await conn.execute(_sql(sql), {"me": self.owner, "seq": seq})).first()
        return _turn(row) if row is not None else None

    async def mark_delivered(self, seq: int) -> None:
        """Record that the reply of message `seq` reached its channel."""
        async with self._single() as conn:
            await conn.execute(
                _sql("UPDATE messages SET delivered = 1 WHERE seq = :seq"), {"seq": seq}
            )

    # -- processes ----------------------------------------------------------------------

    async def heartbeat(self, snapshot: dict[str, Any] | None = None) -> None:
        """Renew this process's lease (and publish its monitoring snapshot)."""
        params = {
            "me": self.owner,
            "instance": self.instance_id,
            "host": self._host_key,
            "pid": os.getpid(),
            "now": time.time(),
            "lease": self.lease,
            "snapshot": json.dumps(snapshot or {}, default=str),
        }
        async with self._beat_write() as conn:
            await conn.execute(
                _sql(
                    "INSERT INTO instances (owner, instance_id, host_key, pid, started_at,"
                    " heartbeat_at, lease, snapshot)"
                    f" VALUES (:me, :instance, :host, :pid, :now, {self._now}, :lease, :snapshot)"
                    " ON CONFLICT (owner) DO UPDATE SET"
                    f" heartbeat_at = {self._now}, lease = :lease, snapshot = :snapshot"
                ),
                params,
            )

    async def reap_local_dead(self) -> int:
        """Mark processes on this host whose pid is gone as dead (their leases end now).

        A process killed with kill -9 on this host is noticed at once instead of after its
        lease; other hosts' processes are judged by their heartbeats alone.
        """
        if not self._same_host_reaping:
            return 0
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    _sql(
                        "SELECT owner, pid FROM instances WHERE host_key = :host"
                        f" AND owner <> :me AND heartbeat_at + lease > {self._now}"
                    ),
                    {"host": self._host_key, "me": self.owner},
                )
            ).all()
        dead = [owner for owner, pid in rows if not _pid_alive(int(pid))]
        for owner in dead:
            async with self._write() as conn:
                await conn.execute(
                    _sql("UPDATE instances SET heartbeat_at = 0 WHERE owner = :owner"),
                    {"owner": owner},
                )
            log.warning("process %s on this host is gone: its messages are taken over", owner)
        return len(dead)

    async def instances(self) -> list[Instance]:
        """The live processes on this store, each with its last published snapshot."""
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    _sql(
                        "SELECT owner, instance_id, pid, started_at,"
                        f" {self._now} - heartbeat_at, snapshot FROM instances"
                        f" WHERE heartbeat_at + lease > {self._now} ORDER BY started_at"
                    )
                )
            ).all()
        return [
            Instance(
                owner=o,
                instance_id=i,
                pid=int(p),
                started_at=float(s),
                heartbeat_age=max(0.0, float(a)),
                snapshot=_json(snap),
            )
            for o, i, p, s, a, snap in rows
        ]

    async def _housekeeping(self) -> None:
        """Drop expired marks and processes dead for over a day."""
        async with self._write() as conn:
            await conn.execute(_sql("DELETE FROM marks WHERE expires < :now"), {"now": time.time()})
            await conn.execute(
                _sql(f"DELETE FROM instances WHERE heartbeat_at + lease < {self._now} - 86400")
            )

    # -- reading ------------------------------------------------------------------------

    async def get(self, conversation_id: str, message_id: str) -> StoredTurn | None:
        """One turn by its ids, or None."""
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = :cid AND message_id = :mid",
            {"cid": conversation_id, "mid": message_id},
        )
        return rows[0] if rows else None

    async def get_many(self, seqs: Iterable[int]) -> list[StoredTurn]:
        """The turns with these seqs (any order; missing ones left out)."""
        wanted = list(seqs)
        if not wanted:
            return []
        names = {f"s{i}": s for i, s in enumerate(wanted)}
        return await self._fetch(
            f"SELECT {_COLUMNS} FROM messages WHERE seq IN ({', '.join(':' + n for n in names)})",
            names,
        )

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
            f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = :cid AND seq < :bound"
            " ORDER BY seq DESC LIMIT :limit",
            {"cid": conversation_id, "bound": bound, "limit": limit},
        )
        rows.reverse()
        return rows

    async def count_conversations(self) -> int:
        """How many conversations the store holds."""
        async with self._read() as conn:
            return int(
                (await conn.execute(_sql("SELECT COUNT(*) FROM conversations"))).scalar_one()
            )

    async def conversation(self, conversation_id: str) -> ConversationInfo | None:
        """One conversation's summary, or None."""
        found = await self._conversations("WHERE conversation_id = :cid", {"cid": conversation_id})
        return found[0] if found else None

    async def list_conversations(
        self, *, user_id: str | None = None, limit: int = 100
    ) -> list[ConversationInfo]:
        """Conversations, newest activity first (only `user_id`'s when given)."""
        where = "WHERE user_id = :uid" if user_id is not None else ""
        return await self._conversations(
            f"{where} ORDER BY updated_at DESC LIMIT :limit", {"uid": user_id, "limit": limit}
        )

    async def _conversations(self, tail: str, params: dict[str, Any]) -> list[ConversationInfo]:
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    _sql(
                        "SELECT conversation_id, user_id, channel, title, created_at,"
                        f" updated_at, messages FROM conversations {tail}"
                    ),
                    params,
                )
            ).all()
        return [ConversationInfo(*row) for row in rows]

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a conversation and its messages; False when there was none."""
        async with self._write() as conn:
            await conn.execute(
                _sql("DELETE FROM messages WHERE conversation_id = :cid"), {"cid": conversation_id}
            )
            gone = await conn.execute(
                _sql("DELETE FROM conversations WHERE conversation_id = :cid"),
                {"cid": conversation_id},
            )
        return bool(gone.rowcount)

    # -- marks --------------------------------------------------------------------------

    async def seen(self, key: str, *, ttl: float = 86_400.0) -> bool:
        """Mark `key` as seen for `ttl` seconds; True when it already was (a repeat).

        Atomic across processes, so two deliveries of one event (Slack retries landing on
        different replicas) never both see False.
        """
        now = time.time()
        async with self._single() as conn:
            row = (
                await conn.execute(
                    _sql(
                        "INSERT INTO marks (key, expires) VALUES (:key, :expires)"
                        " ON CONFLICT (key) DO UPDATE SET expires = excluded.expires"
                        " WHERE marks.expires < :now RETURNING key"
                    ),
                    {"key": key, "expires": now + ttl, "now": now},
                )
            ).first()
        return row is None

    async def mark(self, key: str, *, ttl: float) -> None:
        """Record `key` for `ttl` seconds (extending an existing mark)."""
        async with self._single() as conn:
            await conn.execute(
                _sql(
                    "INSERT INTO marks (key, expires) VALUES (:key, :expires)"
                    " ON CONFLICT (key) DO UPDATE SET expires = excluded.expires"
                ),
                {"key": key, "expires": time.time() + ttl},
            )

    async def marked(self, key: str) -> bool:
        """True while `key` is recorded and not expired."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    _sql("SELECT 1 FROM marks WHERE key = :key AND expires >= :now"),
                    {"key": key, "now": time.time()},
                )
            ).first()
        return row is not None

    async def ping(self) -> None:
        """One round trip to the database (`StoreError` when it is unreachable)."""
        async with self._read() as conn:
            await conn.execute(_sql("SELECT 1"))

    # -- API keys and owners (issue 10, item 1) -------------------------------------------

    async def add_api_key(self, key_id: str, user_id: str, key_hash: str) -> dict[str, Any]:
        """Store a new key's hash for `user_id`; returns its row (see `api_key`)."""
        row = {"key_id": key_id, "user_id": user_id, "key_hash": key_hash, "now": time.time()}
        async with self._write() as conn:
            await conn.execute(
                _sql(
                    "INSERT INTO api_keys (key_id, user_id, key_hash, created_at)"
                    " VALUES (:key_id, :user_id, :key_hash, :now)"
                ),
                row,
            )
        found = await self.api_key(key_id)
        assert found is not None
        return found

    async def api_key(self, key_id: str) -> dict[str, Any] | None:
        """One key's row: key_id, user_id, key_hash, created_at, last_used_at, revoked_at."""
        rows = await self._api_keys("WHERE key_id = :key_id", {"key_id": key_id})
        return rows[0] if rows else None

    async def api_keys(self, *, user_id: str | None = None) -> list[dict[str, Any]]:
        """Every key's row (only `user_id`'s when given), oldest first."""
        where = "WHERE user_id = :user_id" if user_id is not None else ""
        return await self._api_keys(f"{where} ORDER BY created_at, key_id", {"user_id": user_id})

    async def _api_keys(self, tail: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        names = ("key_id", "user_id", "key_hash", "created_at", "last_used_at", "revoked_at")
        async with self._read() as conn:
            rows = (
                await conn.execute(_sql(f"SELECT {', '.join(names)} FROM api_keys {tail}"), params)
            ).all()
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def any_api_keys(self) -> bool:
        """True once any key was ever created (revoked ones count: the server stays closed)."""
        async with self._read() as conn:
            row = (await conn.execute(_sql("SELECT 1 FROM api_keys LIMIT 1"))).first()
        return row is not None

    async def revoke_api_key(self, key_id: str) -> dict[str, Any] | None:
        """Revoke a key (at once, on every replica); its row, or None when there is none."""
        async with self._write() as conn:
            await conn.execute(
                _sql(
                    "UPDATE api_keys SET revoked_at = :now"
                    " WHERE key_id = :key_id AND revoked_at IS NULL"
                ),
                {"key_id": key_id, "now": time.time()},
            )
        return await self.api_key(key_id)

    async def touch_api_key(self, key_id: str) -> None:
        """Record that a key was just used."""
        async with self._write() as conn:
            await conn.execute(
                _sql("UPDATE api_keys SET last_used_at = :now WHERE key_id = :key_id"),
                {"key_id": key_id, "now": time.time()},
            )

    async def reserve_conversation(
        self, conversation_id: str, user_id: str, channel: str, title: str
    ) -> str:
        """The user a conversation belongs to: `user_id` when it is new (its row is created
        now, atomically, so two users cannot both start it), else the one who started it.

        An existing conversation (every message after the first) costs one read, not a
        write: on SQLite writes queue behind one writer."""
        async with self._read() as conn:
            rows = await _rows(
                conn,
                "SELECT user_id FROM conversations WHERE conversation_id = :cid",
                {"cid": conversation_id},
            )
        if rows:
            return str(rows[0][0])
        now = time.time()
        async with self._write() as conn:
            await conn.execute(
                _sql(
                    "INSERT INTO conversations (conversation_id, user_id, channel, title,"
                    " created_at, updated_at, messages)"
                    " VALUES (:cid, :uid, :channel, :title, :now, :now, 0)"
                    " ON CONFLICT (conversation_id) DO NOTHING"
                ),
                {
                    "cid": conversation_id,
                    "uid": user_id,
                    "channel": channel,
                    "title": " ".join(title.split())[:_TITLE_CHARS],
                    "now": now,
                },
            )
            owner = (
                await conn.execute(
                    _sql("SELECT user_id FROM conversations WHERE conversation_id = :cid"),
                    {"cid": conversation_id},
                )
            ).scalar_one()
        return str(owner)

    async def delete_idle_conversation(
        self, conversation_id: str
    ) -> Literal["deleted", "busy", "missing"]:
        """Delete a conversation unless a message of it still waits for its reply."""
        lock = " FOR UPDATE" if self.backend == "postgresql" else ""
        params = {"cid": conversation_id}
        async with self._write() as conn:
            found = (
                await conn.execute(
                    _sql(f"SELECT messages FROM conversations WHERE conversation_id = :cid{lock}"),
                    params,
                )
            ).first()
            if found is None:
                return "missing"
            pending = (
                await conn.execute(
                    _sql(
                        "SELECT 1 FROM messages WHERE conversation_id = :cid"
                        " AND status = 'pending' LIMIT 1"
                    ),
                    params,
                )
            ).first()
            if pending is not None:
                return "busy"
            await conn.execute(_sql("DELETE FROM messages WHERE conversation_id = :cid"), params)
            await conn.execute(
                _sql("DELETE FROM conversations WHERE conversation_id = :cid"), params
            )
        return "deleted" if found[0] else "missing"

    async def list_user_conversations(
        self,
        *,
        user_id: str | None = None,
        exclude_prefixes: Sequence[str] = (),
        limit: int = 100,
    ) -> list[ConversationInfo]:
        """Conversations with at least one message, newest activity first: only `user_id`'s
        when given, none whose id starts with one of `exclude_prefixes` (any case)."""
        clauses = ["messages > 0"]
        params: dict[str, Any] = {"limit": limit, "uid": user_id}
        if user_id is not None:
            clauses.append("user_id = :uid")
        for i, prefix in enumerate(exclude_prefixes):
            clauses.append(f"substr(lower(conversation_id), 1, {len(prefix)}) <> :p{i}")
            params[f"p{i}"] = prefix.lower()
        return await self._conversations(
            f"WHERE {' AND '.join(clauses)} ORDER BY updated_at DESC, conversation_id LIMIT :limit",
            params,
        )


@functools.lru_cache(maxsize=512)
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with ``:name`` parameters as asyncpg's ``$n``, and the names in `$n` order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return _PARAM.sub(number, sql), tuple(names)


async def _rows(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> Sequence[Any]:
    """The rows of one statement.

    On a PostgreSQL connection in autocommit (the hot path's lanes) the statement goes to
    asyncpg directly, prepared once per connection: SQLAlchemy's execution layer costs
    about twice the statement itself there (0.50 → 0.17 ms per statement, measured). In a
    transaction it goes through SQLAlchemy, which issues the BEGIN.
    """
    sync = conn.sync_connection
    if (
        sync is not None
        and sync.dialect.name == "postgresql"
        and sync.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    ):
        driver: Any = conn.info.get("livia_driver")  # cleared when the connection is
        if driver is None:  # invalidated, so never a dead one
            driver = conn.info["livia_driver"] = (await conn.get_raw_connection()).driver_connection
        query, names = _positional(sql)
        return await driver.fetch(query, *(params[n] for n in names))
    result = await conn.execute(_sql(sql), params)
    return result.all() if result.returns_rows else []


async def _repeat(conn: AsyncConnection, params: dict[str, Any]) -> Accepted:
    """An intake that found its message_id taken: undo the counts it added, and return the
    message as it stands."""
    await _rows(
        conn,
        "UPDATE conversations SET messages = messages - 1,"
        " pending = pending - 1 WHERE conversation_id = :cid",
        params,
    )
    (existing,) = await _rows(
        conn,
        f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = :cid AND message_id = :mid",
        params,
    )
    return Accepted(_turn(existing), created=False, first=False)


def _reason(exc: BaseException) -> str:
    """The driver's own words for a database error, without SQL or parameters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _json(value: Any) -> dict[str, Any]:
    if not value or value == "{}":  # most messages carry no meta
        return {}
    try:
        out = json.loads(value or "{}")
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _turn(row: Sequence[Any]) -> StoredTurn:
    """A row of `_COLUMNS` as a `StoredTurn`."""
    (seq, cid, mid, uid, channel, txt, meta, status, reply, error, received, answered) = row[:12]
    owner, accepted_by, delivered, attempts, answered_by = row[12:17]
    return StoredTurn(
        seq=int(seq),
        conversation_id=cid,
        message_id=mid,
        user_id=uid,
        channel=channel,
        text=txt,
        meta=_json(meta),
        status=status,
        reply=reply,
        error=error,
        received_at=float(received),
        answered_at=float(answered) if answered is not None else None,
        owner=owner,
        accepted_by=accepted_by,
        delivered=bool(delivered),
        attempts=int(attempts or 0),
        answered_by=answered_by,
    )
